"""Provenance signals: C2PA (signed in the test with a generated certificate chain), IPTC digital source type in
XMP, generator metadata in PNG text chunks and EXIF, Stable Diffusion's DWT-DCT watermark; hostile metadata; the
signals in scan rows (CSV, JSONL), the Python API and `sid-edge provenance`."""

from __future__ import annotations

import csv
import datetime
import functools
import importlib.util
import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from sid_edge.cli import main
from sid_edge.provenance import Limits, ProvenanceReader, Signal, csv_cell
from sid_edge.provenance.metadata import DIGITAL_SOURCE_TYPES

ROOT = Path(__file__).resolve().parents[1]
DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"


# ---------------------------------------------------------------- fixture builders


def _rgb(size=(96, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _encode(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


def _png_with_text(chunks: dict[str, str], compressed=()) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        if k in compressed:
            info.add_itxt(k, v, zip=True)
        else:
            info.add_text(k, v)
    return _encode(_rgb(), "PNG", pnginfo=info)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _insert_chunk(png: bytes, chunk: bytes) -> bytes:
    """Insert a raw chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + chunk + png[33:]


def _xmp(dst: str, form: str = "element") -> bytes:
    if form == "element":
        body = f"<Iptc4xmpExt:DigitalSourceType>{dst}</Iptc4xmpExt:DigitalSourceType>"
        attr = ""
    elif form == "resource":
        body = f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{dst}"/>'
        attr = ""
    else:
        body, attr = "", f' Iptc4xmpExt:DigitalSourceType="{dst}"'
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"{attr}>'
        f"{body}</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode("utf-8")


needs_defusedxml = pytest.mark.skipif(importlib.util.find_spec("defusedxml") is None,
                                      reason="defusedxml (provenance extra) not installed: XMP is not read")


def _read(data_or_path, **kw):
    return ProvenanceReader(**kw).read(data_or_path)


def _kinds(result) -> list[tuple[str, str]]:
    return [(s.kind, s.label) for s in result.signals]


# ---------------------------------------------------------------- C2PA


@pytest.fixture(scope="module")
def c2pa_kit(tmp_path_factory):
    """A test CA + signer certificate (ES256), a signer, a trust-anchor PEM, and an unrelated CA's PEM."""
    c2pa = pytest.importorskip("c2pa")
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sid-edge tests")])

    def key_usage(sign: bool):
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(key_usage(False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("sid-edge test root")
    _, other_ca = ca("some other root")
    ee_key = ec.generate_private_key(ec.SECP256R1())
    ee = (x509.CertificateBuilder().subject_name(name("sid-edge test signer")).issuer_name(ca_cert.subject)
          .public_key(ee_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(key_usage(True), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ee_key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def pem(c):
        return c.public_bytes(serialization.Encoding.PEM)

    key_pem = ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    d = tmp_path_factory.mktemp("c2pa")
    (d / "trust.pem").write_bytes(pem(ca_cert))
    (d / "other.pem").write_bytes(pem(other_ca))

    def sign(data: bytes, mime: str, dst: str | None = "trainedAlgorithmicMedia", generator="TestGen",
             action_name="c2pa.created") -> bytes:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, pem(ee) + pem(ca_cert),
                                                            key_pem, None))
        action = {"action": action_name}
        if dst:
            action["digitalSourceType"] = DST + dst
        manifest = {"claim_generator_info": [{"name": generator, "version": "1.0"}], "title": "test image",
                    "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}]}
        out = io.BytesIO()
        with c2pa.Builder(manifest) as b:
            b.sign(signer, mime, io.BytesIO(data), out)
        return out.getvalue()

    return {"sign": sign, "trust": d / "trust.pem", "other": d / "other.pem"}


@pytest.mark.parametrize("fmt,mime", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_c2pa_valid_untrusted_and_trusted(c2pa_kit, fmt, mime, tmp_path):
    signed = c2pa_kit["sign"](_encode(_rgb(), fmt), mime)
    (s,) = _read(signed).signals
    assert (s.kind, s.trust, s.generated) == ("c2pa", "valid-untrusted", True)
    assert s.label == "trainedAlgorithmicMedia (valid-untrusted)"
    assert s.details["claim_generator"] == "TestGen 1.0"
    assert s.details["signer"]["common_name"] == "sid-edge test signer"
    assert s.details["failures"] == ["signingCredential.untrusted"]
    assert "created by a generative model" in s.assertion and "not on the trust list" in s.assertion
    # The same file with the test CA as trust anchor: trusted; with an unrelated CA: still untrusted.
    (t,) = _read(signed, c2pa_trust=c2pa_kit["trust"]).signals
    assert (t.trust, t.details["validation_state"], t.details["failures"]) == ("trusted", "Trusted", [])
    (u,) = _read(signed, c2pa_trust=c2pa_kit["other"]).signals
    assert u.trust == "valid-untrusted"
    # A file path reads the same as the bytes.
    p = tmp_path / f"signed.{fmt.lower()}"
    p.write_bytes(signed)
    assert _read(p).signals == [s]


@pytest.mark.parametrize("fmt,mime", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_c2pa_tampered_after_signing_is_invalid(c2pa_kit, fmt, mime):
    signed = bytearray(c2pa_kit["sign"](_encode(_rgb(), fmt), mime))
    # Change one byte of the image data near the end (outside the manifest): the data hash no longer matches.
    signed[-40] ^= 0x5A
    (s,) = _read(bytes(signed)).signals
    assert (s.kind, s.trust, s.generated) == ("c2pa", "invalid", True)
    assert s.details["validation_state"] == "Invalid"
    assert any("mismatch" in code for code in s.details["failures"]), s.details["failures"]
    assert "invalid or tampered manifest" in s.assertion


def test_c2pa_garbled_manifest_is_an_invalid_signal_not_a_crash(c2pa_kit):
    signed = bytearray(c2pa_kit["sign"](_encode(_rgb(), "JPEG"), "image/jpeg"))
    i = signed.find(b"c2pa")
    signed[i + 100:i + 400] = b"\0" * 300
    (s,) = _read(bytes(signed)).signals
    assert (s.kind, s.trust, s.generated, s.label) == ("c2pa", "invalid", None, "invalid manifest")
    assert s.assertion.startswith("invalid C2PA manifest")


def test_c2pa_capture_source_type(c2pa_kit):
    (cap,) = _read(c2pa_kit["sign"](_encode(_rgb(), "JPEG"), "image/jpeg", dst="digitalCapture")).signals
    assert (cap.generated, cap.label) == (False, "digitalCapture (valid-untrusted)")
    assert "digital capture of a real scene" in cap.assertion


def test_c2pa_trust_file_errors(c2pa_kit, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        ProvenanceReader(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificate"):
        ProvenanceReader(tmp_path / "junk.pem")


def test_no_c2pa_in_plain_files_even_with_the_word_in_them():
    data = _png_with_text({"Comment": "c2pa is mentioned here"})
    assert [s for s in _read(data).signals if s.kind == "c2pa"] == []


# ---------------------------------------------------------------- IPTC digital source type


@pytest.mark.parametrize("code", sorted(DIGITAL_SOURCE_TYPES))
@needs_defusedxml
def test_iptc_digital_source_type_in_jpeg_xmp(code):
    (s,) = _read(_encode(_rgb(), "JPEG", xmp=_xmp(DST + code))).signals
    assert (s.kind, s.label, s.trust, s.source) == ("iptc", code, "unsigned", "XMP Iptc4xmpExt:DigitalSourceType")
    assert s.generated is DIGITAL_SOURCE_TYPES[code][1]
    assert s.details["digital_source_type"] == code


@pytest.mark.parametrize("form", ["element", "resource", "attribute"])
@pytest.mark.parametrize("zip_", [False, True])
@needs_defusedxml
def test_iptc_in_png_itxt_every_rdf_form(form, zip_):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(DST + "compositeSynthetic", form).decode(), zip=zip_)
    (s,) = _read(_encode(_rgb(), "PNG", pnginfo=info)).signals
    assert (s.kind, s.label, s.generated) == ("iptc", "compositeSynthetic", True)


@needs_defusedxml
def test_iptc_in_webp_and_tiff_xmp():
    for fmt in ("WEBP", "TIFF"):
        kw = {"xmp": _xmp(DST + "trainedAlgorithmicMedia")} if fmt == "WEBP" else {
            "tiffinfo": {700: _xmp(DST + "trainedAlgorithmicMedia")}}
        assert _kinds(_read(_encode(_rgb(), fmt, **kw))) == [("iptc", "trainedAlgorithmicMedia")], fmt


@needs_defusedxml
def test_unknown_source_type_is_reported_without_a_verdict():
    (s,) = _read(_encode(_rgb(), "JPEG", xmp=_xmp("madeUpType; with, separators\nand a newline"))).signals
    assert s.generated is None and "not an IPTC code" in s.assertion
    assert ";" not in s.compact() and "\n" not in s.compact()


# ---------------------------------------------------------------- generator metadata

A1111 = ("a cat on a sofa\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, "
         "Size: 512x512, Model hash: abc123, Model: v1-5-pruned-emaonly")
COMFY_PROMPT = json.dumps({"3": {"class_type": "KSampler", "inputs": {}}, "4": {"class_type": "CheckpointLoaderSimple"}})


@pytest.mark.parametrize("chunks,compressed,tool,source", [
    ({"parameters": A1111}, (), "AUTOMATIC1111", "PNG text chunk 'parameters'"),
    ({"parameters": A1111}, ("parameters",), "AUTOMATIC1111", "PNG text chunk 'parameters'"),
    ({"prompt": COMFY_PROMPT, "workflow": "{}"}, (), "ComfyUI", "PNG text chunk 'prompt' and 'workflow'"),
    ({"invokeai_metadata": "{}"}, (), "InvokeAI", "PNG text chunk 'invokeai_metadata'"),
    ({"Software": "NovelAI", "Source": "Stable Diffusion XL C1E1DE52"}, (), "NovelAI", "PNG text chunk 'Software'"),
    ({"fooocus_scheme": "fooocus", "parameters": json.dumps({"Prompt": "x", "Version": "Fooocus v2.5"})}, (),
     "Fooocus", "PNG text chunk 'parameters'"),
])
def test_generator_text_chunks(chunks, compressed, tool, source):
    signals = _read(_png_with_text(chunks, compressed)).signals
    s = signals[0]
    assert (s.kind, s.label, s.trust, s.generated, s.source) == ("generator-metadata", tool, "unsigned", True, source)
    assert "forge" not in s.assertion  # the trust level says it; the assertion says what is claimed


def test_a1111_details_and_comfy_nodes():
    (a,) = _read(_png_with_text({"parameters": A1111})).signals
    assert a.details["model"] == "v1-5-pruned-emaonly" and a.details["steps"] == "20" and a.details["seed"] == "42"
    assert "(model v1-5-pruned-emaonly)" in a.assertion
    (c,) = _read(_png_with_text({"prompt": COMFY_PROMPT})).signals
    assert c.details["node_types"] == ["CheckpointLoaderSimple", "KSampler"] and c.details["valid_json"] is True
    (bad,) = _read(_png_with_text({"prompt": "{not json"})).signals
    assert bad.details["valid_json"] is False and "not valid JSON" in bad.assertion


def test_exif_software_and_user_comment():
    exif = Image.Exif()
    exif[0x0131] = "Midjourney v6"
    (s,) = _read(_encode(_rgb(), "JPEG", exif=exif)).signals
    assert (s.kind, s.label, s.source, s.details["value"]) == ("generator-metadata", "Midjourney", "EXIF Software",
                                                              "Midjourney v6")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111.encode("utf-16-be")
    (u,) = _read(_encode(_rgb(), "JPEG", exif=exif)).signals
    assert (u.label, u.source, u.details["sampler"]) == ("AUTOMATIC1111", "EXIF UserComment", "Euler a")


def test_ordinary_photos_and_editors_carry_no_signal(photo_dir):
    exif = Image.Exif()
    exif[0x0131] = "GIMP 2.10.36"
    exif[0x010F] = "Canon"
    files = [_encode(_rgb(), "JPEG", exif=exif), _png_with_text({"Software": "Adobe Photoshop 25.0", "Title": "cat"}),
             *sorted(photo_dir.iterdir())]
    for f in files:
        assert _read(f).signals == [], f


def test_csv_cell_and_dict_forms():
    s = Signal("iptc", "x", "unsigned", True, "trainedAlgorithmicMedia", "XMP")
    t = Signal("watermark", "y", "statistical", True, "SDXL 100%", "DWT-DCT watermark", {"bit_agreement": 1.0})
    assert csv_cell([s, t]) == "iptc:trainedAlgorithmicMedia;watermark:SDXL 100%"
    assert csv_cell([]) == ""
    assert t.to_dict()["details"] == {"bit_agreement": 1.0}
    with pytest.raises(ValueError):
        Signal("vibes", "x", "unsigned", None, "l", "s")


# ---------------------------------------------------------------- watermark


@pytest.fixture(scope="module")
def wm_image(tmp_path_factory) -> np.ndarray:
    """A 512x384 colour photograph (skimage's astronaut). The library's embedding is lossy on strongly saturated
    colours (coffee.jpg keeps 72-88 % of the bits straight after embedding), not on this one."""
    from sid_edge.build.demo_data import write_photo_folder

    d = write_photo_folder(tmp_path_factory.mktemp("wm-photos"))
    im = Image.open(d / "astronaut.png").convert("RGB").resize((512, 384), Image.BICUBIC)
    return np.asarray(im)


def _embed(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Stable Diffusion's own embedding: imwatermark.WatermarkEncoder on BGR, method dwtDct (imports torch)."""
    imwatermark = pytest.importorskip("imwatermark")
    import cv2

    from sid_edge.provenance.watermark import PATTERNS

    enc = imwatermark.WatermarkEncoder()
    enc.set_watermark("bits", list(PATTERNS[pattern][0]))
    bgr = enc.encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "dwtDct")
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.mark.parametrize("pattern", ["StableDiffusionV1", "SDV2", "SDXL"])
def test_watermark_round_trip_with_the_reference_encoder(wm_image, pattern):
    pytest.importorskip("pywt")
    marked = _encode(_embed(wm_image, pattern), "PNG")
    signals = [s for s in _read(marked, check_watermark=True).signals if s.kind == "watermark"]
    assert signals and signals[0].details["pattern"] == pattern, [s.label for s in signals]
    s = signals[0]
    assert s.trust == "statistical" and s.details["bit_agreement"] >= 0.95
    assert s.details["p_random"] < 1e-6 and s.label.startswith(pattern)
    # The unmarked image: no watermark signal (and the check ran: no note about it).
    clean = _read(_encode(wm_image, "PNG"), check_watermark=True)
    assert [s for s in clean.signals if s.kind == "watermark"] == [] and clean.notes == []
    # Off by default (it needs a second decode of the pixels).
    assert [s for s in _read(marked).signals if s.kind == "watermark"] == []


def test_watermark_bits_match_the_library_decoder(wm_image):
    imwatermark = pytest.importorskip("imwatermark")
    import cv2

    from sid_edge.provenance.watermark import PATTERNS, bits_for_length, block_scores

    for image in (wm_image, _embed(wm_image, "SDXL")):
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        scores = block_scores(bgr)
        for bits, _ in PATTERNS.values():
            ref = imwatermark.WatermarkDecoder("bits", len(bits)).decode(bgr, "dwtDct")
            assert np.array_equal(bits_for_length(scores, len(bits)), np.asarray(ref, dtype=bool))


def test_watermark_small_or_odd_images_give_notes(wm_image):
    pytest.importorskip("pywt")
    pytest.importorskip("imwatermark")
    small = _read(_encode(_rgb((100, 100)), "PNG"), check_watermark=True)
    assert small.signals == [] and any("too small" in n for n in small.notes)
    big = ProvenanceReader(check_watermark=True, watermark_max_pixels=1000).read(_encode(wm_image, "PNG"))
    assert big.signals == [] and any("watermark not checked" in n for n in big.notes)


# ---------------------------------------------------------------- hostile metadata


@functools.lru_cache(maxsize=1)
def _hostile_files() -> dict[str, bytes]:
    base = _encode(_rgb(), "PNG")
    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
              b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&lol3;</x:xmpmeta>')
    external = (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&e;'
                b"</x:xmpmeta>")
    return {
        "huge tEXt": _insert_chunk(base, _png_chunk(b"tEXt", b"parameters\0" + b"Steps: 1, " * 300_000)),
        "zTXt bomb": _insert_chunk(base, _png_chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * 64_000_000, 9))),
        "iTXt bomb": _insert_chunk(base, _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0"
                                                     + zlib.compress(b"<" * 16_000_000, 9))),
        "corrupt zTXt": _insert_chunk(base, _png_chunk(b"zTXt", b"parameters\0\0not zlib at all")),
        "chunk length past end": _insert_chunk(base, struct.pack(">I", 0x7FFFFFFF) + b"tEXt" + b"key\0value"),
        "no keyword separator": _insert_chunk(base, _png_chunk(b"tEXt", b"x" * 100)),
        "truncated iTXt": _insert_chunk(base, _png_chunk(b"iTXt", b"key\0")),
        "malformed iTXt": _insert_chunk(base, _png_chunk(b"iTXt", b"key\0\0\0nolang")),
        "billion laughs XMP": _encode(_rgb(), "JPEG", xmp=laughs),
        "external entity XMP": _encode(_rgb(), "JPEG", xmp=external),
        "broken XMP": _encode(_rgb(), "JPEG", xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF></x:xmpmeta>'),
        "unterminated XMP": b"\xff\xd8\xff" + b"<x:xmpmeta " + b"a" * 2_000_000,
        "deep JSON prompt": _png_with_text({"prompt": "[" * 100_000}),
        "garbage EXIF": b"\xff\xd8\xff\xe1\x00\x10Exif\0\0" + b"\xff" * 8 + b"\xff\xd9",
        "empty": b"",
        "random bytes": np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes(),
        "PNG signature only": b"\x89PNG\r\n\x1a\n",
        "many tiny chunks": base[:33] + _png_chunk(b"tEXt", b"k\0v") * 20_000 + base[33:],
    }


@pytest.mark.parametrize("name", sorted(_hostile_files()))
@needs_defusedxml
def test_hostile_metadata_gives_a_signal_or_nothing_never_a_traceback(name):
    data = _hostile_files()[name]
    result = ProvenanceReader(check_watermark=True).read(data)
    for s in result.signals:
        assert isinstance(s, Signal) and len(s.compact()) < 300
    assert all(len(n) < 400 for n in result.notes)
    expected_note = {
        "huge tEXt": "over 1048576 bytes", "zTXt bomb": "over 1048576 bytes", "iTXt bomb": "over 1048576 bytes",
        "corrupt zTXt": "corrupt", "chunk length past end": "past the end", "no keyword separator": "separator",
        "truncated iTXt": "truncated", "malformed iTXt": "malformed", "billion laughs XMP": "XMP packet not parsed",
        "external entity XMP": "XMP packet not parsed", "broken XMP": "XMP packet not parsed",
        "unterminated XMP": "without an end", "many tiny chunks": "more than 10000 PNG chunks",
    }
    if name in expected_note:
        assert any(expected_note[name] in n for n in result.notes), result.notes
    if name in ("billion laughs XMP", "external entity XMP", "broken XMP"):
        assert result.signals == []


def test_file_size_limit_and_odd_sources(tmp_path):
    data = _png_with_text({"parameters": A1111})
    r = ProvenanceReader(limits=Limits(max_file_bytes=100)).read(data)
    assert r.signals == [] and "larger than 100 bytes" in r.notes[0]
    p = tmp_path / "a.png"
    p.write_bytes(data)
    r = ProvenanceReader(limits=Limits(max_file_bytes=100)).read(p)
    assert r.signals == [] and "larger than 100 bytes" in r.notes[0]
    assert "cannot read file" in ProvenanceReader().read(tmp_path / "missing.png").notes[0]
    assert "not a regular file" in ProvenanceReader().read(tmp_path).notes[0]
    assert ProvenanceReader().read(Image.new("RGB", (8, 8))).signals == []


def test_provenance_is_torch_free():
    code = textwrap.dedent("""
        import sys
        sys.modules['torch'] = None
        from sid_edge.provenance import ProvenanceReader
        import sid_edge.cli.provenance
        r = ProvenanceReader(check_watermark=True)
        print(sorted(r.checks), sorted(r.unavailable))
        from PIL import Image; import io, numpy as np
        b = io.BytesIO(); Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(b, 'PNG')
        print(r.read(b.getvalue()).notes)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    checks = r.stdout.splitlines()[0]
    assert "generator-metadata" in checks
    if "watermark" not in checks:  # invisible-watermark absent here: said so, not crashed
        assert "watermark" in checks.split("]")[1]
    assert r.stdout.splitlines()[1] == "[]"


# ---------------------------------------------------------------- in every output


@pytest.fixture
def provenance_folder(tmp_path, c2pa_kit):
    d = tmp_path / "prov images"
    d.mkdir()
    (d / "a1111.png").write_bytes(_png_with_text({"parameters": A1111}))
    (d / "iptc.jpg").write_bytes(_encode(_rgb(), "JPEG", xmp=_xmp(DST + "trainedAlgorithmicMedia")))
    (d / "c2pa.jpg").write_bytes(c2pa_kit["sign"](_encode(_rgb(), "JPEG"), "image/jpeg"))
    (d / "plain.png").write_bytes(_encode(_rgb(seed=3), "PNG"))
    (d / "broken.png").write_bytes(_insert_chunk(b"\x89PNG\r\n\x1a\n" + b"\0" * 25, _png_chunk(b"tEXt", b"x")))
    return d


EXPECTED_CELLS = {
    "a1111.png": "generator-metadata:AUTOMATIC1111",
    "iptc.jpg": "iptc:trainedAlgorithmicMedia",
    "c2pa.jpg": "c2pa:trainedAlgorithmicMedia (valid-untrusted)",
    "plain.png": "",
    "broken.png": "",
}


def test_scan_csv_and_jsonl_carry_provenance_and_scores_do_not_change(artifact, provenance_folder, tmp_path):
    out_csv, out_jsonl, out_plain = tmp_path / "r.csv", tmp_path / "r.jsonl", tmp_path / "plain.csv"
    base = ["scan", str(provenance_folder), "--model", str(artifact), "--no-progress"]
    assert main([*base, "--out", str(out_csv)]) == 0
    assert main([*base, "--out", str(out_jsonl)]) == 0
    assert main([*base, "--out", str(out_plain), "--no-provenance"]) == 0
    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert {k: r["provenance"] for k, r in rows.items()} == EXPECTED_CELLS
    assert rows["broken.png"]["error"] != ""  # the bad file keeps its row and its reason
    jrows = {Path(r["path"]).name: r for r in map(json.loads, out_jsonl.read_text().splitlines())}
    assert [(s["kind"], s["trust"]) for s in jrows["c2pa.jpg"]["provenance"]] == [("c2pa", "valid-untrusted")]
    assert jrows["iptc.jpg"]["provenance"][0]["details"]["digital_source_type"] == "trainedAlgorithmicMedia"
    assert jrows["plain.png"]["provenance"] == []
    with open(out_plain, newline="", encoding="utf-8") as f:
        plain = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert all("provenance" not in r for r in plain.values())
    assert {k: r["p_synthetic"] for k, r in plain.items()} == {k: r["p_synthetic"] for k, r in rows.items()}


def test_scan_trust_and_watermark_flags(artifact, provenance_folder, c2pa_kit, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["scan", str(provenance_folder / "c2pa.jpg"), "--model", str(artifact), "--out", str(out),
                 "--no-progress", "--c2pa-trust", str(c2pa_kit["trust"]), "--watermark"]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["provenance"] == "c2pa:trainedAlgorithmicMedia (trusted)"
    assert main(["scan", str(provenance_folder), "--model", str(artifact), "--c2pa-trust",
                 str(tmp_path / "nope.pem")]) == 2
    assert main(["scan", str(provenance_folder), "--model", str(artifact), "--no-provenance", "--watermark"]) == 2


def test_python_api_prediction_carries_provenance(artifact, provenance_folder):
    from sid_edge.provenance import attach
    from sid_edge.runtime.detector import Detector

    det = Detector.load(artifact)
    files = [provenance_folder / n for n in ("a1111.png", "plain.png")]
    before = det.predict(files)
    assert [p.provenance for p in before] == [None, None]
    attach(det)
    data = (provenance_folder / "iptc.jpg").read_bytes()
    after = det.predict([*files, data, np.asarray(Image.open(files[1]).convert("RGB"))])
    assert [p.p_synthetic for p in after[:2]] == [p.p_synthetic for p in before]
    assert [[s["label"] for s in p.provenance] for p in after] == [["AUTOMATIC1111"], [], ["trainedAlgorithmicMedia"],
                                                                  []]


def test_provenance_command(provenance_folder, c2pa_kit, capsys, tmp_path):
    assert main(["provenance", str(provenance_folder), "--json", "--c2pa-trust", str(c2pa_kit["trust"])]) == 0
    rows = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == set(EXPECTED_CELLS)
    assert rows["c2pa.jpg"]["signals"][0]["trust"] == "trusted"
    assert rows["broken.png"]["signals"] == [] and rows["broken.png"]["notes"]
    assert main(["provenance", str(provenance_folder / "a1111.png")]) == 0
    text = capsys.readouterr().out
    assert "generator-metadata unsigned" in text and "model: v1-5-pruned-emaonly" in text
    assert "1 file, 1 with provenance signals" in text
    assert main(["provenance", str(tmp_path / "missing.png")]) == 2
    assert main(["provenance", str(provenance_folder), "--c2pa-trust", str(tmp_path / "missing.pem")]) == 2


def test_evaluate_reports_signals_per_dataset_and_their_scores(artifact, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    data = tmp_path / "gens"
    for sub in ("sdgen/0_real", "sdgen/1_fake"):
        (data / sub).mkdir(parents=True)
    for i in range(3):
        (data / "sdgen/0_real" / f"r{i}.png").write_bytes(_encode(_rgb(seed=10 + i), "PNG"))
        (data / "sdgen/1_fake" / f"f{i}.png").write_bytes(_png_with_text({"parameters": A1111}) if i < 2 else
                                                            _encode(_rgb(seed=20 + i), "PNG"))
    (data / "sdgen/0_real" / "cam.jpg").write_bytes(_encode(_rgb(seed=30), "JPEG", xmp=_xmp(DST + "digitalCapture")))
    out = tmp_path / "report"
    assert main(["evaluate", str(artifact), "--data", str(data), "--out", str(out), "--no-progress",
                 "--provenance"]) == 0
    groups = {g["group"]: g for g in json.loads((out / "provenance.json").read_text())}
    assert set(groups) == {"generator-metadata", "iptc", "says generated", "says captured", "no signal"}
    assert (groups["generator-metadata"]["n"], groups["generator-metadata"]["n_synthetic"]) == (2, 2)
    assert (groups["says captured"]["n"], groups["says captured"]["n_real"]) == (1, 1)
    assert (groups["no signal"]["n"], groups["no signal"]["n_real"], groups["no signal"]["n_synthetic"]) == (4, 3, 1)
    # Scores of a group are the detector's own scores on those images (from scores.csv).
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        scores = {Path(r["key"]).name: float(r["p_synthetic"]) for r in csv.DictReader(f)}
    (gm,) = groups["generator-metadata"]["scores"]
    assert gm["mean_p"] == pytest.approx((scores["f0.png"] + scores["f1.png"]) / 2, abs=1e-6)
    assert "Provenance signals and the CLIP score" in capsys.readouterr().out
    assert main(["evaluate", str(artifact), "--data", str(data), "--c2pa-trust", str(tmp_path / "x.pem")]) == 2


def test_png_exif_is_read_without_decoding_pixels(monkeypatch):
    exif = Image.Exif()
    exif[0x0131] = "DALL-E 3"
    data = _encode(_rgb(), "PNG", exif=exif)

    def no_decode(*a, **k):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    (s,) = _read(data).signals
    assert (s.label, s.source) == ("DALL-E", "EXIF Software")


def test_hostile_c2pa_containers_give_an_invalid_signal_or_nothing():
    pytest.importorskip("c2pa")
    rng = np.random.default_rng(5)
    junk = b"jumb" + b"c2pa" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    png = _insert_chunk(_encode(_rgb(), "PNG"), _png_chunk(b"caBX", struct.pack(">I", 5008) + junk))
    jpeg = _encode(_rgb(), "JPEG")
    app11 = b"\xff\xeb" + struct.pack(">H", 2 + 8 + len(junk)) + b"JP\0\0\0\0\0\1" + junk
    jpeg = jpeg[:2] + app11 + jpeg[2:]
    (s,) = ProvenanceReader().read(png).signals  # a garbled manifest store is a signal of its own
    assert (s.trust, s.label) == ("invalid", "invalid manifest") and "cannot be read" in s.assertion
    for data in (jpeg, b"\xff\xd8\xff" + b"c2pa" * 1000, b"\x89PNG\r\n\x1a\n" + b"c2pa" * 1000):
        result = ProvenanceReader().read(data)
        for s in result.signals:
            assert (s.kind, s.trust, s.generated) == ("c2pa", "invalid", None)

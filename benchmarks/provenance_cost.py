#!/usr/bin/env python
"""What reading provenance costs per image on this machine: metadata only (what `sid-edge scan` does by default)
and with the watermark check (`--watermark`, a second decode of the pixels plus the DWT-DCT decoder).

Files are written here: 1024x1024 and 512x512 photographs (skimage's astronaut) as plain PNG, PNG with an
AUTOMATIC1111 `parameters` chunk, JPEG with an IPTC XMP packet, and the same JPEG C2PA-signed with a throw-away
certificate chain (when c2pa-python and cryptography are installed). Each is read ``--repeat`` times with one
ProvenanceReader; the median milliseconds per read are printed with the CPU and library versions. A measured
figure, not a test.

    python benchmarks/provenance_cost.py
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

from PIL import Image, PngImagePlugin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

A1111 = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: v1-5"
XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
       "<Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
       "</Iptc4xmpExt:DigitalSourceType></rdf:Description></rdf:RDF></x:xmpmeta>").encode()


def machine() -> dict:
    from sid_edge.runtime.cpu_features import detect

    versions = {}
    for pkg in ("c2pa-python", "defusedxml", "PyWavelets", "invisible-watermark", "pillow", "opencv-python-headless"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": detect().summary(), "python": platform.python_version(), **versions}


def _sign(jpeg: bytes) -> bytes | None:
    try:
        import c2pa
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        return None
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ca_key, ee_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def ku(sign):
        return x509.KeyUsage(sign, False, False, False, False, not sign, not sign, False, False)

    def build(subject, issuer, key, signing_key, ca):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(ku(not ca), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if not ca:
            b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                                critical=False))
        return b.sign(signing_key, hashes.SHA256())

    ca = build("bench root", "bench root", ca_key, ca_key, True)
    ee = build("bench signer", "bench root", ee_key, ca_key, False)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    key = ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, pem(ee) + pem(ca), key, None))
    manifest = {"claim_generator_info": [{"name": "bench", "version": "1"}], "assertions": [
        {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created", "digitalSourceType":
                                                        "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"}]}}]}
    out = io.BytesIO()
    with c2pa.Builder(manifest) as b:
        b.sign(signer, "image/jpeg", io.BytesIO(jpeg), out)
    return out.getvalue()


def files(side: int) -> dict[str, bytes]:
    from skimage import data

    im = Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC)

    def enc(fmt, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        return b.getvalue()

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    out = {"plain.png": enc("PNG"), "a1111.png": enc("PNG", pnginfo=info), "iptc.jpg": enc("JPEG", quality=90, xmp=XMP)}
    signed = _sign(out["iptc.jpg"])
    if signed:
        out["c2pa.jpg"] = signed
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=20, help="reads per file and mode (default: %(default)s)")
    p.add_argument("--sides", nargs="+", type=int, default=[512, 1024], help="image sides (default: 512 1024)")
    args = p.parse_args(argv)
    from sid_edge.provenance import ProvenanceReader

    readers = {"metadata": ProvenanceReader(), "metadata+watermark": ProvenanceReader(check_watermark=True)}
    rows = []
    for side in args.sides:
        for name, data in files(side).items():
            for mode, reader in readers.items():
                reader.read(data)  # warm-up
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    result = reader.read(data)
                    times.append((time.perf_counter() - t) * 1000)
                rows.append({"file": name, "side": side, "bytes": len(data), "mode": mode,
                             "median_ms": round(statistics.median(times), 2),
                             "signals": [s.compact() for s in result.signals]})
    print(json.dumps(machine()))
    print(f"{'file':<10} {'side':>5} {'bytes':>9} {'mode':<19} {'median ms':>9}  signals")
    for r in rows:
        print(f"{r['file']:<10} {r['side']:>5} {r['bytes']:>9} {r['mode']:<19} {r['median_ms']:>9.2f}  "
              + ";".join(r["signals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""C2PA content credentials through c2pa-python (the Content Authenticity Initiative's library, c2pa-rs inside).

Reads the active manifest of a file's embedded manifest store: its claim generator, its ``c2pa.actions``
(created/edited, ``digitalSourceType``), the signer named in the certificate, and the validation state c2pa-rs
computes (C2PA 2.x "Validation" chapter):

* ``Trusted``  -> trust ``trusted``: signature and hashes verify and the signing chain ends at a trust anchor given
  with ``--c2pa-trust`` (a PEM file of CA certificates).
* ``Valid``    -> trust ``valid-untrusted``: signature and hashes verify, but the signer is not on a trust list.
* ``Invalid``  -> trust ``invalid``: the content or the manifest was changed after signing, or the signature fails.
* a manifest store that cannot be read at all (garbled JUMBF) -> an ``invalid`` signal "invalid C2PA manifest".

Nothing is fetched from the network: remote manifests and OCSP are switched off in the reader's settings.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from sid_edge.provenance.metadata import DIGITAL_SOURCE_TYPES, IPTC_DST_PREFIX
from sid_edge.provenance.signals import Signal

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'sid-edge[provenance]'"
STATE_TO_TRUST = {"Trusted": "trusted", "Valid": "valid-untrusted", "Invalid": "invalid"}
TRUST_WORDS = {
    "trusted": "valid signature from a trusted signer",
    "valid-untrusted": "valid signature from a signer not on the trust list",
    "invalid": "invalid or tampered manifest",
}
MAX_TRUST_FILE_BYTES = 4 * 2**20


def available() -> str | None:
    """None when c2pa-python can be imported, else the reason it cannot."""
    try:
        import c2pa  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError or a broken native library (OSError)
        return f"c2pa-python is not installed ({type(e).__name__}); {INSTALL_HINT}"
    return None


def mime_type(data: bytes) -> str | None:
    """The MIME type c2pa needs, from the file's magic bytes (None for formats without C2PA embedding here)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "image/tiff"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1"):
            return "image/heic"
    if data.startswith(b"GIF8"):
        return "image/gif"
    return None


class C2paChecker:
    """Reads C2PA manifests with fixed settings (one c2pa Context, reused for every file).

    Args:
        trust_anchors: path of a PEM file with the CA certificates to trust (a C2PA trust list); None: no signer
            is trusted, so valid signatures read ``valid-untrusted``.

    Raises:
        ValueError: the trust file is missing, too large (> 4 MiB) or holds no PEM certificate.
        ImportError: c2pa-python is not installed (see :func:`available`).
    """

    def __init__(self, trust_anchors: str | Path | None = None):
        import c2pa

        self._c2pa = c2pa
        settings: dict = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
        self.trust_file = None
        if trust_anchors is not None:
            p = Path(trust_anchors)
            if not p.is_file():
                raise ValueError(f"C2PA trust list {p}: no such file")
            if p.stat().st_size > MAX_TRUST_FILE_BYTES:
                raise ValueError(f"C2PA trust list {p}: larger than {MAX_TRUST_FILE_BYTES} bytes")
            pem = p.read_text(encoding="utf-8", errors="replace")
            if "-----BEGIN CERTIFICATE-----" not in pem:
                raise ValueError(f"C2PA trust list {p}: no PEM certificate in it")
            settings["verify"]["verify_trust"] = True
            settings["trust"] = {"trust_anchors": pem}
            self.trust_file = str(p)
        try:
            self._context = c2pa.Context(c2pa.Settings.from_dict(settings))
        except c2pa.C2paError as e:
            raise ValueError(f"C2PA trust list {trust_anchors}: not usable ({e})") from e

    def check(self, data: bytes) -> list[Signal]:
        """Signals of the file ``data`` (whole file bytes): [] when it has no embedded manifest store, else one
        ``c2pa`` signal for the active manifest. Never raises."""
        mime = mime_type(data)
        if mime is None or b"c2pa" not in data:  # every embedded manifest store carries the JUMBF label "c2pa"
            return []
        c2pa = self._c2pa
        try:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, self._context)
            if reader is None:
                return []
            with reader:
                state = reader.get_validation_state()
                results = reader.get_validation_results() or {}
                manifest = reader.get_active_manifest()
        except Exception as e:  # noqa: BLE001 - C2paError subclasses, KeyError from a store without active manifest
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            return [Signal("c2pa", f"invalid C2PA manifest: the manifest store cannot be read ({reason})",
                           "invalid", None, "invalid manifest", "C2PA manifest", {"error": reason})]
        return [self._signal(state, results, manifest or {})]

    def _signal(self, state: str | None, results: dict, manifest: dict) -> Signal:
        trust = STATE_TO_TRUST.get(state or "", "invalid")
        failures = [f.get("code") for f in (results.get("activeManifest") or {}).get("failure", []) or []
                    if isinstance(f, dict)]
        generator = _claim_generator(manifest)
        actions = _actions(manifest)
        sources = [a["digitalSourceType"] for a in actions if a.get("digitalSourceType")]
        codes = [s[len(IPTC_DST_PREFIX):] if s.startswith(IPTC_DST_PREFIX) else s for s in sources]
        generated = None
        for code in codes:
            g = DIGITAL_SOURCE_TYPES.get(code, ("", None))[1]
            if g is True or (g is False and generated is None):
                generated = g
        sig = manifest.get("signature_info") or {}
        signer = sig.get("common_name") or sig.get("issuer")
        claims = []
        if codes:
            claims.append("; ".join(DIGITAL_SOURCE_TYPES.get(c, (f"digital source type {c!r}", None))[0]
                                    for c in dict.fromkeys(codes)))
        elif actions:
            claims.append("actions " + ", ".join(dict.fromkeys(str(a.get("action")) for a in actions)))
        if generator:
            claims.append(f"claim generator {generator}")
        words = TRUST_WORDS[trust]
        if trust == "invalid":
            words += " (" + ", ".join(c for c in failures if c != "signingCredential.untrusted")[:200] + ")"
        assertion = f"C2PA: {'; '.join(claims) or 'a manifest without actions'}; {words}" + (
            f"; signed by {signer}" if signer else "")
        label = (codes[0] if codes else (generator or "manifest")) + f" ({trust})"
        details = {
            "validation_state": state,
            "failures": failures,
            "claim_generator": generator,
            "actions": [{k: a.get(k) for k in ("action", "digitalSourceType", "softwareAgent") if a.get(k)}
                        for a in actions][:20],
            "signer": {k: sig.get(k) for k in ("issuer", "common_name", "alg", "time") if sig.get(k)},
            "title": manifest.get("title"),
        }
        return Signal("c2pa", assertion, trust, generated, label, "C2PA manifest", details)


def _claim_generator(manifest: dict) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        name, version = info[0].get("name"), info[0].get("version")
        if name:
            return f"{name} {version}".strip() if version else str(name)
    gen = manifest.get("claim_generator")
    return str(gen)[:200] if gen else None


def _actions(manifest: dict) -> list[dict]:
    out = []
    for a in manifest.get("assertions") or []:
        if isinstance(a, dict) and str(a.get("label", "")).startswith("c2pa.actions"):
            acts = (a.get("data") or {}).get("actions") or []
            out.extend(x for x in acts if isinstance(x, dict))
    for x in out:
        agent = x.get("softwareAgent")
        if isinstance(agent, dict):
            x["softwareAgent"] = agent.get("name")
    return out

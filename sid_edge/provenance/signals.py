"""A provenance signal: one piece of evidence about where an image came from, found beside its pixels.

Kinds (:data:`KINDS`):

* ``c2pa`` — a C2PA manifest (content credentials): signed claims about how the file was made.
* ``iptc`` — the IPTC digital source type (``Iptc4xmpExt:DigitalSourceType`` in the XMP packet).
* ``generator-metadata`` — what generation tools write into PNG text chunks, EXIF and XMP fields.
* ``watermark`` — an invisible watermark decoded from the pixels (Stable Diffusion's DWT-DCT bit patterns).

Trust levels (:data:`TRUST_LEVELS`), from strongest to weakest:

* ``trusted`` — a C2PA signature that verifies and chains to a certificate on the trust list given.
* ``valid-untrusted`` — a C2PA signature that verifies, from a signer not on any trust list given: the manifest
  is intact since signing, but anyone can make such a certificate.
* ``invalid`` — a C2PA manifest that is present but fails validation (tampered content, broken signature,
  unreadable manifest). Evidence that something was altered, not of who made the image.
* ``unsigned`` — a metadata claim anyone can write, forge or strip (IPTC, text chunks, EXIF).
* ``statistical`` — a watermark's bit agreement with a known pattern; strong when high, never proof, and removed
  by resizing, cropping or re-encoding.

A signal never changes p_synthetic: the CLIP score stays pixel-only, provenance is separate evidence beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("c2pa", "iptc", "generator-metadata", "watermark")
TRUST_LEVELS = ("trusted", "valid-untrusted", "invalid", "unsigned", "statistical")


def _clean(text: str, limit: int = 120) -> str:
    """One line, no CSV-cell separators (``;``), at most ``limit`` characters."""
    s = " ".join(str(text).split()).replace(";", ",")
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass(frozen=True)
class Signal:
    """One provenance signal of one image.

    Attributes:
        kind: one of :data:`KINDS`.
        assertion: what the signal says, in words ("created by a generative model (trainedAlgorithmicMedia)",
            "generation parameters written by ComfyUI", ...).
        trust: one of :data:`TRUST_LEVELS` (how much the assertion can be relied on; see the module text).
        generated: True when the signal says the image was made or edited with a generative model, False when it
            says the opposite (e.g. ``digitalCapture``), None when it says neither (e.g. an invalid manifest).
        label: a short form for a CSV cell (no ``;``), e.g. "trainedAlgorithmicMedia (valid-untrusted)".
        source: where it was found ("C2PA manifest", "XMP Iptc4xmpExt:DigitalSourceType", "PNG text chunk
            'parameters'", "EXIF Software", "DWT-DCT watermark").
        details: JSON-able extra facts (claim generator, validation codes, tool, bit agreement, ...).
    """

    kind: str
    assertion: str
    trust: str
    generated: bool | None
    label: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown signal kind {self.kind!r}")
        if self.trust not in TRUST_LEVELS:
            raise ValueError(f"unknown trust level {self.trust!r}")
        object.__setattr__(self, "label", _clean(self.label))  # labels may quote hostile metadata: keep cells intact

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (JSONL rows, the service's JSON): kind, assertion, trust, generated, label, source,
        details."""
        return {"kind": self.kind, "assertion": self.assertion, "trust": self.trust, "generated": self.generated,
                "label": self.label, "source": self.source, "details": self.details}

    def compact(self) -> str:
        """``kind:label`` for a CSV cell; cells join several with ``;``."""
        return f"{self.kind}:{self.label}"


def csv_cell(signals) -> str:
    """The compact CSV form of a list of signals: ``kind:label;kind:label`` ("" for none)."""
    return ";".join(s.compact() for s in signals or ())

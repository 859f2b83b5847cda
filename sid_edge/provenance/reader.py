"""Read every provenance signal of an image: C2PA, IPTC digital source type, generator metadata, watermark."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sid_edge.provenance import c2pa_reader, watermark
from sid_edge.provenance.containers import Limits, read_metadata
from sid_edge.provenance.metadata import exif_signals, text_chunk_signals, xmp_signals
from sid_edge.provenance.signals import Signal

log = logging.getLogger(__name__)

#: Watermark decoding needs the pixels; images above this many pixels are not checked (decoding time and memory).
DEFAULT_WATERMARK_MAX_PIXELS = 16_777_216


@dataclass
class ProvenanceResult:
    """All signals of one image and what could not be checked.

    Attributes:
        signals: the signals found, in the order c2pa, iptc, generator-metadata, watermark.
        notes: what was skipped or malformed (oversized chunks, unparsable XMP, a file too large, ...).
    """

    signals: list[Signal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"signals": [s.to_dict() for s in self.signals], "notes": list(self.notes)}


class ProvenanceReader:
    """Reads provenance signals of files or encoded bytes; one instance serves a whole scan (concurrent use from
    several threads is untested: give each thread its own reader).

    Args:
        c2pa_trust: PEM file of trust anchors for C2PA signers (None: no signer is trusted).
        check_c2pa: read C2PA manifests (needs c2pa-python; skipped with a note when absent).
        check_watermark: decode the invisible watermark (needs the pixels: a second decode of each image; needs
            invisible-watermark and PyWavelets).
        limits: size and count caps (see :class:`~sid_edge.provenance.containers.Limits`).
        watermark_max_pixels: images with more pixels are not checked for a watermark.

    Raises:
        ValueError: an unusable trust file.

    ``unavailable`` maps each check that cannot run here to the reason (a missing library).
    """

    def __init__(self, c2pa_trust: str | os.PathLike | None = None, *, check_c2pa: bool = True,
                 check_watermark: bool = False, limits: Limits | None = None,
                 watermark_max_pixels: int = DEFAULT_WATERMARK_MAX_PIXELS):
        self.limits = limits or Limits()
        self.watermark_max_pixels = watermark_max_pixels
        self.unavailable: dict[str, str] = {}
        self._c2pa = None
        if check_c2pa:
            reason = c2pa_reader.available()
            if reason is None:
                self._c2pa = c2pa_reader.C2paChecker(c2pa_trust)
            elif c2pa_trust is not None:
                raise ValueError(f"--c2pa-trust needs c2pa-python: {reason}")
            else:
                self.unavailable["c2pa"] = reason
        self._watermark = False
        if check_watermark:
            reason = watermark.available()
            if reason is None:
                self._watermark = True
            else:
                self.unavailable["watermark"] = reason
        try:
            import defusedxml  # noqa: F401
        except ImportError:
            self.unavailable["iptc"] = "XMP not read: defusedxml is not installed; pip install 'sid-edge[provenance]'"

    @property
    def checks(self) -> list[str]:
        """The checks this reader runs, e.g. ["c2pa", "iptc", "generator-metadata", "watermark"]."""
        out = ["c2pa"] if self._c2pa else []
        out += [] if "iptc" in self.unavailable else ["iptc"]
        out += ["generator-metadata"] + (["watermark"] if self._watermark else [])
        return out

    def __call__(self, source) -> list[dict]:
        """The JSON-able signals of ``source`` (what :class:`~sid_edge.runtime.detector.Detector` attaches to
        ``Prediction.provenance``); never raises."""
        return [s.to_dict() for s in self.read(source).signals]

    def read(self, source) -> ProvenanceResult:
        """Signals of one image: a file path (str/PathLike) or the encoded bytes of a file. Other sources (PIL
        images, pixel arrays) carry no file metadata: C2PA/XMP/text checks give nothing and, for uint8 RGB arrays,
        only the watermark is checked. Never raises: unreadable input gives notes and no signals."""
        result = ProvenanceResult()
        try:
            data = self._bytes(source, result)
            if data is not None:
                self._read_file(data, result)
            elif isinstance(source, np.ndarray) and self._watermark:
                self._check_watermark_rgb(source, result)
        except Exception as e:  # noqa: BLE001 - last line of defence: hostile input never ends a scan
            log.debug("provenance of %r failed", source, exc_info=True)
            result.notes.append(f"provenance not read ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
        return result

    def _bytes(self, source, result: ProvenanceResult) -> bytes | None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) > self.limits.max_file_bytes:
                result.notes.append(f"larger than {self.limits.max_file_bytes} bytes: provenance not read")
                return None
            return data
        if not isinstance(source, (str, os.PathLike)):
            return None
        p = Path(source)
        try:
            st = p.stat()
        except OSError as e:
            result.notes.append(f"cannot read file ({e.strerror or type(e).__name__})")
            return None
        if not stat.S_ISREG(st.st_mode):
            result.notes.append("not a regular file: provenance not read")
            return None
        if st.st_size > self.limits.max_file_bytes:
            result.notes.append(f"file larger than {self.limits.max_file_bytes} bytes: provenance not read")
            return None
        with open(p, "rb") as f:
            return f.read(self.limits.max_file_bytes + 1)[: self.limits.max_file_bytes]

    def _read_file(self, data: bytes, result: ProvenanceResult) -> None:
        if self._c2pa is not None:
            result.signals += self._c2pa.check(data)
        meta = read_metadata(data, self.limits)
        result.signals += xmp_signals(meta)
        result.signals += text_chunk_signals(meta)
        result.signals += exif_signals(meta)
        result.notes += meta.notes
        if self._watermark:
            self._check_watermark_file(data, result)
        seen, unique = set(), []
        for s in result.signals:  # the same claim found twice (e.g. XMP in two places) is one signal
            key = (s.kind, s.label, s.source)
            if key not in seen:
                seen.add(key)
                unique.append(s)
        result.signals = unique

    def _check_watermark_file(self, data: bytes, result: ProvenanceResult) -> None:
        from sid_edge.runtime.images import ImageDecodeError, decode_image

        try:
            im = decode_image(data, max_pixels=self.watermark_max_pixels)
        except ImageDecodeError as e:
            result.notes.append(f"watermark not checked: {e.reason}")
            return
        self._check_watermark_rgb(np.asarray(im), result)

    def _check_watermark_rgb(self, rgb: np.ndarray, result: ProvenanceResult) -> None:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            return
        if rgb.shape[0] * rgb.shape[1] > self.watermark_max_pixels:
            result.notes.append(f"watermark not checked: more than {self.watermark_max_pixels} pixels")
            return
        try:
            result.signals += watermark.check_bgr(np.ascontiguousarray(rgb[..., ::-1]))
        except ValueError as e:
            result.notes.append(f"watermark not checked: {e}")


def read_provenance(source, **options) -> ProvenanceResult:
    """One-off convenience: ``ProvenanceReader(**options).read(source)``. For many images build one reader."""
    return ProvenanceReader(**options).read(source)

"""Format and metadata bias: can the label be predicted without looking at pixels? (torch-free)

A detector trained on real = JPEG and synthetic = PNG can learn to detect JPEG. :func:`container_facts` reads, from
each file's header only (Pillow ``Image.open``, no pixel decoding): the container format, the JPEG quality
(estimated from the luminance quantization table, see :func:`estimate_jpeg_quality`), the pixel count and whether
EXIF is present. :func:`label_bias` then measures how well each of them alone predicts the label:

* categorical (format, EXIF present): balanced accuracy of the rule "predict each value's majority label";
* numeric (JPEG quality over JPEG files, megapixels): ROC AUC of the value as a score, folded to >= 0.5
  (Mann-Whitney U / (n_real · n_synthetic), ties counted half).

A figure at or above ``warn_at`` (default 0.8; 0.5 means no information) is a warning: the training or test data
lets a detector separate the classes by how the files were stored, not by what they show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sid_edge.runtime.images import ImageDecodeError, open_image_source

#: The IJG (libjpeg) standard luminance quantization table (ITU-T T.81 Annex K, Table K.1).
_STD_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                      14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                      92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
WARN_AT = 0.8


def _ijg_table(q: int) -> np.ndarray:
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((_STD_LUMA * scale + 50) // 100, 1, 255)


def estimate_jpeg_quality(luma_table) -> int:
    """The IJG quality (1..100) whose scaled standard luminance table has the sum closest to ``luma_table``'s
    (64 values, any order; libjpeg's scaling ``(std·S + 50) // 100``, S = 5000/q below 50 else 200 − 2q)."""
    total = int(np.sum(np.asarray(list(luma_table), dtype=np.int64)))
    sums = np.array([_ijg_table(q).sum() for q in range(1, 101)])
    return int(np.argmin(np.abs(sums - total)) + 1)


@dataclass
class FileFacts:
    """Header facts of one file: ``format`` (Pillow's name, or "unreadable"), ``jpeg_quality`` (None unless JPEG),
    ``megapixels`` (NaN when unreadable), ``has_exif``."""

    format: str
    jpeg_quality: int | None
    megapixels: float
    has_exif: bool


def container_facts(source) -> FileFacts:
    """:class:`FileFacts` of a path, bytes or dataset reference, from its header (never decodes pixels)."""
    try:
        src = source.resolve_image() if hasattr(source, "resolve_image") else source
        _, fp, _ = open_image_source(src)
        with fp, Image.open(fp) as im:
            q = None
            if im.format == "JPEG" and getattr(im, "quantization", None):
                q = estimate_jpeg_quality(im.quantization.get(0, []))
            exif = bool(im.info.get("exif")) or bool(im.getexif())
            return FileFacts(im.format or "unknown", q, im.width * im.height / 1e6, exif)
    except (ImageDecodeError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return FileFacts("unreadable", None, float("nan"), False)


def _auc(labels: np.ndarray, x: np.ndarray) -> float:
    pos, neg = x[labels == 1], x[labels == 0]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]  # average ranks of ties (1-based)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def _rule_balanced_accuracy(labels: np.ndarray, values: list) -> float:
    if len(set(labels.tolist())) < 2:
        return float("nan")
    pred = np.zeros_like(labels)
    for v in set(values):
        m = np.array([x == v for x in values])
        pred[m] = int(labels[m].mean() >= 0.5)
    return float(np.mean([np.mean(pred[labels == c] == c) for c in (0, 1)]))


@dataclass
class BiasFinding:
    """How well ``feature`` alone predicts the label: ``measure`` ("balanced accuracy" or "AUC"), ``value`` in
    [0.5, 1] (NaN when not measurable), ``by_label`` (what each class looks like, for people), ``n`` files used."""

    feature: str
    measure: str
    value: float
    by_label: dict
    n: int

    def warns(self, warn_at: float = WARN_AT) -> bool:
        return not math.isnan(self.value) and self.value >= warn_at

    def describe(self) -> str:
        parts = "; ".join(f"{k}: {v}" for k, v in self.by_label.items())
        return f"the label is predictable from {self.feature} ({self.measure} {self.value:.2f} over {self.n} files; {parts})"


def _share(values: list) -> str:
    if not values:
        return "none"
    vals, counts = np.unique(np.asarray([str(v) for v in values]), return_counts=True)
    order = np.argsort(-counts)[:3]
    return ", ".join(f"{vals[i]} {counts[i] / len(values):.0%}" for i in order)


def label_bias(items, facts: list[FileFacts] | None = None) -> list[BiasFinding]:
    """Findings for format, EXIF presence, JPEG quality and megapixels over labelled ``items`` (anything with
    ``.image`` and ``.label`` 0 real / 1 synthetic). ``facts``: precomputed :func:`container_facts` per item."""
    facts = facts if facts is not None else [container_facts(it.image) for it in items]
    labels = np.array([int(it.label) for it in items], dtype=np.int64)
    names = {0: "real", 1: "synthetic"}
    out = []
    for feature, get in (("file format", lambda f: f.format), ("EXIF presence", lambda f: "EXIF" if f.has_exif else "no EXIF")):
        values = [get(f) for f in facts]
        out.append(BiasFinding(feature, "balanced accuracy", _rule_balanced_accuracy(labels, values),
                               {names[c]: _share([v for v, y in zip(values, labels) if y == c]) for c in (0, 1)},
                               len(values)))
    jpeg = [i for i, f in enumerate(facts) if f.jpeg_quality is not None]
    if jpeg:
        q = np.array([facts[i].jpeg_quality for i in jpeg], dtype=np.float64)
        y = labels[jpeg]
        auc = _auc(y, q)
        out.append(BiasFinding("JPEG quality", "AUC", max(auc, 1 - auc) if not math.isnan(auc) else auc,
                               {names[c]: (f"median Q {np.median(q[y == c]):.0f}" if (y == c).any() else "no JPEG")
                                for c in (0, 1)}, len(jpeg)))
    mp = np.array([f.megapixels for f in facts])
    ok = ~np.isnan(mp)
    if ok.any():
        auc = _auc(labels[ok], mp[ok])
        out.append(BiasFinding("image size", "AUC", max(auc, 1 - auc) if not math.isnan(auc) else auc,
                               {names[c]: (f"median {np.median(mp[ok][labels[ok] == c]):.2f} MP"
                                           if (labels[ok] == c).any() else "none") for c in (0, 1)}, int(ok.sum())))
    return out


def format_bias(items, warn_at: float = WARN_AT) -> list[str]:
    """Warning lines (empty when nothing is predictable at ``warn_at``) for :func:`label_bias` of ``items``."""
    return [f.describe() + "; a detector can learn how the files were stored instead of what they show"
            for f in label_bias(items) if f.warns(warn_at)]

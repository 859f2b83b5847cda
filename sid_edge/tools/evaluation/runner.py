"""``sid-edge evaluate``: score labelled datasets with detector artifacts and report detection metrics (torch-free).

For each artifact (detector) and each dataset: mAP and AP, accuracy and balanced accuracy at the artifact's
threshold, real and synthetic accuracy, and AP per generator (:mod:`sid_edge.tools.evaluation.metrics`); with several artifacts
and datasets, the detector-by-dataset matrix the paper reports. Outputs: ``report.md``, ``report.json``,
``scores.csv`` and PNG plots (:func:`write_report`). Thresholds can be chosen at a target false-positive rate on
real images (:func:`choose_thresholds`) and written into the manifest (:func:`write_threshold`).

How images are scored, and computed once:

* **Orthogonal and linear heads, FP32** (artifacts with ``head.npz``): artifacts whose backbone identity (manifest
  ``backbone``, which for random weights includes a weights fingerprint) and preprocessing agree form a group. One
  artifact of the group runs its graph over a dataset to get the ``features`` output [N,D] (the pooled feature the
  heads read); every head of the group is then applied in numpy (:mod:`sid_edge.runtime.numpy_head`). On the first
  computed batch the runner's numpy head must reproduce its graph's own ``logit`` within 1e-3, else the run stops:
  ``head.npz`` does not match the graph.
* **Everything else** — FP16/INT8 variants (their backbone is quantised per artifact and the head may read
  quantised features, so nothing is shared), concept-model heads (kind ``concepts``: p_synthetic comes from gated
  concept scores), artifacts exported before ``head.npz`` existed: each artifact runs its own graph and its
  ``logit``/``p_synthetic`` are used.

Both kinds of values are cached per image (:mod:`sid_edge.tools.caches`), keyed by what computed them (the features
key, or the model file's sha256) and by the sha256 of each image's bytes, under ``$SID_EDGE_CACHE/evaluation`` (the
user cache dir otherwise): a second run does not run the backbone again, a renamed image still hits, an edited one
misses. Images that fail to decode are reported (count and first reasons) and left out of the metrics. Artifacts
with INT8 variants record their calibration images (manifest ``calibration``); evaluating such an artifact on the
same dataset excludes those image ids, and the report says how many.

Thresholds at a target false-positive rate are chosen on each artifact's own graph outputs (cached the same way),
never on shared features: a head applied in numpy can differ from the graph in the last float32 bit, and the
threshold is compared, in ``scan``, with the graph's p_synthetic. Accuracies in the evaluation itself come from the
shared features, so an image lying within that bit of the threshold can fall on the other side there.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sid_edge.tools.datasets import HF_PREFIX, LabelledImage, dataset_location, read_labelled_images
from sid_edge.runtime.detector import Detector, default_precision, warn_if_random_weights
from sid_edge.tools.evaluation.metrics import (
    DetectionMetrics,
    cross_dataset_matrix,
    detection_metrics,
    generator_groups,
    json_report,
    markdown_report,
    plot_cross_matrix,
    plot_pr_curves,
    plot_score_histogram,
    rates_at_threshold,
    threshold_at_fpr,
    write_json,
)
from sid_edge.runtime.numpy_head import HEAD_ARRAYS, HeadWeights, load_head_weights
from sid_edge.tools.caches import ImageArrayCache, content_sha256, namespace_for
from sid_edge.artifact.manifest import Manifest, ManifestError, artifact_path, model_entry, read_manifest, set_threshold, verify_files
from sid_edge.runtime.batching import iter_batches

log = logging.getLogger(__name__)

#: ``progress(description, total) -> advance(n)``, e.g. from :func:`sid_edge.runtime.progress.progress_tasks`.
TaskFactory = Callable[[str, int], Callable[[int], None]]

#: |numpy head(features) − graph logit| allowed on the runner's first batch.
HEAD_CHECK_TOLERANCE = 1e-3
#: Failure reasons listed per (detector, dataset) in the reports; the count is always complete.
MAX_LISTED_FAILURES = 5
CACHE_FORMAT = 1
#: Computed values are written to the cache every this many images (one shard each), so long runs resume.
CACHE_FLUSH_IMAGES = 2048


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class NamedData:
    """A dataset to evaluate on: its display ``name`` and ``data`` (any form :func:`read_labelled_images` reads)."""

    name: str
    data: str


def _split_name(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path (or ``hf:OWNER/NAME``) -> (None, path)."""
    name, sep, rest = str(spec).partition("=")
    if sep and name and rest and not re.search(r"[/\\:]", name):
        return name, rest
    return None, str(spec)


def default_name(data: str) -> str:
    """A dataset's or artifact's default name: the last part of ``hf:OWNER/NAME``, else the path's stem."""
    text = str(data).rstrip("/\\")
    if text.startswith(HF_PREFIX):
        return text.split("/")[-1]
    p = Path(text)
    return p.stem or p.resolve().name


def parse_named(specs: Iterable[str], what: str = "dataset") -> list[tuple[str, str]]:
    """``NAME=PATH`` or ``PATH`` (named by :func:`default_name`) -> [(name, path)].

    Raises ValueError when two entries get the same name (the message says how to name them apart)."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, path = _split_name(spec)
        name = name or default_name(path)
        if name in [n for n, _ in out]:
            raise ValueError(f"two {what}s are named {name!r}; name them apart with NAME=PATH")
        out.append((name, path))
    return out


@dataclass
class DetectorUnderTest:
    """An artifact prepared for evaluation.

    Attributes:
        name: display name (the artifact folder's name unless given as NAME=DIR).
        directory, manifest, precision: the artifact, its manifest and the model variant evaluated.
        head: the numpy head when the artifact is scored from shared features, else None.
        scoring: "features+head" or "graph"; ``scoring_reason`` says why "graph".
        namespace: cache namespace of the values its group computes (features or this graph's scores).
        graph_namespace: cache namespace of this graph's own scores (what threshold choice reads).
        threshold: the manifest's decision threshold on p_synthetic.
    """

    name: str
    directory: Path
    manifest: Manifest
    precision: str
    head: HeadWeights | None
    scoring: str
    scoring_reason: str
    namespace: str
    graph_namespace: str
    threshold: float

    @property
    def shares_features(self) -> bool:
        return self.scoring == "features+head"

    @property
    def calibration_image_ids(self) -> set[str]:
        cal = self.manifest.calibration
        return set(cal.image_ids) if cal else set()

    @property
    def calibration_hashes(self) -> set[str]:
        """sha256 of the calibration images' bytes (manifests written before sid-edge recorded them: empty)."""
        cal = self.manifest.calibration
        return set(cal.image_sha256) if cal else set()

    def calibrated_on(self, data: str) -> bool:
        """True when the artifact's INT8 calibration set was drawn from ``data`` (same location)."""
        cal = self.manifest.calibration
        if not cal or not cal.image_ids:
            return False
        recorded = cal.location or dataset_location(cal.data)  # older manifests: best effort
        return recorded == dataset_location(data)


def load_detector(name: str, directory: str | os.PathLike, precision: str | None = None) -> DetectorUnderTest:
    """Read an artifact's manifest and decide how it is scored (module docstring).

    Raises ManifestError naming the artifact: unreadable manifest, no such precision, ``head.npz`` missing,
    altered or not a head of the manifest's kind.
    """
    d = Path(directory)
    manifest = read_manifest(d)
    warn_if_random_weights(manifest, d)
    precision = precision or default_precision(manifest)
    entry = model_entry(manifest, precision)
    head_block = manifest.head
    weights = head_block.weights
    outputs = set(manifest.output_names)
    reason = ""
    if head_block.kind not in HEAD_ARRAYS:
        reason = f"head kind {head_block.kind!r}: p_synthetic comes from the graph"
    elif not weights:
        reason = "no head.npz (exported before evaluation could share features)"
    elif "features" not in outputs:
        reason = "the graph has no `features` output"
    elif precision != "fp32":
        reason = f"{precision}: the quantised backbone is this artifact's own"
    preprocessing = {"preprocessing": manifest.preprocessing.to_dict(), "decoding": manifest.decoding,
                     "format": CACHE_FORMAT}
    graph_namespace = namespace_for("scores", {"model_sha256": entry.sha256, **preprocessing})
    if reason:
        return DetectorUnderTest(name, d, manifest, precision, None, "graph", reason, graph_namespace, graph_namespace,
                                 manifest.threshold)
    verify_files(d, weights)
    weights_path = artifact_path(d, weights.file)
    try:
        head = load_head_weights(weights_path, head_block.kind)
    except ValueError as e:
        raise ManifestError(f"{d}: {e}") from e
    if head.feature_dim != manifest.backbone.feature_dim:
        raise ManifestError(f"{weights_path}: the head reads {head.feature_dim}-d features, the backbone gives "
                            f"{manifest.backbone.feature_dim}-d")
    namespace = namespace_for("features", {"backbone": manifest.backbone.to_dict(), "precision": "fp32",
                                           "output": "features", **preprocessing})
    return DetectorUnderTest(name, d, manifest, precision, head, "features+head", "", namespace, graph_namespace,
                             manifest.threshold)


# ------------------------------------------------------------------------------------------------ scoring
@dataclass
class ScoredDataset:
    """One detector's scores on one dataset (images that decoded, calibration images excluded).

    Arrays [n]: ``labels`` int64, ``p_synthetic`` and ``logit`` float32; lists [n]: ``sources``, ``keys``,
    ``image_ids``. ``failed``: (key, reason) of every image that could not be read or decoded.
    ``excluded_calibration``: images left out because the artifact was calibrated on them. ``computed`` /
    ``cached``: images run through a graph in this call / read from the cache. ``runner``: the artifact whose
    graph computed the values; ``backend``: where it ran (None when everything came from the cache). ``split``:
    the split read (None for a dataset without splits, which is used whole).
    """

    detector: str
    dataset: str
    labels: np.ndarray
    p_synthetic: np.ndarray
    logit: np.ndarray
    sources: list[str]
    keys: list[str]
    image_ids: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)
    excluded_calibration: int = 0
    computed: int = 0
    cached: int = 0
    runner: str = ""
    backend: str | None = None
    scoring: str = ""
    split: str | None = None

    def notes(self) -> list[str]:
        """Lines for the report: exclusions, failures, where the scores came from."""
        lines = []
        if self.excluded_calibration:
            lines.append(f"{_count(self.excluded_calibration, 'calibration image')} excluded (the artifact's INT8 "
                         f"variant was calibrated on them)")
        if self.failed:
            listed = "; ".join(f"{k}: {r}" for k, r in self.failed[:MAX_LISTED_FAILURES])
            lines.append(f"{_count(len(self.failed), 'image')} could not be read or decoded and "
                         f"{'is' if len(self.failed) == 1 else 'are'} left out ({listed}"
                         + (", …)" if len(self.failed) > MAX_LISTED_FAILURES else ")"))
        how = "head applied to shared features" if self.scoring == "features+head" else "own graph"
        lines.append(f"scores: {how}; {self.computed} images computed by {self.runner}"
                     + (f" on {self.backend}" if self.backend else "") + f", {self.cached} from the cache")
        return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def hash_images(items: Sequence[LabelledImage], progress: TaskFactory | None = None,
                description: str = "Hashing images") -> tuple[list[str | None], dict[int, str]]:
    """sha256 of every item's bytes; returns (hashes, {index: reason}) with None for unreadable items."""
    advance = progress(description, len(items)) if progress else (lambda n=1: None)
    hashes: list[str | None] = []
    errors: dict[int, str] = {}
    for i, it in enumerate(items):
        try:
            hashes.append(content_sha256(it.image))
        except (OSError, ValueError) as e:
            hashes.append(None)
            errors[i] = f"unreadable: {type(e).__name__}: {e}"
        advance(1)
    return hashes, errors


@dataclass
class _GroupValues:
    values: dict[str, np.ndarray]  # field -> [N, ...] float32 (NaN rows where missing)
    errors: dict[int, str]
    computed: int
    cached: int
    backend: str | None


class _Scorer:
    """Runs groups of detectors over datasets, reading and filling the per-image cache. With ``own_graph`` every
    detector is scored by its own graph (no shared features)."""

    def __init__(self, detectors: Sequence[DetectorUnderTest], *, batch_size: int, backend: str, workers: int | None,
                 cache_root: str | os.PathLike | None, use_cache: bool, progress: TaskFactory | None,
                 own_graph: bool = False, perturbation=None):
        self.own_graph = own_graph
        # A sid_edge.robustness Perturbation applied to every image after decoding (None: the images as they are).
        # Its values are cached in their own namespace, keyed by the unperturbed one and the perturbation.
        self.perturbation = perturbation
        self.groups: dict[str, list[DetectorUnderTest]] = {}
        for det in detectors:
            self.groups.setdefault(det.graph_namespace if own_graph else det.namespace, []).append(det)
        self.batch_size, self.backend, self.workers = batch_size, backend, workers
        self.cache_root, self.use_cache, self.progress = cache_root, use_cache, progress
        self._hashes: dict = {}
        self._runners: dict[str, Detector] = {}
        self._checked: set[str] = set()

    def runner(self, namespace: str) -> Detector:
        if namespace not in self._runners:
            det = self.groups[namespace][0]
            self._runners[namespace] = Detector.load(det.directory, precision=det.precision, backend=self.backend)
        return self._runners[namespace]

    def shared(self, namespace: str) -> bool:
        """True when the group computes features that its heads are applied to."""
        return not self.own_graph and self.groups[namespace][0].shares_features

    def fields(self, namespace: str) -> dict[str, tuple[int, ...]]:
        det = self.groups[namespace][0]
        if self.shared(namespace):
            return {"features": (det.head.feature_dim,)}
        return {"logit": (), "p_synthetic": ()}

    def group_values(self, namespace: str, items: Sequence[LabelledImage], hashes: Sequence[str | None],
                     unreadable: dict[int, str], dataset: str) -> _GroupValues:
        lead = self.groups[namespace][0]
        fields = self.fields(namespace)
        shared = self.shared(namespace)
        pert = self.perturbation
        about = {"what": "backbone features (graph output `features`)" if shared else "logit and p_synthetic of one graph",
                 "artifact": str(lead.directory), "precision": lead.precision, "backbone": lead.manifest.backbone.to_dict()}
        cache_namespace = namespace
        if pert is not None:
            cache_namespace = namespace_for("perturbed", {"unperturbed": namespace, **pert.identity()})
            about["perturbation"] = pert.identity()
        cache = ImageArrayCache(cache_namespace, fields, self.cache_root, about=about)
        n = len(items)
        if self.use_cache:
            values, found, errors = cache.load(hashes)
        else:
            values = {k: np.full((n, *s), np.nan, np.float32) for k, s in fields.items()}
            found, errors = np.zeros(n, dtype=bool), {}
        errors.update(unreadable)
        missing = [i for i in range(n) if not found[i] and i not in errors]
        cached = int(found.sum()) + len([i for i in errors if i not in unreadable])
        if not missing:
            return _GroupValues(values, errors, 0, cached, None)
        det = self.runner(namespace)
        who = f"{lead.name} (features for {len(self.groups[namespace])} heads)" if shared else lead.name
        if pert is not None:
            from sid_edge.robustness.sources import PerturbedImage

            who += f", {pert.name}"
        advance = self.progress(f"{dataset}: {who}", len(missing)) if self.progress else (lambda k=1: None)
        new_errors: dict[str, str] = {}
        done: list[int] = []

        def flush() -> None:
            # Stored as the run goes: an interrupted run over a large dataset keeps what it computed.
            if self.use_cache and (done or new_errors):
                stored = [i for i in done if hashes[i] is not None]
                cache.store([hashes[i] for i in stored], {k: values[k][stored] for k in fields}, new_errors)
            done.clear()
            new_errors.clear()

        sources = [items[i].image for i in missing]
        if pert is not None:
            sources = [PerturbedImage(src, pert) for src in sources]
        for batch in iter_batches(sources, det.preprocessing, self.batch_size, workers=self.workers):
            for it in batch.items:
                if it.error is not None:
                    errors[missing[it.index]] = it.error
                    if hashes[missing[it.index]] is not None:
                        new_errors[hashes[missing[it.index]]] = it.error
            pixels = batch.pixel_values
            if pixels is not None:
                outs = det.run(pixels)
                rows = [missing[it.index] for it in batch.ok]
                if shared:
                    self._check_head(namespace, outs)
                for k in fields:
                    values[k][rows] = outs[k]
                done.extend(rows)
            advance(len(batch.items))
            if len(done) >= CACHE_FLUSH_IMAGES:
                flush()
        flush()
        return _GroupValues(values, errors, len(missing), cached, det.backend_name)

    def _check_head(self, namespace: str, outs: dict[str, np.ndarray]) -> None:
        """The runner's numpy head must give its graph's logit from the graph's features (once per group)."""
        if namespace in self._checked:
            return
        lead = self.groups[namespace][0]
        diff = float(np.max(np.abs(lead.head.logit(outs["features"]) - outs["logit"])))
        if not diff <= HEAD_CHECK_TOLERANCE:
            raise ManifestError(
                f"{lead.directory / lead.manifest.head.weights.file}: the head weights do not reproduce the "
                f"graph's logit from its features (max |Δlogit| {diff:.3g} > {HEAD_CHECK_TOLERANCE}); the file does not "
                f"belong to {lead.directory / model_entry(lead.manifest, lead.precision).file}")
        self._checked.add(namespace)

    def score(self, data: NamedData, split: str | None) -> dict[str, ScoredDataset]:
        """Every detector's :class:`ScoredDataset` on ``data`` (its ``split``), by detector name.

        Raises FileNotFoundError/ValueError from the dataset reader, ManifestError/BackendUnavailable when a graph
        cannot be loaded or its head check fails."""
        items = read_labelled_images(data.data, split=split)
        read_split = split if any(it.split is not None for it in items) else None
        hashes, unreadable = self.hashes(data, split, items)
        out = {}
        for namespace, dets in self.groups.items():
            gv = self.group_values(namespace, items, hashes, unreadable, data.name)
            ok = np.array([i for i in range(len(items)) if i not in gv.errors], dtype=np.int64)
            failed = [(items[i].key, gv.errors[i]) for i in sorted(gv.errors)]
            for det in dets:
                if self.shared(namespace):
                    feats = gv.values["features"][ok]
                    logit = det.head.logit(feats) if len(ok) else np.zeros(0, np.float32)
                    p = det.head.p_synthetic(feats) if len(ok) else np.zeros(0, np.float32)
                else:
                    logit, p = gv.values["logit"][ok], gv.values["p_synthetic"][ok]
                keep = np.ones(len(ok), dtype=bool)
                if det.calibration_hashes:  # by content: the same images however the dataset path is spelled
                    cal = det.calibration_hashes
                    keep = np.array([hashes[i] not in cal for i in ok], dtype=bool)
                elif det.calibrated_on(data.data):
                    ids = det.calibration_image_ids
                    keep = np.array([items[i].image_id not in ids for i in ok], dtype=bool)
                rows = ok[keep]
                out[det.name] = ScoredDataset(
                    detector=det.name, dataset=data.name,
                    labels=np.array([items[i].label for i in rows], dtype=np.int64),
                    p_synthetic=np.asarray(p, np.float32)[keep], logit=np.asarray(logit, np.float32)[keep],
                    sources=[items[i].source for i in rows], keys=[items[i].key for i in rows],
                    image_ids=[items[i].image_id for i in rows], failed=failed,
                    excluded_calibration=int((~keep).sum()), computed=gv.computed, cached=gv.cached,
                    runner=dets[0].name, backend=gv.backend, split=read_split,
                    scoring="features+head" if self.shared(namespace) else "graph",
                )
        return out

    def hashes(self, data: NamedData, split: str | None, items: Sequence[LabelledImage]):
        """:func:`hash_images` of ``items``, computed once per (data, split) for this scorer and its copies."""
        key = (data.data, split, len(items))
        if key not in self._hashes:
            self._hashes[key] = hash_images(items, self.progress, f"{data.name}: hashing {len(items)} images")
        return self._hashes[key]

    def with_perturbation(self, perturbation) -> "_Scorer":
        """A scorer over the same groups, runners and hash memo that perturbs every image (None: none)."""
        other = object.__new__(_Scorer)
        other.__dict__.update(self.__dict__)  # shares groups, runners, checked heads and hashes
        other.perturbation = perturbation
        return other

    def close(self) -> None:
        for det in self._runners.values():
            det.backend.close()
        self._runners.clear()


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class ThresholdChoice:
    """A threshold chosen at a target false-positive rate on real images.

    ``achieved_fpr`` (on those reals) can be below ``target_fpr`` because ties are never split; ``tpr`` is the
    share of the same data's synthetic images flagged (NaN without synthetic images)."""

    detector: str
    threshold: float
    target_fpr: float
    achieved_fpr: float
    tpr: float
    n_real: int
    n_synthetic: int
    data: str
    split: str | None
    precision: str

    def to_manifest(self) -> dict:
        """What ``manifest["threshold_choice"]`` records."""
        return {"method": "target false-positive rate on real images", "data": self.data,
                "location": dataset_location(self.data), "split": self.split, "target_fpr": self.target_fpr,
                "achieved_fpr": self.achieved_fpr, "tpr": None if math.isnan(self.tpr) else self.tpr,
                "n_real": self.n_real, "n_synthetic": self.n_synthetic, "precision": self.precision}


@dataclass
class Evaluation:
    """Everything ``evaluate`` measured: ``metrics`` and ``scored`` by (detector, dataset), in ``detectors`` x
    ``datasets`` order; ``thresholds`` used per detector; ``threshold_choices`` when chosen from data."""

    detectors: list[str]
    datasets: list[str]
    metrics: dict[tuple[str, str], DetectionMetrics]
    scored: dict[tuple[str, str], ScoredDataset]
    thresholds: dict[str, float]
    threshold_choices: dict[str, ThresholdChoice] = field(default_factory=dict)
    split: str | None = None
    #: With perturbations: one :class:`sid_edge.tools.evaluation.perturbed.PerturbedResult` per (detector, dataset,
    #: perturbation), in that order.
    perturbed: list = field(default_factory=list)

    def matrix(self, metric: str = "map") -> np.ndarray:
        """[detectors, datasets] matrix of ``metric`` ("map" or "ap")."""
        return cross_dataset_matrix(self.metrics, self.detectors, self.datasets, metric)


def choose_thresholds(detectors: Sequence[DetectorUnderTest], data: NamedData, *, split: str | None = "validation",
                      target_fpr: float = 0.01, batch_size: int = 8, backend: str = "auto", workers: int | None = None,
                      cache_root: str | os.PathLike | None = None, use_cache: bool = True,
                      progress: TaskFactory | None = None) -> dict[str, ThresholdChoice]:
    """For each detector, the threshold at ``target_fpr`` on the real images of ``data`` (:func:`threshold_at_fpr`),
    with the FPR reached and the TPR on its synthetic images. Scores come from each artifact's own graph (one pass
    per artifact, cached), so the FPR reported is the one ``scan`` and ``Detector`` produce on that data with the
    same precision and backend.

    Raises ValueError for a target outside [0, 1] or data without real images; FileNotFoundError/ValueError from
    the reader; ManifestError when a graph cannot be used."""
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target false-positive rate {target_fpr} is not in [0, 1]")
    # Each artifact's own graph: the threshold is compared with exactly the p_synthetic the runtime computes (a head
    # applied to shared features can differ from it in the last float32 bit, enough to move the boundary image).
    scorer = _Scorer(detectors, batch_size=batch_size, backend=backend, workers=workers, cache_root=cache_root,
                     use_cache=use_cache, progress=progress, own_graph=True)
    try:
        scored = scorer.score(data, split)
    finally:
        scorer.close()
    out = {}
    for det in detectors:
        s = scored[det.name]
        real = s.p_synthetic[s.labels == 0]
        if real.size == 0:
            raise ValueError(f"{data.data}: no real images{f' in split {split!r}' if split else ''} to set a threshold on")
        t = threshold_at_fpr(real, target_fpr)
        fpr, tpr = rates_at_threshold(s.labels, s.p_synthetic, t)
        out[det.name] = ThresholdChoice(det.name, t, target_fpr, fpr, tpr, int(real.size), int((s.labels == 1).sum()),
                                        data.data, s.split, det.precision)
    return out


def write_threshold(detector: DetectorUnderTest, choice: ThresholdChoice) -> Path:
    """Set the artifact's ``manifest["threshold"]`` to the choice and record how it was chosen
    (``manifest["threshold_choice"]``); the manifest is rewritten atomically. Returns its path."""
    path = set_threshold(detector.directory, float(choice.threshold), choice.to_manifest())
    detector.manifest, detector.threshold = read_manifest(detector.directory), float(choice.threshold)
    return path


def evaluate(detectors: Sequence[DetectorUnderTest], datasets: Sequence[NamedData], *, split: str | None = "test",
             thresholds: dict[str, float] | None = None, pairing: str = "auto", batch_size: int = 8,
             backend: str = "auto", workers: int | None = None, cache_root: str | os.PathLike | None = None,
             use_cache: bool = True, progress: TaskFactory | None = None, perturbations: Sequence = ()) -> Evaluation:
    """Score every dataset with every detector and compute :class:`DetectionMetrics` per pair.

    With ``perturbations`` (:class:`sid_edge.robustness.Perturbation`), every dataset is scored once more per
    perturbation and ``Evaluation.perturbed`` holds metrics, flip rate and |Δp| per (detector, dataset,
    perturbation) (:mod:`sid_edge.tools.evaluation.perturbed`).

    Args:
        detectors: from :func:`load_detector`; datasets: named datasets (their ``split``; datasets without splits
            are used whole).
        thresholds: per detector name, a threshold replacing the manifest's (e.g. from :func:`choose_thresholds`).
        pairing: real pairing of the per-generator AP ("auto", "shared", "matched"; see :mod:`sid_edge.tools.evaluation.metrics`).
        batch_size, backend, workers: inference batch, backend (as ``Detector.load``) and decoder threads.
        cache_root, use_cache: the per-image cache (default root ``$SID_EDGE_CACHE/evaluation``).
        progress: task factory for progress bars.

    Raises FileNotFoundError/ValueError (datasets), ManifestError (artifacts, head check), BackendUnavailable.
    """
    thresholds = {d.name: (thresholds or {}).get(d.name, d.threshold) for d in detectors}
    scorer = _Scorer(detectors, batch_size=batch_size, backend=backend, workers=workers, cache_root=cache_root,
                     use_cache=use_cache, progress=progress)
    metrics, scored = {}, {}
    perturbed_scores: dict[tuple[str, str, str], ScoredDataset] = {}
    try:
        for data in datasets:
            for name, s in scorer.score(data, split).items():
                scored[(name, data.name)] = s
            for pert in perturbations:
                for name, s in scorer.with_perturbation(pert).score(data, split).items():
                    perturbed_scores[(name, data.name, pert.name)] = s
    finally:
        scorer.close()
    for det in detectors:
        for data in datasets:
            s = scored[(det.name, data.name)]
            metrics[(det.name, data.name)] = detection_metrics(s.labels, s.p_synthetic, thresholds[det.name],
                                                               s.sources, pairing)
    perturbed = []
    if perturbations:
        from sid_edge.tools.evaluation.perturbed import compare

        perturbed = [compare(scored[(det.name, data.name)], perturbed_scores[(det.name, data.name, pert.name)], pert,
                             thresholds[det.name], pairing)
                     for det in detectors for data in datasets for pert in perturbations]
    return Evaluation([d.name for d in detectors], [d.name for d in datasets], metrics, scored, thresholds,
                      split=split, perturbed=perturbed)


# ------------------------------------------------------------------------------------------------ reports
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


HOW_TO_READ = """## How to read this

* **AP** (average precision, 0 to 1) says how well a detector ranks generated images above real ones, whatever
  threshold is chosen: 1.0 is a perfect ranking; about the share of synthetic images is chance. **mAP** is the mean
  of the AP per generator, the paper's headline figure: a detector can be good on one generator and poor on another.
* **Accuracy** is measured at each detector's threshold: the share of images whose verdict (synthetic or real) is right.
  *Real accuracy* is the share of real photos left alone; 1 − real accuracy is how often a real photo is flagged.
* The **matrix** compares detectors (rows, by what they were trained on) with test datasets (columns): low cells are
  generators or sources a detector does not generalise to.
* Figures from a detector with random weights, or from a handful of images, say nothing about real performance.
"""


def write_report(ev: Evaluation, out_dir: str | os.PathLike, band_coverage: float = 1.0) -> dict[str, Path]:
    """Write ``report.md``, ``report.json``, ``scores.csv`` and PNG plots into ``out_dir`` (created):
    ``cross_dataset_map.png`` / ``cross_dataset_ap.png`` (heat maps), ``pr_<dataset>.png`` (one curve per
    detector), ``pr_<detector>__<dataset>.png`` (all images and one curve per generator against its paired real
    images), ``hist_<detector>__<dataset>.png`` (score histogram, real vs synthetic, threshold marked).

    With perturbations (``ev.perturbed``): an "Under perturbation" section and the uncertain band per detector
    (``band_coverage``, see :func:`sid_edge.robustness.derive_band`) in report.md/report.json, and
    ``perturbation_<detector>.png`` (AP and flip rate against strength).

    Returns {name: path} of every file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    notes = {k: s.notes() for k, s in ev.scored.items()}
    md = markdown_report(ev.metrics, ev.detectors, ev.datasets, notes)
    title, _, rest = md.partition("\n")
    md = f"{title}\n\n{HOW_TO_READ}\n{rest}"
    if ev.threshold_choices:
        md += "\n## Thresholds chosen at a target false-positive rate\n\n| detector | threshold | data | target FPR | " \
              "FPR reached | TPR | real | synthetic |\n|---|---|---|---|---|---|---|---|\n"
        for c in ev.threshold_choices.values():
            md += (f"| {c.detector} | {c.threshold:.6g} | {c.data}{f' ({c.split})' if c.split else ''} | {c.target_fpr:g} | "
                   f"{c.achieved_fpr:.4f} | {'–' if math.isnan(c.tpr) else f'{c.tpr:.4f}'} | {c.n_real} | {c.n_synthetic} |\n")
    band_by_detector = {}
    if ev.perturbed:
        from sid_edge.tools.evaluation import perturbed as pt

        band_by_detector = pt.bands(ev.perturbed, band_coverage)
        p0 = {d: np.concatenate([s.p_synthetic for (det, _), s in ev.scored.items() if det == d]) for d in ev.detectors}
        md += pt.markdown(ev.perturbed, ev.metrics, band_by_detector, p0)
    files["report.md"] = out / "report.md"
    files["report.md"].write_text(md, encoding="utf-8")
    extra = {k: {"excluded_calibration_images": s.excluded_calibration, "failed_images": len(s.failed),
                 "failures": [{"key": key, "reason": r} for key, r in s.failed[:MAX_LISTED_FAILURES]],
                 "scoring": s.scoring, "computed": s.computed, "cached": s.cached, "runner": s.runner,
                 "backend": s.backend} for k, s in ev.scored.items()}
    report = json_report(ev.metrics, ev.detectors, ev.datasets, extra)
    report["split"] = ev.split
    report["thresholds"] = ev.thresholds
    report["threshold_choices"] = {k: {"threshold": c.threshold, **c.to_manifest()} for k, c in ev.threshold_choices.items()}
    if ev.perturbed:
        report["perturbed"] = [r.to_dict() for r in ev.perturbed]
        report["uncertain_bands"] = {d: pt.band_record(b, [r for r in ev.perturbed if r.detector == d], ev.datasets)
                                     for d, b in band_by_detector.items()}
    files["report.json"] = write_json(report, out / "report.json")
    files["scores.csv"] = _write_scores(ev, out / "scores.csv")
    for metric in ("map", "ap"):
        title = ("mAP (mean per-generator AP)" if metric == "map" else "AP (pooled)") + ", detector × test dataset"
        name = f"cross_dataset_{metric}.png"
        files[name] = plot_cross_matrix(ev.matrix(metric), ev.detectors, ev.datasets, out / name, title=title)
    for ds in ev.datasets:
        curves = {det: (ev.scored[(det, ds)].labels, ev.scored[(det, ds)].p_synthetic) for det in ev.detectors}
        name = f"pr_{_slug(ds)}.png"
        files[name] = plot_pr_curves(curves, f"{ds}: precision-recall per detector", out / name,
                                     thresholds={det: ev.metrics[(det, ds)].threshold for det in ev.detectors})
        for det in ev.detectors:
            s, m = ev.scored[(det, ds)], ev.metrics[(det, ds)]
            curves = {"all": (s.labels, s.p_synthetic)}
            groups = generator_groups(s.labels, s.sources, m.pairing)
            if len(groups) > 1:  # with one generator its curve is the "all" curve: drawn once
                for gen, mask in groups.items():
                    curves[gen] = (s.labels[mask], s.p_synthetic[mask])
            name = f"pr_{_slug(det)}__{_slug(ds)}.png"
            files[name] = plot_pr_curves(curves, f"{det} on {ds}: per generator ({m.pairing} reals)", out / name,
                                         thresholds={"all": m.threshold})
            name = f"hist_{_slug(det)}__{_slug(ds)}.png"
            files[name] = plot_score_histogram(s.labels, s.p_synthetic, m.threshold, f"{det} on {ds}", out / name)
    for det in (ev.detectors if ev.perturbed else []):
        name = f"perturbation_{_slug(det)}.png"
        files[name] = pt.plot(ev.perturbed, ev.metrics, det, out / name)
    return files


def _write_scores(ev: Evaluation, path: Path) -> Path:
    """One row per (detector, dataset, image): key, image_id, label, source, p_synthetic, logit, error.

    Text cells are written as scan rows write them (:mod:`sid_edge.runtime.scan`): a non-UTF-8 file name with
    ``\\xNN`` escapes, a cell a spreadsheet would evaluate (a dataset's ``source`` column is the dataset author's
    text) prefixed with ``'``."""
    from sid_edge.runtime.scan import csv_safe, path_text

    def cell(v):
        return csv_safe(path_text(v)) if isinstance(v, str) else v

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["detector", "dataset", "key", "image_id", "label", "source", "p_synthetic", "logit", "error"])
        for (det, ds), s in ev.scored.items():
            for i in range(len(s.labels)):
                w.writerow([cell(det), cell(ds), cell(s.keys[i]), cell(s.image_ids[i]), int(s.labels[i]),
                            cell(s.sources[i]), f"{float(s.p_synthetic[i]):.9g}", f"{float(s.logit[i]):.9g}", ""])
            for key, reason in s.failed:
                w.writerow([cell(det), cell(ds), cell(key), "", "", "", "", "", cell(reason)])
    return path

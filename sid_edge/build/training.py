"""Train any head kind on cached backbone features (needs torch, scikit-learn): ONE loop, one early-stopping rule.

Recipe (Willi et al., clip-cues), the same for every kind of :mod:`sid_edge.build.head_kinds`: a stratified
held-out validation split (scikit-learn ``StratifiedShuffleSplit``) or the dataset's own; AdamW with the kind's
parameter groups; loss = BCE-with-logits (label smoothing from the config) + the kind's regulariser (orthogonal:
0.33·‖I − ÂᵀÂ‖_F, Â the batch's k-d activations L2-normalised per column; concepts: β·KL of the gates to a
Bernoulli(α) prior); early stopping on validation AP (scikit-learn ``average_precision_score``) with patience 5,
ties broken by validation loss, keeping the best epoch's weights.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedShuffleSplit

from sid_edge.build.head_kinds import (
    ConceptTrainConfig,
    ConceptTrainReport,
    HeadKind,
    TrainConfig,
    TrainReport,
    head_kind,
)

__all__ = ["train", "train_head", "train_concept_model", "TrainConfig", "TrainReport", "ConceptTrainConfig",
           "ConceptTrainReport", "EarlyStopping", "stratified_split", "average_precision", "threads_for"]

log = logging.getLogger(__name__)


#: Below this many multiply-accumulates per step, intra-op threads cost more than they give (measured on a busy
#: 2-core machine: 20 epochs of a 48 x 129 concept model took 55 s with 2 threads, 1.2 s with 1).
SMALL_PROBLEM_MACS = 1 << 22


@contextlib.contextmanager
def threads_for(macs_per_step: float):
    """Run the block with one torch thread when a training step is smaller than SMALL_PROBLEM_MACS."""
    threads = torch.get_num_threads()
    if macs_per_step < SMALL_PROBLEM_MACS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class EarlyStopping:
    """Early stopping on validation AP (patience in epochs), keeping a copy of the best weights.

    AP saturates on small validation sets, so equal APs (within 1e-6) are ranked by validation loss. Call
    :meth:`update` after every epoch; it returns True when training should stop. :meth:`restore` loads the best
    weights back. A NaN AP (one class missing from validation) counts as 0.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best = (-1.0, float("inf"))
        self.best_epoch = 0
        self._state = None
        self._bad_epochs = 0

    def update(self, epoch: int, val_ap: float, val_loss: float, module: torch.nn.Module) -> bool:
        ap = 0.0 if np.isnan(val_ap) else val_ap
        if ap > self.best[0] + 1e-6 or (abs(ap - self.best[0]) <= 1e-6 and val_loss < self.best[1] - 1e-6):
            self.best, self.best_epoch, self._bad_epochs = (ap, val_loss), epoch, 0
            self._state = copy.deepcopy(module.state_dict())
            return False
        self._bad_epochs += 1
        return self._bad_epochs >= self.patience

    def restore(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self._state)
        module.eval()


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (train, val) of a stratified split (scikit-learn ``StratifiedShuffleSplit``), deterministic
    for ``seed``.

    The validation split holds ceil(val_fraction · N) items, at least 2 and at most N − 2 (scikit-learn needs one
    item per class on each side), shared between the classes in proportion to their counts. Raises ValueError
    unless both classes are present with at least 2 items each.
    """
    y = np.asarray(labels)
    counts = [int((y == c).sum()) for c in (0, 1)]
    for c, n in enumerate(counts):
        if n == 0:
            raise ValueError(f"training needs both classes; no {'real' if c == 0 else 'synthetic'} images found")
    if min(counts) < 2:
        raise ValueError(f"a stratified validation split needs at least 2 images of each class; found {counts[0]} "
                         f"real and {counts[1]} synthetic")
    n_val = min(len(y) - 2, max(2, math.ceil(val_fraction * len(y) - 1e-9)))
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    train, val = next(splitter.split(np.zeros((len(y), 1)), y))
    if len(np.unique(y[val])) < 2:
        log.warning("the validation split (%d images) has one class only: validation AP is undefined and early "
                    "stopping falls back to validation loss; pass a larger val_fraction", len(val))
    return np.sort(train), np.sort(val)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP (scikit-learn ``average_precision_score``) of scores [N] for labels [N] in {0,1}; NaN when one class is
    missing (AP is undefined there)."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(average_precision_score(labels, scores))


def train(kind: str | HeadKind, features: np.ndarray, labels: np.ndarray, config=None, *, on_epoch=None,
          validation: tuple[np.ndarray, np.ndarray] | None = None, **inputs):
    """Train a head of ``kind`` (a name of :data:`sid_edge.build.head_kinds.HEAD_KINDS` or an entry) on features
    [N,D] float32 (the kind's ``feature``: pooled features for orthogonal/linear, image embeddings for concepts)
    with labels [N] in {0,1}.

    ``config``: the kind's ``config_type`` (default: its defaults). ``inputs``: what the kind needs besides the
    features (concepts: ``text_embeddings`` [C,D]). ``validation``: (features [M,D], labels [M]) of a separate
    validation split (e.g. the dataset's own, as the paper does) for early stopping; by default a stratified
    ``config.val_fraction`` of the training data is held out instead.

    Deterministic for ``config.seed`` (torch's global RNG is seeded: initialisation, binary-concrete gates; a
    separate generator shuffles). Returns (module in eval mode with the best-validation-AP weights, the kind's
    report). ``on_epoch(dict)`` is called after every epoch (for progress output). Raises ValueError for
    mismatched shapes, labels outside {0,1}, or a single class.
    """
    kind = kind if isinstance(kind, HeadKind) else head_kind(kind)
    config = kind.config_type() if config is None else config
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    split = None
    if validation is not None:
        xv, yv = validation
        xv = torch.as_tensor(np.asarray(xv, dtype=np.float32))
        if xv.ndim != 2 or xv.shape[1:] != x.shape[1:] or len(xv) != len(yv) or len(xv) == 0:
            raise ValueError(f"validation features {tuple(xv.shape)} and labels ({len(yv)}) do not match the "
                             f"training features {tuple(x.shape)}")
        split = (np.arange(len(x)), np.arange(len(x), len(x) + len(xv)))
        x, labels = torch.cat([x, xv]), np.concatenate([np.asarray(labels), np.asarray(yv)])
    y_np = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(y_np):
        raise ValueError(f"features {tuple(x.shape)} and labels {y_np.shape} do not match")
    if not set(np.unique(y_np)) <= {0, 1}:
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    with threads_for(min(config.batch_size, len(x)) * x.shape[-1] * kind.width(config, **inputs)):
        return _fit(kind, x, y_np, config, on_epoch, split, inputs)


def train_head(features: np.ndarray, labels: np.ndarray, config: TrainConfig = TrainConfig(), on_epoch=None,
               validation: tuple[np.ndarray, np.ndarray] | None = None):
    """Train an orthogonal or linear head (``config.kind``) on pooled features [N,D]: :func:`train`.
    Returns (head, :class:`TrainReport`)."""
    return train(config.kind, features, labels, config, on_epoch=on_epoch, validation=validation)


def train_concept_model(embeddings: np.ndarray, labels: np.ndarray, text_embeddings: np.ndarray,
                        config: ConceptTrainConfig = ConceptTrainConfig(), on_epoch=None,
                        validation: tuple[np.ndarray, np.ndarray] | None = None):
    """Train a concept bottleneck on image embeddings [N,E] float32 (``Features.embedding``) against concept text
    embeddings [C,E]: :func:`train`. Returns (ConceptBottleneck, :class:`ConceptTrainReport`)."""
    return train("concepts", embeddings, labels, config, on_epoch=on_epoch, validation=validation,
                 text_embeddings=text_embeddings)


def _objective(kind: HeadKind, module, x: torch.Tensor, y: torch.Tensor, config):
    """(loss, bce, logged terms, logit) of a batch: BCE with label smoothing + the kind's weighted regulariser."""
    logit, regulariser, logged = kind.objective(module, x, config)
    target = y * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
    bce = F.binary_cross_entropy_with_logits(logit, target)
    return (bce if regulariser is None else bce + regulariser), bce, logged, logit


def _fit(kind: HeadKind, x: torch.Tensor, y_np: np.ndarray, config, on_epoch, split, inputs):
    torch.manual_seed(config.seed)
    tr, va = split if split is not None else stratified_split(y_np, config.val_fraction, config.seed)
    if len(np.unique(y_np[tr])) < 2:
        raise ValueError("training needs both classes in the training data")
    y = torch.as_tensor(y_np, dtype=torch.float32)
    module = kind.new(x.shape[1], config, **inputs)
    opt = torch.optim.AdamW(kind.param_groups(module, config))
    gen = torch.Generator().manual_seed(config.seed)
    initial = kind.monitor(module, x[tr])
    stopper, history = EarlyStopping(config.patience), []
    for epoch in range(1, config.max_epochs + 1):
        module.train()
        passes = max(1, -(-config.min_steps_per_epoch // -(-len(tr) // config.batch_size)))
        batches = [
            perm[start : start + config.batch_size]
            for perm in (tr[torch.randperm(len(tr), generator=gen).numpy()] for _ in range(passes))
            for start in range(0, len(perm), config.batch_size)
        ]
        sums: dict[str, float] = {}
        n = 0
        for idx in batches:
            loss, bce, logged, _ = _objective(kind, module, x[idx], y[idx], config)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for name, value in {"train_loss": loss, "bce": bce, **logged}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(idx)
            n += len(idx)
        module.eval()
        eval_idx = va if len(va) else tr
        with torch.no_grad():
            val_loss, _, _, val_logit = _objective(kind, module, x[eval_idx], y[eval_idx], config)
        val_ap = average_precision(y_np[va], val_logit.numpy()) if len(va) else float("nan")
        row = {"epoch": epoch, **{name: total / n for name, total in sums.items()}, **kind.monitor(module, x[tr]),
               "val_ap": val_ap, "val_loss": float(val_loss)}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if stopper.update(epoch, val_ap, float(val_loss), module):
            break
    stopper.restore(module)
    report = kind.report(module, initial, kind.monitor(module, x[tr]),
                         val_ap=history[stopper.best_epoch - 1]["val_ap"], best_epoch=stopper.best_epoch,
                         n_train=len(tr), n_val=len(va), history=history)
    return module, report

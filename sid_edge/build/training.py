"""Train a head on cached backbone features (needs torch, scikit-learn).

Recipe (Willi et al., clip-cues): orthogonal init of the k×D layer; loss = BCE-with-logits with label smoothing
0.1 + 0.33·‖I − ÂᵀÂ‖_F (Â: the batch's k-d activations L2-normalised per column); AdamW (weight decay 0.01);
a held-out validation split; early stopping on validation AP with patience 5, keeping the best epoch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from sid_edge.build.heads import build_head, orthogonality_penalty

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


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults follow the paper where it states them."""

    kind: str = "orthogonal"
    k: int = 8
    ortho_weight: float = 0.33
    label_smoothing: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    #: An epoch is one pass over the training split, repeated until at least this many optimizer steps: on small
    #: datasets one pass is a single step, which makes patience-5 early stopping stop before anything is learnt.
    min_steps_per_epoch: int = 20
    max_epochs: int = 200
    patience: int = 5
    val_fraction: float = 0.2
    seed: int = 0


@dataclass
class TrainReport:
    """What training measured. ``history`` has one dict per epoch: train_loss, bce, ortho (unweighted ‖I − ÂᵀÂ‖_F
    over the training set), val_ap, val_loss."""

    val_ap: float
    best_epoch: int
    n_train: int
    n_val: int
    ortho_initial: float
    ortho_final: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"} | {"epochs": len(self.history)}


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), stratified by label, deterministic for ``seed``; each class keeps >= 1 training and,
    when it has >= 2 items, >= 1 validation item. Raises ValueError unless both classes are present."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise ValueError(f"training needs both classes; no {'real' if c == 0 else 'synthetic'} images found")
        idx = rng.permutation(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction))) if len(idx) >= 2 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(val))


def _ap(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(average_precision_score(labels, scores))


def train_head(features: np.ndarray, labels: np.ndarray, config: TrainConfig = TrainConfig(), on_epoch=None,
               validation: tuple[np.ndarray, np.ndarray] | None = None):
    """Train a head on features [N,D] float32 with labels [N] in {0,1}.

    ``validation``: (features [M,D], labels [M]) of a separate validation split (e.g. the dataset's own, as the
    paper does) for early stopping; by default a stratified ``config.val_fraction`` of the training data is held
    out instead.

    Returns (head in eval mode with the best-validation-AP weights, TrainReport). ``on_epoch(dict)`` is called
    after every epoch (for progress output). Raises ValueError for mismatched shapes or a single class.
    """
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
    with threads_for(min(config.batch_size, len(x)) * x.shape[-1] * config.k):
        return _train(x, labels, config, on_epoch, split)


def _train(x: torch.Tensor, labels, config: TrainConfig, on_epoch, split=None):
    y_np = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(y_np):
        raise ValueError(f"features {tuple(x.shape)} and labels {y_np.shape} do not match")
    if not set(np.unique(y_np)) <= {0, 1}:
        raise ValueError("labels must be 0 (real) or 1 (synthetic)")
    torch.manual_seed(config.seed)
    tr, va = split if split is not None else stratified_split(y_np, config.val_fraction, config.seed)
    if len(np.unique(y_np[tr])) < 2:
        raise ValueError("training needs both classes in the training data")
    y = torch.as_tensor(y_np, dtype=torch.float32)
    head = build_head(config.kind, x.shape[1], config.k)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_ortho = config.kind == "orthogonal" and config.ortho_weight > 0
    gen = torch.Generator().manual_seed(config.seed)

    def ortho_on(idx) -> float:
        with torch.no_grad():
            _, acts = head(x[idx])
            return float(orthogonality_penalty(acts))

    ortho_initial = ortho_on(tr)
    stopper, history = EarlyStopping(config.patience), []
    for epoch in range(1, config.max_epochs + 1):
        head.train()
        passes = max(1, -(-config.min_steps_per_epoch // -(-len(tr) // config.batch_size)))
        batches = [
            perm[start : start + config.batch_size]
            for perm in (tr[torch.randperm(len(tr), generator=gen).numpy()] for _ in range(passes))
            for start in range(0, len(perm), config.batch_size)
        ]
        total, total_bce, n = 0.0, 0.0, 0
        for idx in batches:
            logit, acts = head(x[idx])
            target = y[idx] * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
            bce = F.binary_cross_entropy_with_logits(logit, target)
            loss = bce + config.ortho_weight * orthogonality_penalty(acts) if use_ortho and len(idx) > 1 else bce
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            total_bce += float(bce.detach()) * len(idx)
            n += len(idx)
        head.eval()
        with torch.no_grad():
            eval_idx = va if len(va) else tr
            val_logit, val_acts = head(x[eval_idx])
            target = y[eval_idx] * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
            val_loss = float(F.binary_cross_entropy_with_logits(val_logit, target))
            if use_ortho and len(eval_idx) > 1:
                val_loss += config.ortho_weight * float(orthogonality_penalty(val_acts))
        val_ap = _ap(y_np[va], val_logit.numpy()) if len(va) else float("nan")
        row = {"epoch": epoch, "train_loss": total / n, "bce": total_bce / n, "ortho": ortho_on(tr),
               "val_ap": val_ap, "val_loss": val_loss}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if stopper.update(epoch, val_ap, val_loss, head):
            break
    stopper.restore(head)
    report = TrainReport(
        val_ap=history[stopper.best_epoch - 1]["val_ap"],
        best_epoch=stopper.best_epoch,
        n_train=len(tr),
        n_val=len(va),
        ortho_initial=ortho_initial,
        ortho_final=ortho_on(tr),
        history=history,
    )
    return head, report

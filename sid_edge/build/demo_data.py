"""A small labelled image folder for offline demos, tests and benchmarks.

``real/``: photographs bundled with scikit-image (astronaut, coffee, chelsea, rocket, camera, hubble deep field,
moon, brick, grass, gravel), saved as JPEG and PNG at several sizes, plus the real photographs of the clip-cues
samples when a folder of them is given. ``synthetic/``: computer-rendered images (gradients, shapes, skimage's
colour wheel and logo) plus the clip-cues generated samples when given. Good enough to exercise train → export →
scan end to end; NOT a benchmark of detection quality. Needs scikit-image (the ``test`` extra).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "moon", "brick", "grass", "gravel")


def skimage_photographs() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 RGB photograph from scikit-image's bundled data (gray ones stacked to RGB)."""
    import skimage.data

    out = {}
    for name in PHOTOS:
        a = getattr(skimage.data, name)()
        out[name] = np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3]
    return out


def rendered_image(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A deterministic computer-rendered RGB image: a smooth gradient with blurred random shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = ((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / (w + h) + 0.5).clip(0, 1)[..., None]
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))


def write_demo_dataset(out: str | os.PathLike, *, samples: str | os.PathLike | None = None, crops_per_photo: int = 3,
                       n_rendered: int = 24, seed: int = 0) -> Path:
    """Write ``out/real`` and ``out/synthetic`` (deterministic for ``seed``); returns ``out``.

    ``samples``: an optional folder of clip-cues samples (``real*.png``, ``synthetic*.*``), copied in by name.
    """
    import skimage.data

    root = Path(out)
    real, synth = root / "real", root / "synthetic"
    real.mkdir(parents=True, exist_ok=True)
    synth.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, arr in skimage_photographs().items():
        img = Image.fromarray(arr)
        img.save(real / f"{name}.jpg", quality=92)
        h, w = arr.shape[:2]
        for i in range(crops_per_photo):  # random crops at varied aspect ratios stand in for more photographs
            cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img.crop((x, y, x + cw, y + ch)).save(real / f"{name}_crop{i}.png")
    for i in range(n_rendered):
        size = (int(rng.integers(200, 640)), int(rng.integers(200, 640)))
        # Saved like the real photographs (JPEG at quality 92, or PNG) so the label is not predictable from the
        # container or the JPEG quality (the format-bias check would rightly flag it).
        rendered_image(seed * 1000 + i, size).save(synth / f"rendered_{i:03d}.{'png' if i % 2 else 'jpg'}", quality=92)
    Image.fromarray(skimage.data.colorwheel()).save(synth / "colorwheel.png")
    Image.fromarray(skimage.data.logo()).convert("RGB").save(synth / "logo.png")
    if samples is not None and Path(samples).is_dir():
        for p in sorted(Path(samples).iterdir()):
            if p.name.startswith("real"):
                shutil.copyfile(p, real / f"sample_{p.name}")
            elif p.name.startswith("synthetic"):
                shutil.copyfile(p, synth / f"sample_{p.name}")
    return root


def write_photo_folder(out: str | os.PathLike) -> Path:
    """Write the scikit-image photographs (originals, varied sizes, JPEG and PNG) into ``out``; returns it."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for i, (name, arr) in enumerate(skimage_photographs().items()):
        Image.fromarray(arr).save(root / f"{name}.{'jpg' if i % 2 else 'png'}", quality=95)
    return root


#: Real/synthetic pairs per split of the fidelity fixture (tests and benchmarks/precision_fidelity.py): 200 held-out
#: images, so one decision flip costs 0.5 % and the 99 % agreement bar is not decided by a single image.
FIDELITY_FIXTURE_PAIRS = {"train": 48, "validation": 100, "test": 4}

#: Generator names of the synthetic half of :func:`write_synthclic_parquet` (stand-ins for SynthCLIC's sources).
DEMO_GENERATORS = ("sdxl", "dalle3", "midjourney")


def synthclic_rows(n_pairs: int, *, split: str, seed: int = 0, generators: tuple[str, ...] = DEMO_GENERATORS,
                   real_source: str | None = "real") -> list[dict]:
    """Rows in SynthCLIC's shape: ``n_pairs`` real photographs (random crops of scikit-image's, JPEG) and, for
    each, one synthetic version (a rendered image, PNG) sharing its ``image_id``; generators taken in turn.

    Each row: {"image": {"bytes", "path": None}, "label" 0/1, "image_id", "source"}. ``real_source``: the real
    images' source; None gives each real image its pair's generator name (CNNSpot's convention, where ``source``
    names the generator's real/fake subset). Deterministic for (split, seed); different splits get different crops
    and renders.
    """
    import io

    photos = list(skimage_photographs().values())
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    rows = []
    for i in range(n_pairs):
        arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 0.9)), int(w * rng.uniform(0.4, 0.9))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        real, synth = io.BytesIO(), io.BytesIO()
        Image.fromarray(arr[y : y + ch, x : x + cw]).save(real, "JPEG", quality=int(rng.integers(80, 96)))
        size = (int(rng.integers(160, 480)), int(rng.integers(160, 480)))
        rendered_image(int(rng.integers(0, 2**31)), size).save(synth, "PNG")
        image_id = f"{split}-{i:04d}"
        generator = generators[i % len(generators)]
        rows.append({"image": {"bytes": real.getvalue(), "path": None}, "label": 0, "image_id": image_id,
                     "source": generator if real_source is None else real_source})
        rows.append({"image": {"bytes": synth.getvalue(), "path": None}, "label": 1, "image_id": image_id,
                     "source": generator})
    return rows


def write_synthclic_parquet(out: str | os.PathLike, pairs: dict[str, int] | None = None, *, seed: int = 0,
                            generators: tuple[str, ...] = DEMO_GENERATORS, real_source: str | None = "real") -> Path:
    """Write a small SynthCLIC-shaped dataset as the Hugging Face hub lays out parquet exports:
    ``out/data/<split>-00000-of-00001.parquet`` with columns image (struct bytes/path, as the ``datasets`` Image
    feature stores it), label, image_id, source. ``pairs``: real/synthetic pairs per split (default train 24,
    validation 40, test 8); ``generators`` and ``real_source`` as in :func:`synthclic_rows` (``real_source=None``
    gives a CNNSpot-shaped set). Needs pyarrow and scikit-image. Returns ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = pairs or {"train": 24, "validation": 40, "test": 8}
    schema = pa.schema([
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("label", pa.int64()),
        ("image_id", pa.string()),
        ("source", pa.string()),
    ])
    root = Path(out)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, n in pairs.items():
        rows = synthclic_rows(n, split=split, seed=seed, generators=generators, real_source=real_source)
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet", row_group_size=16)
    return root


def fit_probe_head(backbone, items, k: int = 4):
    """A linear probe for fidelity fixtures: Linear(D->k) onto the k leading principal directions of the items'
    pooled features (``backbone`` over ``items``), then logistic regression (scikit-learn) on those k activations.
    Returns (OrthogonalHead, HeadConfig). Needs the ``train`` extra.

    Why not ``train_head`` for a random-weight backbone: there SGD heads either stop early with every p_synthetic
    near the threshold, or grow large weights along low-variance feature directions that amplify any numerical
    difference (FP16 or INT8 alike). Heads on real CLIP features read high-variance semantic directions; a probe on
    the principal directions is the random-backbone stand-in for that.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from sid_edge.build.features import extract_features
    from sid_edge.build.heads import HeadConfig, OrthogonalHead

    feats = extract_features(backbone, [it.image for it in items], use_cache=False)
    x = feats.pooled.astype(np.float64)
    y = np.array([items[i].label for i in feats.kept])
    mean = x.mean(0)
    directions = np.linalg.svd(x - mean, full_matrices=False)[2][:k]
    probe = LogisticRegression(C=1.0).fit((x - mean) @ directions.T, y)
    head = OrthogonalHead(backbone.feature_dim, k)
    with torch.no_grad():
        head.directions.weight.copy_(torch.tensor(directions, dtype=torch.float32))
        head.directions.bias.copy_(torch.tensor(-directions @ mean, dtype=torch.float32))
        head.to_logit.weight.copy_(torch.tensor(probe.coef_, dtype=torch.float32))
        head.to_logit.bias.copy_(torch.tensor(probe.intercept_, dtype=torch.float32))
    cfg = HeadConfig(kind="orthogonal", k=k, feature_dim=backbone.feature_dim, backbone=backbone.identity.to_dict(),
                     source="sid_edge.build.demo_data.fit_probe_head", preprocessing=backbone.preprocessing.to_dict(),
                     training={"method": f"PCA({k}) + logistic regression (scikit-learn, C=1)", "images": len(y)})
    return head, cfg

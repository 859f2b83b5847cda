"""Verdicts that survive delivery: each perturbation's transform, flip-rate/|Δp|/band arithmetic against direct
computations, evaluation under perturbation (cached), the uncertain band written and applied (scan CSV/JSONL, the
API, --no-band), scan --stability, augmentation seeded per view, the format-bias warning, metadata independence."""

import csv
import io
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sid_edge.artifact.manifest import ManifestError, read_manifest, set_threshold, set_uncertain_band
from sid_edge.cli import main
from sid_edge.robustness import (
    DEFAULT_PERTURBATIONS, PerturbedImage, derive_band, flip_stats, parse_perturbation, parse_perturbations)
from sid_edge.runtime.detector import Detector


def _photo(seed=0, size=(150, 100)) -> Image.Image:
    from sid_edge.build.demo_data import skimage_photographs

    arr = list(skimage_photographs().values())[seed]
    return Image.fromarray(arr).convert("RGB").resize(size)


def _roundtrip(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# ------------------------------------------------------------------------------------------------ transforms
def test_each_perturbation_transform():
    im = _photo()
    a = np.asarray(im)
    out = {parse_perturbation(s).name: parse_perturbation(s).apply(im) for s in DEFAULT_PERTURBATIONS}
    assert all(o.mode == "RGB" for o in out.values())
    # JPEG / WebP: exactly Pillow's encode + decode at that quality.
    assert np.array_equal(np.asarray(out["jpeg:40"]), np.asarray(_roundtrip(im, "JPEG", quality=40, subsampling="4:2:0")))
    assert np.array_equal(np.asarray(out["webp:80"]), np.asarray(_roundtrip(im, "WEBP", quality=80, method=4)))
    err40 = np.abs(np.asarray(out["jpeg:40"], float) - a).mean()
    err90 = np.abs(np.asarray(out["jpeg:90"], float) - a).mean()
    assert 0 < err90 < err40  # lower quality loses more
    # Resize keeps the new size (75x50, 38x25) with OpenCV INTER_AREA.
    assert out["resize:0.5"].size == (75, 50) and out["resize:0.25"].size == (38, 25)
    assert np.array_equal(np.asarray(out["resize:0.5"]), cv2.resize(a, (75, 50), interpolation=cv2.INTER_AREA))
    # Thumbnail round trip: original size, but only a 128-px image's detail.
    assert out["thumbnail:128"].size == im.size
    assert not np.array_equal(np.asarray(out["thumbnail:128"]), a)
    # Centre crop keeping 80 % of each side: 120x80 at offset (15, 10).
    assert np.array_equal(np.asarray(out["crop:0.8"]), a[10:90, 15:135])
    # Gray: three equal channels = ITU-R 601-2 luma.
    g = np.asarray(out["gray"]).astype(int)
    ai = a.astype(int)
    luma = (ai[..., 0] * 299 + ai[..., 1] * 587 + ai[..., 2] * 114) / 1000
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert np.abs(g[..., 0] - luma).max() <= 1
    # Blur: OpenCV's Gaussian with that sigma.
    assert np.array_equal(np.asarray(out["blur:1"]), cv2.GaussianBlur(a, (0, 0), 1.0))
    # Screenshot: back at the original size, smoothed by the bilinear round trip, not identical.
    s = np.asarray(out["screenshot:0.75"], float)
    assert out["screenshot:0.75"].size == im.size and 0 < np.abs(s - a).mean() < 20
    # Deterministic.
    for spec in DEFAULT_PERTURBATIONS:
        p = parse_perturbation(spec)
        assert np.array_equal(np.asarray(p.apply(im)), np.asarray(out[p.name]))


@pytest.mark.parametrize("spec, message", [("jpeg", "needs a quality"), ("jpeg:0", r"in \[1, 100\]"), ("jpeg:7.5", "integer"),
                                           ("gray:2", "no parameter"), ("sharpen:2", "unknown kind"),
                                           ("resize:nan", r"in \[0.05, 4\]"), ("blur:x", "not a number")])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_perturbation(spec)


def test_spec_names_and_defaults():
    assert [p.name for p in parse_perturbations(["JPEG:40", " jpeg:40 ", "screenshot", "blur:1.0"])] == \
        ["jpeg:40", "screenshot:0.75", "blur:1"]


def test_perturbed_source_follows_exif_orientation(tmp_path):
    im = _photo(size=(60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / "o.jpg", quality=95, exif=exif)
    out = PerturbedImage(str(tmp_path / "o.jpg"), parse_perturbation("crop:1")).resolve_image()
    assert out.size == (40, 60)


# ------------------------------------------------------------------------------------------------ arithmetic
def test_flip_stats_against_direct_computation():
    rng = np.random.default_rng(0)
    p0, p1 = rng.random(200), rng.random(200)
    t = 0.4
    st = flip_stats(p0, p1, t)
    flips = [(a >= t) != (b >= t) for a, b in zip(p0, p1)]
    assert st.n == 200 and st.flips == sum(flips)
    assert st.flip_rate == pytest.approx(sum(flips) / 200)
    assert st.real_to_synthetic == sum(f and a < t for f, a in zip(flips, p0))
    assert st.synthetic_to_real == sum(f and a >= t for f, a in zip(flips, p0))
    assert st.mean_abs_dp == pytest.approx(sum(abs(b - a) for a, b in zip(p0, p1)) / 200)
    assert st.max_abs_dp == pytest.approx(max(abs(b - a) for a, b in zip(p0, p1)))
    assert flip_stats([], [], t).n == 0


def test_band_covers_flips():
    p0 = np.array([0.1, 0.3, 0.45, 0.49, 0.5, 0.55, 0.7, 0.9])
    flipped = np.array([False, True, True, False, True, True, False, False])
    b = derive_band(p0, flipped, 0.5)
    assert (b.low, b.high, b.flips, b.pairs) == (0.3, 0.55, 4, 8)
    b = derive_band(p0, flipped, 0.5, coverage=0.5)  # median of each side's flips
    assert b.low == pytest.approx(np.quantile([0.3, 0.45], 0.5)) and b.high == pytest.approx(0.525)
    assert derive_band(p0, np.zeros(8, bool), 0.5).empty


# ------------------------------------------------------------------------------------------------ evaluation + band
@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """8 real JPEG photos and 8 synthetic PNG renders (a format-biased set on purpose)."""
    from sid_edge.build.demo_data import rendered_image, skimage_photographs

    root = tmp_path_factory.mktemp("robust-data")
    (root / "real").mkdir()
    (root / "synthetic").mkdir()
    photos = list(skimage_photographs().values())
    for i in range(8):
        Image.fromarray(photos[i % len(photos)]).convert("RGB").resize((96 + 8 * i, 80)).save(root / "real" / f"r{i}.jpg", quality=90)
        rendered_image(i, (90 + 6 * i, 84)).save(root / "synthetic" / f"s{i}.png")
    return root


@pytest.fixture()
def median_artifact(artifact, small_data, tmp_path):
    """A copy of the artifact whose threshold is the median p on small_data, so perturbations flip verdicts."""
    d = tmp_path / "det"
    shutil.copytree(artifact, d)
    with Detector.load(d) as det:
        p = [r.p_synthetic for r in det.predict(sorted(map(str, small_data.rglob("*.*"))))]
    set_threshold(d, float(np.median(p)))
    return d


def _scores_csv(path):
    with open(path, newline="") as f:
        return {r["key"]: float(r["p_synthetic"]) for r in csv.DictReader(f) if r["p_synthetic"]}


def test_evaluate_perturb_write_band_and_apply(median_artifact, small_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SID_EDGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    specs = ["jpeg:40", "gray", "resize:0.25"]
    assert main(["evaluate", str(median_artifact), "--data", f"d={small_data}", "--perturb", *specs, "--write-band",
                 "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "label is predictable from file format" in err  # real JPEG vs synthetic PNG
    report = json.loads((out / "report.json").read_text())
    rows = {r["perturbation"]: r for r in report["perturbed"]}
    assert set(rows) == set(specs) and (out / "perturbation_det.png").is_file()
    assert "## Under perturbation" in (out / "report.md").read_text()
    # Direct computation: the runtime API on images perturbed here with Pillow/OpenCV.
    p0 = _scores_csv(out / "scores.csv")
    keys = sorted(p0)
    paths = [str(small_data / k) if (small_data / k).exists() else k for k in keys]
    m = read_manifest(median_artifact)
    t = m.threshold
    pairs_p0, flipped = [], []
    with Detector.load(median_artifact, use_band=False) as det:
        base = [r.p_synthetic for r in det.predict(paths)]
        assert np.allclose(base, [p0[k] for k in keys], atol=1e-5)
        for spec in specs:
            pert = parse_perturbation(spec)
            p1 = [r.p_synthetic for r in det.predict([pert.apply(Image.open(p).convert("RGB")) for p in paths])]
            d = np.abs(np.array(p1) - np.array(base))
            f = (np.array(base) >= t) != (np.array(p1) >= t)
            assert rows[spec]["n"] == len(keys)
            assert rows[spec]["flip_rate"] == pytest.approx(f.mean(), abs=1e-9)
            assert rows[spec]["mean_abs_dp"] == pytest.approx(d.mean(), abs=1e-5)
            assert rows[spec]["max_abs_dp"] == pytest.approx(d.max(), abs=1e-5)
            pairs_p0 += base
            flipped += list(f)
    assert any(flipped), "the test needs at least one flip"
    band = m.uncertain_band
    expect = derive_band(np.array(pairs_p0), np.array(flipped), t)
    assert band is not None and band.threshold == t
    assert band.low == pytest.approx(expect.low - 1e-5, abs=1e-6) and band.high == pytest.approx(expect.high + 1e-5, abs=1e-6)
    assert band.perturbations == specs and band.flips == int(sum(flipped))
    # Second run: everything from the cache.
    assert main(["evaluate", str(median_artifact), "--data", f"d={small_data}", "--perturb", *specs,
                 "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert [r["computed"] for r in report["perturbed"]] == [16, 16, 16]
    assert [(r["computed"], r["cached"]) for r in again["perturbed"]] == [(0, 16)] * 3
    assert [r["flip_rate"] for r in again["perturbed"]] == [r["flip_rate"] for r in report["perturbed"]]

    # The band applied: API, scan CSV and JSONL, --no-band.
    inside = [k for k in keys if band.low <= p0[k] <= band.high]
    outside = [k for k in keys if not band.low <= p0[k] <= band.high]
    assert inside and outside
    with Detector.load(median_artifact) as det:
        assert det.band == (band.low, band.high)
        preds = {k: r for k, r in zip(keys, det.predict(paths))}
    for k in inside:
        assert preds[k].prediction == "uncertain" and preds[k].p_synthetic == pytest.approx(p0[k], abs=1e-5)
    for k in outside:
        assert preds[k].prediction == ("synthetic" if preds[k].p_synthetic >= t else "real")
    for suffix in ("csv", "jsonl"):
        res = tmp_path / f"scan.{suffix}"
        assert main(["scan", str(small_data), "--model", str(median_artifact), "--out", str(res), "--no-progress",
                     "--no-provenance"]) == 0
        if suffix == "csv":
            rows_ = {Path(r["path"]).name: r["prediction"] for r in csv.DictReader(open(res))}
        else:
            rows_ = {Path(json.loads(x)["path"]).name: json.loads(x)["prediction"] for x in open(res)}
        assert all(rows_[Path(k).name] == "uncertain" for k in inside)
        assert not any(rows_[Path(k).name] == "uncertain" for k in outside)
    res = tmp_path / "noband.csv"
    assert main(["scan", str(small_data), "--model", str(median_artifact), "--out", str(res), "--no-progress",
                 "--no-provenance", "--no-band"]) == 0
    assert {r["prediction"] for r in csv.DictReader(open(res))} <= {"real", "synthetic"}
    # A new threshold drops the band derived at the old one.
    set_threshold(median_artifact, 0.999)
    assert read_manifest(median_artifact).uncertain_band is None


def test_band_must_hold_the_threshold(median_artifact):
    t = read_manifest(median_artifact).threshold
    with pytest.raises(ManifestError, match="derived at threshold"):
        set_uncertain_band(median_artifact, {"low": 0.0, "high": 1.0, "threshold": 0.123, "method": "x"})
    with pytest.raises(ManifestError, match="low <= threshold <= high"):
        set_uncertain_band(median_artifact, {"low": t + 0.01, "high": 1.0, "threshold": t, "method": "x"})


def test_evaluate_perturb_usage_errors(artifact, small_data, tmp_path):
    base = ["evaluate", str(artifact), "--data", str(small_data), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*base, "--perturb", "jpeg:0"]) == 2
    assert main([*base, "--write-band"]) == 2
    assert main([*base, "--perturb", "gray", "--band-coverage", "0"]) == 2


# ------------------------------------------------------------------------------------------------ scan --stability
def test_scan_stability_columns(artifact, small_data, tmp_path):
    res = tmp_path / "s.jsonl"
    assert main(["scan", str(small_data / "real"), "--model", str(artifact), "--out", str(res), "--no-progress",
                 "--no-provenance", "--stability", "2"]) == 0
    rows = [json.loads(x) for x in open(res)]
    assert len(rows) == 8
    path = rows[0]["path"]
    st = rows[0]["stability"]
    assert st["perturbations"] == ["jpeg:75", "resize:0.5"] and st["n"] == 2
    with Detector.load(artifact) as det:
        p0 = det.predict(path)[0].p_synthetic
        direct = [det.predict(parse_perturbation(s).apply(Image.open(path).convert("RGB")))[0].p_synthetic
                  for s in st["perturbations"]]
        t = det.threshold
    assert np.allclose(st["p"], direct, atol=1e-5)
    allp = [p0, *direct]
    assert st["spread"] == pytest.approx(max(allp) - min(allp), abs=1e-5)
    assert st["flips"] == sum((p >= t) != (p0 >= t) for p in direct)
    res = tmp_path / "s.csv"
    assert main(["scan", str(small_data / "real"), "--model", str(artifact), "--out", str(res), "--no-progress",
                 "--no-provenance", "--stability", "1"]) == 0
    header = open(res).readline().strip().split(",")
    assert header[-2:] == ["stability_spread", "stability_flips"]
    assert main(["scan", str(small_data), "--model", str(artifact), "--stability", "99"]) == 2


# ------------------------------------------------------------------------------------------------ bias, metadata
def test_bias_warning_on_jpeg_vs_png_only(small_data, tmp_path):
    from sid_edge.robustness.bias import estimate_jpeg_quality, format_bias, label_bias
    from sid_edge.tools.datasets import read_labelled_images

    findings = {f.feature: f for f in label_bias(read_labelled_images(small_data))}
    assert findings["file format"].value == 1.0 and findings["file format"].warns()
    assert "real: JPEG 100%" in findings["file format"].describe()
    assert any("file format" in line for line in format_bias(read_labelled_images(small_data)))
    # Both classes as PNG of similar sizes: format says nothing.
    mixed = tmp_path / "mixed"
    for sub in ("real", "synthetic"):
        (mixed / sub).mkdir(parents=True)
        for i, p in enumerate(sorted((small_data / sub).iterdir())):
            Image.open(p).convert("RGB").resize((100, 80)).save(mixed / sub / f"{i}.png")
    assert format_bias(read_labelled_images(mixed)) == []
    # The quality estimate recovers libjpeg's standard tables.
    for q in (40, 65, 90):
        im = Image.open(io.BytesIO(_encoded(_photo(), "JPEG", quality=q)))
        assert estimate_jpeg_quality(im.quantization[0]) == q


def _encoded(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_same_pixels_same_score_whatever_container_and_metadata(artifact, tmp_path):
    from PIL import PngImagePlugin

    im = _photo(3, (120, 90))
    exif = Image.Exif()
    exif[0x010F] = "SomeCamera"   # Make
    exif[0x0131] = "Photoshop"    # Software
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a photo, Steps: 20, Sampler: Euler")  # a generator's metadata, not its pixels
    variants = {
        "png": _encoded(im, "PNG"),
        "png+text": _encoded(im, "PNG", pnginfo=info),
        "png+exif": _encoded(im, "PNG", exif=exif),
        "webp-lossless": _encoded(im, "WEBP", lossless=True),
        "tiff": _encoded(im, "TIFF"),
        "bmp": _encoded(im, "BMP"),
    }
    jpeg = {"jpeg": _encoded(im, "JPEG", quality=92), "jpeg+exif": _encoded(im, "JPEG", quality=92, exif=exif),
            "jpeg+comment": _encoded(im, "JPEG", quality=92, comment=b"made by a generator")}
    assert len(set(variants.values())) == len(variants) and len(set(jpeg.values())) == len(jpeg)
    with Detector.load(artifact) as det:
        for group in (variants, jpeg):
            p = {k: r.p_synthetic for k, r in zip(group, det.predict(list(group.values())))}
            assert len(set(p.values())) == 1, p


# ------------------------------------------------------------------------------------------------ augmentation
def test_augmented_views_are_seeded_and_cached(tiny_backbone, small_data, tmp_path):
    from sid_edge.build.features import extract_features
    from sid_edge.robustness.augment import preset
    from sid_edge.tools.caches import content_sha256
    from sid_edge.robustness.augment import augmented_view

    paths = sorted(map(str, (small_data / "real").iterdir()))[:3]
    p = preset("paper")
    h = content_sha256(paths[0])
    v0 = augmented_view(paths[0], p, 0, 0, h).resolve_image()
    assert v0.size == (512, 512)
    assert np.array_equal(np.asarray(v0), np.asarray(augmented_view(paths[0], p, 0, 0, h).resolve_image()))
    assert not np.array_equal(np.asarray(v0), np.asarray(augmented_view(paths[0], p, 0, 1, h).resolve_image()))
    cache = tmp_path / "feats"
    a = extract_features(tiny_backbone, paths, augment=p, seed=0, view=0, cache_dir=cache)
    n_shards = len(list(cache.rglob("*.npz")))
    again = extract_features(tiny_backbone, paths, augment=p, seed=0, view=0, cache_dir=cache)
    assert np.array_equal(a.pooled, again.pooled) and len(list(cache.rglob("*.npz"))) == n_shards
    other = extract_features(tiny_backbone, paths, augment=p, seed=1, view=0, cache_dir=cache)
    clean = extract_features(tiny_backbone, paths, cache_dir=cache)
    assert len(list(cache.rglob("*.npz"))) == n_shards + 2
    assert not np.allclose(a.pooled, other.pooled) and not np.allclose(a.pooled, clean.pooled)


def test_train_augment_cli(small_data, tmp_path, capsys):
    from sid_edge.build.backbone import TINY_CLIP_MODEL

    out = tmp_path / "head"
    assert main(["train", "--data", str(small_data), "--out", str(out), "--clip-model", TINY_CLIP_MODEL,
                 "--clip-pretrained", "none", "--augment", "paper", "--augment-views", "2", "--epochs", "3",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert "label is predictable from file format" in captured.err
    assert "training views" in captured.err
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["n_val"] >= 2


def test_hostile_inputs_become_item_errors(tmp_path):
    from sid_edge.artifact.preprocessing import Preprocessing
    from sid_edge.runtime.batching import iter_batches
    from sid_edge.runtime.images import ImageDecodeError

    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    pert = parse_perturbation("resize:4")
    with pytest.raises(ImageDecodeError, match="corrupt|cannot|truncated|no pixel"):
        PerturbedImage(str(tmp_path / "bad.jpg"), pert).resolve_image()
    big = Image.new("RGB", (6000, 5000))
    with pytest.raises(ImageDecodeError, match="more than"):
        PerturbedImage(big, pert).resolve_image()
    spec = Preprocessing(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    good = _encoded(_photo(), "PNG")
    sources = [PerturbedImage(str(tmp_path / "bad.jpg"), pert), PerturbedImage(good, parse_perturbation("gray"))]
    items = [it for b in iter_batches(sources, spec, 2, workers=1) for it in b.items]
    assert items[0].error and items[1].error is None and items[1].pixels.shape[0] == 3


def test_random_resized_crop_matches_torchvision():
    """The paper's crop is torchvision's RandomResizedCrop: same box -> same pixels as F.resized_crop (PIL path)."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    from sid_edge.robustness.augment import _random_resized_crop

    im = _photo(1, (300, 200))
    boxes = []
    for s in range(5):
        rng = np.random.default_rng(s)
        ours = _random_resized_crop(im, rng, (0.5, 1.0), (3 / 4, 4 / 3), 512)
        # Replay the same draws to get the box (torchvision's get_params order: area, log-ratio, top, left).
        rng = np.random.default_rng(s)
        for _ in range(10):
            target = 300 * 200 * rng.uniform(0.5, 1.0)
            r = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
            if 0 < w <= 300 and 0 < h <= 200:
                top, left = int(rng.integers(0, 200 - h + 1)), int(rng.integers(0, 300 - w + 1))
                break
        boxes.append((top, left, h, w))
        theirs = tvf.resized_crop(im, top, left, h, w, [512, 512], InterpolationMode.BILINEAR, antialias=True)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
        assert 0.5 * 300 * 200 * 0.98 <= h * w <= 300 * 200
    assert len(set(boxes)) == 5


def test_service_reports_uncertain_inside_the_band(artifact, small_data, tmp_path):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from sid_edge.service.app import create_app
    from sid_edge.service.core import BatchingDetector

    d = tmp_path / "det"
    shutil.copytree(artifact, d)
    image = sorted((small_data / "real").iterdir())[0]
    with Detector.load(d) as det:
        p = det.predict(str(image))[0].p_synthetic
    set_threshold(d, p)
    set_uncertain_band(d, {"low": max(0.0, p - 0.01), "high": min(1.0, p + 0.01), "threshold": p, "method": "test"})
    for use_band, expected in ((True, "uncertain"), (False, "synthetic")):
        core = BatchingDetector(Detector.load(d, backend="cpu", use_band=use_band), max_wait_ms=1)
        with TestClient(create_app(core)) as c:
            r = c.post("/v1/detect", content=image.read_bytes(), headers={"Content-Type": "image/jpeg"})
        res = r.json()["results"][0]
        assert r.status_code == 200 and res["prediction"] == expected
        assert res["p_synthetic"] == pytest.approx(p, abs=1e-6)

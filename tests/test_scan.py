"""Folder scans: preprocessing parity with open_clip + PyTorch, one row per file, bad files, output formats."""

import csv
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sid_edge.cli import main
from sid_edge.runtime.detector import Detector
from tests.conftest import CLIP_CUES_SAMPLES


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def reference_p_synthetic(backbone, head_dir, paths):
    """open_clip's own transform on PIL images + the PyTorch backbone and head: the training-time reference."""
    import open_clip

    from sid_edge.build.heads import load_head

    head, _ = load_head(head_dir)
    pre = backbone.preprocessing
    transform = open_clip.image_transform(pre.size, is_train=False, mean=pre.mean, std=pre.std,
                                          resize_mode=pre.resize_mode, interpolation=pre.interpolation)
    out = {}
    with torch.inference_mode():
        for p in paths:
            x = transform(Image.open(p)).unsqueeze(0)
            pooled, _ = backbone(x)
            logit, _ = head(pooled)
            out[str(p)] = float(torch.sigmoid(logit)[0])
    return out


def test_scan_matches_open_clip_pytorch_on_real_photographs(artifact, tiny_backbone, trained_head, photo_dir, tmp_path):
    photos = sorted(photo_dir.iterdir())
    if CLIP_CUES_SAMPLES.is_dir():
        photos += sorted(CLIP_CUES_SAMPLES.iterdir())
    sizes = {Image.open(p).size for p in photos}
    assert len(sizes) >= 5  # varied sizes and aspect ratios, JPEG and PNG
    out = tmp_path / "results.csv"
    assert main(["scan", *map(str, photos), "--model", str(artifact), "--out", str(out), "--batch-size", "3"]) == 0
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [str(p) for p in photos]
    ref = reference_p_synthetic(tiny_backbone, trained_head, photos)
    diffs = [abs(float(r["p_synthetic"]) - ref[r["path"]]) for r in rows]
    assert max(diffs) <= 2e-4, diffs
    assert all(r["error"] == "" and r["prediction"] in ("real", "synthetic") for r in rows)


def test_predict_api_paths_and_arrays(artifact, photo_dir):
    det = Detector.load(artifact)
    path = photo_dir / "coffee.jpg"  # a colour photograph
    rgb = np.asarray(Image.open(path).convert("RGB"))
    by_path, by_array, broken = det.predict([path, rgb, b"not an image"])
    assert by_path.ok and by_array.ok and not broken.ok
    assert by_path.p_synthetic == pytest.approx(by_array.p_synthetic, abs=1e-6)
    assert by_path.p_synthetic == pytest.approx(1 / (1 + np.exp(-by_path.logit)), abs=1e-6)
    assert by_path.head_activations.shape == (4,)
    assert by_path.prediction == ("synthetic" if by_path.p_synthetic >= 0.5 else "real")
    assert broken.p_synthetic is None and "not an image" in broken.error
    # Channel order matters: BGR input gives a different score (the API documents RGB).
    (bgr,) = det.predict([np.ascontiguousarray(rgb[..., ::-1])])
    assert abs(bgr.p_synthetic - by_array.p_synthetic) > 1e-6


def test_threshold_override(artifact, photo_dir):
    det = Detector.load(artifact, threshold=0.0)
    assert {p.prediction for p in det.predict(sorted(photo_dir.iterdir()))} == {"synthetic"}
    det = Detector.load(artifact, threshold=1.0)
    assert {p.prediction for p in det.predict(sorted(photo_dir.iterdir()))} == {"real"}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width, height):
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def _png_bomb(width, height):
    """A few hundred bytes that declare width x height pixels: zeros compress ~1000:1."""
    return _png_header_only(width, height) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100_000)) + _png_chunk(b"IEND", b"")


@pytest.fixture
def messy_folder(tmp_path, photo_dir):
    """Good images in many encodings next to every kind of bad file."""
    root = tmp_path / "mixed folder ü"
    (root / "sub dir").mkdir(parents=True)
    rgb = np.asarray(Image.open(photo_dir / "coffee.jpg").convert("RGB"))
    img = Image.fromarray(rgb)
    good = {
        "photo.jpg": lambda p: img.save(p, quality=90),
        "photo.png": lambda p: img.save(p),
        "sub dir/gray16.png": lambda p: Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(p),
        "sub dir/rgba.png": lambda p: img.convert("RGBA").save(p),
        "sub dir/palette.png": lambda p: img.convert("P").save(p),
        "sub dir/gray.png": lambda p: img.convert("L").save(p),
        "photo.webp": lambda p: img.save(p, quality=90),
        "photo.bmp": lambda p: img.save(p),
        "photo.tiff": lambda p: img.save(p),
        "photo.gif": lambda p: img.save(p),
        "cmyk.jpg": lambda p: img.convert("CMYK").save(p),
        "bild é 1.jpg": lambda p: img.save(p),
    }
    for name, write in good.items():
        write(root / name)
    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(root / "rgb16.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    jpeg = (root / "photo.jpg").read_bytes()
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "not_an_image.png": b"this is a text file, not a picture\n" * 10,
        "header_only.png": _png_header_only(640, 480),
        "bomb.png": _png_bomb(40000, 40000),
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    os.symlink(root / "does-not-exist.jpg", root / "dangling.jpg")
    (root / "notes.txt").write_text("not discovered: no image extension")
    return root, set(good) | {"rgb16.png"}, set(bad) | {"dangling.jpg"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_scan_one_row_per_file_and_bad_files(artifact, messy_folder, tmp_path, suffix):
    root, good, bad = messy_folder
    out = tmp_path / f"results{suffix}"
    assert main(["scan", str(root), "--model", str(artifact), "--out", str(out), "--batch-size", "4", "--no-progress"]) == 0
    rows = read_rows(out)
    by_name = {str(Path(r["path"]).relative_to(root)): r for r in rows}
    assert len(rows) == len(by_name) == len(good) + len(bad)
    assert set(by_name) == good | bad
    for name in good:
        r = by_name[name]
        assert r["error"] == "", (name, r["error"])
        p = float(r["p_synthetic"])
        assert 0.0 <= p <= 1.0 and r["prediction"] in ("real", "synthetic")
    expected_reason = {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "not_an_image.png": "not an image",
        "header_only.png": "header only",
        "bomb.png": "decompression bomb",
        "dangling.jpg": "dangling link",
    }
    for name, reason in expected_reason.items():
        r = by_name[name]
        assert reason in r["error"], (name, r["error"])
        assert r["p_synthetic"] in ("", None) and r["prediction"] in ("", None)


def test_scan_decoding_matches_between_encodings(artifact, messy_folder, tmp_path):
    # Lossless encodings of the same pixels must score identically; 16-bit must not turn white.
    root, _, _ = messy_folder
    det = Detector.load(artifact)
    png, bmp, tiff, rgb16 = det.predict([root / "photo.png", root / "photo.bmp", root / "photo.tiff", root / "rgb16.png"])
    assert png.p_synthetic == pytest.approx(bmp.p_synthetic, abs=1e-7)
    assert png.p_synthetic == pytest.approx(tiff.p_synthetic, abs=1e-7)
    assert png.p_synthetic == pytest.approx(rgb16.p_synthetic, abs=1e-6)


def test_scan_to_stdout_is_csv(artifact, photo_dir, capsys):
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--no-progress"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(list(photo_dir.iterdir()))
    assert list(rows[0]) == ["path", "p_synthetic", "prediction", "error", "top_concepts", "provenance"]


def test_scan_usage_and_model_errors(artifact, photo_dir, tmp_path):
    assert main(["scan", str(tmp_path / "missing"), "--model", str(artifact)]) == 2
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--batch-size", "0"]) == 2
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--threshold", "1.5"]) == 2
    assert main(["scan", str(photo_dir), "--model", str(tmp_path)]) == 3  # not an artifact
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--precision", "int8"]) == 3
    with pytest.raises(SystemExit) as e:
        main(["scan"])
    assert e.value.code == 2


def test_scan_creates_the_output_folder(artifact, photo_dir, tmp_path):
    out = tmp_path / "new" / "nested" / "r.jsonl"
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == len(list(photo_dir.iterdir()))


def test_error_messages_keep_square_brackets(capsys, monkeypatch):
    # Messages name extras like 'sid-edge[tensorrt]'; rich markup must not eat the brackets.
    import sid_edge.cli.info as info
    from sid_edge.cli.common import ModelError

    def boom(args):
        raise ModelError("pip install 'sid-edge[tensorrt]'")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info", "x"]) == 3
    assert "sid-edge[tensorrt]" in capsys.readouterr().err

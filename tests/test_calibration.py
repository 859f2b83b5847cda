"""Calibration sets: stratified deterministic draws, runtime-exact preprocessing, the on-disk cache."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sid_edge.calibration.calibration_set import build_calibration_set, default_calibration_size
from sid_edge.calibration.selection import allocate, exclude_image_ids, select_stratified
from sid_edge.tools.datasets import LabelledImage, read_labelled_images
from sid_edge.runtime.images import load_and_preprocess
from sid_edge.artifact.preprocessing import Preprocessing

SPEC = Preprocessing(size=32, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))


def _items(counts: dict[tuple[int, str], int]) -> list[LabelledImage]:
    out = []
    for (label, source), n in counts.items():
        out += [LabelledImage(Path(f"/d/{source}/{i}.png"), label, source, image_id=f"{source}{i}") for i in range(n)]
    return out


def test_allocate_is_even_capped_and_complete():
    assert allocate(10, {"a": 100, "b": 100}) == {"a": 5, "b": 5}
    assert allocate(10, {"a": 2, "b": 100, "c": 100}) == {"a": 2, "b": 4, "c": 4}  # what a cannot take goes on
    assert allocate(7, {"a": 100, "b": 100}) == {"a": 4, "b": 3}  # remainder in key order
    assert allocate(50, {"a": 3, "b": 4}) == {"a": 3, "b": 4}  # everything when asked for more
    with pytest.raises(ValueError):
        allocate(-1, {"a": 1})


def test_stratified_by_label_then_source():
    items = _items({(0, "real"): 300, (1, "sdxl"): 200, (1, "dalle3"): 20, (1, "mj"): 100})
    chosen = select_stratified(items, 64, seed=0)
    by = Counter((it.label, it.source) for it in chosen)
    assert sum(by.values()) == 64 and len({it.key for it in chosen}) == 64
    assert by[(0, "real")] == 32  # half per label
    assert by[(1, "sdxl")] + by[(1, "dalle3")] + by[(1, "mj")] == 32
    assert {by[(1, s)] for s in ("sdxl", "dalle3", "mj")} <= {10, 11}  # then even across generators
    # small strata give what they have and the rest is shared out
    few = select_stratified(_items({(0, "real"): 50, (1, "a"): 2, (1, "b"): 50}), 40, seed=0)
    assert Counter((it.label, it.source) for it in few) == {(0, "real"): 20, (1, "a"): 2, (1, "b"): 18}


def test_selection_is_deterministic_for_a_seed():
    items = _items({(0, "real"): 100, (1, "sdxl"): 100})
    a, b, c = (select_stratified(items, 20, seed=s) for s in (3, 3, 4))
    assert [it.key for it in a] == [it.key for it in b]
    assert [it.key for it in a] != [it.key for it in c]
    assert [it.key for it in a] == sorted((it.key for it in a), key=[x.key for x in items].index)  # dataset order
    assert select_stratified(items[:5], 20) == items[:5]


def test_exclude_by_image_id_drops_the_pair():
    items = [LabelledImage(Path("r.png"), 0, "real", "p1"), LabelledImage(Path("s.png"), 1, "sdxl", "p1"),
             LabelledImage(Path("t.png"), 1, "sdxl", "p2")]
    assert [it.key for it in exclude_image_ids(items, ["p1"])] == ["t.png"]


def test_default_size_follows_the_provider():
    assert default_calibration_size(["CPUExecutionProvider"]) == 32
    assert default_calibration_size(["CUDAExecutionProvider", "CPUExecutionProvider"]) == 512


def test_calibration_set_is_preprocessed_like_the_runtime_and_cached(synthclic_dir, tmp_path):
    first = build_calibration_set(synthclic_dir, SPEC, size=12, seed=1, cache_dir=tmp_path)
    assert not first.from_cache and first.pixel_values.shape == (12, 3, 32, 32)
    assert {r["split"] for r in first.records} == {"train"}
    assert Counter(r["label"] for r in first.records) == {0: 6, 1: 6}
    # row i is exactly the runtime's preprocessing of the i-th recorded image
    items = {it.key: it for it in read_labelled_images(synthclic_dir, split="train")}
    for i in (0, 7):
        expected = load_and_preprocess(items[first.records[i]["key"]].image.resolve_image(), SPEC)
        np.testing.assert_array_equal(first.pixel_values[i], expected)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")

    again = build_calibration_set(synthclic_dir, SPEC, size=12, seed=1, cache_dir=tmp_path)
    assert again.from_cache and again.records == first.records
    np.testing.assert_array_equal(np.asarray(again.pixel_values), np.asarray(first.pixel_values))
    other = build_calibration_set(synthclic_dir, SPEC, size=12, seed=2, cache_dir=tmp_path)
    assert not other.from_cache and other.records != first.records
    summary = first.summary()
    assert summary["images"] == 12 and summary["by_label"] == {"real": 6, "synthetic": 6}
    assert set(summary["image_ids"]) == {r["image_id"] for r in first.records}


def test_undecodable_calibration_images_are_recorded_and_skipped(tmp_path):
    from sid_edge.build.demo_data import write_demo_dataset

    root = write_demo_dataset(tmp_path / "d", crops_per_photo=0, n_rendered=4)
    (root / "synthetic" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cal = build_calibration_set(root, SPEC, size=100, cache_dir=tmp_path / "cache")
    assert [s["key"].endswith("broken.png") for s in cal.skipped] == [True]
    assert "broken.png" not in " ".join(r["key"] for r in cal.records)
    assert len(cal.pixel_values) == len(cal.records) == len(read_labelled_images(root)) - 1
    assert cal.skipped[0]["image_id"] in cal.image_ids  # excluded from held-out sets too


def test_missing_split_is_a_clear_error(synthclic_dir, tmp_path):
    with pytest.raises(ValueError, match="no split 'calib'; it has"):
        build_calibration_set(synthclic_dir, SPEC, size=4, split="calib", cache_dir=tmp_path)

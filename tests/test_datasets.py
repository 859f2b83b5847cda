
import pytest
from PIL import Image

from sid_edge.tools.datasets import read_labelled_images


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_real_synthetic_folders(tmp_path):
    _img(tmp_path / "real" / "a.png")
    _img(tmp_path / "real" / "nested" / "b.jpg")
    _img(tmp_path / "synthetic" / "c.png")
    items = read_labelled_images(tmp_path)
    assert [(p.path.name, p.label, p.source) for p in items] == [
        ("a.png", 0, "real"), ("b.jpg", 0, "real"), ("c.png", 1, "unknown")]


def test_cnndetection_layout_per_generator(tmp_path):
    for gen in ("biggan", "stylegan"):
        _img(tmp_path / gen / "0_real" / "r.png")
        _img(tmp_path / gen / "1_fake" / "f.png")
    items = read_labelled_images(tmp_path)
    assert sorted((p.path.parent.parent.name, p.label, p.source) for p in items) == [
        ("biggan", 0, "real"), ("biggan", 1, "biggan"), ("stylegan", 0, "real"), ("stylegan", 1, "stylegan")]


def test_csv_manifest(tmp_path):
    _img(tmp_path / "x.png")
    _img(tmp_path / "y.png")
    (tmp_path / "m.csv").write_text("path,label,source\nx.png,0,\ny.png,1,sdxl\n")
    items = read_labelled_images(tmp_path / "m.csv")
    assert [(p.path, p.label, p.source) for p in items] == [
        (tmp_path / "x.png", 0, "real"), (tmp_path / "y.png", 1, "sdxl")]


@pytest.mark.parametrize("text,match", [
    ("file,label\nx.png,0\n", "lacks column"),
    ("path,label\nx.png,2\n", r"m.csv:2: label '2'"),
])
def test_csv_errors(tmp_path, text, match):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_labelled_images(tmp_path / "m.csv")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_labelled_images(tmp_path / "missing")
    (tmp_path / "random").mkdir()
    with pytest.raises(ValueError, match="no label folders"):
        read_labelled_images(tmp_path)
    (tmp_path / "real").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_labelled_images(tmp_path)


# --- SynthCLIC-shaped datasets: parquet, save_to_disk, CSV with splits ----------------------------------------
import io

import numpy as np


def _png(colour=(10, 20, 30), size=(8, 8)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, colour).save(b, "PNG")
    return b.getvalue()


def _write_parquet(path, rows, image_type="struct", schema_extra=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())]) if image_type == "struct" else pa.binary()
    fields = [("image", image), ("label", pa.int64()), ("image_id", pa.string()), ("source", pa.string())]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields + (schema_extra or [])))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=2)


def _rows(n, split, image_type="struct"):
    rows = []
    for i in range(n):
        data = _png((i * 20 % 256, 0, 0))
        rows.append({"image": {"bytes": data, "path": None} if image_type == "struct" else data,
                     "label": i % 2, "image_id": f"{split}-{i // 2}", "source": "real" if i % 2 == 0 else "sdxl"})
    return rows


def test_parquet_hub_layout_splits_and_lazy_images(tmp_path):
    for split, n in (("train", 5), ("validation", 4)):
        _write_parquet(tmp_path / "data" / f"{split}-00000-of-00001.parquet", _rows(n, split))
    everything = read_labelled_images(tmp_path)
    assert [it.split for it in everything] == ["train"] * 5 + ["validation"] * 4
    val = read_labelled_images(tmp_path, split="validation")
    assert [(it.label, it.source, it.image_id) for it in val] == [
        (0, "real", "validation-0"), (1, "sdxl", "validation-0"), (0, "real", "validation-1"), (1, "sdxl", "validation-1")]
    assert len({it.key for it in everything}) == 9  # unique keys across files
    # row groups of 2 rows: row 3 lives in group 1 at index 1, and its bytes are exactly those written
    assert (val[3].image.row_group, val[3].image.index) == (1, 1)
    assert val[3].image.resolve_image() == _png((60, 0, 0))
    assert val[3].path is None


def test_parquet_split_folders_and_binary_image_column(tmp_path):
    _write_parquet(tmp_path / "train" / "0000.parquet", _rows(2, "train", "binary"), image_type="binary")
    _write_parquet(tmp_path / "test" / "0000.parquet", _rows(2, "test", "binary"), image_type="binary")
    items = read_labelled_images(tmp_path, split="test")
    assert [it.split for it in items] == ["test", "test"]
    assert items[1].image.resolve_image() == _png((20, 0, 0))


def test_single_parquet_file_is_one_pool(tmp_path):
    _write_parquet(tmp_path / "x.parquet", _rows(3, "x"))
    items = read_labelled_images(tmp_path / "x.parquet", split="validation")  # no splits: the split is ignored
    assert len(items) == 3 and all(it.split is None for it in items)


def test_parquet_images_decode_through_the_runtime_pipeline(tmp_path):
    from sid_edge.runtime.images import load_and_preprocess
    from sid_edge.artifact.preprocessing import Preprocessing
    from sid_edge.runtime.batching import iter_batches

    _write_parquet(tmp_path / "data" / "train-0.parquet", _rows(3, "train"))
    items = read_labelled_images(tmp_path, split="train")
    spec = Preprocessing(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    (batch,) = list(iter_batches([it.image for it in items], spec, batch_size=3))
    assert [it.error for it in batch.items] == [None] * 3
    np.testing.assert_array_equal(batch.pixel_values[2], load_and_preprocess(_png((40, 0, 0)), spec))


def test_parquet_errors_name_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_parquet(tmp_path / "data" / "train-0.parquet", _rows(2, "train"))
    with pytest.raises(ValueError, match=r"no split 'validation'; it has train"):
        read_labelled_images(tmp_path, split="validation")
    bad = tmp_path / "bad"
    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), (bad.mkdir() or bad) / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet: no column\(s\) image \(it has: img, label\)"):
        read_labelled_images(bad)
    rows = _rows(3, "train")
    rows[2]["label"] = 2
    _write_parquet(tmp_path / "labels" / "train.parquet", rows)
    with pytest.raises(ValueError, match=r"labels/train.parquet: row 2: label 2 is not 0 \(real\) or 1 \(synthetic\)"):
        read_labelled_images(tmp_path / "labels")


def test_save_to_disk_datasetdict_and_dataset(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["real", "synthetic"]),
                                  "image_id": datasets.Value("string"), "source": datasets.Value("string")})

    def ds(n, split):
        rows = _rows(n, split)
        return datasets.Dataset.from_list(rows, features=features)

    datasets.DatasetDict({"train": ds(4, "train"), "validation": ds(2, "validation")}).save_to_disk(str(tmp_path / "dd"))
    val = read_labelled_images(tmp_path / "dd", split="validation")
    assert [(it.label, it.source, it.split) for it in val] == [(0, "real", "validation"), (1, "sdxl", "validation")]
    assert val[1].image.resolve_image() == _png((20, 0, 0))
    assert len(read_labelled_images(tmp_path / "dd")) == 6
    with pytest.raises(ValueError, match="no split 'test'; it has train, validation"):
        read_labelled_images(tmp_path / "dd", split="test")
    ds(3, "x").save_to_disk(str(tmp_path / "single"))
    assert [it.split for it in read_labelled_images(tmp_path / "single", split="train")] == [None] * 3
    datasets.Dataset.from_dict({"image": [_png()], "target": [0]}).save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(ValueError, match="no column\\(s\\) label"):
        read_labelled_images(tmp_path / "nolabel")


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    # Offline mode is read at import time, so set the libraries' flags (no network is tried, no time waited).
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="hf:sid-edge-test/no-such-dataset: cannot reach"):
        read_labelled_images("hf:sid-edge-test/no-such-dataset", split="train")


def test_csv_with_split_and_image_id(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "m.csv").write_text("path,label,source,image_id,split\na.png,0,,p1,train\nb.png,1,gan,p1,validation\n")
    (item,) = read_labelled_images(tmp_path / "m.csv", split="validation")
    assert (item.path, item.label, item.source, item.image_id, item.split) == (tmp_path / "b.png", 1, "gan", "p1", "validation")
    with pytest.raises(ValueError, match="no split 'test'"):
        read_labelled_images(tmp_path / "m.csv", split="test")

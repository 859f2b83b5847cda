
import pytest
from PIL import Image

from sid_edge.datasets import read_labelled_images


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

"""Hostile artifacts (issue: hostile inputs): external data the manifest does not list, names leaving the folder."""

import json
import shutil

import numpy as np
import pytest

from sid_edge.artifact.manifest import ManifestError, file_entry, read_manifest, write_manifest
from sid_edge.artifact.onnx_references import external_data_locations
from sid_edge.runtime.detector import Detector


@pytest.fixture(scope="module")
def ext_artifact(tiny_backbone, trained_head, tmp_path_factory):
    import sid_edge.export.onnx_export as ox

    saved = ox.EXTERNAL_DATA_THRESHOLD_BYTES
    ox.EXTERNAL_DATA_THRESHOLD_BYTES = 0  # force external data on the tiny graph
    try:
        out = tmp_path_factory.mktemp("ext") / "det"
        ox.export_detector(trained_head, out, backbone=tiny_backbone, vocabulary=None)
    finally:
        ox.EXTERNAL_DATA_THRESHOLD_BYTES = saved
    return out


def test_reference_scan_matches_onnx(ext_artifact):
    onnx = pytest.importorskip("onnx")
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(ext_artifact / "model.fp32.onnx"), load_external_data=False)
    expected = {e.value for t in _get_all_tensors(model) for e in t.external_data if e.key == "location"}
    assert expected and external_data_locations(ext_artifact / "model.fp32.onnx") == expected


def test_unlisted_external_data_is_refused_before_the_session_opens(ext_artifact, tmp_path):
    onnx = pytest.importorskip("onnx")
    d = tmp_path / "det"
    shutil.copytree(ext_artifact, d)
    listed = read_manifest(d).models["fp32"].external_data[0].file
    # Point the graph at a copy of its weights under another name, re-hash the graph, but do not list the copy.
    shutil.copy(d / listed, d / "sneaky.bin")
    model = onnx.load(str(d / "model.fp32.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == listed:
                entry.value = "sneaky.bin"
    onnx.save(model, str(d / "model.fp32.onnx"))
    m = json.loads((d / "manifest.json").read_text())
    m["models"]["fp32"].update(file_entry(d, "model.fp32.onnx"))
    write_manifest(d, m)
    with pytest.raises(ManifestError, match="references external data the manifest does not list.*sneaky.bin"):
        Detector.load(d)
    # As a user meets it: exit 3 with the reason, nothing scored.
    from sid_edge.cli import main

    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (80, 60)).save(img)
    assert main(["scan", str(img), "--model", str(d), "--no-progress"]) == 3


def test_edited_external_data_is_refused(ext_artifact, tmp_path):
    d = tmp_path / "det"
    shutil.copytree(ext_artifact, d)
    data = d / read_manifest(d).models["fp32"].external_data[0].file
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="sha256 does not match"):
        Detector.load(d)
    assert Detector.load(ext_artifact).run(np.zeros((1, 3, 64, 64), np.float32))["logit"].shape == (1,)


# ------------------------------------------------------------------------------------------ hostile heads
@pytest.fixture
def head_copy(trained_head, tmp_path):
    d = tmp_path / "head"
    shutil.copytree(trained_head, d)
    return d


def _export(head, out, capsys):
    from sid_edge.cli import main

    capsys.readouterr()
    rc = main(["export", "--head", str(head), "--out", str(out), "--clip-model", "sid-edge-tiny",
               "--clip-pretrained", "none", "--vocabulary", "none"])
    return rc, " ".join(capsys.readouterr().err.split())


def test_nan_weights_are_refused_and_leave_no_folder(head_copy, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(head_copy / "head.safetensors"))
    name = sorted(state)[0]
    state[name] = np.full_like(state[name], np.nan)
    save_file(state, str(head_copy / "head.safetensors"))
    rc, err = _export(head_copy, tmp_path / "det", capsys)
    assert rc == 3 and "non-finite weights" in err and "Traceback" not in err
    assert not (tmp_path / "det").exists() and not list(tmp_path.glob(".det.partial-*"))


@pytest.mark.parametrize("field, value, named", [
    ("feature_dim", "64", "feature_dim must be a positive integer"),
    ("k", -1, "k must be a positive integer"),
    ("threshold", float("nan"), "threshold must be a finite number in [0, 1]"),
    ("training", [1, 2], "training must be a JSON object"),
])
def test_head_json_with_a_wrong_type_is_refused(head_copy, tmp_path, capsys, field, value, named):
    cfg = json.loads((head_copy / "head.json").read_text())
    cfg[field] = value
    (head_copy / "head.json").write_text(json.dumps(cfg))
    rc, err = _export(head_copy, tmp_path / "det", capsys)
    assert rc == 3 and named in err and "head.json" in err


def test_head_json_that_is_a_list_and_garbage_weights_are_refused(head_copy, tmp_path, capsys):
    (head_copy / "head.safetensors").write_bytes(b"\x00garbage" * 10)
    rc, err = _export(head_copy, tmp_path / "det", capsys)
    assert rc == 3 and "head.safetensors: not a readable safetensors file" in err
    (head_copy / "head.json").write_text("[1, 2, 3]")
    rc, err = _export(head_copy, tmp_path / "det", capsys)
    assert rc == 3 and "head.json" in err


def test_a_failed_export_leaves_nothing_and_the_rerun_succeeds(trained_head, tiny_backbone, tmp_path, monkeypatch):
    import sid_edge.export.onnx_export as ox

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(ox, "measure_parity", boom)
    with pytest.raises(RuntimeError):
        ox.export_detector(trained_head, tmp_path / "det", backbone=tiny_backbone, vocabulary=None)
    assert not (tmp_path / "det").exists() and not list(tmp_path.glob(".det.partial-*"))
    monkeypatch.undo()
    m = ox.export_detector(trained_head, tmp_path / "det", backbone=tiny_backbone, vocabulary=None)
    assert read_manifest(tmp_path / "det").models["fp32"].sha256 == m.models["fp32"].sha256

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

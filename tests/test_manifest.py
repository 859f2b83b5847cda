"""The typed manifest: every block refuses a wrong type or an out-of-range value at load, naming the field; the CLI
turns that into exit 3 with the reason, never a traceback."""

import json
import shutil

import pytest

from sid_edge.artifact.manifest import ManifestError, read_manifest, set_threshold
from sid_edge.cli import main


@pytest.fixture
def copy(artifact, tmp_path):
    d = tmp_path / "det"
    shutil.copytree(artifact, d)
    return d


def _edit(d, path, value):
    m = json.loads((d / "manifest.json").read_text())
    node = m
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    (d / "manifest.json").write_text(json.dumps(m))


_DELETE = object()

# (field path, bad value, what the message must name) - at least one case per block.
CASES = [
    (("schema_version",), True, "schema_version"),
    (("schema_version",), "1", "schema_version"),
    (("schema_version",), 99, "newer than this sid-edge"),
    (("backbone", "feature_dim"), "1024", "backbone.feature_dim"),
    (("backbone", "quick_gelu"), "yes", "backbone.quick_gelu"),
    (("preprocessing", "size"), 32, "preprocessing.size 32 does not match the graph's input side 64"),
    (("preprocessing", "size"), 100000, "preprocessing.size 100000 does not match"),
    (("preprocessing", "interpolation"), "lanczos", "Preprocessing.interpolation"),
    (("preprocessing", "mean"), [0.5, 0.5], "Preprocessing.mean"),
    (("head", "kind"), "forest", "head.kind"),
    (("head", "k"), 0, "head.k"),
    (("vocabulary", "count"), 3, "count 3 but 129 concepts"),
    (("vocabulary", "concepts"), "lens_flare", "vocabulary.concepts"),
    (("threshold",), float("nan"), "threshold"),
    (("threshold",), 2, "threshold: must be a finite number in [0, 1]"),
    (("threshold",), "0.5", "threshold"),
    (("input", "shape"), "batch", "input.shape"),
    (("input", "name"), "images", "input.name"),
    (("outputs",), "logit", "outputs"),
    (("outputs", 0, "name"), "p_synthetic", "outputs: duplicate names"),
    (("models",), ["fp32"], "models"),
    (("models",), {}, "models: the artifact lists no model"),
    (("models", "fp32", "sha256"), 123, "models.fp32.sha256"),
    (("models", "fp32", "size_bytes"), "857479", "models.fp32.size_bytes"),
    (("models", "fp32", "size_bytes"), -1, "models.fp32.size_bytes"),
    (("models", "fp32", "file"), "../evil.onnx", "models.fp32.file"),
    (("models", "fp32", "file"), "/etc/passwd", "models.fp32.file"),
    (("models", "fp32", "precision"), "int8", "models.fp32.precision"),
    (("models", "fp32", "onnxruntime"), {"session_config": {"a": 1}}, "models.fp32.onnxruntime.session_config.a"),
    (("default_precision",), "int4", "default_precision"),
    (("engines",), {"precision": "fp32"}, "engines"),
    (("explanation", "file"), "sub/../../x.npz", "explanation.file"),
    (("head", "weights", "sha256"), "abc", "head.weights.sha256"),
    (("libraries",), ["torch"], "libraries"),
    (("format",), "onnx", "not a sid-edge detector manifest"),
]


@pytest.mark.parametrize("path, value, named", CASES, ids=[".".join(map(str, c[0])) + f"={c[1]!r}"[:30] for c in CASES])
def test_bad_field_is_refused_with_its_name(copy, capsys, path, value, named):
    _edit(copy, path, value)
    with pytest.raises(ManifestError) as e:
        read_manifest(copy)
    assert named in str(e.value) and "manifest.json" in str(e.value)
    for command in (["info", str(copy)], ["scan", str(copy), "--model", str(copy), "--no-progress"]):
        capsys.readouterr()
        assert main(command) == 3
        err = capsys.readouterr().err
        assert named.split(":")[0].split(" ")[0] in err and "Traceback" not in err


def test_engine_entry_fields_are_typed(copy):
    m = json.loads((copy / "manifest.json").read_text())
    good = {"precision": "fp32", "file": "e.engine", "sha256": "0" * 64, "size_bytes": 1, "source_model": "model.fp32.onnx",
            "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 64}, "tensorrt_version": "10.8.0.43",
            "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}
    for field, bad, named in [("profile", {"min_batch": 9, "opt_batch": 8, "max_batch": 64}, "engines.0.profile"),
                              ("compute_capability", 9.0, "engines.0.compute_capability"),
                              ("source_model", "../model.fp32.onnx", "engines.0.source_model")]:
        m["engines"] = [{**good, field: bad}]
        (copy / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ManifestError, match=named.replace(".", r"\.")):
            read_manifest(copy)
    m["engines"] = [good]
    (copy / "manifest.json").write_text(json.dumps(m))
    assert read_manifest(copy).engines[0].profile.max_batch == 64


def test_missing_block_and_garbage_files(copy, tmp_path):
    _edit(copy, ("backbone",), _DELETE)
    with pytest.raises(ManifestError, match="backbone: Field required"):
        read_manifest(copy)
    (copy / "manifest.json").write_text("[1, 2")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(copy)
    (copy / "manifest.json").write_text("[" * 100000 + "]" * 100000)  # deep nesting: no RecursionError traceback
    with pytest.raises(ManifestError):
        read_manifest(copy)


def test_a_name_that_leaves_the_folder_is_refused_without_probing_it(copy, tmp_path):
    outside = tmp_path / "evil.onnx"
    shutil.copy(copy / "model.fp32.onnx", outside)
    _edit(copy, ("models", "fp32", "file"), "../evil.onnx")
    with pytest.raises(ManifestError) as e:
        read_manifest(copy)
    assert "stay inside the artifact folder" in str(e.value) and "size" not in str(e.value)
    # A symbolic link inside the folder that points outside is refused when the file is opened.
    _edit(copy, ("models", "fp32", "file"), "link.onnx")
    (copy / "link.onnx").symlink_to(outside)
    from sid_edge.runtime.detector import Detector

    with pytest.raises(ManifestError, match="resolves outside the artifact folder"):
        Detector.load(copy)


def test_writes_validate_and_are_atomic(copy):
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(ManifestError, match="threshold"):
        set_threshold(copy, 1.5)
    assert (copy / "manifest.json").read_bytes() == before  # nothing written
    set_threshold(copy, 0.25)
    assert read_manifest(copy).threshold == 0.25
    assert not [p for p in copy.iterdir() if p.name.endswith(".tmp")]

"""The runtime must not import torch: edge devices carry ONNX Runtime/TensorRT, numpy and OpenCV, not PyTorch."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_sid_edge_does_not_import_torch():
    r = run_python("""
        import sys, sid_edge
        from sid_edge import Detector, Prediction
        import sid_edge.cli, sid_edge.runtime.scan, sid_edge.runtime.detector, sid_edge.runtime.images, sid_edge.artifact.manifest, sid_edge.tools.datasets
        import sid_edge.tools.explain, sid_edge.runtime.concept_ranking, sid_edge.tools.evaluation.runner, sid_edge.tools.evaluation.metrics, sid_edge.runtime.numpy_head
        import sid_edge.tools.caches
        print(*(name in sys.modules for name in ('torch', 'open_clip', 'onnx', 'modelopt', 'datasets')))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"] * 5


def test_scan_runs_with_torch_unimportable(artifact, photo_dir, tmp_path):
    # Block torch entirely (as on a device without it) and run the real CLI scan in that interpreter.
    out = tmp_path / "r.jsonl"
    r = run_python(f"""
        import sys
        sys.modules['torch'] = None  # any `import torch` now raises ImportError
        from sid_edge.cli import main
        rc = main(['scan', {str(photo_dir)!r}, '--model', {str(artifact)!r}, '--out', {str(out)!r}])
        from sid_edge import Detector
        det = Detector.load({str(artifact)!r})
        rc_explain = main(['explain', {str(artifact)!r}, '--images', {str(photo_dir / "coffee.jpg")!r},
                           '--out', {str(tmp_path / "report")!r}])
        print(rc, len(det.predict([{str(photo_dir / "coffee.jpg")!r}])), rc_explain)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "1", "0"]
    assert (tmp_path / "report" / "report.md").is_file()
    assert len(out.read_text().splitlines()) == len(list(photo_dir.iterdir()))


def test_fp16_and_int8_variants_run_without_torch_or_onnx(precision_artifact, photo_dir, tmp_path):
    # The variants are served by the same torch-free runtime: block torch, onnx and ModelOpt and scan with each.
    outs = {p: tmp_path / f"{p}.csv" for p in ("fp16", "int8")}
    r = run_python(f"""
        import sys
        for name in ('torch', 'onnx', 'modelopt'):
            sys.modules[name] = None
        from sid_edge.cli import main
        for precision, out in {[(p, str(o)) for p, o in outs.items()]!r}:
            rc = main(['scan', {str(photo_dir)!r}, '--model', {str(precision_artifact)!r}, '--precision', precision,
                       '--out', out, '--no-progress'])
            print(rc)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0"]
    for out in outs.values():
        lines = out.read_text().splitlines()
        assert len(lines) == 1 + len(list(photo_dir.iterdir())) and all(line.split(",")[3] == "" for line in lines[1:])


def test_evaluate_runs_with_torch_unimportable(artifact, synthclic_dir, tmp_path):
    # Evaluation needs the runtime, numpy, scikit-learn and matplotlib, never PyTorch or the export stack.
    # An import hook makes them unimportable as on a machine without them (sys.modules[name] = None would also
    # trip scipy's array-API helpers, which look torch up in sys.modules without importing it).
    out = tmp_path / "report"
    r = run_python(f"""
        import importlib.abc, sys
        BLOCKED = {{'torch', 'open_clip', 'onnx', 'modelopt'}}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f'{{name}} is not installed here')
                return None

        sys.meta_path.insert(0, Block())
        from sid_edge.cli import main
        rc = main(['evaluate', {str(artifact)!r}, '--data', {str(synthclic_dir)!r}, '--out', {str(out)!r},
                   '--threshold-from', {str(synthclic_dir)!r}, '--no-progress'])
        print(rc, *(name in sys.modules for name in sorted(BLOCKED)))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-5:] == ["0", "False", "False", "False", "False"]
    assert (out / "report.json").is_file() and (out / "cross_dataset_map.png").is_file()

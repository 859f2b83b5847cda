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
        import sid_edge.cli, sid_edge.scan, sid_edge.detector, sid_edge.imageio, sid_edge.manifest
        import sid_edge.explain, sid_edge.top_concepts
        print('torch' in sys.modules, 'open_clip' in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


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

"""The layout's import rules (docs/architecture.md), checked with import-linter on the package as Python imports it,
and the light start-up they buy: the runtime loads no training library, `sid-edge --help` no ONNX Runtime."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(tmp_path):
    pytest.importorskip("importlinter")
    # export/ and calibration/ are installed as sid_edge.export / sid_edge.calibration (pyproject package-dir);
    # grimp reads one folder per package, so the contracts run on a copy laid out as Python sees the package.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "sid_edge", tree / "sid_edge", ignore=shutil.ignore_patterns("__pycache__"))
    for stage in ("export", "calibration"):
        shutil.copytree(ROOT / stage, tree / "sid_edge" / stage, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache", "pyproject.toml"], cwd=tree, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tree)}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken." in r.stdout


def _python(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_runtime_package_loads_no_training_library():
    out = _python("""
        import sys, pkgutil, importlib, sid_edge.runtime, sid_edge.artifact
        for pkg in (sid_edge.runtime, sid_edge.artifact):
            for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
                importlib.import_module(m.name)
        print(*(name in sys.modules for name in ('torch', 'onnx', 'open_clip', 'torchvision', 'modelopt')))
    """)
    assert out == ["False"] * 5


def test_cli_help_loads_neither_onnxruntime_nor_numpy():
    out = _python("""
        import sys, contextlib, io
        from sid_edge.cli import main
        for argv in (['--help'], ['scan', '--help'], ['evaluate', '--help'], ['export', '--help']):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
        print(*(name in sys.modules for name in ('onnxruntime', 'numpy', 'torch', 'PIL')))
    """)
    assert out == ["False"] * 4

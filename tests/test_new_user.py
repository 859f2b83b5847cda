"""What a new user meets (issue: new users): warnings on random weights every time, case-insensitive choices, -v
anywhere, messages that say what to do, full tables without a terminal."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sid_edge.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [
    lambda a, p, t: ["scan", str(p), "--model", str(a), "--out", str(t / "r.csv"), "--no-progress"],
    lambda a, p, t: ["info", str(a)],
    lambda a, p, t: ["explain", str(a), "--images", str(p / "coffee.jpg"), "--out", str(t / "x")],
])
def test_random_weights_are_announced_every_time(artifact, photo_dir, tmp_path, capsys, command, monkeypatch):
    import sid_edge.runtime.detector as detector_module

    monkeypatch.setattr(detector_module, "_WARNED_RANDOM", set())  # a fresh process, as each command is
    assert main(command(artifact, photo_dir, tmp_path)) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "RANDOM weights" in err and "meaningless" in err
    assert "WARNING WARNING" not in err


def test_detector_load_warns_once_per_artifact(artifact, caplog, monkeypatch):
    import sid_edge.runtime.detector as detector_module
    from sid_edge.runtime.detector import Detector

    monkeypatch.setattr(detector_module, "_WARNED_RANDOM", set())
    Detector.load(artifact).close()
    Detector.load(artifact).close()
    assert caplog.text.count("RANDOM weights") == 1


def test_precision_is_case_insensitive_and_verbose_goes_anywhere(artifact, photo_dir, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["scan", str(photo_dir), "--model", str(artifact), "--out", str(out), "--no-progress",
                 "--precision", "FP32", "-v"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["scan", str(photo_dir), "--model", str(artifact), "--precision", "fp64"])
    assert e.value.code == 2


def test_a_model_file_instead_of_its_folder_says_pass_the_folder(artifact, photo_dir, capsys):
    assert main(["scan", str(photo_dir), "--model", str(artifact / "model.fp32.onnx"), "--no-progress"]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "is a file" in err and f"pass its folder, {artifact}" in err


def test_train_without_the_training_extra_names_the_extra(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None  # as in a runtime-only install
        from sid_edge.cli import main
        sys.exit(main(['train', '--data', {str(tmp_path)!r}, '--out', {str(tmp_path / 'h')!r}]))
    """)
    (tmp_path / "real").mkdir()
    (tmp_path / "synthetic").mkdir()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "pip install 'sid-edge[train]'" in r.stderr and "Traceback" not in r.stderr


def test_tables_are_not_cut_without_a_terminal(precision_artifact):
    r = subprocess.run([sys.executable, "-m", "sid_edge", "info", str(precision_artifact)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout  # rich's ellipsis marks a cut cell
    assert "max|Δp|" in r.stdout and "cos min" in r.stdout


def test_calibration_exclusion_does_not_depend_on_how_the_path_is_spelled(precision_artifact, synthclic_dir, tmp_path,
                                                                          monkeypatch):
    from sid_edge.tools.evaluation.runner import NamedData, evaluate, load_detector

    det = [load_detector("int8", precision_artifact, "int8")]
    absolute = evaluate(det, [NamedData("s", str(synthclic_dir))], split="train", cache_root=tmp_path / "c")
    monkeypatch.chdir(synthclic_dir.parent)
    relative = evaluate(det, [NamedData("s", synthclic_dir.name)], split="train", cache_root=tmp_path / "c")
    copy = tmp_path / "copy"  # the same images elsewhere are the same images
    shutil.copytree(synthclic_dir, copy)
    moved = evaluate(det, [NamedData("s", str(copy))], split="train", cache_root=tmp_path / "c")
    counts = [r.scored[("int8", "s")].excluded_calibration for r in (absolute, relative, moved)]
    assert counts[0] > 0 and len(set(counts)) == 1
    assert len({len(r.scored[("int8", "s")].labels) for r in (absolute, relative, moved)}) == 1


def test_split_typo_on_data_without_splits_is_refused(demo_data):
    from sid_edge.tools.datasets import read_labelled_images

    assert len(read_labelled_images(demo_data, split="validation")) == len(read_labelled_images(demo_data))
    with pytest.raises(ValueError, match="no split 'tset'.*check the spelling"):
        read_labelled_images(demo_data, split="tset")


def test_threshold_warnings_and_report(precision_artifact, demo_data, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", str(precision_artifact), "--threshold-from", str(demo_data), "--target-fpr", "0.001",
                 "--data", str(demo_data), "--out", str(out), "--no-progress"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot be resolved with" in err and "evaluated on the same images" in err
    assert main(["evaluate", str(precision_artifact), "--threshold-from", str(demo_data), "--out", str(tmp_path / "t"),
                 "--no-progress"]) == 0
    assert "| detector | threshold |" in (tmp_path / "t" / "report.md").read_text()

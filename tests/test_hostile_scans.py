"""Hostile file names and outputs in scans (issue: hostile inputs): every file gets its row, whatever its name;
cells are safe to open in a spreadsheet; outputs never destroy inputs or each other; scans resume without
duplicates; unreadable folders and skipped files are reported."""

import base64
import csv
import fcntl
import json
import os
import shutil

import pytest

from sid_edge.cli import main
from sid_edge.runtime.scan import resume_file


@pytest.fixture
def folder(photo_dir, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("coffee.jpg", "astronaut.png", "rocket.jpg"):
        shutil.copy(photo_dir / name, d / name)
    return d


def _rows(path):
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in open(path, encoding="utf-8")]
    return list(csv.DictReader(open(path, encoding="utf-8", newline="")))


def test_non_utf8_and_formula_names_get_their_rows(folder, artifact, tmp_path, capsys, monkeypatch):
    latin1 = os.fsencode(folder) + b"/f_latin1_\xe9t\xe9.jpg"
    shutil.copy(folder / "coffee.jpg", latin1)
    shutil.copy(folder / "coffee.jpg", folder / "=1+1.png")
    shutil.copy(folder / "coffee.jpg", folder / "@SUM(A1).jpg")
    monkeypatch.chdir(folder)  # relative paths: a row's path cell starts with the file's name
    for out in (tmp_path / "r.csv", tmp_path / "r.jsonl"):
        assert main(["scan", ".", "--model", str(artifact), "--out", str(out), "--no-progress"]) == 0
        rows = _rows(out)
        assert len(rows) == 6 and all(r["error"] == "" for r in rows)
        paths = [r["path"] for r in rows]
        if out.suffix == ".csv":
            assert "'=1+1.png" in paths and "'@SUM(A1).jpg" in paths  # neutralised for spreadsheets
            assert any(p.endswith("f_latin1_\\xe9t\\xe9.jpg") for p in paths)
        else:
            assert "=1+1.png" in paths and "@SUM(A1).jpg" in paths  # exact in JSONL
            odd = [r for r in rows if "path_bytes" in r]
            assert len(odd) == 1 and base64.b64decode(odd[0]["path_bytes"]) == b"f_latin1_\xe9t\xe9.jpg"
            assert os.path.exists(os.fsdecode(base64.b64decode(odd[0]["path_bytes"])))
    # stdout too
    capsys.readouterr()
    assert main(["scan", ".", "--model", str(artifact), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("\n") == 7


@pytest.mark.parametrize("make_out, message", [
    (lambda d, t: d / "coffee.jpg", "is one of the files to scan"),
    (lambda d, t: t, "is a folder"),
    (lambda d, t: d / "coffee.jpg" / "r.csv", "is a file, not a folder"),
])
def test_bad_outputs_exit_2_and_destroy_nothing(folder, artifact, tmp_path, capsys, make_out, message):
    before = (folder / "coffee.jpg").read_bytes()
    out = make_out(folder, tmp_path)
    assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert (folder / "coffee.jpg").read_bytes() == before


def test_read_only_folder_output_exits_2(folder, artifact, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert main(["scan", str(folder), "--model", str(artifact), "--out", str(ro / "r.csv"), "--no-progress"]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_a_second_scan_to_the_same_output_is_refused(folder, artifact, tmp_path, capsys):
    out = tmp_path / "r.csv"
    out.write_text("")
    with open(out, "a") as held:  # another scan holds the output
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 2
        assert "another scan is writing this file" in capsys.readouterr().err


def test_unreadable_subfolder_is_reported_and_the_rest_scanned(folder, artifact, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can list any folder")
    locked = folder / "private"
    locked.mkdir()
    shutil.copy(folder / "coffee.jpg", locked / "x.jpg")
    locked.chmod(0)
    try:
        out = tmp_path / "r.csv"
        assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 0
    finally:
        locked.chmod(0o700)
    rows = _rows(out)
    assert sum(r["error"] == "" for r in rows) == 3
    assert any(r["path"].endswith("private") and "cannot list this folder" in r["error"] for r in rows)
    assert "could not list" in capsys.readouterr().err


def test_skipped_files_are_counted_and_all_files_gives_them_rows(folder, artifact, tmp_path, capsys):
    (folder / "notes.txt").write_text("not an image")
    (folder / "backup.zip").write_bytes(b"\x00" * 64)  # neither image nor video (.MOV files are scanned as video)
    out = tmp_path / "r.csv"
    capsys.readouterr()
    assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "skipped 2 files that are not images" in err and ".txt" in err
    assert len(_rows(out)) == 3
    assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress", "--all-files"]) == 0
    rows = _rows(out)
    assert len(rows) == 5 and sum(bool(r["error"]) for r in rows) == 2


def test_heic_is_decoded(folder, artifact, tmp_path):
    pytest.importorskip("pillow_heif")
    from PIL import Image

    Image.open(folder / "coffee.jpg").save(folder / "IMG_0001.HEIC")
    out = tmp_path / "r.csv"
    assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 0
    rows = {os.path.basename(r["path"]): r for r in _rows(out)}
    assert rows["IMG_0001.HEIC"]["error"] == "" and rows["IMG_0001.HEIC"]["p_synthetic"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_scores_only_what_has_no_row_and_never_duplicates(folder, artifact, tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    args = ["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress", "--batch-size", "1"]
    assert main(args) == 0
    full = {r["path"]: r["p_synthetic"] for r in _rows(out)}
    # A kill after two complete rows and half a third: cut the output, and the sidecar after one confirmed row.
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    head = 1 if suffix == ".csv" else 0
    out.write_text("".join(lines[: head + 2]) + lines[head + 2][:10])
    side = resume_file(out).read_text().splitlines(keepends=True)
    resume_file(out).write_text("".join(side[:2]) + side[2][:5])  # settings line, one confirmed row, a partial one
    # One file changes meanwhile, one is new.
    shutil.copy(folder / "rocket.jpg", folder / "new.jpg")
    assert main(args + ["--resume"]) == 0
    rows = _rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 4
    assert {r["path"]: r["p_synthetic"] for r in rows if not r["path"].endswith("new.jpg")} == full
    # A changed file is rescored: its row reflects the new content.
    shutil.copy(folder / "rocket.jpg", folder / "coffee.jpg")
    os.utime(folder / "coffee.jpg", ns=(1, 1))
    assert main(args + ["--resume"]) == 0
    rows = {r["path"]: r["p_synthetic"] for r in _rows(out)}
    assert len(rows) == 4 and rows[str(folder / "coffee.jpg")] == rows[str(folder / "rocket.jpg")]


def test_unwritable_output_exits_2_even_as_root(folder, artifact, capsys):
    assert main(["scan", str(folder), "--model", str(artifact), "--out", "/proc/sid-edge-results.csv",
                 "--no-progress"]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_unlistable_subfolder_is_reported_even_as_root(folder, artifact, tmp_path, monkeypatch, capsys):
    locked = folder / "private"
    locked.mkdir()
    shutil.copy(folder / "coffee.jpg", locked / "x.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "r.csv"
    assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 0
    rows = _rows(out)
    assert sum(r["error"] == "" for r in rows) == 3
    assert [r["error"] for r in rows if r["path"] == str(locked)] == ["cannot list this folder (Permission denied)"]


def test_an_output_that_is_a_symlink_is_refused(folder, artifact, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "r.csv"
    link.symlink_to(victim)
    assert main(["scan", str(folder), "--model", str(artifact), "--out", str(link), "--no-progress"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "precious"

"""Hostile inputs found by attacking the product after issue 11 (each test failed before its fix)."""

from __future__ import annotations

import os
import stat

import pytest

from sid_edge.runtime.images import ImageDecodeError, decode_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    """An EPS upload (whatever its name) must not be handed to Ghostscript, an external PostScript interpreter."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "ghostscript-ran"
    fake_gs = tmp_path / "gs"
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(fake_gs.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(fake_gs))
    named_png = tmp_path / "upload.png"
    named_png.write_bytes(EPS)
    for source in (EPS, named_png):
        with pytest.raises(ImageDecodeError) as e:
            decode_image(source)
        assert e.value.reason == "PostScript/EPS is not decoded (it would run Ghostscript)"
    assert not marker.exists()


def _ok_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_predict_one_bad_input_is_one_error_and_never_aborts_the_call(artifact, tmp_path):
    """Detector.predict: an array of the wrong dtype/shape is ONE input (one error, not one per row); a text-mode or
    closed file object and an empty PIL image get an error result while the valid inputs beside them are scored."""
    import io

    import numpy as np
    from PIL import Image

    from sid_edge import Detector

    ok = _ok_png()
    with Detector.load(artifact) as det:
        expected = det.predict(ok)[0].p_synthetic
        for array in (np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), np.uint8), np.zeros((7,), np.uint8)):
            preds = det.predict(array)
            assert len(preds) == 1 and preds[0].p_synthetic is None
            assert "expected an (H, W, 3) uint8 RGB array" in preds[0].error
        stack = np.zeros((3, 20, 20, 3), np.uint8)  # (N, H, W, 3): a batch of frames
        assert [p.ok for p in det.predict(stack)] == [True, True, True]

        (tmp_path / "a.png").write_bytes(ok)
        closed = io.BytesIO(ok)
        closed.close()
        with open(tmp_path / "a.png", encoding="utf-8") as text_mode:
            preds = det.predict([text_mode, ok, closed, Image.new("RGB", (0, 0)), Image.new("RGB", (0, 5)), ok])
        assert len(preds) == 6
        assert "binary mode" in preds[0].error and preds[0].p_synthetic is None
        assert "closed file" in preds[2].error
        assert preds[3].error == "ValueError: preprocess: empty image, size (0, 0)"
        assert preds[4].error == "ValueError: preprocess: empty image, size (0, 5)"
        assert preds[1].p_synthetic == preds[5].p_synthetic == expected


def test_resume_with_other_settings_is_refused_and_keeps_the_earlier_output(photo_dir, artifact, tmp_path, capsys):
    """A resumed scan with another threshold/columns/model would mix rows that disagree (the same p_synthetic
    labelled 'real' above and 'synthetic' below, CSV rows of different widths): refuse with exit 2, output intact."""
    import shutil

    from sid_edge.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("coffee.jpg", "astronaut.png", "rocket.jpg"):
        shutil.copy(photo_dir / name, folder / name)
    out = tmp_path / "r.csv"
    args = ["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress", "--batch-size", "1"]
    assert main(args) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))  # killed before the last row
    before = out.read_bytes()
    capsys.readouterr()
    for other in (["--threshold", "0.01"], ["--top-concepts", "0"], ["--no-provenance"], ["--max-pixels", "1000"],
                  ["--stability", "2"]):
        assert main(args + ["--resume"] + other) == 2, other
        err = capsys.readouterr().err
        assert "the earlier run used other settings" in err and "drop --resume" in err
        assert out.read_bytes() == before
    assert main(args + ["--resume"]) == 0  # the same settings resume
    assert out.read_text() == "".join(lines)


def test_out_that_is_a_hard_link_to_an_input_or_a_device_is_refused(photo_dir, artifact, tmp_path, capsys):
    """`--out` hard-linked to an image being scanned was truncated (the input destroyed); `--out /dev/null` or a
    FIFO ended in 'unexpected failure' (exit 1). Both are usage errors (exit 2) and nothing is written."""
    import shutil

    from sid_edge.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo_dir / "coffee.jpg", folder / "coffee.jpg")
    original = (folder / "coffee.jpg").read_bytes()
    (tmp_path / "results").mkdir()
    linked = tmp_path / "results" / "r.csv"
    os.link(folder / "coffee.jpg", linked)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    for out, reason in ((linked, "is one of the files to scan"), (os.devnull, "not a regular file"),
                        (fifo, "not a regular file")):
        capsys.readouterr()
        assert main(["scan", str(folder), "--model", str(artifact), "--out", str(out), "--no-progress"]) == 2, out
        assert reason in capsys.readouterr().err
    assert (folder / "coffee.jpg").read_bytes() == original


def test_explain_survives_hostile_image_names(photo_dir, artifact, tmp_path, capsys):
    """`sid-edge explain --images`: a Latin-1 name ended in 'unexpected failure' (matplotlib cannot draw a lone
    surrogate), a bad file below a folder named '[' (path '…/[/b]bad.png') in a rich MarkupError, and a line break
    in a name split the report's heading. Each image gets its section; names are shown as scan rows show them."""
    pytest.importorskip("matplotlib")
    import shutil

    from sid_edge.cli import main

    folder = tmp_path / "in"
    (folder / "[").mkdir(parents=True)
    latin1 = os.fsencode(folder) + b"/lat\xe9.jpg"
    shutil.copy(photo_dir / "coffee.jpg", latin1)
    shutil.copy(photo_dir / "coffee.jpg", folder / "new\nline.jpg")
    (folder / "[" / "b]bad.png").write_bytes(b"garbage")
    out = tmp_path / "report"
    assert main(["explain", str(artifact), "--images", os.fsdecode(latin1), str(folder / "new\nline.jpg"),
                 str(folder / "[" / "b]bad.png"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[/b]bad.png:" in err and "not an image (unrecognised format)" in err
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "### lat\\xe9.jpg: p_synthetic" in report
    assert "### new line.jpg: p_synthetic" in report
    assert "### b]bad.png\n\nNot scored: not an image (unrecognised format)" in report


def test_provenance_json_maps_non_utf8_names_back_like_scan(photo_dir, tmp_path, capsys):
    """`sid-edge provenance --json` wrote a Latin-1 name's raw byte into the JSON line (not UTF-8: a consumer's
    json.loads fails, a strict stdout raises). It now writes the scan rows' form: \\xNN escapes plus path_bytes."""
    import base64
    import json
    import shutil

    from sid_edge.cli import main

    latin1 = os.fsencode(tmp_path) + b"/lat\xe9.jpg"
    shutil.copy(photo_dir / "coffee.jpg", latin1)
    capsys.readouterr()
    assert main(["provenance", "--json", "--no-watermark", os.fsdecode(latin1)]) == 0
    line = capsys.readouterr().out.strip()
    row = json.loads(line.encode("utf-8").decode("utf-8"))  # strict UTF-8 both ways
    assert row["path"] == os.fsdecode(tmp_path) + "/lat\\xe9.jpg"
    assert base64.b64decode(row["path_bytes"]) == latin1
    assert main(["provenance", "--no-watermark", os.fsdecode(latin1)]) == 0
    capsys.readouterr().out.encode("utf-8")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_name_with_a_carriage_return_is_one_csv_row_and_resumes(photo_dir, artifact, tmp_path, suffix):
    """Python's csv module quoted only the lineterminator's characters, so a name holding a CR was written unquoted:
    every CSV reader split that row in two, and a resume never matched it (the file was scored again each time)."""
    import shutil

    from sid_edge import Detector
    from sid_edge.runtime.scan import scan

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo_dir / "coffee.jpg", folder / "cr\r.jpg")
    shutil.copy(photo_dir / "rocket.jpg", folder / "plain.jpg")
    out = tmp_path / f"r{suffix}"
    with Detector.load(artifact) as det:
        first = scan([folder], det, out=out, progress=False)
        before = out.read_bytes()
        again = scan([folder], det, out=out, progress=False, resume=True)
    assert (first.scored, again.kept, again.scored) == (2, 2, 0)
    assert out.read_bytes() == before
    if suffix == ".csv":  # every CSV reader sees two rows, the CR kept inside its quoted cell
        import csv

        pd = pytest.importorskip("pandas")

        with open(out, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["path"] for r in rows] == [str(folder / "cr\r.jpg"), str(folder / "plain.jpg")]
        assert list(pd.read_csv(out)["path"]) == [str(folder / "cr\r.jpg"), str(folder / "plain.jpg")]


def test_videos_with_non_utf8_and_formula_names(artifact, tmp_path, monkeypatch, capsys):
    """A video whose name is Latin-1 bytes crashed the whole scan with SIGSEGV (cv2.VideoCapture on a str holding
    a lone surrogate): every later row lost. The per-video summary wrote '=1+1.mp4' as a live formula and died with
    UnicodeEncodeError on the Latin-1 name. Now: rows and summaries as image rows are written."""
    cv2 = pytest.importorskip("cv2")
    import base64
    import csv
    import json

    import numpy as np

    from sid_edge.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    latin1 = os.fsencode(folder) + b"/vid\xe9.mp4"
    for name in (folder / "=1+1.mp4", latin1):
        tmp = str(tmp_path / "tmp.mp4")
        w = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
        for i in range(10):
            w.write(np.full((48, 64, 3), 20 * i, np.uint8))
        w.release()
        os.rename(tmp, name)
    monkeypatch.chdir(folder)
    assert main(["scan", ".", "--model", str(artifact), "--out", str(tmp_path / "rows.csv"), "--summary",
                 str(tmp_path / "s.csv"), "--no-progress"]) == 0
    with open(tmp_path / "rows.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["path"] for r in rows}) == ["'=1+1.mp4", "vid\\xe9.mp4"]
    assert all(r["p_synthetic"] and not r["error"] for r in rows)
    with open(tmp_path / "s.csv", encoding="utf-8", newline="") as f:
        summary = {r["path"]: r for r in csv.DictReader(f)}
    assert sorted(summary) == ["'=1+1.mp4", "vid\\xe9.mp4"] and summary["vid\\xe9.mp4"]["frames_scored"] == "2"
    assert main(["scan", ".", "--model", str(artifact), "--out", str(tmp_path / "rows.jsonl"), "--summary",
                 str(tmp_path / "s.jsonl"), "--no-progress"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    by_path = {x["path"]: x for x in lines}
    assert base64.b64decode(by_path["vid\\xe9.mp4"]["path_bytes"]) == b"vid\xe9.mp4"
    assert "=1+1.mp4" in by_path and "path_bytes" not in by_path["=1+1.mp4"]


def test_evaluate_scores_csv_with_non_utf8_names_and_formula_sources(photo_dir, artifact, tmp_path):
    """`sid-edge evaluate` on a dataset holding a Latin-1 file name ended in 'unexpected failure' (exit 1) while
    writing scores.csv; a CSV dataset's `source` column (the dataset author's text) reached scores.csv as a live
    spreadsheet formula. Both are now written as scan rows are."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import csv
    import shutil

    from sid_edge.cli import main

    folder = tmp_path / "ds"
    (folder / "real").mkdir(parents=True)
    (folder / "synthetic").mkdir()
    shutil.copy(photo_dir / "coffee.jpg", folder / "real" / "coffee.jpg")
    shutil.copy(photo_dir / "astronaut.png", folder / "real" / "astronaut.png")
    shutil.copy(photo_dir / "rocket.jpg", os.fsencode(folder / "synthetic") + b"/lat\xe9.jpg")
    shutil.copy(photo_dir / "moon.png", folder / "synthetic" / "moon.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,source\n"
                        f"{folder / 'real' / 'coffee.jpg'},0,real\n"
                        f"{folder / 'synthetic' / 'moon.png'},1,\"=HYPERLINK(\"\"http://x\"\")\"\n", encoding="utf-8")
    out = tmp_path / "report"
    assert main(["evaluate", str(artifact), "--data", str(folder), str(manifest), "--out", str(out),
                 "--no-progress", "--no-cache"]) == 0
    with open(out / "scores.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r["key"].endswith("synthetic/lat\\xe9.jpg") for r in rows)
    assert '\'=HYPERLINK("http://x")' in {r["source"] for r in rows}
    text = ("detector", "dataset", "key", "image_id", "source", "error")
    assert not any(r[k].startswith(("=", "+", "-", "@")) for r in rows for k in text)


@pytest.mark.parametrize("content, reason", [
    (b"path,label\n\xff\xfe,1\n", "not UTF-8 text"),
    (b"label,path\n1\n", ":2: empty path"),  # a short row: no path cell at all
    (b'path,label\n"' + b"a" * 200_000 + b'",1\n', "not a readable CSV manifest (field larger than field limit"),
])
def test_malformed_csv_dataset_manifest_is_a_named_error(tmp_path, content, reason):
    """A short row ended `evaluate`/`train` in 'unexpected failure' (TypeError on a None path), an over-long field in
    csv.Error (exit 1); a non-UTF-8 manifest's message did not name the file. All are ValueErrors naming it."""
    from sid_edge.tools.datasets import read_labelled_images

    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(ValueError) as e:
        read_labelled_images(manifest)
    assert str(e.value).startswith(str(manifest)) and reason in str(e.value)


def test_export_out_that_holds_an_input_or_cannot_be_written_is_a_usage_error(trained_head, tmp_path, capsys):
    """`export --head H --out H --overwrite` (or --out H's parent) deleted the head being exported; `--out` naming
    a file said 'not empty' with exit 3; an unwritable --out ended in 'unexpected failure' (exit 1). All exit 2."""
    import shutil

    from sid_edge.cli import main

    head = tmp_path / "work" / "head"
    shutil.copytree(trained_head, head)
    before = sorted(p.name for p in head.iterdir())
    base = ["export", "--head", str(head), "--clip-model", "sid-edge-tiny", "--clip-pretrained", "none",
            "--precision", "fp32"]
    for out, extra, reason in ((head, ["--overwrite"], "holds --head"), (head.parent, ["--overwrite"], "holds --head"),
                               (head / "head.json", [], "is a file"), (head, [], "not empty"),
                               ("/proc/sid-edge-artifact", [], "cannot write the artifact there")):
        capsys.readouterr()
        assert main(base + ["--out", str(out)] + extra) == 2, out
        assert reason in capsys.readouterr().err
    assert sorted(p.name for p in head.iterdir()) == before


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_report_out_that_is_a_file_or_unwritable_is_a_usage_error(artifact, tmp_path, capsys, command):
    """`explain`/`evaluate --out` naming a file, a path below a file, or an uncreatable place ended in 'unexpected
    failure' (FileExistsError/FileNotFoundError, exit 1), evaluate only after scoring every image. Exit 2 at once."""
    pytest.importorskip("matplotlib")
    from sid_edge.cli import main

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    data = tmp_path / "m.csv"
    data.write_text("path,label\nx.png,0\n")
    extra = ["--data", str(data), "--no-progress"] if command == "evaluate" else []
    for out, reason in ((a_file, "is a file"), (a_file / "sub", "cannot create this folder"),
                        ("/proc/sid-edge-report", "cannot create this folder")):
        capsys.readouterr()
        assert main([command, str(artifact), "--out", str(out)] + extra) == 2, out
        assert reason in capsys.readouterr().err
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("args, reason", [
    (["scan", "--workers", "-1"], "--workers -1: must be >= 1"),
    (["scan", "--workers", "0"], "--workers 0: must be >= 1"),
    (["scan", "--max-pixels", "-5"], "--max-pixels -5: must be >= 1"),
    (["scan", "--max-pixels", "0"], "--max-pixels 0: must be >= 1"),
    (["evaluate", "--workers", "-2"], "--workers -2: must be >= 1"),
])
def test_worker_and_pixel_limits_are_checked(artifact, photo_dir, tmp_path, capsys, args, reason):
    """`scan --workers -1` ended in 'unexpected failure' (exit 1); `--max-pixels -5` turned every image into an
    error row with exit 0, and `--max-pixels 0` silently meant the default. All are usage errors (exit 2)."""
    from sid_edge.cli import main

    command, *flags = args
    if command == "scan":
        argv = ["scan", str(photo_dir / "coffee.jpg"), "--model", str(artifact), "--no-progress"] + flags
    else:
        data = tmp_path / "m.csv"
        data.write_text(f"path,label\n{photo_dir / 'coffee.jpg'},0\n")
        argv = ["evaluate", str(artifact), "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress"] + flags
    assert main(argv) == 2
    assert reason in capsys.readouterr().err


def test_lazy_pil_image_is_held_to_the_pixel_limit_before_loading(artifact, photo_dir):
    """A PIL image from Image.open is lazy: Detector.predict loaded it whatever its size (only Pillow's own 2x limit
    applied), skipping the decompression-bomb limit that the same file passed by path gets."""
    from PIL import Image

    from sid_edge import Detector

    with Detector.load(artifact) as det, Image.open(photo_dir / "coffee.jpg") as lazy:
        w, h = lazy.size
        [pred] = next(iter(det.predict_batches([lazy], max_pixels=w * h - 1)))
        [by_path] = next(iter(det.predict_batches([str(photo_dir / "coffee.jpg")], max_pixels=w * h - 1)))
        assert pred.p_synthetic is None and pred.error == by_path.error
        assert pred.error.startswith(f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of {w * h - 1}")
        assert det.predict(lazy)[0].ok  # within the default limit it is scored

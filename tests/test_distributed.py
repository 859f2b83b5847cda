"""`sid-edge scan --ray`: a local Ray instance (2 CPUs, small object store) gives the local scan's rows."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from sid_edge.cli import main  # noqa: E402
from sid_edge.distributed.results import ResultsError  # noqa: E402
from sid_edge.distributed.scan import ray_scan  # noqa: E402

TOL = 1e-6
#: The local scan's default provenance reading (C2PA, IPTC digital source type, generator metadata; no watermark).
PROV = {"c2pa_trust": None, "check_watermark": False}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module: 2 CPUs (1 actor + 1 decode task), 100 MB object store."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
             logging_level="WARNING", configure_logging=True)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def scan_folder(photo_dir, tmp_path_factory) -> Path:
    """Photographs in two levels plus bad files: empty, truncated, not an image, a dangling link."""
    root = tmp_path_factory.mktemp("ray-scan") / "images"
    (root / "sub").mkdir(parents=True)
    photos = sorted(photo_dir.iterdir())
    for i, p in enumerate(photos):
        shutil.copy(p, (root / "sub" if i % 2 else root) / p.name)
    (root / "empty.jpg").write_bytes(b"")
    (root / "sub" / "text.png").write_text("not an image\n")
    data = photos[0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3] if photos[0].suffix == ".jpg" else data[:200])
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    # generator metadata (a Stable Diffusion web UI "parameters" text chunk): a provenance signal in both scans
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd_xl_base_1.0")
    Image.open(photos[0]).convert("RGB").save(root / "generated.png", pnginfo=info)
    return root


@pytest.fixture(scope="module")
def many_folder(scan_folder, tmp_path_factory) -> Path:
    """scan_folder plus 150 more photographs, so that a run lasts long enough to be interrupted mid-way."""
    root = tmp_path_factory.mktemp("ray-many") / "images"
    shutil.copytree(scan_folder, root, symlinks=True)
    photos = sorted(p for p in scan_folder.rglob("*") if p.suffix in (".jpg", ".png") and not p.is_symlink()
                    and p.stat().st_size > 1000)
    (root / "more").mkdir()
    for i in range(150):
        shutil.copy(photos[i % len(photos)], root / "more" / f"{i:03d}{photos[i % len(photos)].suffix}")
    return root


def local_rows(paths, artifact, out: Path, *extra) -> list[dict]:
    assert main(["scan", *map(str, paths), "--model", str(artifact), "--out", str(out), "--no-progress", *extra]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_rows(ray_rows: list[dict], ref_rows: list[dict], key=lambda path: path) -> None:
    """Same inputs in the same order, same errors, same predictions, p_synthetic and concepts within 1e-6."""
    assert [key(r["path"]) for r in ray_rows] == [r["path"] for r in ref_rows]
    for a, b in zip(ray_rows, ref_rows):
        assert a["error"] == b["error"], (a, b)
        assert a["prediction"] == b["prediction"], (a, b)
        if b["p_synthetic"] is None:
            assert a["p_synthetic"] is None
        else:
            assert abs(a["p_synthetic"] - b["p_synthetic"]) <= TOL, (a, b)
        assert [c["name"] for c in a.get("top_concepts", [])] == [c["name"] for c in b.get("top_concepts", [])]
        for ca, cb in zip(a.get("top_concepts", []), b.get("top_concepts", [])):
            assert abs(ca["score"] - cb["score"]) <= TOL
        assert a.get("provenance") == b.get("provenance"), (a, b)
        assert set(a) == set(b), (a, b)  # the same fields


def test_folder_with_bad_files_gives_the_local_scan_rows(ray_local, artifact, scan_folder, tmp_path):
    ref = local_rows([scan_folder], artifact, tmp_path / "local.jsonl")
    assert sum(1 for r in ref if r["error"]) == 4 and sum(1 for r in ref if not r["error"]) >= 5
    assert any(r["provenance"] for r in ref)  # the generated.png row carries a signal
    out = tmp_path / "ray.jsonl"
    s = ray_scan([scan_folder], artifact, out=out, batch_size=3, progress=False, provenance=PROV)
    rows = read_jsonl(out)
    assert_same_rows(rows, ref)
    assert (s.files, s.errors, s.scored) == (len(ref), 4, len(ref) - 4)
    assert s.rows_this_run == len(ref) and s.retried_rows == 0 and s.actors_started == 1
    assert s.backends and "CPU" in s.backends[0].upper()
    # the partitions hold the same rows, with the logit as well
    import pyarrow.parquet as pq

    parts = pq.read_table(tmp_path / "ray.parquet").to_pylist()
    assert sorted(r["path"] for r in parts) == sorted(r["path"] for r in ref)
    # a CSV from the same run agrees with the local CSV (7 significant digits there)
    csv_out = tmp_path / "ray-csv.csv"
    ray_scan([scan_folder], artifact, out=csv_out, batch_size=4, progress=False, provenance=PROV)
    local_csv = tmp_path / "local.csv"
    assert main(["scan", str(scan_folder), "--model", str(artifact), "--out", str(local_csv), "--no-progress"]) == 0
    a, b = csv_out.read_text().splitlines(), local_csv.read_text().splitlines()
    assert a[0] == b[0] and len(a) == len(b)
    for la, lb in zip(a[1:], b[1:]):
        fa, fb = la.split(","), lb.split(",")
        assert fa[0] == fb[0] and fa[2:] == fb[2:] or abs(float(fa[1]) - float(fb[1])) <= 1e-6, (la, lb)


def test_list_file_uris_and_missing_entries(ray_local, artifact, scan_folder, photo_dir, tmp_path):
    photos = sorted(photo_dir.iterdir())
    listing = tmp_path / "inputs.txt"
    uri_dir = "file://" + str(scan_folder / "sub")
    listing.write_text("# inputs\n" + f"{photos[0]}\n\n{tmp_path / 'missing.jpg'}\n{uri_dir}\n{photos[0]}\n",
                       encoding="utf-8")
    out = tmp_path / "ray.jsonl"
    s = ray_scan([f"@{listing}"], artifact, out=out, batch_size=2, progress=False, provenance=PROV)
    rows = read_jsonl(out)
    sub = sorted(p for p in (scan_folder / "sub").iterdir())
    assert [r["path"] for r in rows] == [str(photos[0]), str(tmp_path / "missing.jpg")] + ["file://" + str(p) for p in sub]
    assert rows[1]["error"] == "file not found" and rows[1]["p_synthetic"] is None
    assert s.files == len(rows) == 2 + len(sub)
    ref = local_rows([photos[0], *sub], artifact, tmp_path / "local.jsonl")
    del rows[1]
    assert_same_rows(rows, ref, key=lambda p: p.removeprefix("file://"))
    # the text file in sub/ fails with the local scan's reason even when read as bytes from a URI
    assert any(r["error"] for r in rows)


def test_parquet_dataset_rows_match_the_detector_on_its_images(ray_local, artifact, synthclic_dir, tmp_path):
    from sid_edge.runtime.detector import Detector
    from sid_edge.tools.datasets import read_labelled_images

    items = read_labelled_images(synthclic_dir, split="test") + read_labelled_images(synthclic_dir, split="validation")[:10]
    files = sorted({str(it.key).rsplit("#", 1)[0] for it in items})
    out = tmp_path / "ray.jsonl"
    s = ray_scan([synthclic_dir], artifact, out=out, batch_size=5, progress=False, provenance=PROV)
    rows = {r["path"]: r for r in read_jsonl(out)}
    every = read_labelled_images(synthclic_dir)
    assert s.files == len(rows) == len(every) and set(rows) == {it.key for it in every}
    assert all(k.rsplit("#", 1)[0] in rows_file for k in rows for rows_file in [set(files) | {str(p) for p in synthclic_dir.rglob("*.parquet")}])
    det = Detector.load(artifact)
    preds = det.predict([it.image for it in items], batch_size=4)
    for it, p in zip(items, preds):
        r = rows[it.key]
        assert r["error"] == "" and abs(r["p_synthetic"] - p.p_synthetic) <= TOL and r["prediction"] == p.prediction


def _ledger(name: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return ray.get_actor(name)
        except ValueError:
            time.sleep(0.05)
    raise AssertionError(f"ledger {name} never appeared")


def test_killing_an_actor_mid_run_loses_and_duplicates_nothing(ray_local, artifact, many_folder, tmp_path):
    # 164 inputs in batches of 2: the actor is killed (SIGKILL, a real process death) after its first batches.
    many = many_folder
    out = tmp_path / "ray.jsonl"
    result: dict = {}
    name = "sid-edge-ledger-kill-test"
    t = threading.Thread(target=lambda: result.update(s=ray_scan([many], artifact, out=out, batch_size=2,
                                                                 progress=False, ledger_name=name, provenance=PROV)))
    t.start()
    ledger = _ledger(name)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and t.is_alive():
        snap = ray.get(ledger.snapshot.remote())
        if snap["actors"] and snap["rows_scored"] >= 4:
            killed = snap["actors"][0]["pid"]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    t.join(timeout=300)
    assert killed is not None, "the run ended before an actor could be killed"
    s = result["s"]
    assert s.actors_started >= 2 and s.actor_restarts >= 1  # Ray restarted the killed actor
    rows = read_jsonl(out)
    ref = local_rows([many], artifact, tmp_path / "local.jsonl")
    assert_same_rows(rows, ref)  # every input exactly once, same values
    assert len({r["path"] for r in rows}) == len(rows) == len(ref) > 150


def test_resume_after_an_interrupted_run(ray_local, artifact, many_folder, tmp_path):
    out = tmp_path / "ray.jsonl"
    cmd = [sys.executable, "-m", "sid_edge", "scan", str(many_folder), "--model", str(artifact), "--out", str(out),
           f"--ray={ray_local}", "--batch-size", "1", "--part-rows", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "ray.parquet"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)  # the driver dies mid-run
    proc.wait(timeout=30)
    assert not out.exists()
    done = len(list(parts.glob("part-*.parquet")))
    with pytest.raises(ResultsError, match="--resume"):
        ray_scan([many_folder], artifact, out=out, progress=False, provenance=PROV)
    s = ray_scan([many_folder], artifact, out=out, batch_size=3, resume=True, progress=False, provenance=PROV)
    ref = local_rows([many_folder], artifact, tmp_path / "local.jsonl")
    assert s.resumed >= done >= 2 and s.resumed + s.rows_this_run == len(ref)
    assert_same_rows(read_jsonl(out), ref)
    # resuming a finished run scores nothing and rewrites the same table
    s2 = ray_scan([many_folder], artifact, out=out, resume=True, progress=False, provenance=PROV)
    assert (s2.rows_this_run, s2.resumed) == (0, len(ref))
    # other settings are refused rather than mixed
    with pytest.raises(ResultsError, match="threshold"):
        ray_scan([many_folder], artifact, out=out, resume=True, threshold=0.9, progress=False, provenance=PROV)


@pytest.mark.parametrize("argv, code, words", [
    (["--ray", "not-an-address/"], 2, "not a Ray address"),
    (["--ray", "--out", "{tmp}/r.csv", "--all-files"], 2, "--all-files"),
    (["--ray"], 2, "--out"),
    (["--ray", "--out", "x.txt"], 2, ".csv"),
    (["--ray", "--out", "{tmp}/r.csv", "--actors", "0"], 2, "--actors"),
    (["--ray", "--out", "{tmp}/r.csv", "--model", "{tmp}/nope"], 3, "nope"),
    (["--ray", "--out", "{tmp}/r.csv", "@{tmp}/missing-list.txt"], 2, "no such list file"),
    (["--ray", "--out", "{tmp}/r.csv", "{tmp}/bad.parquet"], 2, "cannot read it as parquet"),
    (["--ray", "--out", "{tmp}/r.csv", "@{tmp}/no-newlines.txt"], 2, "no-newlines.txt:1: line longer than 8192"),
    (["--ray", "--out", "{tmp}/r.csv", "nope://bucket/x"], 2, "nope://bucket/x: cannot open this URI"),
    (["--ray", "--out", "{tmp}/r.csv", "{tmp}/nothing-here"], 2, "no such file or folder"),
])
def test_cli_errors_name_the_problem(artifact, scan_folder, tmp_path, capsys, argv, code, words):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    (tmp_path / "no-newlines.txt").write_text("a" * 100_000)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    model = [] if "--model" in argv else ["--model", str(artifact)]
    paths = [] if any(a.startswith(("@", "nope:", str(tmp_path) + "/bad", str(tmp_path) + "/nothing")) for a in argv) \
        else [str(scan_folder)]
    assert main(["scan", *paths, *model, *argv]) == code
    assert words in capsys.readouterr().err


def test_distributed_package_does_not_import_torch():
    code = ("import sys; import sid_edge.distributed.scan, sid_edge.distributed.stages, sid_edge.cli.scan_ray; "
            "import ray.data; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_actors_that_cannot_start_stop_the_run_with_a_clear_error(ray_local, artifact, scan_folder, tmp_path, capsys):
    # No TensorRT here: every actor's Detector.load refuses --backend tensorrt; the run stops, it does not hang.
    out = tmp_path / "r.csv"
    code = main(["scan", str(scan_folder), "--model", str(artifact), "--out", str(out), "--ray", "--no-progress",
                 "--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 1 and "Ray stopped the run (sid_edge.runtime.backends.BackendUnavailable: backend 'tensorrt'" in err, err
    assert "--resume" in err
    assert not out.exists()

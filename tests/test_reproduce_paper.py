"""benchmarks/reproduce_paper.py, run offline: the tiny random-weight CLIP and parquet corpora written here stand in
for ViT-L/14-336 and the hub's SynthCLIC / CNNSpot (their weights and images are not reachable from CI)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"


@pytest.fixture(scope="module")
def paper():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_the_hub_datasets():
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "hf:marco-willi/synthclic" in r.stdout and "hf:marco-willi/cnnspot-small" in r.stdout
    assert "--clip-pretrained" in r.stdout


def test_paper_table(paper):
    assert paper.PAPER_DATASETS == {"synthclic": "hf:marco-willi/synthclic",
                                    "synthbuster-plus": "hf:marco-willi/synthbuster-plus",
                                    "cnnspot": "hf:marco-willi/cnnspot-small"}
    names = list(paper.PAPER_DATASETS)
    assert set(paper.PAPER_MAP) == {(a, b) for a in names for b in names}
    assert paper.PAPER_MAP[("cnnspot", "cnnspot")] == 0.9640 and paper.PAPER_MAP[("synthclic", "synthclic")] == 0.9239
    # in-domain beats every transfer to that test corpus
    for test in names:
        assert all(paper.PAPER_MAP[(test, test)] > paper.PAPER_MAP[(train, test)] for train in names if train != test)


def test_pipeline_on_fixture_corpora(paper, tmp_path, capsys):
    from sid_edge.build.demo_data import write_synthclic_parquet

    pairs = {"train": 12, "validation": 6, "test": 6}
    sc = write_synthclic_parquet(tmp_path / "synthclic", pairs, seed=1)
    cn = write_synthclic_parquet(tmp_path / "cnnspot", pairs, seed=2, generators=("progan", "stylegan"), real_source=None)
    out = tmp_path / "paper"
    argv = ["--out", str(out), "--dataset", f"synthclic={sc}", "--dataset", f"cnnspot={cn}", "--clip-model",
            "sid-edge-tiny", "--clip-pretrained", "none", "--epochs", "3", "--device", "cpu", "--batch-size", "16",
            "--heads", "orthogonal"]  # the linear head takes the same path (and exports cost seconds each)
    assert paper.main(argv) == 0
    text = capsys.readouterr().out
    assert "mAP, orthogonal head" in text and "(0.924)" in text and "(0.521)" in text
    head = json.loads((out / "heads" / "synthclic-orthogonal" / "head.json").read_text())
    assert head["k"] == 8 and head["training"]["early_stopping_on"] == "validation split"
    assert (head["training"]["n_train"], head["training"]["n_val"]) == (24, 12)
    assert head["training"]["config"]["batch_size"] == 64 and head["training"]["config"]["label_smoothing"] == 0.1
    report = json.loads((out / "report" / "report.json").read_text())
    detectors = ["synthclic-orthogonal", "cnnspot-orthogonal"]
    assert report["detectors"] == detectors and report["datasets"] == ["synthclic", "cnnspot"]
    assert np.array(report["map_matrix"], dtype=float).shape == (2, 2)
    pairing = {r["dataset"]: r["pairing"] for r in report["results"]}
    assert pairing == {"synthclic": "shared", "cnnspot": "matched"}
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert len(rows) == 4
    for r in rows:
        i, j = detectors.index(f"{r['train']}-{r['kind']}"), ["synthclic", "cnnspot"].index(r["test"])
        assert r["map"] == pytest.approx(report["map_matrix"][i][j])
        assert r["paper_map"] == paper.PAPER_MAP[(r["train"], r["test"])]
    # a second run reuses the heads, the artifacts and the cached features: nothing is trained or computed again
    mtime = (out / "heads" / "synthclic-orthogonal" / "head.safetensors").stat().st_mtime_ns
    assert paper.main(argv) == 0
    assert (out / "heads" / "synthclic-orthogonal" / "head.safetensors").stat().st_mtime_ns == mtime
    again = json.loads((out / "report" / "report.json").read_text())
    assert all(r["computed"] == 0 for r in again["results"]) and again["map_matrix"] == report["map_matrix"]

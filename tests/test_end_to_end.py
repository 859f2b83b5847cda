"""The whole chain through the CLI, as a user runs it: train -> export -> scan, on real photographs."""

import csv
import json

from sid_edge.cli import main
from tests.conftest import CLIP_CUES_SAMPLES


def test_train_export_scan_on_real_photographs(tmp_path, capsys):
    from sid_edge.build.demo_data import write_demo_dataset, write_photo_folder

    data = write_demo_dataset(tmp_path / "train", samples=CLIP_CUES_SAMPLES, crops_per_photo=2, n_rendered=12)
    photos = write_photo_folder(tmp_path / "photos")
    backbone = ["--clip-model", "sid-edge-tiny", "--clip-pretrained", "none"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "head"), *backbone]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_train"] > report["n_val"] > 0
    assert main(["export", "--head", str(tmp_path / "head"), "--out", str(tmp_path / "det"), *backbone,
                 "--parity-images", *map(str, sorted(photos.iterdir())[:3])]) == 0
    manifest = json.loads((tmp_path / "det" / "manifest.json").read_text())
    assert manifest["models"]["fp32"]["fidelity"]["pytorch_parity"]["inputs"] == 5
    assert main(["scan", str(photos), "--model", str(tmp_path / "det"), "--out", str(tmp_path / "r.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv", encoding="utf-8")))
    assert len(rows) == 10 and all(r["error"] == "" for r in rows)
    assert all(0.0 <= float(r["p_synthetic"]) <= 1.0 for r in rows)

"""tools/demo.py end to end on a tiny configuration: every stage runs, the report is complete, reruns reuse."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import demo  # noqa: E402


def _demo(tmp_path, *extra):
    cmd = [sys.executable, "tools/demo.py", "--raw", str(tmp_path / "raw"), "--data", str(tmp_path / "shards"),
           "--runs", str(tmp_path / "runs"), "--clips-per-class", "2", "--val-per-class", "1", "--frame-size",
           "48x36", "--size", "32", "--segments", "2", "--epochs", "1", "--lr-steps", "1", "--batch-size", "6",
           "--test-clips", "1", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_demo_end_to_end_and_rerun_reuses(tmp_path):
    p = _demo(tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((tmp_path / "runs" / "report.json").read_text())
    assert set(rep["results"]) == {"action", "none"}
    for name, r in rep["results"].items():
        assert r["train"]["val_top1"] is not None and 0.0 <= r["train"]["val_top1"] <= 100.0
        assert r["test"]["clips"] == 9  # 9 classes x 1 val clip, each scored once
        assert set(r["test"]["per_class"]) == {str(rep["classes"].index(n)) for n in (
            "Swiping Left", "Swiping Right", "Swiping Down", "Swiping Up", "Turning Hand Clockwise",
            "Turning Hand Counterclockwise", "Zooming In With Full Hand", "Zooming Out With Full Hand", "Stop Sign")}
        assert len(r["pairs"]) == 4
        assert r["train"]["clips_per_s"] > 0 and 0.0 <= r["train"]["data_wait"] <= 1.0
        cfg = json.loads((tmp_path / "runs" / name / "config.json").read_text())
        assert cfg["temporal"] == name and cfg["arch"] == "resnet18" and cfg["num_segments"] == 2
    assert (tmp_path / "runs" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pr = rep["predict"]  # train.py predict on the generated long video: 9 gestures x 2, scored windows
    assert pr["gestures"] == 18 and pr["windows"] == pr["scored_windows"] + pr["transition_windows"] > 0
    assert 0.0 <= pr["window_top1"] <= 100.0 and rep["seconds"]["predict"] > 0
    for name in ("timeline.png", "annotated.mp4", "predictions.jsonl", "truth.json"):
        assert (tmp_path / "runs" / "predict" / name).stat().st_size > 0
    assert "val top-1 (1 clip)" in p.stdout and "left / right" in p.stdout
    first = rep["seconds"]
    assert first["train_action"] > 0 and first["train_none"] > 0

    p2 = _demo(tmp_path)  # everything exists: nothing is retrained
    assert p2.returncode == 0, p2.stderr[-3000:]
    rep2 = json.loads((tmp_path / "runs" / "report.json").read_text())
    assert rep2["reused"] == ["train_action", "train_none"]  # their times are the first run's
    assert rep2["seconds"]["train_action"] == pytest.approx(first["train_action"])
    assert rep2["total_seconds"] < rep["total_seconds"]
    assert "trained already" in p2.stderr and "converted already" in p2.stderr
    # the reused run's results are read back from its metrics, not retrained (that two trainings with one seed
    # give the same numbers step by step is tests/test_learning.py's determinism test)
    assert rep2["results"]["action"]["train"]["val_top1"] == rep["results"]["action"]["train"]["val_top1"]

    p3 = _demo(tmp_path, "--epochs", "2", "--no-baseline")  # other arguments: that run is redone, not reused
    assert p3.returncode == 0, p3.stderr[-3000:]
    rep3 = json.loads((tmp_path / "runs" / "report.json").read_text())
    assert set(rep3["results"]) == {"action"} and rep3["reused"] == []
    assert [e["epoch"] for e in rep3["results"]["action"]["train"]["epochs"]] == [1, 2]


def test_pair_accuracy_and_failed_stage_message(tmp_path):
    classes = ["Swiping Left", "Swiping Right", "Swiping Down", "Swiping Up", "Stop Sign"]
    per = {"0": 100.0, "1": 50.0, "2": 0.0, "3": 100.0, "4": 80.0}
    assert demo.pair_accuracy(per, classes) == {"left / right": 75.0, "down / up": 50.0}
    with pytest.raises(demo.DemoError, match=r"(?s)converting failed \(exit 1\); log: .*convert.log.*RAW is not a directory"):
        demo._run([sys.executable, "tools/convert_dataset.py", "jester", "--raw", str(tmp_path / "nope"), "--out",
                   str(tmp_path / "o")], tmp_path / "convert.log", "converting")

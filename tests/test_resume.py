"""Exact resume on the same number of ranks: a run killed at a fixed step (SIGKILL, tests/trainhook.py) and
resumed with ``--resume`` logs the same loss and lr at every step, and ends with the same weights, as the
uninterrupted run -- 1 process and 2 gloo ranks (torchrun on localhost).

Tiny: ResNet-18 ACTION, 2 segments of 32 px, dropout 0.5 and flips on (their RNG streams must be restored),
global batch 4 over 24 train clips (6 steps per epoch), 2 epochs with the lr step between them, a checkpoint
every 2 steps, every step logged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEPS, EPOCHS = 6, 2
ARGS = ["--dataset", "jester", "--device", "cpu", "--arch", "resnet18", "--num-segments", "2", "--size", "32",
        "--epochs", str(EPOCHS), "--lr-steps", "1", "--workers", "0", "--log-interval", "1", "--ceiling-steps", "0",
        "--eval-every", "0", "--batch-size", "4", "--ckpt-every", "2", "--dropout", "0.5", "--flip"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from rawtrees import jester_shards

    base = tmp_path_factory.mktemp("resume-data")
    return jester_shards(base, n_train=24, n_val=2, n_test=1, frames=(4, 6), size=(40, 32), seed=7)


def _cmd(script: str, data, run, nproc: int, *extra) -> list[str]:
    args = ["train", "--data", str(data), "--run-dir", str(run), *ARGS, *extra]
    if nproc == 1:
        return [sys.executable, script, *args]
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", script, *args]


def _steps(run: Path) -> dict[int, tuple[float, float]]:
    """global step -> (loss, lr) of the last record of that step (a resumed segment re-logs the steps after the
    checkpoint it starts from)."""
    out = {}
    for x in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(x)
        if r["kind"] == "train":
            out[r["step"]] = (r["loss"], r["lr"])
    return out


@pytest.mark.parametrize("world,kill_at", [(1, 4), (2, 10)], ids=["1-rank-epoch0", "2-ranks-epoch1"])
def test_killed_then_resumed_run_equals_uninterrupted_step_by_step(shards, tmp_path, world, kill_at):
    ref = tmp_path / "ref"
    r = subprocess.run(_cmd(str(ROOT / "train.py"), shards, ref, world), capture_output=True, text=True, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    want = _steps(ref)
    assert sorted(want) == list(range(1, EPOCHS * STEPS + 1))
    assert [want[s][1] for s in sorted(want)] == [0.01] * STEPS + [0.001] * STEPS  # the schedule, per step

    run = tmp_path / "killed"
    r = subprocess.run(_cmd(str(ROOT / "tests" / "trainhook.py"), shards, run, world),
                       capture_output=True, text=True, env={**ENV, "TRAIN_KILL_AT_STEP": str(kill_at)}, timeout=600)
    assert r.returncode != 0, "the run was not killed"
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    last_ckpt = (kill_at - 1) // 2 * 2  # steps 1..kill_at-1 trained, a checkpoint every 2
    assert (ck["global_step"], ck["world"]) == (last_ckpt, world)
    assert (ck["epoch"], ck["step_in_epoch"]) == divmod(last_ckpt, STEPS)
    before = _steps(run)
    assert sorted(before) == list(range(1, kill_at)) and all(before[s] == want[s] for s in before)

    r = subprocess.run(_cmd(str(ROOT / "train.py"), shards, run, world, "--resume"), capture_output=True, text=True,
                       env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at epoch {ck['epoch']} step {ck['step_in_epoch']} (global step {last_ckpt})" in r.stderr
    got = _steps(run)
    assert sorted(got) == sorted(want)
    for s in sorted(want):  # every step's loss and lr, bit for bit
        assert got[s] == want[s], f"step {s} after a kill at step {kill_at} and --resume: {got[s]} != {want[s]}"
    a = torch.load(ref / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert (b["epoch"], b["step_in_epoch"], b["global_step"]) == (EPOCHS, 0, EPOCHS * STEPS)
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    lrs = [[g["lr"] for g in ck["optimizer"]["param_groups"]] for ck in (a, b)]
    assert lrs[0] == lrs[1] and lrs[0][0] == 0.001  # every group's lr (x1, x2 biases, x5/x10 new_fc)

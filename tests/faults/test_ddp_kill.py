"""kill -9 of one DDP rank (torchrun, 2 CPU/gloo processes): the job exits non-zero within the timeout with a
message naming the rank, and ``--resume`` with the same world size completes."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
TIMEOUT = 30  # --dist-timeout


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from rawtrees import jester_shards

    base = tmp_path_factory.mktemp("ddp-kill")
    return jester_shards(base, n_train=24, n_val=3, n_test=1, frames=(6, 10), size=(80, 64), seed=3)


def _ranks(launcher: int) -> dict[int, int]:
    """{RANK: pid} of the training processes under ``launcher`` (read from /proc/PID/environ)."""
    out: dict[int, int] = {}
    todo = [launcher]
    while todo:
        pid = todo.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            todo.append(k)
            try:
                env = Path(f"/proc/{k}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for kv in env:
                if kv.startswith(b"RANK="):
                    out[int(kv[5:])] = k
    return out


def test_kill9_one_rank_then_resume(shards, tmp_path, full, record):
    if not full:
        pytest.skip("two torchrun runs (~20 s): with --run-all-faults (tests/test_train.py covers DDP and resume)")
    run = tmp_path / "run"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), "train", "--dataset", "jester",
           "--data", str(shards), "--run-dir", str(run), "--device", "cpu", "--arch", "resnet18",
           "--num-segments", "4", "--size", "64", "--epochs", "2", "--workers", "0", "--batch-size", "4",
           "--log-interval", "2", "--ceiling-steps", "0", "--ckpt-every", "2", "--dist-timeout", str(TIMEOUT)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if (run / "last.pt").exists():
                try:
                    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001 - being replaced right now
                    ck = None
                if ck and ck["epoch"] == 0 and ck["step_in_epoch"] >= 2:
                    ranks = _ranks(p.pid)
                    assert set(ranks) == {0, 1}, ranks
                    os.kill(ranks[1], signal.SIGKILL)
                    killed = (time.time(), ck["global_step"])
                    break
            time.sleep(0.05)
        assert killed is not None, "the run finished before rank 1 could be killed"
        out, err = p.communicate(timeout=TIMEOUT + 60)
        took = time.time() - killed[0]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode != 0
    assert took < TIMEOUT + 30, took
    text = out + err
    # torchrun's failure summary: "rank       : 1 (local_rank: 1)" ... "exitcode   : -9 (pid: ...)"
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", text), text[-3000:]
    assert re.search(r"exitcode\s*:\s*-9", text) or "SIGKILL" in text, text[-3000:]
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # a complete checkpoint survived
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    final = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 2 and final["global_step"] > ck["global_step"]
    record("kill -9 of DDP rank 1 mid-epoch (torchrun, 2 gloo ranks), then --resume", 1,
           f"job exited {p.returncode} in {took:.1f}s (timeout {TIMEOUT}s) naming rank 1 (exitcode -9); "
           f"last.pt at step {ck['global_step']} loadable; --resume finished both epochs", area="train")

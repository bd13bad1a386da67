"""Never lose a run (issue 24): owned run directories, preemption checkpoints, clean metrics across kills.

Fast subset (default suite): the lock (a live holder, a stale one on this host and on another host, a
concurrent ``train`` process), a fresh run into a used directory and ``--overwrite``, stale temp files, the
metrics/TensorBoard rewrite on resume, a second signal. With ``--run-all-faults``: SIGTERM / SIGINT / SIGUSR1 at a
random step of a single-process run and SIGTERM (to torchrun) / SIGUSR1 (to both workers) of a 2-rank gloo run,
each resumed and compared step by step with an uninterrupted run (while the 2-rank run holds the lock, a second
run is refused); kill -9 + resume leaves each step once in metrics.jsonl and TensorBoard.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer import rundir
from trainer.errors import TrainingError
from trainer.metrics import MetricsLog, read_records
from trainer.preempt import PREEMPTED

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
TINY = ["--dataset", "jester", "--device", "cpu", "--arch", "resnet18", "--num-segments", "4", "--size", "64",
        "--epochs", "2", "--lr-steps", "1", "--workers", "0", "--ceiling-steps", "0", "--dropout", "0.5"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from rawtrees import jester_shards

    base = tmp_path_factory.mktemp("runs")
    return jester_shards(base, n_train=8, n_val=2, n_test=1, frames=(6, 8), size=(80, 64), seed=5)


def _cmd(data, run, *extra, nproc=1):
    args = ["train", "--data", str(data), "--run-dir", str(run), *TINY, *extra]
    if nproc == 1:
        return [sys.executable, str(ROOT / "train.py"), *args]
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "train.py"), *args]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_records(run / "metrics.jsonl") if r["kind"] == "train"]


def _steps_once(run: Path) -> None:
    """Each train/epoch step once in metrics.jsonl and in TensorBoard (as TensorBoard reads it: purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recs = read_records(run / "metrics.jsonl")
    for kind in ("train", "epoch"):
        steps = [r["step"] for r in recs if r["kind"] == kind]
        assert len(steps) == len(set(steps)), (kind, steps)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tb = [e.step for e in acc.Scalars("train/loss")]
    assert tb == sorted(set(tb)) == [s for s, _ in _losses(run)], tb


# ------------------------------------------------------------------------------------------------ fast subset
def test_lock_live_stale_and_other_host(tmp_path, record):
    run = tmp_path / "r"
    run.mkdir()
    held = rundir.claim(run, resume=False, overwrite=False)
    with pytest.raises(TrainingError, match=rf"another run holds this directory \({socket.gethostname()} pid {os.getpid()}"):
        rundir.claim(run, resume=False, overwrite=False)
    held.release()
    assert not (run / ".lock").exists()
    cases = {"dead pid on this host": {"host": socket.gethostname(), "pid": _dead_pid(), "started": "x"},
             "other host, heartbeat 10 min old": {"host": "node-gone", "pid": 1, "started": "x"}}
    for why, holder in cases.items():
        (run / ".lock").write_text(json.dumps(holder))
        if holder["host"] == "node-gone":
            old = time.time() - 600
            os.utime(run / ".lock", (old, old))
        lock = rundir.claim(run, resume=False, overwrite=False)  # taken over
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid(), why
        lock.release()
    (run / ".lock").write_text(json.dumps({"host": "node-alive", "pid": 1, "started": "x"}))  # fresh heartbeat
    with pytest.raises(TrainingError, match="node-alive pid 1"):
        rundir.claim(run, resume=False, overwrite=False)
    record("run-dir lock: held by a live process, left by a dead pid (same host), by a silent other host, "
           "fresh from another host", 4, "live holders refused naming host and pid; dead and silent ones taken "
           "over with a warning", area="train")


def test_second_process_and_used_directory_stop_before_work(shards, tmp_path, record):
    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from trainer import rundir; rundir.claim(Path(sys.argv[1]), resume=False, "
                               "overwrite=False); print('locked', flush=True); time.sleep(120)", str(run)],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run(_cmd(shards, run), capture_output=True, text=True, env=ENV, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 3 and f"pid {holder.pid}" in r.stderr and "another run holds" in r.stderr, r.stderr
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written

    (run / "last.pt").write_bytes(b"earlier run")  # the holder is dead now: its lock is taken over
    (run / "config.json").write_text("{}")
    r = subprocess.run(_cmd(shards, run), capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 3 and "--resume" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) < 300 and (run / "last.pt").read_bytes() == b"earlier run"
    assert not (run / ".lock").exists()  # released by the refused run
    r = subprocess.run(_cmd(shards, run, "--overwrite", "--epochs", "1", "--eval-every", "0",
                            "--max-steps-per-epoch", "1", "--batch-size", "2"),
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.replaced-")]
    assert len(aside) == 1 and (aside[0] / "last.pt").read_bytes() == b"earlier run"
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 1
    record("a second `train` on a locked run dir; a fresh `train` into a used run dir; --overwrite", 3,
           "refused in one line (holder's host+pid / --resume, --overwrite or another --run-dir), nothing "
           "written; --overwrite moved the earlier run to RUN.replaced-<time> intact", area="train")


def test_stale_temp_files_removed_only_ours(tmp_path, record):
    from common.files import temp_name

    run = tmp_path / "r"
    (run / "tb").mkdir(parents=True)
    mine = [run / f".last.pt.tmp-{_dead_pid()}", run / "tb" / ".x.tmp-12345", run / ".metrics.jsonl.tmp-7"]
    keep = [run / "last.pt.tmp", run / "notes.tmp-1", run / ".hidden", run / "tmp-3", run / ".a.tmp-3x"]
    for p in mine + keep:
        p.write_bytes(b"x" * 100)
    (run / "config.json").write_text("{}")
    assert temp_name(run / "last.pt").name == f".last.pt.tmp-{os.getpid()}"
    rundir.claim(run, resume=True, overwrite=False).release()
    assert not any(p.exists() for p in mine) and all(p.exists() for p in keep)
    record("temporary files of killed writes in the run dir (checkpoint, metrics, tb/)", len(mine) + len(keep),
           f"{len(mine)} of the project's temp names removed at start (with a line); {len(keep)} look-alikes kept",
           area="train")


def test_metrics_and_tensorboard_superseded_on_resume(tmp_path, record):
    run = tmp_path / "r"
    run.mkdir()
    m = MetricsLog(run, True)
    for s in range(1, 7):
        m.write({"kind": "train", "loss": float(s)}, s)
    m.write({"kind": "epoch", "train_loss": 1.0}, 4)
    m.write({"kind": "val", "top1": 50.0}, 0)
    m.close()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 7, "lo')  # a kill in mid-append
    m = MetricsLog(run, True, resume_step=4)  # the checkpoint was at step 4
    for s in range(5, 9):
        m.write({"kind": "train", "loss": 10.0 + s}, s)
    m.close()
    recs = read_records(run / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in recs] == [("train", 1), ("train", 2), ("train", 3), ("train", 4),
                                                      ("epoch", 4), ("val", 0), ("resume", 4), ("train", 5),
                                                      ("train", 6), ("train", 7), ("train", 8)]
    assert recs[6]["dropped"] == 3  # steps 5, 6 and the torn line
    _steps_once(run)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 15, 16, 17, 18]
    record("metrics.jsonl / TensorBoard past the checkpoint (and a torn last line) on --resume", 1,
           "records past the checkpoint dropped (a `resume` record counts them), TensorBoard purged: each step "
           "once", area="train")


def test_second_signal_exits_at_once(tmp_path, record):
    prog = ("import time; from trainer.preempt import StopRequest\n"
            "with StopRequest() as s:\n    print('ready', flush=True)\n"
            "    while True:\n        time.sleep(0.05)\n")
    p = subprocess.Popen([sys.executable, "-c", prog], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    p.send_signal(signal.SIGTERM)  # within the repeat window (torchrun's forward): the same request
    time.sleep(3.0)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 128 + signal.SIGINT
    err = p.stderr.read()
    assert "stopping after this step" in err and "exiting now" in err, err
    record("a second signal while the stop checkpoint is pending", 1,
           f"exits at once with 128+signal ({128 + signal.SIGINT}); a repeat within 2 s (torchrun's forward) "
           "is the same request", area="train")


# ------------------------------------------------------------------------------------------------ full matrix
def _signal_at(cmd: list[str], run: Path, step: int, sig: int, *, to=None) -> subprocess.CompletedProcess:
    """Start ``cmd``; once metrics.jsonl has reached ``step``, send ``sig`` (to ``to(pid)``'s pids, or the
    launched process); the finished process."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and p.poll() is None:
            if any(s >= step for s, _ in _losses(run)):
                for pid in (to(p.pid) if to else [p.pid]):
                    os.kill(pid, sig)
                break
            time.sleep(0.02)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """Uninterrupted runs: {world: run dir} (made on first use)."""
    made: dict[int, Path] = {}

    def get(world: int) -> Path:
        if world not in made:
            run = tmp_path_factory.mktemp("ref") / f"w{world}"
            r = subprocess.run(_cmd(shards, run, *_args(world), nproc=world), capture_output=True, text=True,
                               env=ENV, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
            made[world] = run
        return made[world]
    return get


def _args(world: int) -> list[str]:
    # 8 clips, global batch 2: 4 steps an epoch; 2 ranks agree at log boundaries (every 2 steps)
    return ["--batch-size", "2", "--log-interval", "1" if world == 1 else "2"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGUSR1"])
def test_signal_then_resume_equals_uninterrupted(shards, reference, tmp_path, full, record, sig):
    if not full:
        pytest.skip("three runs per signal (~1 min each on 2 cores): with --run-all-faults")
    ref = reference(1)
    step = random.Random(f"{sig}-1").randint(1, 7)
    run = tmp_path / "run"
    r = _signal_at(_cmd(shards, run, *_args(1)), run, step, getattr(signal, sig))
    assert r.returncode == PREEMPTED, r.stderr[-3000:]
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ck["global_step"] >= step and f"preempted ({sig}) at global step {ck['global_step']}" in r.stderr
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no lock, no temp file
    r2 = subprocess.run(_cmd(shards, run, *_args(1), "--resume"), capture_output=True, text=True, env=ENV, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert _losses(run) == _losses(ref) and len(_losses(ref)) == 8
    _steps_once(run)
    record(f"{sig} at a random step (single process), then --resume", 1,
           f"signal at step {step}: checkpoint at step {ck['global_step']}, exit {PREEMPTED}; the resumed run's 8 "
           f"per-step losses equal the uninterrupted run's; each step once in metrics and TensorBoard", area="train")


def _workers(launcher: int) -> list[int]:
    from test_ddp_kill import _ranks  # the DDP kill test beside this one

    deadline = time.time() + 30
    while time.time() < deadline:
        ranks = _ranks(launcher)
        if len(ranks) == 2:
            return list(ranks.values())
        time.sleep(0.1)
    raise AssertionError("the two ranks were not found")


@pytest.mark.parametrize("how", ["SIGTERM to torchrun", "SIGUSR1 to both ranks"])
def test_two_ranks_signal_then_resume_equals_uninterrupted(shards, reference, tmp_path, full, record, how):
    if not full:
        pytest.skip("three torchrun runs (~2 min on 2 cores): with --run-all-faults")
    ref = reference(2)
    step = random.Random(how).randint(1, 5)
    run = tmp_path / "run"
    cmd = _cmd(shards, run, *_args(2), nproc=2)
    holder: dict = {}

    def target(launcher: int) -> list[int]:
        # while the 2-rank run holds the lock, another process's claim on the directory is refused (light: no
        # torch import, so the run is still going); the CLI's refusal is in the fast test above
        holder["second"] = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from trainer "
                                           "import rundir; rundir.claim(Path(sys.argv[1]), resume=True, "
                                           "overwrite=False)", str(run)], capture_output=True, text=True, env=ENV,
                                          timeout=60)
        return [launcher] if how.startswith("SIGTERM") else _workers(launcher)
    sig = signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGUSR1
    r = _signal_at(cmd, run, step, sig, to=target)
    second = holder["second"]
    assert second.returncode == 1 and "another run holds this directory" in second.stderr, second.stderr[-2000:]
    assert r.returncode != 0
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ck["world"] == 2 and ck["global_step"] >= step and ck["global_step"] % 2 == 0  # agreed at a boundary
    assert "preempted" in r.stderr, r.stderr[-3000:]
    r2 = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert _losses(run) == _losses(ref) and len(_losses(ref)) == 4
    _steps_once(run)
    record(f"{how} at a random step (torchrun, 2 gloo ranks), then --resume", 1,
           f"signal at step {step}: both ranks stopped at step {ck['global_step']} (a log boundary) with one "
           f"checkpoint; another process claiming the locked dir was refused; the resumed losses equal the uninterrupted "
           f"run's", area="train")


def test_kill9_then_resume_each_step_once(shards, reference, tmp_path, full, record):
    if not full:
        pytest.skip("two runs (~1 min on 2 cores): with --run-all-faults")
    ref = reference(1)
    run = tmp_path / "run"
    r = _signal_at(_cmd(shards, run, *_args(1), "--ckpt-every", "2"), run, 3, signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL
    assert (run / ".lock").exists()  # left by the killed run: taken over below
    r2 = subprocess.run(_cmd(shards, run, *_args(1), "--ckpt-every", "2", "--resume"), capture_output=True,
                        text=True, env=ENV, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "took over the lock" in r2.stderr
    recs = read_records(run / "metrics.jsonl")
    resumed = [r for r in recs if r["kind"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["step"] == 2 and resumed[0]["dropped"] >= 1
    assert _losses(run) == _losses(ref)
    _steps_once(run)
    record("kill -9 after a step checkpoint, then --resume: metrics.jsonl and TensorBoard", 1,
           f"{resumed[0]['dropped']} record(s) past the step-2 checkpoint dropped; each step once; losses equal the "
           "uninterrupted run's; the dead run's lock taken over", area="train")

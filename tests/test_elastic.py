"""Elastic resume and multi-node (issue 15 items 2-3), with real torchrun/gloo processes on CPU.

* A 2-rank run killed mid-epoch resumes on 1 rank and on 3 ranks: both finish, and every global step trains
  the same clips as the uninterrupted 2-rank run (``--record-clips``), which are the epoch order's
  ``order[s*B:(s+1)*B]``.
* Two torchrun "nodes" on localhost (c10d rendezvous, one rank each, each with its own shard cache) reading the
  shards from an S3 server on 127.0.0.1 (moto) give the same weights, losses and clips as one node with 2 ranks
  reading them from local disk.

Tiny: ResNet-18 ACTION, 2 segments of 32 px, global batch 6 over 36 train clips (6 steps per epoch), 2 epochs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
BATCH, EPOCHS = 6, 2
ARGS = ["--dataset", "jester", "--device", "cpu", "--arch", "resnet18", "--num-segments", "2", "--size", "32",
        "--epochs", str(EPOCHS), "--lr-steps", "1", "--workers", "0", "--log-interval", "2", "--ceiling-steps", "0",
        "--eval-every", "0", "--batch-size", str(BATCH), "--ckpt-every", "2", "--record-clips"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from rawtrees import jester_shards

    base = tmp_path_factory.mktemp("elastic-data")
    return jester_shards(base, n_train=36, n_val=3, n_test=1, frames=(4, 6), size=(40, 32), seed=5)


def _cmd(data, run, nproc: int, *extra) -> list[str]:
    args = ["train", "--data", str(data), "--run-dir", str(run), *ARGS, *extra]
    if nproc == 1:
        return [sys.executable, str(ROOT / "train.py"), *args]
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "train.py"), *args]


def _run(cmd, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _steps(run: Path) -> dict[int, list[list[int]]]:
    """global step -> the per-rank clip lists of the latest run segment that trained it."""
    recs = [json.loads(x) for f in sorted(run.glob("clips-rank*.jsonl")) for x in f.read_text().splitlines()]
    out: dict[int, tuple[int, list]] = {}
    for r in recs:
        seg, lists = out.get(r["step"], (-1, []))
        if r["resumed_at"] > seg:
            out[r["step"]] = (r["resumed_at"], [r["clips"]])
        elif r["resumed_at"] == seg:
            lists.append(r["clips"])
    return {s: lists for s, (_, lists) in sorted(out.items())}


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun starts each worker in a session of its own, so a
    kill of the launcher's process group would leave the ranks training)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            todo += [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _sets(run: Path) -> dict[int, frozenset]:
    out = {}
    for s, lists in _steps(run).items():
        flat = [c for lst in lists for c in lst]
        assert len(flat) == len(set(flat)) == BATCH, (run.name, s, lists)  # B clips, none twice
        out[s] = frozenset(flat)
    return out


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("elastic") / "ref"
    _run(_cmd(shards, run, 2))
    return run


def test_two_ranks_train_the_epoch_order_in_global_batches(shards, reference):
    from pipelines.plan import partition
    from pipelines.shards.storage import read_manifest

    n = read_manifest(shards)[2]["splits"]["train"]["clips"]
    sets = _sets(reference)
    per_epoch = n // BATCH
    assert sorted(sets) == list(range(1, EPOCHS * per_epoch + 1))
    for step, got in sets.items():
        epoch, s = divmod(step - 1, per_epoch)
        order = partition.epoch_order(n, shuffle=True, seed=0, epoch=epoch)
        assert got == frozenset(order[s * BATCH:(s + 1) * BATCH].tolist()), step
    assert {len(lst) for lists in _steps(reference).values() for lst in lists} == {BATCH // 2}


def _train_records(run: Path) -> dict[int, dict]:
    """global step -> the last ``train`` record logged at it (a resumed segment re-logs from its checkpoint)."""
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"}


def test_killed_two_rank_run_resumes_on_one_and_on_three_ranks(shards, reference, tmp_path):
    run = tmp_path / "killed"
    # every rank SIGKILLs itself at the start of step 4 (tests/trainhook.py): steps 1-3 trained, last.pt at step 2
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", str(ROOT / "tests" / "trainhook.py"),
           *_cmd(shards, run, 1)[2:]]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "TRAIN_KILL_AT_STEP": "4"}, timeout=300)
    assert r.returncode != 0, "the run was not killed"
    killed_at = 2
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck["world"]) == (0, killed_at, killed_at, 2)
    want = _sets(reference)
    ref = _train_records(reference)
    per_epoch = len(want) // EPOCHS
    for world in (1, 3):
        dst = tmp_path / f"on{world}"
        shutil.copytree(run, dst)
        r = _run(_cmd(shards, dst, world, "--resume"))
        assert "written by 2 ranks, resuming on %d" % world in r.stderr
        assert "re-seeded" in r.stderr
        final = torch.load(dst / "last.pt", map_location="cpu", weights_only=True)
        assert (final["epoch"], final["step_in_epoch"], final["global_step"], final["world"]) == \
            (EPOCHS, 0, len(want), world)
        steps = _steps(dst)
        assert {len(lists) for s, lists in steps.items() if s > killed_at} == {world}  # really trained on `world`
        assert _sets(dst) == want, f"resumed on {world} ranks at step {killed_at}: clips differ"
        # the same steps per epoch (global batch kept), the same lr at every logged step (the schedule follows
        # the epoch, not the rank count)
        epochs = [x for x in map(json.loads, (dst / "metrics.jsonl").read_text().splitlines())
                  if x["kind"] == "epoch"]
        assert [(e["epoch"], e["step"]) for e in epochs] == [(e, (e + 1) * per_epoch) for e in range(EPOCHS)]
        got = _train_records(dst)
        assert sorted(got) == sorted(ref)
        assert [got[s]["lr"] for s in sorted(got)] == [ref[s]["lr"] for s in sorted(ref)]
        assert len({ref[s]["lr"] for s in ref}) == 2  # --lr-steps 1: the step is inside the compared range
        # losses: identical up to the checkpoint (the 2-rank segment); after it the same clips with other dropout
        # streams and per-rank BatchNorm batches of 6/world: not equal step by step (measured up to 30 % apart
        # at a step), the same on average
        assert all(got[s]["loss"] == ref[s]["loss"] for s in got if s <= killed_at)
        after = [s for s in sorted(got) if s > killed_at]
        assert all(0.0 < got[s]["loss"] < float("inf") for s in after)
        mean = sum(got[s]["loss"] for s in after) / len(after)
        assert 0.5 < mean / (sum(ref[s]["loss"] for s in after) / len(after)) < 2.0, (world, mean)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_from_s3_equal_one_node_with_two_ranks(shards, reference, tmp_path, s3_server):
    """Each "node" has its own shard cache, filled from the same s3:// copy of the shards the reference read
    from local disk."""
    import pyarrow.fs as pafs

    remote = s3_server.bucket("elastic") + "/jester"
    s3, root = pafs.FileSystem.from_uri(remote)
    pafs.copy_files(str(shards), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    run = tmp_path / "nodes"
    for _attempt in range(3):  # the free port can be taken before node 0's store binds it: then on another one
        procs, outs = _two_nodes(remote, run, tmp_path, s3_server, _free_port())
        if not any(p.returncode and "address already in use" in err.lower() for p, (_, err) in zip(procs, outs,
                                                                                                     strict=True)):
            break
        shutil.rmtree(run, ignore_errors=True)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    a = torch.load(reference / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert b["world"] == 2 and b["global_step"] == a["global_step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k

    def losses(r):
        return [x["loss"] for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines()) if x["kind"] == "train"]
    assert losses(run) == losses(reference)
    assert _sets(run) == _sets(reference)
    for node in (0, 1):  # each node filled its own cache with the train split's shards
        cached = {f.name for f in (tmp_path / f"cache-node{node}").rglob("shard-*.arrow") if f.parent.name == "train"}
        assert cached and cached == {f.name for f in (shards / "train").glob("shard-*.arrow")}, node
    # eval from the run directory reads the s3:// data it was trained on, and scores as the local run does
    scores = []
    for r, data in ((run, remote), (reference, str(shards))):
        e = subprocess.run([sys.executable, str(ROOT / "train.py"), "eval", "--run-dir", str(r), "--data", data,
                            "--cache-dir", str(tmp_path / "cache-eval")], capture_output=True, text=True,
                           env={**ENV, **s3_server.env()}, timeout=300)
        assert e.returncode == 0, e.stderr[-3000:]
        res = json.loads(e.stdout.strip().splitlines()[-1])
        scores.append((res["top1"], res["top5"], res["loss"], res["clips"]))
    assert scores[0] == scores[1] and scores[0][3] > 0


def _two_nodes(remote: str, run: Path, tmp_path: Path, s3_server, port: int):
    """Two torchrun "nodes" of one rank each, rendezvous at 127.0.0.1:port; (processes, their (out, err))."""
    procs = []
    for node in (0, 1):
        cmd = [TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend",
               "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "elastic-test", "--rdzv-conf",
               f"is_host={int(node == 0)}", str(ROOT / "train.py"), "train", "--data", remote,
               "--cache-dir", str(tmp_path / f"cache-node{node}"), "--run-dir", str(run), *ARGS]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**ENV, **s3_server.env()}, start_new_session=True))
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_tree(p.pid)
                p.wait()
    return procs, outs

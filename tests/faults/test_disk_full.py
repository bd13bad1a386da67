"""Disk full (a real ENOSPC from a small tmpfs) while writing a checkpoint or shards: the previous file stays
valid, the error says "no space", and rerunning after freeing space finishes the job.

Needs root for ``mount -t tmpfs`` (CI and the dev machines run as root); elsewhere these tests are skipped
with that reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import save_atomic
from trainer.errors import TrainingError

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def tmpfs(base: Path, size: str):
    d = base / f"tmpfs-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _remount(d: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(d)], check=True)


def test_checkpoint_write_disk_full_keeps_previous(tmp_path, record):
    n = 0
    with tmpfs(tmp_path, "1m") as d:
        path = d / "last.pt"
        small = {"w": torch.arange(1000, dtype=torch.float32)}
        save_atomic(small, path)
        for big in (300_000, 600_000):  # > 1 MiB of float32 each: ENOSPC mid-write
            with pytest.raises(TrainingError, match="no space left"):
                save_atomic({"w": torch.zeros(big)}, path)
            assert torch.equal(torch.load(path, weights_only=True)["w"], small["w"])
            assert sorted(p.name for p in d.iterdir()) == ["last.pt"]  # the temp file is gone
            n += 1
    record("disk full while writing a checkpoint (tmpfs)", n,
           f"{n}/{n}: TrainingError 'no space left'; previous last.pt intact and loadable; no temp file left",
           area="train")


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    from rawtrees import make_jester

    from pipelines.ingest.convert import convert_dataset

    base = tmp_path_factory.mktemp("df-data")
    make_jester(base / "raw", n_train=8, n_val=3, n_test=1, frames=(6, 10), size=(80, 64), seed=3)
    convert_dataset("jester", base / "raw", base / "shards", workers=1, shard_mb=0.05, seed=0)
    return base


def test_training_disk_full_then_resume(small_shards, tmp_path, full, record):
    if not full:
        pytest.skip("end-to-end disk-full training runs with --run-all-faults")
    # one resnet18 checkpoint (model + momentum) is ~90 MB: 150 MB holds one, not one plus its temp copy
    with tmpfs(tmp_path, "150m") as d:
        run = d / "run"
        cmd = [sys.executable, str(ROOT / "train.py"), "train", "--dataset", "jester", "--data",
               str(small_shards / "shards"), "--run-dir", str(run), "--device", "cpu", "--arch", "resnet18",
               "--num-segments", "4", "--size", "64", "--epochs", "1", "--workers", "0", "--batch-size", "2",
               "--log-interval", "1", "--ceiling-steps", "0", "--ckpt-every", "1", "--eval-every", "0"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
        assert r.returncode == 3, r.stderr[-3000:]
        assert "no space left" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
        ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
        assert ck["global_step"] == 1 and ck["step_in_epoch"] == 1
        assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
        _remount(d, "400m")
        r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert torch.load(run / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    record("disk full during training's step checkpoint (tmpfs run dir), then free space + --resume", 1,
           "exit 3 with 'no space left'; last.pt = the previous step, loadable; --resume finishes the run",
           area="train")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_shard_write_disk_full_then_rerun(small_shards, tmp_path, record):
    raw = small_shards / "raw"
    args = [sys.executable, str(ROOT / "tools" / "convert_dataset.py"), "jester", "--raw", str(raw),
            "--shard-mb", "0.05", "--no-progress"]
    r = subprocess.run(args + ["--out", str(tmp_path / "clean")], capture_output=True, text=True, env=ENV,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    clean = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    total = sum(s["bytes"] for sp in clean["splits"].values() for s in sp["shards"])
    tries = 0
    for frac in (0.3, 0.7):
        with tmpfs(tmp_path, str(int(total * frac) // 4096 * 4096 + 4096)) as d:
            out = d / "out"
            r = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, env=ENV, timeout=300)
            assert r.returncode == 1, r.stderr[-3000:]
            assert "no space left" in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr[-3000:]
            assert not (out / "manifest.json").exists()
            finished = [p for s in ("train", "val", "test") if (out / s).is_dir() for p in (out / s).iterdir()
                        if p.name.endswith(".arrow")]
            shas = {s["path"]: s["sha256"] for sp in clean["splits"].values() for s in sp["shards"]}
            for p in finished:  # what is under a final name is complete
                assert _sha(p) == shas[f"{p.parent.name}/{p.name}"]
            _remount(d, "64m")
            r = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True, env=ENV, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
            assert json.loads((out / "manifest.json").read_text()) == clean
            assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
            tries += 1
    record("disk full while writing shards (tmpfs at 30% and 70% of the output), then free space + rerun", tries,
           f"{tries}/{tries}: exit 1 with one 'no space left' line; finished shards intact; rerun byte-identical "
           "to a clean run, no temp files", area="convert")

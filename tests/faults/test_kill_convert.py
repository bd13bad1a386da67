"""kill -9 at seeded points of a conversion, then the same command again: shards byte-identical to a clean run.

The write path is instrumented (tests/faults/killhook.py): every step's entry and return is a numbered event;
a seeded generator picks the events at which the process SIGKILLs itself (3 in the fast subset, 24 with
``--run-all-faults``). After each kill: every file under a final shard name is complete (its sha256 equals the
clean run's), no manifest describes unfinished shards, and the rerun gives the clean run's manifest and bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.shards import reader

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).with_name("killhook.py")
SEED = 10


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _env(**kw):
    return {**os.environ, "PYTHONPATH": str(ROOT), **kw}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rawtrees import make_jester

    base = tmp_path_factory.mktemp("kill-convert")
    tree = make_jester(base / "raw", n_train=8, n_val=3, n_test=2, seed=4)
    args = ["jester", "--raw", tree["root"], "--shard-mb", "0.02", "--no-progress"]
    count = base / "count"
    r = subprocess.run([sys.executable, str(HOOK), *args, "--out", str(base / "clean")], cwd=ROOT,
                       env=_env(FAULT_COUNT_FILE=str(count)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((base / "clean" / "manifest.json").read_text())
    shas = {s["path"]: s["sha256"] for sp in manifest["splits"].values() for s in sp["shards"]}
    assert len(shas) >= 4
    return {"base": base, "args": args, "events": int(count.read_text()), "manifest": manifest, "shas": shas}


def _points(n_events: int, k: int) -> list[int]:
    rng = np.random.default_rng(SEED)
    return sorted(int(x) + 1 for x in rng.choice(n_events, size=min(k, n_events), replace=False))


def _finals(out: Path) -> list[Path]:
    return sorted(p for d in ("train", "val", "test") if (out / d).is_dir() for p in (out / d).iterdir()
                  if p.name.endswith(".arrow"))


def test_kill9_at_seeded_points_then_rerun_is_byte_identical(setup, scale, record):
    n_points = scale(3, 24)
    points = _points(setup["events"], n_points)
    clean, shas, args = setup["manifest"], setup["shas"], setup["args"]
    kept_total = 0
    for k in points:
        out = setup["base"] / f"out-{k}"
        p = subprocess.run([sys.executable, str(HOOK), *args, "--out", str(out)], cwd=ROOT,
                           env=_env(FAULT_KILL_AT=str(k)), capture_output=True, text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, (k, p.returncode, p.stderr[-2000:])
        for f in _finals(out):  # every file under a final name is complete and the clean run's
            assert _sha(f) == shas[f"{f.parent.name}/{f.name}"], (k, f)
        if (out / "manifest.json").exists():  # only when killed after the manifest's rename
            assert json.loads((out / "manifest.json").read_text()) == clean, k
        before = {f: f.stat().st_mtime_ns for f in _finals(out)}
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_dataset.py"), *args, "--out", str(out)],
                           cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (k, r.stderr[-2000:])
        assert json.loads((out / "manifest.json").read_text()) == clean, k
        for rel, digest in shas.items():
            assert _sha(out / rel) == digest, (k, rel)
        kept_total += sum(1 for f, t in before.items() if f.stat().st_mtime_ns == t)
        leftovers = [f.name for d in (out, *(out / s for s in ("train", "val", "test"))) if d.is_dir()
                     for f in d.iterdir() if ".tmp-" in f.name]
        assert not leftovers, (k, leftovers)
        reader.verify(out)
    record(f"kill -9 during conversion (seeded points among {setup['events']} write-path events), then rerun",
           len(points), f"{len(points)}/{len(points)} reruns byte-identical to a clean run ({len(shas)} shards + "
           f"manifest); {kept_total} finished shards kept, not rewritten; no temp files left", area="convert")

"""kill -9 while converting SSv2 videos (decode, batch, write, hash, state, move), then the same command again:
shards and manifest byte-identical to a clean run (the video twin of test_kill_convert.py).

Fault points: the events of tests/faults/killhook.py plus the entry to and return from each video's decode
(tests/faults/killhook_video.py); a seeded generator picks 3 of them (12 with ``--run-all-faults``).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from pipelines.shards import reader

pytestmark = pytest.mark.faults

from test_kill_convert import ROOT, _env, _sha  # noqa: E402  (the frame-folder kill test beside this one)

HOOK = Path(__file__).with_name("killhook_video.py")
SEED = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from videotrees import make_sthv2_videos

    base = tmp_path_factory.mktemp("kill-convert-video")
    tree = make_sthv2_videos(base / "raw", n_train=6, n_val=2, n_test=2, frames=(6, 10), seed=4)
    args = ["sthv2", "--raw", tree["root"], "--shard-mb", "0.004", "--fps", "10", "--no-progress"]
    count = base / "count"
    r = subprocess.run([sys.executable, str(HOOK), *args, "--out", str(base / "clean")], cwd=ROOT,
                       env=_env(FAULT_COUNT_FILE=str(count)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((base / "clean" / "manifest.json").read_text())
    shas = {s["path"]: s["sha256"] for sp in manifest["splits"].values() for s in sp["shards"]}
    assert len(shas) >= 4 and "video" in manifest["options"]
    return {"base": base, "args": args, "events": int(count.read_text()), "manifest": manifest, "shas": shas}


def _finals(out: Path) -> list[Path]:
    return sorted(p for d in ("train", "val", "test") if (out / d).is_dir() for p in (out / d).iterdir()
                  if p.name.endswith(".arrow"))


def test_kill9_while_converting_videos_then_rerun_is_byte_identical(setup, scale, record):
    rng = np.random.default_rng(SEED)
    n = setup["events"]
    points = sorted(int(x) + 1 for x in rng.choice(n, size=min(scale(3, 12), n), replace=False))
    clean, shas, args = setup["manifest"], setup["shas"], setup["args"]
    for k in points:
        out = setup["base"] / f"out-{k}"
        p = subprocess.run([sys.executable, str(HOOK), *args, "--out", str(out)], cwd=ROOT,
                           env=_env(FAULT_KILL_AT=str(k)), capture_output=True, text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, (k, p.returncode, p.stderr[-2000:])
        for f in _finals(out):  # a file under a final name is complete and the clean run's
            assert _sha(f) == shas[f"{f.parent.name}/{f.name}"], (k, f)
        if (out / "manifest.json").exists():
            assert json.loads((out / "manifest.json").read_text()) == clean, k
        r = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_dataset.py"), *args, "--out", str(out),
                            "--workers", "2"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (k, r.stderr[-2000:])
        assert json.loads((out / "manifest.json").read_text()) == clean, k
        for rel, digest in shas.items():
            assert _sha(out / rel) == digest, (k, rel)
        assert not [f for d in out.rglob("*") if ".tmp-" in d.name for f in [d]], k
        reader.verify(out)
    record(f"kill -9 while converting videos (seeded points among {n} decode/write events), then rerun "
           "with --workers 2", len(points), f"{len(points)}/{len(points)} reruns byte-identical to a clean run "
           f"({len(shas)} shards + manifest); no temp files left", area="convert")

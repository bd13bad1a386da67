"""CPU cost as a number (issue 21): common.cpu counts this process's threads and its worker processes, live or
exited, once; tools/profile_loader.py reports it per backend beside clips/s."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.cpu import CpuMeter, cost, live_descendants

BURN = ("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.4:\n    pass\n"
        "print('burnt', flush=True)\nsys.stdin.read()\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live workers are read from /proc")
def test_meter_counts_a_live_worker_then_the_exited_one_once():
    m = CpuMeter()
    p = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "burnt"
        assert p.pid in live_descendants()
        alive = m.lap()  # the worker has not exited: not in RUSAGE_CHILDREN, read from /proc/<pid>/stat
        assert alive["children_s"] >= 0.35, alive
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    gone = m.lap()  # now in RUSAGE_CHILDREN: only what it did since the last lap (exit), not 0.4 s again
    assert gone["children_s"] < 0.2, gone
    assert alive["cpu_s"] == pytest.approx(alive["self_s"] + alive["children_s"])
    c = cost(alive, clips=10)
    assert c["cpu_s_per_clip"] == pytest.approx(alive["cpu_s"] / 10)
    assert c["cores_per_1k_clips_s"] == pytest.approx(1000 * c["cpu_s_per_clip"])
    assert 0 < c["workers_cpu_share"] <= 1


def test_profile_loader_reports_cpu_cost_per_backend(tmp_path):
    from click.testing import CliRunner

    from tools import profile_loader

    out = tmp_path / "r.json"
    res = CliRunner().invoke(profile_loader.main, [
        "--generate", str(tmp_path / "gen"), "--clips", "6", "--frames", "6", "--backends", "torch,torch:processes",
        "--batch-size", "2", "--batches", "3", "--warmup", "1", "--rounds", "1", "--workers", "2",
        "--num-segments", "4", "--size", "64", "--json", str(out), "--plot", str(tmp_path / "r.png")])
    assert res.exit_code == 0, res.output
    assert "cores/1k clips/s" in res.output
    rows = {r["backend"]: r for r in json.load(open(out))["results"]}
    for name, r in rows.items():
        c = r["cpu"]
        assert c["cpu_s_per_clip"] > 0 and c["cores_busy"] > 0, (name, c)
        # cores kept busy = CPU-seconds per clip x clips per second (the same window)
        assert c["cpu_s_per_clip"] * r["clips_per_s"] == pytest.approx(c["cores_busy"], rel=1e-6)
        assert c["cores_per_1k_clips_s"] == pytest.approx(1000 * c["cpu_s_per_clip"])
    # DataLoader worker processes do the decoding there: most of that backend's CPU is theirs
    assert rows["torch:processes"]["cpu"]["workers_cpu_share"] > 0.3, rows["torch:processes"]["cpu"]
    assert rows["torch"]["cpu"]["workers_cpu_share"] < 0.3  # threads: all in this process

"""CPU time of this process *and* its worker processes: how "fed without CPU bottlenecks" is stated (issue 21).

``resource.getrusage`` sees every thread of this process (``RUSAGE_SELF``) but only the children that have exited
and been waited for (``RUSAGE_CHILDREN``); DataLoader workers and DALI's parallel-source workers are alive while
they work, so their time is read from ``/proc/<pid>/stat`` (utime + stime) for every live descendant. A meter
takes differences, so a worker that exits between two readings moves from the live sum to ``RUSAGE_CHILDREN``
without being counted twice. Linux only for the live part (elsewhere: this process + reaped children).
"""
from __future__ import annotations

import os
import resource
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


def live_descendants(pid: int | None = None) -> list[int]:
    """Pids of the live descendants of ``pid`` (default: this process)."""
    todo, seen = _children(os.getpid() if pid is None else pid), []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of live process ``pid`` (all its threads), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5), counted after "(comm)"


def cpu_seconds() -> dict:
    """``{"self", "children"}``: CPU seconds of this process's threads, and of its descendants (reaped + live)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    gone = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = sum(proc_cpu_seconds(p) for p in live_descendants())
    return {"self": me.ru_utime + me.ru_stime, "children": gone.ru_utime + gone.ru_stime + live}


class CpuMeter:
    """CPU seconds (this process + workers) and wall seconds since the last :meth:`lap` (or construction)."""

    def __init__(self):
        self._cpu, self._wall = cpu_seconds(), time.perf_counter()

    def lap(self) -> dict:
        """``{"cpu_s", "self_s", "children_s", "wall_s"}`` since the previous lap; starts the next one."""
        cpu, wall = cpu_seconds(), time.perf_counter()
        d = {k: max(0.0, cpu[k] - self._cpu[k]) for k in cpu}
        out = {"cpu_s": d["self"] + d["children"], "self_s": d["self"], "children_s": d["children"],
               "wall_s": wall - self._wall}
        self._cpu, self._wall = cpu, wall
        return out


def cost(lap: dict, clips: int) -> dict:
    """The loader's CPU cost from a :meth:`CpuMeter.lap` over ``clips`` clips: CPU-seconds per clip, cores busy
    (CPU-seconds per wall second) and cores needed per 1,000 clips/s (= 1000 x CPU-seconds per clip)."""
    per_clip = lap["cpu_s"] / max(clips, 1)
    return {"cpu_s_per_clip": per_clip, "cores_busy": lap["cpu_s"] / max(lap["wall_s"], 1e-9),
            "cores_per_1k_clips_s": 1000.0 * per_clip, "workers_cpu_share": lap["children_s"] / max(lap["cpu_s"], 1e-9)}

"""The ``dali`` backend's external source: one continuous stream of batches across epochs.

:class:`Feed` is a pure function of DALI's global iteration ``k``: iteration ``k`` is batch ``at(k)`` of the
schedule that starts at ``(epoch, start)`` and then runs whole epochs ``epoch + 1, epoch + 2, ...``. It never
ends an epoch (no ``StopIteration``), so DALI keeps prefetching across the epoch boundary -- the first batches of
epoch ``e + 1`` are read and decoded while epoch ``e``'s last ones are consumed -- and the pipeline is built once
per run, not reset per epoch. Being a pure function of ``k`` (plus its ``bad`` rows), it can run in DALI's
parallel external source's worker processes (``feed="parallel"``) as well as in the pipeline's thread.

Each frame carries its clip's position tag ``(k << 20) | j`` and the row actually read (another row when
``on_bad="replace"`` replaced a bad clip), so the loader rebuilds labels and plans from the outputs alone.
"""
from __future__ import annotations

import time

import numpy as np

from pipelines.backends.base import corrupt_frame, replace_bad
from pipelines.backends.dali.graph import flatten_clips
from pipelines.plan.clip import needed_frames

TAG_BITS = 20  # clip index inside a batch: position tag = (k << TAG_BITS) | j


def check_jpeg(data, src_size=None) -> str | None:
    """Why ``data`` is not a good frame (``None`` when it is): the torch backend's strict decode
    (:func:`pipelines.decode.frames.decode_jpeg`) plus its size check against the shard's ``src_size``."""
    from pipelines.decode.frames import decode_jpeg  # noqa: PLC0415

    try:
        img = decode_jpeg(data)
    except ValueError as e:
        return str(e)
    if src_size is not None and tuple(img.shape[:2]) != tuple(src_size):
        return f"decoded size {tuple(img.shape[:2])} differs from the shard's {tuple(src_size)}"
    return None


def precheck_jpeg(data, src_size) -> str | None:
    """Cheap per-frame check before DALI sees the bytes: the one JPEG rule (:func:`pipelines.decode.jpeg.problem`)
    with the shard's size. A frame that breaks it is confirmed with the full strict decode of :func:`check_jpeg`,
    so the verdict is the torch backend's."""
    from pipelines.decode.jpeg import problem  # noqa: PLC0415

    return None if problem(data, src_size) is None else check_jpeg(data, src_size)


class Feed:
    """``feed(batch_info)`` -> the arrays of global iteration ``batch_info.iteration`` (see the module docstring).

    ``fetch(row, frame_indices)`` reads encoded frames; ``check(bytes, src_size)`` is the per-frame verdict
    (:func:`precheck_jpeg`, or :func:`check_jpeg` when strict); ``bad``: rows known bad (skipped when replacing).
    """

    def __init__(self, planner, fetch, *, check, on_bad: str, dataset: str, split: str, epoch: int, start: int,
                 two_step: bool = False, full_frame: bool = False, bad=()):
        self.planner, self.fetch, self.check = planner, fetch, check
        self.on_bad, self.dataset, self.split = on_bad, dataset, split
        self.epoch, self.start, self.n = int(epoch), int(start), len(planner)
        self.two_step, self.full_frame = bool(two_step), bool(full_frame)
        self.bad = set(bad)
        self.read_s = 0.0  # host time in this process (the parallel feed's workers keep their own)
        self._cached = (None, None)

    def at(self, k: int) -> tuple[int, int]:
        """``(epoch, batch)`` of global iteration ``k``."""
        first = self.n - self.start
        if k < first:
            return self.epoch, self.start + k
        k -= first
        return self.epoch + 1 + k // self.n, k % self.n

    def rows(self, k: int):
        """The planned rows (clip indices) of iteration ``k``."""
        epoch, b = self.at(k)
        if self._cached[0] != epoch:
            self._cached = (epoch, self.planner.batches(epoch))
        return self._cached[1][b]

    def read_clip(self, row: int, epoch: int):
        """``(plans, frames per plan, {frame index: bytes})`` of ``row`` in ``epoch``."""
        plans = self.planner.plans(row, epoch)
        wanted = needed_frames(plans)
        bufs = dict(zip(wanted, self.fetch(row, wanted)))
        return plans, [[bufs[j] for j in p.frames] for p in plans], bufs

    def load_clip(self, row: int, epoch: int):
        """``(row read, plans, frames)`` for planned ``row``: the next good row with ``on_bad="replace"``."""
        def good(cand):
            plans, frames, bufs = self.read_clip(cand, epoch)
            for j, b in bufs.items():
                if (reason := self.check(b, plans[0].src_size)) is not None:
                    raise corrupt_frame(self.dataset, self.split, plans[0].key, plans[0].clip, j, reason)
            return cand, plans, frames

        got, _ = replace_bad(good, row, n=self.planner.n, on_bad=self.on_bad, where=f"{self.dataset} {self.split}",
                             bad=self.bad)
        return got

    def __call__(self, info):
        k = int(info.iteration)
        t0 = time.perf_counter()
        epoch, _ = self.at(k)
        plans, frames, rows, tags = [], [], [], []
        for j, row in enumerate(self.rows(k)):
            got, ps, fs = self.load_clip(int(row), epoch)
            plans += ps
            frames += fs
            for p in ps:
                rows += [got] * len(p.frames)
            tags += [(k << TAG_BITS) | j] * len(ps)
        out = flatten_clips(plans, frames, tags, two_step=self.two_step, full_frame=self.full_frame)
        self.read_s += time.perf_counter() - t0
        return (*out, [np.array(r, np.int64) for r in rows])

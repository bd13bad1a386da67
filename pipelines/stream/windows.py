"""Sliding windows over a frame stream, each sampled as the checkpoint's model was tested.

Windows (:class:`Windower`): window ``k`` covers ``[k * stride, k * stride + window)`` seconds of the source and
holds the frames whose time falls inside it (a tolerance of 1 us absorbs float rounding of exact frame times).
It is complete when a frame at or past its end arrives, or when the source ends at or past its end. A source
of duration ``D >= window`` therefore gives exactly ``floor((D - window) / stride) + 1`` windows; a source
shorter than one window (or a live stream that ends before the first window completes) gives one window
``[0, D)`` over all its frames. Only the frames of windows not yet completed are held.

Sampling (:class:`WindowSampler`): a window's ``n`` frames are treated as one test video -- the val plan of
:func:`pipelines.plan.geometry.make_plans` (the segment centres of :func:`pipelines.plan.sampling.val_indices`,
the dataset preset's eval pre-resize and centre crop) -- executed by :func:`pipelines.decode.frames.run_plan_torch`,
the torch backend's executor. Each frame is decoded and transformed once, however many windows sample it.
The result is uint8 ``(T, 3, size, size)``; normalisation stays the trainer's (:func:`pipelines.plan.presets.normalize`).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from pipelines.plan import presets
from pipelines.plan.geometry import make_plans

EPS = 1e-6


@dataclass
class Window:
    """Window ``k`` of a source: ``[start_s, end_s)`` and its frames (in order)."""

    k: int
    start_s: float
    end_s: float
    frames: list
    arrival: float | None = None  # perf_counter() of the frame that completed it (None: the source's end)


def expected_windows(duration: float, window: float, stride: float) -> int:
    """How many windows a source of ``duration`` seconds gives (the rule in the module docstring)."""
    if duration <= 0:
        return 0
    if duration + EPS < window:
        return 1
    return int(math.floor((duration - window) / stride + EPS)) + 1


class Windower:
    """Feed frames in time order with :meth:`push`; it returns the windows each frame completes."""

    def __init__(self, window: float, stride: float):
        if not (window > 0 and stride > 0):
            raise ValueError(f"window and stride must be > 0 seconds, got {window} and {stride}")
        self.window, self.stride = float(window), float(stride)
        self.k = 0            # the next window to complete
        self.held: deque = deque()  # frames that window k or a later one may still need
        self.emitted = 0

    def _bounds(self, k: int) -> tuple[float, float]:
        start = k * self.stride
        return start, start + self.window

    def _take(self, k: int) -> Window:
        start, end = self._bounds(k)
        frames = [f for f in self.held if start - EPS <= f.t < end - EPS]
        self.emitted += 1
        return Window(k, start, end, frames)

    def _drop_before(self, t: float) -> None:
        while self.held and self.held[0].t < t - EPS:
            self.held.popleft()

    def push(self, frame) -> list[Window]:
        """Add ``frame``; the windows it completes: those it is past, and those it ends (``frame.t + frame.dur``
        reaches their end: the window's last frame completes it, not the next one, which saves a frame
        interval of latency online)."""
        out = []
        while frame.t >= self._bounds(self.k)[1] - EPS:
            out.append(self._next(frame))
        if frame.t >= self._bounds(self.k)[0] - EPS:
            self.held.append(frame)
        while frame.dur and frame.t + frame.dur >= self._bounds(self.k)[1] - EPS:
            out.append(self._next(frame))
        return out

    def _next(self, frame) -> Window:
        w = self._take(self.k)
        w.arrival = frame.arrival
        self.k += 1
        self._drop_before(self._bounds(self.k)[0])
        return w

    def finish(self, end_s: float | None) -> list[Window]:
        """The windows the source's end completes (``end_s``: when its last frame stops showing; None: only
        windows already complete -- none). A source that completed no window gives one over all it had."""
        out = []
        if end_s is not None:
            while self._bounds(self.k)[1] <= end_s + EPS and self.held:
                out.append(self._take(self.k))
                self.k += 1
                self._drop_before(self._bounds(self.k)[0])
        if self.emitted == 0 and self.held:
            last = self.held[-1].t
            end = end_s if end_s is not None and end_s > last else last + EPS
            out.append(Window(0, 0.0, float(end), list(self.held)))
            self.emitted += 1
        self.held.clear()
        return out


class WindowSampler:
    """A window -> uint8 ``(T, 3, size, size)``, sampled and transformed as the model's val/test clips were."""

    def __init__(self, dataset: str, num_segments: int, size: int):
        self.preset = presets.get(dataset)
        self.t, self.size = int(num_segments), int(size)
        self._cache: dict = {}  # frame index -> transformed (3, size, size) uint8

    def plan(self, n: int, src_size: tuple[int, int]):
        """The val plan of a window of ``n`` frames of ``src_size`` (h, w)."""
        return make_plans(self.preset, "val", clip=0, key="window", label=-1, num_frames=n, src_size=src_size,
                          num_segments=self.t, size=self.size)[0]

    def __call__(self, win: Window):
        import torch

        first = win.frames[0].index
        for i in [k for k in self._cache if k < first]:  # frames no later window can sample
            del self._cache[i]
        # the frame choice does not depend on the frame size; each frame's geometry comes from its own size
        rows = self.plan(len(win.frames), (self.size, self.size)).frames
        return torch.stack([self._pixels(win.frames[j]) for j in rows])

    def _pixels(self, f):
        import numpy as np

        from pipelines.decode.frames import run_plan_torch

        px = self._cache.get(f.index)
        if px is None:
            rgb = f.rgb()
            if not (rgb.flags.c_contiguous and rgb.flags.writeable):  # torch.from_numpy wants a writable array
                rgb = np.array(rgb, order="C")
            px = self._cache[f.index] = run_plan_torch(rgb[None], self.plan(1, rgb.shape[:2]))[0]
        return px

"""What every backend's loader shares: the epoch/start state, length, batch clips, stage timings, the one
corrupt-frame message (:func:`corrupt_frame`) and the one replace-bad policy (:func:`on_bad_clip` for a clip found
bad, :func:`replace_bad` to load the next good one); the loader contract itself is documented in
:mod:`pipelines.loader`."""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

import numpy as np

from pipelines.errors import FrameError

log = logging.getLogger(__name__)

STAGES = ("read", "decode", "augment", "to_device")
MAX_REPLACE_TRIES = 16  # consecutive bad candidates before giving up

R = TypeVar("R")


def corrupt_frame(dataset: str, split: str, key: str, clip: int, frame: int, reason) -> FrameError:
    """The one message for a frame that cannot be decoded, whichever backend found it."""
    return FrameError(f"{dataset} {split}: clip {key!r} (row {clip}) frame {frame}: corrupt JPEG ({reason})")


def on_bad_clip(err: FrameError, on_bad: str) -> None:
    """The one replace-bad policy for a clip found bad: ``on_bad="raise"`` raises ``err`` (its one line, no
    chained traceback); ``"replace"`` logs it once and returns (the caller puts the next good clip in its place)."""
    if on_bad != "replace":
        raise err from None
    log.warning("%s; replaced by the next clip (on_bad='replace')", err)


def replace_bad(load: Callable[[int], R], clip: int, *, n: int, on_bad: str, where: str,
                bad: set | None = None) -> tuple[R, bool]:
    """``(load(c), replaced)`` for the first good candidate ``c`` of ``clip, clip + 1, ...`` (mod ``n``).

    ``load`` raises FrameError for a bad clip, which goes to :func:`on_bad_clip`: with ``on_bad="raise"`` the
    first error propagates; with ``"replace"`` it is logged and the next row is tried (rows in ``bad`` are known
    bad and skipped; new bad rows are added to it). ``replaced`` is True when another clip took ``clip``'s place:
    a loader counts one replaced clip per original clip, however many candidates were bad.
    """
    for attempt in range(MAX_REPLACE_TRIES):
        cand = (clip + attempt) % n
        if bad is not None and cand in bad:
            continue
        try:
            return load(cand), attempt > 0
        except FrameError as e:
            on_bad_clip(e, on_bad)
            if bad is not None:
                bad.add(cand)
    raise FrameError(f"{where}: {MAX_REPLACE_TRIES} consecutive clips from row {clip} are bad; giving up "
                     "(run tools/convert_dataset.py verify)")


class Loader:
    """Base of every backend loader: built once per run, pointed at an epoch (and a first batch) by
    :meth:`set_epoch`, iterated once per epoch.

    Subclasses implement ``__iter__`` over :meth:`pending` and may override :meth:`close`.
    """

    def __init__(self, spec, split):
        import torch

        self.spec = spec
        self.shards, self.planner = split.shards, split.planner
        self.dataset, self.split = self.shards.dataset, spec.split
        self.device = torch.device(spec.device)
        self.epoch, self.start = 0, 0
        self._replaced = 0
        self.stage_s = dict.fromkeys(STAGES, 0.0)
        self.batches_seen = 0
        self._prefetch()

    @property
    def replaced(self) -> int:
        """Clips replaced so far by ``on_bad="replace"`` (one per bad original clip)."""
        return self._replaced

    @property
    def where(self) -> str:
        return f"{self.dataset} {self.split}"

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass yields batches ``start..len(self)-1`` of ``epoch`` (earlier ones are never read)."""
        n = len(self)
        if not 0 <= int(start) <= n:
            raise ValueError(f"start batch {start} is not in [0, {n}] for {self.where}")
        self.epoch, self.start = int(epoch), int(start)
        self._prefetch()

    def _prefetch(self) -> None:
        """A size-limited remote cache fetches the shards of this pass's clips ahead of use."""
        prefetch = getattr(self.shards, "prefetch", None)
        pending = self.pending() if prefetch is not None else []
        if pending:
            prefetch(np.concatenate([ids for _, ids in pending]))

    def __len__(self) -> int:
        """Batches in a whole epoch of this rank (``start`` does not change it)."""
        return len(self.planner)

    def batch_clips(self, b: int):
        """Clip indices (rows of the split) of batch ``b`` of the current epoch."""
        return self.planner.batches(self.epoch)[b]

    def pending(self) -> list[tuple[int, object]]:
        """``(batch index, clip indices)`` of the batches the next pass yields."""
        batches = self.planner.batches(self.epoch)
        return [(b, batches[b]) for b in range(self.start, len(batches))]

    def frame_error(self, key: str, clip: int, frame: int, reason) -> FrameError:
        return corrupt_frame(self.dataset, self.split, key, clip, frame, reason)

    def close(self) -> None:
        """Release workers, threads or pipelines now (they are also released when the loader is dropped)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

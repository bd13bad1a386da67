"""The torch backend's passes as one stream across epochs: no stall at the epoch boundary (issue 21).

A training run calls ``set_epoch(e); for batch in loader`` epoch after epoch. Started per pass, the executors
would sit idle while the last batches of epoch ``e`` are consumed and then wait for a whole batch of epoch
``e + 1`` to be decoded. Here, once every batch of the current pass has been handed to the workers, the free
slots of the prefetch window take the first batches of the *predicted* next pass -- ``(e + 1, start 0)``, the
planner's plans are pure functions of ``(seed, epoch, clip)`` -- and the next ``iter()`` continues with them when
``set_epoch`` asked for exactly that pass. Anything else (another epoch, a mid-epoch ``start``, a pass abandoned
half-way) drops the prediction and starts where it was asked: the batches are always the planner's.

* threads executor: :func:`thread_items` (the jobs submitted ahead are carried over in ``loader._carry``);
* processes executor: :class:`KeyStream`, the persistent DataLoader's sampler, yields ``(epoch, batch)`` keys
  without end, so its workers prefetch across the boundary; :func:`process_items` keeps one DataLoader iterator
  while the passes follow each other.
"""
from __future__ import annotations

import collections
import weakref

from pipelines.decode.executors import BufferPool, Job, thread_pool


class Ahead:
    """Batches of the pass ``key = (epoch, start)`` already submitted: its source, jobs (in order), batches."""

    def __init__(self, key, source, pending):
        self.key, self.source, self.pending = key, source, pending
        self.jobs: collections.deque = collections.deque()
        self.taken = 0  # batches yielded

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled = True
        self.jobs.clear()


def _submit(loader, ahead: Ahead, pin: bool, pool) -> None:
    ids = ahead.pending[ahead.taken + len(ahead.jobs)]
    job = Job(ahead.source, ids, ahead.source.alloc(len(ids), pin=pin, pool=pool))
    for k in range(len(ids)):
        loader._pool.submit(job.run, k)
    ahead.jobs.append(job)


def thread_items(loader):
    """``executor="threads"``: ``workers`` threads of this process fill each batch clip by clip, straight into a
    preallocated (pinned, for CUDA) batch tensor -- no pickling, no shared-memory hand-over, no collation. Up to
    ``prefetch_factor * workers`` batches are in flight (this pass's, then the predicted next pass's); they are
    yielded in order. ``loader.ahead_submitted`` counts the next pass's batches submitted during this one."""
    if loader._pool is None:
        loader._pool = thread_pool(loader.workers)
        # wait=False: the loader may be collected inside one of the pool's own threads (a job held the last
        # reference), where joining would join the current thread; close() still waits
        weakref.finalize(loader, loader._pool.shutdown, wait=False, cancel_futures=True)
    key = (loader.epoch, loader.start)
    cur = loader._carry
    loader._carry = None
    if cur is None or cur.key != key:
        if cur is not None:
            cur.cancel()
        pending = [ids for _, ids in loader.pending()]
        cur = Ahead(key, loader.make_source(pending, loader.epoch), pending)
    pin = loader.device.type == "cuda"
    depth = max(1, loader.prefetch_factor * loader.workers)
    if loader._buffers is None:
        loader._buffers = BufferPool(keep=depth + 2)
    pool = None if pin else loader._buffers  # pinned memory has its own caching allocator
    nxt = None  # the predicted next pass, started once this one is all submitted
    loader.ahead_submitted = 0
    done = False
    try:
        while cur.taken < len(cur.pending):
            while cur.taken + len(cur.jobs) < len(cur.pending) and len(cur.jobs) < depth:
                _submit(loader, cur, pin, pool)
            if cur.taken + len(cur.jobs) == len(cur.pending) and loader.epoch_prefetch:
                if nxt is None:
                    e = loader.epoch + 1
                    pending = list(loader.planner.batches(e))
                    nxt = Ahead((e, 0), loader.make_source(pending, e), pending)
                while len(cur.jobs) + len(nxt.jobs) < depth and len(nxt.jobs) < len(nxt.pending):
                    _submit(loader, nxt, pin, pool)
                    loader.ahead_submitted += 1
            job = cur.jobs.popleft()
            cur.taken += 1
            yield job.result()
        done = True
    finally:
        cur.cancel()  # an abandoned pass: drop the batches not started yet
        if nxt is not None and not done:
            nxt.cancel()
        elif nxt is not None:
            loader._carry = nxt


class KeyStream:
    """Sampler of the persistent DataLoader: keys ``(epoch, b)`` from ``(epoch, start)`` on, then whole epochs of
    ``n`` batches without end (it holds no reference to the loader, so dropping the loader shuts its workers
    down at once)."""

    def __init__(self, n: int):
        self.n, self.epoch, self.start = int(n), 0, 0
        self.drawn: list = []  # keys handed to the workers of the current stream, in order

    def __iter__(self):
        e, b = self.epoch, self.start
        self.drawn = []
        while self.n > 0:
            if b >= self.n:
                e, b = e + 1, 0
            self.drawn.append((e, b))
            yield e, b
            b += 1


def process_items(loader, source):
    """``executor="processes"``: batches of this pass from the persistent DataLoader, whose key stream runs on
    into the next epoch; one DataLoader iterator serves consecutive passes."""
    import torch  # noqa: PLC0415

    if loader._dl is None:  # one DataLoader, persistent workers: no re-fork per epoch
        loader._sampler = KeyStream(len(loader))
        # its own generator for the workers' base seed, so building it leaves torch's global RNG (dropout) alone
        loader._dl = torch.utils.data.DataLoader(
            source, batch_size=None, shuffle=False, sampler=loader._sampler, num_workers=loader.workers,
            pin_memory=loader.device.type == "cuda", prefetch_factor=loader.prefetch_factor,
            persistent_workers=True, generator=torch.Generator().manual_seed(0))
        loader._dl_at = None
    key = (loader.epoch, loader.start)
    if loader._dl_at != key:  # not where the running key stream is: restart it here
        loader._sampler.epoch, loader._sampler.start = key
        loader._dl_it = iter(loader._dl)
    loader._dl_at = None
    n = len(loader)
    for b in range(loader.start, n):
        item = next(loader._dl_it)
        loader._dl_at = (loader.epoch, b + 1) if b + 1 < n else (loader.epoch + 1, 0)
        yield item

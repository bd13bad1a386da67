"""The torch backend's executors: the decode thread pool, its per-batch jobs, recycled batch buffers and the
sampler that feeds persistent DataLoader workers (the backend itself is :mod:`pipelines.backends.torch.loader`)."""
from __future__ import annotations

import numpy as np


class BufferPool:
    """Recycles batch buffers once the consumer has dropped every tensor that views them.

    A fresh 10-40 MB batch buffer costs thousands of page faults per batch; a buffer is reused only when its
    storage has no user left but the pool's own tensor (torch's storage use count; without that private function
    nothing is recycled)."""

    def __init__(self, keep: int):
        self.keep = int(keep)
        self.held: dict = {}

    @staticmethod
    def _free(base) -> bool:
        import torch

        count = getattr(torch._C, "_storage_Use_Count", None)
        if count is None:  # pragma: no cover - other torch builds
            return False
        storage = base.untyped_storage()
        return count(storage._cdata) <= 2  # ``base`` and the ``storage`` object made just now

    def get(self, shape: tuple, dtype):
        import torch

        bufs = self.held.setdefault((shape, dtype), [])
        for base in bufs:
            if self._free(base):
                return base
        base = torch.empty(shape, dtype=dtype)
        bufs.append(base)
        if len(bufs) > self.keep:  # the consumer keeps batches: stop tracking the oldest
            bufs.pop(0)
        return base


class Job:
    """One batch being filled by the thread pool: clip ``k`` of ``ids`` goes to ``out[k]`` (task ``run(k)``)."""

    def __init__(self, source, ids, out):
        import threading

        self.source, self.ids, self.out = source, ids, out
        self.labels = np.empty(len(ids), dtype=np.int64)
        self.infos = np.zeros((len(ids), 4), dtype=np.float64)
        self.errors: list = [None] * len(ids)
        self.cancelled = False
        self._left = len(ids)
        self._lock = threading.Lock()
        self._done = threading.Event()
        if not len(ids):
            self._done.set()

    def run(self, k: int) -> None:
        try:
            if not self.cancelled:
                self.labels[k] = self.source.load_with_replacement(int(self.ids[k]), self.out[k], self.infos[k])
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            self.errors[k] = e
        with self._lock:
            self._left -= 1
            if not self._left:
                self._done.set()

    def result(self):
        import torch

        self._done.wait()
        for e in self.errors:  # the first bad clip in batch order, whatever thread finished first
            if e is not None:
                raise e
        return self.out, torch.from_numpy(self.labels), self.infos.sum(0)


def thread_pool(n: int):
    """A ``ThreadPoolExecutor`` of ``n`` threads, all started now, each with torch intra-op parallelism 1.

    OpenMP's thread count is per calling thread: the pool *is* the parallelism, and nested OpenMP teams on a
    busy machine cost more than they give. ``torch.set_num_threads`` in a thread also records a process-wide
    default for threads started later; it is restored once the pool's threads exist, so the caller's threads
    (the training step) keep theirs. Tasks run in submission order (the executor's queue is FIFO)."""
    import concurrent.futures as cf
    import threading

    import torch

    n = max(1, int(n))
    before = torch.get_num_threads()
    ex = cf.ThreadPoolExecutor(n, thread_name_prefix="torch-loader", initializer=torch.set_num_threads,
                               initargs=(1,))
    ready = threading.Barrier(n + 1)
    for _ in range(n):  # each waiting task holds a thread, so the executor starts all n of them
        ex.submit(ready.wait)
    ready.wait()
    restore = threading.Thread(target=torch.set_num_threads, args=(before,))  # sets the default, not ours
    restore.start()
    restore.join()
    return ex


class EpochKeys:
    """Sampler of the persistent DataLoader: the (epoch, batch) keys the loader sets before each pass (it holds
    no reference to the loader, so dropping the loader shuts its workers down at once, without a GC cycle)."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)

"""Test-only helpers over the shard format and the partition (not part of the product's API)."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa

from pipelines.shards import format as fmt
from pipelines.plan import partition as P
from pipelines.shards import storage


def iter_clips(out, split: str) -> Iterable[dict]:
    """Yield ``{"key", "label", "num_frames", "frames": [bytes], "height", "width"}`` of every clip of ``split``."""
    fs, root, m = storage.read_manifest(out)
    for sh in m["splits"][split]["shards"]:
        with fs.open_input_file(storage.join(root, fmt.safe_relpath(sh["path"]))) as f:
            table = pa.ipc.open_file(f).read_all()
        yield from table.to_pylist()


def worker_batches(all_batches: list, worker: int, workers: int) -> list:
    """The batches worker ``worker`` of ``workers`` gets from a DataLoader (round-robin; 0 = one process)."""
    w = max(int(workers), 1)
    if not 0 <= int(worker) < w:
        raise ValueError(f"worker {worker} is not in [0, {w})")
    return all_batches[int(worker)::w]


def partition(n: int, *, rank: int = 0, world: int = 1, worker: int = 0, workers: int = 1, batch_size: int = 1,
              shuffle: bool, seed: int = 0, epoch: int = 0, equal: bool = False,
              drop_last: bool = False) -> list[np.ndarray]:
    """The batches (clip indices) that (rank, worker) reads in ``epoch``."""
    clips = P.rank_clips(n, rank=rank, world=world, shuffle=shuffle, seed=seed, epoch=epoch, equal=equal)
    return worker_batches(P.batches(clips, batch_size, drop_last=drop_last), worker, workers)

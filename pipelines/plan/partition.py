"""Who reads which clips in an epoch: a partition by (rank, world) into per-rank batches.

Pure functions on integers. The contract:

* :func:`epoch_order`: the split's clip indices for one epoch -- ``default_rng([seed, epoch]).permutation(n)``
  when shuffling (train), ``arange(n)`` otherwise (val/test).
* :func:`rank_clips`: rank ``r`` of ``world`` takes ``order[r::world]`` (sizes differ by at most one, no
  padding, no clip twice). With ``equal=True`` (training under DDP, where every rank must run the same number
  of steps) the order is first cut to ``world * (n // world)`` clips -- the ``n % world`` dropped clips change
  every epoch with the shuffle.
* :func:`batches`: a rank's clips cut into consecutive batches; ``drop_last`` drops a short final batch.

Loaders hand a rank's batches to their workers round-robin and yield them in order (as
``torch.utils.data.DataLoader`` does), so the batch sequence does not depend on the number of workers. With
``equal=False`` and ``drop_last=False`` the union over all ranks of the clips read in one epoch is every clip
exactly once (tests/test_reader.py checks it per worker too).

**Elastic contract (training).** For a global batch ``B`` that ``world`` divides, per-rank batches of
``b = B / world``, ``equal=True`` and ``drop_last=True``: batch ``s`` of rank ``r`` holds positions
``s*B + r + world*j`` (``j < b``) of the epoch order, so over all ranks global step ``s`` trains exactly the clips
``order[s*B:(s+1)*B]``, and an epoch has ``n // B`` steps -- both for every world size that divides ``B``. A run
may therefore stop after global step ``s`` on one number of ranks and go on at step ``s + 1`` on another with
the same remaining clips per step (tests/test_partition.py checks world 1-4 on uneven split sizes).
"""
from __future__ import annotations

import numpy as np


def epoch_order(n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """int64 permutation of ``range(n)`` for ``epoch`` (identity when not shuffling)."""
    if not shuffle:
        return np.arange(int(n), dtype=np.int64)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n)).astype(np.int64)


def rank_clips(n: int, *, rank: int = 0, world: int = 1, shuffle: bool, seed: int = 0, epoch: int = 0,
               equal: bool = False) -> np.ndarray:
    """Clip indices read by ``rank`` in ``epoch`` (see the module docstring)."""
    if not 0 <= int(rank) < int(world):
        raise ValueError(f"rank {rank} is not in [0, world={world})")
    order = epoch_order(n, shuffle=shuffle, seed=seed, epoch=epoch)
    if equal:
        order = order[: int(world) * (len(order) // int(world))]
    return order[int(rank)::int(world)]


def batches(clips: np.ndarray, batch_size: int, *, drop_last: bool) -> list[np.ndarray]:
    """``clips`` cut into consecutive batches of ``batch_size`` (the last one shorter unless dropped)."""
    bs = int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = (len(clips) // bs) * bs if drop_last else len(clips)
    return [clips[i:i + bs] for i in range(0, stop, bs)]


def num_batches(n_clips: int, batch_size: int, *, drop_last: bool) -> int:
    """``len(batches(...))`` without building them."""
    return n_clips // batch_size if drop_last else -(-n_clips // batch_size)

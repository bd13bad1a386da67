"""Distributed data parallel: the one place that initialises and ends the process group.

torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) is read here only; every other module gets the
rank and world size as arguments (from :class:`DistInfo`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

from trainer.errors import TrainingError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun): for log prefixes before the group exists."""
    return int(os.environ.get("RANK", "0"))


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_pref: str, timeout_s: int) -> DistInfo:
    """Initialise torch.distributed from torchrun's environment (or run single-process)."""
    import torch
    import torch.distributed as dist

    world, rank = env_world(), env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked but no CUDA device is visible (check CUDA_VISIBLE_DEVICES / GPUS=)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


@contextlib.contextmanager
def distributed(device_pref: str, timeout_s: int) -> Iterator[DistInfo]:
    """:func:`init_distributed` for the duration of the block; the group is destroyed however the block ends."""
    info = init_distributed(device_pref, timeout_s)
    try:
        yield info
    finally:
        if info.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def all_reduce_sum(t, world: int):
    """Sum ``t`` over the ranks in place (a no-op for one process); returns ``t``."""
    if world > 1:
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj, world: int) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if world == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def elastic_seed(seed: int, global_step: int, rank: int) -> int:
    """The dropout seed of ``rank`` when a run resumes at ``global_step`` on another number of ranks: a pure
    function of the three, so the resumed run is itself repeatable."""
    import numpy as np
    return int(np.random.SeedSequence([int(seed), int(global_step), int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def any_rank(flag: bool, world: int, device) -> bool:
    """True on every rank when ``flag`` is true on any (one small all-reduce; none for one process)."""
    if world == 1:
        return bool(flag)
    import torch
    t = torch.tensor([float(flag)], device=device)
    return all_reduce_sum(t, world).item() > 0

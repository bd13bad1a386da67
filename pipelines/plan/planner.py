"""Planner: the ClipPlans and batches of one split for one (rank, world), built from the pure functions."""
from __future__ import annotations

import numpy as np

from pipelines.plan import geometry, partition, presets
from pipelines.plan.clip import MODES, ClipPlan

class Planner:
    """Plans and batches of one split for one (rank, world): what every backend executes.

    Args:
        meta: :meth:`pipelines.shards.reader.ShardDataset.metadata` of the split.
        dataset, classes: from the manifest (preset and flip label map).
        mode, batch_size (per rank), num_segments, size, rank, world, seed, flip, test_clips, test_crops,
        test_sampling, drop_last: as :class:`pipelines.loader.LoaderSpec`.

    Everything is a pure function of (seed, epoch, clip): :meth:`batches` and :meth:`plans` can be asked for
    any epoch and batch in any order, which is what lets a loader start an epoch at batch k without reading
    batches 0..k-1.
    """

    def __init__(self, meta: dict, *, dataset: str, classes: list[str], mode: str, batch_size: int,
                 num_segments: int, size: int, rank: int, world: int, seed: int, flip: bool, test_clips: int,
                 test_crops: int, test_sampling: str, drop_last: bool):

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.meta, self.dataset, self.mode = meta, dataset, mode
        self.preset = presets.get(dataset)
        self.batch_size, self.num_segments, self.size = int(batch_size), int(num_segments), int(size)
        self.rank, self.world, self.seed = int(rank), int(world), int(seed)
        self.flip = bool(flip) and mode == "train"
        self.flip_map = presets.flip_label_map(dataset, classes) if self.flip else None
        self.test_clips, self.test_crops, self.test_sampling = int(test_clips), int(test_crops), test_sampling
        self.drop_last = bool(drop_last)
        self.views = geometry.num_views(mode, test_clips=test_clips, test_crops=test_crops)
        self.n = len(meta["key"])

    def clips(self, epoch: int) -> np.ndarray:
        """This rank's clip indices for ``epoch`` (train: shuffled and cut equal across ranks)."""
        train = self.mode == "train"
        return partition.rank_clips(self.n, rank=self.rank, world=self.world, shuffle=train, seed=self.seed,
                                    epoch=epoch, equal=train and self.drop_last)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of clip indices for ``epoch``."""
        return partition.batches(self.clips(epoch), self.batch_size, drop_last=self.drop_last)

    def __len__(self) -> int:
        n_rank = len(self.clips(0))
        return partition.num_batches(n_rank, self.batch_size, drop_last=self.drop_last)

    def plans(self, clip: int, epoch: int) -> list[ClipPlan]:
        """The ``views`` plans of clip ``clip`` in ``epoch``."""

        m = self.meta
        return geometry.make_plans(
            self.preset, self.mode, clip=int(clip), key=m["key"][clip], label=int(m["label"][clip]),
            num_frames=int(m["num_frames"][clip]), src_size=(int(m["height"][clip]), int(m["width"][clip])),
            num_segments=self.num_segments, size=self.size, seed=self.seed, epoch=epoch, flip=self.flip,
            flip_map=self.flip_map, test_clips=self.test_clips, test_crops=self.test_crops,
            test_sampling=self.test_sampling)

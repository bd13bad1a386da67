"""ClipPlan: the contract between the pure sampling/geometry functions and the loader backends.

The pure functions (``pipelines.sampling``, ``pipelines.geometry``) decide *everything* random about a clip
before any byte is decoded: which frames, which crop window, whether to flip, and the label after flipping.
A backend (``folder``, ``torch``, ``dali``, ``ffcv``) only executes a plan, so every backend produces the same
clip for the same (seed, epoch, clip).

Execution order that defines the reference pixels (the ``folder``/``torch`` backends, as the original code)::

    decode frames[i]                         (H0, W0) = src_size
    resize to ``resize`` (bilinear)           skipped when resize == src_size
    crop ``crop`` = (x, y, w, h)              integer window inside the resized frame
    resize to ``out`` (bilinear)              skipped when (h, w) == out
    horizontal flip if ``flip``

Backends that decode a region of interest directly (DALI ``image_slice``) use :func:`source_window` to map
the crop back to source pixel coordinates and resize once; their pixels differ from the reference by
resampling only (a tolerance stated in their tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines import partition, presets


@dataclass(frozen=True)
class ClipPlan:
    """One output clip (one view of one video) to be produced by a backend.

    Attributes:
        clip: row index of the video in its split (0-based, global over all shards).
        key: the video id stored in the shard (for error messages).
        label: class index *after* applying the flip label map (-1 when unknown).
        frames: T frame indices (0-based, into the video's stored frame list), in output order.
        src_size: (height, width) of the stored frames.
        resize: (height, width) of the pre-resize step (== src_size when there is none).
        crop: (x, y, w, h) integer crop window in the pre-resized frame.
        out: (height, width) of the output frames.
        flip: mirror horizontally (after cropping).
    """

    clip: int
    key: str
    label: int
    frames: tuple[int, ...]
    src_size: tuple[int, int]
    resize: tuple[int, int]
    crop: tuple[int, int, int, int]
    out: tuple[int, int]
    flip: bool


def needed_frames(plans) -> list[int]:
    """The sorted distinct frame indices that the views ``plans`` of one clip read (each is decoded once)."""
    return sorted({j for p in plans for j in p.frames})


def source_window(plan: ClipPlan) -> tuple[float, float, float, float]:
    """The crop window of ``plan`` in source-pixel coordinates: (x, y, w, h) as floats.

    Maps the window through the pre-resize scale factors so a backend can decode only that region of the
    source JPEG and resize it straight to ``plan.out``.
    """
    sh, sw = plan.src_size
    rh, rw = plan.resize
    fx, fy = sw / rw, sh / rh
    x, y, w, h = plan.crop
    return (x * fx, y * fy, w * fx, h * fy)


MODES = ("train", "val", "test")


class Planner:
    """Plans and batches of one split for one (rank, world): what every backend executes.

    Args:
        meta: :meth:`pipelines.reader.ShardDataset.metadata` of the split.
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
        from pipelines import geometry  # geometry builds ClipPlans: imported here, not at the top

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
        from pipelines import geometry

        m = self.meta
        return geometry.make_plans(
            self.preset, self.mode, clip=int(clip), key=m["key"][clip], label=int(m["label"][clip]),
            num_frames=int(m["num_frames"][clip]), src_size=(int(m["height"][clip]), int(m["width"][clip])),
            num_segments=self.num_segments, size=self.size, seed=self.seed, epoch=epoch, flip=self.flip,
            flip_map=self.flip_map, test_clips=self.test_clips, test_crops=self.test_crops,
            test_sampling=self.test_sampling)

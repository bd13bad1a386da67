"""``build_loader``: one entry point over the loader backends (``torch``, ``folder``, ``dali``, ``ffcv``).

Every backend executes the same :class:`~pipelines.plan.ClipPlan` s (from :class:`Planner`), so for one seed
they produce the same clips (bit-identical or within a stated resampling tolerance) in the same order.

Output of iterating a loader (one batch)::

    train / val:  clips (B, T, 3, H, W), labels (B,) int64
    test:         clips (B, V, T, 3, H, W), labels (B,) int64      V = test_clips * test_crops, clip-major views

``clips`` are uint8, or float32 normalised with the preset's mean/std (``(x / 255 - mean) / std``) when
``normalize=True``; both tensors are on ``device``. ``labels`` are already passed through the flip label map.
Batches: train drops the last short batch of each rank (``drop_last=True``: every rank runs the same number of
steps under DDP, and the rank partition is cut to ``world * (n // world)`` clips); val/test read every clip of
the split exactly once over all ranks, no padding, and the last batch may be smaller.

Backend plug-in contract (``pipelines/backends/<name>.py``, looked up lazily in
:data:`pipelines.backends.BACKENDS`)::

    build_<name>_loader(*, data, split, mode, batch_size, num_segments, size, rank, world, workers, seed, epoch,
                        device, normalize, flip, test_clips, test_crops, test_sampling, drop_last, on_bad, raw,
                        **options) -> object with __iter__ (the batches above), __len__ and set_epoch(epoch)

``data`` is the shard folder (str), ``raw`` the raw dataset root or None, ``on_bad`` ``"raise"``/``"replace"``,
``device`` a ``torch.device``; ``options`` are backend-specific keywords (unknown ones must raise TypeError).
:class:`Planner` gives a backend the epoch's batches of clip indices for its (rank, world) and each clip's plans.
"""
from __future__ import annotations

import logging

import numpy as np

from pipelines import geometry, partition, presets
from pipelines.plan import ClipPlan

log = logging.getLogger(__name__)

MODES = ("train", "val", "test")
ON_BAD = ("raise", "replace")


class Planner:
    """Plans and batches of one split for one (rank, world): shared by every backend.

    Args:
        meta: :meth:`pipelines.reader.ShardDataset.metadata` of the split.
        dataset, classes: from the manifest (preset and flip label map).
        Other arguments: as :func:`build_loader`.
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


def normalize_(clips, mean, std):
    """uint8 ``(..., 3, H, W)`` -> float32 ``(x / 255 - mean) / std``, computed in two passes as
    ``x * (1 / (255 std)) - mean / std`` (within 1e-6 of the original's four-pass order; every backend here
    uses this function, so they round alike)."""
    import torch

    scale, bias = _norm_constants(tuple(mean), tuple(std), clips.device)
    shape = [1] * (clips.dim() - 3) + [3, 1, 1]
    return torch.mul(clips, scale.view(shape)).sub_(bias.view(shape))


_NORM_CACHE: dict = {}


def _norm_constants(mean: tuple, std: tuple, device):
    """``(1 / (255 std), mean / std)`` as float32 tensors on ``device``, made once per (mean, std, device): a fresh
    host->GPU copy per batch is a blocking copy, i.e. a host sync on the training stream."""
    key = (mean, std, str(device))
    got = _NORM_CACHE.get(key)
    if got is None:
        import torch

        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        got = ((1.0 / (255.0 * s)).to(torch.float32).to(device), (m / s).to(torch.float32).to(device))
        _NORM_CACHE[key] = got
    return got


def build_loader(data, split: str, *, backend: str = "torch", mode: str = "train", batch_size: int,
                 num_segments: int = 8, size: int = 224, rank: int = 0, world: int = 1, workers: int = 2,
                 seed: int = 0, epoch: int = 0, device="cpu", normalize: bool = False, flip: bool = False,
                 test_clips: int = 1, test_crops: int = 1, test_sampling: str = "uniform",
                 drop_last: bool | None = None, on_bad: str = "raise", raw=None, **options):
    """A loader over ``split`` of the converted dataset in ``data`` (see the module docstring for the output).

    Args:
        data: shard folder written by ``tools/convert_dataset.py`` (holds ``manifest.json``).
        split: ``train``, ``val`` or ``test`` (a split of the manifest).
        backend: ``torch`` (shards, workers decode the sampled JPEGs), ``folder`` (the original PIL
            file-per-frame path; needs ``raw``), ``dali``, ``ffcv`` (optional packages).
        mode: ``train`` (random TSN sampling + multi-scale crop), ``val`` (centre), ``test`` (multi-view).
        batch_size: clips per batch (per rank).
        num_segments, size: T and the output side (H = W = size).
        rank, world: this process's place in data-parallel training.
        workers: parallel loaders: decode threads for ``torch`` (``executor="processes"``: DataLoader worker
            processes, as ``folder`` always uses); 0 loads in the calling thread.
        seed, epoch: all randomness derives from (seed, epoch, clip); ``set_epoch`` changes the epoch.
        device: where batches are delivered (``"cpu"``, ``"cuda"``, ``torch.device``).
        normalize: deliver float32 normalised clips instead of uint8.
        flip: label-aware random horizontal flip (train only; the original never flips).
        test_clips, test_crops, test_sampling: test views (``uniform`` deterministic or ``random`` offsets).
        drop_last: default True for train, False for val/test.
        on_bad: ``raise`` a FrameError naming dataset, clip key and frame on a corrupt JPEG, or ``replace``
            the clip by the next good one (counted in ``loader.replaced`` and logged).
        raw: raw dataset root (``folder`` backend).
        **options: backend-specific (torch: ``resample="auto"|"torch"|"pil"|"exact"|"fused"``,
            ``executor="threads"|"processes"``, ``channels_last=True``, ``dct_scale=False``,
            ``decode_device=None|"cuda"``, ``prefetch_factor``; see :mod:`pipelines.backends.torch_backend`).
    """
    import torch

    from pipelines import backends

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if on_bad not in ON_BAD:
        raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    if drop_last is None:
        drop_last = mode == "train"
    build = backends.get(backend)
    return build(data=str(data), split=split, mode=mode, batch_size=int(batch_size), num_segments=int(num_segments),
                 size=int(size), rank=int(rank), world=int(world), workers=int(workers), seed=int(seed),
                 epoch=int(epoch), device=torch.device(device), normalize=bool(normalize), flip=bool(flip),
                 test_clips=int(test_clips), test_crops=int(test_crops), test_sampling=test_sampling,
                 drop_last=bool(drop_last), on_bad=on_bad, raw=None if raw is None else str(raw), **options)

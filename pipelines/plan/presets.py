"""Per-dataset data presets (docs/DESIGN.md "Augmentation"): pre-resize rule, train/eval geometry, flip, mean/std.

A :class:`Preset` is data, not code: :func:`pipelines.plan.geometry.make_plans` turns it into crop windows.

* egogesture -- train: squash to ``size x size``; val and test: the squash only (1 view; no 3-crop).
* jester -- train: short side -> ``scale_size(size)``; val / 1-crop test: same pre-resize + centre crop;
  3-crop test: same pre-resize + left/right/centre ``size`` crops (GroupFullResSample).
* sthv2 -- train: no pre-resize (raw frames are 240 px high); val/test as jester.
* flip: allowed on all three (each has a label map), off by default.

``scale_size(size) = round(size * 256 / 224)`` (256 for the standard 224; 128 for a 112 demo). The train crop is
TSN's GroupMultiScaleCrop (scales 1, .875, .75, .66, max_distort 1, 13 fixed offsets) followed by a bilinear
resize to ``size x size``. Flipping is allowed on every dataset because each has a label map (the pairs live
in :mod:`pipelines.ingest.datasets`, keyed by class name); it is still *off* by default, as the original never flips.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RULES = ("squash", "short", "none")


@dataclass(frozen=True)
class Preset:
    """Geometry and normalisation of one dataset.

    Attributes:
        dataset: registry name (``pipelines.ingest.datasets.get(dataset)``).
        train_resize: pre-resize before the train crop: ``"squash"`` (to size x size), ``"short"`` (short side
            to :func:`scale_size`, torchvision ``Resize(int)`` rule) or ``"none"``.
        eval_resize: pre-resize for val/test: ``"squash"`` or ``"short"``.
        eval_center_crop: val / 1-crop test take a ``size x size`` centre crop after the pre-resize.
        test_crops: numbers of spatial test views offered (1, and 3 = GroupFullResSample).
        flip_allowed: a horizontal flip with the dataset's label map is meaningful.
        scales, max_distort, more_fix_crop: GroupMultiScaleCrop parameters.
        mean, std: per-channel normalisation of [0, 1] RGB values.
    """

    dataset: str
    train_resize: str
    eval_resize: str
    eval_center_crop: bool
    test_crops: tuple[int, ...] = (1, 3)
    flip_allowed: bool = True
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    max_distort: int = 1
    more_fix_crop: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


PRESETS = {
    "egogesture": Preset("egogesture", train_resize="squash", eval_resize="squash", eval_center_crop=False,
                         test_crops=(1,)),
    "jester": Preset("jester", train_resize="short", eval_resize="short", eval_center_crop=True),
    "sthv2": Preset("sthv2", train_resize="none", eval_resize="short", eval_center_crop=True),
}


def get(dataset: str) -> Preset:
    """The preset of ``dataset`` (``egogesture``, ``jester``, ``sthv2``)."""
    try:
        return PRESETS[dataset]
    except KeyError:
        raise ValueError(f"no preset for dataset {dataset!r}; expected one of {', '.join(PRESETS)}") from None


def scale_size(size: int) -> int:
    """Short-side length of the pre-resize for an output ``size``: ``round(size * 256 / 224)`` (224 -> 256)."""
    return int(round(int(size) * 256 / 224))


def resize_short(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision ``Resize(short)`` output (height, width): short side -> ``short``, long side ->
    ``int(short * long / short_side)`` (truncated, as torchvision). E.g. 240x320, 256 -> 256x341."""
    h, w, s = int(height), int(width), int(short)
    if w <= h:
        return int(s * h / w), s
    return s, int(s * w / h)


def resize_shape(rule: str, src_size: tuple[int, int], size: int) -> tuple[int, int]:
    """(height, width) after the pre-resize ``rule`` for an output ``size`` (``src_size`` is (h, w))."""
    h, w = int(src_size[0]), int(src_size[1])
    if rule == "squash":
        return int(size), int(size)
    if rule == "short":
        return resize_short(h, w, scale_size(size))
    if rule == "none":
        return h, w
    raise ValueError(f"pre-resize rule must be one of {RESIZE_RULES}, got {rule!r}")


def flip_label_map(dataset: str, classes: list[str]) -> np.ndarray:
    """int64 array ``m`` with ``m[label]`` = label after a horizontal flip, from the dataset definition's
    class-name pairs (:mod:`pipelines.ingest.datasets`); unpaired classes map to themselves."""
    from pipelines.ingest import datasets  # lazy: keeps ``import pipelines.presets`` free of file access

    return datasets.get(dataset).flip_label_map(list(classes))


def normalize(clips, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 ``(..., 3, H, W)`` -> float32 ``(x / 255 - mean) / std``: the one normalisation, applied by the
    trainer on the training device to every backend's uint8 batches.

    Computed as ``(x - 255 mean) / (255 std)`` in float32 (within 1e-6 of the four-pass formula; the order the
    trainer has always used, so results stay bit-identical across this refactor)."""
    mean255, std255 = _norm_constants(tuple(mean), tuple(std), clips.device)
    shape = [1] * (clips.dim() - 3) + [3, 1, 1]
    return (clips.float() - mean255.view(shape)) / std255.view(shape)


_NORM_CACHE: dict = {}


def _norm_constants(mean: tuple, std: tuple, device):
    """``(255 mean, 255 std)`` as float32 tensors on ``device``, made once per (mean, std, device): a fresh
    host->GPU copy per batch is a blocking copy, i.e. a host sync on the training stream."""
    key = (mean, std, str(device))
    got = _NORM_CACHE.get(key)
    if got is None:
        import torch

        got = (torch.tensor(mean, device=device) * 255, torch.tensor(std, device=device) * 255)
        _NORM_CACHE[key] = got
    return got

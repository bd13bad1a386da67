"""Crop/flip geometry and the per-clip plan (docs/DESIGN.md "Augmentation").

Pure functions, no I/O. Windows are ``(x, y, w, h)`` integer tuples in the coordinates of the (pre-resized)
frame; sizes are ``(height, width)`` unless a name says otherwise.

Randomness: every random choice about a clip comes from :func:`clip_rng` ``(seed, epoch, clip)`` -- a
``numpy.random.Generator`` that does not depend on the rank, the worker or the batch, so a clip is
reproducible anywhere. :func:`make_plans` draws, in this order: the frame indices (train: one
``integers(n // T, size=T)`` unless ``n < T``; test ``"random"``: one such draw per clip), the crop pair
(``integers(len(pairs))``), the offset (``integers(13)``), then the flip (``random() < 0.5``) only when
flipping is enabled -- so turning the flip on never changes frames or windows.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.plan import sampling
from pipelines.errors import ClipError
from pipelines.plan.clip import ClipPlan
from pipelines.plan.presets import Preset, resize_shape

Window = tuple[int, int, int, int]


def clip_rng(seed: int, epoch: int, clip: int) -> np.random.Generator:
    """The generator of one clip: ``numpy.random.default_rng([seed, epoch, clip])`` (all >= 0)."""
    return np.random.default_rng([int(seed), int(epoch), int(clip)])


def multiscale_crop_pairs(height: int, width: int, size: int, scales: Sequence[float] = (1, .875, .75, .66),
                          max_distort: int = 1) -> list[tuple[int, int]]:
    """TSN ``GroupMultiScaleCrop`` candidate crop sizes as ``(w, h)`` pairs, in TSN's order.

    ``base = min(h, w)``; ``c_k = int(base * scales[k])``; a side within 3 px of ``size`` snaps to ``size``;
    pairs ``(w_j, h_i)`` for ``i`` (outer) and ``j`` (inner) with ``|i - j| <= max_distort``. A side that
    snapped past the frame (``base`` in ``(size-3, size)``) is clamped to the frame -- the one deviation from
    TSN, which would pad with black there.
    E.g. 256x341, size 224: crops [256, 224, 192, 168] -> 10 pairs (256,256),(224,256),(256,224),(224,224),...
    """
    h, w = int(height), int(width)
    base = min(h, w)
    crops = [int(base * s) for s in scales]
    snapped = [size if abs(c - size) < 3 else c for c in crops]
    pairs = []
    for i, ch in enumerate(snapped):
        for j, cw in enumerate(snapped):
            if abs(i - j) <= max_distort:
                pairs.append((max(1, min(cw, w)), max(1, min(ch, h))))  # >= 1 px for tiny frames
    return pairs


def fix_offsets(width: int, height: int, crop_w: int, crop_h: int, more_fix_crop: bool = True) -> list[tuple[int, int]]:
    """TSN ``fill_fix_offset``: the 5 (or 13 with ``more_fix_crop``) crop origins ``(x, y)``, in TSN's order.

    ``ws = (W - w) // 4``, ``hs = (H - h) // 4``: upper-left (0,0), upper-right (4ws,0), lower-left (0,4hs),
    lower-right (4ws,4hs), centre (2ws,2hs); then centre-left (0,2hs), centre-right (4ws,2hs), lower-centre
    (2ws,4hs), upper-centre (2ws,0), and the quarter points (ws,hs), (3ws,hs), (ws,3hs), (3ws,3hs).
    """
    ws = (int(width) - int(crop_w)) // 4
    hs = (int(height) - int(crop_h)) // 4
    ret = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    if more_fix_crop:
        ret += [(0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
                (ws, hs), (3 * ws, hs), (ws, 3 * hs), (3 * ws, 3 * hs)]
    return ret


def multiscale_crop(height: int, width: int, size: int, rng: np.random.Generator, *,
                    scales: Sequence[float] = (1, .875, .75, .66), max_distort: int = 1,
                    more_fix_crop: bool = True) -> Window:
    """Draw one GroupMultiScaleCrop window ``(x, y, w, h)`` in a ``height x width`` frame.

    Two draws: ``pairs[rng.integers(len(pairs))]`` (:func:`multiscale_crop_pairs`), then
    ``offsets[rng.integers(len(offsets))]`` (:func:`fix_offsets`). The caller resizes the window to
    ``size x size``.
    """
    pairs = multiscale_crop_pairs(height, width, size, scales, max_distort)
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    offsets = fix_offsets(width, height, cw, ch, more_fix_crop)
    x, y = offsets[int(rng.integers(len(offsets)))]
    return (int(x), int(y), int(cw), int(ch))


def center_crop(height: int, width: int, crop_h: int, crop_w: int) -> Window:
    """torchvision ``CenterCrop``: ``x = int(round((W - w) / 2))``, ``y = int(round((H - h) / 2))`` (Python's
    round-half-to-even, as torchvision). E.g. 256x341 -> 224: (58, 16, 224, 224). Raises if the crop is larger."""
    h, w, ch, cw = int(height), int(width), int(crop_h), int(crop_w)
    if ch > h or cw > w:
        raise ClipError(f"centre crop {ch}x{cw} is larger than the frame {h}x{w}")
    return (int(round((w - cw) / 2.0)), int(round((h - ch) / 2.0)), cw, ch)


def three_crops(height: int, width: int, crop: int) -> list[Window]:
    """``GroupFullResSample`` (TSM/ACTION-Net ``--test_crops 3``): three ``crop x crop`` windows at
    ``ws = (W - crop) // 4``, ``hs = (H - crop) // 4``: left ``(0, 2hs)``, right ``(4ws, 2hs)``, centre
    ``(2ws, 2hs)`` -- in the original's order. E.g. 256x341, 224: x = 0, 116, 58; y = 16."""
    h, w, c = int(height), int(width), int(crop)
    if c > h or c > w:
        raise ClipError(f"3-crop size {c} is larger than the frame {h}x{w}")
    ws, hs = (w - c) // 4, (h - c) // 4
    return [(0, 2 * hs, c, c), (4 * ws, 2 * hs, c, c), (2 * ws, 2 * hs, c, c)]


def flip_decision(rng: np.random.Generator, p: float = 0.5) -> bool:
    """One draw: flip when ``rng.random() < p``."""
    return bool(rng.random() < p)


def flip_label(label: int, flip: bool, flip_map: np.ndarray | None) -> int:
    """Label after the flip decision: ``flip_map[label]`` when flipped and known (``label >= 0``)."""
    if not flip or label < 0:
        return int(label)
    if flip_map is None:
        raise ValueError("flipping needs the dataset's flip label map")
    return int(flip_map[label])


def num_views(mode: str, *, test_clips: int = 1, test_crops: int = 1) -> int:
    """Plans per video: 1 for train/val, ``test_clips * test_crops`` for test."""
    return int(test_clips) * int(test_crops) if mode == "test" else 1


def make_plans(preset: Preset, mode: str, *, clip: int, key: str, label: int, num_frames: int,
               src_size: tuple[int, int], num_segments: int = 8, size: int = 224, seed: int = 0,
               epoch: int = 0, flip: bool = False, flip_map: np.ndarray | None = None, test_clips: int = 1,
               test_crops: int = 1, test_sampling: str = "uniform") -> list[ClipPlan]:
    """All plans of one video (``clip`` = its row index in the split).

    * ``train``: one plan -- :func:`pipelines.plan.sampling.train_indices`, the preset's ``train_resize``,
      :func:`multiscale_crop` in the pre-resized frame, ``out = (size, size)``, then (if ``flip`` and the preset
      allows it) :func:`flip_decision` and the label through ``flip_map``.
    * ``val``: one plan -- :func:`~pipelines.plan.sampling.val_indices`, ``eval_resize``, centre crop (or the whole
      squashed frame), never flipped.
    * ``test``: ``test_clips * test_crops`` plans, clip-major (``[c0-crop0, c0-crop1, ..., c1-crop0, ...]``):
      :func:`~pipelines.plan.sampling.multiclip_indices` (``test_sampling``), 1 view as val or 3 views
      (:func:`three_crops`, each ``size x size`` with no further resize). Never flipped.

    Epoch and seed only matter for the random rules; val/test ``"uniform"`` plans are the same every epoch.
    """
    n, t = int(num_frames), int(num_segments)
    src = (int(src_size[0]), int(src_size[1]))
    if src[0] < 1 or src[1] < 1:
        raise ClipError(f"clip {key!r}: frame size {src[1]}x{src[0]} is empty")
    out = (int(size), int(size))
    rng = clip_rng(seed, epoch, clip)
    if mode == "train":
        frames = sampling.train_indices(n, t, rng)
        rs = resize_shape(preset.train_resize, src, size)
        win = multiscale_crop(rs[0], rs[1], size, rng, scales=preset.scales, max_distort=preset.max_distort,
                              more_fix_crop=preset.more_fix_crop)
        do_flip = bool(flip and preset.flip_allowed and flip_decision(rng))
        return [ClipPlan(clip=int(clip), key=key, label=flip_label(label, do_flip, flip_map),
                         frames=tuple(int(i) for i in frames), src_size=src, resize=rs, crop=win, out=out,
                         flip=do_flip)]
    if mode not in ("val", "test"):
        raise ValueError(f"mode must be train, val or test, got {mode!r}")
    rs = resize_shape(preset.eval_resize, src, size)
    if mode == "val" or int(test_crops) == 1:
        wins = [center_crop(rs[0], rs[1], size, size) if preset.eval_center_crop else (0, 0, rs[1], rs[0])]
    elif int(test_crops) == 3 and 3 in preset.test_crops:
        wins = three_crops(rs[0], rs[1], size)
    else:
        raise ValueError(f"{preset.dataset}: test_crops={test_crops} is not offered "
                         f"(choose from {preset.test_crops})")
    if mode == "val":
        rows = sampling.val_indices(n, t)[None, :]
    else:
        rows = sampling.multiclip_indices(n, t, test_clips, sampling=test_sampling, rng=rng)
    plans = []
    for row in rows:
        frames = tuple(int(i) for i in row)
        for win in wins:
            plans.append(ClipPlan(clip=int(clip), key=key, label=int(label), frames=frames, src_size=src,
                                  resize=rs, crop=win, out=(win[3], win[2]), flip=False))
    return plans

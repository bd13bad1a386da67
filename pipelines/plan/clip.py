"""ClipPlan: the contract between the pure sampling/geometry functions and the loader backends.

The pure functions (``pipelines.plan.sampling``, ``pipelines.plan.geometry``) decide *everything* random about a clip
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

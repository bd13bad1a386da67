"""The DALI graph of the ``dali`` backend, and the host-side "reader part" that feeds it.

Two halves, as in DALI's EfficientNet example:

* **reader part** (plain Python/numpy, no DALI import): :func:`flatten_clips` turns a batch of
  :class:`~pipelines.plan.clip.ClipPlan` and their T encoded frames into *flat* per-frame arrays (batch = clips × T
  frames): the JPEG bytes, an integer decode window (the crop window of :func:`~pipelines.plan.clip.source_window`
  widened to whole pixels), the exact sub-pixel crop inside that window, the crop's size in the pre-resized frame,
  the mirror flag and a position tag. Every per-clip value is repeated T times, so one crop and one flip are
  shared by all T frames *by construction*.
* **processing part** (:func:`build_pipeline`): ``external_source`` → ``decoders.image_slice`` (ROI decode of
  the integer window; ``device="mixed"`` = nvJPEG on a GPU, ``"cpu"`` = libjpeg-turbo otherwise) →
  ``resize`` (sub-pixel ROI → ``out``, bilinear, antialiased like PIL's BILINEAR; or, ``two_step``, ROI → crop
  size → ``out``, the reference's two resamplings) →
  ``crop_mirror_normalize`` (flip, CHW, uint8; the consumer normalises: :func:`pipelines.plan.presets.normalize`).

JPEG decoding matches libjpeg-turbo/simplejpeg bit for bit (``jpeg_fancy_upsampling=True``, which also makes
nvJPEG upsample chroma like the CPU). Axis orders verified on DALI 2.4: ``image_slice(axis_names="WH")`` takes anchor ``(x, y)`` / shape ``(w, h)``;
``resize``'s ``roi_start``/``roi_end`` follow the tensor shape order, i.e. ``(y, x)``.

DALI is imported lazily (inside functions): importing it costs ~1 s and ~300 MB of RSS.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from pipelines.plan.clip import ClipPlan, source_window

#: ImageNet statistics (RGB, 0..1); the graph multiplies by 255 because it normalises uint8 pixels.

#: Extra source pixels decoded around the crop window so bilinear taps at its edges see real neighbours.
WINDOW_PAD = 0

INSTALL_HINT = "pip install .[dali]   (or: pip install nvidia-dali-cuda120==2.4.0)"


class BackendUnavailable(ImportError):
    """``backend="dali"`` was asked for but NVIDIA DALI cannot be imported; the message says how to install it."""


def import_dali():
    """Import and return ``nvidia.dali``; raise :class:`BackendUnavailable` naming the install command."""
    try:
        import nvidia.dali as dali  # noqa: PLC0415  (lazy on purpose)
    except ImportError as e:  # the wheel is missing or broken
        raise BackendUnavailable(
            f"backend='dali' needs NVIDIA DALI, which cannot be imported here ({e}). Install it with: {INSTALL_HINT}"
        ) from None
    return dali


def dali_gpu_count() -> int:
    """Number of CUDA devices DALI can use (0 on CPU-only machines; never raises there)."""
    import_dali()
    from nvidia.dali.backend import GetCUDADeviceCount  # noqa: PLC0415

    return int(GetCUDADeviceCount())


# ---------------------------------------------------------------------------------------------- reader part
def decode_window(plan: ClipPlan, pad: int | None = None) -> tuple[tuple[int, int, int, int], tuple[float, ...]]:
    """Integer decode window and the sub-pixel crop inside it, for ``plan``.

    Returns ``((x0, y0, w0, h0), (ry0, rx0, ry1, rx1))``: the integer window of the source JPEG to decode
    (the exact :func:`source_window` widened to whole pixels plus ``pad``, clamped to the frame), and the crop
    region relative to that window as ``resize`` ROI start/end in (y, x) order.
    """
    sh, sw = plan.src_size
    if pad is None:
        pad = WINDOW_PAD
    x, y, w, h = source_window(plan)
    x0 = max(0, math.floor(x + 1e-6) - pad)
    y0 = max(0, math.floor(y + 1e-6) - pad)
    x1 = min(sw, math.ceil(x + w - 1e-6) + pad)
    y1 = min(sh, math.ceil(y + h - 1e-6) + pad)
    roi = (y - y0, x - x0, y + h - y0, x + w - x0)
    return (x0, y0, x1 - x0, y1 - y0), roi


def two_step_pad(plan: ClipPlan) -> int:
    """Source pixels around the window that the reference's pre-resize filter reaches (antialias support)."""
    (sh, sw), (rh, rw) = plan.src_size, plan.resize
    return int(math.ceil(max(sw / rw, sh / rh, 1.0))) + 1


def flatten_clips(
    plans: Sequence[ClipPlan],
    frames: Sequence[Sequence[bytes]],
    positions: Sequence[int] | None = None,
    *,
    two_step: bool = False,
) -> tuple[list[np.ndarray], ...]:
    """The per-frame arrays one ``external_source`` batch is made of (flat layout: clips × T frames).

    Args:
        plans: the clips of the batch.
        frames: for each plan, its T encoded JPEGs (``bytes``/``memoryview``/uint8 arrays), in ``plan.frames``
            order.
        positions: each clip's position in the epoch (returned with the pixels so the host can match labels
            and plans to outputs); defaults to ``0..len(plans)-1``.

        two_step: for the graph's ``two_step`` mode. The decode window is widened by the pre-resize filter's
            reach (:func:`two_step_pad`) whenever the plan has a pre-resize or ``two_step`` is set.

    Returns:
        ``(encoded, anchor, shape, roi_start, roi_end, mid, mirror, position)``: lists of length ``sum(T)``;
        ``encoded`` uint8 1-D, ``anchor``/``shape`` int32 ``(x, y)``/``(w, h)``, ``roi_*`` float32 ``(y, x)``,
        ``mid`` float32 ``(h, w)`` of the crop in the pre-resized frame, ``mirror`` int32 scalar, ``position``
        int64 scalar.
    """
    if positions is None:
        positions = range(len(plans))
    enc, anc, shp, rs, re_, mid, mir, pos = [], [], [], [], [], [], [], []
    for plan, jpegs, p in zip(plans, frames, positions, strict=True):
        if len(jpegs) != len(plan.frames):
            raise ValueError(f"clip {plan.key!r}: {len(jpegs)} encoded frames for {len(plan.frames)} indices")
        pre = tuple(plan.resize) != tuple(plan.src_size)  # the reference's pre-resize filter reaches outside
        (x0, y0, w0, h0), roi = decode_window(plan, two_step_pad(plan) if (two_step or pre) else None)
        a = np.array((x0, y0), np.int32)
        s = np.array((w0, h0), np.int32)
        r0 = np.array(roi[:2], np.float32)
        r1 = np.array(roi[2:], np.float32)
        md = np.array((plan.crop[3], plan.crop[2]), np.float32)
        m = np.array(int(plan.flip), np.int32)
        q = np.array(int(p), np.int64)
        for jpeg in jpegs:
            enc.append(jpeg if isinstance(jpeg, np.ndarray) else np.frombuffer(jpeg, np.uint8))
            anc.append(a)
            shp.append(s)
            rs.append(r0)
            re_.append(r1)
            mid.append(md)
            mir.append(m)
            pos.append(q)
    return enc, anc, shp, rs, re_, mid, mir, pos


# ------------------------------------------------------------------------------------------ processing part
OUTPUT_NAMES = ("frames", "position")


class _WithoutMid:
    """``source`` with the ``mid`` array (index 5) dropped, for the one-step graph."""

    def __init__(self, source):
        self.source = source

    def __call__(self, info):
        out = self.source(info)
        return out[:5] + out[6:]


def build_pipeline(
    source: Callable,
    *,
    max_frames: int,
    out_size: tuple[int, int],
    gpu: bool,
    device_id: int | None,
    num_threads: int = 2,
    prefetch: int = 2,
    antialias: bool = True,
    two_step: bool = False,
    seed: int = 0,
):
    """Build (not yet run) the DALI pipeline executing flat frame batches.

    ``source`` is a batch callback ``source(batch_info) -> flatten_clips(...)`` that raises ``StopIteration``
    at the end of an epoch; it may return fewer than ``max_frames`` frames (last eval batch).
    ``two_step=False`` resamples the decoded window once, straight to ``out``; ``two_step=True`` resamples it to
    the crop's size in the pre-resized frame first and then to ``out``, as the reference does (closer pixels,
    one more resize). ``gpu=True`` decodes with nvJPEG (``device="mixed"``) and runs the rest on GPU ``device_id``;
    otherwise everything runs on the CPU and ``device_id`` must be ``None``. Outputs (see :data:`OUTPUT_NAMES`):
    ``frames`` (N, 3, H, W) uint8; and ``position``
    (N,) int64 on the CPU (each frame's tag from the source, to check the batch order).

    On the CPU, DALI's resize rather than its decoder bounds this graph (``make profile`` measures it).
    """
    dali = import_dali()
    import nvidia.dali.fn as fn  # noqa: PLC0415
    import nvidia.dali.types as types  # noqa: PLC0415

    if not gpu and device_id is not None:
        raise ValueError("a CPU DALI pipeline needs device_id=None")
    out_h, out_w = out_size

    @dali.pipeline_def(
        batch_size=max_frames,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch,
        seed=seed,
    )
    def clip_pipeline():
        dtypes = [types.UINT8, types.INT32, types.INT32, types.FLOAT, types.FLOAT, types.FLOAT, types.INT32,
                  types.INT64]
        if two_step:
            enc, anchor, shape, roi_start, roi_end, mid, mirror, position = fn.external_source(
                source=source, num_outputs=8, batch=True, batch_info=True, dtype=dtypes)
        else:  # ``mid`` is not needed: leave it out (DALI warns about unused outputs)
            enc, anchor, shape, roi_start, roi_end, mirror, position = fn.external_source(
                source=_WithoutMid(source), num_outputs=7, batch=True, batch_info=True,
                dtype=dtypes[:5] + dtypes[6:])
        img = fn.decoders.image_slice(
            enc,
            anchor,
            shape,
            device="mixed" if gpu else "cpu",
            output_type=types.RGB,
            axis_names="WH",
            jpeg_fancy_upsampling=True,
        )
        if two_step:  # the reference's two resamplings: source window -> crop size -> out
            img = fn.resize(img, size=mid, roi_start=roi_start, roi_end=roi_end, interp_type=types.INTERP_LINEAR,
                            antialias=antialias)
            img = fn.resize(img, size=(out_h, out_w), interp_type=types.INTERP_LINEAR, antialias=antialias)
        else:  # one resampling: source window -> out
            img = fn.resize(img, size=(out_h, out_w), roi_start=roi_start, roi_end=roi_end,
                            interp_type=types.INTERP_LINEAR, antialias=antialias)
        img = fn.crop_mirror_normalize(img, mirror=mirror, dtype=types.UINT8, output_layout="CHW")
        return img, position

    return clip_pipeline()

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
    (the exact :func:`source_window` widened to whole pixels plus ``pad`` (None: 0), clamped to the frame), and the crop
    region relative to that window as ``resize`` ROI start/end in (y, x) order.
    """
    sh, sw = plan.src_size
    pad = pad or 0
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
    full_frame: bool = False,
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
        full_frame: for ``decode="full"``: the whole frame is decoded, so ``roi_*`` are given in frame
            coordinates (the window's origin added) and the resampling reads real pixels around the crop.

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
        off = (y0, x0) if full_frame else (0, 0)
        r0 = np.array((roi[0] + off[0], roi[1] + off[1]), np.float32)
        r1 = np.array((roi[2] + off[0], roi[3] + off[1]), np.float32)
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
OUTPUT_NAMES = ("frames", "position", "row")
#: What a source returns, in order: flatten_clips's arrays, then each frame's row (the clip actually read).
SOURCE_FIELDS = ("encoded", "anchor", "shape", "roi_start", "roi_end", "mid", "mirror", "position", "row")
FEEDS = ("callback", "parallel")


class Select:
    """``source`` with only the fields the graph consumes (DALI warns about unused outputs); picklable, so it
    can be sent to the parallel external source's worker processes."""

    def __init__(self, source, fields: Sequence[str]):
        self.source, self.index = source, [SOURCE_FIELDS.index(f) for f in fields]

    def __call__(self, info):
        out = self.source(info)
        return tuple(out[i] for i in self.index)


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
    decode: str = "roi",
    hw_decoder_load: float | None = None,
    feed: str = "callback",
    py_workers: int = 2,
):
    """Build (not yet run) the DALI pipeline executing flat frame batches.

    ``source`` is a batch callback ``source(batch_info) -> (*flatten_clips(...), rows)`` (fields:
    :data:`SOURCE_FIELDS`); it may return fewer than ``max_frames`` frames (a short last eval batch).
    ``decode="roi"`` decodes only the integer window (``decoders.image_slice``); ``"full"`` decodes the whole
    frame (``decoders.image``: on a GPU the hardware JPEG engines take whole frames) and the resize crops it
    (``roi_*`` then in frame coordinates: ``flatten_clips(full_frame=True)``).
    ``two_step=False`` resamples the decoded window once, straight to ``out``; ``two_step=True`` resamples it to
    the crop's size in the pre-resized frame first and then to ``out``, as the reference does (closer pixels,
    one more resize). ``gpu=True`` decodes with nvJPEG (``device="mixed"``, ``hw_decoder_load`` = the share of
    frames for the hardware decoder, DALI's default when ``None``) and runs the rest on GPU ``device_id``;
    otherwise everything runs on the CPU and ``device_id`` must be ``None``. ``feed="parallel"`` runs ``source``
    in ``py_workers`` spawned processes (DALI's parallel external source: ``source`` must be picklable and a pure
    function of ``batch_info.iteration``), ``"callback"`` in the thread that runs the pipeline.
    Outputs (:data:`OUTPUT_NAMES`): ``frames`` (N, 3, H, W) uint8; ``position`` and ``row`` (N,) int64 on the CPU.

    On the CPU, DALI's resize rather than its decoder bounds this graph (``make profile`` measures it).
    """
    dali = import_dali()
    import nvidia.dali.fn as fn  # noqa: PLC0415
    import nvidia.dali.types as types  # noqa: PLC0415

    if not gpu and device_id is not None:
        raise ValueError("a CPU DALI pipeline needs device_id=None")
    if decode not in ("roi", "full"):
        raise ValueError(f"decode must be 'roi' or 'full', got {decode!r}")
    if feed not in FEEDS:
        raise ValueError(f"dali backend: feed must be one of {', '.join(FEEDS)}, got {feed!r}")
    out_h, out_w = out_size
    fields = (["encoded"] + (["anchor", "shape"] if decode == "roi" else []) + ["roi_start", "roi_end"]
              + (["mid"] if two_step else []) + ["mirror", "position", "row"])
    kinds = {"encoded": types.UINT8, "anchor": types.INT32, "shape": types.INT32, "roi_start": types.FLOAT,
             "roi_end": types.FLOAT, "mid": types.FLOAT, "mirror": types.INT32, "position": types.INT64,
             "row": types.INT64}
    parallel = feed == "parallel"
    extra = dict(py_num_workers=max(1, int(py_workers)), py_start_method="spawn") if parallel else {}
    dec_kw = dict(device="mixed" if gpu else "cpu", output_type=types.RGB, jpeg_fancy_upsampling=True)
    if gpu and hw_decoder_load is not None:
        dec_kw["hw_decoder_load"] = float(hw_decoder_load)

    @dali.pipeline_def(batch_size=max_frames, num_threads=num_threads, device_id=device_id,
                       prefetch_queue_depth=prefetch, seed=seed, **extra)
    def clip_pipeline():
        src_kw = dict(parallel=True, prefetch_queue_depth=max(1, prefetch)) if parallel else {}
        got = dict(zip(fields, fn.external_source(
            source=Select(source, fields), num_outputs=len(fields), batch=True, batch_info=True,
            dtype=[kinds[f] for f in fields], **src_kw)))
        if decode == "roi":
            img = fn.decoders.image_slice(got["encoded"], got["anchor"], got["shape"], axis_names="WH", **dec_kw)
        else:
            img = fn.decoders.image(got["encoded"], **dec_kw)
        roi = dict(roi_start=got["roi_start"], roi_end=got["roi_end"], interp_type=types.INTERP_LINEAR,
                   antialias=antialias)
        if two_step:  # the reference's two resamplings: source window -> crop size -> out
            img = fn.resize(img, size=got["mid"], **roi)
            img = fn.resize(img, size=(out_h, out_w), interp_type=types.INTERP_LINEAR, antialias=antialias)
        else:  # one resampling: source window -> out
            img = fn.resize(img, size=(out_h, out_w), **roi)
        img = fn.crop_mirror_normalize(img, mirror=got["mirror"], dtype=types.UINT8, output_layout="CHW")
        return img, got["position"], got["row"]

    return clip_pipeline()

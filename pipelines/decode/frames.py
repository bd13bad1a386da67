"""JPEG decoding and the execution of a :class:`~pipelines.plan.clip.ClipPlan` on decoded frames.

Two executors produce a clip as uint8 ``(T, 3, H, W)``:

* :func:`run_plan_pil` -- the **reference** (the original code's operations on PIL images): resize to
  ``plan.resize`` with ``Image.BILINEAR`` (torchvision ``Resize``/``GroupScale`` call exactly this), crop, resize
  to ``plan.out`` with ``Image.BILINEAR`` (``GroupMultiScaleCrop``), mirror. Each step is skipped when it is the
  identity.
* :func:`run_plan_torch` -- the same steps with ``torch.nn.functional.interpolate(mode="bilinear",
  antialias=True, align_corners=False)`` on uint8 channels-last tensors (PyTorch's vectorised uint8 path that
  reproduces PIL's separable antialiased filter): faster than PIL (docs/benchmarks.md), within 1 grey level per
  resize step of the reference on a few pixels in a thousand (tests state the bound). Also runs on CUDA tensors.
  With ``fused=True`` (or ``"auto"`` where the reference resamples twice) it resizes once, from the crop window
  mapped to the source. Writing into channels-last memory avoids a layout pass.

Decoding uses libjpeg-turbo through ``simplejpeg`` (simplejpeg, ``torchvision.io.decode_jpeg`` and PIL give
bit-identical pixels here: they all link libjpeg-turbo with the same ISLOW DCT and fancy upsampling).
``strict=True`` turns libjpeg warnings (truncated data) into errors. The optional DCT-domain downscale (``dct_scale=True``) decodes
at 1/2, 1/4 or 1/8 size when the pre-resize shrinks the frame by at least that much; it changes pixels, so it is
off by default.
"""
from __future__ import annotations

import numpy as np

from pipelines.plan.clip import ClipPlan, source_window

_BILINEAR = None


def _pil():
    global _BILINEAR
    from PIL import Image

    _BILINEAR = Image.BILINEAR
    return Image


def decode_jpeg(data, *, out: np.ndarray | None = None, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode JPEG bytes (any buffer) to uint8 RGB ``(H, W, 3)`` with simplejpeg (ValueError if corrupt).

    ``out``: decode into this preallocated array (must have the decoded shape). ``min_size``: (h, w) lower
    bound for a DCT-domain downscale (1/2, 1/4, 1/8); ``None`` decodes at full size. The bytes must also pass
    the one JPEG rule's end marker check (:func:`pipelines.decode.jpeg.check_eoi`), as the converter's did.
    """
    import simplejpeg

    from pipelines.decode.jpeg import check_eoi

    check_eoi(data)
    if min_size is None:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, buffer=out)
    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_height=int(min_size[0]),
                                  min_width=int(min_size[1]), buffer=out)


def dct_min_size(plan: ClipPlan) -> tuple[int, int] | None:
    """The ``min_size`` for a DCT-domain downscale of ``plan``'s frames, or None when it cannot help (the
    pre-resize does not shrink the frame by at least 2 on both axes)."""
    (sh, sw), (rh, rw) = plan.src_size, plan.resize
    if sh >= 2 * rh and sw >= 2 * rw:
        return (rh, rw)
    return None


def run_plan_pil(images, plan: ClipPlan) -> np.ndarray:
    """Reference executor on PIL RGB images (one per ``plan.frames``) -> uint8 ``(T, 3, H, W)``."""
    Image = _pil()
    oh, ow = plan.out
    out = np.empty((len(images), 3, oh, ow), dtype=np.uint8)
    x, y, w, h = plan.crop
    for t, img in enumerate(images):
        if img.mode != "RGB":
            img = img.convert("RGB")
        if (img.size[1], img.size[0]) != tuple(plan.resize):
            img = img.resize((plan.resize[1], plan.resize[0]), Image.BILINEAR)
        if (x, y, w, h) != (0, 0, img.size[0], img.size[1]):
            img = img.crop((x, y, x + w, y + h))
        if (h, w) != (oh, ow):
            img = img.resize((ow, oh), Image.BILINEAR)
        if plan.flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        out[t] = np.asarray(img).transpose(2, 0, 1)
    return out


def run_plan_pil_arrays(frames: np.ndarray, plan: ClipPlan) -> np.ndarray:
    """:func:`run_plan_pil` on decoded uint8 ``(T, H, W, 3)`` frames (bit-identical to the folder backend)."""
    Image = _pil()
    return run_plan_pil([Image.fromarray(f) for f in frames], plan)


def fused_window(plan: ClipPlan, height: int, width: int) -> tuple[int, int, int, int]:
    """:func:`~pipelines.plan.clip.source_window` of ``plan`` rounded to whole pixels of a ``height x width`` decoded
    frame (``src_size`` scaled when the frame was DCT-downscaled), clamped to the frame: ``(x, y, w, h)``."""
    sx, sy, sw, sh = source_window(plan)
    fy, fx = height / plan.src_size[0], width / plan.src_size[1]
    x0, y0 = max(0, round(sx * fx)), max(0, round(sy * fy))
    x1, y1 = min(width, round((sx + sw) * fx)), min(height, round((sy + sh) * fy))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def resamples_twice(plan: ClipPlan, height: int | None = None, width: int | None = None) -> bool:
    """Whether the reference resamples ``plan`` twice: a pre-resize of the (``height x width``, default
    ``src_size``) frame *and* a crop that is rescaled to ``plan.out`` (Jester/EgoGesture train crops other than
    ``size x size``). Val/test views and SSv2 train crops resample at most once."""
    h, w = (plan.src_size if height is None else (height, width))
    x, y, cw, ch = plan.crop
    return (h, w) != tuple(plan.resize) and (ch, cw) != tuple(plan.out)


def run_plan_torch(frames, plan: ClipPlan, out=None, *, fused: bool | str = False):
    """Fast executor: uint8 ``(T, H, W, 3)`` (numpy or torch, any device) -> uint8 torch ``(T, 3, H, W)``.

    ``out``: optional preallocated uint8 tensor ``(T, 3, H, W)`` to write into (e.g. a slot of a batch; any
    memory layout -- a channels-last slot saves the layout copy).
    ``fused``: one resize from the crop window mapped back to the decoded frame (:func:`fused_window`, whole
    pixels) straight to ``plan.out`` instead of pre-resize + crop + resize -- the ROI semantics of the DALI
    backend; cheaper, and different pixels (a resampling and up to half a source pixel of shift; see tests).
    ``fused="auto"``: fused only where the reference resamples twice (:func:`resamples_twice`), which is where
    it saves a whole resize; elsewhere the reference's order (within 2 grey levels of PIL).
    """
    if fused == "auto":
        fused = resamples_twice(plan, frames.shape[1], frames.shape[2])
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
    x = t.permute(0, 3, 1, 2)  # (T, 3, H, W) view, channels-last memory
    cpu = x.device.type == "cpu"  # the uint8 antialias kernels are CPU-only; CUDA resamples in float32

    def resize(v, size):
        if cpu:
            return F.interpolate(v, size=size, mode="bilinear", antialias=True, align_corners=False)
        v = F.interpolate(v.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        return v.round_().clamp_(0, 255).to(torch.uint8)

    if fused:
        cx, cy, cw, ch = fused_window(plan, x.shape[-2], x.shape[-1])
    else:
        if tuple(x.shape[-2:]) != tuple(plan.resize):
            x = resize(x, tuple(plan.resize))
        cx, cy, cw, ch = plan.crop
    x = x[:, :, cy:cy + ch, cx:cx + cw]
    if (ch, cw) != tuple(plan.out):
        if out is not None and cpu and not plan.flip and _resize_into(x, out):
            return out
        x = resize(x, tuple(plan.out))
    if plan.flip:
        x = x.flip(-1)
    if out is None:
        return x.contiguous()
    out.copy_(x)
    return out


def _resize_into(x, out) -> bool:
    """Last resize written straight into ``out`` (saves a layout copy); False if this torch lacks the op."""
    import torch

    try:
        torch.ops.aten._upsample_bilinear2d_aa.out(x, list(out.shape[-2:]), False, None, None, out=out)
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - other torch builds
        return False
    return True


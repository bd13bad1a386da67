"""numba kernels of the ``ffcv`` backend's clip decoder (pure functions; imported only by that backend).

Resampling is PIL's ``Image.resize(..., BILINEAR)`` (the reference, :func:`pipelines.decode.frames.run_plan_pil`)
re-implemented: the same triangle filter widened by the scale (antialias), the same 22-bit fixed-point
coefficients and rounding, horizontal pass then vertical pass with an 8-bit intermediate. Only the pixels
that survive the crop are computed (the pre-resize is evaluated on the crop window alone, which is exact
because every output pixel of a separable resize depends only on its own row/column coefficients).

:func:`jpeg_size` and :func:`has_eoi` mirror the one JPEG rule (:mod:`pipelines.decode.jpeg`) because numba cannot
call Python; tests/test_jpeg.py proves them equal to it on the same corpus.
"""
from __future__ import annotations

import numpy as np
from numba import njit

PRECISION_BITS = 22  # PIL: 32 - 8 - 2
_HALF = 1 << (PRECISION_BITS - 1)


@njit(nogil=True, cache=False)
def coeffs(in_size, out_size, lo, hi):
    """PIL bilinear coefficients of output pixels ``[lo, hi)`` of a resize ``in_size -> out_size``:
    ``(bounds (n, 2): first input pixel and tap count, weights (n, K) int64 fixed point)``."""
    scale = in_size / out_size
    fscale = scale if scale > 1.0 else 1.0
    support = fscale
    ksize = int(np.ceil(support)) * 2 + 1
    n = hi - lo
    bounds = np.zeros((n, 2), np.int64)
    kk = np.zeros((n, ksize), np.int64)
    tmp = np.zeros(ksize, np.float64)
    ss = 1.0 / fscale
    for i in range(n):
        center = (lo + i + 0.5) * scale
        xmin = int(center - support + 0.5)
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        ww = 0.0
        for x in range(xmax):
            t = (x + xmin - center + 0.5) * ss
            if t < 0.0:
                t = -t
            w = 1.0 - t if t < 1.0 else 0.0
            tmp[x] = w
            ww += w
        for x in range(xmax):
            v = tmp[x] / ww if ww != 0.0 else 0.0
            if v < 0:
                kk[i, x] = int(-0.5 + v * (1 << PRECISION_BITS))
            else:
                kk[i, x] = int(0.5 + v * (1 << PRECISION_BITS))
        bounds[i, 0] = xmin
        bounds[i, 1] = xmax
    return bounds, kk


@njit(nogil=True, cache=False, inline="always")
def _clip8(v):
    v >>= PRECISION_BITS
    if v < 0:
        return 0
    if v > 255:
        return 255
    return v


@njit(nogil=True, cache=False)
def hpass(src, r0, r1, bounds, kk):
    """Rows ``[r0, r1)`` of ``src`` (H, W, 3) resampled horizontally -> (r1 - r0, n, 3) uint8 (int32
    accumulators, as PIL: 255 * 2**22 * sum|w| stays below 2**31)."""
    n = bounds.shape[0]
    out = np.empty((r1 - r0, n, 3), np.uint8)
    k32 = kk.astype(np.int32)
    for r in range(r1 - r0):
        row = src[r0 + r]
        for i in range(n):
            xmin = bounds[i, 0]
            a0 = np.int32(_HALF)
            a1 = np.int32(_HALF)
            a2 = np.int32(_HALF)
            for k in range(bounds[i, 1]):
                w = k32[i, k]
                a0 += np.int32(row[xmin + k, 0]) * w
                a1 += np.int32(row[xmin + k, 1]) * w
                a2 += np.int32(row[xmin + k, 2]) * w
            out[r, i, 0] = _clip8(a0)
            out[r, i, 1] = _clip8(a1)
            out[r, i, 2] = _clip8(a2)
    return out


@njit(nogil=True, cache=False)
def vpass(src, shift, bounds, kk):
    """``src`` (rows from input row ``shift`` on, W, 3; contiguous) resampled vertically -> (n, W, 3) uint8;
    the inner loop runs over a whole row (W * 3 contiguous values) so it vectorises."""
    n = bounds.shape[0]
    w3 = src.shape[1] * 3
    flat = src.reshape(src.shape[0], w3)
    out = np.empty((n, w3), np.uint8)
    acc = np.empty(w3, np.int32)
    k32 = kk.astype(np.int32)
    for i in range(n):
        acc[:] = _HALF
        y0 = bounds[i, 0] - shift
        for k in range(bounds[i, 1]):
            w = k32[i, k]
            row = flat[y0 + k]
            for x in range(w3):
                acc[x] += np.int32(row[x]) * w
        for x in range(w3):
            out[i, x] = _clip8(acc[x])
    return out.reshape(n, src.shape[1], 3)


@njit(nogil=True, cache=False)
def resize_window(src, out_h, out_w, y0, y1, x0, x1):
    """Pixels ``[y0, y1) x [x0, x1)`` of ``src`` (H, W, 3) resized to (out_h, out_w) as PIL would
    (each pass skipped when its size is unchanged, like PIL's ``need_horizontal``/``need_vertical``)."""
    h, w = src.shape[0], src.shape[1]
    need_v = out_h != h
    need_h = out_w != w
    if need_v:
        vb, vk = coeffs(h, out_h, y0, y1)
        r0 = vb[0, 0]
        r1 = vb[y1 - y0 - 1, 0] + vb[y1 - y0 - 1, 1]
    else:
        r0, r1 = y0, y1
    if need_h:
        hb, hk = coeffs(w, out_w, x0, x1)
        # the horizontal pass as a vertical pass over the transposed rows: the same sums and rounding, but
        # the inner loop runs over contiguous memory (~2x faster than the gather loop of ``hpass``)
        tt = vpass(np.ascontiguousarray(src[r0:r1].transpose(1, 0, 2)), 0, hb, hk)
        tmp = np.ascontiguousarray(tt.transpose(1, 0, 2))
    else:
        tmp = np.ascontiguousarray(src[r0:r1, x0:x1])
    if need_v:
        return vpass(tmp, r0, vb, vk)
    return tmp


@njit(nogil=True, cache=False)
def jpeg_size(buf):
    """Mirror of :func:`pipelines.decode.jpeg.jpeg_header`'s walk: (height, width) from the SOF marker of JPEG
    bytes; (-1, -1) when the stream is not a JPEG or has none."""
    n = buf.shape[0]
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return -1, -1
    i = 2
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return -1, -1
        m = buf[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m == 0xD8 or m == 0x01 or (0xD0 <= m <= 0xD7):
            i += 2
            continue
        seglen = (np.int64(buf[i + 2]) << 8) | np.int64(buf[i + 3])
        if (0xC0 <= m <= 0xCF) and m != 0xC4 and m != 0xC8 and m != 0xCC:
            if i + 9 > n:
                return -1, -1
            hh = (np.int64(buf[i + 5]) << 8) | np.int64(buf[i + 6])
            ww = (np.int64(buf[i + 7]) << 8) | np.int64(buf[i + 8])
            return hh, ww
        if m == 0xDA or m == 0xD9:
            return -1, -1
        i += 2 + seglen
    return -1, -1


@njit(nogil=True, cache=False)
def has_eoi(buf):
    """Mirror of :func:`pipelines.decode.jpeg.check_eoi`: EOI last, trailing zero padding tolerated."""
    e = buf.shape[0]
    while e > 4 and buf[e - 1] == 0:
        e -= 1
    return e >= 4 and buf[e - 2] == 0xFF and buf[e - 1] == 0xD9


@njit(nogil=True, cache=False)
def frame_code(buf, sh, sw):
    """The one JPEG rule on a frame of a clip stored ``sh x sw``: 0 good, 1 not a JPEG / no frame header, 2 another
    size, 3 no EOI (the loader's ``_REASONS``)."""
    hh, ww = jpeg_size(buf)
    if hh < 0:
        return 1
    if hh != sh or ww != sw:
        return 2
    if not has_eoi(buf):
        return 3
    return 0


@njit(nogil=True, cache=False)
def place(frame, dst, rh, rw, cx, cy, cw, ch, oh, ow, flip):
    """One decoded frame through its plan into ``dst`` (3, oh, ow): pre-resize to ``rh x rw`` (the crop window
    only), crop, resize to ``oh x ow``, mirror -- :func:`pipelines.decode.frames.run_plan_pil`'s steps."""
    sh, sw = frame.shape[0], frame.shape[1]
    if rh == sh and rw == sw:
        crop = frame[cy:cy + ch, cx:cx + cw]
    else:
        crop = resize_window(frame, rh, rw, cy, cy + ch, cx, cx + cw)
    if ch == oh and cw == ow:
        write_frame(crop, dst, flip)
    else:
        write_frame(resize_window(crop, oh, ow, 0, oh, 0, ow), dst, flip)


@njit(nogil=True, cache=False)
def u32(buf, at):
    return (np.int64(buf[at]) | (np.int64(buf[at + 1]) << 8) | (np.int64(buf[at + 2]) << 16)
            | (np.int64(buf[at + 3]) << 24))


@njit(nogil=True, cache=False)
def write_frame(img, dst, flip):
    """(H, W, 3) -> ``dst`` (3, H, W), mirrored when ``flip``."""
    h, w = img.shape[0], img.shape[1]
    for c in range(3):
        for y in range(h):
            for x in range(w):
                dst[c, y, x] = img[y, w - 1 - x, c] if flip else img[y, x, c]

"""ACTION's motion squeeze as one Triton pass each way (the fused path's p3 front; :mod:`action.fused_action`
holds the shift and the gate apply, :mod:`action.fused_motion_bn` the batch norm and the pooled means).

The motion excitation only ever reads the batch-normed squeeze ``m = γ·(y - μ)/σ + β`` through two spatial
means per frame and channel: ``mean_p(m)`` and ``mean_p(m · A)``, with ``A`` the pooled depthwise 3×3 conv
(:func:`action.temporal._pooled_conv_weights`). Both are affine in per-frame sums of ``y``: ``A`` is a sum of
the nine tap weights over border masks (tap row 0 never reads the last input row, row 2 never the first; the
same for columns), so ``Σ_p y·A = Σ_taps w_tap · Σ_p y·mask_tap``. Hence:

- ``motion_stats_fwd``: one pass over the squeeze conv's output ``z`` forms ``y[t] = z0[t-1] + z1[t] +
  z2[t+1]`` (its three row groups: the shifted input's squeeze) and the channel mean ``s`` the same way, writes
  ``y`` (kept for the backward) and ``s`` (p1's input), and per frame the nine masked sums and the centred sum
  of squares (Chan's merge over pixel tiles) of every ``y`` channel;
- ``motion_stats_bwd``: the squeeze gradient ``g_z`` in one pass from the statistics' gradients, ``y`` and
  ``g_s`` (the time-shift transpose included), ready for the 1×1 conv's cuDNN backward.

So the motion path never builds the normalised tensor, its batch-norm backward or per-slice copies. Both passes
are PyTorch custom operators (``action_net::motion_stats`` and its backward) with fake implementations, like
:mod:`action.fused_action`'s, so ``torch.compile(fullgraph=True)`` traces them.
"""
from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["motion_stats"]

# (BLOCK_P, BLOCK_R): pixels x squeeze channels per program; small ones under the CPU interpreter so that the
# tests' shapes cross block edges in both
GPU_BLOCKS = (64, 32)
CPU_BLOCKS = (16, 4)
_NSTAT = 10  # per (frame, channel): the 9 masked tap sums (row-major taps), then the centred M2
_FULL = 4  # the unmasked tap (1, 1): the plain sum


@functools.lru_cache(maxsize=None)
def _kernels():
    """``(motion_stats_fwd, motion_stats_bwd)``, built on first use (see :func:`action.fused_action._kernels`
    for why builtins only, and why the combine function is a module global)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _tl_add(a, b):
        return a + b

    @triton.jit
    def _tap_row(ptr, R, mask, c0, c2):  # Σ_k g_k · colmask_k for one tap row of the statistics' gradient
        g0 = tl.load(ptr, mask=mask, other=0.0)[None, :]
        g1 = tl.load(ptr + R, mask=mask, other=0.0)[None, :]
        g2 = tl.load(ptr + 2 * R, mask=mask, other=0.0)[None, :]
        return g0 * c0 + g1 + g2 * c2

    globals().update(_tl_add=_tl_add, _tap_row=_tap_row)
    return _build_fwd(triton, tl), _build_bwd(triton, tl)


def _build_fwd(triton, tl):
    @triton.jit
    def motion_stats_fwd(z_ptr, y_ptr, s_ptr, st_ptr, R, T, H, W, szf, szc, szp, syf, syc, syp,
                         BP: tl.constexpr, BR: tl.constexpr):
        # program (frame f, squeeze-channel block): loops over the frame's pixels, statistics in registers
        f = tl.program_id(0)
        t = f % T
        f64 = f.to(tl.int64)
        p_n = H * W
        oj = tl.program_id(1) * BR + tl.arange(0, BR)
        mr = oj < R
        has_s = (R >= tl.program_id(1) * BR) & (R < tl.program_id(1) * BR + BR)
        a00 = tl.full([BR], 0.0, tl.float32)
        a01, a02, a10, a11, a12, a20, a21, a22 = a00, a00, a00, a00, a00, a00, a00, a00
        mean = a00
        m2 = a00
        n_a = 0.0
        for p0 in range(0, p_n, BP):
            op = p0 + tl.arange(0, BP)
            mp = op < p_n
            m = mp[:, None] & (oj < R + 1)[None, :]
            # y[t] = z0[t-1] + z1[t] + z2[t+1]: row group k of z starts at channel k·(R+1)
            zo = f64 * szf + op[:, None] * szp + oj[None, :] * szc
            v = tl.load(z_ptr + zo + (R + 1) * szc, mask=m, other=0.0).to(tl.float32)
            v += tl.load(z_ptr + zo - szf, mask=m & (t > 0), other=0.0).to(tl.float32)
            v += tl.load(z_ptr + zo + szf + 2 * (R + 1) * szc, mask=m & (t < T - 1), other=0.0).to(tl.float32)
            my = mp[:, None] & mr[None, :]
            tl.store(y_ptr + f64 * syf + op[:, None] * syp + oj[None, :] * syc, v.to(y_ptr.dtype.element_ty),
                     mask=my)
            # row R is the channel mean s (p1's input): one program column holds it
            srow = tl.reduce(tl.where(oj[None, :] == R, v, 0.0), 1, _tl_add)
            tl.store(s_ptr + f64 * p_n + op, srow.to(s_ptr.dtype.element_ty), mask=mp & has_s)
            row = op // W
            col = op % W
            c0 = (col < W - 1).to(tl.float32)[:, None]
            c2 = (col > 0).to(tl.float32)[:, None]
            vy = tl.where(my, v, 0.0)
            v0 = vy * (row < H - 1).to(tl.float32)[:, None]
            v2 = vy * (row > 0).to(tl.float32)[:, None]
            a00 += tl.reduce(v0 * c0, 0, _tl_add)
            a01 += tl.reduce(v0, 0, _tl_add)
            a02 += tl.reduce(v0 * c2, 0, _tl_add)
            a10 += tl.reduce(vy * c0, 0, _tl_add)
            a12 += tl.reduce(vy * c2, 0, _tl_add)
            a20 += tl.reduce(v2 * c0, 0, _tl_add)
            a21 += tl.reduce(v2, 0, _tl_add)
            a22 += tl.reduce(v2 * c2, 0, _tl_add)
            # Chan et al.: the tile's sum and centred M2 merged into the running ones (no E[y²] - μ²)
            cnt = tl.minimum(BP, p_n - p0).to(tl.float32)
            sb = tl.reduce(vy, 0, _tl_add)
            a11 += sb
            dev = tl.where(my, vy - (sb / cnt)[None, :], 0.0)
            delta = sb / cnt - mean
            n_b = n_a + cnt
            mean += delta * (cnt / n_b)
            m2 += tl.reduce(dev * dev, 0, _tl_add) + delta * delta * (n_a * cnt / n_b)
            n_a = n_b
        base = f64 * 10 * R + oj
        tl.store(st_ptr + base, a00, mask=mr)
        tl.store(st_ptr + base + R, a01, mask=mr)
        tl.store(st_ptr + base + 2 * R, a02, mask=mr)
        tl.store(st_ptr + base + 3 * R, a10, mask=mr)
        tl.store(st_ptr + base + 4 * R, a11, mask=mr)
        tl.store(st_ptr + base + 5 * R, a12, mask=mr)
        tl.store(st_ptr + base + 6 * R, a20, mask=mr)
        tl.store(st_ptr + base + 7 * R, a21, mask=mr)
        tl.store(st_ptr + base + 8 * R, a22, mask=mr)
        tl.store(st_ptr + base + 9 * R, m2, mask=mr)

    return motion_stats_fwd


def _build_bwd(triton, tl):
    @triton.jit
    def motion_stats_bwd(gs_ptr, gst_ptr, y_ptr, st_ptr, gz_ptr, R, T, H, W, syf, syc, syp, sgf, sgc, sgp,
                         BP: tl.constexpr, BR: tl.constexpr):
        f = tl.program_id(0)
        b = tl.program_id(1)
        t = f % T
        f64 = f.to(tl.int64)
        p_n = H * W
        op = b * BP + tl.arange(0, BP)
        oj = tl.program_id(2) * BR + tl.arange(0, BR)
        mp = op < p_n
        mr = oj < R
        m = mp[:, None] & (oj < R + 1)[None, :]
        row = op // W
        col = op % W
        r0 = (row < H - 1).to(tl.float32)[:, None]
        r2 = (row > 0).to(tl.float32)[:, None]
        c0 = (col < W - 1).to(tl.float32)[:, None]
        c2 = (col > 0).to(tl.float32)[:, None]
        # g_z[t] in row group k is g_yy[t + 1 - k] (the transpose of the forward's time shifts), zero outside
        for k in tl.static_range(3):
            ok = (t + 1 - k >= 0) & (t + 1 - k < T)
            src = f64 + 1 - k
            base = src * 10 * R + oj
            mk = mr & ok
            gy = r0 * _tap_row(gst_ptr + base, R, mk, c0, c2) + _tap_row(gst_ptr + base + 3 * R, R, mk, c0, c2) \
                + r2 * _tap_row(gst_ptr + base + 6 * R, R, mk, c0, c2)
            mean = tl.load(st_ptr + base + 4 * R, mask=mk, other=0.0) / p_n
            yv = tl.load(y_ptr + src * syf + op[:, None] * syp + oj[None, :] * syc,
                         mask=mp[:, None] & mk[None, :], other=0.0).to(tl.float32)
            gy += 2.0 * tl.load(gst_ptr + base + 9 * R, mask=mk, other=0.0)[None, :] * (yv - mean[None, :])
            gsv = tl.load(gs_ptr + src * p_n + op, mask=mp & ok, other=0.0).to(tl.float32)
            gyy = tl.where(oj[None, :] == R, gsv[:, None], gy)
            gyy = tl.where(mp[:, None] & ok, gyy, 0.0)
            tl.store(gz_ptr + f64 * sgf + op[:, None] * sgp + (oj[None, :] + k * (R + 1)) * sgc,
                     gyy.to(gz_ptr.dtype.element_ty), mask=m)

    return motion_stats_bwd


def _blocks(z: torch.Tensor) -> tuple[int, int]:
    return GPU_BLOCKS if z.is_cuda else CPU_BLOCKS


def _like(z: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty (N·T, k, H, W) tensor in ``z``'s memory format (channels_last stays channels_last)."""
    fmt = torch.channels_last if z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous() \
        else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or z.dtype, device=z.device, memory_format=fmt)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(frame, channel, pixel) strides of an (N·T, C, H, W) tensor whose pixels share one stride."""
    return t.stride(0), t.stride(1), t.stride(3) if t.shape[3] > 1 else t.stride(2)


def _on(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``x``'s (a process may hold several GPUs)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _shapes(z: torch.Tensor, r: int):
    """Shapes of y, s, stats and the two passes' grids."""
    nt, _, h, w = z.shape
    bp, br = _blocks(z)
    rb = -(-(r + 1) // br)
    return (nt, r, h, w), (nt, h * w), (nt, _NSTAT, r), (nt, rb), (nt, -(-(h * w) // bp), rb)


@torch.library.custom_op("action_net::motion_stats", mutates_args=())
def motion_stats(z: torch.Tensor, t: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the squeeze conv's output ``z`` (N·T, ≥3·(r+1), H, W; row group k = tap k of the shift): ``(y, s,
    stats)`` with ``y`` (N·T, r, H, W) the shifted input's motion squeeze in ``z``'s layout (saved for the
    backward, no gradient), ``s`` (N·T, H·W) its channel mean and ``stats`` (N·T, 10, r) fp32: per frame the
    nine border-masked sums of ``y`` (taps row-major) and its sum of squares about the frame mean."""
    shape_y, shape_s, shape_st, grid, _ = _shapes(z, r)
    y, s = _like(z, shape_y), torch.empty(shape_s, dtype=z.dtype, device=z.device)
    st = torch.empty(shape_st, dtype=torch.float32, device=z.device)
    bp, br = _blocks(z)
    k_fwd, _ = _kernels()
    with _on(z):
        k_fwd[grid](z, y, s, st, r, t, z.shape[2], z.shape[3], *_strides(z), *_strides(y), BP=bp, BR=br)
    return y, s, st


@motion_stats.register_fake
def _motion_stats_fake(z, t, r):
    shape_y, shape_s, shape_st, _, _ = _shapes(z, r)
    return _like(z, shape_y), z.new_empty(shape_s), z.new_empty(shape_st, dtype=torch.float32)


@torch.library.custom_op("action_net::motion_stats_backward", mutates_args=())
def motion_stats_backward(gs: torch.Tensor, gst: torch.Tensor, y: torch.Tensor, st: torch.Tensor, kz: int,
                          t: int) -> torch.Tensor:
    """``g_z`` (N·T, kz, H, W, ``y``'s layout) of :func:`motion_stats` for the gradients of ``s`` and ``stats``."""
    nt, r, h, w = y.shape
    *_, grid = _shapes(y, r)
    gz = _like(y, (nt, kz, h, w))
    if kz > 3 * (r + 1):
        gz[:, 3 * (r + 1):].zero_()  # the conv's alignment rows (their weights are zero; no NaN from garbage)
    bp, br = _blocks(y)
    _, k_bwd = _kernels()
    with _on(y):
        k_bwd[grid](gs.contiguous(), gst.contiguous(), y, st, gz, r, t, h, w, *_strides(y),
                    *_strides(gz), BP=bp, BR=br)
    return gz


@motion_stats_backward.register_fake
def _motion_stats_backward_fake(gs, gst, y, st, kz, t):
    return _like(y, (y.shape[0], kz, y.shape[2], y.shape[3]))


def _setup(ctx, inputs, output):
    z, t, _ = inputs
    y, _, st = output
    ctx.mark_non_differentiable(y)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for y (a launch); s and stats handled below
    ctx.save_for_backward(y, st)
    ctx.kz, ctx.t = z.shape[1], t


def _grad(ctx, _gy, gs, gst):
    y, st = ctx.saved_tensors
    gs = torch.zeros(y.shape[0], y.shape[2] * y.shape[3], dtype=y.dtype, device=y.device) if gs is None else gs
    gst = torch.zeros_like(st) if gst is None else gst
    return motion_stats_backward(gs, gst, y, st, ctx.kz, ctx.t), None, None


motion_stats.register_autograd(_grad, setup_context=_setup)

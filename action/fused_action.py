"""ACTION's shift + excitation paths as a few fused Triton kernels (the CUDA default; see ``ACTION_IMPL`` in
:mod:`action.temporal`).

The shift is linear, so nothing shift-sized is ever built for the squeezes: with ``xs[t] = w0·x[t-1] + w1·x[t]
+ w2·x[t+1]`` (per channel), ``W·xs[t] = (W⊙w0)·x[t-1] + (W⊙w1)·x[t] + (W⊙w2)·x[t+1]``, so one cuDNN 1×1 conv of
``x`` with the 3·(r+1) rows ``W⊙w_k`` (W = the p3 squeeze plus a 1/C row for p1's channel mean; zero rows pad
them to a multiple of 8) gives, after adding three time-shifted slices of an (r+1)-channel tensor
(:class:`_TimeSum`), the motion squeeze ``y`` and the channel mean ``s``;
p2's spatial means are the shifted spatial means of ``x``. The learnable shift's gradient through these rows is
autograd's (the rows are built from the parameters with differentiable ops). Then:

- ``apply_fwd``: ``out = xs · (gate + s1)`` with ``xs`` formed on the fly from three frames of ``x``;
- ``apply_bwd_reduce``: one pass over ``g_out`` and ``x`` for the gate gradients (``Σ_p g·xs`` per channel,
  ``Σ_c g·xs`` per pixel) and the shift taps' gradient (``Σ g·(gate + s1)·x[t+k-1]``);
- ``apply_bwd_input``: ``g_x`` = the time-mirrored shift of ``g·(gate + s1)`` + the pooled-mean gradient +
  cuDNN's 1×1 conv data gradient, accumulated in place into the latter (one write of ``g_x``).

The last kernel runs in the front Function's backward, which autograd always runs after the apply Function's
(its outputs feed the gates); the apply backward hands its gradient over through a per-call ``_Link`` and
returns no ``x`` gradient itself, so ``g_x`` is summed once instead of by autograd's accumulation passes.

triton is imported on first use only (the product runs without it); on CPU tensors the kernels need
``TRITON_INTERPRET=1`` set before that first use (the tests do that).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from action.errors import ModelError

__all__ = ["available", "gated_input"]

# (BLOCK_P, BLOCK_C, BLOCK_P of the reduction pass) on CUDA; small ones under the CPU interpreter so small
# test shapes still cross block edges and masks
GPU_BLOCKS = (64, 64, 32)
CPU_BLOCKS = (16, 32, 16)
_MIN_PROGRAMS = 2048  # the reduction pass splits its pixel loop until it has about this many programs (GPU)
_CONV_ALIGN = 8  # the squeeze conv's output channels are padded to a multiple of this (bf16 tensor-core tiles)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether triton imports here (the fused path's only extra requirement)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means "use the torch path"
        return False
    return True


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    # builtins and jit functions made here only: triton.language.standard's (tl.sum, tl.zeros) are jit functions
    # built when triton was first imported, which the interpreter cannot call if that was before TRITON_INTERPRET.
    # The kernels find their combine function among the module's globals (jit code does not see closures).
    @triton.jit
    def _tl_add(a, b):
        return a + b

    globals()["_tl_add"] = _tl_add

    @triton.jit
    def apply_fwd(x_ptr, out_ptr, w_ptr, gate_ptr, s1_ptr, C, P, T, sxf, sxc, sxp, sof, soc, sop,
                  BP: tl.constexpr, BC: tl.constexpr):
        f = tl.program_id(0)
        t = f % T
        op = tl.program_id(1) * BP + tl.arange(0, BP)
        oc = tl.program_id(2) * BC + tl.arange(0, BC)
        mp = op < P
        mc = oc < C
        m = mp[:, None] & mc[None, :]
        f64 = f.to(tl.int64)
        xo = f64 * sxf + op[:, None] * sxp + oc[None, :] * sxc
        x1 = tl.load(x_ptr + xo, mask=m, other=0.0).to(tl.float32)
        x0 = tl.load(x_ptr + xo - sxf, mask=m & (t > 0), other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + xo + sxf, mask=m & (t < T - 1), other=0.0).to(tl.float32)
        w0 = tl.load(w_ptr + oc * 3, mask=mc, other=0.0)
        w1 = tl.load(w_ptr + oc * 3 + 1, mask=mc, other=0.0)
        w2 = tl.load(w_ptr + oc * 3 + 2, mask=mc, other=0.0)
        gate = tl.load(gate_ptr + f64 * C + oc, mask=mc, other=0.0).to(tl.float32)
        s1 = tl.load(s1_ptr + f64 * P + op, mask=mp, other=0.0).to(tl.float32)
        xs = w0[None, :] * x0 + w1[None, :] * x1 + w2[None, :] * x2
        out = xs * (gate[None, :] + s1[:, None])
        oo = f64 * sof + op[:, None] * sop + oc[None, :] * soc
        tl.store(out_ptr + oo, out.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def apply_bwd_reduce(g_ptr, x_ptr, w_ptr, gate_ptr, s1_ptr, dgate_ptr, ds1_ptr, dw_ptr, C, P, T, NCB, NPS,
                         P_CHUNK, sgf, sgc, sgp, sxf, sxc, sxp, BP: tl.constexpr, BC: tl.constexpr):
        # program (frame f, channel block cb, pixel chunk ps): per-channel partial sums over its chunk
        f = tl.program_id(0)
        cb = tl.program_id(1)
        ps = tl.program_id(2)
        t = f % T
        f64 = f.to(tl.int64)
        oc = cb * BC + tl.arange(0, BC)
        mc = oc < C
        w0 = tl.load(w_ptr + oc * 3, mask=mc, other=0.0)
        w1 = tl.load(w_ptr + oc * 3 + 1, mask=mc, other=0.0)
        w2 = tl.load(w_ptr + oc * 3 + 2, mask=mc, other=0.0)
        gate = tl.load(gate_ptr + f64 * C + oc, mask=mc, other=0.0).to(tl.float32)
        acc_g = tl.full([BC], 0.0, tl.float32)
        acc0 = tl.full([BC], 0.0, tl.float32)
        acc1 = tl.full([BC], 0.0, tl.float32)
        acc2 = tl.full([BC], 0.0, tl.float32)
        for p0 in range(ps * P_CHUNK, tl.minimum(P, (ps + 1) * P_CHUNK), BP):
            op = p0 + tl.arange(0, BP)
            mp = op < P
            m = mp[:, None] & mc[None, :]
            g = tl.load(g_ptr + f64 * sgf + op[:, None] * sgp + oc[None, :] * sgc, mask=m, other=0.0)
            g = g.to(tl.float32)
            xo = f64 * sxf + op[:, None] * sxp + oc[None, :] * sxc
            x1 = tl.load(x_ptr + xo, mask=m, other=0.0).to(tl.float32)
            x0 = tl.load(x_ptr + xo - sxf, mask=m & (t > 0), other=0.0).to(tl.float32)
            x2 = tl.load(x_ptr + xo + sxf, mask=m & (t < T - 1), other=0.0).to(tl.float32)
            s1 = tl.load(s1_ptr + f64 * P + op, mask=mp, other=0.0).to(tl.float32)
            gxs = g * (w0[None, :] * x0 + w1[None, :] * x1 + w2[None, :] * x2)
            acc_g += tl.reduce(gxs, 0, _tl_add)
            tl.store(ds1_ptr + (f64 * NCB + cb) * P + op, tl.reduce(gxs, 1, _tl_add), mask=mp)
            ga = g * (gate[None, :] + s1[:, None])
            acc0 += tl.reduce(ga * x0, 0, _tl_add)
            acc1 += tl.reduce(ga * x1, 0, _tl_add)
            acc2 += tl.reduce(ga * x2, 0, _tl_add)
        row = f64 * NPS + ps
        tl.store(dgate_ptr + row * C + oc, acc_g, mask=mc)
        tl.store(dw_ptr + (row * 3) * C + oc, acc0, mask=mc)
        tl.store(dw_ptr + (row * 3 + 1) * C + oc, acc1, mask=mc)
        tl.store(dw_ptr + (row * 3 + 2) * C + oc, acc2, mask=mc)

    @triton.jit
    def apply_bwd_input(g_ptr, w_ptr, gate_ptr, s1_ptr, dpx_ptr, dx_ptr, C, P, T, inv_p,
                        sgf, sgc, sgp, sdf, sdc, sdp, HAS_DX: tl.constexpr, HAS_DPX: tl.constexpr,
                        BP: tl.constexpr, BC: tl.constexpr):
        f = tl.program_id(0)
        t = f % T
        op = tl.program_id(1) * BP + tl.arange(0, BP)
        oc = tl.program_id(2) * BC + tl.arange(0, BC)
        mp = op < P
        mc = oc < C
        m = mp[:, None] & mc[None, :]
        f64 = f.to(tl.int64)
        w0 = tl.load(w_ptr + oc * 3, mask=mc, other=0.0)
        w1 = tl.load(w_ptr + oc * 3 + 1, mask=mc, other=0.0)
        w2 = tl.load(w_ptr + oc * 3 + 2, mask=mc, other=0.0)
        go = f64 * sgf + op[:, None] * sgp + oc[None, :] * sgc
        # g_x[t] = w1·ga[t] + w0·ga[t+1] + w2·ga[t-1], ga = g·(gate + s1) (the shift's transpose)
        g1 = tl.load(g_ptr + go, mask=m, other=0.0).to(tl.float32)
        a1 = (tl.load(gate_ptr + f64 * C + oc, mask=mc, other=0.0).to(tl.float32)[None, :]
              + tl.load(s1_ptr + f64 * P + op, mask=mp, other=0.0).to(tl.float32)[:, None])
        acc = w1[None, :] * g1 * a1
        nxt = t < T - 1
        g2 = tl.load(g_ptr + go + sgf, mask=m & nxt, other=0.0).to(tl.float32)
        a2 = (tl.load(gate_ptr + (f64 + 1) * C + oc, mask=mc & nxt, other=0.0).to(tl.float32)[None, :]
              + tl.load(s1_ptr + (f64 + 1) * P + op, mask=mp & nxt, other=0.0).to(tl.float32)[:, None])
        acc += w0[None, :] * g2 * a2
        prv = t > 0
        g0 = tl.load(g_ptr + go - sgf, mask=m & prv, other=0.0).to(tl.float32)
        a0 = (tl.load(gate_ptr + (f64 - 1) * C + oc, mask=mc & prv, other=0.0).to(tl.float32)[None, :]
              + tl.load(s1_ptr + (f64 - 1) * P + op, mask=mp & prv, other=0.0).to(tl.float32)[:, None])
        acc += w2[None, :] * g0 * a0
        if HAS_DPX:
            acc += tl.load(dpx_ptr + f64 * C + oc, mask=mc, other=0.0)[None, :] * inv_p
        do = f64 * sdf + op[:, None] * sdp + oc[None, :] * sdc
        if HAS_DX:
            acc += tl.load(dx_ptr + do, mask=m, other=0.0).to(tl.float32)
        tl.store(dx_ptr + do, acc.to(dx_ptr.dtype.element_ty), mask=m)

    return triton, apply_fwd, apply_bwd_reduce, apply_bwd_input


def _fcp(t: torch.Tensor) -> torch.Tensor:
    """``t`` (F, C, H, W) as a tensor whose (F, C, H·W) strides exist (contiguous or channels_last); copies
    only when it is neither."""
    if t.stride(2) == t.shape[3] * t.stride(3) or t.shape[2] == 1:
        return t
    return t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(3) if t.shape[3] > 1 else t.stride(2)


def _blocks(x: torch.Tensor) -> tuple[int, int, int]:
    return GPU_BLOCKS if x.is_cuda else CPU_BLOCKS


def _on(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``x``'s (a process may hold several GPUs)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class _Link:
    """Hands the apply backward's output gradient to the front backward (autograd runs it later)."""

    __slots__ = ("saved",)

    def __init__(self) -> None:
        self.saved = None

    def pop(self):
        saved, self.saved = self.saved, None
        return saved


class _Front(torch.autograd.Function):
    """``z = conv1x1(x, w3)`` (cuDNN) and ``px = mean_hw(x)`` (fp32); backward: cuDNN's data and weight
    gradients, then the apply path's ``x`` gradient and the pooled-mean gradient added in one kernel."""

    @staticmethod
    def forward(ctx, x, w3, link, t):  # noqa: D102
        with torch.autocast(x.device.type, enabled=False):
            z = F.conv2d(x, w3)
            px = x.mean((2, 3), dtype=torch.float32)
        ctx.save_for_backward(x, w3)
        ctx.link, ctx.t = link, t
        return z, px

    @staticmethod
    @once_differentiable
    def backward(ctx, gz, gpx):  # noqa: D102
        x, w3 = ctx.saved_tensors
        saved = ctx.link.pop()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = gw = None
        if gz is not None and (need_x or need_w):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                gz.to(x.dtype), x, w3, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_x, need_w, False])
        if not need_x:
            return None, gw, None, None
        nt, c, h, w = x.shape
        if saved is None:  # the gated output got no gradient: the front's own terms only
            gx = gx if gx is not None else torch.zeros_like(x)
            if gpx is not None:
                gx = gx + (gpx / (h * w)).to(x.dtype)[:, :, None, None]
            return gx, gw, None, None
        g, ws, gate, s1 = saved
        has_dx = gx is not None
        gx = _fcp(gx) if has_dx else torch.empty_like(x)
        has_dpx = gpx is not None
        dpx = gpx.float().contiguous() if has_dpx else ws  # any tensor when unused
        bp, bc, _ = _blocks(x)
        _, _, _, k_in = _kernels()
        grid = (nt, -(-(h * w) // bp), -(-c // bc))
        with _on(x):
            k_in[grid](g, ws, gate, s1, dpx, gx, c, h * w, ctx.t, 1.0 / (h * w), *_strides(g), *_strides(gx),
                       HAS_DX=has_dx, HAS_DPX=has_dpx, BP=bp, BC=bc)
        return gx, gw, None, None


class _Apply(torch.autograd.Function):
    """``out = shift(x) · (gate + s1)`` — gate (N·T, C), s1 (N·T, H·W) — without materialising the shift."""

    @staticmethod
    def forward(ctx, x, w_shift, gate, s1, link, t):  # noqa: D102
        nt, c, h, w = x.shape
        ws = w_shift.detach().reshape(c, 3).float().contiguous()
        gate, s1 = gate.contiguous(), s1.contiguous()
        out = torch.empty_like(x)  # same layout as x
        bp, bc, _ = _blocks(x)
        _, k_fwd, _, _ = _kernels()
        grid = (nt, -(-(h * w) // bp), -(-c // bc))
        with _on(x):
            k_fwd[grid](x, out, ws, gate, s1, c, h * w, t, *_strides(x), *_strides(out), BP=bp, BC=bc)
        ctx.save_for_backward(x, ws, gate, s1)
        ctx.link, ctx.t, ctx.w_dtype = link, t, w_shift.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: D102
        x, ws, gate, s1 = ctx.saved_tensors
        nt, c, h, w = x.shape
        p = h * w
        g = _fcp(g)
        _, bc, bpr = _blocks(x)
        ncb = -(-c // bc)
        # split the pixel loop when frames x channel blocks alone would leave the GPU's SMs idle
        pblocks = -(-p // bpr)
        nps = max(1, min(pblocks, -(-_MIN_PROGRAMS // (nt * ncb)))) if x.is_cuda else min(2, pblocks)
        chunk = -(-pblocks // nps) * bpr
        nps = -(-p // chunk)
        dgate = torch.empty(nt, nps, c, device=x.device, dtype=torch.float32)
        ds1 = torch.empty(nt, ncb, p, device=x.device, dtype=torch.float32)
        dw = torch.empty(nt, nps, 3, c, device=x.device, dtype=torch.float32)
        _, _, k_red, _ = _kernels()
        with _on(x):
            k_red[(nt, ncb, nps)](g, x, ws, gate, s1, dgate, ds1, dw, c, p, ctx.t, ncb, nps, chunk, *_strides(g),
                                  *_strides(x), BP=bpr, BC=bc)
        dgate = dgate.sum(1)
        if ctx.needs_input_grad[0]:
            ctx.link.saved = (g, ws, gate, s1)
        d_ws = dw.sum((0, 1)).t().reshape(c, 1, 3).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return None, d_ws, dgate.to(gate.dtype), ds1.sum(1).to(s1.dtype), None, None


class _TimeSum(torch.autograd.Function):
    """From ``z`` (N·T, ≥3·(r+1), H, W), the squeeze of the unshifted input with rows ``[k][r+1]``: ``y[:, t] =
    z0[:, t-1] + z1[:, t] + z2[:, t+1]`` for the first r rows of each group (zero outside the clip) and the same
    sum ``s`` for row r: the squeeze and the channel mean of the shifted input. ``y`` is dense in ``z``'s layout
    (channels_last stays channels_last, so batch norm gets its fast kernel). Backward writes ``g_z`` once,
    where autograd's slice/select backwards would build and add a zero-filled ``z``-sized tensor per slice."""

    @staticmethod
    def forward(ctx, z, n, t, r):  # noqa: D102
        nt, kp, h, w = z.shape
        z6 = z[:, :3 * (r + 1)].view(n, t, 3, r + 1, h, w)
        y = z6[:, :, 1, :r].clone()  # dense, in z's stride order
        s = z6[:, :, 1, r].clone()
        if t > 1:
            y[:, 1:] += z6[:, :-1, 0, :r]
            y[:, :-1] += z6[:, 1:, 2, :r]
            s[:, 1:] += z6[:, :-1, 0, r]
            s[:, :-1] += z6[:, 1:, 2, r]
        ctx.dims = (n, t, r, nt, kp, h, w)
        ctx.fmt = torch.channels_last if z.is_contiguous(memory_format=torch.channels_last) and not \
            z.is_contiguous() else torch.contiguous_format
        return y.view(nt, r, h, w), s

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gs):  # noqa: D102
        n, t, r, nt, kp, h, w = ctx.dims
        ref = gy if gy is not None else gs
        gz = torch.empty((nt, kp, h, w), dtype=ref.dtype, device=ref.device, memory_format=ctx.fmt)
        gz[:, 3 * (r + 1):].zero_()
        g6 = gz[:, :3 * (r + 1)].view(n, t, 3, r + 1, h, w)
        for rows, g in ((slice(0, r), gy), (r, gs)):
            if g is None:
                g6[:, :, :, rows].zero_()
                continue
            g = g.reshape((n, t, r, h, w) if rows != r else (n, t, h, w))
            g6[:, :, 1, rows].copy_(g)
            if t > 1:  # transpose of the time shifts: tap 0 fed frame t+1, tap 2 frame t-1
                g6[:, :-1, 0, rows].copy_(g[:, 1:])
                g6[:, -1, 0, rows].zero_()
                g6[:, 1:, 2, rows].copy_(g[:, :-1])
                g6[:, 0, 2, rows].zero_()
            else:
                g6[:, :, 0, rows].zero_()
                g6[:, :, 2, rows].zero_()
        return gz, None, None, None


def _check_device(x: torch.Tensor) -> None:
    if x.is_cuda:
        return
    if os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True"):
        raise ModelError("ACTION_IMPL='triton' on CPU tensors needs TRITON_INTERPRET=1 set before the first "
                         "fused call (the Triton interpreter); use ACTION_IMPL='torch' or 'auto' on CPU")


def gated_input(mod, x: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """The input of ``mod.net`` for the :class:`action.temporal.Action` ``mod``: ``shift(x) · (3 + σ_ste +
    σ_ce + σ_me)``, with the big-tensor work in the kernels above and the small gate maths in
    :meth:`Action._gates` (shared with the torch path). Eager only: under torch.compile the dispatch picks
    the torch path (a benchmark can still wrap the ACTION forwards in ``torch.compiler.disable``)."""
    if not available():
        raise ModelError("ACTION_IMPL='triton' needs the triton package (it comes with CUDA builds of torch); "
                         "use ACTION_IMPL='torch'")
    _check_device(x)
    nt, c, h, w = x.shape
    r = mod.reduced_channels
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    link = _Link()
    ws = mod.action_shift.weight.view(c, 3)
    rows = torch.cat([mod.action_p3_squeeze.weight.view(r, c), ws.new_full((1, c), 1.0 / c)], 0)
    k = 3 * (r + 1)
    w3 = (ws.t().unsqueeze(1) * rows.unsqueeze(0)).reshape(k, c)
    w3 = F.pad(w3, (0, 0, 0, -k % _CONV_ALIGN)).view(-1, c, 1, 1).to(x.dtype)  # zero rows up to the alignment
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        w3 = w3.contiguous(memory_format=torch.channels_last)
    z, px = _Front.apply(x, w3, link, t)
    y, s = _TimeSum.apply(z, n, t, r)  # (N·T, r, H, W) channels_last when x is; (N, T, H, W)
    pooled = px.view(n, t, c) * ws[:, 1]  # spatial means of the shifted x
    if t > 1:
        pooled = pooled + F.pad(px.view(n, t, c)[:, :-1] * ws[:, 0], (0, 0, 1, 0)) \
            + F.pad(px.view(n, t, c)[:, 1:] * ws[:, 2], (0, 0, 0, 1))
    m = mod.action_p3_bn1(y)
    gate, s1 = mod._gates(m, s, pooled.view(nt, c).to(x.dtype), n, t, h, w)
    return _Apply.apply(x, mod.action_shift.weight, gate, s1.reshape(nt, h * w), link, t)

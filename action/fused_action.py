"""ACTION's shift + excitation paths as a few fused Triton kernels (the CUDA default; see ``ACTION_IMPLS`` in
:mod:`action.temporal`).

The shift is linear, so nothing shift-sized is ever built for the squeezes: with ``xs[t] = w0·x[t-1] + w1·x[t]
+ w2·x[t+1]`` (per channel), ``W·xs[t] = (W⊙w0)·x[t-1] + (W⊙w1)·x[t] + (W⊙w2)·x[t+1]``, so one cuDNN 1×1 conv of
``x`` with the 3·(r+1) rows ``W⊙w_k`` (W = the p3 squeeze plus a 1/C row for p1's channel mean; zero rows pad
them to a multiple of 8) gives, after adding three time-shifted row groups, the motion squeeze ``y`` and the
channel mean ``s``: :mod:`action.fused_motion` does that sum, ACTION's batch norm and the motion path's pooled
means in one pass each way. p2's spatial means are the shifted spatial means of ``x``. The learnable shift's
gradient through these rows is autograd's (the rows are built from the parameters with differentiable ops). Then:

- ``apply_fwd``: ``out = xs · (gate + s1)`` with ``xs`` formed on the fly from three frames of ``x``;
- ``apply_bwd_reduce``: one pass over ``g_out`` and ``x`` for the gate gradients (``Σ_p g·xs`` per channel,
  ``Σ_c g·xs`` per pixel) and the shift taps' gradient (``Σ g·(gate + s1)·x[t+k-1]``), accumulated elementwise
  and reduced once per program;
- ``apply_bwd_input``: the apply's share of ``g_x``, the time-mirrored shift of ``g·(gate + s1)``.

The two apply passes are PyTorch custom operators (``action_net::shift_gate`` and its backward, with fake
implementations and registered autograd), so ``torch.compile(fullgraph=True)`` traces a whole ACTION model with
the kernels inside; the 1×1 squeeze conv and the pooled means are ordinary aten ops. Autograd (or, compiled,
inductor's fused add) sums the three ``x`` gradients: conv data gradient, pooled-mean gradient, apply share.

triton is imported on first use only (the product runs without it); on CPU tensors the kernels need
``TRITON_INTERPRET=1`` set before that first use (the tests do that).
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from action.errors import ModelError
from action.fused_motion import _on, _strides, motion_stats
from action.fused_motion_bn import motion_means

__all__ = ["available", "gated_input"]

# (BLOCK_P, BLOCK_C, BLOCK_P of the reduction pass) on CUDA; small ones under the CPU interpreter so small
# test shapes still cross block edges and masks
GPU_BLOCKS = (64, 64, 32)
CPU_BLOCKS = (16, 32, 16)
_MIN_PROGRAMS = 2048  # the reduction pass splits its pixel loop until it has about this many programs (GPU)
_CONV_ALIGN = 8  # the squeeze conv's output channels are padded to a multiple of this (bf16 tensor-core tiles)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether triton imports here (the fused path's only extra requirement). Not called while torch.compile
    traces (triton is there then: inductor needs it)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means "use the torch path"
        return False
    return True


@functools.lru_cache(maxsize=None)
def _kernels():
    """``(triton, apply_fwd, apply_bwd_reduce, apply_bwd_input)``, built on first use (after the tests set
    TRITON_INTERPRET). Builtins and jit functions made here only: triton.language.standard's (tl.sum, tl.zeros)
    are jit functions built when triton was first imported, which the interpreter cannot call if that was before
    TRITON_INTERPRET. The kernels find their combine function among the module's globals (jit code does not see
    closures)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _tl_add(a, b):
        return a + b

    globals()["_tl_add"] = _tl_add
    return triton, _build_fwd(triton, tl), _build_reduce(triton, tl), _build_input(triton, tl)


def _build_fwd(triton, tl):
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

    return apply_fwd


def _build_reduce(triton, tl):
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
        # elementwise accumulators, reduced over pixels once after the loop (not once per tile)
        acc_g = tl.full([BP, BC], 0.0, tl.float32)
        acc0 = tl.full([BP, BC], 0.0, tl.float32)
        acc1 = tl.full([BP, BC], 0.0, tl.float32)
        acc2 = tl.full([BP, BC], 0.0, tl.float32)
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
            acc_g += gxs
            tl.store(ds1_ptr + (f64 * NCB + cb) * P + op, tl.reduce(gxs, 1, _tl_add), mask=mp)
            ga = g * (gate[None, :] + s1[:, None])
            acc0 += ga * x0
            acc1 += ga * x1
            acc2 += ga * x2
        row = f64 * NPS + ps
        tl.store(dgate_ptr + row * C + oc, tl.reduce(acc_g, 0, _tl_add), mask=mc)
        tl.store(dw_ptr + (row * 3) * C + oc, tl.reduce(acc0, 0, _tl_add), mask=mc)
        tl.store(dw_ptr + (row * 3 + 1) * C + oc, tl.reduce(acc1, 0, _tl_add), mask=mc)
        tl.store(dw_ptr + (row * 3 + 2) * C + oc, tl.reduce(acc2, 0, _tl_add), mask=mc)

    return apply_bwd_reduce


def _build_input(triton, tl):
    @triton.jit
    def apply_bwd_input(g_ptr, w_ptr, gate_ptr, s1_ptr, dx_ptr, C, P, T, sgf, sgc, sgp, sdf, sdc, sdp,
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
        do = f64 * sdf + op[:, None] * sdp + oc[None, :] * sdc
        tl.store(dx_ptr + do, acc.to(dx_ptr.dtype.element_ty), mask=m)

    return apply_bwd_input


def _fcp(t: torch.Tensor) -> torch.Tensor:
    """``t`` (F, C, H, W) as a tensor whose (F, C, H·W) strides exist (contiguous or channels_last); copies
    only when it is neither."""
    if t.stride(2) == t.shape[3] * t.stride(3) or t.shape[2] == 1:
        return t
    return t.contiguous()


def _blocks(x: torch.Tensor) -> tuple[int, int, int]:
    return GPU_BLOCKS if x.is_cuda else CPU_BLOCKS


def _launch_fwd(x, ws, gate, s1, t: int) -> torch.Tensor:
    nt, c, h, w = x.shape
    out = torch.empty_like(x)  # same layout as x
    bp, bc, _ = _blocks(x)
    _, k_fwd, _, _ = _kernels()
    grid = (nt, -(-(h * w) // bp), -(-c // bc))
    with _on(x):
        k_fwd[grid](x, out, ws, gate, s1, c, h * w, t, *_strides(x), *_strides(out), BP=bp, BC=bc)
    return out


def _launch_bwd(g, x, ws, gate, s1, t: int):
    """``(g_x, g_gate, g_s1, g_ws)`` of ``out = shift(x) · (gate + s1)``: one reduction pass, one input pass."""
    nt, c, h, w = x.shape
    p = h * w
    g = _fcp(g)  # strided (an expanded, stride-0 gradient is read through its strides as it is)
    bp, bc, bpr = _blocks(x)
    ncb = -(-c // bc)
    # split the pixel loop when frames x channel blocks alone would leave the GPU's SMs idle
    pblocks = -(-p // bpr)
    nps = max(1, min(pblocks, -(-_MIN_PROGRAMS // (nt * ncb)))) if x.is_cuda else min(2, pblocks)
    chunk = -(-pblocks // nps) * bpr
    nps = -(-p // chunk)
    dgate = torch.empty(nt, nps, c, device=x.device, dtype=torch.float32)
    ds1 = torch.empty(nt, ncb, p, device=x.device, dtype=torch.float32)
    dw = torch.empty(nt, nps, 3, c, device=x.device, dtype=torch.float32)
    gx = torch.empty_like(x)
    _, _, k_red, k_in = _kernels()
    with _on(x):
        k_red[(nt, ncb, nps)](g, x, ws, gate, s1, dgate, ds1, dw, c, p, t, ncb, nps, chunk, *_strides(g),
                              *_strides(x), BP=bpr, BC=bc)
        k_in[(nt, -(-p // bp), ncb)](g, ws, gate, s1, gx, c, p, t, *_strides(g), *_strides(gx), BP=bp, BC=bc)
    return gx, dgate.sum(1).to(gate.dtype), ds1.sum(1).to(s1.dtype), dw.sum((0, 1)).t().contiguous()


# The kernels as PyTorch custom operators: torch.compile(fullgraph=True) traces them (fake implementations give
# the output metadata), autograd reaches the backward operator through register_autograd. Inputs: x (N·T, C, H, W)
# contiguous or channels_last, ws (C, 3) fp32 shift taps, gate (N·T, C) and s1 (N·T, H·W) contiguous.
@torch.library.custom_op("action_net::shift_gate", mutates_args=())
def shift_gate(x: torch.Tensor, ws: torch.Tensor, gate: torch.Tensor, s1: torch.Tensor, t: int) -> torch.Tensor:
    """``shift(x) · (gate + s1)`` without materialising the shift."""
    return _launch_fwd(x, ws, gate, s1, t)


@shift_gate.register_fake
def _shift_gate_fake(x, ws, gate, s1, t):
    return torch.empty_like(x)


@torch.library.custom_op("action_net::shift_gate_backward", mutates_args=())
def shift_gate_backward(g: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, gate: torch.Tensor, s1: torch.Tensor,
                        t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g_x, g_gate, g_s1, g_ws)`` of :func:`shift_gate` for the output gradient ``g``."""
    return _launch_bwd(g, x, ws, gate, s1, t)


@shift_gate_backward.register_fake
def _shift_gate_backward_fake(g, x, ws, gate, s1, t):
    return (torch.empty_like(x), gate.new_empty(gate.shape), s1.new_empty(s1.shape), ws.new_empty(ws.shape))


def _shift_gate_setup(ctx, inputs, output):
    x, ws, gate, s1, t = inputs
    ctx.save_for_backward(x, ws, gate, s1)
    ctx.t = t


def _shift_gate_grad(ctx, g):
    x, ws, gate, s1 = ctx.saved_tensors
    gx, dgate, ds1, dws = shift_gate_backward(g, x, ws, gate, s1, ctx.t)
    return gx, dws, dgate, ds1, None


shift_gate.register_autograd(_shift_gate_grad, setup_context=_shift_gate_setup)


def _check_device(x: torch.Tensor) -> None:
    if x.is_cuda:
        return
    if os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True"):
        raise ModelError("action_impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before the first "
                         "fused call (the Triton interpreter); use action_impl='torch' or 'auto' on CPU")


def gated_input(mod, x: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """The input of ``mod.net`` for the :class:`action.temporal.Action` ``mod``: ``shift(x) · (3 + σ_ste +
    σ_ce + σ_me)``, with the big-tensor work in the kernels above (custom operators: eager and torch.compile alike)
    and the small gate maths in :meth:`Action._gates` (shared with the torch path)."""
    if not torch.compiler.is_compiling():  # checked eagerly; the compiled graph was traced after these passed
        if not available():
            raise ModelError("action_impl='triton' needs the triton package (it comes with CUDA builds of torch); "
                             "use action_impl='torch'")
        _check_device(x)
    nt, c, h, w = x.shape
    r = mod.reduced_channels
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    ws = mod.action_shift.weight.view(c, 3)
    rows = torch.cat([mod.action_p3_squeeze.weight.view(r, c), ws.new_full((1, c), 1.0 / c)], 0)
    k = 3 * (r + 1)
    w3 = (ws.t().unsqueeze(1) * rows.unsqueeze(0)).reshape(k, c)
    w3 = F.pad(w3, (0, 0, 0, -k % _CONV_ALIGN)).view(-1, c, 1, 1).to(x.dtype)  # zero rows up to the alignment
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        w3 = w3.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, enabled=False):  # in x's dtype; the means in fp32
        z = F.conv2d(x, w3)
        px = x.mean((2, 3), dtype=torch.float32)
    _, s, st = motion_stats(z, t, r)  # s (N·T, H·W); per-block sums of the motion squeeze (not built here)
    # spatial means of the shifted x: the shift of the means (one depthwise conv over time, one launch)
    pooled = F.conv1d(px.view(n, t, c).transpose(1, 2), ws.unsqueeze(1), padding=1, groups=c).transpose(1, 2)
    d = motion_means(mod.action_p3_bn1, mod.action_p3_conv1.weight, st, h, w, t)  # (N·T, r): p3's difference
    gate, s1 = mod._gates(s, pooled.reshape(nt, c).to(x.dtype), d, n, t, h, w)
    return shift_gate(x, ws.float(), gate.contiguous(), s1.reshape(nt, h * w).contiguous(), t)

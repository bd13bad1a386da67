"""ACTION's motion batch norm and pooled means from the per-frame sums of :mod:`action.fused_motion`, as one
small Triton program per channel block each way (``action_net::motion_means`` and its backward).

For ``m = γ·(y - μ)/σ + β`` (``bn`` in train mode: batch statistics, and the running statistics move; in eval
mode: the running statistics) and ``A`` the pooled 3×3 depthwise conv: ``mean_p(m·A) = inv·(Σ_taps w·S_tap / P
- μ·Ā) + β·Ā`` and ``mean_p(m) = inv·(S / P - μ) + β`` (the op returns their difference over time) with
``inv = γ/σ``, the per-frame masked sums ``S_tap`` (``S`` the unmasked one) and ``Ā`` the mean of ``A``. The batch variance is Chan's combination of the frames'
centred sums of squares: ``M2 = Σ_f M2_f + Σ_f (S_f - mean_f S)² / P``. Backward by hand, in the same two
programs: these are a few hundred numbers per block, and as torch ops they were ~70 launches per ACTION block
(forward and backward), which eager mode pays on the CPU.
"""
from __future__ import annotations

import functools

import torch

from action.fused_motion import _on

__all__ = ["motion_means"]

BLOCKS = (32, 32)  # (frames, channels) per tile: the whole problem is (N·T, r) numbers


@functools.lru_cache(maxsize=None)
def _kernels():
    """``(motion_means_fwd, motion_means_bwd)``, built on first use (see :func:`action.fused_action._kernels`)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _tl_add(a, b):
        return a + b

    @triton.jit
    def _ya(st_ptr, offs, w_ptr, oj, R, m, mr):  # Σ_taps w_tap · S_tap for a (frames, r) tile
        acc = tl.load(w_ptr + oj * 9, mask=mr, other=0.0)[None, :] * tl.load(st_ptr + offs, mask=m, other=0.0)
        for q in tl.static_range(1, 9):
            acc += tl.load(w_ptr + oj * 9 + q, mask=mr, other=0.0)[None, :] \
                * tl.load(st_ptr + offs + q * R, mask=m, other=0.0)
        return acc

    @triton.jit
    def _abar(w_ptr, cnt_ptr, oj, mr):  # the mean of A per channel: Σ_taps w_tap · (share of pixels read)
        acc = tl.load(w_ptr + oj * 9, mask=mr, other=0.0) * tl.load(cnt_ptr)
        for q in tl.static_range(1, 9):
            acc += tl.load(w_ptr + oj * 9 + q, mask=mr, other=0.0) * tl.load(cnt_ptr + q)
        return acc

    @triton.jit
    def _grad_tile(gd_ptr, f0, NT, R, T, oj, mr, BF: tl.constexpr):
        # frames [f0, f0 + BF): mask, stats offsets and the gradients of the two means from d's: d[t] = pd[t + 1]
        # - pm[t] for t < T - 1, so g_pd[t] = g_d[t - 1] (t > 0) and g_pm[t] = -g_d[t] (t < T - 1)
        of = f0 + tl.arange(0, BF)
        m = (of < NT)[:, None] & mr[None, :]
        t = (of % T)[:, None]
        go = of[:, None] * R + oj[None, :]
        gpd = tl.load(gd_ptr + go - R, mask=m & (t > 0), other=0.0)
        gpm = -tl.load(gd_ptr + go, mask=m & (t < T - 1), other=0.0)
        return m, of[:, None] * 10 * R + oj[None, :], gpd, gpm

    globals().update(_tl_add=_tl_add, _ya=_ya, _abar=_abar, _grad_tile=_grad_tile)
    return _build_fwd(triton, tl), _build_bwd(triton, tl)


def _build_fwd(triton, tl):
    @triton.jit
    def motion_means_fwd(st_ptr, w_ptr, g_ptr, b_ptr, rm_ptr, rv_ptr, cnt_ptr, out_ptr, mu_ptr, invs_ptr, varu_ptr,
                         NT, R, P, T, eps, unbias, BATCH: tl.constexpr, BF: tl.constexpr, BR: tl.constexpr):
        oj = tl.program_id(0) * BR + tl.arange(0, BR)
        mr = oj < R
        if BATCH:
            s_acc = tl.full([BR], 0.0, tl.float32)
            m2_acc = tl.full([BR], 0.0, tl.float32)
            for f0 in range(0, NT, BF):
                of = f0 + tl.arange(0, BF)
                m = (of < NT)[:, None] & mr[None, :]
                offs = of[:, None] * 10 * R + oj[None, :]
                s_acc += tl.reduce(tl.load(st_ptr + offs + 4 * R, mask=m, other=0.0), 0, _tl_add)
                m2_acc += tl.reduce(tl.load(st_ptr + offs + 9 * R, mask=m, other=0.0), 0, _tl_add)
            mfr = s_acc / NT
            dev_acc = tl.full([BR], 0.0, tl.float32)
            for f0 in range(0, NT, BF):
                of = f0 + tl.arange(0, BF)
                m = (of < NT)[:, None] & mr[None, :]
                d = tl.where(m, tl.load(st_ptr + of[:, None] * 10 * R + oj[None, :] + 4 * R, mask=m, other=0.0)
                             - mfr[None, :], 0.0)
                dev_acc += tl.reduce(d * d, 0, _tl_add)
            mu = mfr / P
            var = (m2_acc + dev_acc / P) / (NT * P)
            tl.store(varu_ptr + oj, var * unbias, mask=mr)  # for the running variance
        else:
            mu = tl.load(rm_ptr + oj, mask=mr, other=0.0).to(tl.float32)
            var = tl.load(rv_ptr + oj, mask=mr, other=1.0).to(tl.float32)
            tl.store(varu_ptr + oj, var, mask=mr)
        invs = 1.0 / tl.sqrt(var + eps)
        tl.store(mu_ptr + oj, mu, mask=mr)
        tl.store(invs_ptr + oj, invs, mask=mr)
        inv = tl.load(g_ptr + oj, mask=mr, other=0.0) * invs
        bet = tl.load(b_ptr + oj, mask=mr, other=0.0)
        abar = _abar(w_ptr, cnt_ptr, oj, mr)
        for f0 in range(0, NT, BF):
            of = f0 + tl.arange(0, BF)
            m = (of < NT)[:, None] & mr[None, :]
            offs = of[:, None] * 10 * R + oj[None, :]
            nxt = m & ((of % T) < T - 1)[:, None]  # d[t] = pd[t + 1] - pm[t], 0 at a clip's last frame
            ya = _ya(st_ptr, offs + 10 * R, w_ptr, oj, R, nxt, mr)
            sm = tl.load(st_ptr + offs + 4 * R, mask=m, other=0.0)
            pd = inv[None, :] * (ya / P - (mu * abar)[None, :]) + (bet * abar)[None, :]
            pm = inv[None, :] * (sm / P - mu[None, :]) + bet[None, :]
            tl.store(out_ptr + of[:, None] * R + oj[None, :], tl.where(nxt, pd - pm, 0.0), mask=m)

    return motion_means_fwd


def _build_bwd(triton, tl):
    @triton.jit
    def motion_means_bwd(gd_ptr, st_ptr, w_ptr, g_ptr, b_ptr, mu_ptr, invs_ptr, cnt_ptr, gst_ptr, gw_ptr, gg_ptr,
                         gb_ptr, NT, R, P, T, BATCH: tl.constexpr, BF: tl.constexpr, BR: tl.constexpr):
        oj = tl.program_id(0) * BR + tl.arange(0, BR)
        mr = oj < R
        mu = tl.load(mu_ptr + oj, mask=mr, other=0.0)
        invs = tl.load(invs_ptr + oj, mask=mr, other=0.0)
        gam = tl.load(g_ptr + oj, mask=mr, other=0.0)
        bet = tl.load(b_ptr + oj, mask=mr, other=0.0)
        inv = gam * invs
        abar = _abar(w_ptr, cnt_ptr, oj, mr)
        g_d = tl.full([BR], 0.0, tl.float32)
        g_m = tl.full([BR], 0.0, tl.float32)
        g_inv = tl.full([BR], 0.0, tl.float32)
        for f0 in range(0, NT, BF):
            m, offs, gpd, gpm = _grad_tile(gd_ptr, f0, NT, R, T, oj, mr, BF)
            ya = _ya(st_ptr, offs, w_ptr, oj, R, m, mr)
            sm = tl.load(st_ptr + offs + 4 * R, mask=m, other=0.0)
            g_d += tl.reduce(gpd, 0, _tl_add)
            g_m += tl.reduce(gpm, 0, _tl_add)
            g_inv += tl.reduce(gpd * (ya / P - (mu * abar)[None, :]) + gpm * (sm / P - mu[None, :]), 0, _tl_add)
        tl.store(gg_ptr + oj, g_inv * invs, mask=mr)
        tl.store(gb_ptr + oj, g_d * abar + g_m, mask=mr)
        g_abar = g_d * (bet - inv * mu)
        if BATCH:  # μ and σ are the batch's: their gradients reach the sums
            g_var = -0.5 * g_inv * gam * invs * invs * invs
            g_mu = -inv * (abar * g_d + g_m)
        else:
            g_var = tl.full([BR], 0.0, tl.float32)
            g_mu = tl.full([BR], 0.0, tl.float32)
        for q in tl.static_range(9):  # the tap weights: Σ_f gpd · inv · S_tap / P + the Ā share
            acc = tl.full([BR], 0.0, tl.float32)
            for f0 in range(0, NT, BF):
                m, offs, gpd, _ = _grad_tile(gd_ptr, f0, NT, R, T, oj, mr, BF)
                acc += tl.reduce(gpd * tl.load(st_ptr + offs + q * R, mask=m, other=0.0), 0, _tl_add)
            tl.store(gw_ptr + oj * 9 + q, inv / P * acc + g_abar * tl.load(cnt_ptr + q), mask=mr)
        n = NT * P
        mfr = mu * P
        for f0 in range(0, NT, BF):
            m, offs, gpd, gpm = _grad_tile(gd_ptr, f0, NT, R, T, oj, mr, BF)
            for q in tl.static_range(9):
                g = gpd * (inv / P * tl.load(w_ptr + oj * 9 + q, mask=mr, other=0.0))[None, :]
                if q == 4:  # the plain sum: also in mean_p(m) and in the batch statistics
                    sm = tl.load(st_ptr + offs + 4 * R, mask=m, other=0.0)
                    g += gpm * (inv / P)[None, :] + (g_mu / n)[None, :] + (2.0 * g_var / (P * n))[None, :] \
                        * (sm - mfr[None, :])
                tl.store(gst_ptr + offs + q * R, g, mask=m)
            tl.store(gst_ptr + offs + 9 * R, tl.full([BF, BR], 0.0, tl.float32) + (g_var / n)[None, :], mask=m)

    return motion_means_bwd


@torch.library.custom_op("action_net::motion_means", mutates_args=())
def _means(st: torch.Tensor, tap_w: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
           running_mean: torch.Tensor, running_var: torch.Tensor, counts: torch.Tensor, p: int, t: int,
           eps: float, batch: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d, μ, 1/σ, unbiased batch variance)``: ``d`` (N·T, r) = mean_p(m·A)[t + 1] - mean_p(m)[t] (0 at a
    clip's last frame) from ``st`` (N·T, 10, r); with ``batch`` the batch statistics, else the running ones
    (then the last output is the running variance). Functional (autograd needs that): the caller moves the
    running statistics."""
    nt, _, r = st.shape
    out = st.new_empty(nt, r)
    mu, invs, varu = st.new_empty(r), st.new_empty(r), st.new_empty(r)
    bf, br = BLOCKS
    n = nt * p
    k_fwd, _ = _kernels()
    with _on(st):
        k_fwd[(-(-r // br),)](st, tap_w, weight, bias, running_mean, running_var, counts, out, mu, invs, varu, nt,
                              r, p, t, eps, n / max(n - 1, 1), BATCH=batch, BF=bf, BR=br)
    return out, mu, invs, varu


@_means.register_fake
def _means_fake(st, tap_w, weight, bias, running_mean, running_var, counts, p, t, eps, batch):
    nt, _, r = st.shape
    return st.new_empty(nt, r), st.new_empty(r), st.new_empty(r), st.new_empty(r)


@torch.library.custom_op("action_net::motion_means_backward", mutates_args=())
def _means_backward(gd: torch.Tensor, st: torch.Tensor, tap_w: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, mu: torch.Tensor, invs: torch.Tensor, counts: torch.Tensor, p: int, t: int,
                    batch: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g_st, g_tap_w, g_weight, g_bias)`` of :func:`_means`' ``d``."""
    nt, _, r = st.shape
    gst, gw = torch.empty_like(st), torch.empty_like(tap_w)
    gg, gb = torch.empty_like(weight), torch.empty_like(bias)
    bf, br = BLOCKS
    _, k_bwd = _kernels()
    with _on(st):
        k_bwd[(-(-r // br),)](gd.contiguous(), st, tap_w, weight, bias, mu, invs, counts, gst, gw, gg, gb, nt, r,
                              p, t, BATCH=batch, BF=bf, BR=br)
    return gst, gw, gg, gb


@_means_backward.register_fake
def _means_backward_fake(gd, st, tap_w, weight, bias, mu, invs, counts, p, t, batch):
    return torch.empty_like(st), torch.empty_like(tap_w), torch.empty_like(weight), torch.empty_like(bias)


def _setup(ctx, inputs, output):
    st, tap_w, weight, bias, _, _, counts, p, t, _, batch = inputs
    _, mu, invs, varu = output
    ctx.mark_non_differentiable(mu, invs, varu)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics outputs (launches)
    ctx.save_for_backward(st, tap_w, weight, bias, mu, invs, counts)
    ctx.p, ctx.t, ctx.batch = p, t, batch


def _grad(ctx, gd, _gmu, _ginvs, _gvaru):
    st, tap_w, weight, bias, mu, invs, counts = ctx.saved_tensors
    if gd is None:
        return None, None, None, None, None, None, None, None, None, None, None
    gst, gw, gg, gb = _means_backward(gd, st, tap_w, weight, bias, mu, invs, counts, ctx.p, ctx.t, ctx.batch)
    return gst, gw, gg, gb, None, None, None, None, None, None, None


_means.register_autograd(_grad, setup_context=_setup)


def motion_means(bn: torch.nn.BatchNorm2d, conv_w: torch.Tensor, st: torch.Tensor, h: int, w: int,
                 t: int) -> torch.Tensor:
    """(N·T, r) fp32 ``d[t] = mean_p(conv(m))[t + 1] - mean_p(m)[t]`` (0 at a clip's last frame; the motion
    excitation's input) for ``m = bn(y)`` from :func:`action.fused_motion.motion_stats`' statistics, ``conv`` the
    depthwise 3×3 conv of ``conv_w`` (r, 1, 3, 3): batch norm as ``bn`` computes it in train and eval mode (batch
    statistics and the running-statistic update, or the running statistics), without building ``m``."""
    r = st.shape[2]
    batch = bn.training or bn.running_mean is None
    ones = zeros = None
    if not bn.affine or bn.running_mean is None:
        ones, zeros = st.new_ones(r), st.new_zeros(r)
    weight, bias = (bn.weight, bn.bias) if bn.affine else (ones, zeros)
    rm, rv = (bn.running_mean, bn.running_var) if bn.running_mean is not None else (zeros, ones.clone())
    out, mu, _, varu = _means(st, conv_w.reshape(r, 9).float(), weight.float(), bias.float(), rm, rv,
                              _tap_counts(h, w, st.device), h * w, t, bn.eps, batch)
    if bn.training and bn.track_running_stats:  # as nn.BatchNorm2d moves them
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            mom = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mu.to(bn.running_mean.dtype), mom)
            bn.running_var.lerp_(varu.to(bn.running_var.dtype), mom)
    return out


def _tap_counts(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(9,) fp32: the share of a frame's pixels each tap of a zero-padded 3×3 conv reads (row-major taps);
    made once per frame size and device in eager mode (no host-to-device copy per call)."""
    if torch.compiler.is_compiling():  # a constant of the traced graph
        return _make_tap_counts(h, w, device)
    return _cached_tap_counts(h, w, device)


@functools.lru_cache(maxsize=64)
def _cached_tap_counts(h: int, w: int, device: torch.device) -> torch.Tensor:
    return _make_tap_counts(h, w, device)


def _make_tap_counts(h: int, w: int, device: torch.device) -> torch.Tensor:
    rows = torch.tensor([h - 1, h, h - 1], dtype=torch.float32)
    cols = torch.tensor([w - 1, w, w - 1], dtype=torch.float32)
    return (rows[:, None] * cols[None, :] / (h * w)).reshape(9).to(device)

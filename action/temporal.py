"""Temporal modules that wrap a 2D convolution of a TSN backbone.

* :class:`Action` — the ACTION module of Wang et al. (CVPR'21): learnable temporal shift, then
  spatio-temporal (p1), channel (p2) and motion (p3) excitation; the wrapped conv sees ``p1 + p2 + p3``.
  Parameter names are the official ones (``action_shift``, ``action_p1_conv1``, ..., ``net``), so the released
  checkpoints load unchanged. The forward is a re-formulation of the official one with the same result
  (float noise only), written for speed on CPU and GPU:

  - the shift is applied in the (N, T, C, H, W) layout the backbone already has — three fused
    multiply-adds over time-shifted views — instead of permuting to (N·H·W, C, T), running a depthwise
    ``Conv1d`` and permuting back (two full copies each way, forward and backward); on channels_last inputs
    it runs on the free (N, T, H·W, C) view as one autograd Function (:class:`_ShiftChannelsLast`) on GPU
    and as mkldnn's depthwise (3, 1) convolution on CPU (:data:`SHIFT_IMPLS`);
  - the big-tensor front (shift, squeeze GEMM, pooling) is one autograd Function (:class:`_ShiftSqueezePool`)
    whose backward accumulates the three incoming gradients into one buffer in place and gets the
    shift-weight gradient from one batched GEMM per clip;
  - the channel mean of p1 is an extra output row of the p3 squeeze GEMM (one read of ``xs`` for both);
  - pooled tensors are shared and pooled *before* subtracting: ``avgpool(conv(m)[t+1] - m[t])`` is computed
    as ``avgpool(conv(m))[t+1] - avgpool(m)[t]`` on (N, T, r) vectors, and ``avgpool(conv(m))`` itself as a
    weighted pooling of ``m`` (:func:`_pooled_conv_weights`), so neither the depthwise conv nor the padded
    difference is ever built at full resolution;
  - the tiny temporal ``Conv1d(r, r, 3)`` of p2 is one GEMM over three time-shifted copies;
  - the three gates are fused: ``xs·σ1 + xs + xs·σ2 + xs + xs·σ3 + xs == xs · (3 + σ2 + σ3 + σ1)``, one
    broadcast add and one multiply instead of six full-size passes and two sums.

  The parameters stay ordinary ``Conv1d``/``Conv2d``/``Conv3d``/``BatchNorm2d`` submodules (same shapes,
  same initialisation as the official code); only the forward uses their weights differently. On CUDA the
  big-tensor work runs as fused Triton kernels instead (:mod:`action.fused_action`, chosen by
  the module's ``impl``, :data:`ACTION_IMPLS`); both paths share the gate maths (:meth:`Action._gates`).

* TSM's plain shift (:class:`action.tsm.TemporalShift`) lives in :mod:`action.tsm`.

The official module computes the same thing as :class:`tests.action_reference.ReferenceAction`; the tests
check both agree in train and eval mode, forward and backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["Action", "init_shift_weight", "temporal_shift"]


def init_shift_weight(weight: torch.Tensor, fold: int) -> torch.Tensor:
    """Initialise a depthwise ``Conv1d`` weight of shape (C, 1, 3) as the official ACTION shift (in place):
    channels ``[0, fold)`` take the next frame (``weight[..., 2] = 1``), ``[fold, 2·fold)`` the previous one
    (``weight[..., 0] = 1``), the rest are identity (``weight[..., 1] = 1``)."""
    weight.zero_()
    weight[:fold, 0, 2] = 1
    weight[fold:2 * fold, 0, 0] = 1
    if 2 * fold < weight.shape[0]:
        weight[2 * fold:, 0, 1] = 1
    return weight


def temporal_shift(x5: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise temporal convolution (kernel 3, zero padding) of ``x5`` (N, T, C, ...), weight (C, 1, 3):
    ``out[:, t] = w0·x[:, t-1] + w1·x[:, t] + w2·x[:, t+1]`` per channel — exactly the official
    ``Conv1d(C, C, 3, padding=1, groups=C)`` over time, without leaving the (N, T, C, ...) layout.
    Differentiable through autograd (see :class:`_ShiftSqueezePool` for the fused training path)."""
    c = x5.shape[2]
    w = weight.reshape(c, 3).to(x5.dtype)
    bshape = (1, 1, c) + (1,) * (x5.dim() - 3)
    out = x5 * w[:, 1].reshape(bshape)
    if x5.shape[1] > 1:
        out[:, 1:].addcmul_(x5[:, :-1], w[:, 0].reshape(bshape))
        out[:, :-1].addcmul_(x5[:, 1:], w[:, 2].reshape(bshape))
    return out


def _shift_nograd(x5: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``temporal_shift`` on (N, T, C, P) with w (C, 3), no autograd."""
    c = x5.shape[2]
    out = x5 * w[:, 1].view(1, 1, c, 1)
    if x5.shape[1] > 1:
        out[:, 1:].addcmul_(x5[:, :-1], w[:, 0].view(1, 1, c, 1))
        out[:, :-1].addcmul_(x5[:, 1:], w[:, 2].view(1, 1, c, 1))
    return out


# How the shifts run (a model option: build_model(shift_impl=...), the modules' ``shift_impl`` attribute):
# "auto" (default) = the autograd Functions of this module, except ACTION's shift on channels_last CPU input,
#     where mkldnn's depthwise (3, 1) convolution is faster (fwd+bwd of a 256-channel 28x28 block, 16 frames:
#     19.5 ms vs 25-29 ms on 2 cores); on an H200 the Function makes the ACTION-R50 bf16 step 1.30x faster
#     (175 vs 229 ms, batch 32x8x224^2) and the TSM step 1.69x faster (62 vs 105 ms; bench/results/gpu/);
# "fused" = the Functions everywhere; "reference" = TSM through slice assignments and ACTION's channels_last
#     shift as the depthwise (3, 1) convolution -- the formulations the Functions replaced.
SHIFT_IMPLS = ("auto", "fused", "reference")

# Which ACTION block runs (a model option: build_model(action_impl=...), Config.action_impl, the modules'
# ``impl`` attribute): "auto" = the fused Triton kernels of action/fused_action.py (PyTorch custom operators, so
# torch.compile traces them) on CUDA tensors when triton imports, the torch path of this module otherwise;
# "triton" = the kernels on any device (CPU tensors need TRITON_INTERPRET=1: tests); "torch" = this module's
# path (train.py --action-impl).
ACTION_IMPLS = ("auto", "triton", "torch")


def check_impl(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a one-line ValueError naming the option."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r} "
                         f"(build_model({name}=...), train.py --action-impl)")
    return value


def _use_triton(x: torch.Tensor, impl: str) -> bool:
    if impl == "torch":
        return False
    if impl == "triton":
        return True
    if not x.is_cuda:
        return False
    if torch.compiler.is_compiling():  # compiling for CUDA: inductor brings triton
        return True
    from action import fused_action

    return fused_action.available()


_SMALL_FRAME = 100  # frames with fewer pixels use mkldnn's 1×1 conv for the squeeze GEMM (measured on CPU)


def _lagged_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For (N, T, C, P) tensors: ``d[c, k] = Σ_{n,t,p} a[n, t, c, p] · b[n, t+k-1, c, p]`` (zero outside
    [0, T)), k = 0, 1, 2 — the weight gradient of the depthwise temporal conv, via one batched GEMM per clip
    (C batches of (T×P)·(P×T), reading each tensor once) instead of three multiply + reduce passes."""
    n, t, c, p = a.shape
    acc = a.new_zeros(c, t, t)
    for i in range(n):
        acc.baddbmm_(a[i].transpose(0, 1), b[i].transpose(0, 1).transpose(1, 2))
    # acc[c, t, u] = Σ a[t]·b[u]; lag u - t = k - 1
    return torch.stack([acc.diagonal(offset=k - 1, dim1=1, dim2=2).sum(-1) for k in range(3)], dim=1)


class _ShiftSqueezePool(torch.autograd.Function):
    """Fused big-tensor front of ACTION (contiguous NCHW input, training path).

    Forward: ``xs = shift(x)``; ``y = W·xs`` (1×1 conv with the p3 squeeze rows plus a 1/C row giving the
    channel mean of p1); ``pooled = mean_hw(xs)``. Backward accumulates the three incoming gradients into one
    buffer in place (the ``xs`` gradient arrives fresh from the gate multiply and is used by nobody else),
    transposes the shift with three fused multiply-adds, and gets the shift-weight gradient from
    :func:`_lagged_dots` — versus autograd's per-slice copies, per-op temporaries and reductions.
    """

    @staticmethod
    def forward(ctx, x, w_shift, w_q, n, t):  # noqa: D102
        nt, c, h, w = x.shape
        p = h * w
        ws = w_shift.reshape(c, 3).to(x.dtype)
        wq = torch.cat([w_q.reshape(-1, c).to(x.dtype), x.new_full((1, c), 1.0 / c)], 0)
        x5 = x.view(n, t, c, p)
        xs = _shift_nograd(x5, ws).view(nt, c, p)
        if p < _SMALL_FRAME:  # one blocked GEMM over all frames (mkldnn 1×1 conv)
            y = F.conv2d(xs.view(nt, c, h, w), wq.view(-1, c, 1, 1)).view(nt, -1, p)
        else:  # per-frame GEMMs straight on the NCHW layout, no reorder
            y = torch.matmul(wq, xs)  # (NT, r+1, P)
        pooled = xs.mean(-1)
        ctx.save_for_backward(x, xs, ws, wq)
        ctx.dims = (n, t, c, h, w)
        ctx.w_dtypes = (w_shift.dtype, w_q.dtype)
        return xs.view(nt, c, h, w), y.view(nt, -1, h, w), pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, g_xs, g_y, g_pooled):  # noqa: D102
        x, xs, ws, wq = ctx.saved_tensors
        n, t, c, h, w = ctx.dims
        nt, p = n * t, h * w
        if g_xs is None:
            g = xs.new_zeros(nt, c, p)
        else:
            g = g_xs.reshape(nt, c, p)
            if not g.is_contiguous() or g.data_ptr() == 0:
                g = g.contiguous()
        g_wq = None
        if g_y is not None:
            gy = g_y.reshape(nt, -1, p)
            r1 = wq.shape[0]
            if p < _SMALL_FRAME:
                g.add_(torch.nn.grad.conv2d_input((nt, c, h, w), wq.view(r1, c, 1, 1), gy.view(nt, r1, h, w))
                       .view(nt, c, p))
            else:
                g.baddbmm_(wq.t().expand(nt, c, r1), gy)
            if ctx.needs_input_grad[2]:
                if p >= r1:  # per-frame GEMMs, small (NT, r+1, C) partials
                    g_wq = torch.bmm(gy[:, :-1], xs.transpose(1, 2)).sum(0)
                else:  # tiny frames: one GEMM over a (C, NT·P) copy
                    g_wq = torch.mm(gy[:, :-1].transpose(0, 1).reshape(r1 - 1, nt * p),
                                    xs.transpose(0, 1).reshape(c, nt * p).t())
        if g_pooled is not None:
            g.add_(g_pooled.unsqueeze(-1), alpha=1.0 / p)
        g5 = g.view(n, t, c, p)
        gx = None
        if ctx.needs_input_grad[0]:
            # transpose of the shift: taps mirrored in time
            gx = g5 * ws[:, 1].view(1, 1, c, 1)
            if t > 1:
                gx[:, :-1].addcmul_(g5[:, 1:], ws[:, 0].view(1, 1, c, 1))
                gx[:, 1:].addcmul_(g5[:, :-1], ws[:, 2].view(1, 1, c, 1))
            gx = gx.view(nt, c, h, w)
        g_ws = None
        if ctx.needs_input_grad[1]:
            g_ws = _lagged_dots(g5, x.view(n, t, c, p)).view(c, 1, 3).to(ctx.w_dtypes[0])
        if g_wq is not None:
            g_wq = g_wq.reshape(-1, c, 1, 1).to(ctx.w_dtypes[1])
        return gx, g_ws, g_wq, None, None


class _ShiftChannelsLast(torch.autograd.Function):
    """ACTION's learnable shift on a channels_last (N·T, C, H, W) input, computed on its free (N, T, H·W, C)
    view: three fused multiply-adds over time-shifted slices forward, the mirrored taps backward, and the
    weight gradient as three lagged dot products per channel (fp32 accumulation). Output channels_last."""

    @staticmethod
    def forward(ctx, x, w_shift, n, t):  # noqa: D102
        nt, c, h, w = x.shape
        x4 = x.permute(0, 2, 3, 1).reshape(n, t, h * w, c)  # a view: channels_last memory is (N·T, H, W, C)
        ws = w_shift.reshape(c, 3).to(x.dtype)
        out = x4 * ws[:, 1]
        if t > 1:
            out[:, 1:].addcmul_(x4[:, :-1], ws[:, 0])
            out[:, :-1].addcmul_(x4[:, 1:], ws[:, 2])
        ctx.save_for_backward(x, ws)
        ctx.dims = (n, t, c, h, w)
        ctx.w_dtype = w_shift.dtype
        return out.view(nt, h, w, c).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: D102
        x, ws = ctx.saved_tensors
        n, t, c, h, w = ctx.dims
        nt, p = n * t, h * w
        g4 = g.permute(0, 2, 3, 1).contiguous().view(n, t, p, c)  # no copy when g is channels_last
        gx = g_w = None
        if ctx.needs_input_grad[0]:
            gx = g4 * ws[:, 1]
            if t > 1:
                gx[:, :-1].addcmul_(g4[:, 1:], ws[:, 0])
                gx[:, 1:].addcmul_(g4[:, :-1], ws[:, 2])
            gx = gx.view(nt, h, w, c).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            x4 = x.permute(0, 2, 3, 1).reshape(n, t, p, c)
            dims = (0, 1, 2)
            mid = (g4 * x4).sum(dims, dtype=torch.float32)
            if t > 1:
                prev = (g4[:, 1:] * x4[:, :-1]).sum(dims, dtype=torch.float32)  # tap 0 reads frame t-1
                nxt = (g4[:, :-1] * x4[:, 1:]).sum(dims, dtype=torch.float32)   # tap 2 reads frame t+1
            else:
                prev = nxt = torch.zeros_like(mid)
            g_w = torch.stack([prev, mid, nxt], 1).view(c, 1, 3).to(ctx.w_dtype)
        return gx, g_w, None, None


def _pooled_conv_weights(weight: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """For a depthwise 3×3 conv (padding 1) with ``weight`` (r, 1, 3, 3): the map A (1, r, h·w) such that
    ``sum_hw(conv(m)) == sum_hw(m · A)`` — tap (i, j) reads input pixel (y + i - 1, x + j - 1), so input pixel
    (y', x') is read by tap (i, j) iff that output pixel exists: rows i = 0 never read the last input row,
    i = 2 never the first; same for columns."""
    r = weight.shape[0]
    rows = weight.new_ones(3, h)
    rows[0, h - 1] = 0
    rows[2, 0] = 0
    cols = weight.new_ones(3, w)
    cols[0, w - 1] = 0
    cols[2, 0] = 0
    a = torch.matmul(torch.matmul(rows.t(), weight.view(r, 3, 3)), cols)  # (r, h, w)
    return a.reshape(1, r, h * w)


class Action(nn.Module):
    """ACTION wrapper around ``net`` (a Conv2d taking ``C = net.in_channels`` channels).

    Input (N·T, C, H, W) with frames of a clip contiguous; output ``net(p1 + p2 + p3)``. ``r = C // 16``,
    ``fold = C // shift_div``. State-dict names match the official ``models/action.py``.
    """

    def __init__(self, net: nn.Conv2d, n_segment: int = 8, shift_div: int = 8, impl: str = "auto",
                 shift_impl: str = "auto") -> None:
        super().__init__()
        self.net = net
        self.n_segment = int(n_segment)
        self.shift_div = int(shift_div)
        self.impl = check_impl("action_impl", impl, ACTION_IMPLS)
        self.shift_impl = check_impl("shift_impl", shift_impl, SHIFT_IMPLS)
        self.in_channels = c = net.in_channels
        self.reduced_channels = r = c // 16
        if r < 1:
            raise ValueError(f"ACTION needs at least 16 input channels, the wrapped conv has {c}")
        self.fold = c // shift_div
        self.action_shift = nn.Conv1d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        with torch.no_grad():
            init_shift_weight(self.action_shift.weight, self.fold)
        self.action_p1_conv1 = nn.Conv3d(1, 1, kernel_size=(3, 3, 3), stride=(1, 1, 1), bias=False,
                                         padding=(1, 1, 1))
        self.action_p2_squeeze = nn.Conv2d(c, r, kernel_size=(1, 1), bias=False)
        self.action_p2_conv1 = nn.Conv1d(r, r, kernel_size=3, stride=1, padding=1, bias=False)
        self.action_p2_expand = nn.Conv2d(r, c, kernel_size=(1, 1), bias=False)
        self.action_p3_squeeze = nn.Conv2d(c, r, kernel_size=(1, 1), bias=False)
        self.action_p3_bn1 = nn.BatchNorm2d(r)
        self.action_p3_conv1 = nn.Conv2d(r, r, kernel_size=(3, 3), padding=(1, 1), groups=r, bias=False)
        self.action_p3_expand = nn.Conv2d(r, c, kernel_size=(1, 1), bias=False)

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, shift_div={self.shift_div}, reduced_channels={self.reduced_channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t = self.n_segment
        n = nt // t
        r = self.reduced_channels
        if n * t != nt:
            raise ValueError(f"ACTION: batch dimension {nt} is not a multiple of n_segment={t}")
        if _use_triton(x, self.impl):
            from action import fused_action

            return self.net(fused_action.gated_input(self, x, n, t))
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        # p3 squeeze rows + a 1/C row: one GEMM over xs gives m and the channel mean of p1
        wq = self.action_p3_squeeze.weight
        if channels_last:
            wmean = torch.full((1, c, 1, 1), 1.0 / c, dtype=wq.dtype, device=wq.device)
            w_sq = torch.cat([wq, wmean], 0)
            # (N·T, C, H, W) channels_last is (N, T, H·W, C) in memory: the shift runs on that view, no copy
            if self.shift_impl == "reference" or (self.shift_impl == "auto" and not x.is_cuda):
                # as a depthwise (3, 1) conv on the (N, C, T, H·W) view (mkldnn: the faster one on CPU)
                x4 = x.permute(0, 2, 3, 1).reshape(n, t, h * w, c).permute(0, 3, 1, 2)
                xs = F.conv2d(x4, self.action_shift.weight.unsqueeze(-1).to(x.dtype), padding=(1, 0), groups=c)
                xs = xs.permute(0, 2, 3, 1).reshape(nt, h, w, c).permute(0, 3, 1, 2)
            else:
                xs = _ShiftChannelsLast.apply(x, self.action_shift.weight, n, t)
            y = F.conv2d(xs, w_sq.to(xs.dtype))
            pooled = xs.mean((2, 3))
        else:
            x = x.contiguous()
            xs, y, pooled = _ShiftSqueezePool.apply(x, self.action_shift.weight, wq, n, t)
        d = _motion_diff(self.action_p3_bn1(y[:, :r]), self.action_p3_conv1.weight, n, t, h, w)
        s = y[:, r].contiguous()  # (N·T, H, W) channel mean of xs (contiguous: conv3d needs it to be fast)
        gate, s1 = self._gates(s, pooled, d, n, t, h, w)
        out = xs * (gate.view(nt, c, 1, 1) + s1)
        if channels_last:
            out = out.contiguous(memory_format=fmt)
        return self.net(out)

    def _gates(self, s: torch.Tensor, pooled: torch.Tensor, d: torch.Tensor, n: int, t: int, h: int,
               w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The three excitations from the squeezed tensors of the shifted input ``xs``: ``s`` (N·T or N, [T,] H,
        W) its channel mean, ``pooled`` (N·T, C) its spatial means, ``d`` (N·T, r) fp32 the pooled motion of its
        batch-normed p3 squeeze (:func:`_motion_diff`).
        Returns ``gate = 3 + σ_ce + σ_me`` (N·T, C) and ``s1 = σ_ste`` (N·T, 1, H, W); the module's output is
        ``net(xs · (gate + s1))``. Shared by the torch and the Triton paths."""
        nt, c, r = n * t, self.in_channels, self.reduced_channels

        # p1: spatio-temporal gate (N·T, 1, H, W)
        s = s.reshape(n, t, h, w).unsqueeze(1)
        s1 = torch.sigmoid(self.action_p1_conv1(s)).squeeze(1).reshape(nt, 1, h, w)

        # p2: channel gate from the pooled xs (N·T, C); the temporal Conv1d(r, r, 3) as one GEMM over the
        # three time-shifted copies of the (N, T, r) squeeze (no convolution primitive for a 16×r problem)
        z = F.linear(pooled, self.action_p2_squeeze.weight.view(r, c)).view(n, t, r)
        zu = F.pad(z, (0, 0, 1, 1)).unfold(1, 3, 1).reshape(nt, r * 3)  # [.., c_in, k] = z[t + k - 1, c_in]
        z = F.relu(F.linear(zu, self.action_p2_conv1.weight.reshape(r, r * 3)))
        g2 = torch.sigmoid(F.linear(z, self.action_p2_expand.weight.view(c, r)))

        # p3: motion gate from the pooled difference
        g3 = torch.sigmoid(F.linear(d.reshape(nt, r), self.action_p3_expand.weight.view(c, r)))

        return g2 + g3 + 3.0, s1


def _motion_diff(m: torch.Tensor, conv_w: torch.Tensor, n: int, t: int, h: int, w: int) -> torch.Tensor:
    """``d[t] = avgpool(dwconv3x3(m)[t + 1] - m[t])`` (N·T, r) fp32, 0 at a clip's last frame, for the
    batch-normed p3 squeeze ``m``, pooled before the difference: ``mean_p(conv(m))[t + 1] - mean_p(m)[t]``. The
    pooled depthwise conv is a per-channel weighted sum of ``m`` with weights A = Σ_taps w_tap · [tap lands inside the
    zero-padded frame], so the conv is never run at full resolution. Both in fp32 (``m`` may be bf16 under
    autocast): their difference cancels where the motion is small, and bf16 means (8 bits) would leave rounding
    noise of ~0.4 % of |mean m| in it. (The Triton path gets both from per-block sums without building ``m``:
    :mod:`action.fused_motion_bn`.)"""
    nt, r = m.shape[:2]
    mm = m.reshape(nt, r, h * w)
    amap = _pooled_conv_weights(conv_w, h, w).float()
    pd = (mm * amap).sum(-1).mul_(1.0 / (h * w))  # fp32 by type promotion
    pm = mm.mean(-1, dtype=torch.float32)
    return F.pad(pd.view(n, t, r)[:, 1:] - pm.view(n, t, r)[:, :-1], (0, 0, 0, 1)).view(nt, r)

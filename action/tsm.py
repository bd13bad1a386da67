"""TSM's plain temporal shift (Lin et al.): fixed, not learnable, 1/``shift_div`` of the channels each way, before
the wrapped conv (``temporal="tsm"``)."""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from action.temporal import SHIFT_IMPLS, check_impl

__all__ = ["TemporalShift"]


class TemporalShift(nn.Module):
    """Plain TSM shift (Lin et al.) before ``net``: channels ``[0, fold)`` take the next frame, ``[fold,
    2·fold)`` the previous one, zero-padded in time; no parameters of its own. ``net`` keeps the name
    ``…conv1.net`` as in the official code."""

    def __init__(self, net: nn.Module, n_segment: int = 8, shift_div: int = 8, shift_impl: str = "auto") -> None:
        super().__init__()
        self.net = net
        self.n_segment = int(n_segment)
        self.shift_div = int(shift_div)
        self.shift_impl = check_impl("shift_impl", shift_impl, SHIFT_IMPLS)

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, shift_div={self.shift_div}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t = self.n_segment
        if nt % t:
            raise ValueError(f"TSM: batch dimension {nt} is not a multiple of n_segment={t}")
        fold = c // self.shift_div
        if self.shift_impl == "reference":  # the official formulation (autograd through slice assignments)
            x5 = x.reshape(nt // t, t, c, h, w)
            out = torch.zeros_like(x5)
            out[:, :-1, :fold] = x5[:, 1:, :fold]
            out[:, 1:, fold:2 * fold] = x5[:, :-1, fold:2 * fold]
            out[:, :, 2 * fold:] = x5[:, :, 2 * fold:]
            return self.net(out.view(nt, c, h, w))
        return self.net(_TSMShift.apply(x, t, fold))


def _tsm_shift_into(out5: torch.Tensor, x5: torch.Tensor, fold: int, sign: int) -> torch.Tensor:
    """``out5`` = TSM shift of ``x5`` (N, T, C, H, W): channels ``[0, fold)`` read frame ``t + sign``,
    ``[fold, 2·fold)`` frame ``t - sign`` (zero outside the clip), the rest frame ``t``. ``sign = -1`` is the
    transpose (the backward). One pass: every output element is written exactly once."""
    a, b = (slice(1, None), slice(None, -1)) if sign > 0 else (slice(None, -1), slice(1, None))
    edge_a, edge_b = (-1, 0) if sign > 0 else (0, -1)
    out5[:, b, :fold].copy_(x5[:, a, :fold])
    out5[:, edge_a, :fold].zero_()
    out5[:, a, fold:2 * fold].copy_(x5[:, b, fold:2 * fold])
    out5[:, edge_b, fold:2 * fold].zero_()
    out5[:, :, 2 * fold:].copy_(x5[:, :, 2 * fold:])
    return out5


class _TSMShift(torch.autograd.Function):
    """TSM shift of (N·T, C, H, W) in any memory format: forward one pass into a fresh tensor of the same
    layout, backward the mirrored shift of the gradient (one pass) -- instead of a zero fill plus three slice
    copies forward and, through autograd's CopySlices, a full clone of the gradient per slice backward."""

    @staticmethod
    def forward(ctx, x, t, fold):  # noqa: D102
        nt, c, h, w = x.shape
        ctx.dims = (nt // t, t, c, h, w, fold)
        out = torch.empty_like(x)  # same strides (channels_last stays channels_last)
        _tsm_shift_into(out.unflatten(0, (nt // t, t)), x.unflatten(0, (nt // t, t)), fold, +1)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # noqa: D102
        n, t, c, h, w, fold = ctx.dims
        gx = torch.empty_like(g)
        _tsm_shift_into(gx.unflatten(0, (n, t)), g.unflatten(0, (n, t)), fold, -1)
        return gx, None, None

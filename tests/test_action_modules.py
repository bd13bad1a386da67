"""Temporal modules: exact shift initialisation, and the optimised ACTION module against the line-by-line
official formulation (tests/action_reference.py) on random weights, train and eval, forward and backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from action.temporal import Action, init_shift_weight, temporal_shift
from action.tsm import TemporalShift
from tests.action_reference import ReferenceAction


def _randomise(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def _pair(c: int = 64, t: int = 4, shift_div: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    opt = Action(nn.Conv2d(c, 32, 3, padding=1, bias=False), n_segment=t, shift_div=shift_div)
    _randomise(opt, seed)
    ref = ReferenceAction(nn.Conv2d(c, 32, 3, padding=1, bias=False), n_segment=t, shift_div=shift_div)
    ref.load_state_dict(opt.state_dict())
    return opt, ref


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= atol * scale + rtol * scale, (a - b).abs().max().item()


def test_shift_initialisation_is_exact():
    a = Action(nn.Conv2d(64, 16, 1, bias=False), n_segment=8, shift_div=8)
    w = a.action_shift.weight.detach()
    assert w.shape == (64, 1, 3)
    expected = torch.zeros(64, 1, 3)
    expected[:8, 0, 2] = 1      # next frame
    expected[8:16, 0, 0] = 1    # previous frame
    expected[16:, 0, 1] = 1     # identity
    assert torch.equal(w, expected)
    assert a.action_shift.weight.requires_grad
    # shift_div leaving no identity channels, and a fold that does not divide C
    w2 = init_shift_weight(torch.empty(4, 1, 3), 2)
    assert torch.equal(w2, torch.tensor([[[0., 0., 1.]], [[0., 0., 1.]], [[1., 0., 0.]], [[1., 0., 0.]]]))
    w3 = init_shift_weight(torch.empty(20, 1, 3), 20 // 8)
    assert w3[:2, 0, 2].eq(1).all() and w3[2:4, 0, 0].eq(1).all() and w3[4:, 0, 1].eq(1).all()
    assert w3.sum().item() == 20


def test_action_layer_shapes_and_names():
    a = Action(nn.Conv2d(256, 64, 1, bias=False), n_segment=8)
    sd = a.state_dict()
    for key, shape in {
        "net.weight": (64, 256, 1, 1), "action_shift.weight": (256, 1, 3), "action_p1_conv1.weight": (1, 1, 3, 3, 3),
        "action_p2_squeeze.weight": (16, 256, 1, 1), "action_p2_conv1.weight": (16, 16, 3),
        "action_p2_expand.weight": (256, 16, 1, 1), "action_p3_squeeze.weight": (16, 256, 1, 1),
        "action_p3_bn1.weight": (16,), "action_p3_bn1.running_var": (16,), "action_p3_conv1.weight": (16, 1, 3, 3),
        "action_p3_expand.weight": (256, 16, 1, 1),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert set(ReferenceAction(nn.Conv2d(256, 64, 1, bias=False)).state_dict()) == set(sd)


def test_temporal_shift_equals_depthwise_conv1d():
    torch.manual_seed(0)
    n, t, c, h, w = 2, 5, 12, 3, 4
    x = torch.randn(n, t, c, h, w)
    weight = torch.randn(c, 1, 3)
    ours = temporal_shift(x, weight)
    ref = F.conv1d(x.permute(0, 3, 4, 2, 1).reshape(-1, c, t), weight, padding=1, groups=c)
    ref = ref.view(n, h, w, c, t).permute(0, 4, 3, 1, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("c, hw, t", [(64, 8, 4), (32, 5, 3), (128, 4, 8), (32, 11, 3)])
def test_action_matches_reference(train, c, hw, t):
    opt, ref = _pair(c=c, t=t)
    opt.train(train)
    ref.train(train)
    torch.manual_seed(1)
    x = torch.randn(2 * t, c, hw, hw)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    o1, o2 = opt(x1), ref(x2)
    _close(o1, o2)
    g = torch.randn_like(o1)
    o1.backward(g)
    o2.backward(g)
    _close(x1.grad, x2.grad)
    for (n1, p1), (n2, p2) in zip(opt.named_parameters(), ref.named_parameters(), strict=True):
        assert n1 == n2
        _close(p1.grad, p2.grad, rtol=1e-4)
    if train:  # BN running statistics moved identically
        torch.testing.assert_close(opt.action_p3_bn1.running_var, ref.action_p3_bn1.running_var)
        torch.testing.assert_close(opt.action_p3_bn1.running_mean, ref.action_p3_bn1.running_mean)


@pytest.mark.parametrize("impl", ["auto", "fused", "reference"])
@pytest.mark.parametrize("train", [False, True])
def test_action_channels_last_matches(impl, train, monkeypatch):
    """channels_last input (the GPU path): same output, input gradient and parameter gradients (the learnable
    shift's included) as the official formulation, with the fused shift Function and with the depthwise conv."""
    import action.temporal as AT

    torch.manual_seed(3)
    opt, ref = _pair(c=64, t=4)
    opt.shift_impl = impl
    with torch.no_grad():  # a non-trivial learned shift: every tap of every channel in play
        opt.action_shift.weight.add_(0.3 * torch.randn_like(opt.action_shift.weight))
        ref.action_shift.weight.copy_(opt.action_shift.weight)
    opt.train(train)
    ref.train(train)
    x = torch.randn(8, 64, 6, 6)
    xc = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    xr = x.clone().requires_grad_()
    out = opt(xc)
    want = ref(xr)
    _close(out, want)
    g = torch.randn_like(want)
    out.backward(g)
    want.backward(g)
    _close(xc.grad, xr.grad, rtol=1e-4)
    for (n1, p1), (n2, p2) in zip(opt.named_parameters(), ref.named_parameters(), strict=True):
        assert n1 == n2
        _close(p1.grad, p2.grad, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_tsm_function_matches_the_official_formulation(channels_last, monkeypatch):
    """The one-pass TSM Function equals the official zeros + slice-copies shift, forward and backward, and keeps
    the input's memory format."""
    import action.temporal as AT

    torch.manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(16, 4, 1, bias=False)
    x = torch.randn(2 * 5, 16, 3, 4).contiguous(memory_format=fmt)
    outs, grads = [], []
    for impl in ("fused", "reference"):
        tsm = TemporalShift(nn.Identity(), n_segment=5, shift_div=4, shift_impl=impl)
        xi = x.clone().requires_grad_()
        y = tsm(xi)
        assert y.is_contiguous(memory_format=fmt)
        (conv(y) ** 2).sum().backward()
        outs.append(y.detach())
        grads.append(xi.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    with pytest.raises(ValueError, match="multiple of n_segment"):
        TemporalShift(nn.Identity(), n_segment=3)(torch.randn(4, 8, 2, 2))


def test_action_bf16_autocast_runs():
    opt, ref = _pair(c=64, t=4)
    opt.eval()
    x = torch.randn(8, 64, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = opt(x)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref.eval()(x)).abs().max() / ref(x).abs().max()
    assert rel < 0.05


def test_action_rejects_bad_batch():
    a = Action(nn.Conv2d(32, 8, 1, bias=False), n_segment=4)
    with pytest.raises(ValueError, match="multiple of n_segment"):
        a(torch.randn(6, 32, 4, 4))


def test_tsm_shift_moves_folds():
    net = nn.Identity()
    tsm = TemporalShift(net, n_segment=3, shift_div=4)
    x = torch.arange(3 * 8, dtype=torch.float32).view(3, 8, 1, 1)  # one clip, T=3, C=8
    out = tsm(x).view(3, 8)
    xv = x.view(3, 8)
    assert torch.equal(out[:2, :2], xv[1:, :2]) and out[2, :2].eq(0).all()          # next frame
    assert torch.equal(out[1:, 2:4], xv[:-1, 2:4]) and out[0, 2:4].eq(0).all()      # previous frame
    assert torch.equal(out[:, 4:], xv[:, 4:])                                        # untouched
    assert list(tsm.parameters()) == []


def test_motion_excitation_pools_in_fp32_under_bf16_autocast():
    """Static clips through an identity shift and an identity motion conv: the motion difference d is exactly 0,
    so the motion expand weight gets no gradient. Its two pooled terms are computed in fp32 from the bf16 ``m``;
    with bf16 means their rounding left a gradient 1.0e-2 of the channel gate's (measured) -- pure noise."""
    torch.manual_seed(0)
    mod = Action(nn.Conv2d(64, 16, 1, bias=False), n_segment=4, impl="torch")
    with torch.no_grad():
        mod.action_p3_conv1.weight.zero_()
        mod.action_p3_conv1.weight[:, 0, 1, 1] = 1
        mod.action_p3_bn1.weight.uniform_(0.5, 1.5)
        mod.action_p3_bn1.bias.uniform_(-1, 1)
        mod.action_shift.weight.zero_()
        mod.action_shift.weight[:, 0, 1] = 1
    clip = torch.randn(2, 1, 64, 6, 6)
    x = clip.expand(2, 4, 64, 6, 6).reshape(8, 64, 6, 6).contiguous().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mod(x)
    out.float().square().mean().backward()
    ratio = (mod.action_p3_expand.weight.grad.norm() / mod.action_p2_expand.weight.grad.norm()).item()
    assert mod.action_p2_expand.weight.grad.norm() > 0 and ratio < 1e-4, ratio

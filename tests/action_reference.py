"""Baseline: a direct, line-by-line formulation of the official ACTION module (V-Sense/ACTION-Net,
``models/action.py``), kept only for benchmarks and equivalence tests.

It follows the official forward operation by operation — permute + contiguous copies around the depthwise
``Conv1d`` shift, the transpose + contiguous before the channel mean, a separate sigmoid gate and residual per
path, the padded motion difference before pooling — so ``bench/bench_model.py`` can measure what the
optimised :class:`action.temporal.Action` saves, and ``tests/test_action_*.py`` can check that both give the
same numbers for the same weights. Parameter and buffer names are the official ones, so a state dict moves
between this module and :class:`action.temporal.Action` unchanged.

Nothing here is imported by the product (``action/`` never imports ``bench/``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from action.temporal import init_shift_weight


class ReferenceAction(nn.Module):
    """The official ``Action`` wrapper, formulated as in the paper's code (no prints, no pdb)."""

    def __init__(self, net: nn.Conv2d, n_segment: int = 8, shift_div: int = 8) -> None:
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.in_channels = net.in_channels
        self.reduced_channels = self.in_channels // 16
        self.fold = self.in_channels // shift_div
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.relu = nn.ReLU(inplace=True)
        self.sigmoid = nn.Sigmoid()
        c, r = self.in_channels, self.reduced_channels
        self.action_shift = nn.Conv1d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        with torch.no_grad():
            init_shift_weight(self.action_shift.weight, self.fold)
        self.action_p1_conv1 = nn.Conv3d(1, 1, kernel_size=(3, 3, 3), stride=(1, 1, 1), bias=False,
                                         padding=(1, 1, 1))
        self.action_p2_squeeze = nn.Conv2d(c, r, kernel_size=(1, 1), stride=(1, 1), bias=False, padding=(0, 0))
        self.action_p2_conv1 = nn.Conv1d(r, r, kernel_size=3, stride=1, bias=False, padding=1, groups=1)
        self.action_p2_expand = nn.Conv2d(r, c, kernel_size=(1, 1), stride=(1, 1), bias=False, padding=(0, 0))
        self.pad = (0, 0, 0, 0, 0, 0, 0, 1)
        self.action_p3_squeeze = nn.Conv2d(c, r, kernel_size=(1, 1), stride=(1, 1), bias=False, padding=(0, 0))
        self.action_p3_bn1 = nn.BatchNorm2d(r)
        self.action_p3_conv1 = nn.Conv2d(r, r, kernel_size=(3, 3), stride=(1, 1), bias=False, padding=(1, 1),
                                         groups=r)
        self.action_p3_expand = nn.Conv2d(r, c, kernel_size=(1, 1), stride=(1, 1), bias=False, padding=(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.size()
        n_batch = nt // self.n_segment
        t = self.n_segment

        # learnable shift: (n, t, c, h, w) -> (n*h*w, c, t) -> depthwise conv1d -> back
        x_shift = x.view(n_batch, t, c, h, w)
        x_shift = x_shift.permute([0, 3, 4, 2, 1])
        x_shift = x_shift.contiguous().view(n_batch * h * w, c, t)
        x_shift = self.action_shift(x_shift)
        x_shift = x_shift.view(n_batch, h, w, c, t)
        x_shift = x_shift.permute([0, 4, 3, 1, 2])
        x_shift = x_shift.contiguous().view(nt, c, h, w)

        # spatio-temporal excitation
        x_p1 = x_shift.view(n_batch, t, c, h, w).transpose(2, 1).contiguous()
        x_p1 = x_p1.mean(1, keepdim=True)
        x_p1 = self.action_p1_conv1(x_p1)
        x_p1 = x_p1.transpose(2, 1).contiguous().view(nt, 1, h, w)
        x_p1 = self.sigmoid(x_p1)
        x_p1 = x_shift * x_p1 + x_shift

        # channel excitation
        x_p2 = self.avg_pool(x_shift)
        x_p2 = self.action_p2_squeeze(x_p2)
        nt, c2, _, _ = x_p2.size()
        x_p2 = x_p2.view(n_batch, t, c2, 1, 1).squeeze(-1).squeeze(-1).transpose(2, 1).contiguous()
        x_p2 = self.action_p2_conv1(x_p2)
        x_p2 = self.relu(x_p2)
        x_p2 = x_p2.transpose(2, 1).contiguous().view(-1, c2, 1, 1)
        x_p2 = self.action_p2_expand(x_p2)
        x_p2 = self.sigmoid(x_p2)
        x_p2 = x_shift * x_p2 + x_shift

        # motion excitation
        x3 = self.action_p3_squeeze(x_shift)
        x3 = self.action_p3_bn1(x3)
        nt, c3, h, w = x3.size()
        x3_plus0, _ = x3.view(n_batch, t, c3, h, w).split([t - 1, 1], dim=1)
        x3_plus1 = self.action_p3_conv1(x3)
        _, x3_plus1 = x3_plus1.view(n_batch, t, c3, h, w).split([1, t - 1], dim=1)
        x_p3 = x3_plus1 - x3_plus0
        x_p3 = F.pad(x_p3, self.pad, mode="constant", value=0)
        x_p3 = self.avg_pool(x_p3.view(nt, c3, h, w))
        x_p3 = self.action_p3_expand(x_p3)
        x_p3 = self.sigmoid(x_p3)
        x_p3 = x_shift * x_p3 + x_shift

        return self.net(x_p1 + x_p2 + x_p3)


def make_reference_model(model: nn.Module) -> nn.Module:
    """Swap every :class:`action.temporal.Action` inside ``model`` for a :class:`ReferenceAction` holding the
    same weights (in place); returns ``model``. Used to time and check the official formulation inside the
    full TSN network."""
    from action.temporal import Action

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Action):
                ref = ReferenceAction(child.net, n_segment=child.n_segment, shift_div=child.shift_div)
                ref.load_state_dict(child.state_dict())
                ref.train(child.training)
                setattr(module, child_name, ref)
    return model

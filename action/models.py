"""TSN wrapper over torchvision backbones with ACTION / TSM / no temporal module.

Structure and state-dict names follow the official ``models/models.py`` (TSN) + ``models/action.py``:

* ``base_model`` is the torchvision network; its classifier (``fc`` for ResNets, ``classifier`` for
  MobileNetV2) is replaced by ``Dropout(p)``; ``new_fc`` is a Linear(feature_dim, num_classes) with weight
  ~ N(0, 0.001) and bias 0, applied after the backbone; logits are averaged over the T segments ("avg"
  consensus).
* ResNets ("blockres" placement): ``conv1`` of every block is wrapped (every second block, i = 0, 2, 4, …, in
  every stage when ``layer3`` has ≥ 23 blocks, i.e. ResNet-101), so the wrapped conv lives at
  ``base_model.layerL.B.conv1.net.weight``. Basic blocks (ResNet-18/34) are wrapped the same way.
* MobileNetV2: the expansion 1×1 conv of each inverted residual that has a residual connection and an
  expansion layer (``features.N.conv.0.0`` in torchvision naming) is wrapped.

Differences from the official code, all deliberate: no prints, no ``pdb``; ``dropout=0`` still builds
``new_fc`` after an identity Dropout (official: the backbone ``fc`` itself becomes the classifier —
:func:`action.checkpoint.load_checkpoint` maps such ``base_model.fc.*`` keys onto ``new_fc``); no partial
BN (the official scripts never enable it); MobileNetV2 is torchvision's (the official one came from TSM's
``archs/``, whose key names differ, and no ACTION-MobileNetV2 weights were released).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from action.errors import ModelError
from action.temporal import ACTION_IMPLS, Action, check_impl
from action.tsm import TemporalShift

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2")
TEMPORALS = ("action", "tsm", "none")


def _make_backbone(arch: str) -> nn.Module:
    import torchvision

    if arch == "mobilenetv2":
        return torchvision.models.mobilenet_v2(weights=None)
    return getattr(torchvision.models, arch)(weights=None)


def _wrap(conv: nn.Module, temporal: str, num_segments: int, shift_div: int, impl: str, shift_impl: str) -> nn.Module:
    if temporal == "action":
        return Action(conv, n_segment=num_segments, shift_div=shift_div, impl=impl, shift_impl=shift_impl)
    return TemporalShift(conv, n_segment=num_segments, shift_div=shift_div, shift_impl=shift_impl)


def insert_temporal(base: nn.Module, arch: str, temporal: str, num_segments: int, shift_div: int,
                    impl: str = "auto", shift_impl: str = "auto") -> None:
    """Wrap the convolutions of ``base`` in place (see the module docstring for where)."""
    if temporal == "none":
        return
    if arch.startswith("resnet"):
        n_round = 2 if len(list(base.layer3.children())) >= 23 else 1
        for stage_name in ("layer1", "layer2", "layer3", "layer4"):
            stage = getattr(base, stage_name)
            for i, block in enumerate(stage.children()):
                if i % n_round == 0:
                    block.conv1 = _wrap(block.conv1, temporal, num_segments, shift_div, impl, shift_impl)
    elif arch == "mobilenetv2":
        from torchvision.models.mobilenetv2 import InvertedResidual

        for m in base.modules():
            if isinstance(m, InvertedResidual) and m.use_res_connect and len(m.conv) == 4:
                m.conv[0][0] = _wrap(m.conv[0][0], temporal, num_segments, shift_div, impl, shift_impl)
    else:  # pragma: no cover - guarded by build_model
        raise ModelError(f"unknown architecture {arch!r}")


class TSN(nn.Module):
    """Temporal Segment Network: (B, T, 3, H, W) → backbone per frame → Dropout → ``new_fc`` → mean over T.

    Attributes mirror the official wrapper where the trainer needs them: ``num_segments``, ``arch``,
    ``temporal`` (normalisation belongs to the data side's preset, not to the model).
    """

    def __init__(self, base_model: nn.Module, feature_dim: int, num_classes: int, num_segments: int,
                 arch: str, temporal: str, dropout: float) -> None:
        super().__init__()
        self.base_model = base_model
        self.new_fc = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.new_fc.weight, 0, 0.001)
        nn.init.constant_(self.new_fc.bias, 0)
        self.num_segments = num_segments
        self.num_classes = num_classes
        self.arch = arch
        self.temporal = temporal
        self.dropout = dropout

    def to(self, *args, **kwargs):  # noqa: D401 - same contract as nn.Module.to
        """``nn.Module.to`` that also accepts ``memory_format=torch.channels_last`` with ACTION inside:
        torch refuses channels_last for the 5-D ``action_p1_conv1`` weight, so the format is applied to the
        4-D parameters only (the 1-channel Conv3d gains nothing from it)."""
        fmt = kwargs.pop("memory_format", None)
        out = super().to(*args, **kwargs) if (args or kwargs) else self
        if fmt is not None:
            with torch.no_grad():
                for p in self.parameters():
                    if p.dim() == 4:
                        p.data = p.data.contiguous(memory_format=fmt)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected input (B, T, 3, H, W), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        if t != self.num_segments:
            raise ValueError(f"model built for {self.num_segments} segments, input has T={t}")
        base_out = self.base_model(x.reshape((-1, 3) + tuple(x.shape[-2:])))
        base_out = self.new_fc(base_out)
        return base_out.view(b, t, -1).mean(dim=1)


def resolve_action_impl(action_impl: str | None) -> str:
    """The ACTION implementation a model is built with (None = "auto")."""
    return check_impl("action_impl", action_impl or "auto", ACTION_IMPLS)


def set_impl(model: nn.Module, action_impl: str | None = None, shift_impl: str | None = None) -> nn.Module:
    """Switch a built model's implementations in place (same weights, same results up to float noise): ACTION's
    (``"auto"``, ``"triton"``, ``"torch"``; through :func:`resolve_action_impl`) and the shifts' (``"auto"``,
    ``"fused"``, ``"reference"``). None leaves one as it is. Benchmarks and tests compare paths with it."""
    from action.temporal import SHIFT_IMPLS

    impl = resolve_action_impl(action_impl) if action_impl is not None else None
    shift = check_impl("shift_impl", shift_impl, SHIFT_IMPLS) if shift_impl is not None else None
    for m in model.modules():
        if impl is not None and isinstance(m, Action):
            m.impl = impl
        if shift is not None and isinstance(m, (Action, TemporalShift)):
            m.shift_impl = shift
    return model


def zero_init_residual(base: nn.Module) -> int:
    """Zero the scale of the last batch norm of every residual branch (torchvision's ``zero_init_residual``,
    timm's ``zero_init_last``; MobileNetV2's inverted residuals with a skip too): each block starts as the
    identity, which keeps a from-scratch run at the official lr from diverging (issue 22: R50 on a fixed batch
    of 4 clips at lr 0.01 went 3.3 -> 1.4 -> 8-17 in 12 steps with the default init). Returns how many."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    done = 0
    for m in base.modules():
        bn = None
        if isinstance(m, Bottleneck):
            bn = m.bn3
        elif isinstance(m, BasicBlock):
            bn = m.bn2
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            bn = m.conv[-1]
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.zeros_(bn.weight)
            done += 1
    return done


def build_model(arch: str = "resnet50", num_classes: int = 83, num_segments: int = 8, temporal: str = "action",
                shift_div: int = 8, dropout: float = 0.5, pretrained: str | Path | None = None,
                action_impl: str | None = None, shift_impl: str = "auto", zero_init: bool = True) -> TSN:
    """Build the TSN model. ``pretrained`` is a local file holding a torchvision ImageNet state dict for the
    backbone (``torch.load(weights_only=True)``; its ``fc``/``classifier`` keys are ignored) — never a
    download. Without it, ``zero_init`` zeroes the last BN scale of every residual branch
    (:func:`zero_init_residual`; False = the official init). ``action_impl`` / ``shift_impl``: how the temporal
    modules compute (:func:`set_impl`; same parameters and results either way). See :mod:`action.models` for the
    layout and state-dict names."""
    arch = str(arch).lower().replace("_", "")
    if arch not in ARCHS:
        raise ModelError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if temporal not in TEMPORALS:
        raise ModelError(f"unknown temporal module {temporal!r}; choose one of {', '.join(TEMPORALS)}")
    if int(num_classes) < 1 or int(num_segments) < 1 or int(shift_div) < 1:
        raise ModelError(f"num_classes, num_segments and shift_div must be ≥ 1 (got {num_classes}, "
                         f"{num_segments}, {shift_div})")
    if not 0.0 <= float(dropout) < 1.0:
        raise ModelError(f"dropout must be in [0, 1), got {dropout}")
    base = _make_backbone(arch)
    if pretrained is not None:
        from action.checkpoint import load_backbone_weights

        load_backbone_weights(base, pretrained)
    elif zero_init:
        zero_init_residual(base)
    if arch == "mobilenetv2":
        feature_dim = base.classifier[-1].in_features
        base.classifier = nn.Dropout(p=float(dropout))
    else:
        feature_dim = base.fc.in_features
        base.fc = nn.Dropout(p=float(dropout))
    insert_temporal(base, arch, temporal, int(num_segments), int(shift_div), resolve_action_impl(action_impl),
                    shift_impl)
    return TSN(base, feature_dim, int(num_classes), int(num_segments), arch, temporal, float(dropout))

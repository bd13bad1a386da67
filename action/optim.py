"""Optimiser parameter groups of the official ``TSN.get_optim_policies`` (SGD, momentum 0.9).

:func:`param_groups` walks ``model.named_modules()`` in order, exactly like the official code:

=====================  ==========================================================  =======  =========
group ``name``         parameters                                                  lr_mult  decay_mult
=====================  ==========================================================  =======  =========
``first_conv_weight``  weight of the first Conv1d/2d/3d met (``base_model.conv1``)  1        1
``first_conv_bias``    its bias (empty for torchvision backbones)                  2        0
``normal_weight``      weights of every other Conv1d/2d/3d outside ACTION            1        1
                       (including the wrapped ``…conv1.net``); Linear weights when
                       ``fc_lr5=False``
``normal_bias``        their biases                                                2        0
``BN scale/shift``     BatchNorm1d/2d/3d weight and bias outside ACTION            1        0
``custom_weight``      ACTION modules (name contains ``action``, not ``bn``):        1        1
                       ``action_shift`` (Conv1d), ``action_p1_conv1`` (Conv3d),
                       ``action_p2_*``, ``action_p3_squeeze/conv1/expand``
``custom_bn``          ``action_p3_bn1`` weight and bias                           1        0
``lr5_weight``         Linear weights (``new_fc``) when ``fc_lr5``                  5        1
``lr10_bias``          Linear biases when ``fc_lr5``                               10       0
=====================  ==========================================================  =======  =========

The official scripts train without partial BN, so every BatchNorm is in a group (partial BN is not offered).
All nine groups are always returned, in this order, empty ones included, so optimizer state dicts line up
between runs. Each dict has ``params``, ``lr`` (= base lr × lr_mult), ``weight_decay`` (= base wd ×
decay_mult), ``name``, ``lr_mult``, ``decay_mult`` and can go straight to ``torch.optim.SGD(groups,
momentum=0.9)``. A scheduler rescales with ``group['lr'] = base_lr_now * group['lr_mult']`` (the official
``adjust_learning_rate``); weight decay never changes. A parameter that falls in no group, or in two, raises
:class:`~action.errors.ModelError`.
"""
from __future__ import annotations

from torch import nn

from action.errors import ModelError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

GROUPS = (  # name, lr_mult, decay_mult
    ("first_conv_weight", 1, 1),
    ("first_conv_bias", 2, 0),
    ("normal_weight", 1, 1),
    ("normal_bias", 2, 0),
    ("BN scale/shift", 1, 0),
    ("custom_weight", 1, 1),
    ("custom_bn", 1, 0),
    ("lr5_weight", 5, 1),
    ("lr10_bias", 10, 0),
)


def param_groups(model: nn.Module, lr: float, weight_decay: float, fc_lr5: bool = True) -> list[dict]:
    """Official parameter groups for ``model`` (see the module docstring)."""
    buckets: dict[str, list] = {name: [] for name, _, _ in GROUPS}
    conv_cnt = 0
    for name, m in model.named_modules():
        ps = list(m.parameters(recurse=False))
        if "action" in name.split(".")[-1] or ".action_" in name:
            if not ps:
                continue
            if "bn" not in name.split(".")[-1]:
                if len(ps) != 1:
                    raise ModelError(f"ACTION module {name} has {len(ps)} parameters; only a bias-free weight "
                                     f"is expected")
                buckets["custom_weight"].append(ps[0])
            else:
                buckets["custom_bn"].extend(ps)
        elif isinstance(m, _CONV):
            conv_cnt += 1
            weight, bias = m.weight, m.bias
            if conv_cnt == 1:
                buckets["first_conv_weight"].append(weight)
                if bias is not None:
                    buckets["first_conv_bias"].append(bias)
            else:
                buckets["normal_weight"].append(weight)
                if bias is not None:
                    buckets["normal_bias"].append(bias)
        elif isinstance(m, nn.Linear):
            buckets["lr5_weight" if fc_lr5 else "normal_weight"].append(m.weight)
            if m.bias is not None:
                buckets["lr10_bias" if fc_lr5 else "normal_bias"].append(m.bias)
        elif isinstance(m, _BN):
            buckets["BN scale/shift"].extend(ps)
        elif ps:
            raise ModelError(f"module {name or '<root>'} ({type(m).__name__}) has parameters but no learning "
                             f"policy; add it to action.optim.param_groups")
    # every parameter exactly once
    seen: dict[int, str] = {}
    for gname, plist in buckets.items():
        for p in plist:
            if id(p) in seen:
                raise ModelError(f"a parameter is in two groups: {seen[id(p)]} and {gname}")
            seen[id(p)] = gname
    stray = [n for n, p in model.named_parameters() if id(p) not in seen]
    if stray:
        raise ModelError(f"parameters in no optimiser group: {', '.join(stray[:20])}")
    return [{"params": buckets[gname], "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult,
             "name": gname, "lr_mult": lr_mult, "decay_mult": decay_mult}
            for gname, lr_mult, decay_mult in GROUPS]

"""Official optimiser groups: coverage (every parameter exactly once), multipliers, errors; the summary CLI."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from action import build_model
from action.errors import ModelError
from action.optim import param_groups

EXPECTED = {  # name: (lr_mult, decay_mult)
    "first_conv_weight": (1, 1), "first_conv_bias": (2, 0), "normal_weight": (1, 1), "normal_bias": (2, 0),
    "BN scale/shift": (1, 0), "custom_weight": (1, 1), "custom_bn": (1, 0), "lr5_weight": (5, 1),
    "lr10_bias": (10, 0),
}


@pytest.mark.parametrize("arch, temporal", [("resnet18", "action"), ("resnet50", "action"), ("resnet18", "tsm"),
                                            ("resnet18", "none"), ("mobilenetv2", "action")])
def test_groups_cover_every_parameter_once(arch, temporal):
    m = build_model(arch, num_classes=11, num_segments=4, temporal=temporal)
    groups = param_groups(m, lr=0.01, weight_decay=5e-4)
    assert [g["name"] for g in groups] == list(EXPECTED)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters()}
    for g in groups:
        lr_mult, decay_mult = EXPECTED[g["name"]]
        assert (g["lr_mult"], g["decay_mult"]) == (lr_mult, decay_mult)
        assert g["lr"] == pytest.approx(0.01 * lr_mult)
        assert g["weight_decay"] == pytest.approx(5e-4 * decay_mult)
    by = {g["name"]: g["params"] for g in groups}
    assert by["first_conv_weight"] == [m.base_model.conv1.weight if arch.startswith("resnet")
                                       else m.base_model.features[0][0].weight]
    assert by["lr5_weight"] == [m.new_fc.weight] and by["lr10_bias"] == [m.new_fc.bias]
    if temporal == "action" and arch.startswith("resnet"):
        blk = m.base_model.layer1[0].conv1
        custom = {id(p) for p in by["custom_weight"]}
        for name in ["action_shift", "action_p1_conv1", "action_p2_squeeze", "action_p2_conv1", "action_p2_expand",
                     "action_p3_squeeze", "action_p3_conv1", "action_p3_expand"]:
            assert id(getattr(blk, name).weight) in custom, name
        assert {id(p) for p in by["custom_bn"]} >= {id(blk.action_p3_bn1.weight), id(blk.action_p3_bn1.bias)}
        assert any(p is blk.net.weight for p in by["normal_weight"])  # wrapped conv is a normal conv
    torch.optim.SGD(groups, momentum=0.9)  # usable as is


def test_fc_lr5_off_puts_fc_in_normal_groups():
    m = build_model("resnet18", num_classes=3, num_segments=4)
    by = {g["name"]: g["params"] for g in param_groups(m, 0.1, 1e-4, fc_lr5=False)}
    assert by["lr5_weight"] == [] and by["lr10_bias"] == []
    assert any(p is m.new_fc.weight for p in by["normal_weight"])
    assert any(p is m.new_fc.bias for p in by["normal_bias"])


def test_parameter_without_policy_raises():
    m = build_model("resnet18", num_classes=3, num_segments=4)
    m.extra = nn.LayerNorm(4)
    with pytest.raises(ModelError, match="no learning policy"):
        param_groups(m, 0.01, 5e-4)
    m2 = build_model("resnet18", num_classes=3, num_segments=4)
    m2.loose = nn.Parameter(torch.zeros(2))
    with pytest.raises(ModelError, match="has parameters but no learning policy|in no optimiser group"):
        param_groups(m2, 0.01, 5e-4)


def test_summary_cli_small(capsys):
    from action.summary import main

    assert main(["--arch", "resnet18", "--classes", "10", "--segments", "2", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "parameters :" in out and "GMACs" in out
    assert main(["--arch", "vgg"]) == 2

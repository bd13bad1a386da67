"""TSN wrapper: shapes, parameter counts per arch, where modules are inserted, plain TSN equivalence,
pretrained weights from a local file, and the whole network against the official formulation."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from action import build_model
from action.errors import CheckpointError, ModelError
from action.temporal import Action
from action.tsm import TemporalShift
from tests.action_reference import make_reference_model


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("classes, expected", [(83, 27_895_919), (27, 27_781_175)])
def test_resnet50_action_parameter_count(classes, expected):
    assert _count(build_model("resnet50", num_classes=classes, num_segments=8)) == expected


def test_parameter_counts_per_arch():
    # plain TSN == torchvision backbone with a new classifier
    r50 = torchvision.models.resnet50()
    assert _count(build_model("resnet50", 83, temporal="none")) == _count(r50) - 2048 * 1000 - 1000 + 2048 * 83 + 83
    assert _count(build_model("resnet50", 83, temporal="tsm")) == _count(build_model("resnet50", 83, temporal="none"))
    r18 = build_model("resnet18", 10, temporal="action")
    assert sum(isinstance(m, Action) for m in r18.modules()) == 8
    r101 = build_model("resnet101", 10, temporal="action")
    wrapped = [n for n, m in r101.named_modules() if isinstance(m, Action)]
    # every second block of every stage: 3→2, 4→2, 23→12, 3→2
    assert len(wrapped) == 18
    assert "base_model.layer3.0.conv1" in wrapped and "base_model.layer3.1.conv1" not in wrapped
    assert "base_model.layer3.22.conv1" in wrapped
    mb = build_model("mobilenetv2", 10, temporal="action")
    mb_wrapped = [n for n, m in mb.named_modules() if isinstance(m, Action)]
    assert len(mb_wrapped) == 10  # inverted residuals with a residual connection
    assert all(n.endswith("conv.0.0") for n in mb_wrapped)
    assert _count(build_model("mobilenetv2", 10, temporal="none")) == _count(torchvision.models.mobilenet_v2()) - 1280 * 1000 - 1000 + 1280 * 10 + 10


def test_state_dict_names_follow_the_official_layout():
    sd = build_model("resnet50", 83).state_dict()
    for key in ["base_model.conv1.weight", "base_model.layer1.0.conv1.net.weight",
                "base_model.layer1.0.conv1.action_shift.weight", "base_model.layer4.2.conv1.action_p1_conv1.weight",
                "base_model.layer2.3.conv1.action_p2_squeeze.weight", "base_model.layer2.3.conv1.action_p2_conv1.weight",
                "base_model.layer2.3.conv1.action_p2_expand.weight", "base_model.layer3.5.conv1.action_p3_squeeze.weight",
                "base_model.layer3.5.conv1.action_p3_bn1.running_mean", "base_model.layer3.5.conv1.action_p3_conv1.weight",
                "base_model.layer3.5.conv1.action_p3_expand.weight", "new_fc.weight", "new_fc.bias"]:
        assert key in sd, key
    assert not any(k.startswith("base_model.fc.") for k in sd)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("temporal", ["action", "tsm", "none"])
def test_forward_shape(arch, temporal):
    torch.manual_seed(0)
    m = build_model(arch, num_classes=7, num_segments=4, temporal=temporal, dropout=0.5).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 4, 3, 64, 64))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_new_fc_init_and_dropout():
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=50, num_segments=4, dropout=0.3)
    assert isinstance(m.base_model.fc, nn.Dropout) and m.base_model.fc.p == 0.3
    assert m.new_fc.bias.eq(0).all()
    assert 0.0007 < m.new_fc.weight.std().item() < 0.0013


def test_temporal_none_equals_plain_tsn():
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=5, num_segments=4, temporal="none").eval()
    plain = torchvision.models.resnet18()
    sd = {k[len("base_model."):]: v for k, v in m.state_dict().items() if k.startswith("base_model.")}
    plain.fc = nn.Identity()
    plain.load_state_dict(sd)
    plain.eval()
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        feats = plain(x.view(8, 3, 64, 64))
        expected = m.new_fc(feats).view(2, 4, 5).mean(1)
        torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_whole_model_matches_official_formulation(train):
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=6, num_segments=4, temporal="action", dropout=0.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random ACTION weights so every path matters
        for name, p in m.named_parameters():
            if ".action_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        m.new_fc.weight.normal_(0, 0.1, generator=g)
    ref = make_reference_model(copy.deepcopy(m))
    assert set(ref.state_dict()) == set(m.state_dict())
    m.train(train)
    ref.train(train)
    x = torch.randn(2, 4, 3, 64, 64)
    o1, o2 = m(x), ref(x)
    torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-5)
    if train:
        o1.square().sum().backward()
        o2.square().sum().backward()
        p2 = dict(ref.named_parameters())
        for name, p in m.named_parameters():
            scale = max(1e-3, p2[name].grad.abs().max().item())
            assert (p.grad - p2[name].grad).abs().max().item() <= 2e-3 * scale, name


def test_channels_last_and_bf16_model():
    torch.manual_seed(0)
    m = build_model("resnet18", num_classes=6, num_segments=4).eval()
    x = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        mcl = copy.deepcopy(m).to(memory_format=torch.channels_last)
        torch.testing.assert_close(mcl(x), ref, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
    assert out.shape == (2, 6) and torch.isfinite(out.float()).all()


def test_tsm_model_wraps_conv1():
    m = build_model("resnet18", num_classes=3, num_segments=4, temporal="tsm")
    assert isinstance(m.base_model.layer1[0].conv1, TemporalShift)
    assert "base_model.layer1.0.conv1.net.weight" in m.state_dict()


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    m = build_model("resnet18", num_classes=4, num_segments=4, temporal="action", pretrained=str(path))
    assert torch.equal(m.base_model.conv1.weight, tv.conv1.weight)
    assert torch.equal(m.base_model.layer1[0].conv1.net.weight, tv.layer1[0].conv1.weight)
    assert torch.equal(m.base_model.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    # wrong backbone → clear error naming the keys
    with pytest.raises(CheckpointError, match="missing keys: layer1.2.conv1.weight"):
        build_model("resnet34", num_classes=4, pretrained=str(path))
    with pytest.raises(CheckpointError, match="not found"):
        build_model("resnet18", pretrained=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("kwargs, match", [
    ({"arch": "vgg16"}, "unknown arch"), ({"temporal": "tam"}, "unknown temporal"),
    ({"num_classes": 0}, "≥ 1"), ({"dropout": 1.0}, "dropout"),
])
def test_bad_requests(kwargs, match):
    with pytest.raises(ModelError, match=match):
        build_model(**kwargs)


def test_wrong_input_shape_is_a_clear_error():
    m = build_model("resnet18", num_classes=3, num_segments=4)
    with pytest.raises(ValueError, match="segments"):
        m(torch.randn(1, 8, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        m(torch.randn(4, 3, 32, 32))

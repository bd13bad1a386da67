"""Checkpoint I/O: official format with/without ``module.``, project checkpoints, strictness, refusal of
pickles."""
from __future__ import annotations

import pickle

import pytest
import torch

from action import build_model, load_checkpoint
from action.errors import CheckpointError


@pytest.fixture(scope="module")
def model_pair():
    torch.manual_seed(0)
    a = build_model("resnet18", num_classes=5, num_segments=4)
    torch.manual_seed(1)
    b = build_model("resnet18", num_classes=5, num_segments=4)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return a, b


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["official", "official-module", "project", "project-module", "bare"])
def test_round_trip(tmp_path, model_pair, layout):
    a, _ = model_pair
    torch.manual_seed(2)
    b = build_model("resnet18", num_classes=5, num_segments=4)
    sd = a.state_dict()
    if layout.endswith("module"):
        sd = {"module." + k: v for k, v in sd.items()}
    obj = {"official": lambda: {"state_dict": sd}, "official-module": lambda: {"state_dict": sd, "optimizer": {}},
           "project": lambda: {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
           "project-module": lambda: {"model": sd}, "bare": lambda: sd}[layout]()
    path = tmp_path / "ck.pth"
    torch.save(obj, path)
    assert not _same(a, b)
    load_checkpoint(b, path)
    assert _same(a, b)
    x = torch.randn(1, 4, 3, 32, 32)
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_official_key_names_load(tmp_path):
    """A state dict written key by key with the official names (as the released checkpoints are) loads."""
    m = build_model("resnet18", num_classes=3, num_segments=4)
    official = {}
    for k, v in m.state_dict().items():
        official["module." + k] = torch.full_like(v, 0.5) if v.is_floating_point() else v.clone()
    official_names = {k[len("module."):] for k in official}
    assert "base_model.layer1.0.conv1.net.weight" in official_names
    assert "base_model.layer1.0.conv1.action_p3_bn1.num_batches_tracked" in official_names
    torch.save({"state_dict": official}, tmp_path / "official.pth.tar")
    load_checkpoint(m, tmp_path / "official.pth.tar")
    assert m.base_model.layer2[1].conv1.action_p2_expand.weight.eq(0.5).all()


def test_missing_and_misshaped_keys_are_listed(tmp_path):
    m = build_model("resnet18", num_classes=3, num_segments=4)
    sd = dict(m.state_dict())
    del sd["base_model.layer1.0.conv1.action_shift.weight"]
    sd["new_fc.weight"] = torch.zeros(7, 512)
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(m, tmp_path / "bad.pth")
    msg = str(err.value)
    assert "bad.pth" in msg
    assert "missing keys: base_model.layer1.0.conv1.action_shift.weight" in msg
    assert "new_fc.weight (file (7, 512) vs model (3, 512))" in msg
    assert "unexpected keys: extra.weight" in msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    m = build_model("resnet18", num_classes=3, num_segments=4)
    for proto in (2, 4):
        path = tmp_path / f"evil{proto}.pth"
        with open(path, "wb") as f:
            pickle.dump({"state_dict": Evil()}, f, protocol=proto)
        with pytest.raises(CheckpointError, match=rf"evil{proto}\.pth: refusing to unpickle"):
            load_checkpoint(m, path)
    torch.save({"state_dict": Evil()}, tmp_path / "evil_zip.pth")  # torch.save zip with a global in it
    with pytest.raises(CheckpointError, match=r"evil_zip\.pth: refusing to unpickle.*Unsupported global"):
        load_checkpoint(m, tmp_path / "evil_zip.pth")


def test_unreadable_and_not_a_state_dict(tmp_path):
    m = build_model("resnet18", num_classes=3, num_segments=4)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(m, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read"):
        load_checkpoint(m, tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "nosd.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_checkpoint(m, tmp_path / "nosd.pth")


def test_official_dropout0_classifier_maps_to_new_fc(tmp_path):
    m = build_model("resnet18", num_classes=3, num_segments=4)
    sd = dict(m.state_dict())
    sd["base_model.fc.weight"] = sd.pop("new_fc.weight") + 1
    sd["base_model.fc.bias"] = sd.pop("new_fc.bias") + 1
    torch.save({"state_dict": sd}, tmp_path / "d0.pth")
    load_checkpoint(m, tmp_path / "d0.pth")
    assert m.new_fc.bias.eq(1).all()

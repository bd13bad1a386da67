"""`train.py export`: torch.export (pt2) always, ONNX where onnxruntime is installed; parity with PyTorch
measured on weights whose logits are far from zero, a dynamic batch axis, one-line errors."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from predicttools import CLASSES, make_checkpoint
from trainer.export import TOLERANCE, export_command, max_rel_diff, run_exported

T, SIZE = 2, 32
HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "onnxscript"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", num_segments=T, size=SIZE)


def reference(ckpt, x):
    from trainer.predict import load_model

    with torch.inference_mode():
        return load_model(str(ckpt), torch.device("cpu")).model(x)


def export(ckpt, fmt, out):
    res = CliRunner().invoke(export_command, ["--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)])
    return res.exit_code, json.loads(res.stdout.strip().splitlines()[-1]) if res.exit_code == 0 else None, res.stderr


@pytest.mark.parametrize("fmt", ["pt2", pytest.param("onnx", marks=pytest.mark.skipif(
    not HAS_ORT, reason="onnxruntime/onnx/onnxscript not installed: pip install '.[export]' (make setup-export)"))])
def test_export_matches_pytorch_on_any_batch(tmp_path, ckpt, fmt):
    out = tmp_path / f"model.{fmt}"
    code, res, err = export(ckpt, fmt, out)
    assert code == 0, err
    assert res["ok"] and res["max_rel_diff"] <= TOLERANCE and res["max_abs_logit"] > 1.0  # logits far from zero
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["classes"] == CLASSES and meta["num_segments"] == T and meta["size"] == SIZE
    g = torch.Generator().manual_seed(7)
    for b in (1, 5):  # neither is the traced batch (2) nor the checked one (3): the batch axis is dynamic
        x = torch.randn((b, T, 3, SIZE, SIZE), generator=g)
        ref = reference(ckpt, x)
        got = run_exported(fmt, str(out), x)
        assert got.shape == (b, len(CLASSES)) and max_rel_diff(ref, got) <= TOLERANCE


def test_max_rel_diff_is_relative_to_the_logits_scale():
    ref = torch.tensor([[100.0, -50.0], [3.0, 0.0]])
    assert max_rel_diff(ref, ref) == 0.0
    assert max_rel_diff(ref, ref + torch.tensor([[0.0, 0.02], [0.0, 0.0]])) == pytest.approx(2e-4, rel=1e-3)
    assert max_rel_diff(ref * 1e-10, ref * 1e-10 + 1e-12) > TOLERANCE  # an absolute bound would pass this


def test_export_errors_are_one_line(tmp_path, ckpt):
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(ckpt, weights_only=True)["model"], bare)
    for path, why in [(tmp_path / "none.pt", "no such checkpoint"), (bare, "not a train.py run checkpoint")]:
        res = CliRunner().invoke(export_command, ["--checkpoint", str(path), "--format", "pt2", "--out",
                                                  str(tmp_path / "m.pt2")])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 3 and len(lines) == 1 and lines[0].startswith(f"error: {path}") and why in lines[0]

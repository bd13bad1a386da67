"""CUDA paths of the torch backend and of train.py. Skipped (with the reason) on hosts without a CUDA device.

CI has no GPU: these run on GPU hosts (``python -m pytest tests/test_cuda.py``; bench/gpu_check.sh runs them with
the GPU benchmarks). They check what the CPU tests cannot: pinned non-blocking delivery to the device, GPU
normalisation, the batched nvJPEG decode path (``decode_device="cuda"``) and a bf16/channels_last training run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines import build_loader
from pipelines.ingest.convert import convert_dataset

ROOT = Path(__file__).resolve().parent.parent
T, SIZE = 8, 112

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the GPU delivery / nvJPEG / bf16 training paths run only on "
                                       "GPU hosts (bench/gpu_check.sh)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from rawtrees import make_jester

    root = tmp_path_factory.mktemp("cuda")
    make_jester(root / "raw", n_train=12, n_val=7, n_test=3, frames=(3, 14), size=(176, 100), seed=2)
    convert_dataset("jester", root / "raw", root / "out", workers=1)
    return str(root / "out")


def _all(loader):
    cs, ls = [], []
    for c, lab in loader:
        assert c.is_cuda == (loader.device.type == "cuda") and lab.device == c.device
        cs.append(c.cpu())
        ls.append(lab.cpu())
    return torch.cat(cs), torch.cat(ls)


@pytest.mark.parametrize("mode, split", [("train", "train"), ("val", "val"), ("test", "test")])
def test_cuda_delivery_is_bit_identical_to_cpu_delivery(data, mode, split):
    """Same seed, same plans: the pinned, non-blocking copy changes no byte; GPU normalisation matches the CPU's."""
    kw = dict(mode=mode, batch_size=3, num_segments=T, size=SIZE, seed=7, workers=2, test_clips=2)
    cpu = _all(build_loader(data, split, backend="torch", device="cpu", **kw))
    gpu = _all(build_loader(data, split, backend="torch", device="cuda", **kw))
    assert cpu[0].dtype == gpu[0].dtype == torch.uint8 and cpu[0].shape == gpu[0].shape
    assert torch.equal(cpu[0], gpu[0]) and torch.equal(cpu[1], gpu[1])
    from pipelines.plan.presets import normalize

    ncpu, ngpu = normalize(cpu[0]), normalize(gpu[0])
    assert ngpu.dtype == torch.float32
    torch.testing.assert_close(ngpu.cpu(), ncpu, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode, split", [("train", "train"), ("val", "val")])
def test_nvjpeg_decode_path_matches_cpu_decode(data, mode, split):
    """decode_device="cuda": workers ship bytes, torchvision's batched nvJPEG decodes, the plans resample on the GPU.
    Same resampling order on both sides (``resample="reference"``), so the difference is the decoder: nvJPEG upsamples
    chroma without libjpeg-turbo's "fancy" (triangular) filter, a few levels on average and large only on sharp
    colour edges. Measured on an H200 (torchvision 0.26, 176x100 frames): mean 1.2 (val), p99 18, max 92 -- the
    train figures then also held the fused-vs-two-step resize difference (mean 1.96, p99 23)."""
    kw = dict(mode=mode, batch_size=3, num_segments=T, size=SIZE, seed=7, workers=2, resample="reference")
    ref = _all(build_loader(data, split, backend="torch", device="cpu", **kw))
    got = _all(build_loader(data, split, backend="torch", device="cuda", decode_device="cuda", **kw))
    assert got[0].shape == ref[0].shape and torch.equal(got[1], ref[1])
    diff = (got[0].int() - ref[0].int()).abs().float()
    p99 = torch.quantile(diff.flatten()[:: max(1, diff.numel() // 1_000_000)], 0.99).item()
    print(f"nvjpeg vs cpu ({mode}): mean {diff.mean():.3f} p99 {p99:.1f} max {diff.max():.0f}")
    assert diff.mean() <= 2.0 and p99 <= 32, (diff.mean(), p99, diff.max())


def _queue_gpu_work(matmuls: int = 40) -> None:
    """Queue ~0.5-2 s of matmuls on the current stream (any current GPU) without waiting for them."""
    a = torch.randn(8192, 8192, device="cuda")
    torch.cuda.synchronize()
    for _ in range(matmuls):
        a = a @ a
        a = a / a.norm()


def test_train_step_input_and_eval_counts_do_not_synchronise():
    """train.py's per-step normalisation and eval's per-batch counting queue work without waiting for the GPU."""
    from trainer.data import ModelInput

    to_input = ModelInput("jester", torch.device("cuda"))
    x = torch.randint(0, 256, (2, 8, 3, 64, 64), dtype=torch.uint8, device="cuda")
    ref = to_input(x)  # first call builds the constants (one sync, once)
    _queue_gpu_work()
    got = to_input(x)
    still_running = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert still_running, "ModelInput waited for the queued GPU work (a host sync every training step)"
    assert torch.equal(got, ref)


def test_loader_does_not_synchronise_the_stream_in_training(data):
    """The hot loop must not wait for the GPU: with work queued on the current stream, taking a batch returns
    while that work is still running (the profiler's ``sync_timing`` is off by default)."""
    ld = build_loader(data, "train", backend="torch", device="cuda", mode="train", batch_size=3, num_segments=T,
                      size=SIZE, seed=1, workers=2)
    it = iter(ld)
    next(it)
    _queue_gpu_work()
    next(it)
    still_running = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert still_running, "taking a batch waited for the queued GPU work (a host sync in the loader)"


@pytest.mark.parametrize("decode_on", ["workers", "device"])
def test_train_bf16_channels_last_on_cuda(data, tmp_path, decode_on):
    """A short train.py run on the GPU (auto = bf16 autocast + channels_last; JPEGs decoded by the loader
    workers, or by nvJPEG in the training process), then eval of its checkpoint."""
    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), "train", "--dataset", "jester", "--data", data, "--run-dir",
            str(run), "--device", "cuda", "--arch", "resnet18", "--num-segments", "4", "--size", "64", "--epochs", "2",
            "--lr-steps", "1", "--batch-size", "4", "--workers", "2", "--log-interval", "1", "--ceiling-steps", "2",
            "--decode-on", decode_on]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["device"] == "cuda"
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in recs if x["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:
        assert 0.0 <= e["val_top1"] <= 100.0 and e["train_loss"] == e["train_loss"] and e["clips_per_s"] > 0
        assert 0.0 <= e["data_wait"] <= 1.0
    r1 = subprocess.run([sys.executable, str(ROOT / "train.py"), "eval", "--run-dir", str(run), "--checkpoint",
                         str(run / "last.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    one = json.loads(r1.stdout.strip().splitlines()[-1])
    assert one["clips"] == 7
    assert one["top1"] == pytest.approx(epochs[-1]["val_top1"], abs=100 / 7 + 1e-6)


@pytest.mark.parametrize("temporal", ["tsm", "action"])
def test_fused_shifts_match_the_reference_formulation_on_cuda(temporal, monkeypatch):
    """channels_last on the GPU: the fused shift Functions give the official formulation's output and gradients
    (fp32; TF32 off so both sides round alike)."""
    from torch import nn

    import action.temporal as AT

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 16, 1, bias=False)
    mod = (AT.TemporalShift(conv, n_segment=4) if temporal == "tsm"
           else AT.Action(conv, n_segment=4, impl="torch")).cuda()  # the torch path holds the shift compared
    if temporal == "action":
        with torch.no_grad():
            mod.action_shift.weight.add_(0.3 * torch.randn_like(mod.action_shift.weight))
    x = torch.randn(8, 64, 14, 14, device="cuda").contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 16, 14, 14, device="cuda")
    res = []
    for impl in ("fused", "reference"):
        mod.shift_impl = impl
        mod.zero_grad()
        xi = x.clone().requires_grad_()
        out = mod(xi)
        out.backward(g)
        res.append((out.detach(), xi.grad, [p.grad.clone() for p in mod.parameters()]))
    (o1, gx1, gp1), (o2, gx2, gp2) = res
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=1e-4)
    for a, b in zip(gp1, gp2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)

"""train.py + trainer/: config validation, DDP train + exact eval, kill -9 resume equality, NaN stop, official
checkpoints, the pre-launch checks of `validate`.

CPU only, small: ResNet-18 ACTION, 4 segments, 64 px, generated Jester-layout shards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train as T
from trainer.config import make_config
from trainer.errors import ConfigError, TrainingError
from trainer.model import build_optimizer, build_scheduler

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
SMALL = ["--arch", "resnet18", "--num-segments", "4", "--size", "64", "--epochs", "2", "--lr-steps", "1",
         "--workers", "0", "--log-interval", "2", "--ceiling-steps", "1", "--dropout", "0.5", "--flip"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from rawtrees import jester_shards

    base = tmp_path_factory.mktemp("train-data")
    # 7 val clips: not divisible by world (2) x per-rank batch (2)
    return jester_shards(base, n_train=16, n_val=7, n_test=2, frames=(6, 10), size=(80, 64), seed=3)


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def _train_cmd(data, run, *extra, nproc=1):
    args = ["train", "--dataset", "jester", "--data", str(data), "--run-dir", str(run), "--device", "cpu", *SMALL, *extra]
    if nproc == 1:
        return [sys.executable, str(ROOT / "train.py"), *args]
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "train.py"), *args]


def _final_weights(run: Path) -> dict:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


# -------------------------------------------------------------------------------------------------- config
def test_config_layers_and_validation(tmp_path):
    cfg = make_config({"dataset": "egogesture", "data": "x"})
    assert (cfg.epochs, cfg.lr_steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.clip_grad) == \
        (20, (5, 10, 15), 64, 0.01, 5e-4, 20.0)
    assert make_config({"dataset": "sthv2", "data": "x"}).lr_steps == (30, 40, 45)
    assert make_config({"dataset": "jester", "data": "x", "lr_steps": "3,7"}).lr_steps == (3, 7)
    with pytest.raises(ConfigError) as e:
        make_config({"dataset": "jester", "data": "x", "lr": "-1", "batch_size": "0", "backend": "pil"})
    msg = str(e.value)
    assert "--lr=-1.0" in msg and "> 0.0" in msg and "--batch-size=0" in msg and "one of torch, dali, ffcv, folder" in msg
    with pytest.raises(ConfigError, match="--data is required"):
        make_config({"dataset": "jester"})
    f = tmp_path / "c.toml"
    f.write_text("epochs = 3\nunknown_key = 1\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        make_config({"dataset": "jester", "data": "x"}, str(f))


def test_lr_schedule():
    from action import build_model

    cfg = make_config({"dataset": "jester", "data": "x"})
    opt = build_optimizer(cfg, build_model(arch="resnet18", num_classes=3, num_segments=2, temporal="none"))
    sched = build_scheduler(cfg, opt)
    lrs = {}
    for e in range(25):
        lrs[e] = [g["lr"] for g in opt.param_groups]
        opt.step()  # (no gradients: changes nothing) the order torch expects
        sched.step()
    assert [round(lrs[e][0], 8) for e in (0, 4, 5, 9, 10, 15, 24)] == \
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.00001, 0.00001]
    # every group keeps its multiplier (official groups: x2 biases, x5 / x10 new_fc)
    assert [round(lr / lrs[e][0], 6) for e in (0, 15) for lr in lrs[e]] == [1, 2, 1, 2, 1, 1, 1, 5, 10] * 2
    resumed = build_scheduler(cfg, opt)
    resumed.load_state_dict(sched.state_dict())
    assert resumed.last_epoch == 25


def test_cli_rejects_bad_config_before_work(tmp_path):
    r = subprocess.run(_train_cmd(tmp_path / "nodata", tmp_path / "run", "--lr", "0"), capture_output=True,
                       text=True, env=_env(), timeout=120)
    assert r.returncode == 2 and "--lr=0.0 is not allowed" in r.stderr
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------------------- DDP
def test_ddp_two_process_train_and_exact_eval(shards, tmp_path):
    run = tmp_path / "ddp"
    r = subprocess.run(_train_cmd(shards, run, "--batch-size", "4", nproc=2), capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in recs if x["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:
        assert e["val_clips"] == 7  # every val clip exactly once across 2 ranks, no padding
        for k in ("val_top1", "val_top5"):  # a whole number of the 7 clips
            assert e[k] * 7 / 100 == pytest.approx(round(e[k] * 7 / 100), abs=1e-9), (k, e[k])
        assert 0.0 <= e["val_top1"] <= e["val_top5"] <= 100.0
        assert 0.0 < e["train_loss"] < 10.0  # 27 classes: chance is ln 27 = 3.3 (4 steps of batch 4 learn little)
        assert 0.0 < e["val_loss"] < float("inf")
        assert e["clips_per_s"] > 0.0 and 0.0 <= e["data_wait"] <= 1.0
    steps = [x for x in recs if x["kind"] == "train"]
    assert [x["step"] for x in steps] == [2, 4, 6, 8]  # 16 clips / batch 4 = 4 steps per epoch, logged every 2
    assert [x["lr"] for x in steps] == [0.01, 0.01, 0.001, 0.001]  # --lr-steps 1
    assert json.loads((run / "config.json").read_text())["batch_size"] == 4
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    # single-process eval of the same checkpoint gives the same exact numbers as the 2-rank eval
    # (per-process batch 2, as each of the 2 ranks had: CPU convolutions may round differently per batch size)
    r1 = subprocess.run([sys.executable, str(ROOT / "train.py"), "eval", "--run-dir", str(run), "--checkpoint",
                         str(run / "last.pt"), "--batch-size", "2"], capture_output=True, text=True, env=_env(),
                        timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    one = json.loads(r1.stdout.strip().splitlines()[-1])
    assert one["clips"] == 7
    assert (one["top1"], one["top5"], one["loss"]) == (pytest.approx(epochs[-1]["val_top1"]),
                                                       pytest.approx(epochs[-1]["val_top5"]),
                                                       pytest.approx(epochs[-1]["val_loss"], rel=1e-5))


# -------------------------------------------------------------------------------------------------- resume
# kill + --resume equality, step by step on 1 and 2 ranks: tests/test_resume.py
def test_resume_refuses_changed_config(shards, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(make_config({"dataset": "jester", "data": str(shards)}).to_json()))
    r = subprocess.run(_train_cmd(shards, run, "--resume"), capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 2 and "these options differ" in r.stderr


def test_decode_on_device_trains_on_the_same_batches(shards, tmp_path):
    """--decode-on device (workers ship JPEG bytes, the training process decodes them on its device -- nvJPEG
    on CUDA) gives, on CPU, bit-identical batches to decoding in the workers: identical final weights."""
    weights = {}
    for where in ("workers", "device"):
        run = tmp_path / where
        r = subprocess.run(_train_cmd(shards, run, "--batch-size", "4", "--epochs", "1", "--eval-every", "0",
                                      "--decode-on", where, "--workers", "2"),
                           capture_output=True, text=True, env=_env(), timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads((run / "config.json").read_text())["decode_on"] == where
        weights[where] = _final_weights(run)
    assert weights["workers"].keys() == weights["device"].keys()
    for k, v in weights["workers"].items():  # same pixels in the same memory layout: the same float rounding
        assert torch.equal(v, weights["device"][k]), k
    with pytest.raises(ConfigError, match="torch-backend option"):
        make_config({"dataset": "jester", "data": str(shards), "backend": "dali", "decode_on": "device"})


# -------------------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_and_keeps_last_good_checkpoint(shards, tmp_path, monkeypatch):
    run = tmp_path / "nan"
    cfg = make_config({"dataset": "jester", "data": str(shards), "run_dir": str(run), "device": "cpu",
                         "arch": "resnet18", "num_segments": 4, "size": 64, "epochs": 3, "batch_size": 2,
                         "workers": 0, "log_interval": 1, "ceiling_steps": 0, "eval_every": 0})
    real = T.build_model_for
    calls = {"n": 0}

    def poisoned(cfg_, num_classes, info):
        model = real(cfg_, num_classes, info)

        def hook(mod, inp, out):
            calls["n"] += 1
            return out * float("nan") if calls["n"] > 9 else out  # epoch 0 (8 steps) and 1 step are fine
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(T, "build_model_for", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 2 step 2.*last\.pt"):
        T.run_training(cfg, resume=False)
    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and ck["step_in_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


# (a full disk while writing a checkpoint: tests/faults/test_disk_full.py, a real ENOSPC from a small tmpfs)


# -------------------------------------------------------------------------------------------------- official weights
def test_eval_released_checkpoint_in_official_naming(shards, tmp_path):
    from action import build_model

    torch.manual_seed(5)
    model = build_model(arch="resnet18", num_classes=27, num_segments=4, temporal="action")
    official = {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}
    ck = tmp_path / "official.pth.tar"
    torch.save(official, ck)
    run = tmp_path / "ev"
    base = [sys.executable, str(ROOT / "train.py"), "eval", "--dataset", "jester", "--data", str(shards),
            "--run-dir", str(run), "--device", "cpu", "--arch", "resnet18", "--num-segments", "4", "--size", "64",
            "--batch-size", "3", "--workers", "0"]
    r = subprocess.run(base + ["--checkpoint", str(ck)], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["clips"] == res["labelled"] == 7 and 0.0 <= res["top1"] <= res["top5"] <= 100.0
    assert res["top1"] * 7 / 100 == pytest.approx(round(res["top1"] * 7 / 100), abs=1e-9)
    assert 0.0 < res["loss"] < float("inf")  # (a random new_fc: far from chance's ln 27 either way)
    # a mis-shaped checkpoint is one clear line, not a traceback
    bad = {"state_dict": {"base_model.fc.weight": torch.zeros(1)}}
    torch.save(bad, tmp_path / "bad.pth")
    r = subprocess.run(base + ["--checkpoint", str(tmp_path / "bad.pth")], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "bad.pth" in r.stderr


# -------------------------------------------------------------------------------------------------- validate
def _validate(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "validate", "--dataset", "jester", *args],
                          capture_output=True, text=True, env=_env(), timeout=120)


def test_validate_checks_data_backend_and_world_before_any_process(shards, tmp_path, monkeypatch):
    from trainer import data

    r = _validate("--data", str(tmp_path / "none"))  # no converted shards: one line naming the manifest and the fix
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none' / 'manifest.json'}: manifest not found (run tools/convert_dataset.py first, or "
        "check --data); `make convert DATASET=jester` writes it"]
    r = _validate("--data", str(shards), "--batch-size", "4", "--nproc", "3")
    assert r.returncode == 2 and r.stderr.strip() == "error: --batch-size 4 is global and must divide evenly over 3 ranks"
    r = _validate("--data", str(shards), "--batch-size", "4", "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batch_size"] == 4
    cfg = make_config({"dataset": "jester", "data": str(shards), "batch_size": "32", "backend": "dali"})
    monkeypatch.setitem(data.BACKEND_PACKAGES, "dali", "no_such_package_here")
    assert data.check(cfg, 1) == [
        "--backend dali needs the package 'no_such_package_here', which is not installed: pip install '.[dali]'",
        f"{shards}: the train split has 16 clips, fewer than one global batch of 32; lower --batch-size"]


def test_validate_rejects_a_bad_backend_option_before_any_process(shards):
    r = _validate("--data", str(shards), "--backend", "dali", "--resample", "pil", "--on-bad", "skip")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    problems = [x.strip() for x in r.stderr.splitlines() if x.startswith("  --")]  # one line per problem
    assert problems == ["--on-bad='skip' is not allowed (allowed: one of raise, replace)"], r.stderr
    r = _validate("--data", str(shards), "--backend", "dali", "--resample", "pil")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert [x.strip() for x in r.stderr.splitlines() if x.startswith("  --")] == [
        "--resample pil: dali backend: resample='pil' is not allowed (allowed: one of auto, reference, once)"]
    r = _validate("--data", str(shards), "--batch-size", "4", "--on-bad", "replace", "--remote-gap", "65536",
                  "--resample", "pil")
    assert r.returncode == 0, r.stderr
    saved = json.loads(r.stdout)
    assert (saved["on_bad"], saved["remote_gap"], saved["resample"]) == ("replace", 65536, "pil")


def test_on_bad_resample_and_remote_fields_reach_the_loader_spec(shards):
    from pipelines.backends.options import TorchOptions
    from trainer import data
    from trainer.dist import DistInfo

    cfg = make_config({"dataset": "jester", "data": str(shards), "device": "cpu", "batch_size": "2", "workers": "0",
                       "num_segments": "4", "size": "64", "on_bad": "replace", "resample": "pil",
                       "decode_on": "device", "remote_threads": "3", "remote_gap": "4096", "remote_connect_s": "1.5",
                       "remote_request_s": "4", "remote_attempts": "2"})
    loader = data.build(cfg, DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu")), "val", "val")
    try:
        spec = loader.spec
        assert spec.on_bad == "replace" and spec.options == TorchOptions(resample="pil", decode_device="cpu")
        assert (spec.remote_threads, spec.remote_gap) == (3, 4096)
        assert spec.timeouts == {"connect": 1.5, "request": 4.0, "attempts": 2}
        clips, labels = next(iter(loader))
        assert clips.shape == (2, 4, 3, 64, 64) and clips.dtype == torch.uint8 and labels.shape == (2,)
    finally:
        loader.close()


def test_resume_may_change_how_remote_data_is_read_but_not_on_bad(tmp_path):
    from trainer.config import merge_saved

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(make_config({"dataset": "jester", "data": "s3://b/x"}).to_json()))
    merged = merge_saved({"run_dir": str(run), "remote_gap": "1024", "remote_request_s": "30"}, resume=True)
    assert (merged["remote_gap"], merged["remote_request_s"]) == ("1024", "30")
    with pytest.raises(ConfigError, match=r"these options differ: \['on_bad', 'resample'\]"):
        merge_saved({"run_dir": str(run), "on_bad": "replace", "resample": "pil"}, resume=True)


def test_make_train_without_shards_is_one_line_before_torchrun(tmp_path):
    # STAMP= : the venv is the one running this test (make would otherwise check its install stamp)
    r = subprocess.run(["make", "--no-print-directory", "train", "STAMP=", f"PY={sys.executable}", "DATASET=jester",
                        f"DATA={tmp_path / 'none'}", f"RUN={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                       text=True, env=_env(), timeout=120)
    assert r.returncode != 0
    assert "torchrun" not in r.stdout and "Traceback" not in r.stderr  # stopped at validate: torchrun never ran
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "manifest not found" in errors[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_training_logs_the_loaders_cpu_cost(shards, tmp_path):
    """Each log interval and each epoch record the loader's CPU cost (issue 21): cores busy for the process with
    its workers, the part outside the training thread, and cores per 1,000 clips/s -- consistent with clips/s."""
    run = tmp_path / "cpu"
    r = subprocess.run(_train_cmd(shards, run, "--batch-size", "4", "--epochs", "1", "--eval-every", "0",
                                  "--workers", "2"), capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in recs if x["kind"] == "train"]
    epoch = [x for x in recs if x["kind"] == "epoch"]
    assert train and len(epoch) == 1
    for x in train + epoch:
        assert x["cpu_cores"] >= x["loader_cores"] > 0, x  # 2 decode threads worked outside the training thread
        # cores busy = CPU-seconds per clip x clips/s (the same window)
        assert x["loader_cores_per_1k_clips_s"] * x["clips_per_s"] / 1000 == pytest.approx(x["loader_cores"])
    assert "loader CPU" in r.stderr and "per 1,000 clips/s" in r.stderr

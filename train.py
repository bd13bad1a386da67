"""ACTION-Net trainer: the one place that joins ``pipelines/`` (data) and ``action/`` (model).

Read top to bottom: config → distributed init → data → model → optimiser → (resume) → epochs of
train steps + exact evaluation → checkpoints and logs. Commands::

    python train.py train --dataset jester --data data/shards/jester --run-dir runs/jester-r50
    torchrun --nproc_per_node=4 train.py train --dataset jester --data ...     # DDP (make train GPUS=0,1,2,3)
    python train.py eval  --run-dir runs/jester-r50 [--checkpoint best.pt]         # single-clip val top-1/top-5
    python train.py test  --run-dir runs/jester-r50 --test-crops 3 --test-clips 10           # multi-clip × multi-crop
    python train.py validate --dataset jester --lr 2                           # check a config, start nothing

Every config field is a command-line option (``--lr-steps 5,10,15``, ``--batch-size 64``, …); per-dataset
defaults come from ``configs/<dataset>.toml``. The final config is validated and frozen before any work
and saved as ``RUN/config.json``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import errno
import json
import logging
import math
import os
import random
import sys
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("train")
ROOT = Path(__file__).resolve().parent
CONFIG_DIR = ROOT / "configs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CKPT_FORMAT = "action-run"


# ----------------------------------------------------------------------------------------------------------
# Config: one frozen, validated object per run
# ----------------------------------------------------------------------------------------------------------
class ConfigError(click.UsageError):
    """A config value is out of its allowed range (raised before any process or file is touched)."""


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, no disk space, bad checkpoint); the message says what to do."""


def _choice(*allowed):
    return lambda v: v in allowed, "one of " + ", ".join(map(str, allowed))


def _range(lo=None, hi=None, *, lo_open=False):
    def ok(v):
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or v <= hi
    lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    hi_s = "" if hi is None else f"<= {hi}"
    return ok, " and ".join(s for s in (lo_s, hi_s) if s)


# name -> (check, allowed-range text, help). Every dataclass field has an entry.
_RULES: dict[str, tuple[Any, str, str]] = {}


def _f(default, rule, help_, **kw):
    return field(default=default, metadata={"rule": rule, "help": help_}, **kw)


@dataclass(frozen=True)
class Config:
    dataset: str = _f("jester", _choice("egogesture", "jester", "sthv2"), "dataset (selects configs/<dataset>.toml)")
    data: str = _f("", (lambda v: True, "a shard directory or URI"), "shard directory written by tools/convert_dataset.py")
    raw: str = _f("", (lambda v: True, "a raw dataset root"), "raw tree (only for --backend folder)")
    backend: str = _f("torch", _choice("torch", "dali", "ffcv", "folder"), "data loader backend")
    device: str = _f("auto", _choice("auto", "cpu", "cuda"), "auto = cuda when available")
    decode_on: str = _f("workers", _choice("workers", "device"),
                        "torch backend: decode the JPEGs in the loader workers, or on the training device (batched "
                        "nvJPEG via torchvision on CUDA: 1.78x the CPU path on an H200 host)")
    arch: str = _f("resnet50", _choice("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2"), "backbone")
    temporal: str = _f("action", _choice("action", "tsm", "none"), "temporal module")
    shift_div: int = _f(8, _range(1, 64), "shift fold divisor (C // shift_div channels each way)")
    num_segments: int = _f(8, _range(1, 64), "TSN segments (frames per clip)")
    size: int = _f(224, _range(32, 1024), "crop side in pixels")
    num_classes: int = _f(0, _range(0), "0 = from the shard manifest")
    batch_size: int = _f(64, _range(1, 65536), "GLOBAL batch size (split evenly over ranks)")
    epochs: int = _f(25, _range(1, 1000), "epochs")
    lr: float = _f(0.01, _range(0.0, 10.0, lo_open=True), "base learning rate for the global batch")
    lr_steps: tuple = _f((5, 10, 15), (lambda v: all(isinstance(s, int) and s > 0 for s in v) and list(v) == sorted(v),
                                       "increasing positive epochs"), "epochs where lr is multiplied by 0.1")
    weight_decay: float = _f(5e-4, _range(0.0, 1.0), "weight decay")
    momentum: float = _f(0.9, _range(0.0, 1.0), "SGD momentum")
    dropout: float = _f(0.5, _range(0.0, 0.99), "dropout before new_fc")
    clip_grad: float = _f(20.0, _range(0.0), "gradient-norm clip (0 = off)")
    fc_lr5: bool = _f(True, (lambda v: True, "bool"), "new_fc lr x5 (weight) / x10 (bias)")
    flip: bool = _f(False, (lambda v: True, "bool"), "label-aware horizontal flip in training (the original never flips)")
    workers: int = _f(4, _range(0, 128), "loader workers per rank")
    seed: int = _f(0, _range(0, 2**31 - 1), "seed for sampling, augmentation and init")
    run_dir: str = _f("runs/default", (lambda v: bool(v), "a directory"), "run directory (config, logs, checkpoints)")
    amp: str = _f("auto", _choice("auto", "bf16", "fp16", "none"), "autocast dtype (auto = bf16 on GPU, none on CPU)")
    channels_last: str = _f("auto", _choice("auto", "on", "off"), "channels_last memory format (auto = on for GPU)")
    compile: bool = _f(False, (lambda v: True, "bool"), "torch.compile the model")
    log_interval: int = _f(20, _range(1), "steps between metric reductions/log lines (the only host syncs)")
    ckpt_every: int = _f(0, _range(0), "also write RUN/last.pt every N steps (0 = per epoch only)")
    max_steps_per_epoch: int = _f(0, _range(0), "cap on train steps per epoch (0 = the whole epoch)")
    eval_every: int = _f(1, _range(0), "evaluate every N epochs (0 = never)")
    pretrained: str = _f("", (lambda v: True, "a file"), "local torchvision ImageNet weights for the backbone")
    init_from: str = _f("", (lambda v: True, "a file"), "initialise from a checkpoint (official or ours)")
    synthetic: bool = _f(False, (lambda v: True, "bool"), "random tensors on the device instead of data (model-bound ceiling)")
    ceiling_steps: int = _f(5, _range(0, 1000), "synthetic steps measured at start to report real/synthetic rate (0 = off)")
    test_clips: int = _f(10, _range(1, 100), "clips per video in `test`")
    test_crops: int = _f(1, _choice(1, 3), "crops per clip in `test` (1 centre or 3 full-resolution)")
    test_sampling: str = _f("uniform", _choice("uniform", "random"), "test clip offsets: even (repeatable) or random (original)")
    dist_timeout: int = _f(300, _range(10, 86400), "seconds before a stuck collective ends the job")

    def validate(self) -> "Config":
        problems = []
        for f in fields(self):
            ok, allowed = f.metadata["rule"]
            v = getattr(self, f.name)
            try:
                good = ok(v)
            except TypeError:
                good = False
            if not good:
                problems.append(f"--{f.name.replace('_', '-')}={v!r} is not allowed (allowed: {allowed})")
        if not self.synthetic and not self.data:
            problems.append("--data is required (a shard directory from tools/convert_dataset.py), or use --synthetic")
        if self.backend == "folder" and not self.raw and not self.synthetic:
            problems.append("--backend folder needs --raw (the raw dataset root)")
        if self.decode_on == "device" and self.backend != "torch":
            problems.append(f"--decode-on device is a torch-backend option (got --backend {self.backend}; DALI "
                            "decodes on the GPU by itself)")
        if self.synthetic and self.num_classes == 0 and not self.data:
            problems.append("--synthetic without --data needs --num-classes")
        if problems:
            raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
        return self

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d


_FIELD_TYPES = {f.name: f.type for f in fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    typ = _FIELD_TYPES[name]
    if typ in ("tuple", tuple):
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"--{name.replace('_', '-')}: expected comma-separated integers, got {value!r}") from None
    if typ in ("bool", bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    conv = {"int": int, "float": float, "str": str}.get(typ if isinstance(typ, str) else typ.__name__, str)
    try:
        return conv(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name.replace('_', '-')}: expected {conv.__name__}, got {value!r}") from None


def make_config(overrides: dict[str, Any], config_file: str | None = None) -> Config:
    """defaults ← configs/<dataset>.toml ← --config FILE ← command-line options; validated, frozen."""
    values: dict[str, Any] = {}
    dataset = overrides.get("dataset") or Config.dataset
    recipe = CONFIG_DIR / f"{dataset}.toml"
    layers = [recipe] if recipe.exists() else []
    if config_file:
        layers.append(Path(config_file))
    for path in layers:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        unknown = set(data) - set(_FIELD_TYPES)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**{k: _coerce(k, v) for k, v in values.items()}).validate()


def config_options(func):
    """Add one ``--field`` option per Config field (None = keep the recipe value)."""
    for f in reversed(fields(Config)):
        opt = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            func = click.option(opt + "/--no-" + f.name.replace("_", "-"), f.name, default=None,
                                help=f.metadata["help"])(func)
        else:
            func = click.option(opt, f.name, default=None, type=str, help=f.metadata["help"])(func)
    return click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
                        help="TOML file with config values (applied after the dataset recipe)")(func)


# ----------------------------------------------------------------------------------------------------------
# Distributed: the one place that initialises the process group
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str, timeout_s: int) -> DistInfo:
    """Initialise torch.distributed from torchrun's environment (or run single-process)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked but no CUDA device is visible (check CUDA_VISIBLE_DEVICES / GPUS=)")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def all_reduce_sum(t, info: DistInfo):
    if info.world > 1:
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj, info: DistInfo) -> list:
    if info.world == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------------------------------------
# Data and model
# ----------------------------------------------------------------------------------------------------------
def read_classes(cfg: Config) -> list[str]:
    from pipelines.format import MANIFEST_NAME, parse_manifest

    path = Path(cfg.data) / MANIFEST_NAME
    if "://" in cfg.data:
        import pyarrow.fs as pafs
        fs, base = pafs.FileSystem.from_uri(cfg.data)
        with fs.open_input_stream(f"{base.rstrip('/')}/{MANIFEST_NAME}") as f:
            text = f.read()
    else:
        try:
            text = path.read_bytes()
        except OSError as e:
            raise TrainingError(f"{path}: cannot read the shard manifest ({e.strerror}); "
                                f"run `make convert DATASET={cfg.dataset}` first") from None
    return list(parse_manifest(text, where=str(path))["classes"])


class SyntheticLoader:
    """Random clips already on the device: the model-bound ceiling (nanoGPT-style bench mode)."""

    def __init__(self, batch: int, cfg: Config, num_classes: int, device, steps: int):
        import torch
        g = torch.Generator().manual_seed(cfg.seed)
        self.clips = torch.randn(batch, cfg.num_segments, 3, cfg.size, cfg.size, generator=g).to(device)
        self.labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.clips, self.labels


def build_data(cfg: Config, info: DistInfo, split: str, mode: str, epoch: int, num_classes: int, **extra):
    per_rank = cfg.batch_size // info.world
    if cfg.synthetic:
        return SyntheticLoader(per_rank, cfg, num_classes, info.device, cfg.max_steps_per_epoch or 50)
    from pipelines import build_loader

    kw = dict(backend=cfg.backend, mode=mode, batch_size=per_rank, num_segments=cfg.num_segments, size=cfg.size,
              rank=info.rank, world=info.world, workers=cfg.workers, seed=cfg.seed, epoch=epoch,
              device=info.device, normalize=cfg.backend == "dali")  # torch/folder: uint8, normalised on device
    if cfg.backend == "folder":
        kw["raw"] = cfg.raw
    if cfg.decode_on == "device":
        kw["decode_device"] = info.device  # workers ship the sampled JPEG bytes; the main process decodes
    if mode == "train" and cfg.flip:
        kw["flip"] = True
    kw.update(extra)
    return build_loader(cfg.data, split, **kw)


def to_model_input(clips, info: DistInfo, channels_last: bool):
    """uint8 (B,T,3,H,W) → normalised float on the device; float input is assumed normalised already."""
    import torch

    clips = clips.to(info.device, non_blocking=True)
    if clips.dtype == torch.uint8:
        mean, std = _norm_constants(clips.device)
        clips = (clips.float() - mean) / std
    return clips


_NORM_CONSTANTS: dict = {}


def _norm_constants(device):
    """ImageNet mean/std × 255 as (1, 1, 3, 1, 1) tensors on ``device``, made once: building them per step
    (``torch.tensor(..., device="cuda")``) is a blocking host->GPU copy, i.e. a host sync every step."""
    key = str(device)
    if key not in _NORM_CONSTANTS:
        import torch

        _NORM_CONSTANTS[key] = (torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1) * 255,
                                torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1) * 255)
    return _NORM_CONSTANTS[key]


def build_model_for(cfg: Config, num_classes: int, info: DistInfo):
    import torch
    from action import build_model, load_checkpoint

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(arch=cfg.arch, num_classes=num_classes, num_segments=cfg.num_segments,
                        temporal=cfg.temporal, shift_div=cfg.shift_div, dropout=cfg.dropout,
                        pretrained=cfg.pretrained or None)
    if cfg.init_from:
        load_checkpoint(model, cfg.init_from)
    model.to(info.device)
    if _channels_last(cfg, info):
        model.to(memory_format=torch.channels_last)
    return model


def _channels_last(cfg: Config, info: DistInfo) -> bool:
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and info.device.type == "cuda")


def _amp_dtype(cfg: Config, info: DistInfo):
    import torch
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if info.device.type == "cuda" else "none"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def autocast(cfg: Config, info: DistInfo):
    import torch
    dtype = _amp_dtype(cfg, info)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=info.device.type, dtype=dtype)


def lr_at(cfg: Config, epoch: int) -> float:
    return cfg.lr * (0.1 ** sum(epoch >= s for s in cfg.lr_steps))


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]


def build_optimizer(cfg: Config, model):
    import torch
    from action.optim import param_groups

    groups = param_groups(model, cfg.lr, cfg.weight_decay, fc_lr5=cfg.fc_lr5)
    for g in groups:
        g.setdefault("lr_mult", g["lr"] / cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints (atomic) and logs
# ----------------------------------------------------------------------------------------------------------
def atomic_torch_save(obj: dict, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a stale temp file, or a planted symlink: never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with open(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # a real ENOSPC inside torch.save surfaces as the zip writer's RuntimeError ("unexpected pos"), with the
        # OSError as its context: look through the chain
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise TrainingError(f"{path}: no space left on device while writing the checkpoint; "
                                "the previous checkpoint is kept — free disk space and run again with --resume") from None
        if cause is None:
            raise
        raise TrainingError(f"{path}: cannot write checkpoint ({cause.strerror or cause})") from None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_in_run(path: Path) -> Path:
    """``path`` (a checkpoint inside a run directory) unless it is a symlink that resolves outside that directory."""
    top = Path(os.path.realpath(path.parent))
    real = Path(os.path.realpath(path))
    if path.is_symlink() and top not in real.parents:
        raise TrainingError(f"{path}: refusing to load: it is a symlink to {real}, outside the run directory {top}")
    return path


def load_run_checkpoint(path: Path) -> dict:
    import pickle

    import torch
    check_in_run(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from (drop --resume to start a new run)") from None
    except pickle.UnpicklingError as e:
        raise TrainingError(f"{path}: refusing to load: not a plain weights checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as e:
        raise TrainingError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise TrainingError(f"{path}: not a train.py run checkpoint (use --init-from for official weights)")
    return ck


class MetricsLog:
    """RUN/metrics.jsonl (append, one JSON object per line) + TensorBoard; rank 0 only."""

    def __init__(self, run: Path, enabled: bool):
        self.enabled = enabled
        self.path = run / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run / "tb"))
            except ImportError:  # tensorboard is optional at run time
                log.warning("tensorboard is not installed: curves only in %s", self.path)

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------------------
# Evaluation (exact under DDP: sum-reduced counts, every clip once)
# ----------------------------------------------------------------------------------------------------------
def evaluate(model, loader, cfg: Config, info: DistInfo, *, views: bool = False) -> dict:
    """Top-1/top-5 over the loader. With ``views`` the clips are (B, V, T, 3, H, W): softmax per view,
    averaged over views (the original multi-clip × multi-crop test)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    counts = torch.zeros(4, dtype=torch.float64, device=info.device)  # top1, top5, loss_sum, n
    num_classes = model.new_fc.out_features
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=info.device)  # top-1 hits, clips per class
    with torch.no_grad(), autocast(cfg, info):
        for clips, labels in loader:
            labels = labels.to(info.device, non_blocking=True)
            x = to_model_input(clips, info, False)
            if x.dim() == 6:
                b, v = x.shape[:2]
                logits = model(x.flatten(0, 1)).float()
                scores = logits.softmax(-1).view(b, v, -1).mean(1)
                loss = F.nll_loss(scores.clamp_min(1e-12).log(), labels, reduction="sum")
            else:
                logits = model(x).float()
                scores = logits
                loss = F.cross_entropy(logits, labels, reduction="sum")
            top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
            hit = top5 == labels[:, None]
            # no host syncs per batch: no host->device tensors, no boolean indexing (its size needs the host)
            counts += torch.stack([hit[:, 0].sum().double(), hit.any(1).sum().double(), loss.double(),
                                   torch.full((), float(len(labels)), device=info.device, dtype=torch.float64)])
            known = (labels >= 0).double()  # hidden test labels are -1: counted nowhere per class
            cls = labels.clamp_min(0)
            per_class[0].index_add_(0, cls, hit[:, 0].double() * known)
            per_class[1].index_add_(0, cls, known)
    all_reduce_sum(counts, info)
    all_reduce_sum(per_class, info)
    top1, top5, loss_sum, n = counts.tolist()
    model.train()
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "clips": 0, "per_class": {}}
    hits, seen = per_class.tolist()
    per = {str(c): 100.0 * h / k for c, (h, k) in enumerate(zip(hits, seen)) if k > 0}
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss_sum / n, "clips": int(n),
            "per_class": per}


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def measure_synthetic_rate(model, optimizer, cfg: Config, info: DistInfo, num_classes: int, steps: int) -> float:
    """Steps/s of the same (DDP) model on synthetic on-device batches; model, optimiser and RNG restored."""
    import torch
    import torch.nn.functional as F

    if steps <= 0:
        return float("nan")
    snap_model = copy.deepcopy(model.state_dict())
    snap_opt = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    data = SyntheticLoader(cfg.batch_size // info.world, cfg, num_classes, info.device, steps + 1)
    cl = _channels_last(cfg, info)
    t0 = None
    for i, (clips, labels) in enumerate(data):
        if i == 1:  # the first step warms up (allocations, compile)
            _sync(info)
            t0 = time.perf_counter()
        with autocast(cfg, info):
            loss = F.cross_entropy(model(to_model_input(clips, info, cl)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(info)
    rate = steps / (time.perf_counter() - t0)
    model.load_state_dict(snap_model)
    optimizer.load_state_dict(snap_opt)
    torch.set_rng_state(rng)
    return rate


def _sync(info: DistInfo) -> None:
    if info.device.type == "cuda":
        import torch
        torch.cuda.synchronize(info.device)


def _gpu_mem_gb(info: DistInfo) -> float:
    if info.device.type != "cuda":
        return 0.0
    import torch
    return torch.cuda.max_memory_allocated(info.device) / 2**30


def run_training(cfg: Config, resume: bool) -> dict:
    import torch
    import torch.nn.functional as F

    info = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        return _train(cfg, resume, info)
    finally:
        if info.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _train(cfg: Config, resume: bool, info: DistInfo) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    run = Path(cfg.run_dir)
    if cfg.batch_size % info.world:
        raise TrainingError(f"--batch-size {cfg.batch_size} is global and must divide evenly over {info.world} ranks")
    if info.main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.json", json.dumps(cfg.to_json(), indent=2) + "\n")
    classes = read_classes(cfg) if cfg.data else []
    num_classes = cfg.num_classes or len(classes)

    model = build_model_for(cfg, num_classes, info)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(enabled=_amp_dtype(cfg, info) == torch.float16)
    start_epoch, start_step, global_step, best = 0, 0, 0, -1.0
    rng_states = None
    if resume:
        ck = load_run_checkpoint(run / "last.pt")
        if ck["world"] != info.world:
            raise TrainingError(f"{run / 'last.pt'} was written by {ck['world']} ranks; resume with the same number "
                                f"(got {info.world}) for an exact continuation")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch, start_step, global_step, best = ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck["best_top1"]
        rng_states = ck["rng_torch"]
        log.info("resumed %s at epoch %d step %d", run / "last.pt", start_epoch, start_step)
    else:
        torch.manual_seed(cfg.seed * 1000 + info.rank)  # per-rank dropout streams

    core = model
    if info.world > 1:
        model = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    fwd = torch.compile(model) if cfg.compile else model
    cl = _channels_last(cfg, info)
    metrics = MetricsLog(run, info.main)
    ceiling = measure_synthetic_rate(fwd, optimizer, cfg, info, num_classes, cfg.ceiling_steps if not cfg.synthetic else 0)

    def save(name: str, epoch: int, step_in_epoch: int) -> None:
        states = all_gather_objects(torch.get_rng_state(), info)
        if not info.main:
            return
        atomic_torch_save({
            "format": CKPT_FORMAT, "version": 1, "model": core.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": global_step, "best_top1": best, "world": info.world, "rng_torch": states,
            "config": cfg.to_json(), "classes": classes,
        }, run / name)

    rates = []
    last_eval: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        loader = build_data(cfg, info, "train", "train", epoch, num_classes)
        loader.set_epoch(epoch)
        steps = len(loader) if not cfg.max_steps_per_epoch else min(len(loader), cfg.max_steps_per_epoch)
        if steps == 0:
            raise TrainingError(f"{cfg.data}: the train split gives no full batch of {cfg.batch_size // info.world} "
                                f"per rank; lower --batch-size")
        set_lr(optimizer, lr_at(cfg, epoch))
        rng = torch.get_rng_state()
        it = iter(loader)  # a DataLoader draws its workers' base seed from the global RNG: keep dropout's
        torch.set_rng_state(rng)  # stream independent of it, so a resumed run continues the same stream
        first = start_step if epoch == start_epoch else 0
        for _ in range(first):  # resume mid-epoch: skip the batches already trained on
            next(it)
        if rng_states is not None:  # after the iterator exists (DataLoader draws its base seed from this RNG)
            torch.set_rng_state(rng_states[info.rank])
            rng_states = None
        bar = None
        if info.main:
            from tqdm import tqdm
            bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                       dynamic_ncols=True, leave=False, disable=None)
        loss_acc = torch.zeros((), device=info.device)
        n_acc, wait, epoch_loss, epoch_n, epoch_wait, epoch_busy = 0, 0.0, 0.0, 0, 0.0, 0.0
        t_int = t_epoch = time.perf_counter()
        clips_epoch = 0
        for step_in_epoch in range(first, steps):
            t0 = time.perf_counter()
            clips, labels = next(it)
            wait += time.perf_counter() - t0
            labels = labels.to(info.device, non_blocking=True)
            with autocast(cfg, info):
                loss = F.cross_entropy(fwd(to_model_input(clips, info, cl)), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            loss_acc += loss.detach().float()
            n_acc += 1
            global_step += 1
            if bar is not None:
                bar.update(1)
            end = step_in_epoch + 1 == steps
            if n_acc == cfg.log_interval or end or (cfg.ckpt_every and global_step % cfg.ckpt_every == 0):
                stats = torch.stack([loss_acc, torch.tensor(float(n_acc), device=info.device)])
                all_reduce_sum(stats, info)  # the one host sync per interval
                mean_loss = (stats[0] / stats[1]).item()
                if not math.isfinite(mean_loss):
                    raise TrainingError(f"loss is {mean_loss} at epoch {epoch + 1} step {step_in_epoch + 1}: the run "
                                        f"diverged; the last good checkpoint is {run / 'last.pt'} — lower --lr or "
                                        f"check the data, then --resume")
                dt = time.perf_counter() - t_int
                rate = n_acc * cfg.batch_size / dt
                rates.append(rate)
                epoch_loss += mean_loss * n_acc
                epoch_n += n_acc
                epoch_wait += wait
                epoch_busy += dt
                clips_epoch += n_acc * cfg.batch_size
                rec = {"kind": "train", "epoch": epoch, "step": global_step, "loss": mean_loss,
                       "lr": lr_at(cfg, epoch), "clips_per_s": rate, "data_wait": wait / dt,
                       "gpu_mem_gb": _gpu_mem_gb(info)}
                metrics.write(rec, global_step)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", clips_s=f"{rate:.1f}", wait=f"{wait / dt:.0%}")
                loss_acc.zero_()
                n_acc, wait, t_int = 0, 0.0, time.perf_counter()
                if cfg.ckpt_every and global_step % cfg.ckpt_every == 0 and not end:
                    save("last.pt", epoch, step_in_epoch + 1)
        if bar is not None:
            bar.close()
        epoch_time = time.perf_counter() - t_epoch
        rec = {"kind": "epoch", "epoch": epoch, "step": global_step, "train_loss": epoch_loss / max(epoch_n, 1),
               "clips_per_s": clips_epoch / epoch_time, "data_wait": epoch_wait / max(epoch_busy, 1e-9),
               "lr": lr_at(cfg, epoch)}
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            last_eval = evaluate(core, build_data(cfg, info, "val", "val", epoch, num_classes), cfg, info)
            rec.update(val_top1=last_eval["top1"], val_top5=last_eval["top5"], val_loss=last_eval["loss"],
                       val_clips=last_eval["clips"])
        metrics.write(rec, global_step)
        improved = last_eval.get("top1", -1.0) > best
        if improved:
            best = last_eval["top1"]
        save("last.pt", epoch + 1, 0)
        if improved and info.main:
            import shutil
            shutil.copyfile(run / "last.pt", run / ".best.pt.tmp")
            os.replace(run / ".best.pt.tmp", run / "best.pt")
        if info.main:
            val = f"{rec['val_top1']:.2f}" if "val_top1" in rec else "not evaluated"
            log.info("epoch %d/%d: loss %.4f, val top-1 %s, %.1f clips/s, data-wait %.1f%%", epoch + 1, cfg.epochs,
                     rec["train_loss"], val, rec["clips_per_s"], 100 * rec["data_wait"])
    real_rate = (sum(rates) / len(rates)) / cfg.batch_size if rates else float("nan")
    summary = {"kind": "summary", "best_top1": best, "steps_per_s": real_rate, "synthetic_steps_per_s": ceiling,
               "fraction_of_synthetic": real_rate / ceiling if ceiling == ceiling and ceiling > 0 else None,
               "last_eval": last_eval, "run": str(run)}
    metrics.write(summary, global_step)
    metrics.close()
    if info.main:
        frac = summary["fraction_of_synthetic"]
        log.info("done: best val top-1 %s; %.2f steps/s%s", f"{best:.2f}" if best >= 0 else "n/a (no eval)",
                 real_rate, f" = {frac:.0%} of the synthetic-data ceiling ({ceiling:.2f} steps/s)" if frac
                 else " (synthetic-data ceiling not measured: --ceiling-steps 0)")
    return summary


def run_eval(cfg: Config, checkpoint: Path, mode: str, split: str = "val") -> dict:
    info = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        classes = read_classes(cfg)
        num_classes = cfg.num_classes or len(classes)
        model = build_model_for(dataclasses.replace(cfg, init_from=""), num_classes, info)
        from action import load_checkpoint
        load_checkpoint(model, str(checkpoint))
        extra = {}
        if mode == "test":
            extra = {"test_clips": cfg.test_clips, "test_crops": cfg.test_crops, "test_sampling": cfg.test_sampling}
        loader = build_data(cfg, info, split, mode, 0, num_classes, **extra)
        res = evaluate(model, loader, cfg, info, views=mode == "test")
        res.update(kind=mode, split=split, checkpoint=str(checkpoint))
        if info.main:
            MetricsLog(Path(cfg.run_dir), True).write(res, 0)
        return res
    finally:
        if info.world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _fail(e: Exception) -> None:
    rank = os.environ.get("RANK", "0")
    click.echo(f"error (rank {rank}): {e}", err=True)
    sys.exit(3 if isinstance(e, TrainingError) else 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """Train and evaluate ACTION-ResNet on Arrow shards (see README.md)."""
    _setup_logging()


@cli.command()
@config_options
@click.option("--resume", is_flag=True, help="continue RUN/last.pt exactly (same world size)")
def train(config_file, resume, **overrides):
    """Train (single process, or one process per GPU under torchrun)."""
    if resume:
        saved = Path(overrides.get("run_dir") or Config.run_dir) / "config.json"
        if saved.exists():
            base = json.loads(saved.read_text())
            changed = {k: v for k, v in overrides.items() if v is not None and k in base
                       and _coerce(k, v) != _coerce(k, base[k])}
            allowed = {"epochs", "workers", "log_interval", "ckpt_every", "ceiling_steps", "dist_timeout"}
            bad = sorted(set(changed) - allowed)
            if bad:
                raise ConfigError(f"--resume keeps the run's config ({saved}); these options differ: {bad}")
            base.update({k: v for k, v in overrides.items() if v is not None})
            overrides = base
    cfg = make_config(overrides, config_file)
    try:
        summary = run_training(cfg, resume)
    except (TrainingError, OSError) as e:
        _fail(e)
    except Exception as e:  # DataError / CheckpointError from the libraries: one line, no traceback
        if type(e).__name__.endswith("Error") and type(e).__module__.split(".")[0] in ("pipelines", "action"):
            _fail(e)
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(summary))


def _eval_command(mode: str):
    @config_options
    @click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                  help="checkpoint (default RUN/best.pt, else RUN/last.pt; official ones load too)")
    @click.option("--split", default="val", show_default=True, help="shard split to score (val or test)")
    def cmd(config_file, checkpoint, split, **overrides):
        run = Path(overrides.get("run_dir") or Config.run_dir)
        if (run / "config.json").exists():
            base = json.loads((run / "config.json").read_text())
            base.update({k: v for k, v in overrides.items() if v is not None})
            overrides = base
        cfg = make_config(overrides, config_file)
        ck = Path(checkpoint) if checkpoint else (run / "best.pt" if (run / "best.pt").exists() else run / "last.pt")
        try:
            if not checkpoint:
                check_in_run(ck)
            res = run_eval(cfg, ck, mode, split)
        except (TrainingError, OSError) as e:
            _fail(e)
        except Exception as e:
            if type(e).__module__.split(".")[0] in ("pipelines", "action") and type(e).__name__.endswith("Error"):
                _fail(e)
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(json.dumps(res))
    return cmd


cli.command("eval", help="Single-clip validation top-1/top-5 of a checkpoint (exact under DDP).")(_eval_command("val"))
cli.command("test", help="Multi-clip × multi-crop test (softmax averaged over --test-clips × --test-crops views).")(
    _eval_command("test"))


@cli.command()
@config_options
def validate(config_file, **overrides):
    """Validate a config and print it (starts nothing; `make train` runs this before torchrun)."""
    cfg = make_config(overrides, config_file)
    click.echo(json.dumps(cfg.to_json(), indent=2))


if __name__ == "__main__":
    cli()

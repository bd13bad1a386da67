"""The run's configuration: one frozen, validated :class:`Config` per run.

Layers, later ones winning: the field defaults <- ``configs/<dataset>.toml`` <- ``--config FILE`` <- command-line
options (:func:`make_config`). Each field carries its click type (``click.Choice``, ``click.IntRange``,
``click.FloatRange``, ...) and help text; :func:`config_options` turns the fields into ``--options`` and
:func:`make_config` validates every layer with the same types, so a bad value in a TOML file and on the command
line get the same one-line message. :func:`merge_saved` is the one place where ``RUN/config.json`` is merged
with new options (``--resume``, ``eval``, ``test``).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import click

from pipelines.backends.options import ON_BAD, OPTIONS, RESAMPLE, options_for
from trainer.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# options --resume may change: they do not change what is computed (run_dir: a run directory may be moved)
RESUME_MAY_CHANGE = {"run_dir", "epochs", "workers", "log_interval", "ckpt_every", "ceiling_steps", "dist_timeout",
                     "record_clips", "cache_dir", "cache_max_gb", "remote_threads", "remote_gap", "remote_connect_s",
                     "remote_request_s", "remote_attempts"}


class _Steps(click.ParamType):
    """Comma-separated increasing positive epochs: ``"5,10,15"`` or a TOML list -> a tuple of ints."""

    name = "epochs"

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        try:
            steps = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"--lr-steps: expected comma-separated integers, got {value!r}") from None
        if not all(s > 0 for s in steps) or list(steps) != sorted(steps):
            self.fail(f"{steps!r} is not increasing positive epochs", param, ctx)
        return steps


class _NonEmpty(click.ParamType):
    name = "path"

    def convert(self, value, param, ctx):
        if not str(value):
            self.fail("must not be empty", param, ctx)
        return str(value)


def _allowed(typ: click.ParamType) -> str:
    """The allowed values of ``typ`` in words (``one of a, b``; ``> 0.0 and <= 10.0``)."""
    if isinstance(typ, click.Choice):
        return "one of " + ", ".join(map(str, typ.choices))
    if isinstance(typ, (click.IntRange, click.FloatRange)):
        lo = "" if typ.min is None else (f"> {typ.min}" if typ.min_open else f">= {typ.min}")
        hi = "" if typ.max is None else (f"< {typ.max}" if typ.max_open else f"<= {typ.max}")
        return " and ".join(s for s in (lo, hi) if s)
    return {"epochs": "increasing positive epochs", "path": "a directory"}.get(typ.name, typ.name)


def _f(default, typ: click.ParamType, help_: str):
    return field(default=default, metadata={"type": typ, "help": help_})


_S, _B = click.STRING, click.BOOL


def _int(lo=None, hi=None):
    return click.IntRange(lo, hi)


def _float(lo=None, hi=None, *, lo_open=False):
    return click.FloatRange(lo, hi, min_open=lo_open)


@dataclass(frozen=True)
class Config:
    dataset: str = _f("jester", click.Choice(["egogesture", "jester", "sthv2"]), "dataset (selects configs/<dataset>.toml)")
    data: str = _f("", _S, "shard directory or URI written by tools/convert_dataset.py")
    raw: str = _f("", _S, "raw tree (only for --backend folder)")
    cache_dir: str = _f("auto", _S, "remote --data (s3://...): node-local shard cache directory (auto = under the user's "
                                    "cache directory; none = read the frames by range requests)")
    cache_max_gb: float = _f(0.0, _float(0.0), "remote --data: cache size limit in GB (0 = no limit)")
    remote_threads: int = _f(16, _int(1, 1024), "remote --data: range requests in flight per process (shard "
                                                "downloads use at most 8)")
    remote_gap: int = _f(0, _int(0), "remote --data with --cache-dir none: frames of a clip at most this many bytes "
                                     "apart are read by one range request")
    remote_connect_s: float = _f(3.0, _float(0.0, lo_open=True), "remote --data (S3): connect timeout in seconds")
    remote_request_s: float = _f(10.0, _float(0.0, lo_open=True), "remote --data (S3): seconds before a stalled "
                                                                  "request is retried")
    remote_attempts: int = _f(3, _int(1, 100), "remote --data (S3): tries per request")
    backend: str = _f("torch", click.Choice(["torch", "dali", "ffcv", "folder"]), "data loader backend")
    device: str = _f("auto", click.Choice(["auto", "cpu", "cuda"]), "auto = cuda when available")
    decode_on: str = _f("workers", click.Choice(["workers", "device"]),
                        "torch backend: decode the JPEGs in the loader workers, or on the training device (batched "
                        "nvJPEG via torchvision on CUDA)")
    resample: str = _f("default", click.Choice(["default", *RESAMPLE]),
                       "torch/dali backends: default = the backend's own (torch auto, dali reference); auto = one "
                       "resize where the original resamples twice; reference = the original's order; once = one "
                       "resize everywhere; pil = PIL's, bit-identical to --backend folder (torch only)")
    on_bad: str = _f("raise", click.Choice(list(ON_BAD)), "a corrupt frame: raise (stop, naming the clip and frame) "
                                                          "or replace the clip by the next good one (counted, logged)")
    arch: str = _f("resnet50", click.Choice(["resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2"]), "backbone")
    temporal: str = _f("action", click.Choice(["action", "tsm", "none"]), "temporal module")
    shift_div: int = _f(8, _int(1, 64), "shift fold divisor (C // shift_div channels each way)")
    num_segments: int = _f(8, _int(1, 64), "TSN segments (frames per clip)")
    size: int = _f(224, _int(32, 1024), "crop side in pixels")
    num_classes: int = _f(0, _int(0), "0 = from the shard manifest")
    batch_size: int = _f(64, _int(1, 65536), "GLOBAL batch size (split evenly over ranks)")
    epochs: int = _f(25, _int(1, 1000), "epochs")
    lr: float = _f(0.01, _float(0.0, 10.0, lo_open=True), "base learning rate for the global batch")
    lr_steps: tuple = _f((5, 10, 15), _Steps(), "epochs where lr is multiplied by 0.1")
    weight_decay: float = _f(5e-4, _float(0.0, 1.0), "weight decay")
    momentum: float = _f(0.9, _float(0.0, 1.0), "SGD momentum")
    dropout: float = _f(0.5, _float(0.0, 0.99), "dropout before new_fc")
    clip_grad: float = _f(20.0, _float(0.0), "gradient-norm clip (0 = off)")
    fc_lr5: bool = _f(True, _B, "new_fc lr x5 (weight) / x10 (bias)")
    flip: bool = _f(False, _B, "label-aware horizontal flip in training (the original never flips)")
    workers: int = _f(4, _int(0, 128), "loader workers per rank")
    seed: int = _f(0, _int(0, 2**31 - 1), "seed for sampling, augmentation and init")
    run_dir: str = _f("runs/default", _NonEmpty(), "run directory (config, logs, checkpoints)")
    amp: str = _f("auto", click.Choice(["auto", "bf16", "fp16", "none"]), "autocast dtype (auto = bf16 on GPU, none on CPU)")
    channels_last: str = _f("auto", click.Choice(["auto", "on", "off"]), "channels_last memory format (auto = on for GPU)")
    compile: bool = _f(False, _B, "torch.compile the model")
    log_interval: int = _f(20, _int(1), "steps between metric reductions/log lines (the only host syncs)")
    ckpt_every: int = _f(0, _int(0), "also write RUN/last.pt every N steps (0 = per epoch only)")
    max_steps_per_epoch: int = _f(0, _int(0), "cap on train steps per epoch (0 = the whole epoch)")
    eval_every: int = _f(1, _int(0), "evaluate every N epochs (0 = never)")
    pretrained: str = _f("", _S, "local torchvision ImageNet weights for the backbone")
    init_from: str = _f("", _S, "initialise from a checkpoint (official or ours)")
    synthetic: bool = _f(False, _B, "random tensors on the device instead of data (model-bound ceiling)")
    ceiling_steps: int = _f(5, _int(0, 1000), "synthetic steps measured at start to report real/synthetic rate (0 = off)")
    record_clips: bool = _f(False, _B, "each rank appends the clip indices of every step it trains to "
                                       "RUN/clips-rank<r>.jsonl")
    test_clips: int = _f(10, _int(1, 100), "clips per video in `test`")
    test_crops: int = _f(1, click.Choice([1, 3]), "crops per clip in `test` (1 centre or 3 full-resolution)")
    test_sampling: str = _f("uniform", click.Choice(["uniform", "random"]), "test clip offsets: even (repeatable) or random (original)")
    dist_timeout: int = _f(300, _int(10, 86400), "seconds before a stuck collective ends the job")
    # model computation and from-scratch stability (issue 22): how ACTION runs, the residual init, lr warmup
    action_impl: str = _f("auto", click.Choice(["auto", "triton", "torch"]),
                          "ACTION implementation: triton = the fused kernels (custom ops, torch.compile traces them), "
                          "torch = the plain path; auto = triton on CUDA when it imports, torch otherwise")
    zero_init_residual: bool = _f(True, _B, "from scratch (no --pretrained): zero the last BN scale of every residual "
                                            "branch (torchvision zero_init_residual); --no-zero-init-residual = the "
                                            "official init")
    warmup_epochs: float = _f(0.0, _float(0.0, 1000.0), "linear lr warmup over this many epochs, per step (0 = off, "
                                                        "the official recipe)")

    def validate(self) -> "Config":
        """Cross-field rules (each field was checked against its type by :func:`make_config`)."""
        problems = []
        if not self.synthetic and not self.data:
            problems.append("--data is required (a shard directory from tools/convert_dataset.py), or use --synthetic")
        if self.backend == "folder" and not self.raw and not self.synthetic:
            problems.append("--backend folder needs --raw (the raw dataset root)")
        problems += self._option_problems()
        if self.synthetic and self.num_classes == 0 and not self.data:
            problems.append("--synthetic without --data needs --num-classes")
        if problems:
            raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
        return self

    def _knobs(self, device=None) -> dict[str, tuple[str, Any]]:
        """The backend options this config sets: ``{field: (option, value)}``; ``device``: the training device
        (where ``--decode-on device`` decodes; unknown before the processes start)."""
        knobs = {}
        if self.decode_on == "device":
            knobs["decode_on"] = ("decode_device", str(device or ("cpu" if self.device == "cpu" else "cuda")))
        if self.resample != "default":
            knobs["resample"] = ("resample", self.resample)
        return knobs

    def _option_problems(self) -> list[str]:
        problems = []
        for name, (opt, value) in self._knobs().items():
            try:
                options_for(self.backend, **{opt: value})
            except TypeError:
                problems.append(f"{_opt(name)} {getattr(self, name)} is not an option of --backend {self.backend} "
                                f"(it is a {'/'.join(b for b, c in OPTIONS.items() if opt in c.names())}-backend "
                                "option)")
            except ValueError as e:
                problems.append(f"{_opt(name)} {getattr(self, name)}: {e}")
        return problems

    def loader_options(self, device=None):
        """The backend's typed options (:mod:`pipelines.backends.options`) with what this config sets."""
        return options_for(self.backend, **dict(self._knobs(device).values()))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d


_FIELDS = {f.name: f for f in fields(Config)}


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse(name: str, value: Any) -> tuple[Any, str | None]:
    """``(value converted to the field's type, problem or None)``; a value of the wrong kind raises at once."""
    typ: click.ParamType = _FIELDS[name].metadata["type"]
    try:
        return typ.convert(value, None, None), None
    except click.BadParameter as e:
        base = {click.IntRange: click.INT, click.FloatRange: click.FLOAT}.get(type(typ))
        if isinstance(typ, click.Choice) and all(isinstance(c, int) for c in typ.choices):
            base = click.INT
        if isinstance(typ, _Steps):
            value = tuple(int(v) for v in (value.replace(" ", "").split(",") if isinstance(value, str) else value) if v != "")
        if base is None and isinstance(typ, (click.Choice, _NonEmpty, _Steps)):
            return value, f"{_opt(name)}={value!r} is not allowed (allowed: {_allowed(typ)})"
        if base is None:
            raise ConfigError(f"{_opt(name)}: {e.message}") from None
        try:
            v = base.convert(value, None, None)
        except click.BadParameter:
            raise ConfigError(f"{_opt(name)}: expected {base.name}, got {value!r}") from None
        return v, f"{_opt(name)}={v!r} is not allowed (allowed: {_allowed(typ)})"


def coerce(name: str, value: Any) -> Any:
    """``value`` (a string from the command line, a TOML/JSON value) as field ``name``'s type."""
    return _parse(name, value)[0]


def make_config(overrides: dict[str, Any], config_file: str | None = None) -> Config:
    """defaults <- configs/<dataset>.toml <- --config FILE <- command-line options; validated, frozen."""
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
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    parsed, problems = {}, []
    for k, v in values.items():
        parsed[k], problem = _parse(k, v)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return Config(**parsed).validate()


def merge_saved(overrides: dict[str, Any], *, resume: bool) -> dict[str, Any]:
    """``overrides`` layered over ``RUN/config.json`` when that exists (the run's own config wins over the recipe).
    With ``resume`` only :data:`RESUME_MAY_CHANGE` may differ from the saved values."""
    saved = Path(overrides.get("run_dir") or Config.run_dir) / "config.json"
    if not saved.exists():
        return overrides
    try:
        base = json.loads(saved.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{saved}: cannot read the run's config ({e}); remove it or pick another --run-dir") from None
    given = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        changed = {k for k, v in given.items() if k in base and coerce(k, v) != coerce(k, base[k])}
        bad = sorted(changed - RESUME_MAY_CHANGE)
        if bad:
            raise ConfigError(f"--resume keeps the run's config ({saved}); these options differ: {bad}")
    base = {k: v for k, v in base.items() if k in _FIELDS}
    base.update(given)
    return base


def config_options(func):
    """Add one ``--field`` option per Config field (None = keep the recipe value) and ``--config FILE``."""
    for f in reversed(fields(Config)):
        if f.metadata["type"] is click.BOOL:
            func = click.option(_opt(f.name) + "/--no-" + f.name.replace("_", "-"), f.name, default=None,
                                help=f.metadata["help"])(func)
        else:
            func = click.option(_opt(f.name), f.name, default=None, type=str, help=f.metadata["help"])(func)
    return click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
                        help="TOML file with config values (applied after the dataset recipe)")(func)

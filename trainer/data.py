"""The trainer's side of the data: the only trainer module that imports ``pipelines``.

* :func:`build` -- one loader per (split, mode), built once per run; ``loader.set_epoch(epoch, start=k)`` points
  it at batch k of an epoch (a mid-epoch resume reads nothing it skips).
* :class:`ModelInput` -- uint8 batches -> the model's float input on the training device, with the dataset
  preset's mean/std (the one normalisation, applied once, for every backend).
* :class:`SyntheticLoader` -- random clips already on the device (the model-bound ceiling).
* :class:`ClipRecorder` -- ``record_clips``: the clip indices of every step a rank trains, host-side.
* :func:`check` -- what ``train.py validate`` checks before any process starts.
* :func:`prediction_sources`, :func:`windows`, :func:`window_sampler` -- `train.py predict`'s inputs
  (:mod:`pipelines.stream`); :func:`input_spec` -- what an exported model's runtime must do to a window.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from trainer.config import Config
from trainer.dist import DistInfo

log = logging.getLogger("train")

# the package each backend imports at build time (checked by `validate` without importing it)
BACKEND_PACKAGES = {"torch": "simplejpeg", "folder": "PIL", "dali": "nvidia.dali", "ffcv": "ffcv"}


# ------------------------------------------------------------------------------------------------ files
def manifest(data: str) -> dict:
    """The dataset's manifest (local path or URI); ShardError naming the file and the fix."""
    from pipelines.shards.storage import read_manifest
    return read_manifest(data)[2]


# ------------------------------------------------------------------------------------------------ checks
def check(cfg: Config, world: int) -> list[str]:
    """Problems found without starting a process or reading a shard: the batch over the ranks, the manifest,
    the splits, the backend's package."""
    problems = []
    if cfg.batch_size % world:
        problems.append(f"--batch-size {cfg.batch_size} is global and must divide evenly over {world} ranks")
    pkg = BACKEND_PACKAGES[cfg.backend]
    try:
        found = importlib.util.find_spec(pkg) is not None
    except (ImportError, ValueError):
        found = False
    if not found and not cfg.synthetic:
        extra = {"dali": "dali", "ffcv": "ffcv"}.get(cfg.backend)
        fix = f"pip install '.[{extra}]'" + (" (or `make setup-ffcv`)" if extra == "ffcv" else "") if extra \
            else "make venv"
        problems.append(f"--backend {cfg.backend} needs the package {pkg!r}, which is not installed: {fix}")
    if cfg.synthetic and not cfg.data:
        return problems
    from pipelines.errors import ShardError
    try:
        m = manifest(cfg.data)
    except ShardError as e:
        return problems + [f"{e}; `make convert DATASET={cfg.dataset}` writes it"]
    needed = ["train"] + (["val"] if cfg.eval_every else [])
    missing = [s for s in needed if s not in m.get("splits", {})]
    if missing:
        problems.append(f"{cfg.data}: the manifest has no {', '.join(missing)} split (it has "
                        f"{', '.join(m.get('splits', {})) or 'none'}); convert the dataset again")
    elif not cfg.synthetic and m["splits"]["train"]["clips"] < cfg.batch_size:
        problems.append(f"{cfg.data}: the train split has {m['splits']['train']['clips']} clips, fewer than one "
                        f"global batch of {cfg.batch_size}; lower --batch-size")
    return problems


# ------------------------------------------------------------------------------------------------ loaders
def build(cfg: Config, info: DistInfo, split: str, mode: str, *, epoch: int = 0, **extra):
    """The loader of ``split`` for this rank (per-rank batch = global batch / world), delivering uint8."""
    from pipelines.loader import LoaderSpec, build_loader

    kw = dict(backend=cfg.backend, mode=mode, batch_size=cfg.batch_size // info.world,
              num_segments=cfg.num_segments, size=cfg.size, rank=info.rank, world=info.world, workers=cfg.workers,
              seed=cfg.seed, device=info.device, on_bad=cfg.on_bad, cache_dir=cfg.cache_dir,
              cache_max_gb=cfg.cache_max_gb, remote_threads=cfg.remote_threads, remote_gap=cfg.remote_gap,
              remote_connect_s=cfg.remote_connect_s, remote_request_s=cfg.remote_request_s,
              remote_attempts=cfg.remote_attempts)
    if cfg.backend == "folder":
        kw["raw"] = cfg.raw
    if mode == "train" and cfg.flip:
        kw["flip"] = True
    kw.update(extra)
    # --decode-on device: workers ship the sampled JPEG bytes and this process decodes them on its device
    loader = build_loader(LoaderSpec(cfg.data, split, options=cfg.loader_options(info.device), **kw))
    loader.set_epoch(epoch)
    return loader


class SyntheticLoader:
    """Random clips already on the device: the model-bound ceiling (nanoGPT-style bench mode)."""

    def __init__(self, batch: int, cfg: Config, num_classes: int, device, steps: int):
        import torch
        g = torch.Generator().manual_seed(cfg.seed)
        self.clips = torch.randn(batch, cfg.num_segments, 3, cfg.size, cfg.size, generator=g).to(device)
        self.labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        self.steps, self.start = steps, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.start = int(start)

    def batch_clips(self, b: int) -> list[int]:
        return []

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.start, self.steps):
            yield self.clips, self.labels


class ModelInput:
    """Batches -> the model's input on ``device``: uint8 clips are normalised with the dataset preset's mean/std
    (:func:`pipelines.plan.presets.normalize`; its constants live on the device, so no host sync per step); float
    clips (the synthetic loader) are taken as they are."""

    def __init__(self, dataset: str, device):
        from pipelines.plan import presets

        self.normalize = presets.normalize
        preset = presets.get(dataset)
        self.mean, self.std, self.device = preset.mean, preset.std, device

    def __call__(self, clips):
        import torch

        clips = clips.to(self.device, non_blocking=True)
        if clips.dtype == torch.uint8:
            clips = self.normalize(clips, self.mean, self.std)
        return clips


# ------------------------------------------------------------------------------------------------ clip records
class ClipRecorder:
    """``RUN/clips-rank<r>.jsonl``: one line per trained step, ``{"step", "epoch", "batch", "world", "resumed_at",
    "clips"}`` (``step`` is the global step it completes). Host-side integers only: no device sync."""

    def __init__(self, run: Path, info: DistInfo, loader, *, resumed_at: int):
        self.loader, self.world, self.resumed_at = loader, info.world, resumed_at
        Path(run).mkdir(parents=True, exist_ok=True)  # rank 0 may not have made it yet
        self.file = open(Path(run) / f"clips-rank{info.rank}.jsonl", "a")

    def record(self, epoch: int, b: int, step: int) -> None:
        clips = [int(c) for c in self.loader.batch_clips(b)]  # the loader's plan: host integers, no device sync
        self.file.write(json.dumps({"step": step, "epoch": epoch, "batch": b, "world": self.world,
                                    "resumed_at": self.resumed_at, "clips": clips}) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------------------------ prediction inputs
def prediction_sources(spec: str, *, fps: float | None, online: bool, reconnect: int) -> list:
    """The frame sources of one `train.py predict` INPUT (:func:`pipelines.stream.sources.open_inputs`)."""
    from pipelines.stream.sources import open_inputs
    return open_inputs(spec, fps=fps, online=online, reconnect=reconnect)


def windows(window_s: float, stride_s: float):
    """Sliding windows over a frame stream (:class:`pipelines.stream.windows.Windower`)."""
    from pipelines.stream.windows import Windower
    return Windower(window_s, stride_s)


def window_sampler(cfg: Config):
    """Window -> uint8 clip sampled as ``cfg``'s model was tested (:class:`pipelines.stream.windows.WindowSampler`)."""
    from pipelines.stream.windows import WindowSampler
    return WindowSampler(cfg.dataset, cfg.num_segments, cfg.size)


def data_error() -> type:
    """The data side's error base class (a bad input: one line naming the file)."""
    from pipelines.errors import DataError
    return DataError


def input_spec(cfg: Config) -> dict:
    """What a runtime needs to prepare windows for ``cfg``'s model: the preset's mean/std and eval geometry."""
    from pipelines.plan import presets
    p = presets.get(cfg.dataset)
    return {"mean": list(p.mean), "std": list(p.std), "eval_resize": p.eval_resize,
            "eval_center_crop": p.eval_center_crop}

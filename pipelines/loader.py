"""The loader contract: one frozen :class:`LoaderSpec` in, an iterable of batches out, whatever the backend.

Every backend (``torch``, ``folder``, ``dali``, ``ffcv``) executes the same :class:`~pipelines.plan.clip.ClipPlan` s
(from :class:`~pipelines.plan.planner.Planner`), so for one seed they produce the same clips (bit-identical or within a
stated resampling tolerance) in the same order. ``docs/DESIGN.md`` describes the layers around it.

Output of iterating a loader (one batch)::

    train / val:  clips (B, T, 3, H, W) uint8, labels (B,) int64      both on spec.device
    test:         clips (B, V, T, 3, H, W) uint8                      V = test_clips * test_crops, clip-major

Clips are always uint8: the one normalisation (:func:`pipelines.plan.presets.normalize`, the dataset preset's
mean/std) is applied by the consumer on the training device. ``labels`` are already passed through the flip
label map. Train drops the last short batch of each rank (every rank runs the same number of steps under DDP,
and the rank partition is cut to ``world * (n // world)`` clips); val/test read every clip of the split exactly
once over all ranks, no padding, and the last batch may be smaller.

A loader is built once per run and reused across epochs (persistent workers, buffers and DALI pipelines)::

    loader = build_loader(spec)
    loader.set_epoch(epoch, start=k)   # the next pass yields batches k..len(loader)-1 of ``epoch``; nothing
    for clips, labels in loader: ...   # before batch k is read or decoded (plans are pure functions)
    loader.batch_clips(b)              # clip indices (split rows) of batch b of the current epoch
    loader.replaced, loader.stage_s    # clips replaced by on_bad="replace"; seconds per stage
    loader.close()

Backend plug-in contract (``pipelines/backends/<name>.py``, named in :data:`pipelines.backends.BACKENDS`)::

    build_<name>_loader(spec: LoaderSpec) -> a pipelines.backends.base.Loader subclass

Backend-specific options travel in ``spec.options``, the backend's typed options object
(:mod:`pipelines.backends.options`: ``TorchOptions``, ``DaliOptions``, ``FfcvOptions``, ``FolderOptions``),
validated when the spec is made; an unknown keyword is a TypeError there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, NamedTuple

from pipelines.backends.options import ON_BAD, OPTIONS, options_for
from pipelines.plan.clip import MODES
from pipelines.plan.planner import Planner
from pipelines.shards.api import ShardReader


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a backend needs to build a loader over one split (validated on construction).

    Attributes:
        data: shard folder or URI written by ``tools/convert_dataset.py`` (holds ``manifest.json``).
        split: ``train``, ``val`` or ``test`` (a split of the manifest).
        backend: ``torch`` (shards, decode threads), ``folder`` (the original PIL file-per-frame path; needs
            ``raw``), ``dali``, ``ffcv`` (optional packages).
        mode: ``train`` (random TSN sampling + multi-scale crop), ``val`` (centre), ``test`` (multi-view).
        batch_size: clips per batch on this rank.
        num_segments, size: T and the output side (H = W = size).
        rank, world: this process's place in data-parallel training.
        workers: parallel loaders (decode threads, worker processes or DALI/numba threads, per backend);
            0 loads in the calling thread where the backend allows it.
        seed: all randomness derives from (seed, epoch, clip).
        device: where batches are delivered (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        flip: label-aware random horizontal flip (train only; the original never flips).
        test_clips, test_crops, test_sampling: test views (``uniform`` deterministic or ``random`` offsets).
        drop_last: default True for train, False for val/test.
        on_bad: ``raise`` a FrameError naming dataset, clip key and frame on a corrupt JPEG, or ``replace``
            the clip by the next good one (counted in ``loader.replaced`` and logged).
        raw: raw dataset root (``folder`` backend).
        cache_dir, cache_max_gb: for remote data (``s3://`` ...): the node-local shard cache (``"auto"``: under
            the user's cache directory; ``"none"``: read directly by range requests) and its size limit (0: none).
        remote_threads, remote_gap: remote data: range requests in flight per process (shard downloads use at
            most 8 of them), and (``cache_dir="none"``) the byte gap up to which frames of a clip are read by one
            request (:class:`pipelines.shards.direct.RemoteShardDataset`).
        remote_connect_s, remote_request_s, remote_attempts: S3 connect / stalled-request timeouts in seconds
            and tries (:func:`pipelines.shards.storage.resolve`).
        options: the backend's options object (:mod:`pipelines.backends.options`); None: its defaults; a mapping
            of keywords is turned into it.
    """

    data: str
    split: str
    backend: str = "torch"
    mode: str = "train"
    batch_size: int = 8
    num_segments: int = 8
    size: int = 224
    rank: int = 0
    world: int = 1
    workers: int = 2
    seed: int = 0
    device: str = "cpu"
    flip: bool = False
    test_clips: int = 1
    test_crops: int = 1
    test_sampling: str = "uniform"
    drop_last: bool | None = None
    on_bad: str = "raise"
    raw: str | None = None
    cache_dir: str = "auto"
    cache_max_gb: float = 0.0
    remote_threads: int = 16
    remote_gap: int = 0
    remote_connect_s: float = 3.0
    remote_request_s: float = 10.0
    remote_attempts: int = 3
    options: Any = None

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("data", os.fspath(self.data))
        put("raw", None if self.raw is None else os.fspath(self.raw))
        put("device", str(self.device))
        for name in ("batch_size", "num_segments", "size", "rank", "world", "workers", "seed", "test_clips",
                     "test_crops", "remote_threads", "remote_gap", "remote_attempts"):
            put(name, int(getattr(self, name)))
        for name in ("cache_max_gb", "remote_connect_s", "remote_request_s"):
            put(name, float(getattr(self, name)))
        put("flip", bool(self.flip))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {ON_BAD}, got {self.on_bad!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in [0, world={self.world})")
        if self.remote_threads < 1 or self.remote_gap < 0 or self.remote_attempts < 1:
            raise ValueError(f"remote_threads and remote_attempts must be >= 1 and remote_gap >= 0, got "
                             f"{self.remote_threads}, {self.remote_attempts}, {self.remote_gap}")
        if min(self.remote_connect_s, self.remote_request_s) <= 0:
            raise ValueError(f"remote timeouts must be > 0 s, got {self.remote_connect_s}, {self.remote_request_s}")
        put("drop_last", self.mode == "train" if self.drop_last is None else bool(self.drop_last))
        put("options", self._typed_options(self.options))

    def _typed_options(self, options):
        if options is None or isinstance(options, Mapping):
            return options_for(self.backend, **dict(options or {}))
        want = OPTIONS.get(self.backend)
        if type(options) is not want:
            raise TypeError(f"backend {self.backend!r} takes {want.__name__ if want else 'no'} options, "
                            f"got {type(options).__name__}")
        return options

    @property
    def timeouts(self) -> dict:
        """The S3 timeouts in :func:`pipelines.shards.storage.resolve`'s form."""
        return {"connect": self.remote_connect_s, "request": self.remote_request_s, "attempts": self.remote_attempts}

    @classmethod
    def of(cls, data, split: str, **kw) -> "LoaderSpec":
        """A spec from keywords: the spec's fields by name, everything else is an option of the backend (a
        TypeError naming it if the backend has no such option)."""
        names = {f.name for f in fields(cls)} - {"data", "split", "options"}
        given = kw.pop("options", None)
        opts = {k: kw.pop(k) for k in list(kw) if k not in names}
        if given is not None and not isinstance(given, Mapping):
            if opts:
                raise TypeError(f"LoaderSpec.of: options {sorted(opts)} given besides an options object")
            return cls(data=data, split=split, options=given, **kw)
        return cls(data=data, split=split, options={**dict(given or {}), **opts}, **kw)


class OpenSplit(NamedTuple):
    """What every backend needs before it reads a frame: the split's shards and the planner over them."""

    shards: ShardReader
    planner: Planner


def open_split(spec: LoaderSpec, *, verify: bool = False) -> OpenSplit:
    """Open ``spec.split`` of ``spec.data`` and build its :class:`Planner` for (rank, world).

    Local data is read in place; remote data (``s3://`` ...) through the node-local cache or by range requests,
    as ``spec.cache_dir`` / ``spec.cache_max_gb`` / ``spec.remote_*`` say
    (:func:`pipelines.shards.cache.open_shards`)."""
    from pipelines.shards import cache as remote

    cache = {"auto": remote.DEFAULT, "none": None}.get(spec.cache_dir, spec.cache_dir)
    shards = remote.open_shards(spec.data, spec.split, cache_dir=cache, max_gb=spec.cache_max_gb or None,
                                threads=spec.remote_threads, gap=spec.remote_gap, timeouts=spec.timeouts,
                                verify=verify)
    planner = Planner(shards.metadata(), dataset=shards.dataset, classes=shards.classes, mode=spec.mode,
                      batch_size=spec.batch_size, num_segments=spec.num_segments, size=spec.size, rank=spec.rank,
                      world=spec.world, seed=spec.seed, flip=spec.flip, test_clips=spec.test_clips,
                      test_crops=spec.test_crops, test_sampling=spec.test_sampling, drop_last=spec.drop_last)
    return OpenSplit(shards, planner)


def build_loader(spec: LoaderSpec | str | os.PathLike, split: str | None = None, *, epoch: int = 0, **kw):
    """The loader of ``spec`` (see the module docstring for its output and methods).

    ``build_loader(data, split, **keywords)`` is shorthand for ``build_loader(LoaderSpec.of(data, split,
    **keywords))``; ``epoch`` selects the first epoch (``set_epoch``).
    """
    from pipelines import backends

    if not isinstance(spec, LoaderSpec):
        if split is None:
            raise TypeError("build_loader(data, split, ...) needs the split")
        spec = LoaderSpec.of(spec, split, **kw)
    elif split is not None or kw:
        raise TypeError("build_loader(spec) takes no other arguments (put options in spec.options)")
    loader = backends.get(spec.backend)(spec)
    if epoch:
        loader.set_epoch(epoch)
    return loader

"""``backend="dali"``: the loader that executes :class:`~pipelines.plan.clip.ClipPlan` batches with NVIDIA DALI.

What happens per batch of B clips (T frames each):

1. the plans come from the *same* pure functions as every other backend (sampling + geometry), so frame
   indices, crop windows and flips are identical by construction;
2. the host reads only the T sampled JPEG byte strings of each clip from the memory-mapped shards and flattens
   the batch into B·T frames, each carrying its clip's decode window and mirror flag
   (:func:`pipelines.backends.dali.graph.flatten_clips`);
3. the DALI graph (:func:`pipelines.backends.dali.graph.build_pipeline`) decodes only the crop window
   (nvJPEG, ``device="mixed"``, on a GPU; libjpeg-turbo with ``device_id=None`` on a CPU-only machine), resizes
   it to ``size``×``size`` and flips (uint8 out, like every backend);
4. DALI's PyTorch iterator hands the frames over (zero copy); they are viewed as ``(B, T, 3, H, W)``
   (``(B, V, T, 3, H, W)`` in test mode). Labels (already swapped by the flip map in the plans) come from the
   host's record of the batch, checked against the clip positions that travel through the graph with the
   pixels.

The last batch of an epoch may be short (external source batches are variable, ``≤ B·T``), so evaluation
covers every clip exactly once; training drops it when ``drop_last``.

DALI is imported lazily; without it, :class:`~pipelines.backends.dali.graph.BackendUnavailable` says
``pip install .[dali]``. Whether a GPU is used is decided *before* building: ``device`` is CUDA and
``GetCUDADeviceCount() > 0`` → mixed decode on ``torch.cuda.current_device()``; otherwise CPU.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Iterator

from pipelines.backends.base import Loader, replace_bad
from pipelines.backends.dali.graph import (
    INSTALL_HINT,
    OUTPUT_NAMES,
    BackendUnavailable,
    build_pipeline,
    dali_gpu_count,
    flatten_clips,
    import_dali,
)
from pipelines.errors import FrameError, corrupt_frame
from pipelines.plan.clip import ClipPlan, needed_frames

log = logging.getLogger(__name__)

__all__ = ["DaliLoader", "BackendUnavailable", "INSTALL_HINT", "build_dali_loader", "resolve_device",
           "check_jpeg", "precheck_jpeg"]


# ------------------------------------------------------------------------------------------------- helpers
def resolve_device(device=None) -> tuple[bool, int | None, "object"]:
    """Decide, before building anything, where the graph runs: ``(gpu, device_id, torch_device)``.

    GPU only when ``device`` asks for CUDA (``None`` means "CUDA if there is one") *and* DALI sees a CUDA device;
    a CPU-only machine gets ``(False, None, cpu)``. Asking explicitly for ``cuda`` without a GPU is a ValueError.
    """
    import torch  # noqa: PLC0415

    n_gpu = dali_gpu_count()
    dev = None if device is None else torch.device(device)
    if dev is None:
        want_gpu = n_gpu > 0 and torch.cuda.is_available()
    else:
        want_gpu = dev.type == "cuda"
    if not want_gpu:
        return False, None, torch.device("cpu")
    if n_gpu == 0 or not torch.cuda.is_available():
        raise ValueError(f"backend='dali' was asked for device {str(device)!r} but DALI sees no CUDA device; "
                         "use device='cpu' (the same DALI graph then runs on the CPU)")
    index = dev.index if dev is not None and dev.index is not None else torch.cuda.current_device()
    return True, int(index), torch.device("cuda", int(index))


def check_jpeg(data, src_size=None) -> str | None:
    """Why ``data`` is not a good frame (``None`` when it is): the torch backend's strict decode
    (:func:`pipelines.decode.frames.decode_jpeg`) plus its size check against the shard's ``src_size``."""
    from pipelines.decode.frames import decode_jpeg  # noqa: PLC0415

    try:
        img = decode_jpeg(data)
    except ValueError as e:
        return str(e)
    if src_size is not None and tuple(img.shape[:2]) != tuple(src_size):
        return f"decoded size {tuple(img.shape[:2])} differs from the shard's {tuple(src_size)}"
    return None


def precheck_jpeg(data, src_size) -> str | None:
    """Cheap per-frame check before DALI sees the bytes: the one JPEG rule (:func:`pipelines.decode.jpeg.problem`)
    with the shard's size. A frame that breaks it is confirmed with the full strict decode of :func:`check_jpeg`,
    so the verdict is the torch backend's."""
    from pipelines.decode.jpeg import problem  # noqa: PLC0415

    return None if problem(data, src_size) is None else check_jpeg(data, src_size)


class _Source:
    """The external-source callback: ``source(batch_info)`` → flat arrays of one batch.

    The loader loads an epoch (``load``) *before* DALI prefetches from it, so the right epoch is fed although
    DALI's own epoch counter knows nothing about ``set_epoch``. Per clip it reads only the sampled frames, checks
    them cheaply (:func:`precheck_jpeg`) and, with ``on_bad="replace"``, replaces a bad clip by the next good row
    exactly as the torch backend does. Every served batch is remembered (in order) until its pixels are consumed:
    labels and plans come from there, and so does the culprit when DALI fails on a batch.
    """

    def __init__(self, planner, fetch, *, on_bad: str, dataset: str, split: str, strict: bool = False,
                 two_step: bool = False):
        self.planner, self.fetch, self.two_step = planner, fetch, bool(two_step)
        self.check = check_jpeg if strict else precheck_jpeg
        self.on_bad, self.dataset, self.split = on_bad, dataset, split
        self.epoch, self.batches, self.first = 0, [], 0
        self.in_flight: collections.deque = collections.deque()
        self.bad: set[int] = set()  # rows known bad (replace mode)
        self.replaced = 0  # clips whose place another clip took (one per original clip)
        self.read_s = 0.0

    def load(self, epoch: int, batches, first: int = 0):
        self.epoch, self.batches, self.first = int(epoch), batches, int(first)
        self.in_flight.clear()

    def error(self, plan: ClipPlan, frame: int, reason: str) -> FrameError:
        return corrupt_frame(self.dataset, self.split, plan.key, plan.clip, frame, reason)

    def read_clip(self, clip: int):
        """``(plans, frames per plan)`` of row ``clip``: its views and their T encoded frames."""
        plans = self.planner.plans(clip, self.epoch)
        wanted = needed_frames(plans)
        bufs = dict(zip(wanted, self.fetch(clip, wanted)))
        return plans, [[bufs[j] for j in p.frames] for p in plans], bufs

    def load_clip(self, clip: int):
        def good(cand):
            plans, frames, bufs = self.read_clip(cand)
            for j, b in bufs.items():
                if (reason := self.check(b, plans[0].src_size)) is not None:
                    raise self.error(plans[0], j, reason)
            return plans, frames

        got, replaced = replace_bad(good, clip, n=self.planner.n, on_bad=self.on_bad,
                                    where=f"{self.dataset} {self.split}", bad=self.bad)
        self.replaced += replaced
        return got

    def __call__(self, info):
        i = self.first + info.iteration
        if i >= len(self.batches):
            raise StopIteration
        t0 = time.perf_counter()
        videos = [self.load_clip(int(c)) for c in self.batches[i]]
        plans = [p for ps, _ in videos for p in ps]
        frames = [f for _, fs in videos for f in fs]
        self.in_flight.append((i, [ps for ps, _ in videos], frames))
        out = flatten_clips(plans, frames, [(i << 20) | j for j in range(len(plans))], two_step=self.two_step)
        self.read_s += time.perf_counter() - t0
        return out

    def diagnose(self, err: Exception) -> tuple[Exception, int | None]:
        """After DALI failed: the FrameError naming the first bad frame in flight (oldest batch first) and its
        row; a RuntimeError carrying DALI's words (and ``None``) when every frame decodes on the host."""
        for _, videos, _ in self.in_flight:
            for plans in videos:
                plan = plans[0]
                wanted = needed_frames(plans)
                for j, buf in zip(wanted, self.fetch(plan.clip, wanted)):
                    reason = check_jpeg(buf, plan.src_size)
                    if reason is not None:
                        return self.error(plan, j, reason), plan.clip
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        return RuntimeError(f"{self.dataset} {self.split}: DALI failed on a batch whose JPEGs all decode on the "
                            f"host: {' | '.join(lines[-4:])}"), None


# --------------------------------------------------------------------------------------------------- loader
class DaliLoader(Loader):
    """The DALI backend's loader (contract: :mod:`pipelines.loader`): ``clips`` (B, T, 3, H, W) --
    (B, V, T, 3, H, W) in ``test`` mode -- uint8 and ``labels`` (B,) int64, both on ``spec.device``.

    Args:
        spec: the :class:`pipelines.loader.LoaderSpec` (device, on_bad, seed: DALI's own seed -- the graph draws
            no random numbers; all randomness is in the plans).
        split: :func:`pipelines.loader.open_split` (or anything with ``shards.dataset`` and a planner with
            ``batches(epoch)``, ``plans(row, epoch)``, ``mode``, ``views``, ``n``, ``batch_size``,
            ``num_segments``, ``size`` and ``__len__``): the *shared* plans, so every backend executes the same.
        fetch: ``fetch(row, frame_indices) -> encoded JPEGs`` (default ``split.shards.frames``).
        num_threads: DALI CPU threads. prefetch: DALI prefetch queue depth (batches).
        record: keep ``served``: ``(batch index, [view plans per clip])`` of every batch yielded this epoch.
        strict: decode every frame on the host first (libjpeg-turbo, strict) -- slow; see "Bad input" below.
        two_step: resample the decoded window twice (to the crop's size in the pre-resized frame, then to
            ``size``) like the reference, or once, straight to ``size``. ``None`` (default): twice only where
            the reference resamples twice (train with a pre-resize: Jester, EgoGesture), since that is where
            one resampling differs visibly; costs one more resize.

    Bad input: not-a-JPEG bytes, truncated streams and frames whose size differs from the shard's are caught
    by a cheap host check (header + markers) or by DALI itself, and reported exactly like the torch backend. A
    stream whose *entropy-coded data* is damaged but whose structure is intact is only a libjpeg *warning*: the
    torch backend (strict decode) rejects it, DALI/nvJPEG decode it to wrong pixels. ``strict=True`` closes the
    gap at the cost of a host decode; ``tools/convert_dataset.py verify --decode`` checks shards offline.
    """

    def __init__(self, spec, split, *, fetch: Callable | None = None, num_threads: int = 2, prefetch: int = 2,
                 record: bool = False, strict: bool = False, two_step: bool | None = None):
        import_dali()  # fail early, with the install hint
        super().__init__(spec, split)
        planner = self.planner
        self.T = int(planner.num_segments)
        self.out_size = (int(planner.size), int(planner.size))
        self.views = planner.mode == "test"
        self.num_threads = max(1, int(num_threads))
        self.prefetch = max(1, int(prefetch))
        self.seed = spec.seed
        self.record = bool(record)
        self.served: list = []
        self.gpu, self.device_id, self.device = resolve_device(spec.device)
        if two_step is None:  # two resamplings only where the reference has two (a pre-resize *and* a rescaled crop)
            preset = getattr(planner, "preset", None)
            two_step = planner.mode == "train" and preset is not None and preset.train_resize != "none"
        self.two_step = bool(two_step)
        self._source = _Source(planner, fetch or self.shards.frames, on_bad=spec.on_bad, dataset=self.dataset,
                               split=self.split, strict=strict, two_step=self.two_step)
        self._iter = None  # DALIGenericIterator, built on first use
        self._clean = False  # the DALI iterator finished its last epoch: reset() is allowed
        # stages: read = host (plans, shard bytes, checks, flattening: the external source); decode = waiting
        # for DALI (decode + resize + flip); to_device = copies after DALI.

    @property
    def replaced(self) -> int:
        return self._source.replaced

    def close(self) -> None:
        """Release the DALI pipeline (the next ``iter()`` builds a new one)."""
        self._iter = None
        self._clean = False

    def _build(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator  # noqa: PLC0415

        max_frames = self.planner.batch_size * self.planner.views * self.T
        pipe = build_pipeline(self._source, max_frames=max_frames, out_size=self.out_size, gpu=self.gpu,
                              device_id=self.device_id, num_threads=self.num_threads, prefetch=self.prefetch,
                              seed=self.seed, two_step=self.two_step)
        self._iter = DALIGenericIterator([pipe], list(OUTPUT_NAMES), auto_reset=False, prepare_first_batch=False)

    def _start(self, batches, first: int):
        """Point the source at ``batches[first:]`` and (re)start DALI on them."""
        self._source.load(self.epoch, batches, first)
        reuse = self._iter is not None and self._clean and first == 0
        self._clean = False
        try:
            if reuse:
                self._iter.reset()  # DALI prefetches from the batches just loaded (the source may raise here)
            else:
                self.close()
                self._build()
        except BaseException:
            self.close()
            raise

    def _next(self):
        """Next DALI output; a failure is turned into the FrameError naming the clip (or replaced)."""
        try:
            return next(self._iter)
        except FrameError:  # raised by the source (on_bad="raise")
            self.close()
            raise
        except StopIteration:
            self.close()
            raise RuntimeError("dali backend: the pipeline ended before the epoch did") from None
        except RuntimeError as e:  # DALI's "Critical error in pipeline": this pipeline is unusable now
            self.close()
            err, row = self._source.diagnose(e)
            if row is None or self._source.on_bad != "replace":
                raise err from None
            log.warning("%s; replaced by the next clip (on_bad='replace')", err)
            self._source.bad.add(row)  # load_clip skips it (and counts the replacement) from now on
            return None

    def __iter__(self) -> Iterator[tuple["object", "object"]]:
        import torch  # noqa: PLC0415

        batches = self.planner.batches(self.epoch)
        self.served = []
        if self.start >= len(batches):
            return
        T = self.T
        i = self.start
        self._start(batches, i)
        while i < len(batches):
            t0 = time.perf_counter()
            out = self._next()
            if out is None:  # a bad clip found by DALI was marked: restart from the batch in flight
                self._start(batches, i)
                continue
            t1 = time.perf_counter()
            self.stage_s["decode"] += t1 - t0
            bi, videos, _ = self._source.in_flight.popleft()
            frames = out[0]["frames"]
            pos = out[0]["position"].reshape(-1)[::T].tolist()
            n_plans = sum(len(v) for v in videos)
            if bi != i or pos != [(i << 20) | j for j in range(n_plans)]:
                self.close()
                raise RuntimeError(f"dali backend: batch order broken (batch {i}: got {bi}, positions {pos[:3]}...)")
            b, v = len(videos), len(videos[0])
            clips = frames.view(b, v, T, *frames.shape[1:]) if self.views else frames.view(b, T, *frames.shape[1:])
            labels = torch.tensor([ps[0].label for ps in videos], dtype=torch.int64)
            if clips.device != self.device:
                clips = clips.to(self.device)
            labels = labels.to(clips.device, non_blocking=True)
            self.stage_s["to_device"] += time.perf_counter() - t1
            self.stage_s["read"] = self._source.read_s
            if self.record:
                self.served.append((i, videos))
            self.batches_seen += 1
            i += 1
            yield clips, labels
        try:  # take DALI's end-of-epoch marker, so the next epoch can reset() instead of rebuilding
            next(self._iter)
        except StopIteration:
            self._clean = True
        else:
            self.close()
            raise RuntimeError("dali backend: the pipeline produced more batches than the epoch has")


def build_dali_loader(spec, *, num_threads: int | None = None, prefetch: int = 2, record: bool = False,
                      strict: bool = False, resample: str = "auto", verify: bool = False) -> DaliLoader:
    """The ``dali`` backend (contract: :mod:`pipelines.loader`).

    Sharding by global rank is the shared :class:`~pipelines.plan.planner.Planner`'s (rank ``r`` reads
    ``order[r::world]``, DALI's ``shard_id=rank, num_shards=world``); every epoch reshuffles (train);
    val/test cover every clip once, the last batch short. Options: ``num_threads`` (DALI CPU threads; default
    ``max(workers, 1)`` -- DALI's threads take the place of DataLoader workers), ``prefetch`` (DALI queue depth,
    batches), ``resample`` (``"auto"``: resample twice only where the reference does, ``"twice"``, ``"once"``:
    see ``two_step`` in :class:`DaliLoader`), ``record`` (keep the plans served, for tests), ``strict``
    (host-decode every frame first, see :class:`DaliLoader`), ``verify`` (re-hash shards first).
    """
    import_dali()  # the install hint, before any file is opened
    modes = {"auto": None, "twice": True, "once": False}
    if resample not in modes:
        raise ValueError(f"dali backend: resample must be one of {', '.join(modes)}, got {resample!r}")
    from pipelines.loader import open_split  # noqa: PLC0415

    return DaliLoader(spec, open_split(spec, verify=verify),
                      num_threads=num_threads if num_threads is not None else max(1, spec.workers),
                      prefetch=prefetch, record=record, strict=strict, two_step=modes[resample])

"""``backend="dali"``: the loader that executes :class:`~pipelines.plan.clip.ClipPlan` batches with NVIDIA DALI.

What happens per batch of B clips (T frames each):

1. the plans come from the *same* pure functions as every other backend (sampling + geometry), so frame
   indices, crop windows and flips are identical by construction;
2. the host reads only the T sampled JPEG byte strings of each clip from the memory-mapped shards and flattens
   the batch into B·T frames, each carrying its clip's decode window and mirror flag
   (:func:`pipelines.backends.dali.graph.flatten_clips`);
3. the DALI graph (:func:`pipelines.backends.dali.graph.build_pipeline`) decodes the crop window (``decode=
   "roi"``) or the whole frame (``"full"``; the resize then crops) (nvJPEG, ``device="mixed"``, on a GPU;
   libjpeg-turbo with ``device_id=None`` on a CPU-only machine), resizes it to ``size``×``size`` and flips
   (uint8 out, like every backend); the source (:mod:`pipelines.backends.dali.feed`) runs in the pipeline's
   thread or in worker processes (``feed="parallel"``) and streams epoch after epoch without a break;
4. DALI's PyTorch iterator hands the frames over (zero copy); they are viewed as ``(B, T, 3, H, W)``
   (``(B, V, T, 3, H, W)`` in test mode). Labels (already swapped by the flip map in the plans) come from the
   plans of the rows that travel through the graph with the pixels (with their clip positions, checked).

The last batch of an epoch may be short (external source batches are variable, ``≤ B·T``), so evaluation
covers every clip exactly once; training drops it when ``drop_last``.

DALI is imported lazily; without it, :class:`~pipelines.backends.dali.graph.BackendUnavailable` says
``pip install .[dali]``. Whether a GPU is used is decided *before* building: ``device`` is CUDA and
``GetCUDADeviceCount() > 0`` → mixed decode on ``torch.cuda.current_device()``; otherwise CPU.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterator

from pipelines.backends.base import Loader, corrupt_frame, on_bad_clip
from pipelines.backends.dali import nvjpeg
from pipelines.backends.dali.feed import TAG_BITS, Feed, check_jpeg, precheck_jpeg
from pipelines.backends.dali.graph import (
    FEEDS,
    INSTALL_HINT,
    OUTPUT_NAMES,
    BackendUnavailable,
    build_pipeline,
    dali_gpu_count,
    import_dali,
)
from pipelines.errors import FrameError
from pipelines.plan.clip import needed_frames

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
        decode: ``"roi"`` (decode the crop window only), ``"full"`` (whole frame, crop in the resize) or
            ``"auto"``: ROI except on a GPU whose nvJPEG decodes ROIs wrongly (:mod:`.nvjpeg`).
        hw_decoder_load: share of frames for the GPU's hardware JPEG decoder (DALI's default when ``None``).
        feed: ``"callback"`` (the source runs in the pipeline's thread) or ``"parallel"`` (``py_workers``
            spawned processes read the memory-mapped shards: DALI's parallel external source).

    Epochs: one pipeline serves the whole run. Its source (:class:`~pipelines.backends.dali.feed.Feed`) streams
    the batches of ``epoch, epoch + 1, ...`` without a break, so DALI prefetches the next epoch's first batches
    while the current one ends; a ``set_epoch`` the stream does not continue into (another epoch, a mid-epoch
    ``start``, a pass abandoned half-way) rebuilds it there.

    Bad input: not-a-JPEG bytes, truncated streams and frames whose size differs from the shard's are caught
    by a cheap host check (header + markers) or by DALI itself, and reported exactly like the torch backend. A
    stream whose *entropy-coded data* is damaged but whose structure is intact is only a libjpeg *warning*: the
    torch backend (strict decode) rejects it, DALI/nvJPEG decode it to wrong pixels. ``strict=True`` closes the
    gap at the cost of a host decode; ``tools/convert_dataset.py verify --decode`` checks shards offline.
    """

    def __init__(self, spec, split, *, fetch: Callable | None = None, num_threads: int = 2, prefetch: int = 2,
                 record: bool = False, strict: bool = False, two_step: bool | None = None, decode: str = "auto",
                 hw_decoder_load: float | None = None, feed: str = "callback", py_workers: int = 2):
        import_dali()  # fail early, with the install hint
        super().__init__(spec, split)
        planner = self.planner
        if feed not in FEEDS:
            raise ValueError(f"dali backend: feed must be one of {', '.join(FEEDS)}, got {feed!r}")
        self.T = int(planner.num_segments)
        self.out_size = (int(planner.size), int(planner.size))
        self.view_axis = planner.mode == "test"  # batches have a V axis (planner.views of them)
        self.num_threads = max(1, int(num_threads))
        self.prefetch = max(1, int(prefetch))
        self.seed = spec.seed
        self.record = bool(record)
        self.served: list = []
        self.gpu, self.device_id, self.device = resolve_device(spec.device)
        self.nvjpeg = nvjpeg.prepare() if self.gpu else None
        self.decode = nvjpeg.choose_decode(decode, self.gpu, self.nvjpeg)
        if two_step is None:  # two resamplings only where the reference has two (a pre-resize *and* a rescaled crop)
            preset = getattr(planner, "preset", None)
            two_step = planner.mode == "train" and preset is not None and preset.train_resize != "none"
        self.two_step = bool(two_step)
        self.hw_decoder_load, self.feed, self.py_workers = hw_decoder_load, feed, max(1, int(py_workers))
        self.fetch = fetch or self.shards.frames
        self.check = check_jpeg if strict else precheck_jpeg
        self.bad: set[int] = set()  # rows known bad (replace mode); the next pipeline's feed skips them
        self._replaced = 0
        self._feed = None  # this process's Feed of the running pipeline (callback mode: the one DALI calls)
        self._iter = None  # DALIGenericIterator over the running pipeline, built on first use
        self._k = 0  # global iterations of the running pipeline consumed so far
        self.built = 0  # pipelines built (tests: one per run when epochs follow each other)
        self.described = ""
        # stages: read = host (plans, shard bytes, checks, flattening: the external source); decode = waiting
        # for DALI (decode + resize + flip); to_device = copies after DALI.

    def describe(self) -> str:
        """One line naming the decoder choices (logged once, when the first pipeline is built)."""
        where = (f"GPU {self.device_id}: nvJPEG hardware+CUDA decoders"
                 f"{'' if self.hw_decoder_load is None else f' (hw_decoder_load {self.hw_decoder_load:g})'}, "
                 f"{self.nvjpeg.describe()}" if self.gpu else "CPU: libjpeg-turbo")
        how = "ROI decode (crop window only)" if self.decode == "roi" else "full-frame decode + crop in the resize"
        quiet = f"; nvImageCodec log level {os.environ.get(nvjpeg.LOG_ENV)}" if self.gpu else ""
        return (f"dali {self.dataset} {self.split}: {where}; {how}, fancy upsampling; "
                f"{'two resamplings' if self.two_step else 'one resampling'}; feed {self.feed}"
                f"{f' ({self.py_workers} workers)' if self.feed == 'parallel' else ''}, {self.num_threads} threads, "
                f"prefetch {self.prefetch}{quiet}")

    def close(self) -> None:
        """Release the DALI pipeline (the next ``iter()`` builds a new one)."""
        self._iter = None
        self._feed = None

    def _build(self, epoch: int, start: int):
        """A pipeline whose stream starts at batch ``start`` of ``epoch``."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator  # noqa: PLC0415

        self.close()
        self._feed = Feed(self.planner, self.fetch, check=self.check, on_bad=self.spec.on_bad, dataset=self.dataset,
                          split=self.split, epoch=epoch, start=start, two_step=self.two_step,
                          full_frame=self.decode == "full", bad=self.bad)
        max_frames = self.planner.batch_size * self.planner.views * self.T
        pipe = build_pipeline(self._feed, max_frames=max_frames, out_size=self.out_size, gpu=self.gpu,
                              device_id=self.device_id, num_threads=self.num_threads, prefetch=self.prefetch,
                              seed=self.seed, two_step=self.two_step, decode=self.decode,
                              hw_decoder_load=self.hw_decoder_load, feed=self.feed, py_workers=self.py_workers)
        if not self.described:
            self.described = self.describe()
            log.info("%s", self.described)
        try:
            self._iter = DALIGenericIterator([pipe], list(OUTPUT_NAMES), auto_reset=False, prepare_first_batch=False)
        except BaseException:
            self.close()
            raise
        self._k = 0
        self.built += 1

    def _position(self) -> tuple[int, int] | None:
        """``(epoch, batch)`` the running pipeline yields next (``None`` without one)."""
        return None if self._iter is None else self._feed.at(self._k)

    def diagnose(self, err: Exception) -> tuple[Exception, int | None]:
        """After DALI failed: the FrameError naming the first bad frame of the batches in flight (oldest first) and
        its row; a RuntimeError carrying DALI's words (and ``None``) when every frame decodes on the host."""
        for k in range(self._k, self._k + self.prefetch + 1):
            epoch, _ = self._feed.at(k)
            for row in self._feed.rows(k):
                if int(row) in self.bad:
                    continue
                plans = self.planner.plans(int(row), epoch)
                wanted = needed_frames(plans)
                for j, buf in zip(wanted, self.fetch(int(row), wanted)):
                    if (reason := check_jpeg(buf, plans[0].src_size)) is not None:
                        return corrupt_frame(self.dataset, self.split, plans[0].key, plans[0].clip, j, reason), int(row)
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        return RuntimeError(f"{self.dataset} {self.split}: DALI failed on a batch whose JPEGs all decode on the "
                            f"host: {' | '.join(lines[-4:])}"), None

    def _next(self):
        """Next DALI output; a failure is turned into the FrameError naming the clip (or replaced)."""
        try:
            return next(self._iter)
        except FrameError:  # raised by the source (on_bad="raise")
            self.close()
            raise
        except StopIteration:
            self.close()
            raise RuntimeError("dali backend: the pipeline ended, although its source never ends") from None
        except Exception as e:  # noqa: BLE001 - DALI's "Critical error in pipeline", or a parallel feed worker's
            # error as a bare Exception carrying its traceback text: this pipeline is unusable now
            err, row = self.diagnose(e)
            self.close()
            if row is None:
                raise err from None
            on_bad_clip(err, self.spec.on_bad)
            self.bad.add(row)  # the rebuilt feed skips it (and counts the replacement) from now on
            return None

    def _unpack(self, out, epoch: int, b: int):
        """``(clips, labels, plans per clip)`` of one DALI output, checked against the schedule."""
        import torch  # noqa: PLC0415

        T, k = self.T, self._k
        frames = out[0]["frames"]
        pos = out[0]["position"].reshape(-1)[::T].tolist()
        rows = out[0]["row"].reshape(-1)[::T].tolist()
        planned = [int(r) for r in self._feed.rows(k)]
        v = self.planner.views
        if pos != [(k << TAG_BITS) | j for j in range(len(planned)) for _ in range(v)]:
            self.close()
            raise RuntimeError(f"dali backend: batch order broken (epoch {epoch} batch {b}: positions {pos[:3]}...)")
        got = rows[::v]
        self._replaced += sum(g != p for g, p in zip(got, planned))
        self.bad.update(p for g, p in zip(got, planned) if g != p)
        videos = [self.planner.plans(int(r), epoch) for r in got]
        n = len(videos)
        clips = frames.view(n, v, T, *frames.shape[1:]) if self.view_axis else frames.view(n, T, *frames.shape[1:])
        labels = torch.tensor([ps[0].label for ps in videos], dtype=torch.int64)
        return clips, labels, videos

    def __iter__(self) -> Iterator[tuple["object", "object"]]:
        n = len(self.planner.batches(self.epoch))
        self.served = []
        epoch, b = self.epoch, self.start
        while b < n:
            if self._position() != (epoch, b):  # not where the running stream is: start one here
                self._build(epoch, b)
            t0 = time.perf_counter()
            out = self._next()
            if out is None:  # a bad clip found by DALI was marked: rebuild from the batch in flight
                continue
            t1 = time.perf_counter()
            self.stage_s["decode"] += t1 - t0
            clips, labels, videos = self._unpack(out, epoch, b)
            if clips.device != self.device:
                clips = clips.to(self.device)
            labels = labels.to(clips.device, non_blocking=True)
            self.stage_s["to_device"] += time.perf_counter() - t1
            self.stage_s["read"] = self._feed.read_s
            if self.record:
                self.served.append((b, videos))
            self.batches_seen += 1
            self._k += 1
            b += 1
            yield clips, labels


def build_dali_loader(spec) -> DaliLoader:
    """The ``dali`` backend (contract: :mod:`pipelines.loader`).

    Sharding by global rank is the shared :class:`~pipelines.plan.planner.Planner`'s (rank ``r`` reads
    ``order[r::world]``, DALI's ``shard_id=rank, num_shards=world``); every epoch reshuffles (train);
    val/test cover every clip once, the last batch short. Options (``spec.options``, a
    :class:`pipelines.backends.options.DaliOptions`): ``num_threads`` (DALI CPU threads; default
    ``max(workers, 1)`` -- DALI's threads take the place of DataLoader workers), ``prefetch`` (DALI queue depth,
    batches), ``resample`` (``"reference"``, the default: resample twice only where the reference does;
    ``"auto"`` / ``"once"``: once, from the source window -- see ``two_step`` in :class:`DaliLoader`), ``decode``
    (``auto``/``roi``/``full``), ``hw_decoder_load``, ``feed`` (``callback``/``parallel``) and ``py_workers``
    (parallel feed processes; default ``max(workers, 1)``): see :class:`DaliLoader`; ``record`` (keep the plans
    served, for tests), ``strict`` (host-decode every frame first), ``verify`` (re-hash shards first).
    """
    import_dali()  # the install hint, before any file is opened
    o = spec.options
    num_threads, prefetch, record, strict, verify = o.num_threads, o.prefetch, o.record, o.strict, o.verify
    decode, hw_decoder_load, feed, py_workers = o.decode, o.hw_decoder_load, o.feed, o.py_workers
    from pipelines.loader import open_split  # noqa: PLC0415

    return DaliLoader(spec, open_split(spec, verify=verify),
                      num_threads=num_threads if num_threads is not None else max(1, spec.workers),
                      prefetch=prefetch, record=record, strict=strict, two_step=o.two_step, decode=decode,
                      hw_decoder_load=hw_decoder_load, feed=feed,
                      py_workers=py_workers if py_workers is not None else max(1, spec.workers))

"""Backend ``torch``: read shard bytes (memory-mapped) and decode only the sampled frames, in parallel.

Execution (``executor``):

* ``"threads"`` (default): ``workers`` threads *of this process* fill each batch clip by clip. A thread plans
  the clip, takes zero-copy views of its sampled JPEGs from the memory-mapped shard, decodes them with
  libjpeg-turbo (simplejpeg, which releases the GIL) into a reused per-thread array and resamples them
  (torch's uint8 kernels, which release the GIL too) straight into the clip's slot of a preallocated batch
  tensor (page-locked when the device is CUDA; otherwise recycled once the consumer has dropped it). No
  pickling, no shared-memory hand-over, no collation; up to ``prefetch_factor * workers`` batches are in
  flight and they are yielded in order. Each thread runs torch single-threaded (the pool is the parallelism).
  The same per-frame work as worker processes, without their hand-over costs (``make profile`` compares them).
* ``"processes"``: DataLoader worker processes (the ``folder`` baseline's executor), one whole batch per
  item (``batch_size=None`` with a batch-index sampler), persistent across epochs (item key ``(epoch, b)``).

``workers=0`` loads in the calling thread. Whatever the executor and ``workers``, every clip depends only on
(seed, epoch, clip) and batches come in the planner's order, so the output is identical.

Output memory: with ``channels_last=True`` (default) a batch is stored as ``(B, [V,] T, H, W, 3)`` and returned
as the ``(B, [V,] T, 3, H, W)`` view -- the layout the decoder and the resampler produce, and the one a
``channels_last`` model consumes (``x.reshape(-1, 3, H, W)`` stays a view), which saves a full layout copy per
frame. ``channels_last=False`` gives contiguous NCHW memory. Values are the same.

Options: ``resample`` --

* ``"auto"`` (default): where the reference resamples twice (a pre-resize *and* a rescaled crop: Jester /
  EgoGesture train) one resize from the crop window mapped to the source (:func:`pipelines.decode.frames.fused_window`,
  the ROI semantics of the DALI backend); elsewhere (val/test, SSv2 train, ``size x size`` train crops) the
  reference's order with torch's uint8 kernels. Tolerance vs ``folder``: val/test within 2 grey levels
  (mean < 0.05); train where fused: one bilinear blur less and up to half a source pixel of shift -- mean
  |diff| ~1.6-2.4 grey levels on noisy synthetic frames, large only on hard edges (tests state the bound).
* ``"reference"``: the reference's order everywhere (pre-resize, crop, resize) with torch's uint8 kernels: within
  2 grey levels of ``folder``, mean < 0.05; slower than ``"auto"`` where that fuses (docs/benchmarks.md).
* ``"pil"``: PIL's resampling, bit-identical to the ``folder`` backend (the slowest).
* ``"once"``: the fused resize for every plan, val/test included.

(One vocabulary with the ``dali`` backend: :mod:`pipelines.backends.options`.)

``dct_scale`` (False; decode at 1/2..1/8 in the DCT domain when the pre-resize allows, changes pixels),
``decode_device`` (None; ``"cuda"`` makes process workers send the JPEG bytes and the main process decodes them
with ``torchvision.io.decode_jpeg(device="cuda")`` in one batched call and resamples on the GPU
(:mod:`pipelines.backends.torch.device`); ``"cpu"`` runs the same path on the CPU, for tests; ``on_bad`` applies as
on the worker path, and ``"pil"`` runs as ``"reference"`` there),
``prefetch_factor`` (2), ``executor``, ``channels_last``.

Batches are uint8 (the consumer normalises on its device, :func:`pipelines.plan.presets.normalize`); for CUDA they
are filled in page-locked memory and copied non-blocking.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from pipelines.decode import frames as decode
from pipelines.backends.base import Loader, corrupt_frame, replace_bad
from pipelines.backends.options import EXECUTORS
from pipelines.backends.torch import stream
from pipelines.decode.executors import BufferPool  # noqa: F401  (the alloc annotation)
from pipelines.errors import DataError
from pipelines.plan.planner import Planner
from pipelines.plan.clip import needed_frames

log = logging.getLogger(__name__)

# resample (pipelines.backends.options.RESAMPLE) -> decode.run_plan_torch's ``fused``
FUSED = {"auto": "auto", "reference": False, "pil": False, "once": True}


class Failure:
    """A DataError raised in a worker, carried to the main process as a value (re-raised there with its own
    one-line message instead of DataLoader's traceback text)."""

    def __init__(self, err: DataError):
        self.cls, self.msg = type(err), str(err)

    def raise_(self):
        raise self.cls(self.msg)


class BatchSource:
    """Map-style dataset whose item ``b`` is batch ``b`` of one epoch, fully assembled.

    Subclasses implement :meth:`load_clip` (fill ``dest`` (V, T, 3, H, W) for one clip). Returns
    ``(clips uint8 (B, V, T, 3, H, W), labels int64 (B,), stats float64 [replaced, read_s, decode_s, augment_s])``.
    """

    channels_last = False  # allocate batches as (B, V, T, H, W, 3) memory viewed as (B, V, T, 3, H, W)

    def __init__(self, planner: Planner, batches: list, epoch: int, *, on_bad: str, dataset: str, split: str):
        self.planner, self.batches, self.epoch = planner, batches, int(epoch)
        self.on_bad, self.dataset, self.split = on_bad, dataset, split

    def alloc(self, n: int, *, dtype=None, pin: bool = False, pool: "BufferPool | None" = None):
        """An uninitialised batch of ``n`` clips, shape ``(n, V, T, 3, H, W)`` (channels-last memory when
        :attr:`channels_last`; page-locked when ``pin``; recycled from ``pool`` when given)."""
        import torch

        p = self.planner
        dtype = torch.uint8 if dtype is None else dtype
        if self.channels_last:
            shape = (n, p.views, p.num_segments, p.size, p.size, 3)
        else:
            shape = (n, p.views, p.num_segments, 3, p.size, p.size)
        base = pool.get(shape, dtype) if pool is not None else torch.empty(shape, dtype=dtype, pin_memory=pin)
        # always a view: a tensor of its own that counts as a user of the pool's buffer while it lives
        return base.permute(0, 1, 2, 5, 3, 4) if self.channels_last else base.view(shape)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, key):
        """``key`` = ``(epoch, b)``: batch ``b`` of ``epoch`` (the epoch's batches are planned on first use, so
        one persistent set of workers serves every epoch)."""
        epoch, b = key
        if int(epoch) != self.epoch:
            self.epoch, self.batches = int(epoch), self.planner.batches(int(epoch))
        try:
            return self.make_batch(int(b))
        except DataError as e:
            return Failure(e)

    def make_batch(self, b: int):
        import torch

        ids = self.batches[b]
        out = self.alloc(len(ids))
        labels = np.empty(len(ids), dtype=np.int64)
        stats = np.zeros(4, dtype=np.float64)
        for k, clip in enumerate(ids):
            labels[k] = self.load_with_replacement(int(clip), out[k], stats)
        return out, torch.from_numpy(labels), stats

    def load_with_replacement(self, clip: int, dest, stats) -> int:
        label, replaced = replace_bad(lambda c: self.load_clip(c, dest, stats), clip, n=self.planner.n,
                                      on_bad=self.on_bad, where=f"{self.dataset} {self.split}")
        stats[0] += replaced
        return label

    def frame_error(self, plan_key: str, clip: int, frame: int, err):
        return corrupt_frame(self.dataset, self.split, plan_key, clip, frame, err)

    def load_clip(self, clip: int, dest, stats) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class ShardSource(BatchSource):
    """Reads the sampled frames of each clip from the memory-mapped shards and decodes them.

    Frames are decoded straight into a reusable per-thread scratch array (no allocation, no ``np.stack``) and
    resampled straight into the clip's slot of the batch."""

    def __init__(self, shards, planner: Planner, batches: list, epoch: int, *, on_bad: str,
                 resample: str = "reference", dct_scale: bool = False, channels_last: bool = False):
        super().__init__(planner, batches, epoch, on_bad=on_bad, dataset=shards.dataset, split=shards.split)
        self.shards, self.resample, self.dct_scale = shards, resample, bool(dct_scale)
        self.channels_last = bool(channels_last)
        self._tls = None

    def __getstate__(self):  # pickled to DataLoader workers: the thread-local scratch stays behind
        state = dict(self.__dict__)
        state["_tls"] = None
        return state

    def _scratch(self, n: int, h: int, w: int) -> np.ndarray:
        import threading

        if self._tls is None:
            self._tls = threading.local()
        buf = getattr(self._tls, "buf", None)
        if buf is None or buf.shape[0] < n or buf.shape[1:] != (h, w, 3):
            buf = self._tls.buf = np.empty((max(n, self.planner.num_segments), h, w, 3), dtype=np.uint8)
        return buf[:n]

    def _decode_all(self, plans, clip: int, wanted: list, bufs) -> np.ndarray:
        """The ``wanted`` frames decoded, ``(len(wanted), H, W, 3)`` (a scratch array, valid until the next call)."""
        key = plans[0].key
        min_size = decode.dct_min_size(plans[0]) if self.dct_scale else None
        if min_size is not None:  # DCT-downscaled: the size is the decoder's choice
            dec = []
            for j, buf in zip(wanted, bufs):
                try:
                    dec.append(decode.decode_jpeg(buf, min_size=min_size))
                except ValueError as e:
                    raise self.frame_error(key, clip, j, e) from None
            for j, d in zip(wanted, dec):
                if d.shape != dec[0].shape:
                    raise self.frame_error(key, clip, j, f"size {d.shape[:2]} differs from {dec[0].shape[:2]}")
            return np.stack(dec)
        h, w = plans[0].src_size
        arr = self._scratch(len(wanted), h, w)
        for u in range(len(wanted)):
            j, buf = wanted[u], bufs[u]
            try:
                got = decode.decode_jpeg(buf, out=arr[u])
            except ValueError as e:  # corrupt, or larger than the shard says: tell which
                try:
                    got = decode.decode_jpeg(buf)
                except ValueError as e2:
                    raise self.frame_error(key, clip, j, e2) from None
                if got.shape[:2] == (h, w):  # pragma: no cover - decodes fine without the buffer
                    raise self.frame_error(key, clip, j, e) from None
            if got.shape[:2] != (h, w):
                raise self.frame_error(key, clip, j, f"decoded size {got.shape[:2]} differs from the shard's "
                                                     f"{(h, w)}")
        return arr

    def load_clip(self, clip: int, dest, stats) -> int:
        import torch

        t0 = time.perf_counter()
        plans = self.planner.plans(clip, self.epoch)
        wanted = needed_frames(plans)
        bufs = self.shards.frames(clip, wanted)
        t1 = time.perf_counter()
        arr = self._decode_all(plans, clip, wanted, bufs)
        t2 = time.perf_counter()
        pos = {j: u for u, j in enumerate(wanted)}
        for v, plan in enumerate(plans):
            idx = [pos[j] for j in plan.frames]
            frames = arr[: len(idx)] if idx == list(range(len(idx))) else arr[idx]
            if self.resample == "pil":
                dest[v].copy_(torch.from_numpy(decode.run_plan_pil_arrays(frames, plan)))
            else:
                decode.run_plan_torch(frames, plan, out=dest[v], fused=FUSED[self.resample])
        t3 = time.perf_counter()
        stats[1:] += (t1 - t0, t2 - t1, t3 - t2)
        return plans[0].label


class TorchLoader(Loader):
    """The torch backend's loader (contract: :mod:`pipelines.loader`); ``make_source(batches, epoch)`` builds the
    map-style :class:`BatchSource` the workers run."""

    def __init__(self, spec, split, make_source, *, prefetch_factor: int = 2, gpu_decode=None,
                 executor: str = "threads"):
        super().__init__(spec, split)
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
        self.make_source = make_source
        self.workers, self.prefetch_factor = spec.workers, int(prefetch_factor)
        self.gpu_decode = gpu_decode
        self.executor = "processes" if gpu_decode is not None else executor
        self.sync_timing = False  # tools/profile_loader.py sets it: synchronise CUDA per batch for stage times
        self._source = None
        self._dl = None
        self._sampler = None
        self._pool = None
        self._buffers = None
        # the next epoch's first batches are prepared while this one ends (stream.py); off: per-pass executors
        self.epoch_prefetch = True
        self._carry = None  # threads: the predicted next pass's submitted batches
        self._dl_it = self._dl_at = None  # processes: the running DataLoader iterator and the key it yields next
        self.ahead_submitted = 0  # threads: batches of the next pass submitted during the last one

    def _items(self, source):
        if self.workers == 0:
            for key in self._keys():
                yield source[key]
            return
        yield from stream.process_items(self, source)

    def _keys(self):
        return [(self.epoch, b) for b, _ in self.pending()]

    def close(self) -> None:
        """Stop the worker processes / threads now (they also stop when the loader is dropped)."""
        self._dl = self._dl_it = self._dl_at = None
        if self._carry is not None:
            self._carry.cancel()
            self._carry = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __iter__(self):
        if self.executor == "threads" and self.workers > 0:
            return self._iterate(stream.thread_items(self))
        if self._source is None:  # one source for every epoch: its items are keyed (epoch, batch)
            self._source = self.make_source(self.planner.batches(self.epoch), self.epoch)
        return self._iterate(self._items(self._source))

    def _iterate(self, items):
        import torch

        test = self.planner.mode == "test"
        for item in items:
            if isinstance(item, Failure):
                item.raise_()
            if self.gpu_decode is not None:
                payload, stats = item
                t0 = time.perf_counter()
                clips, labels, replaced = self.gpu_decode(payload, self.device)
                self._replaced += replaced
            else:
                clips, labels, stats = item
                t0 = time.perf_counter()
                clips = clips.to(self.device, non_blocking=True)
            if self.device.type == "cuda" and not labels.is_cuda:
                labels = labels.pin_memory()  # a pageable source would make the copy block on the stream
            labels = labels.to(self.device, non_blocking=True)
            if not test:
                clips = clips.squeeze(1)
            if self.sync_timing and self.device.type == "cuda":
                # profiling only: makes ``to_device`` the real copy/decode time, but stalls the host on the
                # stream (the previous training step too), so training leaves it off
                torch.cuda.current_stream(self.device).synchronize()
            stats = np.asarray(stats, dtype=np.float64)
            self._replaced += int(stats[0])
            for name, v in zip(("read", "decode", "augment"), stats[1:]):
                self.stage_s[name] += float(v)
            self.stage_s["to_device"] += time.perf_counter() - t0
            self.batches_seen += 1
            yield clips, labels


def build_torch_loader(spec) -> TorchLoader:
    """The ``torch`` backend (contract: :mod:`pipelines.loader`); its options (``spec.options``, a validated
    :class:`pipelines.backends.options.TorchOptions`) are described in this module's docstring. ``verify``
    re-hashes the shards first."""
    import torch

    from pipelines.loader import open_split

    o = spec.options
    resample, dct_scale, decode_device, prefetch_factor, verify, executor, channels_last = (
        o.resample, o.dct_scale, o.decode_device, o.prefetch_factor, o.verify, o.executor, o.channels_last)
    split = open_split(spec, verify=verify)
    shards, planner = split
    if decode_device is not None:
        if torch.device(decode_device).type != torch.device(spec.device).type:
            raise ValueError(f"decode_device={decode_device!r} must be the delivery device ({spec.device})")

        from pipelines.backends.torch.device import BytesSource, gpu_decoder

        def make(batches, ep):
            return BytesSource(shards, planner, batches, ep, on_bad=spec.on_bad)

        gpu = gpu_decoder(planner, shards, resample, channels_last, spec.on_bad)
    else:
        def make(batches, ep):
            return ShardSource(shards, planner, batches, ep, on_bad=spec.on_bad, resample=resample,
                               dct_scale=dct_scale, channels_last=channels_last)

        gpu = None
    return TorchLoader(spec, split, make, prefetch_factor=prefetch_factor, gpu_decode=gpu, executor=executor)

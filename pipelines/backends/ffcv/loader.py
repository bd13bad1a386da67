"""``backend="ffcv"``: the loader that executes :class:`~pipelines.plan.clip.ClipPlan` batches with FFCV.

Data: one ``.beton`` per split (:mod:`pipelines.backends.ffcv.convert`; ``tools/convert_dataset.py to-ffcv SHARDS``),
row ``i`` = clip ``i`` of the split, its JPEGs concatenated behind an offsets header. The shard folder is still
the source of the split's metadata (the shared :class:`~pipelines.plan.planner.Planner`) and of replacement clips.

Per epoch:

1. the host asks the shared Planner for this rank's batches and every clip's view plans (the *same* pure
   sampling/geometry functions as every other backend: identical frame indices, windows, flips and labels),
   and writes them into a plan table (one int32 row per clip and view: T frame indices, source size,
   pre-resize, crop, flip);
2. FFCV's traversal order is replaced by the Planner's order, so FFCV batches are the Planner's batches;
3. a custom FFCV decoder stage (:class:`ClipDecoder`, numba, ``prange`` over the batch) reads each clip's
   row from the memory-mapped beton, decodes *only the sampled frames* with FFCV's libjpeg-turbo
   ``imdecode``, applies the plan's pre-resize, crop, resize and flip with a numba port of PIL's bilinear
   resampling (:mod:`pipelines.backends.ffcv.kernels`) and writes ``(V, T, 3, H, W)`` uint8;
4. ``ToTensor`` hands the batch over (zero copy); the host copies it out of FFCV's ring buffer (uint8, like
   every backend's), moves it to ``device`` and takes labels from the plans; the row indices FFCV read travel
   with the pixels and are checked against the plan.

The decoder reads the plan table through its address (a numba intrinsic): FFCV compiles the pipeline once,
and numba would freeze a captured array at compile time, so per-epoch plans could not reach it otherwise.

Pixels: FFCV's ``imdecode`` uses libjpeg-turbo's fast integer IDCT (``TJFLAG_FASTDCT``), the reference
(simplejpeg / PIL) the accurate one; the resampling is PIL's, exactly (``tests/test_ffcv.py`` states the bound
vs the ``torch`` backend).

Pitfalls handled: FFCV is imported lazily (its first import compiles numba code); FFCV's ``Compiler`` sets
``torch.set_num_threads(workers)`` as a side effect, undone here; normalisation is done on the host tensor
is the consumer's (nothing non-jitted sits between jitted stages); numba's thread
pool can print finalizer noise at interpreter exit, which is harmless.
"""
from __future__ import annotations

import os
import time

import numpy as np

from pipelines.backends.base import Loader, corrupt_frame, on_bad_clip, replace_bad
from pipelines.plan.clip import needed_frames
from pipelines.errors import FrameError
from pipelines.backends.ffcv.convert import INSTALL_HINT, FfcvUnavailable, default_path, import_ffcv

__all__ = ["FfcvLoader", "FfcvUnavailable", "INSTALL_HINT", "build_ffcv_loader"]

_GEOM = 9  # sh, sw, rh, rw, cx, cy, cw, ch, flip
_REASONS = {1: "not a JPEG or no frame header", 2: "decoded size differs from the shard's", 3: "truncated",
            4: "libjpeg-turbo failed to decode", 5: "frame index out of range"}


def _address_as_pointer():
    """A numba intrinsic turning an int64 address into a ``void*`` (for ``numba.carray``)."""
    from numba import types  # noqa: PLC0415
    from numba.core import cgutils  # noqa: PLC0415
    from numba.extending import intrinsic  # noqa: PLC0415

    @intrinsic
    def as_pointer(typingctx, src):
        sig = types.voidptr(src)

        def codegen(cgctx, builder, sig, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return sig, codegen

    return as_pointer


def _decoder_class():
    """:class:`ClipDecoder`, defined lazily (it subclasses an ffcv class)."""
    from dataclasses import replace  # noqa: PLC0415

    import numba  # noqa: PLC0415
    from ffcv.fields.bytes import BytesDecoder  # noqa: PLC0415
    from ffcv.libffcv import imdecode  # noqa: PLC0415
    from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: PLC0415
    from ffcv.pipeline.compiler import Compiler  # noqa: PLC0415

    from pipelines.backends.ffcv import kernels as K  # noqa: PLC0415

    as_pointer = _address_as_pointer()

    class ClipDecoder(BytesDecoder):
        """FFCV decoder for the ``frames`` BytesField: plan table -> uint8 ``(V, T, 3, H, W)`` per clip (a
        BytesDecoder subclass, so FFCV takes it as the field's decoder rather than a transform after one)."""

        def __init__(self, plans: np.ndarray, status: np.ndarray, out_size: tuple[int, int]):
            super().__init__()
            self.plans, self.status = plans, status  # kept alive by the loader; read by address
            self.out_size = (int(out_size[0]), int(out_size[1]))

        def declare_state_and_memory(self, previous_state):
            _, V, row = self.plans.shape
            shape = (V, row - _GEOM, 3, *self.out_size)
            return (replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("u1")),
                    AllocationQuery(shape, dtype=np.dtype("u1")))

        def generate_code(self):
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            N, V, ROW = (int(x) for x in self.plans.shape)
            T = ROW - _GEOM
            paddr, saddr = int(self.plans.ctypes.data), int(self.status.ctypes.data)
            oh, ow = self.out_size
            frame_code, place, u32 = K.frame_code, K.place, K.u32

            def decode(batch_indices, destination, metadata, storage_state):
                plans = numba.carray(as_pointer(paddr), (N, V, ROW), np.int32)
                status = numba.carray(as_pointer(saddr), (N, 2), np.int32)
                for b in my_range(batch_indices.shape[0]):
                    clip = batch_indices[b]
                    data = mem_read(metadata[clip]["ptr"], storage_state)
                    nf = u32(data, 0)
                    head = 4 * (nf + 2)
                    status[clip, 0] = 0
                    status[clip, 1] = 0
                    for v in range(V):
                        p = plans[clip, v]
                        sh, sw, rh, rw = p[T], p[T + 1], p[T + 2], p[T + 3]
                        cx, cy, cw, ch, flip = p[T + 4], p[T + 5], p[T + 6], p[T + 7], p[T + 8]
                        frame = np.empty((sh, sw, 3), np.uint8)
                        for t in range(T):
                            j = p[t]
                            if j < 0 or j >= nf:
                                status[clip, 0] = 5
                                status[clip, 1] = j
                                break
                            jpg = data[head + u32(data, 4 + 4 * j):head + u32(data, 4 + 4 * (j + 1))]
                            code = frame_code(jpg, sh, sw)
                            if code == 0 and imdecode_c(jpg, frame, sh, sw, sh, sw, 0, 0, 1, 1, False, False) != 0:
                                code = 4
                            if code != 0:
                                status[clip, 0] = code
                                status[clip, 1] = j
                                break
                            place(frame, destination[b, v, t], rh, rw, cx, cy, cw, ch, oh, ow, flip != 0)
                        if status[clip, 0] != 0:
                            break
                return destination[:batch_indices.shape[0]]

            decode.is_parallel = True
            return decode

    return ClipDecoder


class _PlannedOrder:
    """FFCV traversal order = the shared Planner's order for the loader's current epoch."""

    def __init__(self, loader: "FfcvLoader"):
        self.owner = loader

    def sample_order(self, _ffcv_epoch: int):
        return np.concatenate(self.owner._epoch_batches).astype(np.uint64) if self.owner._epoch_batches \
            else np.zeros(0, np.uint64)


class FfcvLoader(Loader):
    """The FFCV backend's loader (contract: :mod:`pipelines.loader`).

    Args:
        spec, split: the :class:`pipelines.loader.LoaderSpec` and :func:`pipelines.loader.open_split` (the shared
            planner; the shards give replacement clips, ``on_bad="replace"``).
        beton: path of the split's ``.beton`` (:mod:`pipelines.backends.ffcv.convert`).
        workers: numba threads of FFCV's decoder (``prange`` over the clips of a batch).
        batches_ahead: FFCV's prefetch depth.
        record: keep ``served``: ``(batch index, [view plans per clip])`` of every batch (tests).
    """

    def __init__(self, spec, split, beton: str, *, workers: int = 2, batches_ahead: int = 2,
                 os_cache: bool = True, record: bool = False):
        import torch  # noqa: PLC0415

        import_ffcv()
        from ffcv.fields.basics import IntDecoder  # noqa: PLC0415
        from ffcv.loader import Loader, OrderOption  # noqa: PLC0415
        from ffcv.transforms import ToTensor  # noqa: PLC0415

        if not os.path.exists(beton):
            raise FileNotFoundError(f"{beton}: FFCV file not found (run `tools/convert_dataset.py to-ffcv "
                                    f"{os.path.dirname(os.path.dirname(beton)) or '.'} --splits {spec.split}`)")
        super().__init__(spec, split)
        planner = self.planner
        self.beton, self.on_bad, self.record = beton, spec.on_bad, bool(record)
        self.T, self.V = int(planner.num_segments), int(planner.views)
        self.view_axis = planner.mode == "test"  # batches have a V axis (self.V views)
        self.served: list = []
        n = int(planner.n)
        self._plans = np.zeros((max(n, 1), self.V, self.T + _GEOM), np.int32)
        self._status = np.zeros((max(n, 1), 2), np.int32)
        self._epoch_batches = planner.batches(self.epoch)
        self._view_plans: dict = {}
        self._bad: set[int] = set()
        self._it = None
        decoder = _decoder_class()(self._plans, self._status, (planner.size, planner.size))
        threads = torch.get_num_threads()
        try:
            self._loader = Loader(beton, batch_size=planner.batch_size, num_workers=max(1, int(workers)),
                                  order=OrderOption.SEQUENTIAL, indices=planner.clips(self.epoch),
                                  os_cache=os_cache, drop_last=planner.drop_last, batches_ahead=batches_ahead,
                                  pipelines={"frames": [decoder, ToTensor()], "index": [IntDecoder(), ToTensor()],
                                             "label": None, "num_frames": None, "height": None, "width": None})
        finally:
            torch.set_num_threads(threads)  # FFCV's Compiler sets torch's thread count as a side effect
        if self._loader.reader.num_samples != n:
            raise ValueError(f"{beton}: {self._loader.reader.num_samples} rows, but split {self.split!r} of the shards "
                             f"has {n} clips (re-run tools/convert_dataset.py to-ffcv)")
        self._loader.traversal_order = _PlannedOrder(self)

    def close(self) -> None:
        """Stop FFCV's epoch thread (if any) and wait for it, so the plan table may be rewritten."""
        it, self._it = self._it, None
        if it is not None:
            it.close()
            it.join(timeout=30)

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # ----------------------------------------------------------------------------------------------- epoch
    def _fill(self, batches) -> None:
        """Write this epoch's plans of this rank's clips into the table the decoder reads."""
        T = self.T
        self._view_plans = {}
        for batch in batches:
            for clip in batch:
                clip = int(clip)
                plans = self.planner.plans(clip, self.epoch)
                self._view_plans[clip] = plans
                rows = self._plans[clip]
                for v, p in enumerate(plans):
                    rows[v, :T] = p.frames
                    x, y, w, h = p.crop
                    rows[v, T:] = (*p.src_size, *p.resize, x, y, w, h, int(p.flip))

    def _error(self, clip: int) -> FrameError:
        code, frame = (int(x) for x in self._status[clip])
        return corrupt_frame(self.dataset, self.split, self.planner.meta["key"][clip], clip, frame,
                             _REASONS.get(code, f"error {code}"))

    def _replace(self, clip: int, dest) -> list:
        """Fill ``dest`` (V, T, 3, H, W) with the next good clip after the bad ``clip`` (host decode, the torch
        backend's executor); returns its view plans."""
        import torch  # noqa: PLC0415

        from pipelines.decode import frames as decode  # noqa: PLC0415

        def host(cand):
            plans = self.planner.plans(cand, self.epoch)
            wanted = needed_frames(plans)
            dec = {}
            for j, b in zip(wanted, self.shards.frames(cand, wanted)):
                try:
                    dec[j] = decode.decode_jpeg(b)
                except ValueError as e:
                    raise self.frame_error(plans[0].key, cand, j, e) from None
                if dec[j].shape[:2] != tuple(plans[0].src_size):
                    raise self.frame_error(plans[0].key, cand, j, "decoded size differs from the shard's")
            return plans, dec

        self._bad.add(clip)
        (plans, dec), _ = replace_bad(host, clip, n=self.planner.n, on_bad="replace", where=self.where,
                                      bad=self._bad)
        for v, p in enumerate(plans):
            arr = np.stack([dec[j] for j in p.frames])
            dest[v].copy_(torch.from_numpy(decode.run_plan_pil_arrays(arr, p)))
        return plans

    def __iter__(self):
        import torch  # noqa: PLC0415

        self.close()
        pending = self.pending()
        self.served = []
        if not pending:
            return
        batches = [ids for _, ids in pending]
        t0 = time.perf_counter()
        self._epoch_batches = batches
        self._fill(batches)
        self.stage_s["read"] += time.perf_counter() - t0
        threads = torch.get_num_threads()
        try:
            self._it = iter(self._loader)
        finally:
            torch.set_num_threads(threads)
        it = self._it
        try:
            for i, expect in pending:
                t0 = time.perf_counter()
                try:
                    index, frames = next(it)  # outputs in the beton's field order
                except StopIteration:
                    raise RuntimeError("ffcv backend: FFCV ended before the epoch did") from None
                t1 = time.perf_counter()
                self.stage_s["decode"] += t1 - t0
                got = index.view(-1).tolist()
                if got != [int(c) for c in expect]:
                    raise RuntimeError(f"ffcv backend: batch order broken (batch {i}: rows {got[:4]}..., "
                                       f"expected {list(expect[:4])}...)")
                clips = frames.clone()  # FFCV reuses its buffers batches_ahead + 2 batches later
                videos = []
                for b, c in enumerate(got):
                    if self._status[c, 0] != 0:
                        on_bad_clip(self._error(c), self.on_bad)
                        self._replaced += 1
                        videos.append(self._replace(c, clips[b]))
                    else:
                        videos.append(self._view_plans[c])
                labels = torch.tensor([ps[0].label for ps in videos], dtype=torch.int64)
                if not self.view_axis:
                    clips = clips[:, 0]
                t2 = time.perf_counter()
                self.stage_s["augment"] += t2 - t1
                if clips.device != self.device:
                    clips = clips.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                self.stage_s["to_device"] += time.perf_counter() - t2
                if self.record:
                    self.served.append((i, videos))
                self.batches_seen += 1
                yield clips, labels
        finally:
            if self._it is it:
                self.close()


def build_ffcv_loader(spec) -> FfcvLoader:
    """The ``ffcv`` backend (contract: :mod:`pipelines.loader`).

    Options (``spec.options``, a :class:`pipelines.backends.options.FfcvOptions`): ``beton`` (default
    ``<data>/ffcv/<split>.beton``, written by ``tools/convert_dataset.py to-ffcv``), ``batches_ahead`` (FFCV
    prefetch depth), ``os_cache`` (FFCV's page-cache reader; False: process cache), ``record`` (keep the plans
    served, for tests), ``verify`` (re-hash the shards first). ``spec.workers`` is the number of numba threads of
    the decoder (FFCV's ``num_workers``).
    """
    import_ffcv()  # the install hint, before any file is opened
    o = spec.options
    beton, batches_ahead, os_cache, record, verify = o.beton, o.batches_ahead, o.os_cache, o.record, o.verify
    from pipelines.loader import open_split  # noqa: PLC0415
    from pipelines.shards.cache import is_remote  # noqa: PLC0415

    if is_remote(spec.data) and beton is None:
        raise ValueError(f"{spec.data}: the ffcv backend reads a local .beton: convert it with `tools/convert_dataset.py "
                         "to-ffcv` from a local copy of the shards and pass beton=PATH, or use --backend torch")

    return FfcvLoader(spec, open_split(spec, verify=verify), beton or default_path(spec.data, spec.split),
                      workers=max(1, spec.workers), batches_ahead=batches_ahead, os_cache=os_cache, record=record)

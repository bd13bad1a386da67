"""Backend ``torch``: DataLoader workers read shard bytes (memory-mapped) and decode only the sampled frames.

Each DataLoader item is one whole batch (``batch_size=None`` with a batch-index sampler): the worker plans its
clips, takes zero-copy views of the sampled JPEGs from the memory-mapped shard, decodes them with
libjpeg-turbo (simplejpeg), executes the plans (:func:`pipelines.decode.run_plan_torch`, or the PIL reference
with ``resample="pil"``) straight into the batch tensor and returns uint8. The main process pins (CUDA),
copies non-blocking and normalises on the GPU; for a CPU device the workers normalise (in parallel, instead of
the single main process), and the time counts as ``augment``. The DataLoader hands batches to workers round-robin and
yields them in order, so the sequence of batches does not depend on ``workers``; its workers persist across
epochs (the item key is ``(epoch, batch)``), so ``set_epoch`` costs no re-fork.

Options: ``resample`` (``"torch"`` default, within 2 grey levels of the reference; ``"pil"`` bit-identical to the
``folder`` backend; ``"fused"`` one resize from the source window, the fastest, pixels differ more -- see
:func:`pipelines.decode.run_plan_torch`),
``dct_scale`` (False; decode at 1/2..1/8 in the DCT domain when the pre-resize allows, changes pixels),
``decode_device`` (None; ``"cuda"`` makes workers send the JPEG bytes and the main process decodes them with
``torchvision.io.decode_jpeg(device="cuda")`` in one batched call and resamples on the GPU; ``"cpu"`` runs the
same path on the CPU, for tests; ``on_bad="replace"`` is not available on this path),
``prefetch_factor`` (2).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from pipelines import decode
from pipelines.errors import DataError, FrameError
from pipelines.loader import Planner, normalize_
from pipelines.reader import ShardDataset

log = logging.getLogger(__name__)

STAGES = ("read", "decode", "augment", "to_device")
RESAMPLE = ("torch", "pil", "fused")
MAX_REPLACE_TRIES = 16


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
    ``(clips uint8 (B, V, T, 3, H, W), labels int64 (B,), info float64 [replaced, read_s, decode_s, augment_s])``.
    """

    def __init__(self, planner: Planner, batches: list, epoch: int, *, on_bad: str, dataset: str, split: str):
        self.planner, self.batches, self.epoch = planner, batches, int(epoch)
        self.on_bad, self.dataset, self.split = on_bad, dataset, split
        self.normalize = None  # (mean, std): normalise in the worker (CPU delivery, and the folder original)

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
        p = self.planner
        out = torch.empty((len(ids), p.views, p.num_segments, 3, p.size, p.size), dtype=torch.uint8)
        labels = np.empty(len(ids), dtype=np.int64)
        info = np.zeros(4, dtype=np.float64)
        for k, clip in enumerate(ids):
            labels[k] = self.load_with_replacement(int(clip), out[k], info)
        if self.normalize is not None:
            t0 = time.perf_counter()
            out = normalize_(out, *self.normalize)
            info[3] += time.perf_counter() - t0
        return out, torch.from_numpy(labels), info

    def load_with_replacement(self, clip: int, dest, info) -> int:
        n = self.planner.n
        for attempt in range(MAX_REPLACE_TRIES):
            cand = (clip + attempt) % n
            try:
                label = self.load_clip(cand, dest, info)
            except FrameError as e:
                if self.on_bad != "replace":
                    raise
                log.warning("%s; trying the next clip (on_bad='replace')", e)
                continue
            if attempt:
                info[0] += 1  # one replaced clip, however many candidates were bad
            return label
        raise FrameError(f"{self.dataset} {self.split}: {MAX_REPLACE_TRIES} consecutive clips from row {clip} "
                         "are bad; giving up (run tools/convert_dataset.py verify)")

    def frame_error(self, plan_key: str, clip: int, frame: int, err) -> FrameError:
        return FrameError(f"{self.dataset} {self.split}: clip {plan_key!r} (row {clip}) frame {frame}: "
                          f"corrupt JPEG ({err})")

    def load_clip(self, clip: int, dest, info) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class ShardSource(BatchSource):
    """Reads the sampled frames of each clip from the memory-mapped shards and decodes them."""

    def __init__(self, shards: ShardDataset, planner: Planner, batches: list, epoch: int, *, on_bad: str,
                 resample: str = "torch", dct_scale: bool = False):
        super().__init__(planner, batches, epoch, on_bad=on_bad, dataset=shards.dataset, split=shards.split)
        self.shards, self.resample, self.dct_scale = shards, resample, bool(dct_scale)

    def load_clip(self, clip: int, dest, info) -> int:
        import torch

        t0 = time.perf_counter()
        plans = self.planner.plans(clip, self.epoch)
        wanted = sorted({j for p in plans for j in p.frames})
        bufs = self.shards.frames(clip, wanted)
        t1 = time.perf_counter()
        min_size = decode.dct_min_size(plans[0]) if self.dct_scale else None
        dec = {}
        for j, buf in zip(wanted, bufs):
            try:
                dec[j] = decode.decode_jpeg(buf, min_size=min_size)
            except ValueError as e:
                raise self.frame_error(plans[0].key, clip, j, e) from None
        shape = dec[wanted[0]].shape
        for j in wanted:
            if dec[j].shape != shape:
                raise self.frame_error(plans[0].key, clip, j, f"size {dec[j].shape[:2]} differs from {shape[:2]}")
        if min_size is None and shape[:2] != tuple(plans[0].src_size):
            raise self.frame_error(plans[0].key, clip, wanted[0],
                                   f"decoded size {shape[:2]} differs from the shard's {plans[0].src_size}")
        t2 = time.perf_counter()
        for v, plan in enumerate(plans):
            arr = np.stack([dec[j] for j in plan.frames])
            if self.resample == "pil":
                dest[v].copy_(torch.from_numpy(decode.run_plan_pil_arrays(arr, plan)))
            else:
                decode.run_plan_torch(arr, plan, out=dest[v], fused=self.resample == "fused")
        t3 = time.perf_counter()
        info[1:] += (t1 - t0, t2 - t1, t3 - t2)
        return plans[0].label


class BytesSource(BatchSource):
    """For ``decode_device="cuda"``: workers only gather the sampled JPEG bytes; decoding happens on the GPU."""

    def __init__(self, shards: ShardDataset, planner: Planner, batches: list, epoch: int, *, on_bad: str):
        super().__init__(planner, batches, epoch, on_bad=on_bad, dataset=shards.dataset, split=shards.split)
        self.shards = shards

    def make_batch(self, b: int):
        import torch

        ids = self.batches[b]
        t0 = time.perf_counter()
        items, chunks = [], []
        for clip in ids:
            plans = self.planner.plans(int(clip), self.epoch)
            wanted = sorted({j for p in plans for j in p.frames})
            items.append((int(clip), plans, wanted))
            chunks.extend(np.array(x) for x in self.shards.frames(int(clip), wanted))
        sizes = np.array([len(c) for c in chunks], dtype=np.int64)
        data = torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, np.uint8))
        info = np.array([0.0, time.perf_counter() - t0, 0.0, 0.0])
        return ("bytes", items, data, torch.from_numpy(sizes)), info


class TorchLoader:
    """Iterable over the batches of one (rank, world) and epoch; see :mod:`pipelines.loader` for the output."""

    def __init__(self, planner: Planner, make_source, *, workers: int, device, normalize: bool, epoch: int,
                 prefetch_factor: int = 2, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 normalize_in_workers: bool = False, gpu_decode=None):
        self.planner, self.make_source = planner, make_source
        self.workers, self.device, self.normalize = int(workers), device, bool(normalize)
        self.epoch, self.prefetch_factor = int(epoch), int(prefetch_factor)
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize_in_workers = normalize_in_workers
        self.gpu_decode = gpu_decode
        self.replaced = 0
        self.stage_s = dict.fromkeys(STAGES, 0.0)
        self.batches_seen = 0
        self._source = None
        self._dl = None
        self._sampler = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.planner)

    def _keys(self):
        return [(self.epoch, b) for b in range(len(self.planner.batches(self.epoch)))]

    def _items(self, source):
        if self.workers == 0:
            for key in self._keys():
                yield source[key]
            return
        import torch

        if self._dl is None:  # one DataLoader, persistent workers: no re-fork per epoch
            self._sampler = _EpochKeys()
            self._dl = torch.utils.data.DataLoader(
                source, batch_size=None, shuffle=False, sampler=self._sampler, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", prefetch_factor=self.prefetch_factor, persistent_workers=True)
        self._sampler.keys = self._keys()
        yield from self._dl

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is dropped)."""
        self._dl = None

    def __iter__(self):
        if self._source is None:
            self._source = self.make_source(self.planner.batches(self.epoch), self.epoch)
            if self.normalize and (self.normalize_in_workers or
                                   (self.device.type == "cpu" and self.gpu_decode is None)):
                # CPU delivery: the workers are the device's cores too, and they normalise in parallel
                self._source.normalize = (self.mean, self.std)
        return self._iterate(self._source)

    def _iterate(self, source):
        import torch

        test = self.planner.mode == "test"
        for item in self._items(source):
            if isinstance(item, Failure):
                item.raise_()
            if self.gpu_decode is not None:
                payload, info = item
                t0 = time.perf_counter()
                clips, labels = self.gpu_decode(payload, self.device)
            else:
                clips, labels, info = item
                t0 = time.perf_counter()
                clips = clips.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.normalize and clips.dtype == torch.uint8:
                clips = normalize_(clips, self.mean, self.std)
            if not test:
                clips = clips.squeeze(1)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            info = np.asarray(info, dtype=np.float64)
            self.replaced += int(info[0])
            for name, v in zip(("read", "decode", "augment"), info[1:]):
                self.stage_s[name] += float(v)
            self.stage_s["to_device"] += time.perf_counter() - t0
            self.batches_seen += 1
            yield clips, labels


class _EpochKeys:
    """Sampler of the persistent DataLoader: the (epoch, batch) keys the loader sets before each pass (it holds
    no reference to the loader, so dropping the loader shuts its workers down at once, without a GC cycle)."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def _gpu_decoder(planner: Planner, shards: ShardDataset):
    """Main-process half of ``decode_device="cuda"``: batched nvJPEG decode + plan execution on the GPU."""

    def run(payload, device):
        import warnings

        import torch

        with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated (still supported)
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg

        _, items, data, sizes = payload
        offs = np.concatenate([[0], np.cumsum(sizes.numpy())])
        datas = [data[int(offs[i]):int(offs[i + 1])] for i in range(len(sizes))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                imgs = decode_jpeg(datas, device=device) if datas else []
        except RuntimeError as e:
            raise FrameError(f"{shards.dataset} {shards.split}: a JPEG in clips "
                             f"{[planner.meta['key'][c] for c, _, _ in items]} failed to decode on {device} ({e})")
        p = planner
        out = torch.empty((len(items), p.views, p.num_segments, 3, p.size, p.size), dtype=torch.uint8, device=device)
        labels = torch.empty(len(items), dtype=torch.int64)
        pos = 0
        for k, (clip, plans, wanted) in enumerate(items):
            dec = {j: imgs[pos + u] for u, j in enumerate(wanted)}
            pos += len(wanted)
            for v, plan in enumerate(plans):
                frames = torch.stack([dec[j] for j in plan.frames]).permute(0, 2, 3, 1)
                decode.run_plan_torch(frames, plan, out=out[k, v])
            labels[k] = plans[0].label
        return out, labels

    return run


def build_torch_loader(*, data, split, mode, batch_size, num_segments, size, rank, world, workers, seed, epoch,
                       device, normalize, flip, test_clips, test_crops, test_sampling, drop_last, on_bad, raw=None,
                       resample: str = "torch", dct_scale: bool = False, decode_device=None,
                       prefetch_factor: int = 2, verify: bool = False) -> TorchLoader:
    """The ``torch`` backend (plug-in contract in :mod:`pipelines.loader`). ``raw`` is ignored."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
    shards = ShardDataset(data, split, verify=verify)
    planner = Planner(shards.metadata(), dataset=shards.dataset, classes=shards.classes, mode=mode,
                      batch_size=batch_size, num_segments=num_segments, size=size, rank=rank, world=world, seed=seed,
                      flip=flip, test_clips=test_clips, test_crops=test_crops, test_sampling=test_sampling,
                      drop_last=drop_last)
    preset = planner.preset
    if decode_device is not None:
        import torch

        if torch.device(decode_device).type != device.type:
            raise ValueError(f"decode_device={decode_device!r} must be the delivery device ({device})")

        def make(batches, ep):
            return BytesSource(shards, planner, batches, ep, on_bad=on_bad)

        gpu = _gpu_decoder(planner, shards)
    else:
        def make(batches, ep):
            return ShardSource(shards, planner, batches, ep, on_bad=on_bad, resample=resample, dct_scale=dct_scale)

        gpu = None
    return TorchLoader(planner, make, workers=workers, device=device, normalize=normalize, epoch=epoch,
                       prefetch_factor=prefetch_factor, mean=preset.mean, std=preset.std, gpu_decode=gpu)

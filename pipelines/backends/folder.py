"""Backend ``folder``: the original ACTION-Net data path, kept as the baseline and the correctness reference.

Workers open the raw JPEG files of the sampled frames one by one with PIL (``Image.open(path).convert("RGB")``)
and apply the original transforms on PIL images (:func:`pipelines.decode.frames.run_plan_pil`: ``GroupScale`` /
squash, crop, ``GroupMultiScaleCrop``'s resize, flip); batches are uint8 like every backend's (the original's
``ToTorchFormatTensor`` + ``GroupNormalize`` is :func:`pipelines.plan.presets.normalize`, applied by the consumer).

Sampling and geometry are *not* re-implemented: the clip order, keys, labels, frame counts and sizes come from
the shard manifest/metadata of the same split (``data``), and the plans from :class:`pipelines.plan.planner.Planner`,
so for one seed ``folder`` and ``torch`` compute the same clips. Frame files are found with the dataset's own
annotation reader (:mod:`pipelines.ingest.datasets`) and the converter's folder scan (:func:`pipelines.ingest.convert.
scan_folder` / ``resolve_clip``): key -> the same frame list conversion stored.
"""
from __future__ import annotations

import logging
import os
import time


from pipelines.backends.torch.loader import BatchSource, TorchLoader
from pipelines.errors import AnnotationError, FrameError
from pipelines.plan.planner import Planner
from pipelines.plan.clip import needed_frames

log = logging.getLogger(__name__)


def clip_files(dataset: str, raw: str, split: str, classes: list[str], options: dict) -> dict:
    """``{key: ClipRef}`` of ``split`` from the dataset's annotation files under ``raw`` (no folder is listed)."""
    from pipelines.ingest import datasets

    spec = datasets.get(dataset)
    opts = {k: v for k, v in (options or {}).items() if k in spec.options}
    problems = datasets.Problems(skip_bad=True, raw=raw)
    refs = spec.read(raw, split, problems, classes=classes, **opts)
    return {r.key: r for r in refs}


class FolderSource(BatchSource):
    """Reads and transforms each clip's sampled frames from the raw tree with PIL."""

    def __init__(self, raw: str, refs: dict, planner: Planner, batches: list, epoch: int, *, on_bad: str,
                 dataset: str, split: str):
        super().__init__(planner, batches, epoch, on_bad=on_bad, dataset=dataset, split=split)
        self.raw, self.refs = raw, refs
        self._files: dict = {}

    def files(self, key: str) -> list[str]:
        from pipelines.ingest.scan import resolve_clip, scan_folder

        f = self._files.get(key)
        if f is None:
            ref = self.refs.get(key)
            if ref is None:
                raise AnnotationError(f"{self.raw}: clip {key!r} of the shards is not in the {self.split} annotation "
                                      "(is --raw the tree these shards were converted from?)")
            clip = resolve_clip(ref, scan_folder(self.raw, ref.folder), self.raw)
            f = self._files[key] = [os.path.join(self.raw, *p.split("/")) for p in clip.files]
        return f

    def load_clip(self, clip: int, dest, stats) -> int:
        import torch
        from PIL import Image

        from pipelines.decode import frames as decode

        t0 = time.perf_counter()
        plans = self.planner.plans(clip, self.epoch)
        key = plans[0].key
        files = self.files(key)
        if len(files) != int(self.planner.meta["num_frames"][clip]):
            raise FrameError(f"{self.dataset} {self.split}: clip {key!r} has {len(files)} frame files under "
                             f"{self.raw} but {int(self.planner.meta['num_frames'][clip])} in the shards")
        wanted = needed_frames(plans)
        imgs = {}
        t_read = 0.0
        for j in wanted:
            try:
                r0 = time.perf_counter()
                with open(files[j], "rb") as fh:
                    img = Image.open(fh)
                    t_read += time.perf_counter() - r0
                    img = img.convert("RGB")
            except OSError as e:
                raise self.frame_error(key, clip, j, f"{files[j]}: {e}") from None
            imgs[j] = img
        t1 = time.perf_counter()
        for v, plan in enumerate(plans):
            dest[v].copy_(torch.from_numpy(decode.run_plan_pil([imgs[j] for j in plan.frames], plan)))
        t2 = time.perf_counter()
        stats[1:] += (t_read, t1 - t0 - t_read, t2 - t1)
        return plans[0].label


def build_folder_loader(spec) -> TorchLoader:
    """The ``folder`` backend (contract: :mod:`pipelines.loader`); needs ``spec.raw`` and ``spec.data``. Always
    DataLoader worker processes, as the original; ``spec.options`` is a
    :class:`pipelines.backends.options.FolderOptions` (``prefetch_factor``)."""
    from pipelines.loader import open_split

    raw = spec.raw
    if raw is None:
        raise ValueError("the folder backend reads the raw frames: pass raw= (--raw) as well as the shard folder")
    if not os.path.isdir(raw):
        raise AnnotationError(f"{raw}: raw dataset root is not a directory")
    split = open_split(spec)
    shards, planner = split
    refs = clip_files(shards.dataset, raw, spec.split, shards.classes, shards.manifest.get("options", {}))

    def make(batches, ep):
        return FolderSource(raw, refs, planner, batches, ep, on_bad=spec.on_bad, dataset=shards.dataset,
                            split=spec.split)

    return TorchLoader(spec, split, make, prefetch_factor=spec.options.prefetch_factor, executor="processes")

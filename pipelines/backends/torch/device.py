"""The torch backend's ``decode_device`` path: DataLoader workers only gather (and check) the sampled JPEG bytes;
the main process decodes them with ``torchvision.io.decode_jpeg`` on the delivery device (nvJPEG on CUDA, in one
batched call) and executes the plans there. ``on_bad`` applies as on the worker-decode path
(:mod:`pipelines.backends.torch.loader`)."""
from __future__ import annotations

import time

import numpy as np

from pipelines.backends.base import corrupt_frame, replace_bad
from pipelines.backends.torch.loader import FUSED, BatchSource
from pipelines.decode import frames as decode
from pipelines.plan.clip import needed_frames
from pipelines.plan.planner import Planner


class BytesSource(BatchSource):
    """For ``decode_device``: workers only gather the sampled JPEG bytes; decoding happens on the device. Every
    frame is checked by the one JPEG rule here (:func:`pipelines.decode.jpeg.problem`), so a bad clip is raised or
    replaced per ``on_bad`` as on the worker-decode path."""

    def __init__(self, shards, planner: Planner, batches: list, epoch: int, *, on_bad: str):
        super().__init__(planner, batches, epoch, on_bad=on_bad, dataset=shards.dataset, split=shards.split)
        self.shards = shards

    def load_bytes(self, clip: int):
        """``(clip, plans, wanted, frame bytes)`` of row ``clip`` (FrameError naming a frame that breaks the rule)."""
        from pipelines.decode.jpeg import problem

        plans = self.planner.plans(clip, self.epoch)
        wanted = needed_frames(plans)
        bufs = [np.array(x) for x in self.shards.frames(clip, wanted)]
        for j, b in zip(wanted, bufs):
            if (why := problem(b, plans[0].src_size)) is not None:
                raise self.frame_error(plans[0].key, clip, j, why)
        return clip, plans, wanted, bufs

    def make_batch(self, b: int):
        import torch

        t0 = time.perf_counter()
        items, chunks, replaced = [], [], 0
        for clip in self.batches[b]:
            (c, plans, wanted, bufs), r = replace_bad(self.load_bytes, int(clip), n=self.planner.n,
                                                      on_bad=self.on_bad, where=f"{self.dataset} {self.split}")
            replaced += r
            items.append((c, plans, wanted))
            chunks.extend(bufs)
        sizes = np.array([len(c) for c in chunks], dtype=np.int64)
        data = torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, np.uint8))
        stats = np.array([float(replaced), time.perf_counter() - t0, 0.0, 0.0])
        return ("bytes", self.epoch, items, data, torch.from_numpy(sizes)), stats


def _device_decode(datas: list, device) -> list:
    """torchvision's batched JPEG decode of ``datas`` (uint8 tensors) on ``device`` (nvJPEG on CUDA)."""
    import warnings

    with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated (still supported)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg

        return decode_jpeg(datas, device=device) if datas else []


def gpu_decoder(planner: Planner, shards, resample: str = "auto", channels_last: bool = True,
                 on_bad: str = "raise"):
    """Main-process half of ``decode_device``: batched decode + plan execution on the device. ``run(payload,
    device)`` returns ``(clips, labels, replaced)``. When the device decoder rejects the batch, its clips are
    decoded one frame at a time to name the bad frame, and that clip is raised or replaced per ``on_bad``
    (:func:`~pipelines.backends.base.replace_bad`; a replacement's bytes are read here and checked by the rule)."""
    import torch

    from pipelines.decode.jpeg import problem

    def decode_clip(plans, clip: int, device, bufs=None) -> dict:
        wanted = needed_frames(plans)
        if bufs is None:  # a replacement clip: its bytes did not come through a worker's check
            bufs = [torch.from_numpy(np.array(b)) for b in shards.frames(clip, wanted)]
            for j, b in zip(wanted, bufs):
                if (why := problem(b.numpy(), plans[0].src_size)) is not None:
                    raise corrupt_frame(shards.dataset, shards.split, plans[0].key, clip, j, why)
        dec = {}
        for j, b in zip(wanted, bufs):
            try:
                dec[j] = _device_decode([b], device)[0]
            except RuntimeError as e:
                why = " ".join(str(e).split())  # one line
                raise corrupt_frame(shards.dataset, shards.split, plans[0].key, clip, j, why) from None
        return dec

    def decoded_clips(epoch: int, items, datas, device):
        """``(plans, {frame: (3, H, W)})`` per item, and the number of clips replaced."""
        try:
            imgs = _device_decode(datas, device)
        except RuntimeError:
            imgs = None
        out, pos, replaced = [], 0, 0
        for clip, plans, wanted in items:
            mine = datas[pos:pos + len(wanted)]
            if imgs is not None:
                out.append((plans, dict(zip(wanted, imgs[pos:pos + len(wanted)]))))
            else:
                def load(c, clip=clip, plans=plans, mine=mine):
                    ps = plans if c == clip else planner.plans(c, epoch)
                    return ps, decode_clip(ps, c, device, mine if c == clip else None)

                got, r = replace_bad(load, clip, n=planner.n, on_bad=on_bad, where=f"{shards.dataset} {shards.split}")
                out.append(got)
                replaced += r
            pos += len(wanted)
        return out, replaced

    def run(payload, device):
        _, epoch, items, data, sizes = payload
        offs = np.concatenate([[0], np.cumsum(sizes.numpy())])
        datas = [data[int(offs[i]):int(offs[i + 1])] for i in range(len(sizes))]
        clips, replaced = decoded_clips(epoch, items, datas, device)
        p = planner
        if channels_last:  # the worker path's layout: same bytes in the same memory order, no copy for the model
            out = torch.empty((len(items), p.views, p.num_segments, p.size, p.size, 3), dtype=torch.uint8,
                              device=device).permute(0, 1, 2, 5, 3, 4)
        else:
            out = torch.empty((len(items), p.views, p.num_segments, 3, p.size, p.size), dtype=torch.uint8,
                              device=device)
        labels = torch.empty(len(items), dtype=torch.int64)
        for k, (plans, dec) in enumerate(clips):
            for v, plan in enumerate(plans):
                frames = torch.stack([dec[j] for j in plan.frames]).permute(0, 2, 3, 1)
                decode.run_plan_torch(frames, plan, out=out[k, v], fused=FUSED[resample])
            labels[k] = plans[0].label
        return out, labels, replaced

    return run

"""One training epoch, exact evaluation, and the synthetic-data ceiling.

No host sync per step: the loss is accumulated on the device and reduced over the ranks every
``cfg.log_interval`` steps (and at epoch end / step checkpoints) -- the only place a step waits for the device.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from trainer.config import Config
from trainer.dist import DistInfo, all_gather_objects, all_reduce_sum
from trainer.errors import TrainingError
from trainer.model import autocast, base_lr


@dataclass
class Parts:
    """What a train step touches: ``fwd`` (DDP-wrapped and/or compiled), ``core`` (the bare module)."""

    fwd: Any
    core: Any
    optimizer: Any
    scaler: Any
    to_input: Callable


@dataclass
class Progress:
    """Where the run is: the epoch, the next step in it, the global step; steps/s of each log interval."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float = -1.0
    rates: list = field(default_factory=list)


class LoaderCpu:
    """The loader's CPU cost over a stretch of training (issue 21), read once per log interval (no host sync):
    ``cpu_cores`` = cores kept busy by the whole process and its worker processes (:mod:`common.cpu`);
    ``loader_cores`` = the same minus the training thread's own CPU (what the loader's threads and worker
    processes used: on a GPU host the loader; on a CPU-only run torch's intra-op threads are in it too);
    ``loader_cores_per_1k_clips_s`` = loader CPU-seconds per clip x 1000 (cores needed to feed 1,000 clips/s)."""

    def __init__(self):
        from common.cpu import CpuMeter

        self.meter, self.main = CpuMeter(), time.thread_time()

    def lap(self, clips: int, wall: float) -> dict:
        d = self.meter.lap()
        main = time.thread_time()
        off = max(0.0, d["cpu_s"] - (main - self.main))
        self.main = main
        wall = max(wall, 1e-9)
        return {"cpu_cores": d["cpu_s"] / wall, "loader_cores": off / wall,
                "loader_cores_per_1k_clips_s": 1000.0 * off / max(clips, 1)}


def _gpu_mem_gb(info: DistInfo) -> float:
    if info.device.type != "cuda":
        return 0.0
    import torch
    return torch.cuda.max_memory_allocated(info.device) / 2**30


def _train_step(p: Parts, clips, labels, cfg: Config, info: DistInfo):
    """One optimiser step on a batch; its loss, detached, still on the device (no host sync)."""
    import torch
    import torch.nn.functional as F

    labels = labels.to(info.device, non_blocking=True)
    with autocast(cfg, info):
        loss = F.cross_entropy(p.fwd(p.to_input(clips)), labels)
    p.optimizer.zero_grad(set_to_none=True)
    p.scaler.scale(loss).backward()
    if cfg.clip_grad > 0:
        p.scaler.unscale_(p.optimizer)
        torch.nn.utils.clip_grad_norm_(p.core.parameters(), cfg.clip_grad)
    p.scaler.step(p.optimizer)
    p.scaler.update()
    return loss.detach().float()


def train_one_epoch(p: Parts, loader, cfg: Config, info: DistInfo, prog: Progress, *, steps: int, metrics,
                    save: Callable[[], None], recorder=None, where: str = "", stop=None) -> dict | None:
    """Steps ``prog.step_in_epoch..steps-1`` of ``prog.epoch`` (``loader`` already starts at that batch);
    ``save()`` writes a step checkpoint every ``cfg.ckpt_every`` global steps. The epoch's summary record, or
    None when ``stop`` (a :class:`trainer.preempt.StopRequest`) was requested on any rank: the ranks agree on
    it at a log boundary, where the flag rides in the loss all-reduce (one process stops after the current
    step), and return there without saving (the caller writes the stop checkpoint)."""
    import torch

    first, epoch = prog.step_in_epoch, prog.epoch
    bar = None
    if info.main:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   dynamic_ncols=True, leave=False, disable=None)
    rng = torch.get_rng_state()
    cpu_int, cpu_epoch = LoaderCpu(), LoaderCpu()
    it = iter(loader)
    torch.set_rng_state(rng)  # dropout's stream must not depend on whatever a backend's iterator draws from it
    loss_acc = torch.zeros((), device=info.device)
    n_acc, wait, epoch_loss, epoch_n, epoch_wait, epoch_busy, clips_epoch = 0, 0.0, 0.0, 0, 0.0, 0.0, 0
    t_int = t_epoch = time.perf_counter()
    for step_in_epoch in range(first, steps):
        t0 = time.perf_counter()
        clips, labels = next(it)
        wait += time.perf_counter() - t0
        loss_acc += _train_step(p, clips, labels, cfg, info)
        n_acc += 1
        prog.global_step += 1
        prog.step_in_epoch = step_in_epoch + 1
        if recorder is not None:
            recorder.record(epoch, step_in_epoch, prog.global_step)
        if bar is not None:
            bar.update(1)
        end = step_in_epoch + 1 == steps
        ckpt = cfg.ckpt_every and prog.global_step % cfg.ckpt_every == 0
        asked = stop is not None and stop.requested
        if n_acc == cfg.log_interval or end or ckpt or (asked and info.world == 1):
            stats = torch.cat([loss_acc.reshape(1), torch.tensor([float(n_acc), float(asked)], device=info.device)])
            all_reduce_sum(stats, info.world)  # the one host sync per interval (it also carries the stop flag)
            mean_loss, stopping = torch.stack([stats[0] / stats[1], stats[2]]).tolist()
            if not math.isfinite(mean_loss):
                raise TrainingError(f"loss is {mean_loss} at epoch {epoch + 1} step {step_in_epoch + 1}: the run "
                                    f"diverged; the last good checkpoint is {where} — lower --lr or "
                                    f"check the data, then --resume")
            dt = time.perf_counter() - t_int
            rate = n_acc * cfg.batch_size / dt
            prog.rates.append(rate)
            epoch_loss += mean_loss * n_acc
            epoch_n += n_acc
            epoch_wait += wait
            epoch_busy += dt
            clips_epoch += n_acc * cfg.batch_size
            metrics.write({"kind": "train", "epoch": epoch, "step": prog.global_step, "loss": mean_loss,
                           "lr": base_lr(p.optimizer), "clips_per_s": rate, "data_wait": wait / dt,
                           "gpu_mem_gb": _gpu_mem_gb(info), **cpu_int.lap(n_acc * cfg.batch_size, dt)},
                          prog.global_step)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.3f}", clips_s=f"{rate:.1f}", wait=f"{wait / dt:.0%}")
            if recorder is not None:
                recorder.flush()
            loss_acc.zero_()
            n_acc, wait, t_int = 0, 0.0, time.perf_counter()
            if stopping and not end:  # a stop on the last step lets the epoch finish: its checkpoint is the stop's
                if bar is not None:
                    bar.close()
                return None
            if ckpt and not end:
                save()
    if bar is not None:
        bar.close()
    epoch_time = time.perf_counter() - t_epoch
    return {"kind": "epoch", "epoch": epoch, "step": prog.global_step, "train_loss": epoch_loss / max(epoch_n, 1),
            "clips_per_s": clips_epoch / epoch_time, "data_wait": epoch_wait / max(epoch_busy, 1e-9),
            "lr": base_lr(p.optimizer), **cpu_epoch.lap(clips_epoch, epoch_time)}


def _scores(model, x):
    """Scores of a batch: logits of (B, T, 3, H, W) clips; for test batches (B, V, T, 3, H, W) the softmax per
    view averaged over the V views (the original multi-clip x multi-crop test). ``(scores, multi_view)``."""
    if x.dim() == 6:
        b, v = x.shape[:2]
        return model(x.flatten(0, 1)).float().softmax(-1).view(b, v, -1).mean(1), True
    return model(x).float(), False


def evaluate(model, loader, cfg: Config, info: DistInfo, to_input: Callable, *, per_clip: bool = False) -> dict:
    """Top-1/top-5/loss over the loader's labelled clips, exact under DDP (sum-reduced counts, every clip once);
    clips without a label (-1: the hidden Jester/SSv2 test labels) are scored but counted in no metric.

    ``clips`` is every clip scored, ``labelled`` those with a label; with none, top-1/top-5/loss are NaN. With
    ``per_clip`` the result also holds ``rows`` (split row of every clip, ascending, all ranks gathered) and
    ``scores`` ((clips, classes) float CPU tensor in that order; see :func:`_scores`), on every rank."""
    import torch
    import torch.nn.functional as F

    _same_buffers(model, info)
    model.eval()
    counts = torch.zeros(5, dtype=torch.float64, device=info.device)  # top1, top5, loss_sum, labelled, clips
    num_classes = model.new_fc.out_features
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=info.device)  # top-1 hits, clips per class
    rows, kept, multi = [], [], False
    first = getattr(loader, "start", 0)
    with torch.no_grad(), autocast(cfg, info):
        for b, (clips, labels) in enumerate(loader, start=first):
            labels = labels.to(info.device, non_blocking=True)
            scores, multi = _scores(model, to_input(clips))
            known = labels >= 0
            target = labels.clamp_min(0)  # a -1 target would be out of range: its loss is masked out below
            logp = scores.clamp_min(1e-12).log() if multi else scores.log_softmax(-1)
            loss = (F.nll_loss(logp, target, reduction="none") * known).sum()
            top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
            hit = top5 == labels[:, None]  # -1 never hits
            # no host syncs per batch: no host->device tensors, no boolean indexing (its size needs the host)
            counts += torch.stack([hit[:, 0].sum().double(), hit.any(1).sum().double(), loss.double(),
                                   known.sum().double(),
                                   torch.full((), float(len(labels)), device=info.device, dtype=torch.float64)])
            per_class[0].index_add_(0, target, hit[:, 0].double() * known)
            per_class[1].index_add_(0, target, known.double())
            if per_clip:
                rows.append(torch.as_tensor(loader.batch_clips(b), dtype=torch.long)[:len(labels)])
                kept.append(scores.detach())
    all_reduce_sum(counts, info.world)
    all_reduce_sum(per_class, info.world)
    top1, top5, loss_sum, labelled, n = counts.tolist()
    model.train()
    nan = float("nan")
    res = {"top1": 100.0 * top1 / labelled if labelled else nan, "top5": 100.0 * top5 / labelled if labelled else nan,
           "loss": loss_sum / labelled if labelled else nan, "clips": int(n), "labelled": int(labelled)}
    hits, seen = per_class.tolist()
    res["per_class"] = {str(c): 100.0 * h / k for c, (h, k) in enumerate(zip(hits, seen, strict=True)) if k > 0}
    if per_clip:
        res["rows"], res["scores"] = _gather_rows(rows, kept, num_classes, info)
        res["score"] = "softmax mean over views" if multi else "logits"
    return res


def _same_buffers(model, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them from rank 0 *before*
    each forward, and each rank's last train step then updates its own copy from its own batch: without this,
    every rank would evaluate its share of the clips with other statistics than the checkpoint (rank 0's)."""
    if info.world > 1:
        import torch.distributed as dist
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def _gather_rows(rows: list, kept: list, num_classes: int, info: DistInfo):
    """Every rank's (rows, scores) joined on every rank, sorted by row: one order whatever the world size."""
    import torch

    mine = (torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long),
            torch.cat(kept).cpu() if kept else torch.zeros(0, num_classes))
    parts = all_gather_objects(mine, info.world)
    r = torch.cat([p[0] for p in parts])
    s = torch.cat([p[1] for p in parts])
    order = torch.argsort(r, stable=True)
    if len(r) and bool((r[order][1:] == r[order][:-1]).any()):
        raise TrainingError("evaluation scored a clip twice: the loader's val/test partition overlaps over ranks")
    return r[order], s[order]


def _sync(info: DistInfo) -> None:
    if info.device.type == "cuda":
        import torch
        torch.cuda.synchronize(info.device)


def measure_synthetic_rate(p: Parts, data, cfg: Config, info: DistInfo, steps: int) -> float:
    """Steps/s of the same (DDP) model on ``data`` (synthetic on-device batches, ``steps + 1`` of them; the
    first warms up); model, optimiser and RNG are restored afterwards."""
    import torch
    import torch.nn.functional as F

    if steps <= 0:
        return float("nan")
    snap_model = copy.deepcopy(p.fwd.state_dict())
    snap_opt = copy.deepcopy(p.optimizer.state_dict())
    rng = torch.get_rng_state()
    t0 = None
    for i, (clips, labels) in enumerate(data):
        if i == 1:
            _sync(info)
            t0 = time.perf_counter()
        with autocast(cfg, info):
            loss = F.cross_entropy(p.fwd(p.to_input(clips)), labels)
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        p.optimizer.step()
    _sync(info)
    rate = steps / (time.perf_counter() - t0)
    p.fwd.load_state_dict(snap_model)
    p.optimizer.load_state_dict(snap_opt)
    torch.set_rng_state(rng)
    return rate

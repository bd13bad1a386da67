"""Model, mixed precision, memory format, optimiser and learning-rate schedule of a run."""
from __future__ import annotations

import contextlib

from trainer.config import Config
from trainer.dist import DistInfo


def build_model_for(cfg: Config, num_classes: int, info: DistInfo):
    """ACTION-ResNet on ``info.device``; identical initial weights on every rank (seeded here)."""
    import torch
    from action import build_model, load_checkpoint

    torch.manual_seed(cfg.seed)
    model = build_model(arch=cfg.arch, num_classes=num_classes, num_segments=cfg.num_segments,
                        temporal=cfg.temporal, shift_div=cfg.shift_div, dropout=cfg.dropout,
                        pretrained=cfg.pretrained or None, action_impl=cfg.action_impl,
                        zero_init=cfg.zero_init_residual)
    if cfg.init_from:
        load_checkpoint(model, cfg.init_from)
    model.to(info.device)
    if channels_last(cfg, info):
        model.to(memory_format=torch.channels_last)
    return model


def channels_last(cfg: Config, info: DistInfo) -> bool:
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and info.device.type == "cuda")


def amp_dtype(cfg: Config, info: DistInfo):
    import torch
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if info.device.type == "cuda" else "none"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def autocast(cfg: Config, info: DistInfo):
    import torch
    dtype = amp_dtype(cfg, info)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=info.device.type, dtype=dtype)


def build_optimizer(cfg: Config, model):
    """SGD over the official parameter groups (each group's lr = base lr x its ``lr_mult``)."""
    import torch
    from action.optim import param_groups

    groups = param_groups(model, cfg.lr, cfg.weight_decay, fc_lr5=cfg.fc_lr5)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: Config, optimizer):
    """lr x0.1 at each epoch of ``cfg.lr_steps``; stepped once per epoch (its state goes in the checkpoint)."""
    import torch
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_steps), gamma=0.1)


def base_lr(optimizer) -> float:
    """The base lr the next step uses (group lr x its warmup factor / its lr_mult), for the logs."""
    g = optimizer.param_groups[0]
    return g["lr"] * _warmup_factor(g) / g["lr_mult"]


def _warmup_factor(group: dict) -> float:
    total = group.get("warmup_steps", 0)
    return min(1.0, (group.get("warmup_step", 0) + 1) / total) if total else 1.0


def install_warmup(optimizer, cfg: Config, steps_per_epoch: int) -> int:
    """Linear lr warmup over ``cfg.warmup_epochs`` epochs, per optimizer step: step k (from 0) runs at
    (k + 1) / W of the scheduled lr, W = round(warmup_epochs x steps_per_epoch). The schedule (MultiStepLR, per
    epoch) keeps owning ``group["lr"]``: a pre-step hook scales it for the step and a post-step hook restores it.
    The step count lives in the param groups (``warmup_step``), so it is saved with the optimizer state and a
    resumed run (or the synthetic-rate measurement, which restores the optimizer) continues exactly. Returns W."""
    total = round(cfg.warmup_epochs * steps_per_epoch)
    if total <= 0:
        return 0
    for g in optimizer.param_groups:
        g.setdefault("warmup_step", 0)
        g["warmup_steps"] = total
    scheduled: list[float] = []

    def pre(opt, args, kwargs):
        scheduled[:] = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = g["lr"] * _warmup_factor(g)

    def post(opt, args, kwargs):
        for g, lr in zip(opt.param_groups, scheduled):
            g["lr"] = lr
            g["warmup_step"] += 1

    optimizer.register_step_pre_hook(pre)
    optimizer.register_step_post_hook(post)
    return total


def resume_schedule(cfg: Config, optimizer, scheduler, state: dict | None, epoch: int) -> None:
    """Restore the schedule of a resumed run at ``epoch``; a checkpoint from before MultiStepLR (no scheduler
    state) gets the lr the old per-epoch rule gave that epoch: base lr x 0.1 per step passed x lr_mult."""
    if state is not None:
        scheduler.load_state_dict(state)
        return
    k = sum(epoch >= s for s in cfg.lr_steps)
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * 0.1 ** k * g["lr_mult"]
    scheduler.last_epoch = epoch
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

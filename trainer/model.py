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
                        pretrained=cfg.pretrained or None)
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
    """The schedule's current base lr (group lr / its lr_mult), for the logs."""
    g = optimizer.param_groups[0]
    return g["lr"] / g["lr_mult"]


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

"""Linear lr warmup (trainer.model.install_warmup, --warmup-epochs): the lr each step runs at, the MultiStepLR
schedule untouched after it, and a resumed optimizer continuing exactly."""
from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.config import make_config
from trainer.model import base_lr, build_optimizer, build_scheduler, install_warmup


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.new_fc = nn.Linear(3, 2)


def _setup(warmup_epochs: float):
    torch.manual_seed(0)
    cfg = make_config({"dataset": "jester", "data": "x", "warmup_epochs": warmup_epochs, "lr_steps": "2"})
    model = _Tiny()
    opt = build_optimizer(cfg, model)
    return cfg, model, opt, build_scheduler(cfg, opt)


def _step(model, opt, seen):
    x = torch.arange(6.0).view(2, 3)
    model.new_fc(x).square().sum().backward()
    seen.append(opt.param_groups[0]["lr"])
    opt.step()
    opt.zero_grad()


def test_warmup_lr_per_step_then_schedule():
    cfg, model, opt, sched = _setup(0.75)
    assert install_warmup(opt, cfg, steps_per_epoch=4) == 3
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: None)  # hooks registered later see the warmed lr
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"] / o.param_groups[0]["lr_mult"]))
    logged = []
    for _epoch in range(3):
        for _ in range(4):
            logged.append(base_lr(opt))
            _step(model, opt, [])
        sched.step()
    lr = cfg.lr
    want = [lr / 3, 2 * lr / 3] + [lr] * 6 + [lr * 0.1] * 4
    assert [round(v, 10) for v in seen] == [round(v, 10) for v in want]
    assert [round(v, 10) for v in logged] == [round(v, 10) for v in want]
    assert [g["lr"] for g in opt.param_groups][0] == lr * 0.1  # the schedule's own lr, restored after each step


def test_warmup_off_is_the_official_schedule():
    cfg, model, opt, sched = _setup(0.0)
    assert install_warmup(opt, cfg, steps_per_epoch=4) == 0
    seen = []
    for _ in range(3):
        _step(model, opt, seen)
    assert seen == [cfg.lr] * 3 and "warmup_step" not in opt.param_groups[0]


def test_resumed_optimizer_continues_the_warmup_exactly():
    cfg, model, opt, sched = _setup(2.0)  # 8 warmup steps
    install_warmup(opt, cfg, steps_per_epoch=4)
    for _ in range(3):
        _step(model, opt, [])
    state = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})  # as a checkpoint holds them
    seen_a = []
    for _ in range(3):
        _step(model, opt, seen_a)
    _, model_b, opt_b, _ = _setup(2.0)
    model_b.load_state_dict(state["model"])
    opt_b.load_state_dict(state["opt"])
    install_warmup(opt_b, cfg, steps_per_epoch=4)
    seen_b = []
    for _ in range(3):
        _step(model_b, opt_b, seen_b)
    assert seen_a == seen_b and opt_b.param_groups[0]["warmup_step"] == 6
    for a, b in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(a, b)

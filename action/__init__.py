"""ACTION-ResNet models: temporal modules, TSN wrapper, checkpoints, optimiser groups.

Public API (imports are lazy: importing :mod:`action` loads nothing heavy and has no side effects)::

    from action import build_model, load_checkpoint
    model = build_model(arch="resnet50", num_classes=83, num_segments=8, temporal="action",
                        shift_div=8, dropout=0.5, pretrained=None)   # (B, T, 3, H, W) -> (B, classes)
    load_checkpoint(model, "ego_8f.pth.tar")   # {'state_dict': …} (module. prefixes ok) or {'model': …}

    from action.optim import param_groups      # official SGD groups (lr_mult / decay_mult)

``action`` never imports ``pipelines``.
"""
from __future__ import annotations

__all__ = ["build_model", "load_checkpoint", "param_groups", "CheckpointError", "ModelError"]


def __getattr__(name: str):
    if name == "build_model":
        from action.models import build_model

        return build_model
    if name == "load_checkpoint":
        from action.checkpoint import load_checkpoint

        return load_checkpoint
    if name == "param_groups":
        from action.optim import param_groups

        return param_groups
    if name in ("CheckpointError", "ModelError"):
        from action import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'action' has no attribute {name!r}")

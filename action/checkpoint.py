"""Checkpoint and pretrained-weights I/O — always ``torch.load(map_location="cpu", weights_only=True)``.

Accepted layouts for :func:`load_checkpoint`:

* the official release: ``{'state_dict': {...}}``, keys optionally prefixed ``module.`` (``nn.DataParallel``);
* this project's trainer checkpoints: ``{'model': {...}, 'optimizer': ..., ...}`` (prefixes stripped too);
* a bare state dict.

Loading is strict: a missing, unexpected or mis-shaped key raises :class:`~action.errors.CheckpointError`
that names the file and lists the keys. A file that ``weights_only`` refuses (an arbitrary pickle) is never
unpickled: it becomes a ``CheckpointError`` saying so.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from action.errors import CheckpointError

_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 20


def _read(path: str | Path) -> object:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised as one clear error
        msg = str(exc)
        with open(p, "rb") as f:
            head = f.read(2)
        is_pickle = head[:1] == b"\x80" or head == b"PK"  # raw pickle (protocol ≥ 2) or torch.save zip
        if is_pickle and ("Weights only load failed" in msg or "Unsupported global" in msg):
            detail = next((ln.strip() for ln in msg.splitlines() if "Unsupported" in ln), "")
            raise CheckpointError(
                f"{p}: refusing to unpickle: torch.load(weights_only=True) rejected the file's pickle payload"
                f"{f' ({detail})' if detail else ''}; only tensors and plain containers are accepted — re-save "
                f"it as a plain state dict from a trusted environment") from None
        first = msg.strip().splitlines()[0] if msg.strip() else ""
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(exc).__name__}: {first[:200]})") from None


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", … (+{more} more)" if more > 0 else "")


def extract_state_dict(obj: object, path: str | Path = "<memory>") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object (see the module docstring), prefixes stripped."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        kind = f"dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: no state dict found (expected {{'state_dict': …}}, {{'model': …}} or a "
                              f"plain state dict; got {kind})")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        key = str(k)
        changed = True
        while changed:
            changed = False
            for pre in _PREFIXES:
                if key.startswith(pre):
                    key = key[len(pre):]
                    changed = True
        if key in out:
            raise CheckpointError(f"{path}: key {key!r} appears twice once prefixes are stripped")
        out[key] = v
    return out


def _fit_problems(own: dict, sd: dict) -> list[str]:
    """What keeps state dict ``sd`` from loading into a module whose state dict is ``own`` (empty: it fits)."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mis_shaped = [f"{k} (file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    return [f"{what} keys: {_listing(keys)}" for what, keys in
            (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)) if keys]


def _check_and_load(module: nn.Module, sd: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    problems = _fit_problems(module.state_dict(), sd)
    if problems:
        raise CheckpointError(f"{path}: does not fit the {what}; " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint into ``model`` (strict; see the module docstring). Returns the state dict used.

    An official ``dropout=0`` checkpoint (classifier stored as ``base_model.fc.*``) is mapped onto
    ``new_fc.*``."""
    sd = extract_state_dict(_read(path), path)
    own = model.state_dict()
    if "new_fc.weight" in own and "new_fc.weight" not in sd and "base_model.fc.weight" in sd:
        sd["new_fc.weight"] = sd.pop("base_model.fc.weight")
        if "base_model.fc.bias" in sd:
            sd["new_fc.bias"] = sd.pop("base_model.fc.bias")
    _check_and_load(model, sd, path, "model")
    return sd


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a torchvision ImageNet state dict file into a *plain* torchvision backbone (before its classifier
    is replaced and before temporal modules are inserted). The file's classifier (``fc.*`` /
    ``classifier.*``) is ignored; everything else must match."""
    sd = extract_state_dict(_read(path), path)
    head = ("fc.", "classifier.")
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    own = {k: v for k, v in backbone.state_dict().items() if not k.startswith(head)}
    problems = _fit_problems(own, sd)
    if problems:
        raise CheckpointError(f"{path}: not ImageNet weights for this backbone; " + "; ".join(problems))
    backbone.load_state_dict(sd, strict=False)

"""Loader backends, looked up by name and imported only when asked for (no backend is imported here).

Each entry names ``module:function``; the function follows the plug-in contract documented in
:mod:`pipelines.loader` (``build(spec)`` returns a :class:`pipelines.backends.base.Loader`; the backend's
typed options, :mod:`pipelines.backends.options`, are ``spec.options``).
"""
from __future__ import annotations

import importlib

BACKENDS = {
    "torch": "pipelines.backends.torch.loader:build_torch_loader",
    "folder": "pipelines.backends.folder:build_folder_loader",
    "dali": "pipelines.backends.dali.loader:build_dali_loader",
    "ffcv": "pipelines.backends.ffcv.loader:build_ffcv_loader",
}


def get(name: str):
    """The builder function of backend ``name`` (imports its module now)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown loader backend {name!r}; expected one of {', '.join(BACKENDS)}") from None
    module, func = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ValueError(f"loader backend {name!r} is not available in this build ({module} is missing)") from None
        raise ImportError(f"loader backend {name!r} needs the package {e.name!r} "
                          f"(pip install 'action-net-fast[{name}]')") from e
    return getattr(mod, func)

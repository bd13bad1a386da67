"""Data pipelines: shard format, TSN sampling, crop/flip geometry and loader backends."""
from __future__ import annotations

__all__ = ["build_loader"]


def __getattr__(name: str):
    # Lazy: ``import pipelines`` reads no file, imports no torch and initialises no CUDA.
    if name == "build_loader":
        from pipelines.loader import build_loader

        return build_loader
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")

"""The one shard-reader interface: what a backend reads a split through, whichever reader serves it.

:class:`~pipelines.shards.reader.ShardDataset` (local shards, or the node cache's copy) and
:class:`~pipelines.shards.direct.RemoteShardDataset` (range reads, optionally over a size-limited cache) implement
it; :func:`pipelines.shards.cache.open_shards` picks one. Readers are picklable into worker processes.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ShardReader(Protocol):
    """The clips of one split of a converted dataset, by row index (``0 <= i < len(reader)``)."""

    dataset: str  # the manifest's dataset name
    split: str  # ``train``, ``val`` or ``test``
    classes: list[str]  # class names, by label
    manifest: dict  # the parsed ``manifest.json``

    def __len__(self) -> int:
        """Clips in the split."""

    def locate(self, i: int) -> tuple[int, int, int]:
        """``(shard, record batch, row)`` of clip ``i``."""

    def metadata(self) -> dict:
        """Column arrays over the split: ``key`` (list of str), ``label``, ``num_frames``, ``height``, ``width``
        (int64 numpy)."""

    def frames(self, i: int, indices) -> list[np.ndarray]:
        """JPEG bytes (uint8 arrays) of frames ``indices`` of clip ``i``, in the order asked (IndexError for a
        frame the clip does not have)."""

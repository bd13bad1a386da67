"""Arrow shards -> FFCV ``.beton`` (one file per split), for ``backend="ffcv"``.

Built from the converted shards, so the raw tree is read only once (by ``tools/convert_dataset.py``). One
``.beton`` row per clip, in the split's row order (row ``i`` of the beton is clip ``i`` of the split, so the
shared :class:`~pipelines.loader.Planner` plans apply unchanged)::

    index       IntField    clip row in the split (checked by the loader: batch order)
    label       IntField    class (-1 when unknown), before any flip
    num_frames  IntField
    height      IntField    stored frame size (all frames of a clip have it)
    width       IntField
    frames      BytesField  header + the clip's JPEG bytes, untouched, concatenated:
                            uint32 n | uint32 offsets[n + 1] (relative to the data start) | data

The default location is ``<shards>/ffcv/<split>.beton`` (:func:`default_path`); the loader looks there.
``ffcv`` is imported lazily (its first import takes ~5 s). The file is written under a temporary name and
renamed into place; its bytes depend on FFCV's worker scheduling, the *content* does not.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from common import files
from pipelines.shards import storage

log = logging.getLogger(__name__)

FIELDS = ("index", "label", "num_frames", "height", "width", "frames")
INSTALL_HINT = ("FFCV is not installed: run `make setup-ffcv` (apt-get install libopencv-dev libturbojpeg0-dev, "
                "then pip install '.[ffcv]' with setuptools<80)")


class FfcvUnavailable(ImportError):
    """ffcv (or its native library) cannot be imported; the message says how to install it."""


def import_ffcv():
    """Import ffcv (slow the first time: numba) or raise :class:`FfcvUnavailable` with the install hint."""
    try:
        import ffcv  # noqa: F401, PLC0415
        import ffcv.libffcv  # noqa: F401, PLC0415  (the native part: opencv + turbojpeg)
    except ImportError as e:
        raise FfcvUnavailable(f"{INSTALL_HINT} [{type(e).__name__}: {e}]") from e
    return ffcv


def default_path(shards: str, split: str) -> str:
    """Where the ``.beton`` of ``split`` lives by default: ``<shards>/ffcv/<split>.beton``."""
    return os.path.join(os.fspath(shards), "ffcv", f"{split}.beton")


def pack_frames(frames) -> np.ndarray:
    """The ``frames`` cell of one row: ``uint32 n | uint32 offsets[n+1] | concatenated JPEG bytes``."""
    n = len(frames)
    sizes = np.fromiter((len(f) for f in frames), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] >= 2 ** 32:
        raise ValueError("clip larger than 4 GiB")
    head = 4 * (n + 2)
    out = np.empty(head + int(offsets[-1]), np.uint8)
    out[:head].view("<u4")[:] = np.concatenate([[n], offsets]).astype("<u4")
    for f, a, z in zip(frames, offsets[:-1], offsets[1:]):
        out[head + a:head + z] = np.frombuffer(f, np.uint8)
    return out


def unpack_frames(cell) -> list[bytes]:
    """Inverse of :func:`pack_frames` (tests, debugging)."""
    a = np.asarray(cell, np.uint8)
    n = int(a[:4].view("<u4")[0])
    offsets = a[4:4 * (n + 2)].view("<u4").astype(np.int64)
    head = 4 * (n + 2)
    return [a[head + offsets[j]:head + offsets[j + 1]].tobytes() for j in range(n)]


class _Rows:
    """Indexable view of a split for ``DatasetWriter.from_indexed_dataset`` (forked workers re-open the maps)."""

    def __init__(self, shards: str, split: str):
        from pipelines.shards.reader import ShardDataset  # noqa: PLC0415

        self.ds = ShardDataset(shards, split)
        self.meta = self.ds.metadata()

    def __len__(self) -> int:
        return len(self.meta["key"])

    def __getitem__(self, i: int):
        m = self.meta
        n = int(m["num_frames"][i])
        return (int(i), int(m["label"][i]), n, int(m["height"][i]), int(m["width"][i]),
                pack_frames(self.ds.frames(int(i), range(n))))

    def max_row_bytes(self) -> int:
        """An upper bound of the largest ``frames`` cell (sets FFCV's page size)."""
        best = 0
        for i in range(len(self)):
            n = int(self.meta["num_frames"][i])
            best = max(best, 4 * (n + 2) + sum(len(f) for f in self.ds.frames(i, range(n))))
        return best


def to_beton(shards: str, split: str, out: str | None = None, *, workers: int = 1, progress: bool = False) -> str:
    """Write the ``.beton`` of ``split`` of the shard folder ``shards``; returns its path.

    ``out`` defaults to :func:`default_path`. Needs ffcv (:class:`FfcvUnavailable` otherwise).
    """
    import_ffcv()
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from ffcv.fields import BytesField, IntField  # noqa: PLC0415
    from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter  # noqa: PLC0415

    out = out or default_path(shards, split)
    rows = _Rows(shards, split)
    if len(rows) == 0:
        raise ValueError(f"{shards}: split {split!r} has no clips")
    page = 4 * MIN_PAGE_SIZE
    need = rows.max_row_bytes() + 4096
    while page < need:
        page *= 2
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    fields = {"index": IntField(), "label": IntField(), "num_frames": IntField(), "height": IntField(),
              "width": IntField(), "frames": BytesField()}
    with files.atomic_path(out) as tmp:
        writer = DatasetWriter(str(tmp), fields, page_size=page, num_workers=max(1, int(workers)))
        sink = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with sink:
            writer.from_indexed_dataset(rows, chunksize=16)
    log.info("wrote %s (%d clips)", out, len(rows))
    return out


def ensure_beton(shards: str, split: str, *, workers: int = 1) -> str:
    """:func:`default_path`, written first when it is missing or older than the manifest."""
    path = default_path(shards, split)
    manifest = os.path.join(os.fspath(shards), "manifest.json")
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(manifest):
        to_beton(shards, split, path, workers=workers)
    return path

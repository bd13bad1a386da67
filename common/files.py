"""Local files written atomically, hashed and plotted: the one way every layer (ingest, shards, trainer, tools,
benches) writes a file.

Every file is written under a temporary name next to its final one (:func:`temp_name`, the one convention, also
used by :func:`pipelines.shards.storage.atomic_target` on object stores) and renamed into place, so a half-written
file is never visible under the final name (:func:`atomic_path`, :func:`atomic_write`, :func:`atomic_write_json`,
:func:`save_figure`). :func:`sha256` is the one content hash of a local file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

_BLOCK = 8 << 20
_TEMP = re.compile(r"\.(?P<final>.+)\.tmp-(?P<pid>\d+)")


def temp_name(path):
    """The temporary name of ``path`` while it is written: ``.NAME.tmp-PID`` in the same folder (hidden, and
    unique per process). ``path`` is a local path (a :class:`~pathlib.Path` comes back) or a ``/``-separated
    filesystem path string (a string comes back)."""
    if isinstance(path, Path):
        return path.with_name(f".{path.name}.tmp-{os.getpid()}")
    head, sep, name = os.fspath(path).rpartition("/")
    return f"{head}{sep}.{name}.tmp-{os.getpid()}"


def temp_writer(name: str) -> int | None:
    """The writer's pid when ``name`` (a file name) is a :func:`temp_name` name, else None."""
    m = _TEMP.fullmatch(name)
    return int(m.group("pid")) if m else None


def remove_stale_temps(folder, *, recursive: bool = True) -> list[Path]:
    """Remove the :func:`temp_name` files under ``folder`` whose writer is not this process (call it only where
    no other process can be writing, e.g. under a run's lock); the removed paths. Other names are never touched."""
    removed = []
    for root, _dirs, names in os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]:
        for name in names:
            pid = temp_writer(name)
            if pid is not None and pid != os.getpid():
                p = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = False) -> Iterator[Path]:
    """A local temporary path next to ``path``; renamed onto ``path`` when the block ends without an error,
    removed otherwise. The temp name is created exclusively and never followed if it is a symlink, so a stale
    or planted link is replaced, not written through. ``fsync`` flushes the file before the rename."""
    path = Path(path)
    tmp = temp_name(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        os.close(fd)
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path, data: bytes | str, *, fsync: bool = False) -> None:
    """Write ``data`` (text is UTF-8) to the local ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


def atomic_write_json(path, obj, *, indent: int | None = 2) -> None:
    atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def save_figure(fig, path, *, tight: bool = True, **kw) -> None:
    """Lay out a matplotlib figure (``tight_layout`` unless ``tight=False``), save it to the local ``path``
    atomically (the format follows the suffix) and close it."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kw)
    plt.close(fig)


def sha256(path) -> tuple[str, int]:
    """``(hex sha256, size in bytes)`` of a local file, read through one reused buffer (no fresh pages per block)."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_BLOCK)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(mv[:n])
            size += n
    return h.hexdigest(), size

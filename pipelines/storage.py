"""Where bytes live: filesystems (local or any ``pyarrow.fs`` URI), atomic writes, sha256, the manifest.

The one place for these rules (docs/DESIGN.md "Invariants"):

* :func:`resolve` -- a path or URI as ``(pyarrow FileSystem, root)``: local paths (relative is fine), ``file://``,
  ``s3://``, ``gs://``, ``hdfs://`` -- whatever ``pyarrow.fs.FileSystem.from_uri`` understands.
* Every file is written under a temporary name next to its final one and renamed into place
  (:func:`write_bytes_atomic` on any filesystem; :func:`atomic_write` / :func:`atomic_path` locally, with fsync
  and without following a planted symlink), so a half-written file is never visible under the final name.
* :func:`sha256_file` -- the one content hash (manifests, caches, staged wheels).
* :func:`read_manifest` -- the one manifest reader: ``(fs, root, manifest)`` for a dataset path or URI.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines import format as fmt
from pipelines.errors import ShardError

_BLOCK = 8 << 20


# ----------------------------------------------------------------------------------------------- filesystems
def is_uri(path) -> bool:
    return "://" in os.fspath(path)


def resolve(path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, root)`` for a local path or a pyarrow filesystem URI (ShardError when it cannot be opened)."""
    path = os.fspath(path)
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise ShardError(f"{path}: cannot open this filesystem URI ({e})") from None
    return pafs.LocalFileSystem(), os.path.abspath(path).replace(os.sep, "/")


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if root else rel


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


# ----------------------------------------------------------------------------------------------- atomic writes
def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on ``fs`` via a temporary name + move (the temp file is removed on failure)."""
    tmp = tmp_name(path)
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):  # a disk-full write leaves no temp file behind
            fs.delete_file(tmp)
        raise


def write_json_atomic(fs: pafs.FileSystem, path: str, obj) -> None:
    write_bytes_atomic(fs, path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = False) -> Iterator[Path]:
    """A local temporary path next to ``path``; renamed onto ``path`` when the block ends without an error,
    removed otherwise. The temp name is created exclusively and never followed if it is a symlink, so a stale
    or planted link is replaced, not written through. ``fsync`` flushes the file before the rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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


# ----------------------------------------------------------------------------------------------- reading
def read_json(fs: pafs.FileSystem, path: str):
    """Parsed JSON at ``path`` or None if it is missing/unreadable/not JSON."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError, pa.ArrowException):
        return None


def sha256_file(fs: pafs.FileSystem | None, path: str) -> tuple[str, int]:
    """``(hex sha256, size in bytes)`` of a file (``fs=None`` or a LocalFileSystem: read locally through one
    reused buffer, so hashing a shard allocates no fresh pages per block)."""
    h = hashlib.sha256()
    size = 0
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        buf = bytearray(_BLOCK)
        mv = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(mv[:n])
                size += n
        return h.hexdigest(), size
    with fs.open_input_stream(path) as f:
        while b := f.read(_BLOCK):
            h.update(b)
            size += len(b)
    return h.hexdigest(), size


def read_manifest(path) -> tuple[pafs.FileSystem, str, dict]:
    """``(fs, root, manifest)`` of a converted dataset at a local path or URI; ShardError (naming the manifest and
    the fix) if it is missing, unreadable or invalid."""
    fs, root = resolve(path)
    where = join(root, fmt.MANIFEST_NAME)
    shown = where if not is_uri(path) else f"{os.fspath(path).rstrip('/')}/{fmt.MANIFEST_NAME}"
    try:
        with fs.open_input_stream(where) as f:
            text = f.read()
    except FileNotFoundError:
        raise ShardError(f"{shown}: manifest not found (run tools/convert_dataset.py first, or check --data)") from None
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"{shown}: cannot read the manifest ({e})") from None
    return fs, root, fmt.parse_manifest(text, where=shown)

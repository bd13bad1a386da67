"""The shard-format contract (docs/DESIGN.md "Shard format"): readable with pyarrow alone.

Layout::

    OUT/manifest.json
    OUT/<split>/shard-00000.arrow      Arrow IPC *file* format, record batches of ``ROWS_PER_BATCH`` clips

Columns (``SCHEMA``): ``key`` string, ``label`` int32 (-1 when unknown), ``num_frames`` int32, ``frames``
list<binary> (the original JPEG bytes in temporal order), ``height``, ``width`` int32.

Manifest (``FORMAT_NAME`` / ``FORMAT_VERSION``)::

    {"format": "action-shards", "version": 1, "dataset": str, "classes": [str, ...], "seed": int,
     "splits": {"train": {"clips": int, "frames": int,
                          "shards": [{"path": "train/shard-00000.arrow", "clips", "bytes", "sha256"}]}, ...},
     "skipped": [{"path": str, "reason": str}]}

Extra keys are allowed (e.g. ``"options"``); the ones above are required and validated by
:func:`validate_manifest`. Shard paths are relative to OUT and may never escape it.
"""
from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import pyarrow as pa

from pipelines.errors import ShardError

FORMAT_NAME = "action-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROWS_PER_BATCH = 256
SPLITS = ("train", "val", "test")

SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("frames", pa.list_(pa.binary()), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
    ]
)


def shard_name(split: str, index: int) -> str:
    """Relative path of shard ``index`` of ``split`` (posix separators, relative to OUT)."""
    return f"{split}/shard-{index:05d}.arrow"


def safe_relpath(path: str, *, where: str = "manifest") -> str:
    """Return ``path`` normalised if it is a relative path that stays inside its root, else raise.

    Rejects absolute paths, drive letters, backslashes, empty names and any ``..`` component.
    """
    if not isinstance(path, str) or not path:
        raise ShardError(f"{where}: shard path {path!r} is not a non-empty string")
    if "\\" in path or path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise ShardError(f"{where}: shard path {path!r} must be relative to the dataset root")
    norm = posixpath.normpath(path)
    if norm.startswith("../") or norm == ".." or "/../" in f"/{norm}/" or norm == ".":
        raise ShardError(f"{where}: shard path {path!r} escapes the dataset root")
    return norm


def check_inside(root: str, path: str, *, where: str = "manifest") -> None:
    """Raise ShardError unless local ``path`` resolves (symlinks followed) inside ``root``.

    :func:`safe_relpath` rejects ``..`` and absolute names; this also rejects a shard (or its folder) that is a
    symlink pointing out of the dataset root."""
    top = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        raise ShardError(f"{where}: shard {path} resolves to {real}, outside the dataset root {top} "
                         "(symlink out of the tree)")


def _req(d: dict, key: str, typ, where: str):
    if key not in d:
        raise ShardError(f"{where}: missing key {key!r}")
    val = d[key]
    if typ is int and isinstance(val, bool) or not isinstance(val, typ):
        raise ShardError(f"{where}: key {key!r} must be {getattr(typ, '__name__', typ)}, got {type(val).__name__}")
    return val


def validate_manifest(m: Any, *, where: str = MANIFEST_NAME) -> dict:
    """Check the manifest's structure (not the shard files). Returns it unchanged or raises ShardError."""
    if not isinstance(m, dict):
        raise ShardError(f"{where}: expected a JSON object")
    if m.get("format") != FORMAT_NAME:
        raise ShardError(f"{where}: format is {m.get('format')!r}, expected {FORMAT_NAME!r} "
                         "(is this a directory written by tools/convert_dataset.py?)")
    if m.get("version") != FORMAT_VERSION:
        raise ShardError(f"{where}: version {m.get('version')!r} is not supported (this code reads {FORMAT_VERSION})")
    _req(m, "dataset", str, where)
    classes = _req(m, "classes", list, where)
    if not all(isinstance(c, str) for c in classes):
        raise ShardError(f"{where}: 'classes' must be a list of strings")
    _req(m, "seed", int, where)
    splits = _req(m, "splits", dict, where)
    for name, s in splits.items():
        w = f"{where}: split {name!r}"
        if not isinstance(s, dict):
            raise ShardError(f"{w}: expected an object")
        clips = _req(s, "clips", int, w)
        _req(s, "frames", int, w)
        shards = _req(s, "shards", list, w)
        total = 0
        for i, sh in enumerate(shards):
            ws = f"{w} shard {i}"
            if not isinstance(sh, dict):
                raise ShardError(f"{ws}: expected an object")
            safe_relpath(_req(sh, "path", str, ws), where=ws)
            total += _req(sh, "clips", int, ws)
            _req(sh, "bytes", int, ws)
            digest = _req(sh, "sha256", str, ws)
            if len(digest) != 64:
                raise ShardError(f"{ws}: sha256 must be 64 hex digits")
        if total != clips:
            raise ShardError(f"{w}: shards hold {total} clips but the split says {clips}")
    skipped = m.get("skipped", [])
    if not isinstance(skipped, list):
        raise ShardError(f"{where}: 'skipped' must be a list")
    return m


def parse_manifest(text: str | bytes, *, where: str = MANIFEST_NAME) -> dict:
    """Parse and validate manifest JSON text."""
    try:
        m = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ShardError(f"{where}: not valid JSON ({e}); re-run tools/convert_dataset.py") from None
    return validate_manifest(m, where=where)


def split_shards(m: dict, split: str, *, where: str = MANIFEST_NAME) -> list[dict]:
    """The shard entries of ``split`` in manifest ``m`` (ShardError naming ``where`` and the splits it has)."""
    splits = m["splits"]
    if split not in splits:
        raise ShardError(f"{where}: no split {split!r} (has {', '.join(sorted(splits)) or 'none'})")
    return splits[split]["shards"]

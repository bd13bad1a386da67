"""Shards on object storage: a node-local cache (default for remote data) or direct range reads.

* :func:`open_shards` -- the reader of a split at a local path or any ``pyarrow.fs`` URI: a local dataset is read
  in place; a remote one is copied into the node-local cache and read memory-mapped (:class:`ShardCache`,
  :class:`pipelines.shards.reader.ShardDataset`), or with ``cache_dir=None`` read by range requests
  (:class:`pipelines.shards.direct.RemoteShardDataset`); with ``max_gb`` the cache holds only the shards
  asked for by ``prefetch(clip_indices)`` (least-recently-used ones are evicted).
* the filesystem is :func:`pipelines.shards.storage.resolve`'s: bounded S3 timeouts and retries, and a clear
  error when no S3 credentials are configured at all (instead of a slow, silent instance-metadata lookup).
* :func:`node_lock` -- an ``fcntl.flock`` on the cache folder: one process per node downloads, the others wait.

Cache layout: ``<cache_dir>/<sha256 of the manifest bytes, 20 hex>/manifest.json`` plus the shards under their
manifest paths. A shard appears under its final name only after its sha256 matched the manifest, so a killed
download leaves finished shards in place (and a temporary file that the next run removes).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from common import files
from pipelines.shards import format as fmt
from pipelines.shards import storage
from pipelines.shards.api import ShardReader
from pipelines.errors import ShardError

log = logging.getLogger(__name__)

DEFAULT = "default"  # cache_dir: $XDG_CACHE_HOME/action-net (or ~/.cache/action-net)
_CHUNK = 8 << 20
_LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "action-net"


@contextlib.contextmanager
def node_lock(folder):
    """Hold an exclusive ``flock`` on ``folder/.lock`` (processes and threads alike wait for each other).
    Not re-entrant: code holding it must not take it again."""
    fd = os.open(os.path.join(folder, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is filling this cache; waiting for it", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------------------------- the cache
class _Mismatch(Exception):
    pass


class ShardCache:
    """A node-local copy of a remote dataset's shards, keyed by the manifest's sha256.

    Args:
        uri: the dataset root at any ``pyarrow.fs`` URI.
        cache_dir: the cache root (``None`` or ``"default"``: :func:`default_cache_dir`).
        max_gb: keep at most this many GB (1e9 bytes) of shards; least-recently-used ones not asked for are
            evicted (use :meth:`prefetch` per epoch). ``None``: unlimited.
        threads: shards downloaded in parallel.
        timeouts: see :func:`pipelines.shards.storage.resolve`.
    """

    def __init__(self, uri, cache_dir=None, *, max_gb: float | None = None, threads: int = 8,
                 timeouts: dict | None = None):
        self.uri, self.timeouts, self.threads = os.fspath(uri), timeouts, int(threads)
        self._fs, self.root, self.manifest, raw = storage.read_manifest_raw(self.uri, timeouts=timeouts)
        self.key = hashlib.sha256(raw).hexdigest()[:20]
        base = default_cache_dir() if cache_dir in (None, DEFAULT) else Path(cache_dir)
        self.dir = base / self.key
        self.max_bytes = None if max_gb is None else int(float(max_gb) * 1e9)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with node_lock(self.dir):
                if not (self.dir / fmt.MANIFEST_NAME).is_file():
                    files.atomic_write(self.dir / fmt.MANIFEST_NAME, raw, fsync=True)
                    files.atomic_write_json(self.dir / "source.json", {"uri": storage.shown(self.uri)})
        except OSError as e:
            raise ShardError(f"{self.dir}: cannot create the shard cache ({e}); check --cache-dir") from None

    def __getstate__(self):
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = storage.resolve(self.uri, timeouts=self.timeouts)[0]
        return self._fs

    def entries(self, split: str) -> list[dict]:
        return fmt.split_shards(self.manifest, split, where=storage.shown(self.uri, fmt.MANIFEST_NAME))

    def path(self, split: str, s: int) -> Path:
        rel = fmt.safe_relpath(self.entries(split)[s]["path"])
        return self.dir.joinpath(*rel.split("/"))

    def _present(self, split: str, s: int) -> bool:
        try:
            return self.path(split, s).stat().st_size == int(self.entries(split)[s]["bytes"])
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ public
    def fetch(self, splits=None) -> str:
        """Download every shard of ``splits`` (default: all) that is not cached yet; the cache folder."""
        splits = list(self.manifest["splits"]) if splits is None else [splits] if isinstance(splits, str) else splits
        for split in splits:
            self.ensure(split, range(len(self.entries(split))))
        return str(self.dir)

    def prefetch(self, split: str, clip_indices) -> list[int]:
        """Bring the shards holding ``clip_indices`` (rows of ``split``) into the cache, in order of first use,
        as many as ``max_gb`` holds (the others are fetched when read); returns the shards now cached."""
        entries = self.entries(split)
        starts = np.cumsum([0] + [int(e["clips"]) for e in entries])
        idx = np.asarray(clip_indices, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= starts[-1]):
            raise IndexError(f"clip indices must be in [0, {int(starts[-1])}) for split {split!r}")
        shards = list(dict.fromkeys(int(s) for s in np.searchsorted(starts, idx, side="right") - 1))
        if self.max_bytes is not None:
            keep, total = [], 0
            for s in shards:
                total += int(entries[s]["bytes"])
                if total > self.max_bytes:
                    log.warning("%s: these clips need %d shards (%.2f GB), more than max_gb=%.2f: caching the "
                                "first %d, the rest are fetched when read", storage.shown(self.uri), len(shards),
                                sum(int(entries[t]["bytes"]) for t in shards) / 1e9, self.max_bytes / 1e9, len(keep))
                    break
                keep.append(s)
            shards = keep
        self.ensure(split, shards)
        return shards

    def ensure(self, split: str, shards) -> list[str]:
        """Local paths of ``shards`` of ``split``, downloading the missing ones (one process per node; others wait)."""
        shards = [int(s) for s in shards]
        entries = self.entries(split)
        with node_lock(self.dir):
            self._remove_stale()
            missing = [s for s in shards if not self._present(split, s)]
            if self.max_bytes is not None:
                self._evict(split, shards, sum(int(entries[s]["bytes"]) for s in missing))
            if missing:
                self._download(split, missing)
            for s in shards:
                os.utime(self.path(split, s))  # the LRU clock
        return [str(self.path(split, s)) for s in shards]

    # ------------------------------------------------------------------ internals (under the node lock)
    def _remove_stale(self) -> None:
        """Temporary files left by a killed download (nobody else downloads while we hold the lock)."""
        for p in self.dir.rglob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def _evict(self, split: str, wanted: list[int], incoming: int) -> None:
        keep = {self.path(split, s) for s in wanted}
        files = sorted((p for p in self.dir.rglob("*.arrow") if p.is_file()), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in files)
        for p in files:
            if used + incoming <= self.max_bytes:
                break
            if p not in keep:
                used -= p.stat().st_size
                p.unlink()
                log.info("cache: evicted %s (least recently used)", p)
        if used + incoming > self.max_bytes:
            raise ShardError(f"{storage.shown(self.uri)}: {len(wanted)} shards of {split!r} need {(used + incoming) / 1e9:.2f} "
                             f"GB, more than the cache's max_gb={self.max_bytes / 1e9:.2f}; raise --cache-max-gb, "
                             "prefetch fewer clips, or read directly (--cache-dir none)")

    def _download(self, split: str, missing: list[int]) -> None:
        from tqdm import tqdm

        entries = self.entries(split)
        total = sum(int(entries[s]["bytes"]) for s in missing)
        log.info("%s: downloading %d shards of %r (%.1f MB) into %s", storage.shown(self.uri), len(missing), split,
                 total / 1e6, self.dir)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"cache {split}", disable=None) as bar, \
                ThreadPoolExecutor(min(self.threads, len(missing))) as pool:
            for _ in pool.map(lambda s: self._download_one(split, s, bar), missing):
                pass

    def _download_one(self, split: str, s: int, bar) -> None:
        e = self.entries(split)[s]
        rel = fmt.safe_relpath(e["path"])
        src, dst, where = storage.join(self.root, rel), self.path(split, s), storage.shown(self.uri, rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            try:
                with files.atomic_path(dst, fsync=True) as tmp:
                    with self.fs.open_input_stream(src) as r, open(tmp, "wb") as w:
                        while b := r.read(_CHUNK):
                            w.write(b)
                            bar.update(len(b))
                    digest, size = storage.sha256_file(None, str(tmp))
                    if digest != e["sha256"] or size != int(e["bytes"]):
                        raise _Mismatch(f"sha256 {digest[:16]}... ({size} bytes)")
                return
            except FileNotFoundError:
                raise ShardError(f"{where}: shard listed in the manifest is missing from the object store "
                                 "(re-run tools/convert_dataset.py)") from None
            except OSError as err:
                if err.errno in _LOCAL_ERRNOS:  # writing the cache, not reading the store
                    raise ShardError(f"{dst}: cannot write the shard cache ({err.strerror}); free space in "
                                     f"{self.dir.parent} or choose another cache dir (max_gb bounds its size)") from None
                raise ShardError(storage.explain(where, err, self.fs)) from None
            except pa.ArrowException as err:
                raise ShardError(storage.explain(where, err, self.fs)) from None
            except _Mismatch as got:
                if attempt == 1:
                    log.warning("%s: downloaded bytes have %s, the manifest says sha256 %s...; fetching once more",
                                where, got, e["sha256"][:16])
                    continue
                raise ShardError(f"{where}: downloaded twice, both times {got} instead of the manifest's sha256 "
                                 f"{e['sha256'][:16]}... ({e['bytes']} bytes): the remote shard is corrupt or was "
                                 f"replaced; run tools/convert_dataset.py verify {storage.shown(self.uri)}") from None


# ----------------------------------------------------------------------------------------------- entry point
def is_remote(data) -> bool:
    """True for a URI whose filesystem is not the local one (``file://`` is local)."""
    data = os.fspath(data)
    return storage.is_uri(data) and not data.lower().startswith("file://")


def open_shards(data, split: str, *, cache_dir=DEFAULT, max_gb: float | None = None, threads: int = 16,
                gap: int = 0, timeouts: dict | None = None, verify: bool = False) -> ShardReader:
    """The reader (:class:`~pipelines.shards.api.ShardReader`) of ``split`` of the dataset at ``data`` (a local path or any ``pyarrow.fs`` URI).

    Local data (``file://`` too): :class:`~pipelines.shards.reader.ShardDataset` in place. Remote data: with a
    ``cache_dir`` (default :func:`default_cache_dir`) and no ``max_gb``, the split's shards are fetched into the
    cache (one process per node; the others wait) and read memory-mapped by a ShardDataset; with ``max_gb``, a
    :class:`~pipelines.shards.direct.RemoteShardDataset` over the cache (call ``prefetch(clip_indices)`` per
    epoch); ``cache_dir=None``: a RemoteShardDataset reading frames by range requests (``threads`` in flight,
    ``gap``: see RemoteShardDataset)."""
    from pipelines.shards.reader import ShardDataset
    from pipelines.shards.direct import RemoteShardDataset

    if not is_remote(data):
        return ShardDataset(storage.resolve(data)[1], split, verify=verify)
    if cache_dir is None or str(cache_dir).lower() == "none":
        return RemoteShardDataset(data, split, threads=threads, gap=gap, timeouts=timeouts)
    cache = ShardCache(data, cache_dir, max_gb=max_gb, threads=min(threads, 8), timeouts=timeouts)
    if max_gb is None:
        return ShardDataset(cache.fetch([split]), split, verify=verify)
    return RemoteShardDataset(data, split, threads=threads, timeouts=timeouts, cache=cache)

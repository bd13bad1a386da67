"""Reading converted shards (the format: :mod:`pipelines.shards.format`, docs/DESIGN.md): memory-mapped Arrow IPC,
O(1) per clip, plus the whole-dataset check :func:`verify`.

:class:`ShardDataset` opens ``OUT/manifest.json``, checks each shard of the split cheaply (the file exists and
its size equals the manifest's ``bytes``; the Arrow schema and row count match), and maps clip ``i`` (the
row index in the split, counted over the shards in manifest order) to ``(shard, record batch, row)`` with two
binary searches over cumulative counts. :meth:`ShardDataset.frames` returns the requested frames as
zero-copy ``numpy.uint8`` views into the memory map: the other frames of the clip are never touched.
:meth:`ShardDataset.verify` re-hashes the files (sha256) against the manifest.

Memory maps and file handles are opened lazily per process (a dataset pickled into a DataLoader worker
re-opens its files there), so constructing one in the main process is cheap.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.shards import format as fmt
from pipelines.shards import storage
from pipelines.errors import ShardError
from pipelines.decode.jpeg import JpegChecker

log = logging.getLogger(__name__)


def locate(i: int, shard_starts: np.ndarray, batch_starts, split: str) -> tuple[int, int, int]:
    """``(shard, record batch, row)`` of row ``i`` of a split from the cumulative clip counts of its shards and
    ``batch_starts(shard)``, the cumulative row counts of that shard's record batches (two binary searches)."""
    n = int(shard_starts[-1])
    if not 0 <= i < n:
        raise IndexError(f"clip {i} out of range for split {split!r} with {n} clips")
    s = int(np.searchsorted(shard_starts, i, side="right")) - 1
    r = i - int(shard_starts[s])
    starts = batch_starts(s)
    b = int(np.searchsorted(starts, r, side="right")) - 1
    return s, b, r - int(starts[b])


class _Shard:
    """One memory-mapped shard: record batches and their row offsets."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.mm = pa.memory_map(path, "r")
            self.reader = pa.ipc.open_file(self.mm)
        except (OSError, pa.ArrowException) as e:
            raise ShardError(f"{path}: not a readable Arrow IPC file ({e}); re-run tools/convert_dataset.py") from None
        self.batches = [None] * self.reader.num_record_batches
        rows = [0]
        for b in range(self.reader.num_record_batches):
            rows.append(rows[-1] + self.batch(b).num_rows)
        self.starts = np.asarray(rows, dtype=np.int64)

    def batch(self, b: int) -> pa.RecordBatch:
        rb = self.batches[b]
        if rb is None:
            # a corrupt (bit-flipped) batch is a ShardError here, never a crash or garbage offsets later:
            # full validation checks every offset and the keys' UTF-8, not the frame bytes (sha256: verify)
            try:
                rb = self.reader.get_batch(b)
                rb.validate(full=True)
            except (OSError, pa.ArrowException) as e:
                raise ShardError(f"{self.path}: record batch {b} is corrupt ({e}); run tools/convert_dataset.py "
                                 "verify, then re-run the conversion") from None
            self.batches[b] = rb
        return rb


class ShardDataset:
    """The clips of one split of a converted dataset, by global row index.

    Args:
        root: the conversion output folder (holds ``manifest.json``).
        split: ``train``, ``val`` or ``test``.
        verify: also re-hash every shard (sha256) now (slow; ``tools/convert_dataset.py verify`` does the same).

    Raises:
        ShardError: missing/invalid manifest, unknown split, a shard missing, of the wrong size (a cheap
            checksum stand-in), not Arrow, with another schema or another row count than the manifest says.
    """

    def __init__(self, root, split: str, *, verify: bool = False):
        self.root = os.path.abspath(os.fspath(root))
        self.split = split
        self.manifest = storage.read_manifest(self.root)[2]
        self.dataset: str = self.manifest["dataset"]
        self.classes: list[str] = list(self.manifest["classes"])
        self.entries = fmt.split_shards(self.manifest, split, where=os.path.join(self.root, fmt.MANIFEST_NAME))
        self.paths = [os.path.join(self.root, *fmt.safe_relpath(e["path"]).split("/")) for e in self.entries]
        for path, e in zip(self.paths, self.entries):
            fmt.check_inside(self.root, path, where=os.path.join(self.root, fmt.MANIFEST_NAME))
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                raise ShardError(f"{path}: shard listed in the manifest is missing") from None
            if size != e["bytes"]:
                raise ShardError(f"{path}: size {size} bytes differs from the manifest's {e['bytes']} "
                                 "(corrupt or partially copied shard; re-run tools/convert_dataset.py)")
        self.shard_starts = np.cumsum([0] + [int(e["clips"]) for e in self.entries]).astype(np.int64)
        self._pid = None
        self._shards: list[_Shard | None] = []
        self._meta = None
        if verify:
            self.verify()
        self._check_shards()

    # ------------------------------------------------------------------ process-local state
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_pid"], d["_shards"] = None, []
        return d

    def _shard(self, s: int) -> _Shard:
        if self._pid != os.getpid():
            self._pid, self._shards = os.getpid(), [None] * len(self.paths)
        sh = self._shards[s]
        if sh is None:
            sh = self._shards[s] = _Shard(self.paths[s])
        return sh

    def _check_shards(self) -> None:
        for s, (path, e) in enumerate(zip(self.paths, self.entries)):
            sh = self._shard(s)
            if not sh.reader.schema.equals(fmt.SCHEMA, check_metadata=False):
                raise ShardError(f"{path}: schema {sh.reader.schema} is not the shard schema")
            if int(sh.starts[-1]) != int(e["clips"]):
                raise ShardError(f"{path}: holds {int(sh.starts[-1])} clips, the manifest says {e['clips']}")

    def verify(self) -> None:
        """Re-hash every shard of the split and compare with the manifest's sha256 (ShardError on mismatch)."""
        for path, e in zip(self.paths, self.entries):
            digest, _ = storage.sha256_file(None, path)
            if digest != e["sha256"]:
                raise ShardError(f"{path}: sha256 {digest[:16]}... differs from the manifest's "
                                 f"{e['sha256'][:16]}... (corrupt shard; re-run tools/convert_dataset.py)")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def locate(self, i: int) -> tuple[int, int, int]:
        """``(shard, batch, row)`` of clip ``i`` (O(log shards + log batches))."""
        return locate(i, self.shard_starts, lambda s: self._shard(s).starts, self.split)

    def _row(self, i: int):
        s, b, r = self.locate(i)
        return self._shard(s).batch(b), r

    def metadata(self) -> dict:
        """Column arrays over the whole split: ``key`` (list of str), ``label``, ``num_frames``, ``height``,
        ``width`` (int64 numpy). Read once (only those columns' buffers are touched) and cached."""
        if self._meta is None:
            cols = {k: [] for k in ("key", "label", "num_frames", "height", "width")}
            for s in range(len(self.paths)):
                sh = self._shard(s)
                for b in range(len(sh.batches)):
                    rb = sh.batch(b)
                    for k in cols:
                        cols[k].append(rb.column(k))
            meta = {"key": [x for a in cols["key"] for x in a.to_pylist()]}
            for k in ("label", "num_frames", "height", "width"):
                meta[k] = (np.concatenate([a.to_numpy() for a in cols[k]]).astype(np.int64) if cols[k]
                           else np.zeros(0, np.int64))
            self._meta = meta
        return self._meta

    def frames(self, i: int, indices) -> list[np.ndarray]:
        """JPEG bytes of frames ``indices`` of clip ``i`` as zero-copy ``uint8`` views into the memory map."""
        rb, r = self._row(i)
        lo, vo, buf = frame_views(rb.column("frames"))
        o = row_offsets(lo, vo, r, indices, i)
        return [buf[int(o[j]):int(o[int(j) + 1])] for j in indices]


# ------------------------------------------------------------------ the frames column: one offsets reader
def frame_views(frames: pa.ListArray):
    """(list offsets, value offsets, values buffer as uint8 array) of a list<binary> array (no copies)."""
    values = frames.values
    lo = np.frombuffer(frames.buffers()[1], dtype=np.int32)[frames.offset:frames.offset + len(frames) + 1]
    vo = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset:values.offset + len(values) + 1]
    data = values.buffers()[2]
    buf = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return lo, vo, buf


def row_offsets(list_offs: np.ndarray, value_offs: np.ndarray, r: int, indices=(), clip: int | None = None):
    """The byte offsets of row ``r``'s frames in a list<binary> column's values (``n + 1`` of them: frame ``j`` is
    ``values[o[j]:o[j + 1]]``), from its list and value offsets (:func:`frame_views`, or the direct reader's
    index). IndexError naming ``clip`` when one of ``indices`` is not a frame of the row."""
    o = value_offs[int(list_offs[r]):int(list_offs[r + 1]) + 1]
    n = len(o) - 1
    for j in indices:
        if not 0 <= int(j) < n:
            raise IndexError(f"frame {int(j)} out of range for clip {r if clip is None else clip} with {n} frames")
    return o


# ------------------------------------------------------------------ whole-dataset checks and scans
def verify(out, *, decode: bool = False, progress: bool = False) -> None:
    """Check a converted dataset; raise ShardError naming the first problem.

    Checks the manifest's structure; every shard's size and sha256 against the manifest; the Arrow schema,
    row counts, clip/frame totals per split, unique keys, labels in range; and that every frame is a complete
    JPEG whose header size equals the row's height/width. ``decode=True`` also fully decodes every frame
    (simplejpeg).
    """
    from tqdm import tqdm

    fs, root, m = storage.read_manifest(out)
    rows = _RowCheck(len(m["classes"]), decode)
    shards = [(split, sh) for split, s in m["splits"].items() for sh in s["shards"]]
    totals: dict[str, list[int]] = {}
    for split, sh in tqdm(shards, desc="verify", unit="shard", disable=not progress):
        path = storage.join(root, fmt.safe_relpath(sh["path"]))
        batches = _read_shard(fs, root, path, sh)
        t = totals.setdefault(split, [0, 0])
        t[0] += sum(b.num_rows for b in batches)
        keys_seen = rows.keys.setdefault(split, set())
        for bi, b in enumerate(batches):
            if bi < len(batches) - 1 and b.num_rows != fmt.ROWS_PER_BATCH:
                raise ShardError(f"{path}: batch {bi} has {b.num_rows} rows, expected {fmt.ROWS_PER_BATCH}")
            t[1] += rows.batch(path, split, b, keys_seen)
    for split, s in m["splits"].items():
        clips, frames = totals.get(split, [0, 0])
        if clips != s["clips"] or frames != s["frames"]:
            raise ShardError(f"{storage.join(root, fmt.MANIFEST_NAME)}: split {split!r} holds {clips} clips/{frames} "
                             f"frames, the manifest says {s['clips']}/{s['frames']}")


def _read_shard(fs, root: str, path: str, sh: dict) -> list[pa.RecordBatch]:
    """The record batches of the shard at ``path`` once its place, size, sha256, schema and row count match the
    manifest entry ``sh``."""
    if isinstance(fs, pafs.LocalFileSystem):
        fmt.check_inside(root, path, where=storage.join(root, fmt.MANIFEST_NAME))
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise ShardError(f"{path}: shard listed in the manifest is missing (re-run the conversion)")
    if info.size != sh["bytes"]:
        raise ShardError(f"{path}: size {info.size} bytes, the manifest says {sh['bytes']}")
    digest, _ = storage.sha256_file(fs, path)
    if digest != sh["sha256"]:
        raise ShardError(f"{path}: sha256 {digest} does not match the manifest ({sh['sha256']}); "
                         "the file is corrupt or was replaced -- re-run the conversion")
    with fs.open_input_file(path) as f:
        try:
            reader = pa.ipc.open_file(f)
            if not reader.schema.equals(fmt.SCHEMA):
                raise ShardError(f"{path}: schema {reader.schema} differs from the shard format")
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except pa.ArrowException as e:
            raise ShardError(f"{path}: not a readable Arrow IPC file ({e})") from None
    rows = sum(b.num_rows for b in batches)
    if rows != sh["clips"]:
        raise ShardError(f"{path}: holds {rows} clips, the manifest says {sh['clips']}")
    return batches


class _RowCheck:
    """The per-row checks of :func:`verify`: unique keys per split, labels in range, frame counts, and every
    frame by the one JPEG rule (and a full decode with ``decode``)."""

    def __init__(self, n_classes: int, decode: bool):
        self.n_classes = n_classes
        self.check = JpegChecker()
        self.keys: dict[str, set] = {}
        self.decoder = None
        if decode:
            import simplejpeg

            self.decoder = simplejpeg.decode_jpeg

    def batch(self, path: str, split: str, b: pa.RecordBatch, keys_seen: set) -> int:
        """Check every row of record batch ``b``; returns its frame count."""
        keys = b.column("key").to_pylist()
        labels = b.column("label").to_numpy()
        counts = b.column("num_frames").to_numpy()
        sizes = zip(b.column("height").to_numpy(), b.column("width").to_numpy())
        lo, vo, arr = frame_views(b.column("frames"))
        buf = memoryview(arr)
        frames = 0
        for r, (key, hw) in enumerate(zip(keys, sizes)):
            where = f"{path}: clip {key!r}"
            if key in keys_seen:
                raise ShardError(f"{where} appears twice in split {split!r}")
            keys_seen.add(key)
            if not -1 <= labels[r] < self.n_classes:
                raise ShardError(f"{where} has label {labels[r]} outside -1..{self.n_classes - 1}")
            o = row_offsets(lo, vo, r)
            if len(o) - 1 != counts[r] or counts[r] < 1:
                raise ShardError(f"{where} has {len(o) - 1} frames but num_frames is {counts[r]}")
            frames += int(counts[r])
            for j in range(len(o) - 1):
                self.frame(f"{where} frame {j}", buf[o[j]:o[j + 1]], hw)
        return frames

    def frame(self, where: str, fb, size) -> None:
        try:
            hw = self.check(fb)
        except ValueError as e:
            raise ShardError(f"{where}: {e}") from None
        if hw != size:
            raise ShardError(f"{where}: JPEG header says {hw[1]}x{hw[0]}, the row says {size[1]}x{size[0]}")
        if self.decoder is not None:
            try:
                img = self.decoder(bytes(fb))
            except (ValueError, RuntimeError) as e:
                raise ShardError(f"{where}: does not decode ({e})") from None
            if img.shape[:2] != hw:
                raise ShardError(f"{where}: decodes to {img.shape}, header {hw}")

"""Direct mode: read a split's clips from remote shards by range requests (no local copy).

An Arrow IPC file ends with a footer that lists each record batch's block (offset, metadata length, body
length); each batch's metadata lists its buffers' (offset, length) inside the body. For the shard schema
(:data:`pipelines.shards.format.SCHEMA`) the buffers are, in order::

    0-2 key (validity, offsets, data)   3-4 label   5-6 num_frames   7-8 frames (validity, list offsets)
    9-11 frames.item (validity, value offsets, JPEG bytes)            12-13 height   14-15 width

so buffers 0-10 (keys, labels, frame counts, both offset arrays) are one small contiguous range at the start of
the body, 12-15 one at its end, and the JPEG bytes (buffer 11) lie between. Per record batch this module reads
the metadata message and those two small ranges once (cached, and carried into DataLoader workers when the
dataset is pickled); then every frame is one ``read_at`` of its exact bytes (contiguous frames of a clip are
one request), issued from a thread pool so that many requests are in flight. The footer is parsed here (a
few lines of flatbuffer reading) and its schema checked by pyarrow itself.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pipelines.shards import format as fmt
from pipelines.shards import storage
from pipelines.shards.reader import locate, row_offsets
from pipelines.errors import ShardError

log = logging.getLogger(__name__)

MAGIC = b"ARROW1"
TAIL = 8 << 10  # first read from a shard's end: holds the footer of a shard of up to ~300 record batches
N_BUFFERS = 16
_POOL_LOCK = threading.Lock()
KEY_OFFS, KEY_DATA, LABEL, NUM_FRAMES, LIST_OFFS, VALUE_OFFS, VALUES, HEIGHT, WIDTH = 1, 2, 4, 6, 8, 10, 11, 13, 15


# ----------------------------------------------------------------------------------------------- flatbuffers
class _Table:
    """A flatbuffer table at ``pos`` in ``buf`` (just what the Arrow footer and messages need)."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _field(self, i: int) -> int | None:
        o = 4 + 2 * i
        if o >= self.vt_len:
            return None
        off = struct.unpack_from("<H", self.buf, self.vt + o)[0]
        return self.pos + off if off else None

    def scalar(self, i: int, f: str, default=0):
        p = self._field(i)
        return default if p is None else struct.unpack_from(f, self.buf, p)[0]

    def table(self, i: int) -> _Table | None:
        p = self._field(i)
        return None if p is None else _Table(self.buf, p + struct.unpack_from("<I", self.buf, p)[0])

    def structs(self, i: int, f: str) -> list[tuple]:
        """A vector of fixed-size structs (``f`` a struct format, e.g. ``"<qi4xq"``)."""
        p = self._field(i)
        if p is None:
            return []
        v = p + struct.unpack_from("<I", self.buf, p)[0]
        n, size = struct.unpack_from("<I", self.buf, v)[0], struct.calcsize(f)
        return [struct.unpack_from(f, self.buf, v + 4 + k * size) for k in range(n)]


def _root(buf: bytes) -> _Table:
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def parse_footer(tail: bytes, size: int, where: str) -> tuple[list[tuple[int, int, int]], int]:
    """``(blocks, footer_bytes)`` from the last bytes of an Arrow IPC file: each block ``(offset, metadata
    length, body length)``. ``footer_bytes`` > ``len(tail) - 10`` means: read more of the end and call again."""
    if len(tail) < 10 or tail[-6:] != MAGIC:
        raise ShardError(f"{where}: not an Arrow IPC file (no trailing {MAGIC!r}); re-run tools/convert_dataset.py")
    n = struct.unpack_from("<i", tail, len(tail) - 10)[0]
    if not 0 < n <= size - 16:
        raise ShardError(f"{where}: corrupt Arrow footer length {n}; re-run tools/convert_dataset.py")
    if n > len(tail) - 10:
        return [], n
    footer = bytes(tail[len(tail) - 10 - n:len(tail) - 10])
    try:
        blocks = _root(footer).structs(3, "<qi4xq")
        # pyarrow checks the schema: a file holding only the footer is enough for it
        reader = pa.ipc.open_file(pa.py_buffer(MAGIC + b"\0\0" + footer + tail[-10:]))
        schema = reader.schema
        fields = ", ".join(f"{f.name!r}: {f.type}" for f in schema)  # one line (str(schema) has one per field)
    # flatbuffer verification fails with OSError; field names that are not UTF-8 with UnicodeDecodeError
    except (struct.error, IndexError, OSError, ValueError, pa.ArrowException) as e:
        raise ShardError(f"{where}: corrupt Arrow footer ({e}); re-run tools/convert_dataset.py") from None
    if not schema.equals(fmt.SCHEMA, check_metadata=False):
        raise ShardError(f"{where}: schema ({fields}) is not the shard schema; re-run tools/convert_dataset.py")
    if reader.num_record_batches != len(blocks):
        raise ShardError(f"{where}: corrupt Arrow footer (block count); re-run tools/convert_dataset.py")
    return [(int(o), int(m), int(b)) for o, m, b in blocks], n


def parse_batch_message(meta: bytes, where: str) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """``(rows, field nodes (length, nulls), buffers (offset, length))`` of an encapsulated record batch message."""
    try:
        p = 8 if meta[:4] == b"\xff\xff\xff\xff" else 4  # continuation marker + length, or the pre-1.0 length
        msg = _root(meta[p:])
        if msg.scalar(1, "<B") != 3:  # MessageHeader.RecordBatch
            raise ShardError(f"{where}: block is not a record batch; re-run tools/convert_dataset.py")
        rb = msg.table(2)
        if rb is None or rb.table(3) is not None:
            raise ShardError(f"{where}: compressed or empty record batch (not written by tools/convert_dataset.py)")
        return rb.scalar(0, "<q"), rb.structs(1, "<qq"), rb.structs(2, "<qq")
    except (struct.error, IndexError) as e:
        raise ShardError(f"{where}: corrupt record batch metadata ({e}); re-run tools/convert_dataset.py") from None


class BatchIndex:
    """Where one record batch's columns are: its metadata columns (read) and the frame byte offsets."""

    __slots__ = ("list_offs", "meta", "rows", "value_offs", "values_at")

    def __init__(self, f, block: tuple[int, int, int], where: str):
        offset, meta_len, body_len = block
        rows, nodes, bufs = parse_batch_message(read(f, offset, meta_len, where), where)
        if len(bufs) != N_BUFFERS or any(nulls for _, nulls in nodes):
            raise ShardError(f"{where}: record batch layout differs from the shard schema")
        if any(o < 0 or n < 0 or o + n > body_len for o, n in bufs):
            raise ShardError(f"{where}: record batch buffers point outside the batch; re-run tools/convert_dataset.py")
        body = offset + meta_len
        head_end = bufs[VALUE_OFFS][0] + bufs[VALUE_OFFS][1]
        head = read(f, body, head_end, where)
        tail_at = bufs[HEIGHT - 1][0]
        tail = read(f, body + tail_at, body_len - tail_at, where)

        def arr(k: int, dtype, src=head, base=0) -> np.ndarray:
            o, n = bufs[k]
            return np.frombuffer(src, dtype=dtype, count=n // np.dtype(dtype).itemsize, offset=o - base)

        self.rows = int(rows)
        self.values_at = body + bufs[VALUES][0]
        self.list_offs = arr(LIST_OFFS, "<i4")[:rows + 1].copy()  # int32 as in Arrow: half the pickle of int64
        self.value_offs = arr(VALUE_OFFS, "<i4").copy()
        try:
            keys = pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(arr(KEY_OFFS, np.uint8).copy()),
                                                             pa.py_buffer(arr(KEY_DATA, np.uint8).copy())])
            keys.validate(full=True)
        except pa.ArrowException as e:
            raise ShardError(f"{where}: corrupt keys column ({e}); re-run tools/convert_dataset.py") from None
        self.meta = {"key": keys.to_pylist(), "label": arr(LABEL, "<i4")[:rows],
                     "num_frames": arr(NUM_FRAMES, "<i4")[:rows],
                     "height": arr(HEIGHT, "<i4", tail, tail_at)[:rows], "width": arr(WIDTH, "<i4", tail, tail_at)[:rows]}
        last = int(self.list_offs[-1]) if rows else 0
        if (len(self.list_offs) != rows + 1 or len(self.value_offs) < last + 1
                or int(self.value_offs[last]) > bufs[VALUES][1] or (np.diff(self.list_offs) < 0).any()
                or (np.diff(self.value_offs[:last + 1]) < 0).any()):
            raise ShardError(f"{where}: corrupt frame offsets; re-run tools/convert_dataset.py")


def read(f, offset: int, n: int, where: str) -> bytes:
    """``n`` bytes at ``offset`` of a pyarrow random-access file (one range request on an object store)."""
    try:
        b = f.read_at(n, offset)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"{where}: range read failed ({e}); check the endpoint and network") from None
    if len(b) != n:
        raise ShardError(f"{where}: short read ({len(b)} of {n} bytes at {offset}); the shard changed or is truncated")
    return b


# ----------------------------------------------------------------------------------------------- the dataset
class RemoteShardDataset:
    """The clips of one split, read from shards at a ``pyarrow.fs`` URI by range requests.

    Same interface as :class:`pipelines.shards.reader.ShardDataset` (``metadata()``, ``frames(i, indices)``,
    ``dataset``, ``split``, ``classes``, ``manifest``, ``len``); picklable into DataLoader workers (file handles
    and the thread pool are re-made per process, the per-batch index travels with it).

    Args:
        uri: the dataset root (holds ``manifest.json``).
        split: ``train``, ``val`` or ``test``.
        threads: range requests in flight per process (frames of a clip, index reads).
        gap: frames of a clip at most this many bytes apart are read by one request (0: only neighbours; a
            large value: one request per clip, moving the bytes between its sampled frames too).
        timeouts: S3 ``connect``/``request`` seconds and ``attempts`` (see :func:`pipelines.shards.storage.resolve`).
        cache: a :class:`pipelines.shards.cache.ShardCache` with ``max_gb``: frames are read from its memory-mapped
            local copies (fetched on demand when :meth:`prefetch` did not bring them), the index from remote.
    """

    def __init__(self, uri, split: str, *, threads: int = 16, gap: int = 0, timeouts: dict | None = None,
                 cache=None):

        self.uri, self.split, self.threads, self.timeouts, self.cache = os.fspath(uri), split, int(threads), timeouts, cache
        self.gap = int(gap)
        self._fs, self.root, self.manifest, _ = storage.read_manifest_raw(self.uri, timeouts=timeouts)
        self.dataset: str = self.manifest["dataset"]
        self.classes: list[str] = list(self.manifest["classes"])
        self.entries = fmt.split_shards(self.manifest, split, where=storage.shown(self.uri, fmt.MANIFEST_NAME))
        self.rels = [fmt.safe_relpath(e["path"]) for e in self.entries]
        self.shard_starts = np.cumsum([0] + [int(e["clips"]) for e in self.entries]).astype(np.int64)
        self._pid, self._files, self._local, self._pool = os.getpid(), {}, {}, None
        self._index: list[list[BatchIndex]] = [[] for _ in self.entries]
        self._starts: list[np.ndarray | None] = [None] * len(self.entries)
        self._meta = None
        self._open_index()

    # ------------------------------------------------------------------ process-local state
    def __getstate__(self):
        d = dict(self.__dict__)
        d.update(_fs=None, _pid=None, _files={}, _local={}, _pool=None)
        return d

    def _here(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._files, self._local, self._pool = os.getpid(), {}, {}, None
            self._fs = None
        if self._fs is None:

            self._fs = storage.resolve(self.uri, timeouts=self.timeouts)[0]

    def _map(self, fn, items):
        self._here()
        if self._pool is None:
            with _POOL_LOCK:  # the loader's decode threads call frames() concurrently
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="remote-read")
        return self._pool.map(fn, items)

    def where(self, s: int) -> str:

        return storage.shown(self.uri, self.rels[s])

    def _open_file(self, s: int):
        """The remote shard ``s`` as a pyarrow random-access file (tests wrap this to count bytes)."""
        try:
            return self._fs.open_input_file(storage.join(self.root, self.rels[s]))
        except FileNotFoundError:
            raise ShardError(f"{self.where(s)}: shard listed in the manifest is missing") from None
        except (OSError, pa.ArrowException) as e:
            raise ShardError(f"{self.where(s)}: cannot open ({e}); check the endpoint, bucket and credentials") from None

    def _file(self, s: int):
        self._here()
        f = self._files.get(s)
        if f is None:
            f = self._files[s] = self._open_file(s)
        return f

    def _frames_file(self, s: int):
        """Where frame bytes come from: the memory-mapped cached copy (size-limited cache) or the remote file."""
        if self.cache is None:
            return self._file(s)
        self._here()
        mm = self._local.get(s)
        if mm is None:
            mm = self._local[s] = pa.memory_map(self.cache.ensure(self.split, [s])[0], "r")
        return mm

    def _footer(self, s: int) -> list[tuple[int, int, int]]:
        f, where, size = self._file(s), self.where(s), int(self.entries[s]["bytes"])
        if f.size() != size:
            raise ShardError(f"{where}: size {f.size()} bytes differs from the manifest's {size} "
                             "(overwritten or partially uploaded shard; re-run tools/convert_dataset.py)")
        n = min(size, TAIL)
        blocks, need = parse_footer(read(f, size - n, n, where), size, where)
        if need > n - 10:
            blocks, _ = parse_footer(read(f, size - need - 10, need + 10, where), size, where)
        return blocks

    def _open_index(self) -> None:
        """Footers of every shard, then every record batch's index, all in flight together."""
        blocks = list(self._map(self._footer, range(len(self.entries))))
        todo = [(s, b, blk) for s in range(len(self.entries)) for b, blk in enumerate(blocks[s])]
        made = self._map(lambda t: BatchIndex(self._file(t[0]), t[2], f"{self.where(t[0])} record batch {t[1]}"), todo)
        self._index = [[] for _ in self.entries]
        for (s, _, _), ix in zip(todo, made):
            self._index[s].append(ix)
        for s, index in enumerate(self._index):
            rows = np.cumsum([0] + [ix.rows for ix in index]).astype(np.int64)
            if int(rows[-1]) != int(self.entries[s]["clips"]):
                raise ShardError(f"{self.where(s)}: holds {int(rows[-1])} clips, the manifest says "
                                 f"{self.entries[s]['clips']}")
            self._starts[s] = rows

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def locate(self, i: int) -> tuple[int, int, int]:
        """``(shard, batch, row)`` of clip ``i``."""
        return locate(i, self.shard_starts, self._starts.__getitem__, self.split)

    def metadata(self) -> dict:
        """Column arrays over the split (as ShardDataset's); from the index, no frame bytes read."""
        if self._meta is None:
            parts = [ix.meta for s in range(len(self.entries)) for ix in self._index[s]]
            meta = {"key": [k for p in parts for k in p["key"]]}
            for k in ("label", "num_frames", "height", "width"):
                meta[k] = np.concatenate([p[k] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
            self._meta = meta
        return self._meta

    def frames(self, i: int, indices) -> list[np.ndarray]:
        """JPEG bytes of frames ``indices`` of clip ``i`` (uint8 arrays): one range read per run of neighbouring
        frames (or of frames at most ``gap`` bytes apart), all in flight together."""
        s, b, r = self.locate(i)
        ix = self._index[s][b]
        o = row_offsets(ix.list_offs, ix.value_offs, r, indices, i)
        runs: list[list[int]] = []  # frames read by one request: neighbours, or up to ``gap`` bytes apart
        for j in sorted({int(j) for j in indices}):
            if runs and int(o[j]) - int(o[runs[-1][-1] + 1]) <= self.gap:
                runs[-1].append(j)
            else:
                runs.append([j])
        f, where = self._frames_file(s), self.where(s)

        def get(run):
            lo, hi = int(o[run[0]]), int(o[run[-1] + 1])
            return lo, np.frombuffer(read(f, ix.values_at + lo, hi - lo, where), dtype=np.uint8)

        got = {}
        for run, (base, buf) in zip(runs, self._map(get, runs) if len(runs) > 1 else map(get, runs)):
            for j in run:
                got[j] = buf[int(o[j]) - base:int(o[j + 1]) - base]
        return [got[int(j)] for j in indices]

    def prefetch(self, clip_indices) -> None:
        """Size-limited cache: bring the shards of ``clip_indices`` (in order of first use) into the cache."""
        if self.cache is not None:
            self.cache.prefetch(self.split, clip_indices)

"""Shard writing and checking helpers (the format itself is :mod:`pipelines.format`).

* :func:`jpeg_size` -- (height, width) from a JPEG's SOF header; checks SOI/EOI so truncation is caught.
* :func:`make_batch` -- one ``format.SCHEMA`` record batch from clips whose JPEG bytes sit in one buffer.
* :func:`write_shard` -- write batches to a temporary name while hashing, then rename into place.
* :func:`verify`, :func:`iter_clips` -- whole-dataset checks and sequential reads (filesystems, atomic writes and
  the manifest reader are :mod:`pipelines.storage`).

Every file is written as ``<final>.tmp-<pid>`` and moved to its final name, so a half-written file is never
visible under the final name.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipelines import format as fmt
from pipelines import storage
from pipelines.errors import ShardError

log = logging.getLogger(__name__)

_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


# ----------------------------------------------------------------------------------------------- JPEG header
def jpeg_size(b) -> tuple[int, int]:
    """(height, width) from the SOF header of JPEG bytes ``b`` (bytes/memoryview/uint8 array).

    Raises ValueError with a short problem description: empty, not a JPEG (no SOI), truncated (no EOI at the
    end; trailing zero padding is tolerated), no frame header, corrupt marker structure.
    """
    h, w, _ = jpeg_header(b)
    return h, w


def check_eoi(b) -> None:
    """Raise ValueError unless ``b`` ends with the EOI marker (trailing zero padding tolerated)."""
    if isinstance(b, np.ndarray):
        b = memoryview(np.ascontiguousarray(b, dtype=np.uint8))
    e = len(b)
    while e > 4 and b[e - 1] == 0:
        e -= 1
    if e < 4 or b[e - 2] != 0xFF or b[e - 1] != 0xD9:
        raise ValueError("truncated JPEG (no EOI marker at the end)")


def jpeg_header(b) -> tuple[int, int, int]:
    """``(height, width, end)`` where ``b[:end]`` is everything up to the SOF size fields (see jpeg_size).

    Two JPEGs whose first ``end`` bytes are equal have the same size; :class:`JpegChecker` uses that to skip
    the marker walk for frames written by the same encoder.
    """
    if isinstance(b, np.ndarray):
        b = memoryview(np.ascontiguousarray(b, dtype=np.uint8))
    n = len(b)
    if n == 0:
        raise ValueError("zero-byte file")
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        raise ValueError("not a JPEG (no SOI marker at the start)")
    check_eoi(b)
    i = 2
    while i < n:
        if b[i] != 0xFF:
            raise ValueError(f"corrupt JPEG (no marker at byte {i})")
        while i < n and b[i] == 0xFF:
            i += 1
        if i >= n:
            break
        m = b[i]
        i += 1
        if m == 0x01 or 0xD0 <= m <= 0xD8:
            continue
        if m in (0xD9, 0xDA):
            break
        if i + 2 > n:
            break
        length = (b[i] << 8) | b[i + 1]
        if m in _SOF:
            if i + 7 > n:
                break
            h = (b[i + 3] << 8) | b[i + 4]
            w = (b[i + 5] << 8) | b[i + 6]
            if h == 0 or w == 0:
                raise ValueError(f"JPEG frame header gives size {w}x{h}")
            return h, w, i + 7
        if length < 2:
            raise ValueError(f"corrupt JPEG (segment length {length} at byte {i})")
        i += length
    raise ValueError("corrupt JPEG (no frame header before the image data)")


class JpegChecker:
    """:func:`jpeg_size` with a one-entry cache of the last header prefix (same encoder -> no marker walk).

    The result is always what :func:`jpeg_size` returns: a frame whose bytes up to the SOF size fields equal
    the cached prefix has, by construction, the same walk and the same size; its EOI is still checked.
    """

    def __init__(self) -> None:
        self.prefix = b""
        self.hw = (0, 0)

    def __call__(self, b) -> tuple[int, int]:
        if isinstance(b, np.ndarray):
            b = memoryview(np.ascontiguousarray(b, dtype=np.uint8))
        k = len(self.prefix)
        if k and len(b) > k + 2 and b[:k] == self.prefix:
            check_eoi(b)
            return self.hw
        h, w, end = jpeg_header(b)
        self.prefix, self.hw = bytes(b[:end]), (h, w)
        return h, w


# ----------------------------------------------------------------------------------------------- writing
def make_batch(keys: list[str], labels: list[int], counts: list[int], heights: list[int], widths: list[int],
               data: np.ndarray, frame_offsets: np.ndarray) -> pa.RecordBatch:
    """A ``format.SCHEMA`` batch without copying frame bytes more than once.

    ``data`` (uint8) holds every frame of the batch back to back; ``frame_offsets`` (int64, len frames + 1)
    delimits the frames; ``counts[i]`` is the number of frames of clip ``i``.
    """
    if frame_offsets[-1] > np.iinfo(np.int32).max:
        raise ShardError("a record batch would exceed 2 GiB of frame bytes; use a smaller --shard-mb")
    n_frames = len(frame_offsets) - 1
    values = pa.Array.from_buffers(pa.binary(), n_frames,
                                   [None, pa.py_buffer(frame_offsets.astype(np.int32)), pa.py_buffer(data)])
    list_offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=list_offsets[1:])
    frames = pa.ListArray.from_arrays(pa.array(list_offsets, pa.int32()), values)
    return pa.RecordBatch.from_arrays(
        [pa.array(keys, pa.string()), pa.array(labels, pa.int32()), pa.array(counts, pa.int32()),
         frames, pa.array(heights, pa.int32()), pa.array(widths, pa.int32())],
        schema=fmt.SCHEMA)


def write_shard(fs: pafs.FileSystem, path: str, batches: Iterable[pa.RecordBatch],
                before_move: Callable[[dict], None] | None = None) -> dict:
    """Write ``batches`` as an Arrow IPC file at ``path`` (temp name + move). Returns clips, bytes, sha256.

    On a local filesystem the file is streamed natively to its temporary name and hashed by reading it back
    from the page cache (no shard-sized buffer in memory); on other filesystems (object stores) it is built in
    memory, hashed, and uploaded in one stream. ``before_move(entry)`` runs once the temporary file is complete
    and before it is moved into place (the converter records the shard's state there, so a file under its
    final name always has its state).
    """
    tmp = storage.tmp_name(path)
    clips = 0
    local = isinstance(fs, pafs.LocalFileSystem)
    try:
        sink = pa.OSFile(tmp, "wb") if local else pa.BufferOutputStream()
        try:
            with pa.ipc.new_file(sink, fmt.SCHEMA) as w:
                for b in batches:
                    w.write_batch(b)
                    clips += b.num_rows
        finally:
            if local:
                sink.close()
        if local:
            digest, size = storage.sha256_file(None, tmp)
        else:
            buf = sink.getvalue()
            digest, size = hashlib.sha256(memoryview(buf)).hexdigest(), buf.size
            with fs.open_output_stream(tmp) as f:
                f.write(buf)
            del buf
        entry = {"clips": clips, "bytes": size, "sha256": digest}
        if before_move is not None:
            before_move(entry)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except Exception:  # noqa: BLE001 - best effort cleanup, the original error matters
            pass
        raise
    return entry


# ----------------------------------------------------------------------------------------------- reading
def _frame_views(frames: pa.ListArray):
    """(list offsets, value offsets, values buffer as uint8 array) of a list<binary> array (no copies)."""
    values = frames.values
    lo = np.frombuffer(frames.buffers()[1], dtype=np.int32)[frames.offset:frames.offset + len(frames) + 1]
    vo = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset:values.offset + len(values) + 1]
    data = values.buffers()[2]
    buf = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return lo, vo, buf


def verify(out, *, decode: bool = False, progress: bool = False) -> None:
    """Check a converted dataset; raise ShardError naming the first problem.

    Checks the manifest's structure; every shard's size and sha256 against the manifest; the Arrow schema,
    row counts, clip/frame totals per split, unique keys, labels in range; and that every frame is a complete
    JPEG whose header size equals the row's height/width. ``decode=True`` also fully decodes every frame
    (simplejpeg).
    """
    from tqdm import tqdm

    fs, root, m = storage.read_manifest(out)
    n_classes = len(m["classes"])
    decoder = None
    if decode:
        import simplejpeg
        decoder = simplejpeg.decode_jpeg
    check = JpegChecker()
    shards = [(split, sh) for split, s in m["splits"].items() for sh in s["shards"]]
    bar = tqdm(shards, desc="verify", unit="shard", disable=not progress)
    totals: dict[str, list[int]] = {}
    for split, sh in bar:
        rel = fmt.safe_relpath(sh["path"])
        path = storage.join(root, rel)
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
        t = totals.setdefault(split, [0, 0])
        t[0] += rows
        keys_seen = totals.setdefault(f"keys:{split}", set())  # type: ignore[arg-type]
        for bi, b in enumerate(batches):
            if bi < len(batches) - 1 and b.num_rows != fmt.ROWS_PER_BATCH:
                raise ShardError(f"{path}: batch {bi} has {b.num_rows} rows, expected {fmt.ROWS_PER_BATCH}")
            keys = b.column(0).to_pylist()
            labels = b.column(1).to_numpy()
            counts = b.column(2).to_numpy()
            heights = b.column(4).to_numpy()
            widths = b.column(5).to_numpy()
            lo, vo, arr = _frame_views(b.column(3))
            buf = memoryview(arr)
            for r in range(b.num_rows):
                key = keys[r]
                where = f"{path}: clip {key!r}"
                if key in keys_seen:
                    raise ShardError(f"{where} appears twice in split {split!r}")
                keys_seen.add(key)
                if not -1 <= labels[r] < n_classes:
                    raise ShardError(f"{where} has label {labels[r]} outside -1..{n_classes - 1}")
                a, z = lo[r], lo[r + 1]
                if z - a != counts[r] or counts[r] < 1:
                    raise ShardError(f"{where} has {z - a} frames but num_frames is {counts[r]}")
                t[1] += int(counts[r])
                for j in range(a, z):
                    fb = buf[vo[j]:vo[j + 1]]
                    try:
                        hw = check(fb)
                    except ValueError as e:
                        raise ShardError(f"{where} frame {j - a}: {e}") from None
                    if hw != (heights[r], widths[r]):
                        raise ShardError(f"{where} frame {j - a}: JPEG header says {hw[1]}x{hw[0]}, "
                                         f"the row says {widths[r]}x{heights[r]}")
                    if decoder is not None:
                        try:
                            img = decoder(bytes(fb))
                        except (ValueError, RuntimeError) as e:
                            raise ShardError(f"{where} frame {j - a}: does not decode ({e})") from None
                        if img.shape[:2] != hw:
                            raise ShardError(f"{where} frame {j - a}: decodes to {img.shape}, header {hw}")
    for split, s in m["splits"].items():
        clips, frames = totals.get(split, [0, 0])
        if clips != s["clips"] or frames != s["frames"]:
            raise ShardError(f"{storage.join(root, fmt.MANIFEST_NAME)}: split {split!r} holds {clips} clips/{frames} "
                             f"frames, the manifest says {s['clips']}/{s['frames']}")


def iter_clips(out, split: str) -> Iterable[dict]:
    """Yield ``{"key", "label", "frames": [bytes], "height", "width"}`` of every clip of ``split`` (tests, tools)."""
    fs, root, m = storage.read_manifest(out)
    for sh in m["splits"][split]["shards"]:
        with fs.open_input_file(storage.join(root, fmt.safe_relpath(sh["path"]))) as f:
            table = pa.ipc.open_file(f).read_all()
        for row in table.to_pylist():
            yield row



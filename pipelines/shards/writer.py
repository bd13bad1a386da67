"""Shard writing and checking helpers (the format itself is :mod:`pipelines.shards.format`).

* :func:`make_batch` -- one ``format.SCHEMA`` record batch from clips whose JPEG bytes sit in one buffer.
* :func:`write_shard` -- write batches to a temporary name while hashing, then rename into place.

Reading and checking shards is :mod:`pipelines.shards.reader`; filesystems, atomic writes and the manifest reader are
:mod:`pipelines.shards.storage`; the JPEG validity rule is :mod:`pipelines.decode.jpeg`.

Every file is written under its temporary name (:func:`common.files.temp_name`) and moved to its final name, so a half-written file is never
visible under the final name.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.shards import format as fmt
from pipelines.shards import storage
from pipelines.errors import ShardError

log = logging.getLogger(__name__)



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
    clips = 0
    local = isinstance(fs, pafs.LocalFileSystem)
    with storage.atomic_target(fs, path) as tmp:
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
    return entry


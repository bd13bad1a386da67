"""Shard helpers: JPEG header checks, the writer (temp name + hash), verify."""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import rawtrees
import shardtools
from pipelines.shards import reader
from pipelines.decode import jpeg
from pipelines.shards import format as fmt
from pipelines.shards import writer as sh
from pipelines.shards import storage
from pipelines.errors import ShardError


def _jpeg(w=40, h=30, **save):
    buf = io.BytesIO()
    arr = np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="JPEG", **save)
    return buf.getvalue()


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"quality": 30, "optimize": True}])
def test_jpeg_size_reads_sof(save):
    assert jpeg.jpeg_size(_jpeg(40, 30, **save)) == (30, 40)
    assert jpeg.jpeg_size(np.frombuffer(_jpeg(17, 5, **save), np.uint8)) == (5, 17)
    assert jpeg.jpeg_size(np.frombuffer(_jpeg(320, 260, **save), np.uint8)) == (260, 320)
    check = jpeg.JpegChecker()
    assert [check(_jpeg(w, 30, **save)) for w in (40, 40, 300, 40)] == [(30, 40), (30, 40), (30, 300), (30, 40)]
    with pytest.raises(ValueError, match="truncated"):
        check(_jpeg(40, 30, **save)[:-20])
    assert jpeg.jpeg_size(_jpeg(40, 30, **save) + b"\0\0\0") == (30, 40)  # zero padding after EOI is tolerated


def test_jpeg_size_rejects_bad_bytes():
    good = _jpeg()
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    for data, msg in [(b"", "zero-byte"), (good[: len(good) // 2], "truncated"), (png.getvalue(), "not a JPEG"),
                      (b"hello world", "not a JPEG"), (b"\xff\xd8\xff\xd9", "no frame header")]:
        with pytest.raises(ValueError, match=msg):
            jpeg.jpeg_size(data)


@settings(max_examples=200, deadline=None, derandomize=True)  # the same examples every run
@given(st.binary(max_size=300), st.integers(0, 2000))
def test_jpeg_size_fuzz_only_value_errors(tail, cut):
    for data in (tail, _jpeg()[:cut] + tail, b"\xff\xd8" + tail + b"\xff\xd9"):
        try:
            h, w = jpeg.jpeg_size(data)
            assert h > 0 and w > 0
        except ValueError:
            pass


def _batches(n_clips, frames_per_clip=2):
    rng = np.random.default_rng(0)
    out, frames = [], {}
    for a in range(0, n_clips, fmt.ROWS_PER_BATCH):
        keys, labels, counts, hs, ws, blobs = [], [], [], [], [], []
        for i in range(a, min(n_clips, a + fmt.ROWS_PER_BATCH)):
            fr = [rawtrees.jpeg_bytes(rng, (8, 6)) for _ in range(frames_per_clip)]
            frames[str(i)] = fr
            keys.append(str(i)); labels.append(i % 5); counts.append(len(fr)); hs.append(6); ws.append(8)
            blobs += fr
        offs = np.zeros(len(blobs) + 1, np.int64)
        np.cumsum([len(b) for b in blobs], out=offs[1:])
        out.append(sh.make_batch(keys, labels, counts, hs, ws, np.frombuffer(b"".join(blobs), np.uint8), offs))
    return out, frames


def _write_dataset(tmp_path, n_clips=300):
    out = tmp_path / "out"
    fs, root = storage.resolve(out)
    fs.create_dir(root + "/train", recursive=True)
    batches, frames = _batches(n_clips)
    entry = sh.write_shard(fs, root + "/" + fmt.shard_name("train", 0), batches)
    m = {"format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "dataset": "jester", "classes": ["a"] * 5,
         "seed": 0, "splits": {"train": {"clips": n_clips, "frames": 2 * n_clips,
                                         "shards": [{"path": fmt.shard_name("train", 0), **entry}]}},
         "skipped": []}
    storage.write_json_atomic(fs, root + "/manifest.json", m)
    return out, entry, frames


def test_write_shard_roundtrip_and_hash(tmp_path):
    out, entry, frames = _write_dataset(tmp_path)
    path = out / "train" / "shard-00000.arrow"
    data = path.read_bytes()
    assert entry == {"clips": 300, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert os.listdir(out / "train") == ["shard-00000.arrow"]  # no temp file left
    ipc = pa.ipc.open_file(pa.memory_map(str(path)))
    assert ipc.schema.equals(fmt.SCHEMA)
    assert [ipc.get_batch(i).num_rows for i in range(ipc.num_record_batches)] == [256, 44]
    rows = {r["key"]: r for r in shardtools.iter_clips(out, "train")}
    assert all(rows[k]["frames"] == v and rows[k]["num_frames"] == 2 for k, v in frames.items())
    reader.verify(out)
    reader.verify(f"file://{out}", decode=True)


def test_write_shard_failure_leaves_nothing(tmp_path):
    fs, root = storage.resolve(tmp_path)

    def boom():
        yield _batches(3)[0][0]
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        sh.write_shard(fs, f"{root}/s.arrow", boom())
    assert os.listdir(tmp_path) == []


def _corrupt(path, offset, value=None):
    data = bytearray(path.read_bytes())
    data[offset] = value if value is not None else data[offset] ^ 0xFF
    path.write_bytes(bytes(data))


def test_verify_finds_problems(tmp_path):
    out, entry, frames = _write_dataset(tmp_path, n_clips=4)
    shard = out / "train" / "shard-00000.arrow"
    _corrupt(shard, len(shard.read_bytes()) // 2)
    with pytest.raises(ShardError, match="sha256 .* does not match"):
        reader.verify(out)
    shard.unlink()
    with pytest.raises(ShardError, match="missing"):
        reader.verify(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        reader.verify(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ShardError, match="manifest not found"):
        reader.verify(out)


def test_verify_checks_jpeg_headers_even_when_hash_matches(tmp_path):
    """A shard re-hashed after its content went bad (or written by a buggy tool) is still caught per row."""
    fs, root = storage.resolve(tmp_path)
    good = rawtrees.jpeg_bytes(np.random.default_rng(1), (8, 6))
    cases = {"truncated": (good[:-10], 6, 8, "truncated"), "size": (good, 7, 8, "header says 8x6")}
    for name, (blob, h, w, msg) in cases.items():
        out = f"{root}/{name}"
        fs.create_dir(out + "/val", recursive=True)
        b = sh.make_batch(["k"], [0], [1], [h], [w], np.frombuffer(blob, np.uint8), np.array([0, len(blob)]))
        entry = sh.write_shard(fs, out + "/val/shard-00000.arrow", [b])
        m = {"format": fmt.FORMAT_NAME, "version": 1, "dataset": "jester", "classes": ["a"], "seed": 0,
             "splits": {"val": {"clips": 1, "frames": 1, "shards": [{"path": "val/shard-00000.arrow", **entry}]}},
             "skipped": []}
        (tmp_path / name / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ShardError, match=msg):
            reader.verify(out)


def test_resolve_local_and_uri(tmp_path):
    fs, root = storage.resolve(tmp_path / "x")
    assert root == str(tmp_path / "x")
    fs2, root2 = storage.resolve(f"file://{tmp_path}/x")
    assert root2 == str(tmp_path / "x") and type(fs2) is type(fs)


def test_streamed_and_in_memory_shards_are_identical(tmp_path):
    """Local shards are streamed to disk; other filesystems get them built in memory: same bytes."""
    import pyarrow.fs as pafs

    fs, root = storage.resolve(tmp_path)
    a = sh.write_shard(fs, f"{root}/a.arrow", _batches(300)[0])
    sub = pafs.SubTreeFileSystem(root, pafs.LocalFileSystem())  # not a LocalFileSystem: the in-memory path
    b = sh.write_shard(sub, "b.arrow", _batches(300)[0])
    assert a == b and (tmp_path / "a.arrow").read_bytes() == (tmp_path / "b.arrow").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.arrow", "b.arrow"]

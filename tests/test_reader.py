"""Shard reader (memory map, O(1) access, manifest checks) and the (rank, worker) epoch partition."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pytest

import shardtools
from pipelines.shards import format as fmt
from pipelines.plan import partition
from pipelines.errors import ShardError
from pipelines.shards.reader import ShardDataset


def fake_jpeg(i: int, j: int) -> bytes:
    return b"\xff\xd8" + f"clip{i}-frame{j}".encode() + b"\xff\xd9"


def write_split(root, split="train", shard_sizes=(7, 5), rows_per_batch=3, frames=lambda i: 3 + i % 4):
    """Shards written directly with pyarrow + format.SCHEMA (small record batches to exercise the index)."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    entries, i, total_frames = [], 0, 0
    for s, n in enumerate(shard_sizes):
        rel = fmt.shard_name(split, s)
        path = os.path.join(root, rel)
        with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, fmt.SCHEMA) as w:
            rows = list(range(i, i + n))
            for a in range(0, n, rows_per_batch):
                ids = rows[a:a + rows_per_batch]
                w.write_batch(pa.record_batch([
                    pa.array([f"v{k}" for k in ids], pa.string()), pa.array([k % 5 for k in ids], pa.int32()),
                    pa.array([frames(k) for k in ids], pa.int32()),
                    pa.array([[fake_jpeg(k, j) for j in range(frames(k))] for k in ids], pa.list_(pa.binary())),
                    pa.array([48] * len(ids), pa.int32()), pa.array([64] * len(ids), pa.int32())], schema=fmt.SCHEMA))
        i += n
        total_frames += sum(frames(k) for k in rows)
        data = open(path, "rb").read()
        entries.append({"path": rel, "clips": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    m = {"format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "dataset": "jester",
         "classes": [f"c{k}" for k in range(5)], "seed": 0,
         "splits": {split: {"clips": i, "frames": total_frames, "shards": entries}}, "skipped": []}
    with open(os.path.join(root, fmt.MANIFEST_NAME), "w") as f:
        json.dump(m, f)
    return m


@pytest.fixture
def shards(tmp_path):
    write_split(tmp_path)
    return tmp_path


def test_locate_meta_and_frames(shards):
    ds = ShardDataset(shards, "train")
    assert len(ds) == 12 and ds.dataset == "jester" and ds.classes[0] == "c0"
    assert ds.locate(0) == (0, 0, 0)
    assert ds.locate(4) == (0, 1, 1)
    assert ds.locate(6) == (0, 2, 0)
    assert ds.locate(7) == (1, 0, 0)
    assert ds.locate(11) == (1, 1, 1)
    with pytest.raises(IndexError):
        ds.locate(12)
    m = ds.metadata()
    assert (m["key"][9], m["label"][9], m["num_frames"][9], m["height"][9], m["width"][9]) == ("v9", 4, 4, 48, 64)
    for i in range(12):
        n = int(m["num_frames"][i])
        got = ds.frames(i, [n - 1, 0, n - 1])
        assert [bytes(g) for g in got] == [fake_jpeg(i, n - 1), fake_jpeg(i, 0), fake_jpeg(i, n - 1)]
    with pytest.raises(IndexError):
        ds.frames(0, [3])


def test_frames_are_zero_copy_views_of_the_memory_map(shards):
    ds = ShardDataset(shards, "train")
    (a,) = ds.frames(8, [1])
    assert not a.flags.owndata and not a.flags.writeable
    (b,) = ds.frames(8, [2])
    assert np.shares_memory(a.base, b.base) or a.base is b.base


def test_dataset_pickles_and_reopens(shards):
    import pickle

    ds = ShardDataset(shards, "train")
    ds.frames(0, [0])
    ds2 = pickle.loads(pickle.dumps(ds))
    assert bytes(ds2.frames(11, [0])[0]) == fake_jpeg(11, 0)


def test_missing_split_shard_or_manifest(tmp_path, shards):
    with pytest.raises(ShardError, match="no split 'val'"):
        ShardDataset(shards, "val")
    with pytest.raises(ShardError, match="manifest not found"):
        ShardDataset(tmp_path / "nowhere", "train")
    os.remove(shards / "train" / "shard-00001.arrow")
    with pytest.raises(ShardError, match="shard-00001.arrow: shard listed in the manifest is missing"):
        ShardDataset(shards, "train")


def test_size_mismatch_detected_at_open(shards):
    p = shards / "train" / "shard-00000.arrow"
    with open(p, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ShardError, match="differs from the manifest"):
        ShardDataset(shards, "train")


def test_checksum_mismatch_detected_by_verify(shards):
    p = shards / "train" / "shard-00000.arrow"
    data = bytearray(open(p, "rb").read())
    k = data.find(b"clip3-frame1")
    data[k] ^= 1  # same size, different bytes
    open(p, "wb").write(bytes(data))
    ds = ShardDataset(shards, "train")  # the cheap check passes
    with pytest.raises(ShardError, match="sha256"):
        ds.verify()
    with pytest.raises(ShardError, match="sha256"):
        ShardDataset(shards, "train", verify=True)


def test_wrong_row_count_and_garbage_file(shards):
    m = json.load(open(shards / fmt.MANIFEST_NAME))
    m["splits"]["train"]["shards"][0]["clips"] = 6
    m["splits"]["train"]["clips"] = 11
    json.dump(m, open(shards / fmt.MANIFEST_NAME, "w"))
    with pytest.raises(ShardError, match="holds 7 clips, the manifest says 6"):
        ShardDataset(shards, "train")
    p = shards / "train" / "shard-00001.arrow"
    size = os.path.getsize(p)
    open(p, "wb").write(b"x" * size)
    m["splits"]["train"]["shards"][0]["clips"] = 7
    m["splits"]["train"]["clips"] = 12
    json.dump(m, open(shards / fmt.MANIFEST_NAME, "w"))
    with pytest.raises(ShardError, match="not a readable Arrow IPC file"):
        ShardDataset(shards, "train")


# ------------------------------------------------------------------------------------------- partition
@pytest.mark.parametrize("n, world, workers, bs", [(10, 3, 2, 3), (7, 4, 3, 1), (2, 3, 2, 4), (25, 2, 0, 4)])
def test_eval_epoch_covers_every_clip_exactly_once(n, world, workers, bs):
    seen = []
    for rank in range(world):
        for w in range(max(workers, 1)):
            for b in shardtools.partition(n, rank=rank, world=world, worker=w, workers=workers, batch_size=bs,
                                         shuffle=False):
                seen.extend(b.tolist())
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("n, world", [(10, 3), (13, 4)])
def test_train_epoch_shuffled_once_per_clip(n, world):
    for epoch in range(3):
        seen = []
        for rank in range(world):
            for w in range(2):
                for b in shardtools.partition(n, rank=rank, world=world, worker=w, workers=2, batch_size=2,
                                             shuffle=True, seed=5, epoch=epoch):
                    seen.extend(b.tolist())
        assert sorted(seen) == list(range(n))
    assert partition.epoch_order(n, shuffle=True, seed=5, epoch=0).tolist() != \
        partition.epoch_order(n, shuffle=True, seed=5, epoch=1).tolist()


def test_exact_rank_slices_and_equal_cut():
    order = partition.epoch_order(10, shuffle=True, seed=1, epoch=2)
    assert order.tolist() == np.random.default_rng([1, 2]).permutation(10).tolist()
    assert partition.rank_clips(10, rank=1, world=3, shuffle=False).tolist() == [1, 4, 7]
    assert partition.rank_clips(10, rank=0, world=3, shuffle=False).tolist() == [0, 3, 6, 9]
    assert [len(partition.rank_clips(10, rank=r, world=3, shuffle=True, equal=True)) for r in range(3)] == [3, 3, 3]
    bs = partition.batches(np.arange(7), 3, drop_last=False)
    assert [b.tolist() for b in bs] == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(partition.batches(np.arange(7), 3, drop_last=True)) == 2 == partition.num_batches(7, 3, drop_last=True)
    assert partition.num_batches(7, 3, drop_last=False) == 3
    assert shardtools.worker_batches(list("abcde"), 1, 2) == ["b", "d"]
    with pytest.raises(ValueError):
        partition.rank_clips(5, rank=3, world=3, shuffle=False)

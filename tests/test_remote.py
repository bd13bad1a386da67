"""Shards on object storage (pipelines/shards/cache.py, pipelines/shards/direct.py) against a real S3 server (moto)."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import ClassVar

import numpy as np
import pyarrow.fs as pafs
import pytest
from test_reader import fake_jpeg, write_split

from pipelines.shards import cache as remote, storage
from pipelines.errors import ShardError
from pipelines.shards.reader import ShardDataset
from pipelines.shards.api import ShardReader
from pipelines.shards.direct import RemoteShardDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def upload(local, uri) -> None:
    fs, root = storage.resolve(uri)
    pafs.copy_files(str(local), root, destination_filesystem=fs)


@pytest.fixture
def remote_ds(s3_server, tmp_path):
    """A small split (2 shards, record batches of 3 clips) on local disk and at a fresh s3:// prefix."""
    local = tmp_path / "local"
    write_split(local)
    uri = f"{s3_server.bucket('shards')}/{uuid.uuid4().hex[:8]}"
    upload(local, uri)
    return local, uri


def shard_gets(requests, name="shard-") -> dict:
    """GET requests per shard object."""
    out: dict = {}
    for r in requests:
        if r["method"] == "GET" and name in r["url"]:
            key = r["url"].split("?")[0].rsplit("/", 1)[1]
            out[key] = out.get(key, 0) + 1
    return out


# ----------------------------------------------------------------------------------------------- direct mode
def test_direct_mode_reads_every_frame_as_the_local_reader(remote_ds):
    local_dir, uri = remote_ds
    local = ShardDataset(local_dir, "train")
    ds = remote.open_shards(uri, "train", cache_dir=None)
    assert isinstance(ds, RemoteShardDataset)
    assert isinstance(ds, ShardReader) and isinstance(local, ShardReader)  # the one reader interface
    for reader in (ds, local):  # one offsets reader: the same range check
        with pytest.raises(IndexError, match="frame 99 out of range for clip 3 with"):
            reader.frames(3, [0, 99])
    assert (len(ds), ds.dataset, ds.split, ds.classes) == (len(local), "jester", "train", local.classes)
    ml, mr = local.metadata(), ds.metadata()
    assert mr["key"] == ml["key"] == [f"v{i}" for i in range(12)]
    for k in ("label", "num_frames", "height", "width"):
        np.testing.assert_array_equal(mr[k], ml[k])
    for i in range(len(local)):
        n = int(ml["num_frames"][i])
        want = [n - 1, 0, 1, 1, n - 1]  # repeats, out of order, a run of neighbours
        got = ds.frames(i, want)
        assert [bytes(g) for g in got] == [bytes(x) for x in local.frames(i, want)] == [fake_jpeg(i, j) for j in want]
        assert all(g.dtype == np.uint8 for g in got)
    with pytest.raises(IndexError):
        ds.frames(0, [3])
    with pytest.raises(IndexError):
        ds.frames(12, [0])
    # a DataLoader worker gets a copy without handles and re-opens them
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._files == {} and bytes(clone.frames(9, [2])[0]) == fake_jpeg(9, 2)


class _Counting:
    """A pyarrow random-access file that records every ``read_at`` (bytes asked for) before passing it on."""

    log: ClassVar[list] = []

    def __init__(self, f):
        self.f = f

    def size(self):
        return self.f.size()

    def read_at(self, n, offset):
        _Counting.log.append((offset, n))
        return self.f.read_at(n, offset)


class _CountingDataset(RemoteShardDataset):
    def _open_file(self, s):
        return _Counting(super()._open_file(s))


def test_direct_clip_read_moves_only_its_frames_bytes(s3_server, tmp_path):
    big = lambda k, j: fake_jpeg(k, j) + bytes([k % 251, j]) * 3000
    local = tmp_path / "big"
    os.makedirs(local / "train")
    import pyarrow as pa

    from pipelines.shards import format as fmt
    path = local / fmt.shard_name("train", 0)
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, fmt.SCHEMA) as w:
        for a in range(0, 8, 4):
            ids = range(a, a + 4)
            w.write_batch(pa.record_batch([
                pa.array([f"v{k}" for k in ids]), pa.array([0] * 4, pa.int32()), pa.array([10] * 4, pa.int32()),
                pa.array([[big(k, j) for j in range(10)] for k in ids], pa.list_(pa.binary())),
                pa.array([48] * 4, pa.int32()), pa.array([64] * 4, pa.int32())], schema=fmt.SCHEMA))
    data = path.read_bytes()
    import json
    (local / fmt.MANIFEST_NAME).write_text(json.dumps({
        "format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "dataset": "jester", "classes": ["a"], "seed": 0,
        "splits": {"train": {"clips": 8, "frames": 80, "shards": [
            {"path": fmt.shard_name("train", 0), "clips": 8, "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}]}}}))
    uri = f"{s3_server.bucket('shards')}/big-{uuid.uuid4().hex[:6]}"
    upload(local, uri)
    _Counting.log = []
    ds = _CountingDataset(uri, "train")
    index_bytes = sum(n for _, n in _Counting.log)
    assert index_bytes < 0.05 * len(data)  # footer + metadata + offsets only
    ds.metadata()
    for clip, want in ((5, [0, 3, 7]), (2, [4, 5, 6, 9])):
        _Counting.log = []
        got = ds.frames(clip, want)
        assert [bytes(g) for g in got] == [big(clip, j) for j in want]
        frame_bytes = sum(len(big(clip, j)) for j in want)
        assert sum(n for _, n in _Counting.log) == frame_bytes  # exactly the frames, nothing else
    assert len(_Counting.log) == 2  # frames 4-6 are one request, 9 another
    ds.gap = 1 << 20  # one request per clip: the bytes between its sampled frames come too
    _Counting.log = []
    assert [bytes(g) for g in ds.frames(5, [7, 0, 3])] == [big(5, j) for j in (7, 0, 3)]
    assert _Counting.log and len(_Counting.log) == 1 and _Counting.log[0][1] == sum(len(big(5, j)) for j in range(8))


# ----------------------------------------------------------------------------------------------- cache mode
def test_local_paths_pass_through_without_a_copy(tmp_path):
    write_split(tmp_path / "d")
    for data in (tmp_path / "d", f"file://{tmp_path / 'd'}"):
        ds = remote.open_shards(data, "train", cache_dir=tmp_path / "cache")
        assert isinstance(ds, ShardDataset) and ds.root == str(tmp_path / "d")
    assert not (tmp_path / "cache").exists()


def test_cache_one_downloader_per_node_then_warm_cache_downloads_nothing(remote_ds, s3_server, tmp_path):
    local_dir, uri = remote_ds
    cache = tmp_path / "cache"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pipelines.shards import cache as remote; "
            "print(remote.ShardCache(sys.argv[2], sys.argv[3]).fetch(['train']))")
    with s3_server.recording() as reqs:  # three "ranks" of one node start together
        procs = [subprocess.Popen([sys.executable, "-c", code, ROOT, uri, str(cache)], stdout=subprocess.PIPE,
                                  text=True, env={**os.environ}) for _ in range(3)]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and outs[0].startswith(str(cache))
    assert shard_gets(reqs) == {"shard-00000.arrow": 1, "shard-00001.arrow": 1}  # each shard fetched once
    with s3_server.recording() as reqs:
        ds = remote.open_shards(uri, "train", cache_dir=cache)
    assert isinstance(ds, ShardDataset) and ds.root == outs[0]
    assert shard_gets(reqs) == {} and {r["url"].rsplit("/", 1)[1] for r in reqs} == {"manifest.json"}
    local = ShardDataset(local_dir, "train")
    ds.verify()
    for i in range(len(local)):
        assert [bytes(x) for x in ds.frames(i, [0, 2])] == [bytes(x) for x in local.frames(i, [0, 2])]


def test_partial_file_of_a_killed_download_is_removed_and_only_missing_shards_fetched(remote_ds, s3_server, tmp_path):
    _, uri = remote_ds
    c = remote.ShardCache(uri, tmp_path / "cache")
    c.fetch()
    done, killed = c.path("train", 0), c.path("train", 1)
    kept = done.stat().st_ino  # a download writes a temp file and renames it: a new inode (the mtime is the
    # cache's last-use time, touched on every use)
    killed.unlink()  # what kill -9 mid-download leaves: the finished shard and a partial temporary file
    stale = killed.with_name(f".{killed.name}.tmp-99999")
    stale.write_bytes(b"partial")
    with s3_server.recording() as reqs:
        path = remote.ShardCache(uri, tmp_path / "cache").fetch()
    assert shard_gets(reqs) == {"shard-00001.arrow": 1}
    assert path == str(c.dir) and not stale.exists() and done.stat().st_size == c.entries("train")[0]["bytes"]
    assert done.stat().st_ino == kept  # the finished shard was not downloaded again
    ShardDataset(path, "train", verify=True)


def test_download_killed_with_sigkill_resumes(s3_server, tmp_path):
    import signal

    import s3server

    local = tmp_path / "local"
    write_split(local, shard_sizes=(4, 4, 4), frames=lambda i: 60)  # ~4 KB shards
    uri = f"{s3_server.bucket('shards')}/kill-{uuid.uuid4().hex[:6]}"
    upload(local, uri)
    proxy = s3server.SlowProxy(s3_server.port, delay=0.05, chunk=512)  # ~10 KB/s: a shard takes ~0.4 s
    cache = tmp_path / "cache"
    slow = f"{uri}?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pipelines.shards import cache as remote; "
            "remote.ShardCache(sys.argv[2], sys.argv[3], threads=1).fetch(['train'])")
    proc = subprocess.Popen([sys.executable, "-c", code, ROOT, slow, str(cache)], env={**os.environ})
    try:
        c = remote.ShardCache(uri, cache)
        first, last = c.path("train", 0), c.path("train", 2)
        deadline = time.monotonic() + 60
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proxy.close()
    assert proc.returncode == -signal.SIGKILL and first.exists() and not last.exists()
    with s3_server.recording() as reqs:
        path = remote.ShardCache(uri, cache).fetch(["train"])
    gets = shard_gets(reqs)
    assert "shard-00000.arrow" not in gets and gets.get("shard-00002.arrow") == 1
    assert not list(cache.rglob(".*.tmp-*"))
    ShardDataset(path, "train", verify=True)


def test_mismatching_shard_is_fetched_once_more_then_refused(remote_ds, s3_server, tmp_path, caplog):
    local_dir, uri = remote_ds
    fs, root = storage.resolve(uri)
    bad = bytearray((local_dir / "train" / "shard-00001.arrow").read_bytes())
    bad[len(bad) // 2] ^= 0x40  # same size, one flipped bit: only the sha256 can tell
    with fs.open_output_stream(f"{root}/train/shard-00001.arrow") as f:
        f.write(bytes(bad))
    with caplog.at_level(logging.WARNING, "pipelines.shards.cache"), s3_server.recording() as reqs, \
            pytest.raises(ShardError) as e:
        remote.ShardCache(uri, tmp_path / "cache").fetch()
    msg = str(e.value)
    assert f"{uri}/train/shard-00001.arrow: downloaded twice" in msg and "verify" in msg and "\n" not in msg
    assert shard_gets(reqs)["shard-00001.arrow"] == 2
    assert sum("fetching once more" in r.getMessage() for r in caplog.records) == 1
    cached = remote.ShardCache(uri, tmp_path / "cache").path("train", 1)
    assert not cached.exists() and not list(cached.parent.glob(".*tmp*"))


def test_cache_disk_full_is_one_line_and_keeps_nothing_partial(s3_server, tmp_path):
    local = tmp_path / "local"
    write_split(local, shard_sizes=(40, 40), frames=lambda i: 200)  # two shards of ~150 KB
    uri = f"{s3_server.bucket('shards')}/full-{uuid.uuid4().hex[:6]}"
    upload(local, uri)
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        with pytest.raises(ShardError) as e:
            remote.ShardCache(uri, small, threads=1).fetch()
        msg = str(e.value)
        assert "cannot write the shard cache (No space left on device); free space in" in msg and "\n" not in msg
        assert not list(small.rglob(".*.tmp-*"))  # the partial file is removed
        done = list(small.rglob("*.arrow"))
        assert len(done) <= 1 and all(p.stat().st_size == local.joinpath("train", p.name).stat().st_size for p in done)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, check=False)


def test_size_limited_cache_prefetches_and_evicts_least_recently_used(s3_server, tmp_path):
    local_dir = tmp_path / "local"
    write_split(local_dir, shard_sizes=(3, 3, 3, 3), rows_per_batch=2)
    uri = f"{s3_server.bucket('shards')}/lru-{uuid.uuid4().hex[:6]}"
    upload(local_dir, uri)
    local = ShardDataset(local_dir, "train")
    sizes = [e["bytes"] for e in local.entries]
    max_gb = (max(sizes) * 2 + 1) / 1e9  # room for two shards
    ds = remote.open_shards(uri, "train", cache_dir=tmp_path / "cache", max_gb=max_gb)
    assert isinstance(ds, RemoteShardDataset)
    cache = ds.cache

    def cached():
        return [s for s in range(4) if cache.path("train", s).exists()]

    ds.prefetch([4, 1, 5])  # clips of shards 1, 0
    assert cached() == [0, 1]
    time.sleep(0.01)
    ds.prefetch([3])  # shard 1 used again: shard 0 is now the least recently used
    ds.prefetch([6, 7])  # shard 2 needs room
    assert cached() == [1, 2]
    with s3_server.recording() as reqs:
        got = [bytes(x) for x in ds.frames(4, [0, 1])]  # cached: read from the local copy
    assert got == [fake_jpeg(4, 0), fake_jpeg(4, 1)] and shard_gets(reqs) == {}
    assert cache.prefetch("train", [0, 3, 6, 9]) == [0, 1]  # only two fit
    for i in range(len(local)):  # on-demand fetches for the rest, never more than two shards on disk
        n = int(local.metadata()["num_frames"][i])
        assert [bytes(x) for x in ds.frames(i, range(n))] == [fake_jpeg(i, j) for j in range(n)]
        assert sum(cache.path("train", s).stat().st_size for s in cached()) <= max_gb * 1e9
    with pytest.raises(ShardError, match="more than the cache's max_gb"):
        cache.fetch()


# ----------------------------------------------------------------------------------------------- bad input
def test_unreachable_endpoint_fails_fast_with_one_line(tmp_path):
    s3_closed = socket.socket()
    s3_closed.bind(("127.0.0.1", 0))
    port = s3_closed.getsockname()[1]
    s3_closed.close()  # nothing listens there now
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    conns = []
    threading.Thread(target=lambda: conns.append(silent.accept()), daemon=True).start()
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for p in (port, silent.getsockname()[1]):
            uri = f"s3://bkt/ds?endpoint_override=127.0.0.1:{p}&scheme=http"
            t = time.monotonic()
            with pytest.raises(ShardError) as e:
                remote.open_shards(uri, "train", cache_dir=tmp_path, timeouts={"request": 1, "attempts": 2})
            assert time.monotonic() - t < 15
            msg = str(e.value)
            assert msg.startswith("s3://bkt/ds/manifest.json: cannot reach the object store at")
            assert "endpoint_override" in msg and "\n" not in msg and "Traceback" not in msg
    finally:
        silent.close()
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_missing_bucket_names_the_bucket(s3_server, tmp_path):
    with pytest.raises(ShardError) as e:
        remote.open_shards("s3://no-such-bucket/jester", "train", cache_dir=tmp_path)
    assert str(e.value) == ("s3://no-such-bucket/jester/manifest.json: bucket 'no-such-bucket' does not exist at this "
                            "endpoint; check the bucket name in the URI and AWS_ENDPOINT_URL")
    s3_server.bucket("empty-bucket")
    with pytest.raises(ShardError, match=r"^s3://empty-bucket/x/manifest.json: manifest not found"):
        remote.open_shards("s3://empty-bucket/x", "train", cache_dir=None)


def test_missing_credentials_is_one_clear_line(s3_server, tmp_path, monkeypatch):
    for k in storage._CRED_ENV + ("AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
    t = time.monotonic()
    for cache_dir in (tmp_path / "cache", None):
        with pytest.raises(ShardError) as e:
            remote.open_shards("s3://shards/jester", "train", cache_dir=cache_dir)
        assert str(e.value).startswith("s3://shards/jester: no S3 credentials found: set AWS_ACCESS_KEY_ID")
    assert time.monotonic() - t < 5
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\naws_access_key_id = testing\n"
                                                   "aws_secret_access_key = testing\n")
    with pytest.raises(ShardError, match="manifest not found"):  # now the request is made
        remote.open_shards(f"{s3_server.bucket('shards')}/nothing-here", "train", cache_dir=None)


def test_wrong_credentials_are_access_denied(s3_server, tmp_path):
    import s3server

    strict = s3server.S3Server(tmp_path / "moto.log", env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # checks keys
    try:
        uri = f"s3://shards/jester?endpoint_override=127.0.0.1:{strict.port}&scheme=http"
        with pytest.raises(ShardError) as e:
            remote.open_shards(uri, "train", cache_dir=None)
        msg = str(e.value)
        assert msg.startswith("s3://shards/jester/manifest.json: access denied (") and "ACCESS_DENIED" in msg
        assert msg.endswith("check the credentials (AWS_* variables, profile) and bucket policy")
    finally:
        strict.stop()


def test_shard_missing_from_the_store(remote_ds, tmp_path):
    _, uri = remote_ds
    fs, root = storage.resolve(uri)
    fs.delete_file(f"{root}/train/shard-00000.arrow")
    with pytest.raises(ShardError, match=r"shard-00000.arrow: shard listed in the manifest is missing"):
        remote.open_shards(uri, "train", cache_dir=tmp_path)
    with pytest.raises(ShardError, match=r"shard-00000.arrow: shard listed in the manifest is missing"):
        remote.open_shards(uri, "train", cache_dir=None)


# ----------------------------------------------------------------------------------------------- with the converter
def test_converted_dataset_on_s3_reads_like_the_local_conversion(make_raw, s3_server, tmp_path):
    from pipelines.ingest.convert import convert_dataset

    tree = make_raw("jester")
    uri = f"{s3_server.bucket('converted')}/jester-{uuid.uuid4().hex[:6]}"
    convert_dataset("jester", tree["root"], uri, splits="train,val", shard_mb=0.01)
    convert_dataset("jester", tree["root"], tmp_path / "local", splits="train,val", shard_mb=0.01)
    for split in ("train", "val"):
        local = ShardDataset(tmp_path / "local", split)
        cached = remote.open_shards(uri, split, cache_dir=tmp_path / "cache")
        direct = remote.open_shards(uri, split, cache_dir=None)
        assert len(local.entries) > 1 and cached.metadata()["key"] == direct.metadata()["key"] == local.metadata()["key"]
        for i in range(len(local)):
            idx = list(range(int(local.metadata()["num_frames"][i])))
            want = [bytes(x) for x in local.frames(i, idx)]
            assert [bytes(x) for x in cached.frames(i, idx)] == want == [bytes(x) for x in direct.frames(i, idx)]


@pytest.mark.parametrize("cache", ["dir", "none", "limited"])
def test_loaders_read_s3_shards_like_local_ones(make_raw, s3_server, tmp_path, cache):
    """build_loader over an s3:// dataset (node-local cache, direct range reads, a size-limited cache that
    prefetches each pass's shards) gives the local shards' batches exactly, mid-epoch start included."""
    import torch

    from pipelines.ingest.convert import convert_dataset
    from pipelines.loader import build_loader

    tree = make_raw("jester")
    uri = f"{s3_server.bucket('loaders')}/jester-{uuid.uuid4().hex[:6]}"
    convert_dataset("jester", tree["root"], uri, splits="train", shard_mb=0.01)
    convert_dataset("jester", tree["root"], tmp_path / "local", splits="train", shard_mb=0.01)
    kw = dict(mode="train", batch_size=2, num_segments=4, size=32, workers=0, seed=3)
    sizes = sorted(e["bytes"] for e in storage.read_manifest_raw(uri)[2]["splits"]["train"]["shards"])
    assert len(sizes) >= 3
    two = (sizes[-1] + sizes[-2]) / 1e9  # room for two shards, not all: evictions happen
    remote_kw = {"dir": dict(cache_dir=str(tmp_path / "cache")), "none": dict(cache_dir="none"),
                 "limited": dict(cache_dir=str(tmp_path / "cache"), cache_max_gb=two)}[cache]
    local = build_loader(tmp_path / "local", "train", **kw)
    got = build_loader(uri, "train", **kw, **remote_kw)
    for loader in (local, got):
        loader.set_epoch(1, start=1)
    want = list(local)
    out = list(got)
    assert len(out) == len(want) == len(local) - 1 > 0
    for (a, al), (b, bl) in zip(out, want, strict=True):
        assert torch.equal(a, b) and torch.equal(al, bl)
    if cache != "none":
        assert any((tmp_path / "cache").rglob("shard-*.arrow"))


def test_config_remote_fields_reach_the_direct_reader(make_raw, s3_server, tmp_path):
    """--cache-dir none with --remote-gap/--remote-threads/timeouts: the trainer's loader reads by range requests
    with exactly those settings, and yields the local shards' batches."""
    import torch

    from pipelines.ingest.convert import convert_dataset
    from pipelines.loader import build_loader
    from trainer import data
    from trainer.config import make_config
    from trainer.dist import DistInfo

    tree = make_raw("jester")
    uri = f"{s3_server.bucket('config')}/jester-{uuid.uuid4().hex[:6]}"
    convert_dataset("jester", tree["root"], uri, splits="train", shard_mb=0.01)
    convert_dataset("jester", tree["root"], tmp_path / "local", splits="train", shard_mb=0.01)
    cfg = make_config({"dataset": "jester", "data": uri, "cache_dir": "none", "device": "cpu", "batch_size": "2",
                       "workers": "0", "num_segments": "4", "size": "32", "seed": "3", "remote_threads": "3",
                       "remote_gap": "100000", "remote_connect_s": "2", "remote_request_s": "7",
                       "remote_attempts": "2"})
    got = data.build(cfg, DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu")), "train", "train")
    assert isinstance(got.shards, RemoteShardDataset)
    assert (got.shards.threads, got.shards.gap) == (3, 100000)
    assert got.shards.timeouts == {"connect": 2.0, "request": 7.0, "attempts": 2}
    local = build_loader(tmp_path / "local", "train", mode="train", batch_size=2, num_segments=4, size=32,
                         workers=0, seed=3)
    for (a, al), (b, bl) in zip(got, local, strict=True):
        assert torch.equal(a, b) and torch.equal(al, bl)

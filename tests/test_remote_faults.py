"""Direct mode (pipelines/shards/direct.py: the hand-written Arrow footer reader and range reads) against a
failing S3 server: moto behind tests/s3server.py's FaultProxy, which answers chosen range requests with an error
status, fewer bytes than asked, a connection cut mid-body, or corrupt bytes.

Every fault is one ShardError line naming the shard (never another exception, never wrong bytes returned as
frames), and once the server behaves again the same dataset object reads every frame correctly.
"""
from __future__ import annotations

import uuid

import pyarrow.fs as pafs
import pytest
from test_reader import fake_jpeg, write_split

from pipelines.errors import ShardError
from pipelines.shards import storage
from pipelines.shards.direct import RemoteShardDataset

SHORT_READ = pytest.mark.xfail(reason=(
    "pyarrow's S3 read_at, given a 206 answer with fewer bytes than asked (Content-Length and Content-Range saying "
    "so), returns a buffer of the asked length whose tail is uninitialised memory: direct.read's length check "
    "cannot see it, so the reader gets garbage (the frame bytes, or a footer that may or may not fail to parse). "
    "Needs a fix in pipelines/shards/direct.py (e.g. a per-frame checksum) or pyarrow"), strict=False)
FAST = {"connect": 2.0, "request": 5.0, "attempts": 1}  # one try: the injected fault is what the reader sees


@pytest.fixture
def proxied(s3_server, tmp_path, monkeypatch):
    """(proxy, uri): a small split uploaded to moto, the S3 client pointed at a fault proxy in front of it."""
    import s3server

    local = tmp_path / "local"
    write_split(local)  # 2 shards of 7 and 5 clips, record batches of 3
    uri = f"{s3_server.bucket('faults')}/{uuid.uuid4().hex[:8]}"
    fs, root = storage.resolve(uri)
    pafs.copy_files(str(local), root, destination_filesystem=fs)
    proxy = s3server.FaultProxy(s3_server.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        yield proxy, uri
    finally:
        proxy.close()


def _open(uri) -> RemoteShardDataset:
    return RemoteShardDataset(uri, "train", timeouts=FAST, threads=4)


def _all_frames_right(ds) -> None:
    meta = ds.metadata()
    assert meta["key"] == [f"v{i}" for i in range(12)]
    for i in range(len(ds)):
        idx = list(range(int(meta["num_frames"][i])))
        assert [bytes(b) for b in ds.frames(i, idx)] == [fake_jpeg(i, j) for j in idx]


def _shard1(path: str) -> bool:
    return path.endswith("shard-00001.arrow")


@pytest.mark.parametrize("fault,message", [
    (("status", 500), "range read failed"),
    (("status", 403), "range read failed"),
    pytest.param(("short", 3), "short read", marks=SHORT_READ),
    (("cut", 2), "range read failed"),
], ids=["500", "403", "short-read", "connection-cut"])
def test_frame_read_faults_are_one_error_then_recover(proxied, fault, message):
    proxy, uri = proxied
    ds = _open(uri)  # index read while the server is healthy
    proxy.fault = lambda path, first, last, body: fault if _shard1(path) else None
    with pytest.raises(ShardError, match=message) as e:
        ds.frames(8, [0, 2])  # clip 8 is in shard 1 (rows 7..11); frames 0 and 2: two range requests
    assert "shard-00001.arrow" in str(e.value) and "\n" not in str(e.value)
    assert proxy.hits >= 1
    assert [bytes(b) for b in ds.frames(0, [0, 1])] == [fake_jpeg(0, 0), fake_jpeg(0, 1)]  # shard 0 unaffected
    proxy.fault = None
    _all_frames_right(ds)  # no poisoned handle or cache: the same object reads everything once the server is fine


@pytest.mark.parametrize("fault,message", [
    (("status", 500), "range read failed"),
    pytest.param(("short", 100), "short read", marks=SHORT_READ),
    (("cut", 50), "range read failed"),
], ids=["500", "short-read", "connection-cut"])
def test_index_read_faults_fail_the_open_with_one_error(proxied, fault, message):
    proxy, uri = proxied
    proxy.fault = lambda path, first, last, body: fault if _shard1(path) else None
    with pytest.raises(ShardError, match=message) as e:
        _open(uri)
    assert "shard-00001.arrow" in str(e.value) and "\n" not in str(e.value)
    proxy.fault = None
    _all_frames_right(_open(uri))


def _corrupt_tail(offset_from_end: int, value: int | None = None):
    """A fault that changes the byte ``offset_from_end`` bytes before the end of shard 1 in any range holding it."""
    def fault(path, first, last, body):
        if not _shard1(path):
            return None
        size = _corrupt_tail.size
        at = size - offset_from_end
        if not first <= at <= last:
            return None
        b = bytearray(body)
        b[at - first] = (b[at - first] ^ 0xFF) if value is None else value
        return ("body", bytes(b))
    return fault


@pytest.mark.parametrize("offset_from_end", [1, 6, 7, 8, 10, 11, 14, 20, 40, 80, 120, 160, 200])
def test_corrupt_footer_is_one_error_never_garbage(proxied, offset_from_end):
    """Bytes of the footer region flipped one at a time (magic, footer length, the flatbuffer's tables, vtables,
    block offsets and the schema): opening the split is a ShardError naming the shard, or -- where the byte does
    not matter to the reader -- every frame still reads right."""
    proxy, uri = proxied
    fs, root = storage.resolve(uri)
    _corrupt_tail.size = fs.get_file_info(storage.join(root, "train/shard-00001.arrow")).size
    proxy.fault = _corrupt_tail(offset_from_end)
    try:
        ds = _open(uri)
    except ShardError as e:
        assert "shard-00001.arrow" in str(e) and "\n" not in str(e)
        assert any(w in str(e) for w in ("footer", "Arrow IPC", "record batch", "schema", "frame offsets",
                                         "keys column", "clips")), str(e)
    else:
        _all_frames_right(ds)
    assert proxy.hits >= 1, "the fault never touched the footer read"


def test_corrupt_magic_and_footer_length_name_the_problem(proxied):
    proxy, uri = proxied
    fs, root = storage.resolve(uri)
    _corrupt_tail.size = fs.get_file_info(storage.join(root, "train/shard-00001.arrow")).size
    proxy.fault = _corrupt_tail(1)  # the last byte of the trailing ARROW1
    with pytest.raises(ShardError, match=r"shard-00001\.arrow: not an Arrow IPC file"):
        _open(uri)
    proxy.fault = _corrupt_tail(7, 0x7F)  # the high byte of the int32 footer length: far larger than the file
    with pytest.raises(ShardError, match=r"shard-00001\.arrow: corrupt Arrow footer length"):
        _open(uri)

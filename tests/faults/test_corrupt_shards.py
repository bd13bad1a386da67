"""A shard truncated or bit-flipped after conversion is detected when the split is opened or by ``verify``;
reading never returns a silently wrong clip without one of the two saying so, and no other exception type
escapes (only ShardError / DataError).

Seeded positions: bit flips anywhere in the file (header, record batches, frame bytes, footer) and cuts at
any length. For each: open the split and read every clip's metadata and frames; then ``shards.verify``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines.shards import reader
from pipelines.errors import DataError, ShardError
from pipelines.shards.reader import ShardDataset

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    from rawtrees import make_jester

    from pipelines.ingest.convert import convert_dataset

    base = tmp_path_factory.mktemp("corrupt")
    make_jester(base / "raw", n_train=6, n_val=1, n_test=1, seed=2)
    convert_dataset("jester", base / "raw", base / "shards", splits="train", shard_mb=1.0)
    return base / "shards"


def _read_all(root: Path) -> None:
    ds = ShardDataset(root, "train")
    meta = ds.metadata()
    for i in range(len(ds)):
        ds.frames(i, range(int(meta["num_frames"][i])))


def _check(root: Path) -> str:
    """'open' if opening/reading the split raised ShardError, else 'verify' (verify must raise)."""
    try:
        _read_all(root)
    except DataError:
        where = "open"
    else:
        where = "verify"
    with pytest.raises(ShardError):
        reader.verify(root)
    return where


def _copy(clean: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(clean, dst)
    return dst


def test_bitflips_detected(clean, tmp_path, scale, record):
    shard = next((clean / "train").glob("*.arrow"))
    size = shard.stat().st_size
    rng = np.random.default_rng(7)
    n = scale(25, 300)
    # half the flips land in the last 2 KiB (Arrow footer, schema, batch metadata), half anywhere
    pos = np.concatenate([rng.integers(max(0, size - 2048), size, n // 2), rng.integers(0, size, n - n // 2)])
    stats = Counter()
    for p in pos:
        root = _copy(clean, tmp_path / "c")
        f = root / "train" / shard.name
        b = bytearray(f.read_bytes())
        b[int(p)] ^= 1 << int(rng.integers(8))
        f.write_bytes(bytes(b))
        stats[_check(root)] += 1
    record("bit flip in a shard after conversion (seeded positions; footer-heavy)", n,
           f"{n}/{n} detected: {stats['open']} when the split is opened or read, {stats['verify']} by `verify` "
           "(sha256); 0 other exception types", area="shards")


def test_truncations_detected(clean, tmp_path, scale, record):
    shard = next((clean / "train").glob("*.arrow"))
    size = shard.stat().st_size
    rng = np.random.default_rng(8)
    n = scale(8, 60)
    cuts = sorted(set([0, 1, size - 1] + [int(x) for x in rng.integers(0, size, n)]))[:n]
    stats = Counter()
    for c in cuts:
        root = _copy(clean, tmp_path / "t")
        f = root / "train" / shard.name
        f.write_bytes(f.read_bytes()[:c])
        stats[_check(root)] += 1
    assert stats["verify"] == 0  # a size change is always caught at open
    record("shard truncated after conversion (seeded lengths)", len(cuts),
           f"{len(cuts)}/{len(cuts)} detected when the split is opened (size differs from the manifest); "
           "`verify` also fails", area="shards")


def test_verify_cli_names_the_shard(clean, tmp_path, record):
    root = _copy(clean, tmp_path / "v")
    f = next((root / "train").glob("*.arrow"))
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_dataset.py"), "verify", str(root),
                        "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(f) in r.stderr and "sha256" in r.stderr
    record("`convert_dataset.py verify` on a bit-flipped shard", 1,
           "exit 1, one line naming the shard and the sha256 mismatch", area="shards")


def test_manifest_mutations(clean, tmp_path, scale, record):
    text = (clean / "manifest.json").read_text()
    rng = np.random.default_rng(9)
    n = scale(30, 300)
    stats = Counter()
    for _ in range(n):
        b = bytearray(text.encode())
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        root = _copy(clean, tmp_path / "m")
        (root / "manifest.json").write_bytes(bytes(b))
        try:
            _read_all(root)
            reader.verify(root)
        except DataError:
            stats["error"] += 1
        else:
            m = json.loads(bytes(b))  # accepted: then it must still describe the same shards
            assert m["splits"]["train"]["shards"] == json.loads(text)["splits"]["train"]["shards"]
            stats["valid"] += 1
    record("random byte changes in manifest.json", n,
           f"{stats['error']} clear ShardError, {stats['valid']} accepted (change outside the shard list and hashes, "
           "e.g. in a class name or whitespace); "
           "0 other exception types", area="shards")

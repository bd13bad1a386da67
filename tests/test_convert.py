"""Conversion engine + CLI: byte identity, exact manifests, determinism, bad input, kill -9 resume."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rawtrees
import shardtools
from pipelines.shards import reader
from pipelines.ingest.convert import convert_dataset
from pipelines.errors import AnnotationError, DataError, FrameError

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(ROOT / "tools" / "convert_dataset.py")]
NAMES = ["jester", "sthv2", "egogesture"]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _stored(out, split) -> dict:
    return {r["key"]: r for r in shardtools.iter_clips(out, split)}


def _check_against_tree(out, tree, m):
    for split, clips in tree["clips"].items():
        got = _stored(out, split)
        assert set(got) == set(clips)
        for key, c in clips.items():
            row = got[key]
            assert row["label"] == c["label"]
            assert row["frames"] == [Path(f).read_bytes() for f in c["files"]]  # byte-identical
            assert row["num_frames"] == len(c["files"]) and (row["height"], row["width"]) == (48, 64)
        assert m["splits"][split]["frames"] == sum(len(c["files"]) for c in clips.values())


@pytest.mark.parametrize("name", NAMES)
def test_convert_is_byte_identical_and_manifest_exact(name, make_raw, tmp_path):
    tree = make_raw(name)
    out = tmp_path / "out"
    m = convert_dataset(name, tree["root"], out, shard_mb=0.02, seed=3)
    reader.verify(out)
    _check_against_tree(out, tree, m)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == m
    assert list(m) == ["format", "version", "dataset", "classes", "seed", "splits", "skipped", "options"]
    assert (m["format"], m["version"], m["dataset"], m["seed"], m["skipped"]) == ("action-shards", 1, name, 3, [])
    assert m["classes"] == tree["classes"]
    assert list(m["splits"]) == ["train", "val", "test"]
    for split, s in m["splits"].items():
        assert s["clips"] == len(tree["clips"][split])
        assert [x["path"] for x in s["shards"]] == [f"{split}/shard-{i:05d}.arrow" for i in range(len(s["shards"]))]
        for x in s["shards"]:
            p = out / x["path"]
            assert x["sha256"] == _sha(p) and x["bytes"] == p.stat().st_size
        assert sorted(os.listdir(out / split)) == [Path(x["path"]).name for x in s["shards"]]
    assert len(m["splits"]["train"]["shards"]) > 1


@pytest.mark.parametrize("name", NAMES)
def test_same_sha_whatever_workers(name, make_raw, tmp_path):
    tree = make_raw(name)
    m1 = convert_dataset(name, tree["root"], tmp_path / "w1", shard_mb=0.015, workers=1)
    m2 = convert_dataset(name, tree["root"], tmp_path / "w2", shard_mb=0.015, workers=2)
    assert m1 == m2
    assert sum(len(s["shards"]) for s in m1["splits"].values()) >= 4
    m3 = convert_dataset(name, tree["root"], tmp_path / "w1", shard_mb=0.015, workers=1)  # rerun in place
    assert m3 == m1
    m4 = convert_dataset(name, tree["root"], tmp_path / "s9", shard_mb=1000, seed=9)
    order0 = [r["key"] for r in shardtools.iter_clips(tmp_path / "w1", "train")]
    order9 = [r["key"] for r in shardtools.iter_clips(tmp_path / "s9", "train")]
    assert sorted(order0) == sorted(order9) and order0 != order9  # seed decides the shuffle
    assert m4["seed"] == 9 and len(m4["splits"]["train"]["shards"]) == 1


def test_options_limit_splits_uri(make_raw, tmp_path):
    tree = make_raw("jester")
    m = convert_dataset("jester", tree["root"], f"file://{tmp_path}/o", splits="val,test", limit=3)
    assert list(m["splits"]) == ["val", "test"]
    assert (m["splits"]["val"]["clips"], m["splits"]["test"]["clips"]) == (3, 2)
    reader.verify(tmp_path / "o")
    convert_dataset("jester", tree["root"], tmp_path / "f", splits=["val"])
    assert [r["key"] for r in shardtools.iter_clips(tmp_path / "o", "val")] == \
        [r["key"] for r in shardtools.iter_clips(tmp_path / "f", "val")][:3]
    with pytest.raises(ValueError, match="unknown split"):
        convert_dataset("jester", tree["root"], tmp_path / "x", splits="training")
    with pytest.raises(TypeError, match="drop_last_two"):
        convert_dataset("jester", tree["root"], tmp_path / "x", drop_last_two=True)


def test_egogesture_drop_last_two(make_raw, tmp_path):
    tree = make_raw("egogesture")
    convert_dataset("egogesture", tree["root"], tmp_path / "o", drop_last_two=True, splits="train")
    got = _stored(tmp_path / "o", "train")
    for key, c in tree["clips"]["train"].items():
        assert got[key]["frames"] == [Path(f).read_bytes() for f in c["files"][:-2]]


# ------------------------------------------------------------------------------------------------ bad input
def _first(tree, split="train"):
    key = sorted(tree["clips"][split])[0]
    return key, tree["clips"][split][key]


def _frame(tree, i=1):
    return _first(tree)[1]["files"][i]


def _rel(tree, p):
    return os.path.relpath(p, tree["root"])


def _jester_csv_line(tree, line):
    p = Path(tree["root"]) / "jester-v1-train.csv"
    p.write_text(p.read_text() + line + "\n")
    return f"jester-v1-train.csv:{len(p.read_text().splitlines())}"


def _sthv2_entry(tree, entry):
    p = Path(tree["root"]) / "something-something-v2-train.json"
    entries = json.loads(p.read_text())
    entries.append(entry)
    p.write_text(json.dumps(entries))
    return f"something-something-v2-train.json[{len(entries) - 1}]"


def _ego_row(tree, row):
    """Replace the first row of Subject03's Group1.csv; returns (csv rel path + ':1', that clip's key)."""
    p = Path(tree["root"]) / "labels" / "Subject03" / "Scene1" / "Group1.csv"
    lines = p.read_text().splitlines()
    lines[0] = row
    p.write_text("\n".join(lines) + "\n")
    return "labels/Subject03/Scene1/Group1.csv:1"


def _frame_case(fn):
    def mutate(tree):
        key, clip = _first(tree)
        return fn(tree, key, clip)
    return mutate


def _rmtree(tree, key, clip):
    shutil.rmtree(os.path.dirname(clip["files"][0]))
    return os.path.dirname(_rel(tree, clip["files"][0])), "frame folder is missing", {key}


def _empty(tree, key, clip):
    folder = os.path.dirname(clip["files"][0])
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f))
    return _rel(tree, folder), "frame folder is empty", {key}


def _zero(tree, key, clip):
    open(clip["files"][1], "wb").close()
    return _rel(tree, clip["files"][1]), "zero-byte frame file", {key}


def _truncated(tree, key, clip):
    p = Path(clip["files"][1])
    p.write_bytes(p.read_bytes()[:300])
    return _rel(tree, p), "truncated JPEG", {key}


def _png(tree, key, clip):
    from PIL import Image
    Image.new("RGB", (64, 48)).save(clip["files"][1], format="PNG")
    return _rel(tree, clip["files"][1]), "not a JPEG", {key}


def _gap(tree, key, clip):
    os.remove(clip["files"][1])
    return _rel(tree, clip["files"][2]), "frame-number gap", {key}


def _size(tree, key, clip):
    Path(clip["files"][2]).write_bytes(rawtrees.jpeg_bytes(__import__("numpy").random.default_rng(0), (32, 48)))
    return _rel(tree, clip["files"][2]), "all frames of a clip must have one size", {key}


FRAME_CASES = {"missing-folder": _rmtree, "empty-folder": _empty, "zero-byte": _zero, "truncated": _truncated,
               "non-jpeg": _png, "gap": _gap, "size-change": _size}


def _case_list():
    cases = []
    for name in ("jester", "sthv2"):
        for c, fn in FRAME_CASES.items():
            cases.append((name, c, _frame_case(fn)))
    cases += [
        ("jester", "unknown-label", lambda t: (_jester_csv_line(t, "99999;Waving Wildly"), "unknown label name", set())),
        ("jester", "id-dotdot", lambda t: (_jester_csv_line(t, "../x;Swiping Left"), "path separator or '..'", set())),
        ("jester", "id-slash", lambda t: (_jester_csv_line(t, "a/b;Swiping Left"), "path separator or '..'", set())),
        ("jester", "no-label", lambda t: (_jester_csv_line(t, "12"), "has no label", set())),
        ("sthv2", "unknown-label", lambda t: (_sthv2_entry(t, {"id": "5", "template": "Juggling [something]"}),
                                              "unknown label name", set())),
        ("sthv2", "id-slash", lambda t: (_sthv2_entry(t, {"id": "a/5", "template": t["classes"][0]}),
                                         "path separator or '..'", set())),
        ("sthv2", "id-dotdot", lambda t: (_sthv2_entry(t, {"id": "..", "template": t["classes"][0]}),
                                          "path separator or '..'", set())),
        ("egogesture", "start-gt-end", lambda t: (_ego_row(t, "5,9,4"), "9..4 is empty", {_first_ego(t)})),
        ("egogesture", "non-numeric-class", lambda t: (_ego_row(t, "five,2,4"), "is not a number", {_first_ego(t)})),
        ("egogesture", "out-of-range", lambda t: (_ego_row(t, "5,2,999"), "outside the", {_first_ego(t)})),
        ("egogesture", "truncated", _frame_case(_truncated)),
        ("egogesture", "gap", _frame_case(_gap)),
    ]
    return cases


def _first_ego(tree):
    return "Subject03/Scene1/rgb1#1"


@pytest.mark.parametrize("name,case,mutate", _case_list(), ids=[f"{n}-{c}" for n, c, _ in _case_list()])
def test_bad_input_strict_and_skip(name, case, mutate, make_raw, tmp_path):
    tree = make_raw(name)
    path, msg, lost = mutate(tree)
    if case == "out-of-range":
        path = "labels/Subject03/Scene1/Group1.csv#1"
    with pytest.raises(DataError, match=msg) as e:
        convert_dataset(name, tree["root"], tmp_path / "strict")
    assert os.path.join(tree["root"], path.split(":")[0].split("#")[0]) in str(e.value)
    assert not (tmp_path / "strict" / "manifest.json").exists()

    m = convert_dataset(name, tree["root"], tmp_path / "skip", skip_bad=True)
    assert [s["path"] for s in m["skipped"]] == [path]
    assert msg in m["skipped"][0]["reason"]
    reader.verify(tmp_path / "skip")
    if name == "egogesture" and case in ("truncated", "gap"):
        lost = {k for k in tree["clips"]["train"] if k.startswith("Subject03/Scene1/rgb1#")} if case == "gap" else lost
    for split, clips in tree["clips"].items():
        want = set(clips) - lost
        assert set(_stored(tmp_path / "skip", split)) == want
    # a frame problem inside a clip does not touch the other clips' bytes
    got = _stored(tmp_path / "skip", "train")
    for k in got:
        assert got[k]["frames"] == [Path(f).read_bytes() for f in tree["clips"]["train"][k]["files"]]


def test_malformed_json_is_fatal_even_with_skip_bad(make_raw, tmp_path):
    tree = make_raw("sthv2")
    p = Path(tree["root"]) / "something-something-v2-validation.json"
    p.write_text(p.read_text()[:-5])
    for skip in (False, True):
        with pytest.raises(AnnotationError, match="malformed JSON") as e:
            convert_dataset("sthv2", tree["root"], tmp_path / "o", skip_bad=skip)
        assert str(p) in str(e.value)


@pytest.mark.parametrize("name,expected", [("jester", "jester-v1-labels.csv"),
                                           ("sthv2", "something-something-v2-labels.json"),
                                           ("egogesture", "labels")])
def test_raw_is_not_a_dataset_root(name, expected, make_raw, tmp_path):
    tree = make_raw(name)
    with pytest.raises(AnnotationError, match=f"not a {name} dataset root: expected .*{expected}"):
        convert_dataset(name, os.path.join(tree["root"], "frames"), tmp_path / "o")


def test_strict_stop_keeps_finished_shards_then_resumes(make_raw, tmp_path):
    tree = make_raw("jester", n_train=5)
    clean = convert_dataset("jester", tree["root"], tmp_path / "clean", shard_mb=0.005, splits="train")
    shards = clean["splits"]["train"]["shards"]
    assert len(shards) == 5
    last_key = [r["key"] for r in shardtools.iter_clips(tmp_path / "clean", "train")][-1]
    victim = Path(tree["clips"]["train"][last_key]["files"][3])
    good = victim.read_bytes()
    victim.write_bytes(good[:-100])
    out = tmp_path / "run"
    with pytest.raises(FrameError, match="truncated"):
        convert_dataset("jester", tree["root"], out, shard_mb=0.005, splits="train")
    assert sorted(os.listdir(out / "train")) == [Path(s["path"]).name for s in shards[:-1]]
    for s in shards[:-1]:
        assert _sha(out / s["path"]) == s["sha256"]
    victim.write_bytes(good)
    assert convert_dataset("jester", tree["root"], out, shard_mb=0.005, splits="train") == clean


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)


def test_cli_convert_verify_and_errors(make_raw, tmp_path):
    tree = make_raw("jester")
    out = tmp_path / "o"
    r = _cli("jester", "--raw", tree["root"], "--out", str(out), "--workers", "2", "--shard-mb", "0.02")
    assert r.returncode == 0, r.stderr
    assert "train: 6 clips" in r.stdout
    r2 = _cli("convert", "jester", "--raw", tree["root"], "--out", str(tmp_path / "o2"), "--shard-mb", "0.02",
              "--no-progress")
    assert r2.returncode == 0, r2.stderr
    assert json.loads((out / "manifest.json").read_text()) == json.loads((tmp_path / "o2" / "manifest.json").read_text())
    r = _cli("verify", str(out))
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stderr
    _check_against_tree(out, tree, json.loads((out / "manifest.json").read_text()))
    # a corrupted shard: exit 1, one line, no traceback
    shard = out / "val" / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    r = _cli("verify", str(out), "--no-progress")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "sha256" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # bad raw input
    os.remove(tree["clips"]["train"][_first(tree)[0]]["files"][1])
    r = _cli("jester", "--raw", tree["root"], "--out", str(tmp_path / "o3"), "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "frame-number gap" in r.stderr
    r = _cli("jester", "--raw", tree["root"], "--out", str(tmp_path / "o3"), "--no-progress", "--skip-bad")
    assert r.returncode == 0 and "skipped 1" in r.stdout
    r = _cli("sthv2", "--raw", tree["root"], "--out", str(tmp_path / "o4"))
    assert r.returncode == 1 and "something-something-v2-labels.json" in r.stderr
    for args in (["--help"], ["jester", "--help"], ["egogesture", "--help"], ["verify", "--help"]):
        r = _cli(*args)
        assert r.returncode == 0 and "Usage:" in r.stdout
    assert "--drop-last-two" in _cli("egogesture", "--help").stdout
    assert "--skip-bad" in _cli("jester", "--help").stdout


# ------------------------------------------------------------------------------------------------ kill -9
_SLOW = """
import sys, time
import pipelines.shards.writer as s
_mb, _ws = s.make_batch, s.write_shard
def make_batch(*a, **k):
    time.sleep(0.2)
    return _mb(*a, **k)
def write_shard(*a, **k):
    r = _ws(*a, **k)
    time.sleep(0.2)
    return r
s.make_batch, s.write_shard = make_batch, write_shard
sys.argv[0] = "convert_dataset.py"
from tools.convert_dataset import cli
cli()
"""


def _wait_for(cond, proc, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        assert proc.poll() is None, "the conversion finished before it could be killed"
        time.sleep(0.003)
    raise AssertionError("timed out waiting for the kill point")


@pytest.mark.parametrize("point", ["after-first-shard", "mid-shard"])
def test_kill9_resume_is_byte_identical(point, make_raw, tmp_path):
    tree = make_raw("jester", n_train=6, n_val=2, n_test=2)
    args = ["jester", "--raw", tree["root"], "--shard-mb", "0.005", "--no-progress"]
    r = _cli(*args, "--out", str(tmp_path / "clean"))
    assert r.returncode == 0, r.stderr
    clean = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    clean_sha = {s["path"]: s["sha256"] for sp in clean["splits"].values() for s in sp["shards"]}

    out = tmp_path / "out"
    train = out / "train"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW, *args, "--out", str(out)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if point == "after-first-shard":
            _wait_for(lambda: (train / "shard-00000.arrow").exists(), proc)
        else:
            _wait_for(lambda: (train / "shard-00000.arrow").exists() and train.is_dir()
                      and any(".tmp-" in n for n in os.listdir(train)), proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    finals = [n for n in os.listdir(train) if n.endswith(".arrow")]
    assert finals, "nothing was finished before the kill"
    for n in finals:  # every file under a final name is complete and identical to the clean run's
        assert _sha(train / n) == clean_sha[f"train/{n}"]
    if point == "mid-shard":
        assert any(".tmp-" in n for n in os.listdir(train))  # the half-written shard is only a temp file
    first = train / "shard-00000.arrow"
    before = (first.stat().st_ino, first.stat().st_mtime_ns)

    r = _cli(*args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == before  # finished shard kept, not rewritten
    assert json.loads((out / "manifest.json").read_text()) == clean
    for p, digest in clean_sha.items():
        assert _sha(out / p) == digest
    assert not any(".tmp-" in n for d in ("train", "val", "test") for n in os.listdir(out / d))
    reader.verify(out)


def test_worker_errors_reach_the_caller(make_raw, tmp_path):
    """A DataError raised in a worker process arrives intact (class, message, path) in strict mode."""
    tree = make_raw("jester")
    key, clip = _first(tree)
    p = Path(clip["files"][4])
    p.write_bytes(p.read_bytes()[:-50])
    with pytest.raises(FrameError, match="truncated JPEG") as e:
        convert_dataset("jester", tree["root"], tmp_path / "o", workers=2, shard_mb=0.01)
    assert str(p) in str(e.value) and e.value.path == str(p)
    m = convert_dataset("jester", tree["root"], tmp_path / "o", workers=2, shard_mb=0.01, skip_bad=True)
    assert m["skipped"] == [{"path": f"frames/{key}/{p.name}", "reason": "truncated JPEG (no EOI marker at the end)"}]


def test_resume_rechecks_skips_and_edited_frames(make_raw, tmp_path):
    tree = make_raw("jester", n_train=4, n_val=1, n_test=1)
    key, clip = _first(tree)
    p = Path(clip["files"][2])
    good = p.read_bytes()
    p.write_bytes(good[:-40])
    out, kw = tmp_path / "o", {"shard_mb": 0.005, "splits": "train"}
    assert len(convert_dataset("jester", tree["root"], out, skip_bad=True, **kw)["skipped"]) == 1
    with pytest.raises(FrameError, match="truncated"):  # shards of a --skip-bad run are not reused silently
        convert_dataset("jester", tree["root"], out, **kw)
    p.write_bytes(good)
    clean = convert_dataset("jester", tree["root"], tmp_path / "clean", **kw)
    assert convert_dataset("jester", tree["root"], out, **kw) == clean
    edited = bytearray(good)
    edited[len(edited) // 2] ^= 0x01  # same size, other bytes: the resume fingerprint sees the new mtime
    before = p.stat().st_mtime_ns
    p.write_bytes(bytes(edited))
    # a coarse-mtime file system (or a fast machine) can keep the old mtime: set a later one, not a sleep
    os.utime(p, ns=(before + 2_000_000_000, before + 2_000_000_000))
    m = convert_dataset("jester", tree["root"], out, **kw)
    assert _stored(out, "train")[key]["frames"][2] == bytes(edited) and m != clean
    reader.verify(out)

"""Property-based fuzzing (hypothesis) of the three annotation readers and the sampling/crop functions.

Contract: any input gives either a valid result or the project's own error class (``DataError`` and its
subclasses); never another exception type (UnicodeDecodeError, IndexError, OverflowError, RecursionError...).
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rawtrees
from pipelines.ingest import datasets
from pipelines.plan import geometry, presets, sampling
from pipelines.ingest.datasets import Problems
from pipelines.ingest.datasets import egogesture as ego
from pipelines.errors import DataError

pytestmark = pytest.mark.faults

JESTER_NAMES = list(rawtrees.JESTER_CLASSES)
# text that looks like the real files often enough to reach the deep branches
_csv_alphabet = st.sampled_from(list("0123456789;,./\\ \t-+eE.nNaA") + ["Swiping Left", "Thumb Up", "..", "\x00",
                                                                      "\r", "\u2028", "é", "\ufeff", "nan"])
_line = st.one_of(st.text(max_size=30), st.lists(_csv_alphabet, max_size=12).map("".join))
_bytes_or_lines = st.one_of(st.binary(max_size=200), st.lists(_line, max_size=8).map(lambda ls: "\n".join(ls).encode(
    "utf-8", "surrogatepass")))


def _outcome(fn, stats: Counter):
    """Run ``fn``: count a valid result or a project error; anything else propagates (and fails the test)."""
    try:
        res = fn()
    except DataError as e:
        assert str(e).strip() and "Traceback" not in str(e)
        stats["error"] += 1
        return None
    stats["valid"] += 1
    return res


def _summary(stats: Counter, what: str) -> str:
    return (f"{stats['valid']} valid, {stats['error']} clear {what}; 0 other exception types")


# ------------------------------------------------------------------------------------------------ readers
def test_fuzz_jester_csv(tmp_path, hyp_settings, record):
    root = tmp_path / "jester"
    root.mkdir()
    stats = Counter()

    @hyp_settings
    @given(train=_bytes_or_lines, labels=st.one_of(st.just(None), _bytes_or_lines), skip=st.booleans())
    def run(train, labels, skip):
        (root / "jester-v1-labels.csv").write_bytes(
            ("\n".join(JESTER_NAMES) + "\n").encode() if labels is None else labels)
        (root / "jester-v1-train.csv").write_bytes(train)
        probs = Problems(skip_bad=skip, raw=str(root))
        refs = _outcome(lambda: datasets.get("jester").read(str(root), "train", probs), stats)
        for r in refs or ():
            assert r.key and "/" not in r.key and "\\" not in r.key and ".." not in r.key and "\x00" not in r.key
            assert 0 <= r.label < 27 and r.folder == f"frames/{r.key}"
        assert len({r.key for r in refs or ()}) == len(refs or ())

    run()
    record("malformed Jester CSV (random bytes / lines, bad labels file)", sum(stats.values()),
           _summary(stats, "AnnotationError"), area="annotations")


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=12), st.sampled_from(["..", "/etc", "a/b", "Moving [something] number 3",
                                                                "Moving something number 5", "1e999", "-1"]))
_json = st.recursive(_json_scalar, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(st.sampled_from(
                                                            ["id", "template", "label", "placeholders", "x"]) |
                                                            st.text(max_size=5), c, max_size=4)), max_leaves=12)
_entry = st.fixed_dictionaries({"id": _json_scalar}, optional={"template": _json_scalar, "label": _json_scalar})


def test_fuzz_sthv2_json(tmp_path, hyp_settings, record):
    root = tmp_path / "ssv2"
    root.mkdir()
    good_labels = json.dumps({c: str(i) for i, c in enumerate(rawtrees.sthv2_classes())})
    stats = Counter()

    @hyp_settings
    @given(train=st.one_of(st.lists(_entry, max_size=6).map(json.dumps), _json.map(json.dumps), st.binary(max_size=100)
                           .map(lambda b: b.decode("latin-1")), st.just("[" * 5000)),
           labels=st.one_of(st.just(None), _json.map(json.dumps),
                            st.dictionaries(st.text(max_size=4), _json_scalar, max_size=5).map(json.dumps),
                            st.sampled_from(['{"a": Infinity}', '{"a": "1e999"}', '{"a": 1e400}', "[" * 5000])),
           skip=st.booleans())
    def run(train, labels, skip):
        (root / "something-something-v2-labels.json").write_text(good_labels if labels is None else labels,
                                                                  encoding="utf-8", errors="surrogatepass")
        (root / "something-something-v2-train.json").write_text(train, encoding="utf-8", errors="surrogatepass")
        probs = Problems(skip_bad=skip, raw=str(root))
        refs = _outcome(lambda: datasets.get("sthv2").read(str(root), "train", probs), stats)
        for r in refs or ():
            assert r.key and "/" not in r.key and ".." not in r.key and 0 <= r.label < 174

    run()
    record("malformed SSv2 JSON (random structures, bytes, deep nesting, Infinity)", sum(stats.values()),
           _summary(stats, "AnnotationError"), area="annotations")


def test_fuzz_egogesture_csv(tmp_path, hyp_settings, record):
    stats = Counter()
    p = tmp_path / "Group1.csv"

    @hyp_settings
    @given(body=_bytes_or_lines | st.lists(st.tuples(*[st.sampled_from(
        ["1", "83", "84", "0", "-1", "5.0", "5.5", "nan", "1e400", "", " 7", "x", "9" * 5000]) for _ in range(3)]),
        max_size=6).map(lambda rows: "\n".join(",".join(r) for r in rows).encode()),
           skip=st.booleans(), drop=st.booleans())
    def run(body, skip, drop):
        p.write_bytes(body)
        rows = _outcome(lambda: ego.read_group_csv(str(p), Problems(skip_bad=skip), drop_last_two=drop), stats)
        for k, label, start, end in rows or ():
            assert 0 <= label < 83 and 1 <= start <= end and k >= 1

    run()
    record("malformed EgoGesture group CSV (random bytes, NaN, huge numbers)", sum(stats.values()),
           _summary(stats, "AnnotationError"), area="annotations")


# ------------------------------------------------------------------------------------------------ sampling
def test_fuzz_sampling(hyp_settings, record):
    stats = Counter()

    @hyp_settings
    @given(n=st.integers(-3, 5000), t=st.integers(-2, 70), k=st.integers(-1, 12),
           mode=st.sampled_from(["train", "val", "test"]), ts=st.sampled_from(["uniform", "random"]),
           seed=st.integers(0, 2**32 - 1))
    def run(n, t, k, mode, ts, seed):
        rng = np.random.default_rng(seed)
        idx = _outcome(lambda: sampling.sample_indices(mode, n, t, rng=rng, num_clips=k, test_sampling=ts), stats)
        if idx is None:
            assert n < 1 or t < 1 or (mode == "test" and k < 1)
            return
        idx = np.atleast_2d(idx)
        assert idx.dtype == np.int64 and idx.shape[1] == t
        assert idx.shape[0] == (k if mode == "test" else 1)
        assert (idx >= 0).all() and (idx < n).all() and (np.diff(idx, axis=1) >= 0).all()

    run()
    record("random frame counts / segments / clips for TSN sampling", sum(stats.values()),
           _summary(stats, "ClipError"), area="sampling")


def test_fuzz_crop_plans(hyp_settings, record):
    stats = Counter()

    @hyp_settings
    @given(ds=st.sampled_from(list(presets.PRESETS)), mode=st.sampled_from(["train", "val", "test"]),
           n=st.integers(-1, 400), t=st.integers(1, 16), h=st.integers(-2, 3000), w=st.integers(-2, 3000),
           size=st.integers(32, 320), crops=st.sampled_from([1, 3]), clips=st.integers(1, 4),
           flip=st.booleans(), seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 100))
    def run(ds, mode, n, t, h, w, size, crops, clips, flip, seed, epoch):
        p = presets.get(ds)
        classes = (list(rawtrees.JESTER_CLASSES) if ds == "jester" else rawtrees.sthv2_classes() if ds == "sthv2"
                   else ego.load_classes())
        fmap = presets.flip_label_map(ds, classes) if flip else None
        if crops not in p.test_crops:
            crops = 1
        plans = _outcome(lambda: geometry.make_plans(
            p, mode, clip=3, key="k", label=1, num_frames=n, src_size=(h, w), num_segments=t, size=size,
            seed=seed, epoch=epoch, flip=flip, flip_map=fmap, test_clips=clips, test_crops=crops), stats)
        if plans is None:
            assert n < 1 or h < 1 or w < 1
            return
        assert len(plans) == geometry.num_views(mode, test_clips=clips, test_crops=crops)
        for pl in plans:
            assert len(pl.frames) == t and all(0 <= f < n for f in pl.frames)
            x, y, cw, ch = pl.crop
            rh, rw = pl.resize
            assert rh >= 1 and rw >= 1 and cw >= 1 and ch >= 1
            assert 0 <= x and 0 <= y and x + cw <= rw and y + ch <= rh, (pl, h, w)
            assert pl.out[0] >= 1 and pl.out[1] >= 1 and 0 <= pl.label < len(classes)

    run()
    record("random frame counts and sizes for crop/flip plans (3 presets)", sum(stats.values()),
           _summary(stats, "ClipError"), area="sampling")

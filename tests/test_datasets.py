"""Dataset definitions: flip maps (docs/DESIGN.md index pairs) and the raw-layout readers."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rawtrees
from pipelines.ingest import datasets
from pipelines.ingest.scan import scan_folder
from pipelines.ingest.datasets import Problems
from pipelines.ingest.datasets import egogesture as ego
from pipelines.errors import AnnotationError, DataError, FrameError

JESTER_PAIRS = [(0, 1), (6, 7), (14, 15)]
STHV2_PAIRS = [(86, 87), (93, 94), (166, 167)]
EGO_PAIRS = [(0, 1), (9, 10), (13, 14), (58, 59), (64, 65), (70, 71), (76, 77), (80, 81)]


def _classes(name):
    return {"jester": list(rawtrees.JESTER_CLASSES), "sthv2": rawtrees.sthv2_classes(),
            "egogesture": ego.load_classes()}[name]


@pytest.mark.parametrize("name,pairs,n", [("jester", JESTER_PAIRS, 27), ("sthv2", STHV2_PAIRS, 174),
                                          ("egogesture", EGO_PAIRS, 83)])
def test_flip_label_map_matches_design_index_pairs(name, pairs, n):
    spec = datasets.get(name)
    assert spec.name == name and spec.num_classes == n
    m = spec.flip_label_map(_classes(name))
    expected = np.arange(n)
    for a, b in pairs:
        expected[a], expected[b] = b, a
    assert m.dtype.kind == "i" and m.tolist() == expected.tolist()
    assert (m[m] == np.arange(n)).all()  # an involution
    assert len(spec.flip_pairs) == len(pairs)


def test_flip_pairs_are_names():
    assert datasets.get("jester").flip_pairs == (
        ("Swiping Left", "Swiping Right"), ("Sliding Two Fingers Left", "Sliding Two Fingers Right"),
        ("Turning Hand Clockwise", "Turning Hand Counterclockwise"))
    assert datasets.get("egogesture").flip_pairs[0] == ("Scroll_hand_towards_right", "Scroll_hand_towards_left")


def test_flip_map_follows_names_not_positions():
    names = list(reversed(rawtrees.JESTER_CLASSES))  # same names, another order
    m = datasets.get("jester").flip_label_map(names)
    i, j = names.index("Swiping Left"), names.index("Swiping Right")
    assert m[i] == j and m[j] == i
    with pytest.raises(DataError, match="Swiping Left"):
        datasets.get("jester").flip_label_map([n for n in names if n != "Swiping Left"])


def test_get_unknown():
    with pytest.raises(ValueError, match="egogesture, jester, sthv2"):
        datasets.get("kinetics")


def _read(name, root, split, **kw):
    spec = datasets.get(name)
    spec.check_root(root)
    return spec.read(root, split, Problems(), classes=spec.load_classes(root), **kw)


@pytest.mark.parametrize("name", ["jester", "sthv2", "egogesture"])
def test_readers_list_every_clip_with_its_label(name, make_raw):
    tree = make_raw(name)
    for split in ("train", "val", "test"):
        refs = _read(name, tree["root"], split)
        assert {r.key: r.label for r in refs} == {k: c["label"] for k, c in tree["clips"][split].items()}
        for r in refs:  # the referenced frames are exactly the tree's clip frames
            folder = scan_folder(tree["root"], r.folder)
            a = 0 if r.start is None else r.start - folder.first
            z = len(folder.names) if r.end is None else r.end - folder.first + 1
            files = [os.path.join(tree["root"], r.folder, n) for n in folder.names[a:z]]
            assert files == tree["clips"][split][r.key]["files"]
    if name != "egogesture":
        assert all(r.label == -1 for r in _read(name, tree["root"], "test"))


def test_egogesture_quirks(make_raw):
    tree = make_raw("egogesture", subjects=(3,), groups=(1, 2))
    lab = os.path.join(tree["root"], "labels", "Subject03", "Scene1")
    assert sorted(os.listdir(lab)) == ["Group1.csv", "group2.csv"]  # both spellings present
    refs = _read("egogesture", tree["root"], "train")
    assert [r.key for r in refs] == ["Subject03/Scene1/rgb1#1", "Subject03/Scene1/rgb1#2",
                                     "Subject03/Scene1/rgb2#1", "Subject03/Scene1/rgb2#2"]
    rows = [ln for ln in open(os.path.join(lab, "Group1.csv")).read().splitlines()]
    assert "" in rows and "nan,nan,nan" in rows
    cls, start, end = (int(x) for x in rows[0].split(","))
    assert (refs[0].label, refs[0].start, refs[0].end) == (cls - 1, start, end)
    dropped = _read("egogesture", tree["root"], "train", drop_last_two=True)
    assert [(r.start, r.end) for r in dropped] == [(r.start, r.end - 2) for r in refs]
    assert _read("egogesture", tree["root"], "val") == []


def test_egogesture_train_on_trainval(make_raw):
    tree = make_raw("egogesture", subjects=(3, 1, 2), groups=(1,))
    keys = {r.key.split("/")[0] for r in _read("egogesture", tree["root"], "train", train_on_trainval=True)}
    assert keys == {"Subject03", "Subject01"}
    assert {r.key.split("/")[0] for r in _read("egogesture", tree["root"], "val")} == {"Subject01"}
    assert ego.subjects("train", train_on_trainval=True) == tuple(sorted(ego.SUBJECTS["train"] + ego.SUBJECTS["val"]))
    assert len(set(ego.SUBJECTS["train"]) | set(ego.SUBJECTS["val"]) | set(ego.SUBJECTS["test"])) == 50


def test_egogesture_csv_rows(tmp_path):
    p = tmp_path / "Group1.csv"
    p.write_text("3,10,20\n\n nan , nan, nan\n,,\n4.0,21,30\n")
    assert ego.read_group_csv(str(p), Problems()) == [(1, 2, 10, 20), (2, 3, 21, 30)]
    for text, msg in [("x,1,2\n", "class 'x' is not a number"), ("3,9,5\n", "9..5 is empty"),
                      ("84,1,5\n", "outside 1..83"), ("3,1\n", "expected 'class,start,end'"),
                      ("3,nan,5\n", "not numbers")]:
        p.write_text(text)
        with pytest.raises(AnnotationError, match=msg) as e:
            ego.read_group_csv(str(p), Problems())
        assert str(p) in str(e.value)
    probs = Problems(skip_bad=True, raw=str(tmp_path))
    p.write_text("x,1,2\n3,1,4\n")
    assert ego.read_group_csv(str(p), probs) == [(2, 2, 1, 4)]
    assert probs.skipped == [{"path": "Group1.csv:1", "reason": "class 'x' is not a number"}]


@pytest.mark.parametrize("digits", [1, 3, 5, 6])
def test_frame_names_any_width_sorted_by_number(tmp_path, digits):
    folder = tmp_path / "frames" / "7"
    paths = rawtrees.write_frames(str(folder), np.random.default_rng(0), 12, digits=digits)
    got = scan_folder(str(tmp_path), "frames/7")
    assert [os.path.join(folder, n) for n in got.names] == paths  # 10.jpg after 9.jpg even unpadded
    assert got.first == 1 and got.sizes == tuple(os.path.getsize(p) for p in paths)


def test_scan_folder_problems(tmp_path):
    rng = np.random.default_rng(0)
    rawtrees.write_frames(str(tmp_path / "a"), rng, 4)
    os.remove(tmp_path / "a" / "00003.jpg")
    with pytest.raises(FrameError, match=r"gap: 00002.jpg is followed by 00004.jpg"):
        scan_folder(str(tmp_path), "a")
    with pytest.raises(FrameError, match="missing"):
        scan_folder(str(tmp_path), "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(FrameError, match="empty"):
        scan_folder(str(tmp_path), "e")
    rawtrees.write_frames(str(tmp_path / "z"), rng, 2)
    open(tmp_path / "z" / "00002.jpg", "wb").close()
    with pytest.raises(FrameError, match="zero-byte"):
        scan_folder(str(tmp_path), "z")
    rawtrees.write_frames(str(tmp_path / "d"), rng, 2)
    (tmp_path / "d" / "notes.txt").write_text("x")
    with pytest.raises(FrameError, match="unexpected entry"):
        scan_folder(str(tmp_path), "d")


@settings(max_examples=150, deadline=None, derandomize=True)  # the same examples every run
@given(st.lists(st.text(alphabet="0123456789,.-nNaA x;\t", max_size=14), max_size=6))
def test_egogesture_csv_fuzz_rows_are_valid_or_clear_errors(tmp_path_factory, lines):
    d = tmp_path_factory.getbasetemp() / "fuzz-ego"
    d.mkdir(exist_ok=True)
    p = d / "Group1.csv"
    p.write_text("\n".join(lines))
    try:
        rows = ego.read_group_csv(str(p), Problems())
    except AnnotationError as e:
        assert str(e).startswith(f"{p}:")
        return
    for k, label, start, end in rows:
        assert 0 <= label < 83 and 1 <= start <= end and k >= 1


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.text(alphabet="0123456789;/.a Swipg Lft", max_size=20), max_size=5))
def test_jester_csv_fuzz(tmp_path_factory, lines):
    root = tmp_path_factory.getbasetemp() / "fuzz-jester"
    root.mkdir(exist_ok=True)
    (root / "jester-v1-labels.csv").write_text("\n".join(rawtrees.JESTER_CLASSES))
    (root / "jester-v1-train.csv").write_text("\n".join(lines))
    probs = Problems(skip_bad=True, raw=str(root))
    refs = datasets.get("jester").read(str(root), "train", probs)
    for r in refs:
        assert "/" not in r.key and ".." not in r.key and r.key and 0 <= r.label < 27
    assert all(s["path"].startswith("jester-v1-train.csv:") for s in probs.skipped)

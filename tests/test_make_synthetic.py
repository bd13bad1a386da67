"""tools/make_synthetic.py: official raw layouts, determinism, re-runs, and "motion only" classes."""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tools import make_synthetic as ms

SMALL = dict(clips_per_class=3, val_per_class=2, test_clips=4, size=(64, 48), frames=(8, 10), workers=1)


def tree_digest(root) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def frame_names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def check_frames(folder, digits, n_min, n_max=None, size=(64, 48)):
    names = frame_names(folder)
    n_max = n_max if n_max is not None else 10 ** 9
    assert n_min <= len(names) <= n_max
    assert names == [f"{i:0{digits}d}.jpg" for i in range(1, len(names) + 1)]
    with open(os.path.join(folder, names[0]), "rb") as f:
        data = f.read()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and im.mode == "RGB" and im.size == size
    return len(names)


@pytest.fixture(scope="module")
def jester(tmp_path_factory):
    root = tmp_path_factory.mktemp("jester")
    return root, ms.make_synthetic(root, layout="jester", **SMALL)


# ------------------------------------------------------------------------------------------ layouts
def test_jester_layout_is_official(jester):
    from pipelines.ingest.datasets.jester import CLASSES

    root, s = jester
    used = [c["name"] for c in s["classes"]]
    assert len(used) == 9 and set(used) <= set(CLASSES)
    assert (root / "jester-v1-labels.csv").read_text().splitlines() == list(CLASSES)  # all 27, official order
    for c in s["classes"]:
        assert CLASSES[c["label"]] == c["name"]
    ids = set()
    for fname, per_class in (("jester-v1-train.csv", 3), ("jester-v1-validation.csv", 2)):
        rows = [ln.split(";") for ln in (root / fname).read_text().splitlines()]
        assert all(len(r) == 2 for r in rows)
        names = [r[1] for r in rows]
        assert sorted(names) == sorted(used * per_class)  # balanced
        for vid, _ in rows:
            assert vid.isdigit() and vid not in ids
            ids.add(vid)
            check_frames(root / "frames" / vid, 5, 8, 10)
    test_ids = (root / "jester-v1-test.csv").read_text().splitlines()
    assert len(test_ids) == 4 and all(v.isdigit() and ";" not in v and v not in ids for v in test_ids)
    answers = [ln.split(";") for ln in (root / ms.ANSWERS).read_text().splitlines()]
    assert [a[0] for a in answers] == test_ids and all(a[1] in used for a in answers)
    assert sorted(os.listdir(root / "frames")) == sorted(ids | set(test_ids))
    marker = json.loads((root / ms.MARKER).read_text())
    assert marker["params"]["layout"] == "jester" and not (root / ms.PARTIAL).exists()
    assert [s["splits"][k]["clips"] for k in ("train", "val", "test")] == [27, 18, 4]


def test_egogesture_layout_is_official(tmp_path):
    from pipelines.ingest.datasets.egogesture import SUBJECTS, load_classes

    names = load_classes()
    s = ms.make_synthetic(tmp_path, layout="egogesture", **{**SMALL, "test_clips": 9})
    assert [(c["name"], c["label"]) for c in s["classes"][:3]] == [
        ("Scroll_hand_towards_left", 1), ("Scroll_hand_towards_right", 0), ("Rotate_fists_clockwise", 9)]
    assert all(names[c["label"]] == c["name"] for c in s["classes"])
    split_of = {subj: sp for sp, subjects in SUBJECTS.items() for subj in subjects}
    counts = {"train": 0, "val": 0, "test": 0}
    spellings = set()
    for dirpath, _, files in os.walk(tmp_path / "labels"):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), tmp_path / "labels").split(os.sep)
            subj, scene, csv = rel
            assert subj.startswith("Subject") and len(subj) == 9 and scene.startswith("Scene")
            assert csv[:5] in ("Group", "group") and csv.endswith(".csv")
            spellings.add(csv[:5])
            g = int(csv[5:-4])
            folder = tmp_path / "frames" / subj / scene / "Color" / f"rgb{g}"
            n = check_frames(folder, 6, 1)
            rows = [tuple(int(v) for v in ln.split(",")) for ln in open(os.path.join(dirpath, f)).read().splitlines()]
            assert rows and all(len(r) == 3 for r in rows)
            prev_end = 0
            for cls, start, end in rows:
                assert 1 <= cls <= 83 and cls - 1 in {c["label"] for c in s["classes"]}
                assert prev_end + 1 < start <= end <= n  # idle frames before every gesture
                assert 8 <= end - start + 1 <= 10
                prev_end = end
            assert n > prev_end  # idle frames after the last one
            counts[split_of[int(subj[7:])]] += len(rows)
    assert counts == {"train": 27, "val": 18, "test": 9}
    assert spellings == {"Group", "group"}


def test_sthv2_layout_is_official(tmp_path):
    s = ms.make_synthetic(tmp_path, layout="sthv2", **SMALL)
    labels = json.loads((tmp_path / "something-something-v2-labels.json").read_text())
    assert len(labels) == 174 and sorted(int(v) for v in labels.values()) == list(range(174))
    assert all(isinstance(v, str) for v in labels.values())
    for i, name in ((86, "Pulling something from left to right"), (87, "Pulling something from right to left"),
                    (93, "Pushing something from left to right"), (94, "Pushing something from right to left"),
                    (166, "Turning the camera left while filming something"),
                    (167, "Turning the camera right while filming something")):
        assert labels[name] == str(i)
    used = {c["name"]: c["label"] for c in s["classes"]}
    assert all(labels[n] == str(lab) for n, lab in used.items())
    seen = set()
    for fname, per_class in (("something-something-v2-train.json", 3),
                             ("something-something-v2-validation.json", 2)):
        entries = json.loads((tmp_path / fname).read_text())
        assert len(entries) == 9 * per_class
        for e in entries:
            assert set(e) == {"id", "label", "template", "placeholders"} and isinstance(e["id"], str)
            cls = e["template"].replace("[", "").replace("]", "")
            assert cls in used and "[something]" in e["template"]
            assert e["label"] == e["template"].replace("[something]", e["placeholders"][0])
            assert e["id"] not in seen
            seen.add(e["id"])
            check_frames(tmp_path / "frames" / e["id"], 6, 8, 10)
    test = json.loads((tmp_path / "something-something-v2-test.json").read_text())
    assert len(test) == 4 and all(set(e) == {"id"} and e["id"] not in seen for e in test)


@pytest.mark.parametrize("layout", ms.LAYOUTS)
def test_readers_accept_the_tree_and_flip_maps_pair_mirror_motions(tmp_path, layout):
    from pipelines.ingest import datasets  # the project's own module: an import error is a failure, not a skip
    s = ms.make_synthetic(tmp_path, layout=layout, **SMALL)
    spec = datasets.get(layout)
    spec.check_root(str(tmp_path))
    classes = spec.load_classes(str(tmp_path))
    used = {c["label"] for c in s["classes"]}
    for split in spec.splits:
        refs = spec.read(str(tmp_path), split, datasets.Problems())
        assert len(refs) == s["splits"][split]["clips"]
        labels = {r.label for r in refs}
        if split != "test":
            assert labels == used
        else:  # EgoGesture test subjects are labelled; Jester/SSv2 test files hold ids only
            assert labels <= used if layout == "egogesture" else labels == {-1}
    # a horizontal flip turns each motion into its mirror motion: the dataset's flip map must agree
    flip = spec.flip_label_map(classes)
    by_motion = {c["motion"]: c["label"] for c in s["classes"]}
    for c in s["classes"]:
        assert flip[c["label"]] == by_motion[ms.FLIP_MOTIONS.get(c["motion"], c["motion"])], c


# ------------------------------------------------------------------------------------------ determinism, re-runs
def test_deterministic_and_independent_of_workers(tmp_path, jester):
    ref_root, _ = jester
    ms.make_synthetic(tmp_path / "a", layout="jester", **{**SMALL, "workers": 2})
    assert tree_digest(tmp_path / "a") == tree_digest(ref_root)
    ms.make_synthetic(tmp_path / "b", layout="jester", **{**SMALL, "seed": 1})
    assert tree_digest(tmp_path / "b")["frames/1/00001.jpg"] != tree_digest(ref_root)["frames/1/00001.jpg"]


def test_egogesture_deterministic_across_workers(tmp_path):
    ms.make_synthetic(tmp_path / "a", layout="egogesture", **SMALL)
    ms.make_synthetic(tmp_path / "b", layout="egogesture", **{**SMALL, "workers": 2})
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_rerun_is_a_noop_other_params_need_force(tmp_path):
    kw = {**SMALL, "clips_per_class": 1, "val_per_class": 1, "test_clips": 0}
    s1 = ms.make_synthetic(tmp_path, **kw)
    assert not s1["skipped"]
    def stamps():  # (inode, mtime): a rewrite within one mtime tick still has another inode (temp file + rename)
        return {p: (os.stat(tmp_path / p).st_ino, os.stat(tmp_path / p).st_mtime_ns) for p in tree_digest(tmp_path)}
    before = stamps()
    s2 = ms.make_synthetic(tmp_path, **{**kw, "workers": 2})  # workers is not a parameter of the output
    assert s2["skipped"] and s2["splits"] == s1["splits"]
    assert stamps() == before
    with pytest.raises(ms.SyntheticError, match="seed.*--force"):
        ms.make_synthetic(tmp_path, **{**kw, "seed": 5})
    s3 = ms.make_synthetic(tmp_path, **{**kw, "seed": 5, "frames": (5, 5)}, force=True)
    assert not s3["skipped"]
    assert all(len(os.listdir(tmp_path / "frames" / v)) == 5 for v in os.listdir(tmp_path / "frames"))
    assert json.loads((tmp_path / ms.MARKER).read_text())["params"]["seed"] == 5


def test_interrupted_output_is_regenerated_and_foreign_folders_are_refused(tmp_path):
    kw = {**SMALL, "clips_per_class": 1, "val_per_class": 0, "test_clips": 0}
    ms.make_synthetic(tmp_path / "a", **kw)
    ref = tree_digest(tmp_path / "a")
    # simulate a kill: marker gone, partial marker and a stray frame present
    os.remove(tmp_path / "a" / ms.MARKER)
    (tmp_path / "a" / ms.PARTIAL).write_text("{}")
    (tmp_path / "a" / "frames" / "1" / "00099.jpg").write_bytes(b"junk")
    assert not ms.make_synthetic(tmp_path / "a", **kw)["skipped"]
    assert tree_digest(tmp_path / "a") == ref
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    for force in (False, True):
        with pytest.raises(ms.SyntheticError, match="not empty"):
            ms.make_synthetic(foreign, force=force, **kw)
    assert os.listdir(foreign) == ["precious.txt"]


def test_bad_parameters():
    for kw in ({"layout": "ucf101"}, {"classes": 1}, {"classes": 10}, {"size": (16, 16)}, {"frames": (3, 9)},
               {"frames": (9, 8)}, {"clips_per_class": 0}, {"quality": 0}):
        with pytest.raises(ValueError):
            ms.make_synthetic("/nonexistent/never-written", **kw)
    assert ms.parse_size("128x96") == (128, 96) and ms.parse_frames("12-20") == (12, 20)
    assert ms.parse_frames("16") == (16, 16)
    with pytest.raises(ValueError):
        ms.parse_size("128")


def test_cli(tmp_path):
    from click.testing import CliRunner

    cli = ms._cli()
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "Swiping Left" in r.output and "egogesture" in r.output and "sthv2" in r.output
    args = [str(tmp_path / "o"), "--layout", "sthv2", "--clips-per-class", "1", "--val-per-class", "1",
            "--test-clips", "1", "--classes", "2", "--size", "48x32", "--frames", "6", "--workers", "1"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "Pushing something from right to left" in r.output
    assert len(os.listdir(tmp_path / "o" / "frames")) == 5
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "nothing to do" in r.output
    r = CliRunner().invoke(cli, args[:-2] + ["--seed", "3"])
    assert r.exit_code == 1 and "--force" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, [str(tmp_path / "x"), "--size", "big"])
    assert r.exit_code == 2 and "WIDTHxHEIGHT" in r.output


# ------------------------------------------------------------------------------------------ motion only
def _positions(motion, n_clips=1500, n=16, w=128, h=96):
    """Per-clip trajectories of ``motion`` (arrays of shape (n_clips, n))."""
    xs, ys, rs, angs = [], [], [], []
    for k in range(n_clips):
        x, y, r, a, _, _ = ms._trajectory(np.random.default_rng([7, k]), motion, n, w, h)
        xs.append(x), ys.append(y), rs.append(r), angs.append(a)
    return np.array(xs), np.array(ys), np.log(np.array(rs)), np.mod(np.array(angs), 2 * np.pi)


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    return np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                  - np.searchsorted(np.sort(b), grid, "right") / len(b)).max()


def test_a_single_frame_does_not_tell_the_classes_apart():
    motions = [c["motion"] for c in ms.class_table("sthv2")] + ["cw", "ccw"]
    per = {m: _positions(m) for m in motions}
    rng = np.random.default_rng(0)
    frame = rng.integers(16, size=1500)  # one random frame per clip
    pooled = [np.concatenate([per[m][i][np.arange(1500), frame] for m in motions]) for i in range(4)]
    for m in motions:
        for i, what in enumerate(("x", "y", "log radius", "angle")):
            single = per[m][i][np.arange(1500), frame]
            assert _ks(single, pooled[i]) < 0.08, (m, what)
    # mirror pairs: a clip of one class played backwards is a clip of the other (same start/end sets)
    for a, b, i in (("left", "right", 0), ("up", "down", 1), ("grow", "shrink", 2)):
        assert _ks(per[a][i][:, 0], per[b][i][:, -1]) < 0.06
        assert _ks(per[a][i][:, -1], per[b][i][:, 0]) < 0.06
        mid_a, mid_b = per[a][i][:, 7:9].mean(1), per[b][i][:, 7:9].mean(1)  # the middle of 16 frames
        assert abs(mid_a.mean() - mid_b.mean()) < 0.1 * mid_a.std()


def _gray(path):
    im = np.asarray(Image.open(path), dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    im = (im[0::2, 0::2] + im[1::2, 0::2] + im[0::2, 1::2] + im[1::2, 1::2]) / 4
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    im = np.apply_along_axis(np.convolve, 0, im, k, "same")
    return np.apply_along_axis(np.convolve, 1, im, k, "same")


def _affine_flow(a, b):
    """Least-squares affine optical flow on the moving pixels: (tx, ty, curl, divergence)."""
    h, w = a.shape
    iy, ix = np.gradient((a + b) / 2)
    it = b - a
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx - w / 2, yy - h / 2
    wgt = (np.abs(it) > 6).reshape(-1).astype(np.float32)
    m = np.stack([ix, ix * xx, ix * yy, iy, iy * xx, iy * yy], -1).reshape(-1, 6)
    p = np.linalg.solve((m * wgt[:, None]).T @ m + 1e-3 * (wgt.sum() + 1) * np.eye(6),
                        -(m * wgt[:, None]).T @ it.reshape(-1))
    return np.array([p[0], p[3], (p[4] - p[2]) / 2, (p[1] + p[5]) / 2])


def test_the_motion_is_in_the_pixels(tmp_path):
    """Frame differences of 8 TSN-sampled JPEG frames recover each class's motion direction."""
    s = ms.make_synthetic(tmp_path, layout="sthv2", clips_per_class=4, val_per_class=0, test_clips=0,
                          size=(128, 96), frames=(14, 18), workers=1)
    by_name = {c["name"]: c["motion"] for c in s["classes"]}
    sign = {"right": (0, 1), "left": (0, -1), "pan_right": (0, 1), "pan_left": (0, -1), "down": (1, 1),
            "up": (1, -1), "cw": (2, 1), "ccw": (2, -1), "grow": (3, 1), "shrink": (3, -1)}
    entries = json.loads((tmp_path / "something-something-v2-train.json").read_text())
    good = total = 0
    static = []
    for e in entries:
        motion = by_name[e["template"].replace("[", "").replace("]", "")]
        folder = tmp_path / "frames" / e["id"]
        names = frame_names(folder)
        tick = len(names) / 8
        frames = [_gray(folder / names[int(tick / 2 + tick * i)]) for i in range(8)]
        flow = np.mean([_affine_flow(frames[i], frames[i + 1]) for i in range(7)], axis=0)
        if motion == "static":
            static.append(np.abs(flow[:2]).max())
            continue
        axis, sgn = sign[motion]
        total += 1
        good += np.sign(flow[axis]) == sgn
    assert good >= total - 2, f"{good}/{total} motion directions recovered"
    assert max(static) < 0.6  # px per sampled step at half resolution (moving clips: about 1.5 to 3)


def test_convert_a_generated_tree(tmp_path, jester):
    from pipelines.ingest import convert
    root, s = jester
    manifest = convert.convert_dataset("jester", root, tmp_path / "shards", workers=1)
    assert manifest["dataset"] == "jester" and manifest["skipped"] == []
    for split in ("train", "val", "test"):
        assert manifest["splits"][split]["clips"] == s["splits"][split]["clips"]
        assert manifest["splits"][split]["frames"] == s["splits"][split]["frames"]
    assert [manifest["classes"][c["label"]] for c in s["classes"]] == [c["name"] for c in s["classes"]]

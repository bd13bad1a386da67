"""Tiny synthetic raw trees in the three official layouts (docs/DESIGN.md "Raw dataset layouts"), built on the fly.

Every builder writes real JPEGs (PIL, varied content so no two frames are equal) and returns::

    {"root": str, "classes": [names in label order],
     "clips": {split: {key: {"label": int, "files": [absolute frame paths, temporal order]}}}}

``clips`` is exactly what a conversion must store: ``files`` are the frames of the clip (for EgoGesture only
``start..end`` of the gesture), so tests can compare stored bytes with ``open(f, "rb").read()``.

    make_jester(root, *, n_train=6, n_val=4, n_test=2, frames=(9, 14), size=(64, 48), seed=0, digits=5)
    make_sthv2(root, *, n_train=6, n_val=4, n_test=2, frames=(9, 14), size=(64, 48), seed=0, digits=6)
    make_egogesture(root, *, subjects=(3, 1, 2), scenes=(1,), groups=(1, 2), gestures=2, frames=(4, 7),
                    size=(64, 48), seed=0)
    make_tree(name, root, **kw)          # dispatch by dataset name

Quirks reproduced: Jester ``;`` CSVs and an id-only test CSV; SSv2 templates with ``[something]`` and an
id-only test JSON; EgoGesture subject splits (3 train, 1 val, 2 test by default), ``GroupG.csv`` and
``groupG.csv`` spellings, blank and NaN rows, 1-based inclusive ranges inside a longer frame folder.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.ingest.datasets.jester import CLASSES as JESTER_CLASSES


def sthv2_classes() -> list[str]:
    """174 class names with the three flip pairs at 86/87, 93/94, 166/167 (the rest are stand-ins)."""
    names = [f"Moving something number {i}" for i in range(174)]
    names[86] = "Pulling something from left to right"
    names[87] = "Pulling something from right to left"
    names[93] = "Pushing something from left to right"
    names[94] = "Pushing something from right to left"
    names[166] = "Turning the camera left while filming something"
    names[167] = "Turning the camera right while filming something"
    return names


def jpeg_bytes(rng: np.random.Generator, size=(64, 48), quality: int = 90) -> bytes:
    """A smooth random-gradient + noise RGB image of ``size`` = (width, height) as JPEG bytes."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)
    img = (c[:, 0, None, None] + c[:, 1, None, None] * xx / max(w, 1) + c[:, 2, None, None] * yy / max(h, 1))
    img = img.transpose(1, 2, 0) % 256 + rng.normal(0, 6, size=(h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_frames(folder: str, rng: np.random.Generator, n: int, *, first: int = 1, digits: int = 5,
                 size=(64, 48)) -> list[str]:
    """Write frames ``first .. first+n-1`` as ``<zero-padded number>.jpg``; return their paths in order."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(first, first + n):
        p = os.path.join(folder, f"{k:0{digits}d}.jpg")
        with open(p, "wb") as f:
            f.write(jpeg_bytes(rng, size))
        paths.append(p)
    return paths


def _split_sizes(n_train, n_val, n_test):
    return {"train": n_train, "val": n_val, "test": n_test}


def make_jester(root, *, n_train: int = 6, n_val: int = 4, n_test: int = 2, frames=(9, 14), size=(64, 48),
                seed: int = 0, digits: int = 5) -> dict:
    """Jester layout: labels CSV (27 names), ``id;Label`` train/validation CSVs, id-only test CSV."""
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "jester-v1-labels.csv"), "w") as f:
        f.write("\n".join(JESTER_CLASSES) + "\n")
    files = {"train": "jester-v1-train.csv", "val": "jester-v1-validation.csv", "test": "jester-v1-test.csv"}
    clips: dict = {}
    vid = 100
    for split, n in _split_sizes(n_train, n_val, n_test).items():
        clips[split] = {}
        lines = []
        for i in range(n):
            vid += int(rng.integers(1, 50))
            key = str(vid)
            label = -1 if split == "test" else int((i * 5 + (split == "val")) % 27)
            paths = write_frames(os.path.join(root, "frames", key), rng, int(rng.integers(frames[0], frames[1] + 1)),
                                 digits=digits, size=size)
            clips[split][key] = {"label": label, "files": paths}
            lines.append(key if split == "test" else f"{key};{JESTER_CLASSES[label]}")
        with open(os.path.join(root, files[split]), "w") as f:
            f.write("\n".join(lines) + "\n")
    return {"root": root, "classes": list(JESTER_CLASSES), "clips": clips}


def make_sthv2(root, *, n_train: int = 6, n_val: int = 4, n_test: int = 2, frames=(9, 14), size=(64, 48),
               seed: int = 0, digits: int = 6) -> dict:
    """SSv2 layout: labels JSON ``{"name": "index"}``, entry lists with bracketed templates, id-only test."""
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    classes = sthv2_classes()
    with open(os.path.join(root, "something-something-v2-labels.json"), "w") as f:
        json.dump({c: str(i) for i, c in enumerate(classes)}, f, indent=1)
    files = {"train": "something-something-v2-train.json", "val": "something-something-v2-validation.json",
             "test": "something-something-v2-test.json"}
    picks = [86, 87, 93, 94, 166, 167, 0, 5, 42, 173]
    clips: dict = {}
    vid = 1000
    for split, n in _split_sizes(n_train, n_val, n_test).items():
        clips[split] = {}
        entries = []
        for i in range(n):
            vid += int(rng.integers(1, 500))
            key = str(vid)
            label = -1 if split == "test" else picks[(i + (split == "val")) % len(picks)]
            paths = write_frames(os.path.join(root, "frames", key), rng, int(rng.integers(frames[0], frames[1] + 1)),
                                 digits=digits, size=size)
            clips[split][key] = {"label": label, "files": paths}
            if split == "test":
                entries.append({"id": key})
            else:
                template = classes[label].replace("something", "[something]")
                entries.append({"id": key, "label": classes[label].replace("something", "a cup"),
                                "template": template, "placeholders": ["a cup"]})
        with open(os.path.join(root, files[split]), "w") as f:
            json.dump(entries, f, indent=1)
    return {"root": root, "classes": classes, "clips": clips}


def make_egogesture(root, *, subjects=(3, 1, 2), scenes=(1,), groups=(1, 2), gestures: int = 2, frames=(4, 7),
                    size=(64, 48), seed: int = 0) -> dict:
    """EgoGesture layout for the given subjects (3: train, 1: val, 2: test by default).

    Per (subject, scene, group): one frame folder ``Color/rgbG`` with 1-based 6-digit frames and a label CSV
    with ``gestures`` rows ``class,start,end`` separated by idle frames, plus one blank and one NaN row.
    Even groups use the ``groupG.csv`` spelling. Keys are ``SubjectXX/SceneN/rgbG#K`` (K: 1-based gesture row).
    """
    from pipelines.ingest.datasets.egogesture import SUBJECTS, load_classes

    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    split_of = {s: sp for sp, ss in SUBJECTS.items() for s in ss}
    clips: dict = {"train": {}, "val": {}, "test": {}}
    cls_cycle = 0
    for subj in subjects:
        for scene in scenes:
            for g in groups:
                rows, spans = [], []
                t = int(rng.integers(1, 4))  # idle frames before the first gesture
                for k in range(gestures):
                    n = int(rng.integers(frames[0], frames[1] + 1))
                    start, end = t + 1, t + n
                    label = (cls_cycle * 9) % 83
                    cls_cycle += 1
                    rows.append(f"{label + 1},{start},{end}")
                    spans.append((k + 1, label, start, end))
                    t = end + int(rng.integers(0, 3))
                total = t + 2
                folder = os.path.join(root, "frames", f"Subject{subj:02d}", f"Scene{scene}", "Color", f"rgb{g}")
                paths = write_frames(folder, rng, total, digits=6, size=size)
                rows.insert(1, "")              # blank row
                rows.append("nan,nan,nan")      # NaN row (pandas export)
                lab_dir = os.path.join(root, "labels", f"Subject{subj:02d}", f"Scene{scene}")
                os.makedirs(lab_dir, exist_ok=True)
                name = f"group{g}.csv" if g % 2 == 0 else f"Group{g}.csv"
                with open(os.path.join(lab_dir, name), "w") as f:
                    f.write("\n".join(rows) + "\n")
                for k, label, start, end in spans:
                    key = f"Subject{subj:02d}/Scene{scene}/rgb{g}#{k}"
                    clips[split_of[subj]][key] = {"label": label, "files": paths[start - 1:end]}
    return {"root": root, "classes": load_classes(), "clips": clips}


BUILDERS = {"egogesture": make_egogesture, "jester": make_jester, "sthv2": make_sthv2}


def make_tree(name: str, root, **kw) -> dict:
    """``BUILDERS[name](root, **kw)``."""
    return BUILDERS[name](root, **kw)


def jester_shards(base, **tree) -> Path:
    """``base/raw`` (:func:`make_jester` with ``tree``) converted to ``base/shards`` (small shards, seed 0): the
    training tests' dataset."""
    from pipelines.ingest.convert import convert_dataset

    base = Path(base)
    make_jester(base / "raw", **tree)
    convert_dataset("jester", base / "raw", base / "shards", workers=1, shard_mb=0.05, seed=0)
    return base / "shards"

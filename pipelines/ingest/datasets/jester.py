"""20BN-Jester V1 (27 classes).

Layout (docs/DESIGN.md)::

    RAW/jester-v1-labels.csv          one class name per line; label = line index
    RAW/jester-v1-train.csv           "id;Label name"
    RAW/jester-v1-validation.csv      "id;Label name"      -> split "val"
    RAW/jester-v1-test.csv            "id"                 -> label -1
    RAW/frames/<id>/00001.jpg ...     any zero-padded width
"""
from __future__ import annotations

import os

from pipelines.ingest.datasets import ClipRef, DatasetSpec, Problems, _check_id, add_row, bad
from pipelines.errors import AnnotationError

CLASSES = (
    "Swiping Left", "Swiping Right", "Swiping Down", "Swiping Up", "Pushing Hand Away", "Pulling Hand In",
    "Sliding Two Fingers Left", "Sliding Two Fingers Right", "Sliding Two Fingers Down", "Sliding Two Fingers Up",
    "Pushing Two Fingers Away", "Pulling Two Fingers In", "Rolling Hand Forward", "Rolling Hand Backward",
    "Turning Hand Clockwise", "Turning Hand Counterclockwise", "Zooming In With Full Hand",
    "Zooming Out With Full Hand", "Zooming In With Two Fingers", "Zooming Out With Two Fingers", "Thumb Up",
    "Thumb Down", "Shaking Hand", "Stop Sign", "Drumming Fingers", "No gesture", "Doing other things",
)
"""The official label order of ``jester-v1-labels.csv`` (for tests and fixtures; conversion reads the file)."""

FLIP_PAIRS = (
    ("Swiping Left", "Swiping Right"),
    ("Sliding Two Fingers Left", "Sliding Two Fingers Right"),
    ("Turning Hand Clockwise", "Turning Hand Counterclockwise"),
)
LABELS_FILE = "jester-v1-labels.csv"
SPLIT_FILES = {"train": "jester-v1-train.csv", "val": "jester-v1-validation.csv", "test": "jester-v1-test.csv"}


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except FileNotFoundError:
        raise bad(AnnotationError, path, "file not found",
                  "is --raw the Jester root? --splits leaves a split out") from None
    except (OSError, UnicodeDecodeError) as e:
        raise bad(AnnotationError, path, f"cannot read ({e})") from None


def load_classes(raw: str) -> list[str]:
    path = os.path.join(raw, LABELS_FILE)
    names = [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()]
    if len(names) != len(CLASSES):
        raise bad(AnnotationError, path, f"has {len(names)} class names, expected {len(CLASSES)}")
    if len(set(names)) != len(names):
        raise bad(AnnotationError, path, "class names are not unique")
    return names


def read(raw: str, split: str, problems: Problems, *, classes: list[str] | None = None) -> list[ClipRef]:
    """Clips of ``split`` ("train", "val", "test") listed in the official CSV."""
    if split not in SPLIT_FILES:
        raise ValueError(f"jester has no split {split!r}")
    classes = classes if classes is not None else load_classes(raw)
    index = {c: i for i, c in enumerate(classes)}
    path = os.path.join(raw, SPLIT_FILES[split])
    out, seen = [], set()
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        parts = line.rstrip("\r\n").split(";")
        vid = parts[0].strip()
        err = _check_id(vid, where)
        if err is not None:
            problems(err)
            continue
        if len(parts) > 2:
            problems(bad(AnnotationError, where, f"expected 'id;Label name', got {line.strip()!r}"))
            continue
        add_row(out, seen, problems, key=vid, name=parts[1].strip() if len(parts) == 2 else None, split=split,
                where=where, folder=f"frames/{vid}", index=index, labels_file=LABELS_FILE,
                no_label=f"row {line.strip()!r} has no label (expected 'id;Label name')")
    return out


def spec() -> DatasetSpec:
    return DatasetSpec(name="jester", num_classes=27, flip_pairs=FLIP_PAIRS, splits=("train", "val", "test"),
                       load_classes=load_classes, read=read, options={}, root_marker=LABELS_FILE)

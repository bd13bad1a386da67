"""Something-Something V2 (174 classes).

Layout (docs/DESIGN.md)::

    RAW/something-something-v2-labels.json       {"Class name": "index as string"}
    RAW/something-something-v2-train.json        [{"id", "label", "template", "placeholders"}, ...]
    RAW/something-something-v2-validation.json   same                      -> split "val"
    RAW/something-something-v2-test.json         [{"id"}, ...]             -> label -1
    RAW/frames/<id>/000001.jpg ...               extracted frames, or
    RAW/20bn-something-something-v2/<id>.webm    the release's videos (decoded by pipelines/ingest/video.py)

The newer download names the label files ``RAW/labels/{labels,train,validation,test}.json``; either naming
is read (the flat one when both exist). Option ``source``: ``auto`` (frames/ when it exists, else the video
folder; a warning says which when both exist), ``frames`` or ``videos``.
The class of an entry is its ``template`` with ``[`` and ``]`` removed.
"""
from __future__ import annotations

import json
import logging
import os

from pipelines.ingest.datasets import ClipRef, DatasetSpec, Problems, _check_id, add_row, bad
from pipelines.errors import AnnotationError

log = logging.getLogger(__name__)

NUM_CLASSES = 174
FLIP_PAIRS = (
    ("Pulling something from left to right", "Pulling something from right to left"),
    ("Pushing something from left to right", "Pushing something from right to left"),
    ("Turning the camera left while filming something", "Turning the camera right while filming something"),
)
LABELS_FILE = "something-something-v2-labels.json"
SPLIT_FILES = {"train": "something-something-v2-train.json", "val": "something-something-v2-validation.json",
               "test": "something-something-v2-test.json"}
LABELS_DIR_FILES = {"labels": "labels/labels.json", "train": "labels/train.json", "val": "labels/validation.json",
                    "test": "labels/test.json"}  # the newer download's naming
VIDEO_DIR = "20bn-something-something-v2"
SOURCES = ("auto", "frames", "videos")


def _file(raw: str, which: str) -> str:
    """Path of the labels file (``which="labels"``) or of a split's JSON, in whichever naming RAW uses."""
    flat = os.path.join(raw, LABELS_FILE if which == "labels" else SPLIT_FILES[which])
    if os.path.exists(flat) or not os.path.exists(os.path.join(raw, LABELS_DIR_FILES["labels"])):
        return flat
    return os.path.join(raw, LABELS_DIR_FILES[which])


def _media_dir(raw: str, source: str, split: str) -> str:
    """``frames`` or the video folder, by ``source`` (see the module docstring)."""
    if source not in SOURCES:
        raise ValueError(f"sthv2: source must be one of {', '.join(SOURCES)}, not {source!r}")
    if source == "videos":
        return VIDEO_DIR
    if source == "frames":
        return "frames"
    frames, videos = os.path.isdir(os.path.join(raw, "frames")), os.path.isdir(os.path.join(raw, VIDEO_DIR))
    if frames and videos:
        log.warning("sthv2/%s: both %s/frames/ and %s/%s/ exist: using the extracted frames "
                    "(--source videos decodes the videos instead)", split, raw, raw, VIDEO_DIR)
    return VIDEO_DIR if videos and not frames else "frames"


def _load_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise bad(AnnotationError, path, "file not found",
                  "is --raw the Something-Something V2 root? --splits leaves a split out") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(AnnotationError, path, f"malformed JSON ({e})") from None
    except RecursionError:  # e.g. "[[[[..." nested deeper than the interpreter's recursion limit
        raise bad(AnnotationError, path, "malformed JSON (nested too deeply)") from None
    except OSError as e:
        raise bad(AnnotationError, path, f"cannot read ({e})") from None


def load_classes(raw: str) -> list[str]:
    path = _file(raw, "labels")
    d = _load_json(path)
    if not isinstance(d, dict):
        raise bad(AnnotationError, path, "expected a JSON object {\"Class name\": \"index\"}")
    names: list[str | None] = [None] * len(d)
    for name, idx in d.items():
        try:
            i = int(idx)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
            raise bad(AnnotationError, path, f"index {idx!r} of {name!r} is not an integer") from None
        if not 0 <= i < len(d) or names[i] is not None:
            raise bad(AnnotationError, path, f"index {i} of {name!r} is out of range or used twice")
        names[i] = name
    if len(names) != NUM_CLASSES:
        raise bad(AnnotationError, path, f"has {len(names)} classes, expected {NUM_CLASSES}")
    return names  # type: ignore[return-value]


def read(raw: str, split: str, problems: Problems, *, classes: list[str] | None = None,
         source: str = "auto") -> list[ClipRef]:
    """Clips of ``split`` ("train", "val", "test") listed in the official JSON."""
    if split not in SPLIT_FILES:
        raise ValueError(f"sthv2 has no split {split!r}")
    media = _media_dir(raw, source, split)
    classes = classes if classes is not None else load_classes(raw)
    index = {c: i for i, c in enumerate(classes)}
    path = _file(raw, split)
    entries = _load_json(path)
    if not isinstance(entries, list):
        raise bad(AnnotationError, path, "expected a JSON list of entries")
    out, seen = [], set()
    for n, e in enumerate(entries):
        where = f"{path}[{n}]"
        if not isinstance(e, dict) or "id" not in e:
            problems(bad(AnnotationError, where, "entry is not an object with an 'id'"))
            continue
        vid = e["id"]
        vid = str(vid) if isinstance(vid, (str, int)) and not isinstance(vid, bool) else ""
        err = _check_id(vid, where)
        if err is not None:
            problems(err)
            continue
        t = e.get("template")
        if t is not None and not isinstance(t, str) or "template" in e and t is None:
            problems(bad(AnnotationError, where, f"template {t!r} is not a string"))
            continue
        add_row(out, seen, problems, key=vid, name=None if t is None else t.replace("[", "").replace("]", ""),
                split=split, where=where, folder=f"{media}/{vid}", index=index, labels_file=LABELS_FILE,
                no_label=f"entry {vid!r} has no 'template'")
    return out


def spec() -> DatasetSpec:
    return DatasetSpec(name="sthv2", num_classes=NUM_CLASSES, flip_pairs=FLIP_PAIRS,
                       splits=("train", "val", "test"), load_classes=load_classes, read=read,
                       options={"source": "auto"}, root_marker=(LABELS_FILE, LABELS_DIR_FILES["labels"]))

"""EgoGesture (83 classes; names bundled in ``egogesture_classes.txt`` since the release ships only numbers).

Layout (docs/DESIGN.md)::

    RAW/frames/SubjectXX/SceneN/Color/rgbG/000001.jpg     1-based frame numbers (Depth/ is unused)
    RAW/labels/SubjectXX/SceneN/GroupG.csv                 also spelled groupG.csv

Each CSV row is ``class,start,end`` (no header, all 1-based, ``end`` inclusive); blank/NaN rows are skipped.
Label = class - 1. One clip per gesture row; its key is ``SubjectXX/SceneN/rgbG#K`` where K is the 1-based
index of the row among the CSV's gesture rows (blank/NaN rows are not counted).

Options (off by default; the clean behaviour is the default):

* ``drop_last_two``: keep frames ``start .. end-2`` like the official code's ``range(start, end-1)``.
* ``train_on_trainval``: the "train" split also holds the val subjects (the official recipe, which then
  selects on test). "val" is still written.
"""
from __future__ import annotations

import math
import os
import re
from importlib import resources

from pipelines.ingest.datasets import ClipRef, DatasetSpec, Problems, bad
from pipelines.errors import AnnotationError

NUM_CLASSES = 83
SUBJECTS = {
    "train": (3, 4, 5, 6, 8, 10, 15, 16, 17, 20, 21, 22, 23, 25, 26, 27, 30, 32, 36, 38, 39, 40, 42, 43, 44, 45,
              46, 48, 49, 50),
    "val": (1, 7, 12, 13, 24, 29, 33, 34, 35, 37),
    "test": (2, 9, 11, 14, 18, 19, 28, 31, 41, 47),
}
FLIP_LABELS = ((0, 1), (9, 10), (13, 14), (58, 59), (64, 65), (70, 71), (76, 77), (80, 81))
"""0-based label pairs swapped by a horizontal flip (docs/DESIGN.md); ``FLIP_PAIRS`` holds them by name."""

_SUBJECT = re.compile(r"^Subject(\d+)$")
_SCENE = re.compile(r"^Scene(\d+)$")
_GROUP = re.compile(r"^[Gg]roup(\d+)\.csv$")


def load_classes(raw: str | None = None) -> list[str]:
    """The bundled 83 class names in label order (``raw`` is ignored)."""
    text = resources.files("pipelines.ingest.datasets").joinpath("egogesture_classes.txt").read_text(encoding="utf-8")
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(names) != NUM_CLASSES:  # pragma: no cover - packaging error
        raise AnnotationError(f"egogesture_classes.txt has {len(names)} names, expected {NUM_CLASSES}")
    return names


def subjects(split: str, *, train_on_trainval: bool = False) -> tuple[int, ...]:
    """Subject numbers of ``split``."""
    if split not in SUBJECTS:
        raise ValueError(f"egogesture has no split {split!r}")
    if split == "train" and train_on_trainval:
        return tuple(sorted(SUBJECTS["train"] + SUBJECTS["val"]))
    return SUBJECTS[split]


def _int(field: str) -> int | None:
    """Parse an integer field ('12', '12.0'); None if it is not an integer."""
    try:
        return int(field)
    except ValueError:
        pass
    try:
        v = float(field)
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and v.is_integer() else None


def _is_blank(field: str) -> bool:
    return field.strip().lower() in ("", "nan", "none", "null")


def _sorted_dirs(path: str, pattern: re.Pattern) -> list[tuple[int, str]]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    out = []
    for n in names:
        m = pattern.match(n)
        if m and os.path.isdir(os.path.join(path, n)):
            out.append((int(m.group(1)), n))
    return sorted(out)


def read_group_csv(path: str, problems: Problems, *, drop_last_two: bool = False
                   ) -> list[tuple[int, int, int, int]]:
    """Parse one GroupG.csv: ``[(row_index, label, start, end), ...]`` (row_index 1-based over gesture rows)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise bad(AnnotationError, path, f"cannot read ({e})") from None
    rows = []
    k = 0
    for n, line in enumerate(lines, 1):
        fields = [x.strip() for x in line.split(",")]
        if all(_is_blank(x) for x in fields):
            continue  # blank / NaN row (the release has some)
        k += 1
        where = f"{path}:{n}"
        if len(fields) != 3:
            problems(bad(AnnotationError, where, f"expected 'class,start,end', got {line.strip()!r}"))
            continue
        cls, start, end = (_int(x) for x in fields)
        if cls is None:
            problems(bad(AnnotationError, where, f"class {fields[0]!r} is not a number"))
            continue
        if start is None or end is None:
            problems(bad(AnnotationError, where, f"start/end {fields[1]!r},{fields[2]!r} are not numbers"))
            continue
        if not 1 <= cls <= NUM_CLASSES:
            problems(bad(AnnotationError, where, f"class {cls} is outside 1..{NUM_CLASSES}"))
            continue
        if start < 1 or start > end:
            problems(bad(AnnotationError, where, f"frame range {start}..{end} is empty or not 1-based"))
            continue
        if drop_last_two:
            if end - 2 < start:
                problems(bad(AnnotationError, where,
                             f"range {start}..{end} has fewer than 3 frames; cannot drop the last two"))
                continue
            end -= 2
        rows.append((k, cls - 1, start, end))
    return rows


def read(raw: str, split: str, problems: Problems, *, classes: list[str] | None = None,
         drop_last_two: bool = False, train_on_trainval: bool = False) -> list[ClipRef]:
    """Clips (one per gesture row) of the subjects of ``split``; subjects absent from RAW are skipped."""
    wanted = set(subjects(split, train_on_trainval=train_on_trainval))
    labels_root = os.path.join(raw, "labels")
    out: list[ClipRef] = []
    for subj, sname in _sorted_dirs(labels_root, _SUBJECT):
        if subj not in wanted:
            continue
        for _, scname in _sorted_dirs(os.path.join(labels_root, sname), _SCENE):
            scene_dir = os.path.join(labels_root, sname, scname)
            groups: dict[int, str] = {}
            for fn in sorted(os.listdir(scene_dir)):
                m = _GROUP.match(fn)
                if not m:
                    continue
                g = int(m.group(1))
                if g in groups:
                    problems(bad(AnnotationError, os.path.join(scene_dir, fn),
                                 f"both {groups[g]} and {fn} exist", "keep one of them"))
                    continue
                groups[g] = fn
            for g in sorted(groups):
                csv_path = os.path.join(scene_dir, groups[g])
                rel_csv = f"labels/{sname}/{scname}/{groups[g]}"
                for k, label, start, end in read_group_csv(csv_path, problems, drop_last_two=drop_last_two):
                    out.append(ClipRef(key=f"{sname}/{scname}/rgb{g}#{k}", label=label,
                                       folder=f"frames/{sname}/{scname}/Color/rgb{g}", start=start, end=end,
                                       source=f"{rel_csv}#{k}"))
    return out


def spec() -> DatasetSpec:
    names = load_classes()
    pairs = tuple((names[a], names[b]) for a, b in FLIP_LABELS)
    return DatasetSpec(name="egogesture", num_classes=NUM_CLASSES, flip_pairs=pairs,
                       splits=("train", "val", "test"), load_classes=load_classes, read=read,
                       options={"drop_last_two": False, "train_on_trainval": False}, root_marker="labels")

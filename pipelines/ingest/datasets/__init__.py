"""Dataset definitions: class names, label-aware flip maps and raw-layout readers.

``get(name)`` returns a :class:`DatasetSpec` for ``"egogesture"``, ``"jester"`` or ``"sthv2"``::

    spec = pipelines.ingest.datasets.get("jester")
    spec.flip_pairs                      # (("Swiping Left", "Swiping Right"), ...)  keyed by class NAME
    spec.flip_label_map(classes)         # np.int64 array: label -> label after a horizontal flip
    classes = spec.load_classes(raw)     # class names in label order, from the raw tree (or the bundled list)
    clips = spec.read(raw, "train", problems, **options)   # list[ClipRef] (no frame folder is opened)

Readers follow docs/DESIGN.md "Raw dataset layouts" exactly; they parse annotation files only. Frame folders are
listed and checked by :mod:`pipelines.ingest.convert` (``scan_folder``). Bad input goes through a
:class:`Problems` collector: strict (raise the :class:`~pipelines.errors.DataError`) or ``skip_bad`` (record
``{"path", "reason"}`` and go on). Nothing is read at import time.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipelines.errors import AnnotationError, DataError

NAMES = ("egogesture", "jester", "sthv2")


@dataclass(frozen=True)
class ClipRef:
    """One clip as the annotation files describe it (before its frame folder is looked at).

    Attributes:
        key: the id stored in the shard (``Subject03/Scene1/rgb2#4``, ``12345``).
        label: class index, -1 when unknown (test splits).
        folder: frame folder relative to RAW, posix separators.
        start, end: inclusive frame-number range to keep (``None``: every frame of the folder).
        source: annotation file (relative to RAW) and row, for messages.
    """

    key: str
    label: int
    folder: str
    start: int | None = None
    end: int | None = None
    source: str = ""


def bad(cls: type[DataError], path: str, problem: str, fix: str = "") -> DataError:
    """Build a DataError whose message is ``path: problem (fix)`` and which carries ``.path``/``.reason``."""
    msg = f"{path}: {problem}" + (f" ({fix})" if fix else "")
    e = cls(msg)
    e.path = str(path)  # type: ignore[attr-defined]
    e.reason = problem  # type: ignore[attr-defined]
    return e


@dataclass
class Problems:
    """Strict (raise) or lenient (record and continue) handling of bad input.

    ``raw`` is used to make recorded paths relative to the dataset root.
    """

    skip_bad: bool = False
    raw: str = ""
    skipped: list = field(default_factory=list)

    def rel(self, path: str) -> str:
        p = str(path)
        if self.raw:
            try:
                r = os.path.relpath(p, self.raw)
                if not r.startswith(".."):
                    p = r
            except ValueError:
                pass
        return p.replace(os.sep, "/")

    def __call__(self, err: DataError) -> None:
        """Handle one problem: raise it (strict) or record it (``skip_bad``)."""
        if not self.skip_bad:
            raise err
        self.skipped.append({"path": self.rel(getattr(err, "path", "")), "reason": getattr(err, "reason", str(err))})


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of the product needs to know about one dataset.

    Attributes:
        name: registry name.
        num_classes: number of classes of the official release.
        flip_pairs: pairs of class NAMES swapped by a horizontal flip.
        splits: split names the reader knows.
        load_classes: ``load_classes(raw) -> list[str]`` class names in label order (EgoGesture ignores
            ``raw`` and returns the bundled list).
        read: ``read(raw, split, problems, **options) -> list[ClipRef]``.
        options: reader options and their defaults (keyword arguments of ``read``).
        root_marker: file/folder (relative to RAW) whose presence marks a dataset root (a tuple: any of them).
    """

    name: str
    num_classes: int
    flip_pairs: tuple[tuple[str, str], ...]
    splits: tuple[str, ...]
    load_classes: Callable[[str], list[str]]
    read: Callable[..., list[ClipRef]]
    options: dict
    root_marker: str | tuple[str, ...]

    def flip_label_map(self, classes: list[str]) -> np.ndarray:
        """Return ``m`` (int64, len(classes)) with ``m[label]`` the label after a horizontal flip.

        Unpaired classes map to themselves. Raises DataError if a pair name is not in ``classes``.
        """
        return flip_label_map(classes, self.flip_pairs, where=self.name)

    def check_root(self, raw: str) -> None:
        """Raise AnnotationError unless ``raw`` looks like this dataset's root."""
        if not os.path.isdir(raw):
            raise bad(AnnotationError, raw, f"RAW is not a directory (expected a {self.name} dataset root)")
        markers = (self.root_marker,) if isinstance(self.root_marker, str) else self.root_marker
        if not any(os.path.exists(os.path.join(raw, m)) for m in markers):
            raise bad(AnnotationError, raw,
                      f"not a {self.name} dataset root: expected {' or '.join(os.path.join(raw, m) for m in markers)}",
                      "point --raw at the folder that holds the official annotation files and frames/")


def flip_label_map(classes: list[str], pairs, *, where: str = "dataset") -> np.ndarray:
    """Label map for a horizontal flip from name ``pairs`` over ``classes`` (see DatasetSpec.flip_label_map)."""
    index = {c: i for i, c in enumerate(classes)}
    m = np.arange(len(classes), dtype=np.int64)
    for a, b in pairs:
        for n in (a, b):
            if n not in index:
                raise DataError(f"{where}: flip pair class {n!r} is not among the {len(classes)} class names")
        m[index[a]], m[index[b]] = index[b], index[a]
    return m


def _check_id(vid: str, path: str) -> DataError | None:
    """None if ``vid`` is a safe single-component id, else the error to report."""
    if not vid or vid in (".", "..") or "/" in vid or "\\" in vid or ".." in vid or "\x00" in vid:
        return bad(AnnotationError, path, f"id {vid!r} is empty or contains a path separator or '..'",
                   "ids must be plain folder names under frames/")
    return None


def add_row(out: list, seen: set, problems: Problems, *, key: str, name: str | None, split: str, where: str,
            folder: str, index: dict, labels_file: str, no_label: str) -> None:
    """Append one annotation row's ClipRef, the rules every reader shares: ``name`` is the row's class name
    (None: the row has none, which only the test split may have -- else ``no_label`` is reported), unknown names
    and repeated ids are reported and the row left out."""
    label = -1
    if name is None and split != "test":
        problems(bad(AnnotationError, where, no_label))
        return
    if name is not None:
        if name not in index:
            problems(bad(AnnotationError, where, f"unknown label name {name!r}",
                         f"not one of the {len(index)} names in {labels_file}"))
            return
        label = index[name]
    if key in seen:
        problems(bad(AnnotationError, where, f"duplicate id {key!r}"))
        return
    seen.add(key)
    out.append(ClipRef(key=key, label=label, folder=folder, source=where))


@functools.lru_cache(maxsize=None)
def get(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered as ``name`` (``egogesture``, ``jester``, ``sthv2``)."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(NAMES)}")
    return importlib.import_module(f"pipelines.ingest.datasets.{name}").spec()

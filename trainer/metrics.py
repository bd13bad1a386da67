"""``RUN/metrics.jsonl`` and TensorBoard curves, written by rank 0 only.

Format of ``metrics.jsonl`` (docs/runs.md): one JSON object per line, each with ``kind`` and ``step`` (the global
step the record describes): ``train`` (a log interval), ``epoch`` (an epoch's summary, with the validation
scores), ``summary`` (the end of a training command), ``resume`` (a ``--resume`` at ``step``, with ``dropped``:
how many records past that step the earlier, killed process had written), ``val`` / ``test`` (the ``eval`` /
``test`` commands). Each ``step`` appears once per kind among train/epoch records across kills and resumes: a
resumed run first rewrites the file (atomically) without the records past its checkpoint, which the resumed run
writes again. A line that does not parse is the torn end of a killed append: readers skip it, a resume drops it.
TensorBoard gets the same guarantee from ``purge_step``: the events past the checkpoint are discarded.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from common.files import atomic_write

log = logging.getLogger("train")
_STEPPED = ("train", "epoch", "summary")  # the kinds a resume supersedes past its step


def read_records(path: Path) -> list[dict]:
    """The parsed records of a metrics file (torn lines skipped)."""
    out = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _truncate_after(path: Path, step: int) -> int:
    """Rewrite ``path`` without the train/epoch/summary records past ``step`` and without torn lines; how many
    were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind", "train") in _STEPPED and int(rec.get("step", 0)) > step:
            continue
        keep.append(line)
    atomic_write(path, "".join(x + "\n" for x in keep), fsync=True)
    return len(lines) - len(keep)


class MetricsLog:
    """Appends records to ``RUN/metrics.jsonl`` and scalars to ``RUN/tb``; ``resume_step`` (a resumed run's
    checkpoint step) supersedes what an earlier process wrote past it."""

    def __init__(self, run: Path, enabled: bool, *, resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None:
            dropped = _truncate_after(self.path, resume_step)
            self.write({"kind": "resume", "dropped": dropped}, resume_step)
        elif self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:  # a torn last line must not swallow the next record
                f.seek(-1, 2)
                torn = f.read(1) != b"\n"
            if torn:
                with open(self.path, "a") as f:
                    f.write("\n")
        try:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(str(Path(run) / "tb"), purge_step=purge)
        except ImportError:  # tensorboard is optional at run time
            log.warning("tensorboard is not installed: curves only in %s", self.path)

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"kind": record.get("kind", "train"), "step": int(step), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and record["kind"] != "resume":
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

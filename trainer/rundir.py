"""A run directory is owned: one run at a time holds ``RUN/.lock``, and a fresh run never writes over an old one.

:func:`claim` is called by global rank 0 before any work (the other ranks of the run wait for its answer, so all
ranks of one run share its lock):

* **Lock.** ``RUN/.lock`` is created with ``O_CREAT | O_EXCL`` and names host, pid and start time. A lock whose
  holder is gone is taken over with a log line: on the same host when its pid no longer exists; from another
  host when its heartbeat (the holder touches the file every :data:`HEARTBEAT_S` seconds) is older than
  :data:`STALE_S`. On a shared filesystem across nodes this relies on exclusive create and rename being atomic
  (POSIX local filesystems, NFSv3+, Lustre, GPFS; not on object storage) and on clocks agreeing to within a
  minute.
* **Ownership.** A fresh run into a directory that holds an earlier run (:data:`USED`) stops with one line; with
  ``overwrite`` the earlier run's files are moved aside into ``RUN.replaced-<time>/`` next to it, never deleted.
* **Leftovers.** Temporary files of killed writes (:func:`common.files.temp_name` names only) are removed --
  safe because nobody else writes in a locked directory.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from common.files import remove_stale_temps
from trainer.errors import TrainingError

log = logging.getLogger("train")
LOCK = ".lock"
USED = ("last.pt", "best.pt", "config.json", "metrics.jsonl")  # any of these: an earlier run lives here
HEARTBEAT_S = 30.0
STALE_S = 300.0


def _holder_text(h: dict) -> str:
    return f"{h.get('host', '?')} pid {h.get('pid', '?')} since {h.get('started', '?')}"


def _read(path: Path) -> dict | None:
    try:
        h = json.loads(path.read_text())
        return h if isinstance(h, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written right now, or torn: judged by its age


def _gone(path: Path, h: dict) -> bool:
    """True when the holder ``h`` of the lock at ``path`` is no longer running."""
    if h.get("host") == socket.gethostname() and isinstance(h.get("pid"), int):
        try:
            os.kill(h["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - path.stat().st_mtime > STALE_S
    except FileNotFoundError:
        return True


class RunLock:
    """``RUN/.lock`` held by this process until :meth:`release` (a daemon thread refreshes its heartbeat)."""

    def __init__(self, run: Path):
        self.path = Path(run) / LOCK
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        self._stop = threading.Event()

    def acquire(self) -> None:
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                self._take_over_or_fail()
                continue
            with open(fd, "w") as f:
                f.write(json.dumps(self.me) + "\n")
                f.flush()
                os.fsync(f.fileno())
            threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True).start()
            return
        raise TrainingError(f"{self.path}: cannot take the run lock (it keeps changing hands); choose another --run-dir")

    def _take_over_or_fail(self) -> None:
        h = _read(self.path)
        if h is None:
            return  # released meanwhile: try again
        if not _gone(self.path, h):
            raise TrainingError(f"{self.path.parent}: another run holds this directory ({_holder_text(h)}); wait for "
                                f"it to end, stop it, or choose another --run-dir")
        aside = self.path.with_name(f"{LOCK}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)  # one taker wins; the others find no file or a live lock
        except FileNotFoundError:
            return
        moved = _read(aside)
        if moved != h and moved:  # someone took it over between our read and our rename: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            raise TrainingError(f"{self.path.parent}: another run holds this directory ({_holder_text(moved)}); "
                                f"wait for it to end, stop it, or choose another --run-dir")
        os.unlink(aside)
        log.warning("%s: took over the lock of %s, which is gone", self.path, _holder_text(h))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if _read(self.path) == self.me:
            os.unlink(self.path)


def is_used(run: Path) -> bool:
    return any((Path(run) / name).exists() for name in USED)


def _move_aside(run: Path) -> Path:
    """Move every entry of ``run`` but the lock into a new sibling ``RUN.replaced-<time>``; that folder."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = run.with_name(f"{run.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = run.with_name(f"{run.name}.replaced-{stamp}-{n}")
    aside.mkdir()
    for entry in run.iterdir():
        if entry.name != LOCK:
            os.rename(entry, aside / entry.name)
    return aside


def claim(run: Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Lock ``run`` for this run and make it ready: checked for an earlier run (moved aside with ``overwrite``)
    and cleared of stale temporary files. TrainingError (one line) when it is not ours to use."""
    if resume and overwrite:
        raise TrainingError("--resume continues the run in --run-dir and --overwrite moves it aside: give one")
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run)
    lock.acquire()
    try:
        if not resume and is_used(run):
            if not overwrite:
                raise TrainingError(f"{run} holds an earlier run: continue it with --resume, start over with "
                                    f"--overwrite (moves it aside), or choose another --run-dir")
            log.warning("%s: the earlier run was moved to %s (--overwrite)", run, _move_aside(run))
        for p in remove_stale_temps(run):
            log.warning("%s: removed a temporary file left by a killed write", p)
    except BaseException:
        lock.release()
        raise
    return lock

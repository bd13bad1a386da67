"""Run checkpoints: one saver (``RUN/last.pt``, ``RUN/best.pt``) and one loader.

Saving goes through :func:`common.files.atomic_path` with fsync: a temporary name next to the final one,
created exclusively and never followed if planted as a symlink, renamed into place only when complete -- a kill
or a full disk leaves the previous checkpoint intact. Loading uses ``torch.load(weights_only=True)`` (no pickle
code runs) and refuses a ``last.pt``/``best.pt`` that is a symlink out of the run directory.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

from common.files import atomic_path
from trainer.errors import TrainingError

CKPT_FORMAT = "action-run"
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically, fsynced; a full disk is a TrainingError naming the fix."""
    import torch

    path = Path(path)
    try:
        with atomic_path(path, fsync=True) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
            with open(fd, "wb") as f:
                torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        # a real ENOSPC inside torch.save surfaces as the zip writer's RuntimeError ("unexpected pos"), with the
        # OSError as its context: look through the chain
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if isinstance(cause, OSError) and cause.errno in _FULL:
            raise TrainingError(f"{path}: no space left on device while writing the checkpoint; "
                                "the previous checkpoint is kept — free disk space and run again with --resume") from None
        if cause is None:
            raise
        raise TrainingError(f"{path}: cannot write checkpoint ({cause.strerror or cause})") from None


def check_in_run(path: Path) -> Path:
    """``path`` (a checkpoint inside a run directory) unless it is a symlink that resolves outside that directory."""
    path = Path(path)
    top = Path(os.path.realpath(path.parent))
    real = Path(os.path.realpath(path))
    if path.is_symlink() and top not in real.parents:
        raise TrainingError(f"{path}: refusing to load: it is a symlink to {real}, outside the run directory {top}")
    return path


def load_run_checkpoint(path: Path) -> dict:
    """A checkpoint written by :class:`Checkpointer` (TrainingError naming the file for anything else)."""
    import torch

    path = check_in_run(Path(path))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from (start a new run with --overwrite instead of "
                           "--resume)") from None
    except pickle.UnpicklingError as e:
        raise TrainingError(f"{path}: refusing to load: not a plain weights checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as e:
        raise TrainingError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise TrainingError(f"{path}: not a train.py run checkpoint (use --init-from for official weights)")
    return ck


class Checkpointer:
    """Writes ``RUN/last.pt`` (and copies it to ``RUN/best.pt`` when asked) on the main rank."""

    def __init__(self, run: Path, main: bool):
        self.run, self.main = Path(run), main
        self.last, self.best = self.run / "last.pt", self.run / "best.pt"

    def save(self, state: dict, *, best: bool = False) -> None:
        if not self.main:
            return
        save_atomic({"format": CKPT_FORMAT, "version": 2, **state}, self.last)
        if best:
            try:
                with atomic_path(self.best, fsync=True) as tmp:
                    shutil.copyfile(self.last, tmp)
            except OSError as e:
                if e.errno in _FULL:
                    raise TrainingError(f"{self.best}: no space left on device while copying the best checkpoint; "
                                        f"{self.last} is complete — free disk space and run again with --resume") from None
                raise TrainingError(f"{self.best}: cannot write checkpoint ({e.strerror or e})") from None

    def load_last(self) -> dict:
        return load_run_checkpoint(self.last)

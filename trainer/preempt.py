"""Preemption: SIGTERM, SIGINT and SIGUSR1 ask the run to stop at a step boundary with a checkpoint.

The first signal only sets a flag (:class:`StopRequest`); the training loop reads it where it already reduces
its metrics over the ranks (every ``--log-interval`` steps, at checkpoints and at the end of an epoch), so
the ranks agree on the stop step without a host sync of their own: the flag travels in the same all-reduce as
the loss (a single process stops after the step it is in). The run then writes ``RUN/last.pt`` at that step and
exits with :data:`PREEMPTED` (75, EX_TEMPFAIL: "try again"), which a scheduler can requeue on; ``--resume``
continues exactly from it.

A second signal more than :data:`REPEAT_S` seconds after the first exits at once (status 128 + signal number,
no checkpoint). A repeat within that window counts as the same request: torchrun forwards the signal it gets
to its workers, and a terminal's Ctrl-C reaches the workers directly as well.
"""
from __future__ import annotations

import os
import signal
import time

from trainer.errors import TrainingError

PREEMPTED = 75
REPEAT_S = 2.0
SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n))


class Preempted(TrainingError):
    """The run stopped on a signal after writing its checkpoint (exit status :data:`PREEMPTED`)."""


class StopRequest:
    """While installed (a context manager, main thread only), the signals in :data:`SIGNALS` set
    :attr:`signum` instead of ending the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._at = 0.0
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._at = signum, now
            os.write(2, f"{signal.Signals(signum).name}: stopping after this step with a checkpoint (send it "
                        f"again to exit at once)\n".encode())
        elif now - self._at > REPEAT_S:
            os.write(2, f"{signal.Signals(signum).name} again: exiting now without a checkpoint\n".encode())
            os._exit(128 + signum)

    def __enter__(self) -> "StopRequest":
        for s in SIGNALS:
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

"""``train.py`` that SIGKILLs itself at the start of training step K (a deterministic preemption point).

    TRAIN_KILL_AT_STEP=K python tests/trainhook.py train ...            # one process
    TRAIN_KILL_AT_STEP=K torchrun ... tests/trainhook.py train ...      # every rank dies at the same step

Steps are counted per process from the start of this run segment (1 = the first step it trains), at the entry to
the step's forward pass (``trainer.loop.autocast``, entered once per train step; runs that use it for more --
evaluation, the synthetic ceiling -- must disable those: ``--eval-every 0 --ceiling-steps 0``).
"""
from __future__ import annotations

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import trainer.loop as loop  # noqa: E402

KILL_AT = int(os.environ.get("TRAIN_KILL_AT_STEP", "0"))
_real, _n = loop.autocast, 0


def _counting(*a, **k):
    global _n
    _n += 1
    if _n == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(*a, **k)


loop.autocast = _counting
sys.argv[0] = os.path.join(ROOT, "train.py")
from train import cli  # noqa: E402

cli()

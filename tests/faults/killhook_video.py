"""``tests/faults/killhook.py`` for video conversions: the same numbered fault points plus the entry to and the
return from decoding one video (``pipelines.ingest.video.read_clip``). Used by test_kill_convert_video.py.

    FAULT_KILL_AT=k python tests/faults/killhook_video.py sthv2 --raw ... --out ...   # SIGKILL itself at event k
    FAULT_COUNT_FILE=f python tests/faults/killhook_video.py ...                       # count the events into f
"""
from __future__ import annotations

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from pipelines.ingest import video

_read_clip = video.read_clip


def _decode(*a, **k):  # ticks through killhook's counter, so one numbering covers every event
    tick = sys.modules["__main__"].__dict__.get("_tick") or (lambda: None)
    tick()
    r = _read_clip(*a, **k)
    tick()
    return r


video.read_clip = _decode
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "killhook.py"), run_name="__main__")

"""Run ``tools/convert_dataset.py`` with numbered fault points (used by test_kill_convert.py).

    FAULT_KILL_AT=k python tests/faults/killhook.py jester --raw ... --out ...   # SIGKILL itself at event k
    FAULT_COUNT_FILE=f python tests/faults/killhook.py ...                       # count the events into f

An *event* is the entry to and the return from each step of the write path: reading one clip's frames,
building a record batch, writing it to the Arrow file, hashing the finished temporary file, writing a JSON
file atomically (shard state, manifest) and moving a shard into place (the return of ``write_shard``).
"""
from __future__ import annotations

import atexit
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import pyarrow as pa  # noqa: E402

import pipelines.ingest.convert as cv  # noqa: E402
import pipelines.shards.writer as sh  # noqa: E402
import pipelines.shards.storage as storage  # noqa: E402

KILL_AT = int(os.environ.get("FAULT_KILL_AT", "0"))
COUNT_FILE = os.environ.get("FAULT_COUNT_FILE")
_n = 0


def _tick() -> None:
    global _n
    _n += 1
    if _n == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner, name: str) -> None:
    fn = getattr(owner, name)

    def wrapped(*a, **k):
        _tick()
        r = fn(*a, **k)
        _tick()
        return r

    setattr(owner, name, wrapped)


for _owner, _name in ((cv, "_read_clip"), (sh, "make_batch"), (storage, "write_json_atomic"), (storage, "sha256_file"),
                      (sh, "write_shard"), (pa.ipc.RecordBatchFileWriter, "write_batch")):
    _wrap(_owner, _name)

if COUNT_FILE:
    atexit.register(lambda: open(COUNT_FILE, "w").write(str(_n)))

sys.argv[0] = "convert_dataset.py"
from tools.convert_dataset import cli  # noqa: E402

cli()

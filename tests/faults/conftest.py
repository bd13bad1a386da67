"""Fault-injection suite (issue 10): fast subset by default, the whole matrix with ``--run-all-faults``.

* Every test here carries the ``faults`` marker (``pytestmark`` in each file), so ``make test-faults``
  (``pytest -m faults --run-all-faults``) selects exactly this suite.
* ``scale(fast, full)`` (fixture ``scale``) picks the number of tries for the current mode: a plain
  ``pytest`` / ``make test`` runs the small numbers (the whole folder in well under a minute), ``--run-all-faults``
  the large ones (>= 20 kill points, hundreds of hypothesis examples).
* Hypothesis: profiles ``faults-fast`` / ``faults-full`` (``derandomize=True``, ``deadline=None``): the same
  examples every run. Tests apply them explicitly (``hyp_settings``) so other test files are unaffected.
* Results: each test calls ``record(fault, tries, outcome, area=...)``. With ``--run-all-faults`` the session
  merges the rows into ``bench/results/reliability.json`` (atomically; the rows of tests that ran are
  replaced, those of tests that did not run -- a partial ``-k`` run -- are kept) and rewrites the table in
  docs/reliability.md and its one-line summary in README.md with ``tools/reliability_table.py --write``. A
  failed test's rows are recorded as ``FAILED``. The fast subset writes nothing (``make test`` never edits tracked files).
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "reliability.json"
README = ROOT / "README.md"
TABLE = ROOT / "docs" / "reliability.md"

_COMMON = dict(derandomize=True, deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.register_profile("faults-fast", max_examples=100, **_COMMON)
settings.register_profile("faults-full", max_examples=1000, **_COMMON)


def full_mode(config) -> bool:
    return bool(config.getoption("--run-all-faults"))


class Recorder:
    """Rows ``{fault, area, tries, outcome, test}`` collected during the session."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failed: set[str] = set()
        self.ran: set[str] = set()
        self.skipped: dict[str, str] = {}

    def add(self, nodeid: str, fault: str, tries: int, outcome: str, area: str) -> None:
        self.rows.append({"fault": fault, "area": area, "tries": int(tries), "outcome": outcome, "test": nodeid})


_REC = Recorder()


@pytest.fixture
def record(request):
    """``record(fault, tries, outcome, area="convert")``: one row of the Reliability table."""
    def add(fault: str, tries: int, outcome: str, *, area: str) -> None:
        _REC.add(request.node.nodeid, fault, tries, outcome, area)
    return add


@pytest.fixture
def full(request) -> bool:
    """True under ``--run-all-faults`` (the whole matrix)."""
    return full_mode(request.config)


@pytest.fixture
def scale(full):
    """``scale(fast, full)``: the number of tries for this mode."""
    return lambda fast, many: many if full else fast


@pytest.fixture
def hyp_settings(full):
    """The hypothesis settings object of this mode (use as a decorator)."""
    return settings(settings.get_profile("faults-full" if full else "faults-fast"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if "tests/faults/" in item.nodeid.replace(os.sep, "/"):
        _REC.ran.add(item.nodeid)
        if rep.failed:
            _REC.failed.add(item.nodeid)
        elif rep.skipped and isinstance(rep.longrepr, tuple):
            _REC.skipped[item.nodeid] = str(rep.longrepr[2]).removeprefix("Skipped: ")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from common.files import atomic_write

    atomic_write(path, text)


def pytest_sessionfinish(session, exitstatus):
    if not full_mode(session.config) or not (_REC.rows or _REC.failed or _REC.skipped):
        return
    try:
        old = json.loads(RESULTS.read_text())
        # keep the rows of tests that did not run this time (a partial ``-k`` run); the others are replaced
        rows = {r["fault"]: r for r in old.get("rows", []) if r.get("test") not in _REC.ran}
    except (OSError, ValueError, AttributeError):
        rows = {}
    recorded = {r["test"] for r in _REC.rows}
    for nodeid in sorted(_REC.failed - recorded):  # failed before it could record its row
        _REC.rows.append({"fault": nodeid.split("::")[-1], "area": "?", "tries": 0, "outcome": "not recorded",
                          "test": nodeid})
    for nodeid, why in sorted(_REC.skipped.items()):
        if nodeid not in recorded:
            _REC.rows.append({"fault": nodeid.split("::")[-1], "area": "?", "tries": 0,
                              "outcome": f"SKIPPED ({why})", "test": nodeid})
    for r in _REC.rows:
        r = dict(r)
        if r["test"] in _REC.failed:
            r["outcome"] = f"FAILED ({r['outcome']})"
        rows[r["fault"]] = r
    data = {"generated_by": "make test-faults (pytest -m faults --run-all-faults)",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": sys.version.split()[0], "rows": list(rows.values())}
    _write_atomic(RESULTS, json.dumps(data, indent=1) + "\n")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "reliability_table.py"), "--results", str(RESULTS),
                        "--write", "--doc", str(TABLE), "--readme", str(README)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(f"tools/reliability_table.py failed:\n{r.stderr}\n")

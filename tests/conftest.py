"""Shared pytest configuration: markers and options (fixtures live next to the tests that use them)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from s3server import s3_server, s3_server_session  # noqa: F401 - a real S3 server (moto) on 127.0.0.1


def pytest_addoption(parser):
    parser.addoption("--run-all-faults", action="store_true", default=False,
                     help="run the whole fault-injection suite (make test-faults), not only its fast subset")


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    try:  # property tests draw the same examples every run (the fault suite applies its own profiles explicitly)
        from hypothesis import settings
    except ImportError:
        return
    settings.register_profile("project", derandomize=True, deadline=None)
    settings.load_profile("project")


def pytest_collection_modifyitems(config, items):
    """``SKIP_SLOW=1``: skip the tests marked ``slow`` (pyproject.toml's marker list says what they are)."""
    if os.environ.get("SKIP_SLOW", "") not in ("", "0"):
        skip = pytest.mark.skip(reason="SKIP_SLOW is set: slow tests skipped")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def make_raw(tmp_path):
    """Factory fixture: ``make_raw("jester", **kw)`` builds a tiny raw tree under tmp_path (see tests/rawtrees.py)."""
    import rawtrees

    def build(name: str, **kw) -> dict:
        return rawtrees.make_tree(name, tmp_path / f"raw-{name}", **kw)

    return build

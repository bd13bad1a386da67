"""The tools as a user runs them: from a fresh `git clone` of this checkout, with the venv's python, no PYTHONPATH
and another working directory -- each tool finds the project next to it (its import-path line), not through
whatever checkout the venv's editable install points at."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["train.py", "tools/bench_report.py", "tools/convert_dataset.py", "tools/demo.py", "tools/make_synthetic.py",
         "tools/profile_loader.py", "tools/reliability_table.py", "tools/stage_gpu_wheels.py"]


PROBE = """
import os, runpy, sys
tool = sys.argv[1]
sys.argv, sys.path[0] = [tool, "--help"], os.path.dirname(tool)
try:
    runpy.run_path(tool, run_name="__main__")
except SystemExit:
    pass
import action, common.files, pipelines.loader, trainer
print("IMPORTED", action.__file__, common.files.__file__, pipelines.loader.__file__, trainer.__file__)
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (the test clones it)")
    dst = tmp_path_factory.mktemp("checkout") / "repo"
    r = subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dst)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return dst


def test_tools_listed_are_all_the_tools():
    # every script (a file with a __main__ block); modules the tools import (demo_predict.py) are not run alone
    found = [p for p in (ROOT / "tools").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()]
    assert sorted(TOOLS[1:]) == sorted(f"tools/{p.name}" for p in found)


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help_from_a_fresh_clone_without_pythonpath(clone, tool, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, str(clone / tool), "--help"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower() and "Traceback" not in r.stderr
    # the tool's top level as `python TOOL` runs it (sys.path[0] = its folder), then the project's packages as its
    # lazy imports would find them: all from the clone, none through the venv's editable install
    r = subprocess.run([sys.executable, "-c", PROBE, str(clone / tool)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    files = [x for x in r.stdout.splitlines() if x.startswith("IMPORTED ")][-1].split()[1:]
    assert len(files) == 4 and all(Path(f).resolve().is_relative_to(clone.resolve()) for f in files), (tool, files)

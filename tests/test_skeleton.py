"""The repository's import-time and layering rules (DEVELOPERS guide: "How we write code")."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(pkg: str) -> set[str]:
    found = set()
    for path in (ROOT / pkg).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("pkg, forbidden", [("action", "pipelines"), ("pipelines", "action")])
def test_layers_never_import_each_other(pkg, forbidden):
    assert forbidden not in _imports(pkg), f"{pkg}/ must not import {forbidden}/ (train.py joins them)"


@pytest.mark.parametrize("module", ["action", "pipelines", "pipelines.shards.format", "pipelines.plan.clip", "pipelines.errors"])
def test_import_has_no_side_effects(module):
    """Importing prints nothing, initialises no CUDA and does not pull in DALI."""
    code = (
        "import sys, io, contextlib\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    import {module}\n"
        "assert buf.getvalue() == '', buf.getvalue()\n"
        "assert 'nvidia.dali' not in sys.modules, 'DALI imported at import time'\n"
        "import torch\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme

"""Nothing escapes its root and nothing executes code from data files.

* annotation ids with ``..``, separators or absolute paths; frame folders / frames that are symlinks out of
  the dataset tree -> refused (strict) or skipped and listed (``--skip-bad``);
* shard paths in the manifest with ``..``, absolute, or a symlink out of the dataset root -> ShardError at open
  and in ``verify``;
* checkpoints: only ``torch.load(weights_only=True)``; a pickle payload is refused with a clear message and its
  code never runs (a marker file it would create stays absent) -- in ``load_checkpoint``, ``--resume`` and the
  ``eval`` CLI; a run's ``last.pt``/``best.pt`` symlinked out of the run directory is refused; saving never
  writes through a planted symlink.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from action import build_model, load_checkpoint
from action.errors import CheckpointError
from pipelines.shards import reader
from pipelines.ingest.convert import convert_dataset
from pipelines.errors import AnnotationError, FrameError, ShardError
from pipelines.shards.reader import ShardDataset
from trainer import checkpoint as C
from trainer.config import make_config
from trainer.errors import TrainingError

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
PY_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------ annotations
BAD_IDS = ["..", "../escape", "a/../../b", "/etc", "/tmp/x", "sub/dir", "a\\b", ".", "x\x00y", "..hidden"]


def test_annotation_ids_cannot_escape(make_raw, tmp_path, record):
    tree = make_raw("jester", n_train=2, n_val=1, n_test=1)
    raw = Path(tree["root"])
    (tmp_path / "escape").mkdir()  # a real folder the ids point at
    good = (raw / "jester-v1-train.csv").read_text()
    n = 0
    for vid in BAD_IDS:
        for fmt_ in ("jester", "sthv2"):
            if fmt_ == "jester":
                (raw / "jester-v1-train.csv").write_text(good + f"{vid};Swiping Left\n")
                with pytest.raises(AnnotationError, match="path separator or '..'"):
                    convert_dataset("jester", raw, tmp_path / "o", splits="train")
                m = convert_dataset("jester", raw, tmp_path / "o", splits="train", skip_bad=True)
                assert len(m["skipped"]) == 1 and m["splits"]["train"]["clips"] == 2
            else:
                from pipelines.ingest.datasets import Problems, sthv2
                ssv2 = tmp_path / "ssv2"
                if not ssv2.exists():
                    make_raw("sthv2", n_train=1, n_val=1, n_test=1)
                    ssv2 = tmp_path / "raw-sthv2"
                entries = json.loads((ssv2 / "something-something-v2-train.json").read_text())
                entries.append({"id": vid, "template": entries[0]["template"]})
                (ssv2 / "something-something-v2-train.json").write_text(json.dumps(entries))
                with pytest.raises(AnnotationError):
                    sthv2.read(str(ssv2), "train", Problems())
                entries.pop()
                (ssv2 / "something-something-v2-train.json").write_text(json.dumps(entries))
            n += 1
    (raw / "jester-v1-train.csv").write_text(good)
    record("annotation ids with `..`, `/`, `\\`, absolute paths or NUL (Jester CSV, SSv2 JSON)", n,
           f"{n}/{n} refused with AnnotationError (strict) / skipped and listed (--skip-bad)", area="security")


def test_frame_symlinks_out_of_the_tree(make_raw, tmp_path, record):
    tree = make_raw("jester", n_train=3, n_val=1, n_test=1)
    raw = Path(tree["root"])
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "00001.jpg"
    key, clip = next(iter(tree["clips"]["train"].items()))
    shutil.copy(clip["files"][0], secret)  # a valid JPEG: would be packed silently if symlinks were followed
    cases = 0
    # 1. a frame file symlinked out
    f0 = Path(clip["files"][0])
    f0.unlink()
    f0.symlink_to(secret)
    with pytest.raises(FrameError, match="outside"):
        convert_dataset("jester", raw, tmp_path / "o1", splits="train")
    m = convert_dataset("jester", raw, tmp_path / "o1", splits="train", skip_bad=True)
    assert m["splits"]["train"]["clips"] == 2 and "outside" in m["skipped"][0]["reason"]
    cases += 1
    # 2. a whole frame folder symlinked out
    folder = raw / "frames" / key
    shutil.rmtree(folder)
    folder.symlink_to(outside, target_is_directory=True)
    with pytest.raises(FrameError, match="outside"):
        convert_dataset("jester", raw, tmp_path / "o2", splits="train")
    cases += 1
    # 3. a symlink inside the tree is fine (dedup'd frames), and so is RAW/frames itself on another disk
    folder.unlink()
    folder.mkdir()
    other_key = next(iter(tree["clips"]["val"]))
    for p in sorted((raw / "frames" / other_key).iterdir()):
        (folder / p.name).symlink_to(p)
    moved = tmp_path / "frames-disk"
    shutil.move(str(raw / "frames"), moved)
    (raw / "frames").symlink_to(moved, target_is_directory=True)
    m = convert_dataset("jester", raw, tmp_path / "o3", splits="train")
    assert m["splits"]["train"]["clips"] == 3
    cases += 1
    record("frame file / frame folder symlinked out of the raw tree", cases,
           "refused with FrameError naming the resolved path (strict) / skipped (--skip-bad); symlinks inside "
           "the tree and a symlinked RAW/frames still convert", area="security")


# ------------------------------------------------------------------------------------------------ manifest
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from rawtrees import make_jester

    base = tmp_path_factory.mktemp("sec-shards")
    make_jester(base / "raw", n_train=3, n_val=1, n_test=1, seed=1)
    convert_dataset("jester", base / "raw", base / "shards", splits="train", shard_mb=1.0)
    return base / "shards"


def _edit_manifest(root: Path, path: str) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["path"] = path
    (root / "manifest.json").write_text(json.dumps(m))


def test_manifest_shard_paths_cannot_escape(shards, tmp_path, record):
    n = 0
    outside = tmp_path / "stolen.arrow"
    for bad in ["../stolen.arrow", "../../etc/passwd", "/etc/passwd", str(outside), "train/../../x.arrow",
                "C:/x.arrow", "train\\..\\..\\x.arrow", "", "."]:
        root = tmp_path / f"m{n}"
        shutil.copytree(shards, root)
        shutil.copy(next((shards / "train").glob("*.arrow")), tmp_path / "stolen.arrow")
        _edit_manifest(root, bad)
        for check in (lambda: ShardDataset(root, "train"), lambda: reader.verify(root)):
            with pytest.raises(ShardError, match="relative|escapes|non-empty"):
                check()
        n += 1
    # symlinks out of the root: the shard file, and its split folder
    for kind in ("file", "folder"):
        root = tmp_path / f"l-{kind}"
        shutil.copytree(shards, root)
        shard = next((root / "train").glob("*.arrow"))
        ext = tmp_path / f"ext-{kind}"
        ext.mkdir()
        if kind == "file":
            shutil.move(str(shard), ext / shard.name)
            shard.symlink_to(ext / shard.name)
        else:
            shutil.move(str(root / "train"), ext / "train")
            (root / "train").symlink_to(ext / "train", target_is_directory=True)
        for check in (lambda: ShardDataset(root, "train"), lambda: reader.verify(root)):
            with pytest.raises(ShardError, match="outside the dataset root"):
                check()
        n += 1
    record("manifest shard paths with `..`, absolute, drive or empty names, or symlinked out of the root", n,
           f"{n}/{n} refused with ShardError at open and by `verify`", area="security")


# ------------------------------------------------------------------------------------------------ checkpoints
class _Payload:
    """Unpickling this runs ``open(marker, 'w')`` -- what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path: Path, marker: Path, layout: str) -> None:
    payload = _Payload(marker)
    if layout == "state_dict":
        obj = {"state_dict": {"new_fc.weight": torch.zeros(1)}, "x": payload}
    elif layout == "run":
        obj = {"format": C.CKPT_FORMAT, "model": {}, "hook": payload}
    else:
        obj = payload
    torch.save(obj, path)


def test_pickle_payload_checkpoints_are_refused(tmp_path, record):
    model = build_model(arch="resnet18", num_classes=5, num_segments=2, temporal="action")
    marker = tmp_path / "pwned"
    n = 0
    for layout in ("state_dict", "run", "bare"):
        ck = tmp_path / f"evil-{layout}.pt"
        _evil(ck, marker, layout)
        with pytest.raises(CheckpointError, match="refusing to unpickle"):
            load_checkpoint(model, ck)
        with pytest.raises(TrainingError, match="refusing to load"):
            C.load_run_checkpoint(ck)
        n += 2
    # the CLI: train --resume with a planted last.pt, and eval --checkpoint: one line, no traceback
    run = tmp_path / "run"
    run.mkdir()
    _evil(run / "last.pt", marker, "run")
    (run / "config.json").write_text(json.dumps(make_config(
        {"dataset": "jester", "data": "", "run_dir": str(run), "device": "cpu",
         "arch": "resnet18", "num_segments": 2, "size": 64, "num_classes": 5, "synthetic": True}).to_json()))
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "train", "--run-dir", str(run), "--resume"],
                       capture_output=True, text=True, env=PY_ENV, timeout=300)
    assert r.returncode != 0 and "refusing to load" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "eval", "--run-dir", str(run), "--checkpoint",
                        str(tmp_path / "evil-state_dict.pt")], capture_output=True, text=True, env=PY_ENV,
                       timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    n += 2
    assert not marker.exists(), "a checkpoint's pickle payload was executed"
    record("checkpoint with a pickle payload (3 layouts; load_checkpoint, --resume, eval CLI)", n,
           f"{n}/{n} refused with a one-line 'refusing to unpickle/load' error; the payload never ran",
           area="security")


def test_checkpoint_paths_stay_in_the_run_dir(tmp_path, record):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    n = 0
    # 1. last.pt planted as a symlink out of the run dir: loading refuses, saving replaces the link only
    (run / "last.pt").symlink_to(victim)
    with pytest.raises(TrainingError, match="outside the run directory"):
        C.load_run_checkpoint(run / "last.pt")
    C.save_atomic({"a": torch.ones(2)}, run / "last.pt")
    assert victim.read_text() == "precious" and not (run / "last.pt").is_symlink()
    n += 2
    # 2. the temporary name planted as a symlink: never written through
    tmp = run / f".best.pt.tmp-{os.getpid()}"
    tmp.symlink_to(victim)
    C.save_atomic({"a": torch.ones(2)}, run / "best.pt")
    assert victim.read_text() == "precious"
    n += 1
    # 3. eval without --checkpoint picks RUN/best.pt: a symlink out of the run is refused
    (run / "best.pt").unlink()
    (run / "best.pt").symlink_to(victim)
    with pytest.raises(TrainingError, match="outside the run directory"):
        C.check_in_run(run / "best.pt")
    # a symlink inside the run dir is fine
    (run / "best.pt").unlink()
    (run / "best.pt").symlink_to(run / "last.pt")
    assert C.check_in_run(run / "best.pt") == run / "best.pt"
    n += 2
    record("checkpoint paths: last.pt/best.pt/temp name symlinked out of the run directory", n,
           f"{n}/{n}: loads refused with a clear message; saves replace the link and never write through it",
           area="security")


# ------------------------------------------------------------------------------------------------ code from data
_FORBIDDEN = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\b(?<!\.)eval\("), "eval("),
    (re.compile(r"\bexec\("), "exec("),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\byaml\.(unsafe_)?load\("), "yaml.load"),
    (re.compile(r"\bmarshal\.loads?\("), "marshal.load"),
    (re.compile(r"\bshelve\.open\("), "shelve.open"),
]


def test_no_code_runs_from_data_files(record):
    """Static check of the product's code: every torch.load passes weights_only=True, and nothing unpickles,
    evals or execs what it reads (manifests/configs are JSON/TOML, annotations CSV/JSON)."""
    files = [ROOT / "train.py", *sorted((ROOT / "trainer").rglob("*.py")), *sorted((ROOT / "pipelines").rglob("*.py")),
             *sorted((ROOT / "action").rglob("*.py")),
             *sorted((ROOT / "tools").glob("*.py"))]
    loads = 0
    for f in files:
        text = f.read_text()
        for pat, what in _FORBIDDEN:
            assert not pat.search(text), f"{f.relative_to(ROOT)} uses {what}"
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start():text.find(")", m.end()) + 1]
            assert "weights_only=True" in call, f"{f.relative_to(ROOT)}: {call}"
            loads += 1
    record("code paths that could run code from data files (static scan of train.py, trainer/, pipelines/, action/, tools/)",
           len(files), f"{len(files)} files: every torch.load ({loads}) has weights_only=True; no pickle/marshal/"
           "shelve/yaml.load, eval, exec or allow_pickle", area="security")

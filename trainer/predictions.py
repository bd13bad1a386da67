"""Per-clip predictions of ``train.py test`` / ``eval``: the leaderboard file of the dataset, a JSON with the top-5
class names and scores of every clip, and the full score matrix.

Files (``SPLIT`` is the scored split, e.g. ``test``; ``train.py eval`` writes ``predictions-SPLIT-eval.*``)::

    RUN/predictions-SPLIT.csv    the leaderboard's format (below), one line per clip, ids in ascending order
    RUN/predictions-SPLIT.json   {"dataset", "split", "checkpoint", "score", "classes", "clips": [
                                   {"id", "top5": [5 class names, best first], "top5_scores": [...],
                                    "label": class name or null}, ...]}          (same clip order as the CSV)
    RUN/predictions-SPLIT.npy    float32 (clips, classes): the score of every class, rows in the JSON's order

Leaderboard formats (no header, ``;`` separated, as the datasets' own label files are):

* Jester (20BN leaderboard): ``id;Label`` -- the top-1 class name, the format of ``jester-v1-validation.csv``.
* Something-Something V2: ``id;Label 1;Label 2;Label 3;Label 4;Label 5`` -- the top-5 class names, best first.
  The leaderboard's own page is gone; this is the format we chose (its top-1 and top-5 metrics need 5 names),
  and a one-name file is its first two columns.
* EgoGesture (no leaderboard; its test labels are public): ``id;Label`` like Jester.

The score is the logit for single-clip eval (``eval``) and the softmax averaged over the clip x crop views for
``test``: what top-1/top-5 are computed from.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.files import atomic_path, atomic_write, atomic_write_json

TOP5_IN_CSV = {"sthv2": True}  # datasets whose leaderboard file lists 5 names (the others: top-1 only)


def _order(keys: list[str]) -> list[int]:
    """Indices of ``keys`` in ascending id order (numeric ids by value: ``"9" < "10"``)."""
    return sorted(range(len(keys)), key=lambda i: (not keys[i].isdigit(), len(keys[i]) if keys[i].isdigit() else 0,
                                                   keys[i]))


def leaderboard_lines(dataset: str, keys: list[str], top5: list[list[str]]) -> list[str]:
    """The lines of the dataset's leaderboard file (see the module docstring), in the given clip order."""
    n = 5 if TOP5_IN_CSV.get(dataset) else 1
    return [";".join([k, *names[:n]]) for k, names in zip(keys, top5, strict=True)]


def write(run, stem: str, *, split: str, dataset: str, classes: list[str], keys: list[str], labels, scores,
          score: str, checkpoint: str) -> dict:
    """Write ``RUN/STEM.{csv,json,npy}`` for ``scores`` (a (clips, classes) float tensor, row i = clip ``keys[i]``, true
    class ``labels[i]`` or -1); the paths written, by kind."""
    import numpy as np
    import torch

    if len(keys) != len(scores) or len(labels) != len(scores):
        raise ValueError(f"{len(keys)} keys, {len(labels)} labels for {len(scores)} score rows")
    order = _order(keys)
    scores = scores[torch.as_tensor(order, dtype=torch.long)].float() if order else scores.float()
    keys = [keys[i] for i in order]
    labels = [int(labels[i]) for i in order]
    k = min(5, len(classes))
    top_v, top_i = scores.topk(k, dim=1) if len(scores) else (scores, scores.long())
    names = [[classes[c] for c in row] for row in top_i.tolist()]
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    paths = {"csv": run / f"{stem}.csv", "json": run / f"{stem}.json", "scores": run / f"{stem}.npy"}
    atomic_write(paths["csv"], "".join(line + "\n" for line in leaderboard_lines(dataset, keys, names)))
    clips = [{"id": key, "top5": nm, "top5_scores": [round(v, 6) for v in vals],
              "label": classes[lab] if lab >= 0 else None}
             for key, nm, vals, lab in zip(keys, names, top_v.tolist(), labels, strict=True)]
    atomic_write_json(paths["json"], {"dataset": dataset, "split": split, "checkpoint": checkpoint, "score": score,
                                      "classes": list(classes), "clips": clips}, indent=None)
    with atomic_path(paths["scores"]) as tmp, open(tmp, "wb") as f:
        np.save(f, scores.numpy().astype(np.float32))
    return {kind: str(p) for kind, p in paths.items()}


def read(run, stem: str) -> tuple[dict, "np.ndarray"]:
    """``(RUN/STEM.json, RUN/STEM.npy)`` as :func:`write` wrote them (for tools and tests)."""
    import numpy as np

    return json.loads((Path(run) / f"{stem}.json").read_text()), np.load(Path(run) / f"{stem}.npy")

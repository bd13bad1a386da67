"""The demo's last stage: `train.py predict` on a generated long video with known gesture boundaries.

:func:`long_video` renders the demo's motion classes one after another over one scene (the motion generator of
``tools/make_synthetic.py``: the same shapes, trajectories and background, 12-16 frames per gesture, as the
training clips) and writes it as H.264 at :data:`FPS`; its truth is ``[{"label", "start_s", "end_s"}]``.
:func:`predict_long_video` runs ``train.py predict`` on it with the trained ACTION checkpoint (``--video-out``,
``--plot``) and scores the windows (:func:`score`).

Scoring: the gesture being performed in a window is the one covering the largest part of it. A window at least
:data:`INSIDE` covered by one gesture is scored (its top-1 against that gesture): that fraction is the demo's
number (target >= 85 %). Windows across a boundary (two half gestures) are counted and scored separately
(``transition_top1``): a model trained on whole gestures has no right answer there.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

FPS = 12  # the long video's frame rate: a 12-16 frame gesture lasts 1.0-1.33 s
WINDOW_S, STRIDE_S = 1.0, 0.25
INSIDE = 0.9  # at 12 fps a 1 s window may hold one frame of a neighbouring gesture


def long_video(path: Path, *, repeats: int = 2, frame_size: tuple[int, int] = (96, 72), seed: int = 0,
               frames: tuple[int, int] = (12, 16)) -> list[dict]:
    """Write every demo class ``repeats`` times in a seeded order, back to back, to ``path``; the truth."""
    import av

    from tools.make_synthetic import DEFAULT_TEXTURE, JESTER_CLASSES, _background, render_clip

    w, h = frame_size
    rng = np.random.default_rng([seed, 23])
    order = rng.permutation(np.repeat(np.arange(len(JESTER_CLASSES)), repeats))
    pan_max = int(math.ceil(0.42 * w)) + 2  # as make_synthetic's group videos: one scene for every gesture
    background, _ = _background(rng, h, w + pan_max, DEFAULT_TEXTURE)
    offset = int(rng.integers(0, pan_max + 1))
    truth, t = [], 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=FPS, options={"crf": "18"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k, cls in enumerate(order):
            name, motion = JESTER_CLASSES[int(cls)]
            n = int(rng.integers(frames[0], frames[1] + 1))
            clip, _ = render_clip(np.random.default_rng([seed, 23, k]), motion, n, w, h, background=background,
                                  offset=offset)
            for f in clip:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            truth.append({"label": name, "start_s": t / FPS, "end_s": (t + n) / FPS})
            t += n
        for p in s.encode():
            c.mux(p)
    return truth


def score(records: list[dict], truth: list[dict]) -> dict:
    """Top-1 of the windows mostly inside one gesture, and of the transition windows (module docstring)."""
    inside = hit = across = across_hit = 0
    for r in records:
        span = r["end_s"] - r["start_s"]
        cover = [(min(r["end_s"], g["end_s"]) - max(r["start_s"], g["start_s"]), g["label"]) for g in truth]
        part, label = max(cover)
        ok = r["top"][0]["label"] == label
        if part >= INSIDE * span - 1e-9:
            inside, hit = inside + 1, hit + ok
        else:
            across, across_hit = across + 1, across_hit + ok
    return {"windows": len(records), "scored_windows": inside, "window_top1": 100.0 * hit / inside if inside else None,
            "transition_windows": across, "transition_top1": 100.0 * across_hit / across if across else None,
            "inside_fraction": INSIDE}


def predict_long_video(run_cmd, runs: Path, run_dir: Path, logs: Path, *, frame_size: tuple[int, int],
                       seed: int) -> dict:
    """Generate the long video under ``runs/predict/``, run ``train.py predict`` on it with ``run_dir``'s
    checkpoint (through the demo's ``run_cmd``), score it; the report's ``predict`` entry."""
    out = runs / "predict"
    video = out / "gestures.mp4"
    truth = long_video(video, frame_size=frame_size, seed=seed)
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    jsonl = out / "predictions.jsonl"
    run_cmd([sys.executable, "train.py", "predict", "--checkpoint", str(ckpt), str(video), "--window-s",
             str(WINDOW_S), "--stride-s", str(STRIDE_S), "--out", str(jsonl), "--video-out",
             str(out / "annotated.mp4"), "--plot", str(out / "timeline.png"), "--device", "cpu"],
            logs / "predict.log", "predicting")
    recs = [json.loads(ln) for ln in jsonl.read_text(encoding="utf-8").splitlines() if ln.strip()]
    windows = [r for r in recs if r["kind"] == "window"]
    from trainer.predict_out import plot_timeline  # the command's chart again, with the truth band under it

    plot_timeline(windows, str(out / "timeline.png"), truth=truth, title=f"train.py predict on {video.name} "
                  f"({len(truth)} gestures, windows of {WINDOW_S:g} s every {STRIDE_S:g} s)")
    return {"video": str(video), "gestures": len(truth), "seconds_of_video": truth[-1]["end_s"],
            "window_s": WINDOW_S, "stride_s": STRIDE_S, **score(windows, truth),
            "annotated": str(out / "annotated.mp4"), "timeline": str(out / "timeline.png"),
            "predictions": str(jsonl)}

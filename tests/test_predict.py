"""`train.py predict` on real inputs: PyAV videos (H.264, VP9), frame folders, shard splits, a FIFO written at
real-time pace, broken files and checkpoints; windows and timestamps exact for known durations."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from predicttools import CLASSES, frame_of, make_checkpoint, write_video
from pipelines.stream.sources import open_inputs
from pipelines.stream.windows import Windower, WindowSampler, expected_windows
from trainer.predict import predict_command
from trainer.predict_out import segments

T, SIZE = 4, 32


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", num_segments=T, size=SIZE)


def predict(*args):
    """The command in-process: (exit code, window records, segment records, stderr lines)."""
    res = CliRunner().invoke(predict_command, [str(a) for a in args])
    recs = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    err = [ln for ln in res.stderr.splitlines() if ln.startswith(("error", "warning", "Traceback"))]
    return (res.exit_code, [r for r in recs if r["kind"] == "window"], [r for r in recs if r["kind"] == "segments"],
            err)


@pytest.mark.parametrize("ext,codec", [(".mp4", "libx264"), (".webm", "libvpx-vp9")])
def test_video_windows_and_timestamps_are_exact(tmp_path, ckpt, ext, codec):
    video = write_video(tmp_path / f"v{ext}", 75, 25, codec)  # 3.000 s
    code, wins, segs, err = predict("--checkpoint", ckpt, video, "--window-s", 1.0, "--stride-s", 0.5, "--topk", 2)
    assert code == 0 and err == []
    assert [(w["start_s"], w["end_s"]) for w in wins] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0)]
    for w in wins:
        assert w["source"] == str(video) and len(w["top"]) == 2 and w["top"][0]["prob"] >= w["top"][1]["prob"]
        assert w["top"][0]["label"] == CLASSES[w["top"][0]["index"]]
    assert len(segs) == 1 and segs[0]["segments"] == segments(wins)
    assert segs[0]["segments"][0]["start_s"] == 0.0 and segs[0]["segments"][-1]["end_s"] == 3.0


def test_window_rule_counts_and_short_sources():
    class F:
        def __init__(self, i, fps):
            self.t, self.index, self.dur, self.arrival = i / fps, i, 1 / fps, 0.0

    for n, fps, w, s in [(75, 25, 1.0, 0.5), (100, 30, 2.0, 0.25), (37, 12, 1.5, 0.4), (10, 10, 1.0, 1.0)]:
        win, got = Windower(w, s), []
        for i in range(n):
            got += win.push(F(i, fps))
        got += win.finish(n / fps)
        assert len(got) == expected_windows(n / fps, w, s) == int(np.floor((n / fps - w) / s + 1e-6)) + 1
        for k, g in enumerate(got):
            assert g.start_s == pytest.approx(k * s) and [f.index for f in g.frames] == [
                i for i in range(n) if k * s - 1e-6 <= i / fps < k * s + w - 1e-6]
    win = Windower(2.0, 0.5)  # shorter than one window: one window over everything
    got = [x for i in range(5) for x in win.push(F(i, 10))] + win.finish(0.5)
    assert [(g.start_s, g.end_s, len(g.frames)) for g in got] == [(0.0, 0.5, 5)]


def test_frame_folder_matches_the_same_frames_as_video_sampling(tmp_path, ckpt):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(30):
        Image.fromarray(frame_of(i)).save(folder / f"{i + 1:05d}.png")
    code, wins, segs, err = predict("--checkpoint", ckpt, folder, "--fps", 10, "--window-s", 1.0, "--stride-s", 0.5)
    assert code == 0 and err == []
    assert [(w["start_s"], w["end_s"]) for w in wins] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0)]
    # window 0 holds frames 0..9; the val rule samples the segment centres 1, 3, 6, 8 (int(1.25 + 2.5 i))
    src, = open_inputs(str(folder), fps=10)
    win = Windower(1.0, 0.5)
    first = [w for f in src.frames() for w in win.push(f)][0]
    clip = WindowSampler("jester", T, SIZE)(first)
    from pipelines.decode.frames import run_plan_pil_arrays
    from pipelines.plan import presets
    from pipelines.plan.geometry import make_plans

    plan = make_plans(presets.get("jester"), "val", clip=0, key="k", label=0, num_frames=10, src_size=(48, 64),
                      num_segments=T, size=SIZE)[0]
    assert plan.frames == (1, 3, 6, 8)
    ref = run_plan_pil_arrays(np.stack([frame_of(i) for i in plan.frames]), plan)
    assert clip.dtype == torch.uint8 and int((clip.int() - torch.from_numpy(ref).int()).abs().max()) <= 2


def test_shard_split_windows_equal_the_val_loader(tmp_path, ckpt):
    import rawtrees
    from pipelines.ingest.convert import convert_dataset
    from pipelines.loader import build_loader

    rawtrees.make_jester(tmp_path / "raw", n_train=2, n_val=3, n_test=1, frames=(6, 12))
    convert_dataset("jester", tmp_path / "raw", tmp_path / "out")
    loader = build_loader(str(tmp_path / "out"), "val", backend="torch", mode="val", batch_size=3,
                          num_segments=T, size=SIZE, workers=0)
    ref = torch.cat([c for c, _ in loader])
    sources = open_inputs(f"{tmp_path / 'out'}:val", fps=12)
    assert len(sources) == 3
    for i, src in enumerate(sources):  # a window as long as the clip is the val clip, pixel for pixel
        win = Windower(10.0, 10.0)
        wins = [w for f in src.frames() for w in win.push(f)] + win.finish(src.end_s)
        assert len(wins) == 1 and torch.equal(WindowSampler("jester", T, SIZE)(wins[0]), ref[i])
    code, wins, segs, err = predict("--checkpoint", ckpt, f"{tmp_path / 'out'}:val", "--window-s", 10)
    assert code == 0 and len(wins) == 3 and len(segs) == 3 and err == []


def test_truncated_zero_byte_and_not_a_video(tmp_path, ckpt):
    good = write_video(tmp_path / "full.mp4", 96, 24, "libx264")
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    code, wins, segs, err = predict("--checkpoint", ckpt, cut, "--window-s", 1.0, "--stride-s", 1.0)
    assert code == 0 and 1 <= len(wins) < 4 and len(segs) == 1
    assert len(err) == 1 and err[0].startswith(f"warning: {cut}:") and "stopped" in err[0]
    stop = float(err[0].split("predicted up to ")[1].split(" s")[0])
    assert wins[-1]["end_s"] <= stop + 1 / 24 + 1e-6
    assert predict("--checkpoint", ckpt, cut, "--strict")[0] == 1
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    for bad, why in [(empty, "zero-byte"), (text, "not a readable video"), (tmp_path / "gone.mp4", "no such file")]:
        code, wins, segs, err = predict("--checkpoint", ckpt, bad)
        assert code == 1 and wins == [] and len(err) == 1 and err[0].startswith(f"error: {bad}") and why in err[0]


def test_bad_checkpoints_are_one_line(tmp_path, ckpt):
    video = write_video(tmp_path / "v.mp4", 12, 12)
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(ckpt, weights_only=True)["model"], bare)
    nolabels = tmp_path / "nolabels.pt"
    torch.save({**torch.load(ckpt, weights_only=True), "classes": []}, nolabels)
    other = tmp_path / "other" / "best.pt"
    make_checkpoint(other, arch="mobilenetv2", num_segments=T, size=SIZE)
    ck = torch.load(other, weights_only=True)
    ck["config"]["arch"] = "resnet18"  # the config of one model, the weights of another
    torch.save(ck, other)
    cases = [(tmp_path / "nope.pt", "no such checkpoint"), (bare, "not a train.py run checkpoint"),
             (nolabels, "no class names"), (other, "another model")]
    for path, why in cases:
        code, wins, _, err = predict("--checkpoint", path, video)
        assert code == 3 and wins == [] and len(err) == 1 and err[0].startswith(f"error: {path}") and why in err[0]


CAMERA = """
import sys, time, av
from predicttools import frame_of
n, fps = int(sys.argv[2]), int(sys.argv[3])
with av.open(sys.argv[1], "w", format="matroska") as c:
    s = c.add_stream("libx264", rate=fps, options={"tune": "zerolatency", "preset": "ultrafast"})
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    t0 = time.perf_counter()
    for i in range(n):  # one frame every 1/fps s, as a camera delivers them
        time.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
        for p in s.encode(av.VideoFrame.from_ndarray(frame_of(i), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
"""


def test_fifo_online_at_real_time_pace(tmp_path, ckpt):
    import subprocess
    import sys

    fifo = tmp_path / "cam.fifo"
    os.mkfifo(fifo)
    n, fps = 36, 12  # 3 s
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    cam = subprocess.Popen([sys.executable, "-c", CAMERA, str(fifo), str(n), str(fps)], env=env)
    try:
        t0 = time.perf_counter()
        code, wins, segs, err = predict("--checkpoint", ckpt, fifo, "--online", "--window-s", 1.0, "--stride-s", 0.5)
        took = time.perf_counter() - t0
        assert cam.wait(60) == 0
    finally:
        cam.kill()
    assert code == 0 and err == [] and len(segs) == 1
    assert took >= (n - 1) / fps  # read as it was written, not after
    starts = [w["start_s"] for w in wins]
    # every window is predicted or, when the model was behind, skipped for a newer one; the last one always comes
    assert starts == sorted(starts) and set(starts) <= {k * 0.5 for k in range(5)} and starts[-1] == 2.0
    assert len(wins) + segs[0]["skipped_windows"] == 5
    assert all(0 <= w["latency_ms"] < 5000 for w in wins)


def test_live_source_gives_up_after_bounded_reconnects(ckpt):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    code, wins, segs, err = predict("--checkpoint", ckpt, f"http://127.0.0.1:{port}/cam", "--online",
                                    "--reconnect", 2)
    assert code == 1 and wins == [] and len(err) == 1 and time.perf_counter() - t0 < 30
    assert err[0].startswith(f"warning: http://127.0.0.1:{port}/cam: stream lost") and "after 2 reconnect" in err[0]


def test_video_out_and_plot(tmp_path, ckpt):
    import av

    video = write_video(tmp_path / "v.webm", 36, 12, "libvpx-vp9")
    out, png = tmp_path / "ann.mp4", tmp_path / "t.png"
    code, wins, _, err = predict("--checkpoint", ckpt, video, "--window-s", 1.0, "--stride-s", 0.5, "--video-out", out,
                                 "--plot", png)
    assert code == 0 and len(wins) == 5 and err == []
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 36 and frames[0].shape == (48, 64, 3)
    banner = frames[20][:8, :20].astype(int)  # the label drawn on a black band over the top-left corner
    assert banner.mean() < frame_of(20)[:8, :20].astype(int).mean() - 20
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_segments_merge_runs_of_the_same_top1():
    def rec(s, label, p):
        return {"start_s": s, "end_s": s + 1.0, "top": [{"label": label, "index": 0, "prob": p}]}

    recs = [rec(0.0, "a", 0.9), rec(0.5, "a", 0.7), rec(1.0, "b", 0.6), rec(1.5, "a", 0.5), rec(2.0, "a", 0.3)]
    assert segments(recs) == [{"label": "a", "start_s": 0.0, "end_s": 1.5, "prob": 0.8},
                              {"label": "b", "start_s": 1.0, "end_s": 2.0, "prob": 0.6},
                              {"label": "a", "start_s": 1.5, "end_s": 3.0, "prob": 0.4}]

#!/usr/bin/env python
"""`train.py predict` speed on CPU: windows/s offline and arrival-to-prediction latency online.

    bench/bench_predict.py [--out bench/results] [--archs resnet18,resnet50,mobilenetv2] [--batch 4] [--iters 3]
                           [--online-s 8]

Offline: ACTION models (8 segments of 224^2, 27 classes) on batches of uint8 windows through the predict command's
runners (normalisation included): PyTorch eager vs ONNX Runtime on the model exported by `train.py export`'s
code path (dynamo ONNX exporter). Online: MobileNetV2-ACTION on a live source delivering 320x240 frames in real
time at 24 fps, windows of 1 s every 0.125 s (8 predictions/s), through :func:`trainer.predict.predict_source`:
the latency from the arrival of the frame that completes a window to that window's prediction, p50/p95, and the
windows skipped because the model was behind. The frames are made in-process (no FFmpeg decode in the latency).

Writes ``OUT/bench_predict.json`` (numbers, the machine's load average before and after each part) and
``OUT/bench_predict.png``.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
T, SIZE, CLASSES = 8, 224, 27


def _checkpoint(arch: str, folder: Path) -> Path:
    """A train.py-format checkpoint of a freshly initialised ACTION model (speed does not depend on weights)."""
    import torch

    from action import build_model
    from trainer.checkpoint import Checkpointer
    from trainer.config import Config

    torch.manual_seed(0)
    model = build_model(arch=arch, num_classes=CLASSES, num_segments=T, temporal="action")
    cfg = Config(dataset="jester", data="bench", arch=arch, num_segments=T, size=SIZE, run_dir=str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    Checkpointer(folder, True).save({"model": model.state_dict(), "config": cfg.to_json(),
                                     "classes": [f"class {i}" for i in range(CLASSES)]})
    return folder / "last.pt"


def _rate(runner, clips, iters: int) -> dict:
    runner(clips)  # warm-up (allocations, ORT graph optimisation)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner(clips)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"windows_per_s": len(clips) / best, "ms_per_window": 1000 * best / len(clips),
            "seconds": [round(t, 4) for t in times]}


def offline(arch: str, batch: int, iters: int, tmp: Path) -> dict:
    import torch

    from trainer.export import export_model
    from trainer.predict import OnnxRunner, TorchRunner, load_model

    ck = _checkpoint(arch, tmp / arch)
    loaded = load_model(str(ck), torch.device("cpu"))
    clips = torch.randint(0, 256, (batch, T, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    load0 = os.getloadavg()[0]
    res = {"arch": arch, "batch": batch, "load_before": load0, "pytorch": _rate(TorchRunner(loaded, "cpu"), clips, iters)}
    onnx = tmp / f"{arch}.onnx"
    t0 = time.perf_counter()
    export_model(loaded.model, torch.randn(2, T, 3, SIZE, SIZE), "onnx", str(onnx))
    res["onnx_export_s"] = time.perf_counter() - t0
    res["onnxruntime"] = _rate(OnnxRunner(loaded, str(onnx)), clips, iters)
    res["load_after"] = os.getloadavg()[0]
    click.echo(f"{arch}: PyTorch {res['pytorch']['windows_per_s']:.2f} windows/s, ONNX Runtime "
               f"{res['onnxruntime']['windows_per_s']:.2f} windows/s (load {load0:.1f})", err=True)
    return res


class Camera:
    """A live source: ``w x h`` frames delivered in real time at ``fps`` for ``seconds``."""

    live = True

    def __init__(self, fps: float, seconds: float, w: int = 320, h: int = 240):
        self.name, self.fps, self.n, self.w, self.h = "camera", fps, int(seconds * fps), w, h
        self.end_s, self.stopped = None, None

    def frames(self):
        import numpy as np

        from pipelines.stream.sources import Frame

        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (self.h, self.w, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        for i in range(self.n):
            time.sleep(max(0.0, t0 + i / self.fps - time.perf_counter()))
            img = np.roll(base, 4 * i, axis=1)
            yield Frame(i / self.fps, i, lambda img=img: img, time.perf_counter(), 1 / self.fps)
        self.end_s = self.n / self.fps


def online(runtime: str, seconds: float, tmp: Path) -> dict:
    import numpy as np
    import torch

    from pipelines.stream.windows import WindowSampler
    from trainer.predict import OnnxRunner, Options, TorchRunner, load_model, predict_source

    ck = tmp / "mobilenetv2" / "last.pt"
    loaded = load_model(str(ck), torch.device("cpu"))
    runner = OnnxRunner(loaded, str(tmp / "mobilenetv2.onnx")) if runtime == "onnxruntime" else TorchRunner(loaded, "cpu")
    load0 = os.getloadavg()[0]
    res = predict_source(Camera(24, seconds), WindowSampler("jester", T, SIZE), runner, loaded.classes,
                         Options(window_s=1.0, stride_s=0.125, topk=1), emit=lambda r: None)
    lat = np.array(res["latency_ms"])
    out = {"runtime": runtime, "arch": "mobilenetv2", "fps": 24, "window_s": 1.0, "stride_s": 0.125,
           "seconds": seconds, "predicted": len(lat), "skipped": res["skipped"],
           "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
           "max_ms": float(lat.max()), "latency_ms": [round(x, 1) for x in lat.tolist()],
           "load_before": load0, "load_after": os.getloadavg()[0]}
    click.echo(f"online {runtime}: p50 {out['p50_ms']:.0f} ms, p95 {out['p95_ms']:.0f} ms, {out['predicted']} "
               f"predicted, {out['skipped']} skipped", err=True)
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from common.files import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = report["offline"]
    x = np.arange(len(rows))
    for k, (rt, name) in enumerate([("pytorch", "PyTorch eager"), ("onnxruntime", "ONNX Runtime")]):
        vals = [r[rt]["windows_per_s"] for r in rows]
        a.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=name)
        for xi, v in zip(x, vals):
            a.text(xi + (k - 0.5) * 0.38, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    a.set_xticks(x, [f"{r['arch']}-ACTION" for r in rows])
    load = max(r["load_before"] for r in rows)
    a.set(ylabel="windows/s (8x224^2)", title=f"offline, batch {rows[0]['batch']}, {report['host']['cpus']} CPU "
                                               f"cores (shared: load average up to {load:.1f})")
    a.legend()
    for r in report["online"]:
        lat = np.sort(r["latency_ms"])
        b.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{r['runtime']} (p95 {r['p95_ms']:.0f} ms)")
    b.axvline(100, color="grey", ls="--", lw=1)
    b.set(xlabel="frame arrival -> prediction (ms)", ylabel="fraction of windows", xscale="log",
          title="online MobileNetV2-ACTION, 8 predictions/s")
    b.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


@click.command()
@click.option("--out", default="bench/results", show_default=True)
@click.option("--archs", default="resnet18,resnet50,mobilenetv2", show_default=True)
@click.option("--batch", default=4, show_default=True, help="windows per model call offline")
@click.option("--iters", default=3, show_default=True, help="timed calls per arch and runtime (best kept)")
@click.option("--online-s", default=8.0, show_default=True, help="seconds of live source per runtime")
def main(out, archs, batch, iters, online_s):
    """Offline windows/s and online latency of `train.py predict` (see the module docstring)."""
    import torch

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    report = {"host": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "load_start": os.getloadavg()}, "offline": [], "online": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        names = archs.split(",")
        for arch in names:
            report["offline"].append(offline(arch, batch, iters, tmp))
        if "mobilenetv2" in names:
            for rt in ("onnxruntime", "pytorch"):
                report["online"].append(online(rt, online_s, tmp))
    import onnxruntime

    report["host"].update(onnxruntime=onnxruntime.__version__, load_end=os.getloadavg())
    Path(out).mkdir(parents=True, exist_ok=True)
    from common.files import atomic_write_json

    atomic_write_json(Path(out) / "bench_predict.json", report)
    plot(report, Path(out) / "bench_predict.png")
    click.echo(json.dumps({r["arch"]: {k: round(r[k]["windows_per_s"], 2) for k in ("pytorch", "onnxruntime")}
                           for r in report["offline"]}))


if __name__ == "__main__":
    main()

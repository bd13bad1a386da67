#!/usr/bin/env python
"""Profile the data-loader backends side by side against a decode-only ceiling.

    python tools/profile_loader.py --data OUT [--raw RAW] --split train --backends folder,torch[,dali,ffcv] \\
        --batch-size 8 --batches N --workers 2 --json FILE --plot FILE.png

``--generate DIR`` first writes a synthetic raw tree (``--dataset`` layout, ``--clips`` videos of ``--frames``
320x240 JPEGs) and converts it, then profiles it (``make profile``). Prints a table and writes JSON::

    {"results": [{"backend", "clips_per_s", "frames_per_s", "batches", "seconds",
                  "stage_ms": {"read", "decode", "augment", "to_device"},
                  "cpu": {"cpu_s_per_clip", "cores_busy", "cores_per_1k_clips_s", "workers_cpu_share"}}],
     "ceiling": {"decode_only_frames_per_s", "decode_only_clips_per_s", "frames"},
     "ratios": {"torch_over_folder", "torch_over_ceiling", ...},   # medians of same-round ratios
     "machine": {...}, "config": {...}}

``stage_ms`` is per batch: read/decode/augment are summed worker CPU time (so with 2 workers they may add up to
twice the wall time), to_device is the main process (copy + normalisation). ``cpu`` is the CPU cost of the
timed batches (:mod:`common.cpu`): CPU-seconds of every thread of this process and of every worker process per
clip, the cores that kept busy (= CPU-seconds per clip x clips/s) and the cores needed per 1,000 clips/s. The ceiling decodes the same
sampled JPEG bytes (the train plans of the same batches), held in memory, with libjpeg-turbo (simplejpeg) in
``--workers`` processes -- nothing else. This is a measurement tool, not a test.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import time

import click
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

log = logging.getLogger("profile_loader")


# ----------------------------------------------------------------------------------------------- synthetic data
def _frame(rng: np.random.Generator, t: int, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """A camera-like frame: smooth moving gradients + texture + sensor noise (JPEG ~20-35 KB at 320x240)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = base + np.stack([(x * 0.7 + t * 3) % 256, (y * 0.9 + 30 * np.sin((x + t * 5) / 17)) % 256,
                           (x + y + t * 2) % 256], -1)
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_video(args) -> None:
    from PIL import Image

    folder, i, frames, h, w, seed = args
    rng = np.random.default_rng([seed, i])  # per video: the tree does not depend on the number of workers
    os.makedirs(folder, exist_ok=True)
    base = rng.uniform(0, 60, size=(1, 1, 3)).astype(np.float32)
    for t in range(frames):
        Image.fromarray(_frame(rng, t, h, w, base)).save(os.path.join(folder, f"{t + 1:05d}.jpg"), quality=90)


def generate_tree(raw: str, *, dataset: str, clips: int, frames: int, size=(320, 240), seed: int = 0,
                  workers: int = 1) -> None:
    """Write a synthetic raw tree in the official ``jester`` or ``sthv2`` layout (320x240 JPEGs), videos written
    by ``workers`` processes."""
    from pipelines.ingest import datasets

    rng = np.random.default_rng(seed)
    w, h = size
    os.makedirs(os.path.join(raw, "frames"), exist_ok=True)
    spec = datasets.get(dataset)
    if dataset == "jester":
        from pipelines.ingest.datasets.jester import CLASSES
        classes = list(CLASSES)
    else:
        classes = [f"Doing thing {i}" for i in range(spec.num_classes)]
    ids = [str(100000 + i) for i in range(clips)]
    labels = rng.integers(len(classes), size=clips)
    jobs = [(os.path.join(raw, "frames", vid), i, frames, h, w, seed) for i, vid in enumerate(ids)]
    if workers > 1:
        with mp.get_context("fork").Pool(int(workers)) as pool:
            pool.map(_write_video, jobs, chunksize=4)
    else:
        for job in jobs:
            _write_video(job)
    if dataset == "jester":
        with open(os.path.join(raw, "jester-v1-labels.csv"), "w") as f:
            f.write("\n".join(classes) + "\n")
        for name, part in (("train", ids), ("validation", ids[: max(1, clips // 10)])):
            with open(os.path.join(raw, f"jester-v1-{name}.csv"), "w") as f:
                f.write("".join(f"{v};{classes[labels[ids.index(v)]]}\n" for v in part))
        with open(os.path.join(raw, "jester-v1-test.csv"), "w") as f:
            f.write(ids[0] + "\n")
    elif dataset == "sthv2":
        with open(os.path.join(raw, "something-something-v2-labels.json"), "w") as f:
            json.dump({c: str(i) for i, c in enumerate(classes)}, f)
        for name, part in (("train", ids), ("validation", ids[: max(1, clips // 10)])):
            with open(os.path.join(raw, f"something-something-v2-{name}.json"), "w") as f:
                json.dump([{"id": v, "label": classes[labels[ids.index(v)]].lower(),
                            "template": classes[labels[ids.index(v)]], "placeholders": []} for v in part], f)
        with open(os.path.join(raw, "something-something-v2-test.json"), "w") as f:
            json.dump([{"id": ids[0]}], f)
    else:
        raise click.UsageError("--generate supports --dataset jester or sthv2")


# ----------------------------------------------------------------------------------------------- ceiling
def _decode_chunk(args):
    blobs, barrier_time = args
    import simplejpeg

    while time.time() < barrier_time:  # start together
        time.sleep(0.0005)
    t0 = time.perf_counter()
    for b in blobs:
        simplejpeg.decode_jpeg(b, colorspace="RGB", strict=True)
    return t0, time.perf_counter(), len(blobs)


def decode_ceiling(blobs: list[bytes], workers: int, repeat: int = 1) -> dict:
    """Frames/s decoding ``blobs`` (in memory) with simplejpeg in ``workers`` processes, started together."""
    w = max(int(workers), 1)
    blobs = blobs * repeat
    chunks = [blobs[i::w] for i in range(w)]
    ctx = mp.get_context("fork")
    with ctx.Pool(w) as pool:
        start = time.time() + 1.0
        res = pool.map(_decode_chunk, [(c, start) for c in chunks])
    # perf_counter is CLOCK_MONOTONIC: comparable across the worker processes
    wall = max(t1 for _, t1, _ in res) - min(t0 for t0, _, _ in res)
    per_worker = [n / (t1 - t0) for t0, t1, n in res]
    return {"decode_only_frames_per_s": len(blobs) / max(wall, 1e-9), "frames": len(blobs),
            "per_worker_frames_per_s": per_worker}


def sampled_bytes(data: str, split: str, *, mode: str, batch_size: int, num_segments: int, size: int, seed: int,
                  n_batches: int) -> list[bytes]:
    """The JPEG bytes the train plans of the first ``n_batches`` batches sample (same order as the loaders)."""
    from pipelines.loader import LoaderSpec, open_split

    ds, planner = open_split(LoaderSpec(data, split, mode=mode, batch_size=batch_size, num_segments=num_segments,
                                        size=size, seed=seed))
    out, epoch = [], 0
    while len(out) < n_batches * batch_size * num_segments:
        for b in planner.batches(epoch):
            for clip in b:
                for plan in planner.plans(int(clip), epoch):
                    out.extend(bytes(x) for x in ds.frames(int(clip), plan.frames))
        epoch += 1
    return out[: n_batches * batch_size * num_segments]


# ----------------------------------------------------------------------------------------------- loaders
def dali_option(part: str, kw: dict) -> bool:
    """Put the dali variant ``part`` into ``kw`` (False if it is none of these): ``roi`` / ``full`` / ``auto``
    (decode), ``parallel`` / ``callback`` (feed), ``hwF`` (hw_decoder_load F), ``pfN`` (prefetch N), ``tN``
    (num_threads N), ``pwN`` (py_workers N)."""
    if part in ("roi", "full", "auto"):
        kw["decode"] = part
    elif part in ("parallel", "callback"):
        kw["feed"] = part
    elif part.startswith("hw"):
        kw["hw_decoder_load"] = float(part[2:])
    elif part.startswith(("pf", "pw")) and part[2:].isdigit():
        kw["prefetch" if part.startswith("pf") else "py_workers"] = int(part[2:])
    elif part.startswith("t") and part[1:].isdigit():
        kw["num_threads"] = int(part[1:])
    else:
        return False
    return True


def profile_backend(backend: str, *, data, raw, split, mode, batch_size, batches, warmup, workers, num_segments,
                    size, seed, device, normalize) -> dict:
    import torch

    from common.cpu import CpuMeter, cost
    from pipelines import build_loader
    from pipelines.plan.presets import normalize as normalise

    name, _, variant = backend.partition(":")
    kw = dict(backend=name, mode=mode, batch_size=batch_size, num_segments=num_segments, size=size,
              workers=workers, seed=seed, device=device)
    if name == "folder":
        kw["raw"] = raw
    for part in filter(None, variant.split("+")):  # e.g. torch:reference+processes, dali:full+parallel+hw0.75+pf4+t2
        if name == "dali" and dali_option(part, kw):
            continue
        if part in ("threads", "processes"):  # torch:processes -> the DataLoader-process executor
            kw["executor"] = part
        elif part == "nvjpeg":  # torch:nvjpeg -> workers send bytes, torchvision decodes on the delivery device
            kw["decode_device"] = device
        else:  # e.g. torch:pil, torch:reference, torch:once, dali:reference -> resample option
            kw["resample"] = part
    loader = build_loader(data, split, **kw)
    if hasattr(loader, "sync_timing"):
        loader.sync_timing = True  # per-stage times include the device work (a training run leaves this off)
    cuda = str(device).startswith("cuda")
    epoch, done = 0, 0
    meter = CpuMeter() if warmup == 0 else None  # else from the end of the warm-up
    stage0 = None
    while done < warmup + batches:
        loader.set_epoch(epoch)
        for clips, labels in loader:
            if normalize:  # what the trainer does to every batch, on the delivery device
                clips = normalise(clips, loader.planner.preset.mean, loader.planner.preset.std)
            done += 1
            if done == warmup:
                if cuda:
                    torch.cuda.synchronize()
                meter = CpuMeter()  # wall time and the CPU of this process's threads + every worker process
                stage0 = dict(getattr(loader, "stage_s", {}))
            if done >= warmup + batches:
                break
        epoch += 1
    if meter is None:
        meter = CpuMeter()
    if cuda:
        torch.cuda.synchronize()
    lap = meter.lap()
    seconds = lap["wall_s"]
    loader.close()  # its threads / workers stop before the next backend is measured
    cpu = cost(lap, batches * batch_size)  # same window as seconds: cores_busy = cpu_s_per_clip x clips/s
    stage1 = getattr(loader, "stage_s", {})
    stage_ms = {k: (1000.0 * (stage1.get(k, 0.0) - (stage0 or {}).get(k, 0.0)) / batches)
                for k in ("read", "decode", "augment", "to_device")}
    clips_s = batches * batch_size / seconds
    return {"backend": backend, "clips_per_s": clips_s, "frames_per_s": clips_s * num_segments, "batches": batches,
            "seconds": seconds, "stage_ms": stage_ms, "cpu": cpu,
            "output": {"shape": list(clips.shape), "dtype": str(clips.dtype)}}


def machine_info(workers: int) -> dict:
    import PIL
    import simplejpeg
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "simplejpeg": simplejpeg.__version__, "pillow": PIL.__version__, "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "workers": workers}


def plot(results: list, ceiling: dict, num_segments: int, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["backend"] for r in results] + ["decode ceiling"]
    vals = [r["clips_per_s"] for r in results] + [ceiling["decode_only_frames_per_s"] / num_segments]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(9.0, 2.0 * len(names)), 3.8),
                                  gridspec_kw={"width_ratios": [len(names), max(len(results), 1)]})
    bars = ax.bar(names, vals, color=["#888"] + ["#2a7"] * (len(results) - 1) + ["#cc4"])
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("clips / s")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    cores = [r["cpu"]["cores_per_1k_clips_s"] for r in results]  # CPU cost: process threads + workers
    bars = ax2.bar([r["backend"] for r in results], cores, color="#c63")
    for b, v in zip(bars, cores):
        ax2.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom")
    ax2.set_ylabel("CPU cores per 1,000 clips/s")
    ax2.set_title("CPU cost (threads + worker processes)", fontsize=9)
    ax2.tick_params(axis="x", labelrotation=30, labelsize=8)
    from common.files import save_figure

    save_figure(fig, path, dpi=120)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(), help="converted shard folder (OUT)")
@click.option("--raw", type=click.Path(), default=None, help="raw tree (needed by the folder backend)")
@click.option("--generate", type=click.Path(), default=None,
              help="write a synthetic raw tree + shards under this folder first (RAW=DIR/raw, OUT=DIR/out)")
@click.option("--dataset", default="jester", show_default=True, help="layout for --generate (jester, sthv2)")
@click.option("--clips", default=200, show_default=True, help="videos for --generate")
@click.option("--frames", default=24, show_default=True, help="frames per video for --generate")
@click.option("--split", default="train", show_default=True)
@click.option("--mode", default="train", show_default=True)
@click.option("--backends", default="folder,torch", show_default=True,
              help="comma-separated (folder, torch, dali, ffcv); torch:pil / torch:reference / torch:once (dali:...) "
                   "select the backend's resample option, torch:processes its DataLoader-process executor, "
                   "torch:nvjpeg its GPU decode (decode_device = --device) (joined with +, e.g. "
                   "torch:reference+processes); "
                   "dali:roi / dali:full its decode, dali:parallel its "
                   "parallel feed, dali:hw0.75 / :pf4 / :t2 / :pw4 its hw_decoder_load / prefetch / num_threads / "
                   "py_workers (e.g. dali:full+parallel+pf4); ffcv converts "
                   "<data>/ffcv/<split>.beton first when missing")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--batches", default=30, show_default=True, help="timed batches per backend")
@click.option("--warmup", default=3, show_default=True, help="untimed batches first (worker start-up)")
@click.option("--rounds", default=3, show_default=True, help="interleaved rounds; the best round is reported")
@click.option("--workers", default=2, show_default=True)
@click.option("--num-segments", default=8, show_default=True)
@click.option("--size", default=224, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="also normalise each batch on --device, as the trainer does (pipelines.plan.presets.normalize); "
                   "default: the loaders' uint8 output alone")
@click.option("--json", "json_path", type=click.Path(), default=None)
@click.option("--plot", "plot_path", type=click.Path(), default=None)
def main(data, raw, generate, dataset, clips, frames, split, mode, backends, batch_size, batches, warmup, rounds,
         workers, num_segments, size, seed, device, normalize, json_path, plot_path):
    """Profile loader backends against the decode-only ceiling."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.errors import DataError

    try:
        if generate:
            raw = os.path.join(generate, "raw")
            data = os.path.join(generate, "out")
            if not os.path.exists(os.path.join(data, "manifest.json")):
                from pipelines.ingest.convert import convert_dataset

                click.echo(f"generating {clips} {dataset} videos x {frames} frames (320x240) under {raw} ...")
                generate_t = time.perf_counter()
                generate_tree(raw, dataset=dataset, clips=clips, frames=frames, workers=max(1, workers))
                convert_dataset(dataset, raw, data, splits=["train", "val"], workers=max(1, workers))
                click.echo(f"  done in {time.perf_counter() - generate_t:.1f} s")
        if not data:
            raise click.UsageError("give --data OUT (or --generate DIR)")
        names = [b.strip() for b in backends.split(",") if b.strip()]
        if any(n.startswith("folder") for n in names) and not raw:
            raise click.UsageError("the folder backend needs --raw")
        if any(n.split(":")[0] == "ffcv" for n in names):  # the ffcv backend reads <data>/ffcv/<split>.beton
            try:
                from pipelines.backends.ffcv.convert import ensure_beton

                ensure_beton(data, split, workers=max(1, workers))
            except ImportError as e:
                click.echo(f"ffcv: skipped ({e})", err=True)
                names = [n for n in names if n.split(":")[0] != "ffcv"]
        blobs = sampled_bytes(data, split, mode=mode, batch_size=batch_size, num_segments=num_segments, size=size,
                              seed=seed, n_batches=batches)
        # Rounds interleave the backends and the ceiling, so a load burst from elsewhere hits them alike; each
        # reports its best round (the least disturbed), and every round is kept in the JSON.
        runs: dict = {n: [] for n in names}
        ceilings = []
        for rnd in range(rounds):
            for name in names:
                if runs[name] is None:
                    continue
                try:
                    runs[name].append(profile_backend(
                        name, data=data, raw=raw, split=split, mode=mode, batch_size=batch_size, batches=batches,
                        warmup=warmup, workers=workers, num_segments=num_segments, size=size, seed=seed,
                        device=device, normalize=normalize))
                except (ValueError, ImportError) as e:
                    click.echo(f"{name}: skipped ({e})", err=True)
                    runs[name] = None
            ceilings.append(decode_ceiling(blobs, workers, repeat=max(1, 2000 // max(len(blobs), 1))))
        results = []
        for name in names:
            if runs[name]:
                best = dict(max(runs[name], key=lambda r: r["clips_per_s"]))
                best["rounds_clips_per_s"] = [r["clips_per_s"] for r in runs[name]]
                results.append(best)
        ceiling = dict(max(ceilings, key=lambda c: c["decode_only_frames_per_s"]))
        ceiling["rounds_frames_per_s"] = [c["decode_only_frames_per_s"] for c in ceilings]
        ceiling["decode_only_clips_per_s"] = ceiling["decode_only_frames_per_s"] / num_segments
    except DataError as e:
        raise click.ClickException(str(e)) from None

    cfg = {"data": str(data), "split": split, "mode": mode, "batch_size": batch_size, "batches": batches,
           "workers": workers, "num_segments": num_segments, "size": size, "normalize": normalize, "device": device,
           "rounds": rounds, "load_average": list(os.getloadavg())}
    # ratios per round (runs adjacent in time), then the median over rounds
    ratios = {}
    base = runs.get("folder") or []
    for name in names:
        if not runs.get(name) or name == "folder":
            continue
        if base:
            ratios[f"{name}_over_folder"] = float(np.median(
                [a["clips_per_s"] / b["clips_per_s"] for a, b in zip(runs[name], base)]))
        if runs.get("torch") and name != "torch":  # the issue-9 comparison: every backend against torch
            ratios[f"{name}_over_torch"] = float(np.median(
                [a["clips_per_s"] / b["clips_per_s"] for a, b in zip(runs[name], runs["torch"])]))
        ratios[f"{name}_over_ceiling"] = float(np.median(
            [a["frames_per_s"] / c["decode_only_frames_per_s"] for a, c in zip(runs[name], ceilings)]))
    out = {"results": results, "ceiling": ceiling, "ratios": ratios, "machine": machine_info(workers), "config": cfg}
    click.echo(f"{'backend':<16}{'clips/s':>10}{'frames/s':>11}{'read':>8}{'decode':>8}{'augment':>9}{'to_dev':>8}"
               f"{'cpu ms/clip':>12}{'cores':>7}{'cores/1k clips/s':>18}   (stage ms per batch; cpu: process"
               " threads + workers)")
    for r in results:
        s, c = r["stage_ms"], r["cpu"]
        click.echo(f"{r['backend']:<16}{r['clips_per_s']:>10.1f}{r['frames_per_s']:>11.0f}{s['read']:>8.1f}"
                   f"{s['decode']:>8.1f}{s['augment']:>9.1f}{s['to_device']:>8.1f}{1000 * c['cpu_s_per_clip']:>12.2f}"
                   f"{c['cores_busy']:>7.2f}{c['cores_per_1k_clips_s']:>18.2f}")
    click.echo(f"{'decode ceiling':<16}{ceiling['decode_only_clips_per_s']:>10.1f}"
               f"{ceiling['decode_only_frames_per_s']:>11.0f}")
    click.echo("rates: best of the rounds; ratios: median over rounds of same-round ratios")
    for k, v in ratios.items():
        click.echo(f"{k}: {v:.2f}")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        from common.files import atomic_write_json

        atomic_write_json(json_path, out)
    if plot_path:
        os.makedirs(os.path.dirname(os.path.abspath(plot_path)), exist_ok=True)
        title = (f"{mode} {split}, B={batch_size}, T={num_segments}, {size}x{size}, {workers} workers, "
                 f"{os.cpu_count()} cores")
        plot(results, ceiling, num_segments, plot_path, title)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Collect the GPU data-path runs of ``bench/gpu_check.sh`` (issue 21) into one JSON + chart.

    python bench/gpu_data_path.py --results bench/results/gpu [--out bench/results/gpu/data_path]

Reads ``loaders_w<N>.json`` (tools/profile_loader.py, one per worker count) and ``feed_<arch>_<backend>_metrics
.jsonl`` (train.py, real data vs the synthetic-data ceiling), writes ``<out>.json`` and ``<out>.png`` and prints
the issue's targets with the measured values:

* loaders: clips/s and CPU cost (cores per 1,000 clips/s) of every variant at every worker count;
  dali / torch:nvjpeg (>= 1.5 at 12 workers), best dali with 2 workers (>= 2,000 clips/s), dali's CPU per clip
  / the torch backend's (<= 1/4);
* training: steady real-data clips/s (log intervals after the first of the run) / synthetic; the first log
  interval of epoch 2 / the steady rate (>= 0.9: no epoch-boundary stall); data-wait; loader CPU.
"""
from __future__ import annotations

import glob
import json
import os
import re
import statistics
import sys

import click

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def loaders(results: str) -> dict:
    """``{workers: {backend: {"clips_per_s", "cores_per_1k_clips_s", "cpu_s_per_clip"}}}``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(results, "loaders_w*.json"))):
        w = int(re.search(r"loaders_w(\d+)\.json$", path).group(1))
        rows = json.load(open(path))["results"]
        out[w] = {r["backend"]: {"clips_per_s": r["clips_per_s"], "cpu_s_per_clip": r["cpu"]["cpu_s_per_clip"],
                                 "cores_per_1k_clips_s": r["cpu"]["cores_per_1k_clips_s"]} for r in rows}
    return out


def training(results: str) -> list[dict]:
    """One row per ``feed_<arch>_<backend>_metrics.jsonl``."""
    rows = []
    for path in sorted(glob.glob(os.path.join(results, "feed_*_metrics.jsonl"))):
        arch, backend = re.search(r"feed_([^_]+)_(.+)_metrics\.jsonl$", path).group(1, 2)
        recs = [json.loads(x) for x in open(path) if x.strip()]
        train = [r for r in recs if r["kind"] == "train"]
        summary = next((r for r in recs if r["kind"] == "summary"), {})
        if len(train) < 2:
            rows.append({"arch": arch, "backend": backend, "complete": False})
            continue
        steady = [r["clips_per_s"] for r in train[1:]]  # the run's first interval warms the model up
        e2 = [r for r in train if r["epoch"] == 1]
        rate = statistics.median(steady)
        syn = summary.get("synthetic_steps_per_s")
        real_steps = summary.get("steps_per_s")
        rows.append({
            "arch": arch, "backend": backend, "complete": bool(summary), "steady_clips_per_s": rate,
            "epoch2_first_interval_clips_per_s": e2[0]["clips_per_s"] if e2 else None,
            "epoch2_first_over_steady": e2[0]["clips_per_s"] / rate if e2 else None,
            "data_wait_median": statistics.median(r["data_wait"] for r in train[1:]),
            "loader_cores_median": statistics.median(r.get("loader_cores", float("nan")) for r in train[1:]),
            "loader_cores_per_1k_clips_s": statistics.median(r.get("loader_cores_per_1k_clips_s", float("nan"))
                                                             for r in train[1:]),
            "real_over_synthetic": summary.get("fraction_of_synthetic"),
            "synthetic_steps_per_s": syn, "real_steps_per_s": real_steps, "steps": train[-1]["step"],
        })
    return rows


def targets(prof: dict, train: list[dict]) -> dict:
    """The issue's targets with the measured values (``None`` where the run did not measure them)."""
    def best(w, prefix):
        rows = {k: v for k, v in prof.get(w, {}).items() if k == prefix or k.startswith(prefix + ":")}
        return max(rows.items(), key=lambda kv: kv[1]["clips_per_s"]) if rows else (None, None)

    out = {}
    name, d12 = best(12, "dali")
    nv = prof.get(12, {}).get("torch:nvjpeg")
    if d12 and nv:
        out["dali_over_torch_nvjpeg_12_workers"] = {"value": d12["clips_per_s"] / nv["clips_per_s"], "target": 1.5,
                                                    "variant": name}
    name2, d2 = best(2, "dali")
    if d2:
        out["dali_clips_per_s_2_workers"] = {"value": d2["clips_per_s"], "target": 2000, "variant": name2}
    tq = prof.get(12, {}).get("torch")
    if d12 and tq:
        out["dali_cpu_per_clip_over_torch"] = {"value": d12["cpu_s_per_clip"] / tq["cpu_s_per_clip"],
                                               "target_at_most": 0.25}
    for r in train:
        if r.get("real_over_synthetic") is not None:
            goal = 0.95 if r["arch"] == "resnet50" else 0.90
            out[f"real_over_synthetic_{r['arch']}_{r['backend']}"] = {"value": r["real_over_synthetic"],
                                                                      "target": goal}
        if r.get("epoch2_first_over_steady") is not None:
            out[f"epoch2_start_over_steady_{r['arch']}_{r['backend']}"] = {"value": r["epoch2_first_over_steady"],
                                                                           "target": 0.9}
    return out


def chart(prof: dict, train: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.files import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = sorted({b for rows in prof.values() for b in rows})
    ws = sorted(prof)
    width = 0.8 / max(len(ws), 1)
    for i, w in enumerate(ws):
        xs = [k + i * width for k in range(len(names))]
        axes[0].bar(xs, [prof[w].get(n, {}).get("clips_per_s", 0) for n in names], width, label=f"{w} workers")
        axes[1].bar(xs, [prof[w].get(n, {}).get("cores_per_1k_clips_s", 0) for n in names], width,
                    label=f"{w} workers")
    for ax, label in ((axes[0], "clips / s"), (axes[1], "CPU cores per 1,000 clips/s")):
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))], names, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_title("loaders to the GPU (B=32, T=8, 224^2)", fontsize=9)
    axes[1].set_title("CPU cost (threads + worker processes)", fontsize=9)
    done = [r for r in train if r.get("real_over_synthetic") is not None]
    axes[2].bar([f"{r['arch']}\n{r['backend']}" for r in done], [r["real_over_synthetic"] for r in done],
                color="#2a7")
    axes[2].axhline(0.95, color="#c63", lw=1, ls="--")
    axes[2].set_ylabel("real / synthetic step rate")
    axes[2].set_title("training 8x224^2: real data vs synthetic", fontsize=9)
    axes[2].tick_params(axis="x", labelsize=7)
    save_figure(fig, path, dpi=120)


@click.command()
@click.option("--results", default="bench/results/gpu", show_default=True, type=click.Path())
@click.option("--out", default=None, help="output stem (default RESULTS/data_path)")
def main(results, out):
    """Collect the loader sweep and the real-vs-synthetic training runs into <out>.json + <out>.png."""
    from common.files import atomic_write_json

    out = out or os.path.join(results, "data_path")
    prof, train = loaders(results), training(results)
    res = {"loaders": {str(w): v for w, v in prof.items()}, "training": train, "targets": targets(prof, train)}
    atomic_write_json(out + ".json", res)
    if prof or train:
        chart(prof, train, out + ".png")
    for k, v in res["targets"].items():
        goal = f">= {v['target']}" if "target" in v else f"<= {v['target_at_most']}"
        click.echo(f"{k}: {v['value']:.3g} (target {goal}){' ' + v['variant'] if v.get('variant') else ''}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""`make demo`: the whole product end to end on a generated dataset, on CPU, in minutes.

    demo.py [--raw data/raw/demo] [--data data/shards/demo] [--runs runs/demo] [--epochs N] [--size PX] ...

Stages (each reuses what a previous run left, so running it again only redoes what is missing):

1. generate a synthetic raw dataset in the official Jester layout (``tools/make_synthetic.py``): 9 classes
   whose single frames look alike and whose motion differs (swipe left/right/up/down, turn clockwise /
   counter-clockwise, zoom in/out, stop);
2. convert it to Arrow shards and verify them (``tools/convert_dataset.py``, what ``make convert`` runs);
3. train ResNet-18 **ACTION** (3 segments of 48 px by default) with ``train.py train`` and, for the same number of steps, the same
   model with ``--temporal none`` (a TSN: per-frame features averaged over time, so it cannot tell a motion
   from its reverse);
4. score both with ``train.py test`` (2 clips per video) on the validation split;
5. predict with ``train.py predict`` and the ACTION run on a generated long video of gestures one after another
   (``tools/demo_predict.py``): the windows' top-1 against the known gestures, an annotated video and a timeline
   under ``RUNS/predict/``;
6. print a report (val top-1/top-5 of both models side by side, per-class and per-pair accuracy, clips/s,
   data-wait fraction, stage times) and write ``RUNS/report.json`` and ``RUNS/curves.png`` (training loss
   and val top-1 of both models).

Every stage is a separate command that the report prints, so any of them can be re-run by hand. Training
uses 1 process (2 CPU cores); on a GPU machine the same commands use the GPU.

The recipe differs from the ImageNet fine-tuning recipes in ``configs/`` because the demo trains from scratch:
no new_fc lr x5/x10 (``--no-fc-lr5``: with random features it throws the first steps' logits far off and the
run stays at chance), the official init (``--no-zero-init-residual``: with zeroed residual branches ResNet-18
stayed at chance for the demo's first epochs), no dropout, and 3 segments of 48 px (docs/benchmarks.md "make
demo": what that costs and changes) so that both models train in minutes on 2 cores.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import click

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("demo")

# (class, mirror/reverse class, short name): the motion-direction pairs a model without temporal modelling
# cannot separate (reversing a clip turns one class into the other).
PAIRS = (("Swiping Left", "Swiping Right", "left / right"), ("Swiping Down", "Swiping Up", "down / up"),
         ("Turning Hand Clockwise", "Turning Hand Counterclockwise", "clockwise / counter"),
         ("Zooming In With Full Hand", "Zooming Out With Full Hand", "zoom in / out"))


class DemoError(RuntimeError):
    """A demo stage failed; the message names the stage, its command and its log."""


def _run(cmd: list[str], log_path: Path, stage: str, env: dict | None = None) -> str:
    """Run ``cmd`` (stderr and stdout into ``log_path``, its INFO/error lines also to the terminal); its stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shown = " ".join(cmd)
    click.echo(f"  $ {shown}", err=True)
    with open(log_path, "w", encoding="utf-8") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})

        def pump():  # the stage's log lines (progress, epochs) to the terminal and the log file
            for line in proc.stderr:
                f.write(line)
                f.flush()
                if " INFO " in line or "error" in line.lower():
                    click.echo("    " + line.rstrip(), err=True)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        stdout = proc.stdout.read()
        proc.wait()
        t.join()
        f.write(stdout)
        proc.stdout.close()
        proc.stderr.close()
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise DemoError(f"{stage} failed (exit {proc.returncode}); log: {log_path}\n  " + "\n  ".join(tail))
    return stdout


def read_metrics(run: Path) -> list[dict]:
    """The records of ``run/metrics.jsonl`` (empty when missing)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:  # a torn last line of a killed run
                continue
    return out


def finished(run: Path, train_args: list[str]) -> bool:
    """``run`` holds a completed training with the same arguments (so the demo can reuse it)."""
    stamp = run / "demo-args.json"
    if not (stamp.exists() and (run / "last.pt").exists()):
        return False
    try:
        same = json.loads(stamp.read_text(encoding="utf-8")) == train_args
    except ValueError:
        return False
    return same and any(r.get("kind") == "summary" for r in read_metrics(run))


def train_model(name: str, run: Path, train_args: list[str], logs: Path) -> dict:
    """Train one model into ``run`` (or reuse / resume it); return timing info."""
    timing = run / "demo-seconds.json"
    if finished(run, train_args):
        click.echo(f"  {run}: trained already (remove it to retrain)", err=True)
        try:
            seconds = float(json.loads(timing.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            seconds = 0.0
        return {"reused": True, "seconds": seconds}
    args = list(train_args)
    stamp = run / "demo-args.json"
    if (run / "last.pt").exists() and stamp.exists() and json.loads(stamp.read_text()) == train_args:
        args.append("--resume")  # an interrupted demo run continues exactly where it stopped
    elif run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    from common.files import atomic_write

    atomic_write(stamp, json.dumps(train_args))
    t0 = time.perf_counter()
    _run([sys.executable, "train.py", "train", *args], logs / f"train-{name}.log", f"training {name}")
    seconds = time.perf_counter() - t0
    if "--resume" not in args:  # a resumed run's time would be only its last part
        atomic_write(timing, json.dumps(seconds))
    return {"reused": False, "seconds": seconds}


def test_model(name: str, run: Path, clips: int, logs: Path) -> dict:
    """``train.py test`` on the val split (``clips`` clips x 1 crop per video); the JSON result."""
    out = _run([sys.executable, "train.py", "test", "--run-dir", str(run), "--split", "val",
                "--test-clips", str(clips), "--test-crops", "1"], logs / f"test-{name}.log", f"testing {name}")
    return json.loads(out.strip().splitlines()[-1])


def summarise(run: Path) -> dict:
    """Training numbers of ``run``: final val top-1/top-5, per-class, mean clips/s, data-wait, curves."""
    recs = read_metrics(run)
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    train = [r for r in recs if r.get("kind") == "train"]
    summary = next((r for r in reversed(recs) if r.get("kind") == "summary"), {})
    last = summary.get("last_eval", {})
    busy = sum(r.get("clips_per_s", 0) > 0 for r in epochs)
    return {
        "val_top1": last.get("top1"), "val_top5": last.get("top5"), "per_class": last.get("per_class", {}),
        "clips_per_s": sum(r["clips_per_s"] for r in epochs) / busy if busy else None,
        "data_wait": sum(r["data_wait"] for r in epochs) / len(epochs) if epochs else None,
        "epochs": [{"epoch": r["epoch"] + 1, "val_top1": r.get("val_top1"), "train_loss": r["train_loss"]}
                   for r in epochs],
        "loss": [(r["step"], r["loss"]) for r in train],
    }


def plot_curves(results: dict, path: Path, title: str) -> None:
    """Training loss (per log interval) and val top-1 (per epoch) of every model, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker  # noqa: F401 (MaxNLocator)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in results.items():
        s = r["train"]
        if s["loss"]:
            steps, losses = zip(*s["loss"])
            ax1.plot(steps, losses, label=name, lw=1.2)
        ep = [e for e in s["epochs"] if e["val_top1"] is not None]
        ax2.plot([e["epoch"] for e in ep], [e["val_top1"] for e in ep], marker="o", label=name)
    ax1.set(xlabel="step", ylabel="train loss", title="training loss")
    ax2.set(xlabel="epoch", ylabel="val top-1 (%)", title="validation top-1", ylim=(0, 100))
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    from common.files import save_figure

    save_figure(fig, path, dpi=110)


def pair_accuracy(per_class: dict, classes: list[str]) -> dict:
    """Mean top-1 over each mirror pair's two classes (the motion-direction classes)."""
    idx = {n: str(i) for i, n in enumerate(classes)}
    out = {}
    for a, b, short in PAIRS:
        vals = [per_class[idx[n]] for n in (a, b) if n in idx and idx[n] in per_class]
        if len(vals) == 2:
            out[short] = sum(vals) / 2
    return out


def _fmt(v, spec=".1f", suffix=""):
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--raw", default="data/raw/demo", show_default=True, help="where the raw Jester-layout tree goes")
@click.option("--data", default="data/shards/demo", show_default=True, help="where the shards go")
@click.option("--runs", default="runs/demo", show_default=True, help="run directories (action/, none/), report")
@click.option("--clips-per-class", default=300, show_default=True, help="train clips per class (9 classes)")
@click.option("--val-per-class", default=40, show_default=True, help="validation clips per class")
@click.option("--frame-size", default="96x72", show_default=True, help="generated frame WIDTHxHEIGHT")
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--size", default=48, show_default=True, help="training crop side (px)")
@click.option("--segments", default=3, show_default=True,
              help="TSN segments (frames per clip; 3 keeps the CPU demo in budget, the recipes use 8)")
@click.option("--epochs", default=5, show_default=True)
@click.option("--lr-steps", default="4", show_default=True, help="epochs where the lr drops x0.1 (comma list)")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=0.01, show_default=True)
@click.option("--workers", default=1, show_default=True, help="loader threads")
@click.option("--test-clips", default=2, show_default=True, help="clips per video in the final test")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="also train the temporal='none' model for the same number of steps")
@click.option("--seed", default=0, show_default=True)
def main(raw, data, runs, clips_per_class, val_per_class, frame_size, arch, size, segments, epochs, lr_steps,
         batch_size, lr, workers, test_clips, baseline, seed):
    """Generate → convert → train ACTION and a no-temporal baseline → test → report, on CPU in minutes.

    Re-running reuses what exists (the generated tree, the shards, finished runs); an interrupted training
    resumes exactly. Remove RUNS (or `make clean`) to start over.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t_start = time.perf_counter()
    runs_p, logs = ROOT / runs, ROOT / runs / "logs"
    times: dict = {}
    reused: list = []  # stages whose time comes from the run that did them
    try:
        click.echo("[1/5] generating the synthetic Jester-layout dataset", err=True)
        t0 = time.perf_counter()
        _run([sys.executable, "tools/make_synthetic.py", raw, "--layout", "jester", "--clips-per-class",
              str(clips_per_class), "--val-per-class", str(val_per_class), "--test-clips", "18", "--size",
              frame_size, "--frames", "12-16", "--seed", str(seed), "--workers", "2"], logs / "generate.log",
             "generating")
        times["generate"] = time.perf_counter() - t0

        click.echo("[2/5] converting to Arrow shards (make convert) and verifying them", err=True)
        t0 = time.perf_counter()
        if not (ROOT / data / "manifest.json").exists():
            _run([sys.executable, "tools/convert_dataset.py", "jester", "--raw", raw, "--out", data, "--workers",
                  "2"], logs / "convert.log", "converting")
        else:
            click.echo(f"  {data}: converted already", err=True)
        _run([sys.executable, "tools/convert_dataset.py", "verify", data], logs / "verify.log", "verifying")
        times["convert"] = time.perf_counter() - t0
        classes = json.loads((ROOT / data / "manifest.json").read_text(encoding="utf-8"))["classes"]

        common = ["--dataset", "jester", "--data", data, "--arch", arch, "--num-segments", str(segments),
                  "--size", str(size), "--batch-size", str(batch_size), "--epochs", str(epochs), "--lr", str(lr),
                  "--lr-steps", lr_steps, "--dropout", "0", "--no-fc-lr5", "--workers", str(workers), "--seed", str(seed),
                  "--device", "auto", "--log-interval", "10", "--ceiling-steps", "0",
                  # the official init: with the last BN of every residual branch zeroed (the trainer's from-scratch
                  # default) ACTION stayed at chance (val top-1 9.2, 8.9 % after epochs 1-2, vs 22.8, 58.1 %)
                  "--no-zero-init-residual"]
        models = ["action"] + (["none"] if baseline else [])
        results = {}
        for k, name in enumerate(models):
            click.echo(f"[3/5] training {arch} temporal={name} ({k + 1}/{len(models)}: {epochs} epochs, "
                       f"{segments}x{size}px, batch {batch_size})", err=True)
            run = runs_p / name
            info = train_model(name, run, [*common, "--temporal", name, "--run-dir", str(Path(runs) / name)], logs)
            times[f"train_{name}"] = info["seconds"]
            if info["reused"]:
                reused.append(f"train_{name}")
            results[name] = {"run": str(Path(runs) / name), "train": summarise(run)}
        click.echo("[4/5] testing (2 clips per video, val split)", err=True)
        for name in models:
            t0 = time.perf_counter()
            results[name]["test"] = test_model(name, runs_p / name, test_clips, logs)
            times[f"test_{name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        predicted = predict_stage(runs_p, logs, frame_size, seed)
        times["predict"] = time.perf_counter() - t0
    except DemoError as e:
        raise click.ClickException(str(e)) from None

    click.echo("[5/5] report", err=True)
    total = time.perf_counter() - t_start
    title = (f"make demo: {arch} {segments}x{size}px on 9 synthetic motion classes, {epochs} epochs "
             f"(CPU, {os.cpu_count()} cores)")
    plot_curves(results, runs_p / "curves.png", title)
    for r in results.values():
        r["pairs"] = pair_accuracy(r["test"].get("per_class", {}), classes)
    report = {"results": results, "predict": predicted, "seconds": times, "reused": reused, "total_seconds": total,
              "classes": classes,
              "config": {"arch": arch, "size": size, "segments": segments, "epochs": epochs, "batch_size": batch_size,
                         "lr": lr, "lr_steps": lr_steps, "clips_per_class": clips_per_class}}
    from common.files import atomic_write

    atomic_write(runs_p / "report.json", json.dumps(report, indent=1) + "\n")
    click.echo(render(report, runs))


def predict_stage(runs_p: Path, logs: Path, frame_size: str, seed: int) -> dict:
    """After the tests: ``train.py predict`` with the ACTION run on a generated long video of gestures one after
    another (tools/demo_predict.py): windows' top-1 against the known gestures, annotated video, timeline."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools.demo_predict import predict_long_video

    click.echo("[4/5] predicting on a generated long video (train.py predict)", err=True)
    w, h = (int(v) for v in frame_size.lower().split("x"))
    return predict_long_video(_run, runs_p, runs_p / "action", logs, frame_size=(w, h), seed=seed)


def render(report: dict, runs: str) -> str:
    """The printed report."""
    res, classes = report["results"], report["classes"]
    names = list(res)
    w = 26
    lines = ["", "=" * 78, "ACTION-Net demo: 9 synthetic classes that only motion tells apart", "=" * 78,
             f"{'':{w}}" + "".join(f"{n:>16}" for n in names)]

    def row(label, fn):
        lines.append(f"{label:{w}}" + "".join(f"{fn(res[n]):>16}" for n in names))

    row("val top-1 (1 clip)", lambda r: _fmt(r["train"]["val_top1"], ".1f", " %"))
    row("val top-5 (1 clip)", lambda r: _fmt(r["train"]["val_top5"], ".1f", " %"))
    row("test top-1 (2 clips, val)", lambda r: _fmt(r["test"].get("top1"), ".1f", " %"))
    row("train clips/s", lambda r: _fmt(r["train"]["clips_per_s"], ".1f"))
    row("data-wait fraction", lambda r: _fmt(r["train"]["data_wait"], ".1%"))
    lines.append("per-pair top-1 (test):")
    for pair in res[names[0]]["pairs"]:
        row(f"  {pair}", lambda r, p=pair: _fmt(r["pairs"].get(p), ".1f", " %"))
    idx = {n: str(i) for i, n in enumerate(classes)}
    if "Stop Sign" in idx:
        row("  no motion (Stop Sign)", lambda r: _fmt(r["test"].get("per_class", {}).get(idx["Stop Sign"]), ".1f", " %"))
    pr = report.get("predict")
    if pr:
        lines.append(f"{'long video, windows top-1':{w}}{_fmt(pr['window_top1'], '.1f', ' %'):>16}   "
                     f"({pr['scored_windows']} windows inside a gesture of {pr['windows']}; {pr['gestures']} "
                     f"gestures, {pr['seconds_of_video']:.0f} s; {pr['annotated']})")
    t = report["seconds"]
    reused = report.get("reused", [])
    lines += ["", "time: " + ", ".join(f"{k} {v:.0f} s" + (" (earlier run)" if k in reused else "")
                                       for k, v in t.items()) +
              f"; this invocation {report['total_seconds'] / 60:.1f} min",
              f"runs: {runs}/action, {runs}/none (config.json, metrics.jsonl, best.pt, logs/), "
              f"curves: {runs}/curves.png, report: {runs}/report.json",
              "",
              "next:",
              "  make profile                                  loader clips/s: folder vs torch vs dali vs decode ceiling",
              "  make convert DATASET=jester RAW=/data/jester  your real dataset (see docs/datasets-and-conversion.md)",
              "  make train DATASET=jester GPUS=0,1,2,3        the official ACTION-Net recipe (R50, 8 segments)",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""ACTION module cost: optimised (action/temporal.py) vs the line-by-line official formulation
(tests/action_reference.py), forward + backward on CPU. ``make bench-model`` runs it.

What is measured (median of interleaved repetitions: every repetition runs each variant once, side by side,
so background load hits all of them alike):

* block level — one wrapped 1×1 conv (C → C/4, as ``conv1`` of a bottleneck) at the R50 stage shapes of
  2 clips × 8 frames at 112² (and 1 clip at 224²): ``none`` (the conv alone), ``optimised``, ``reference``;
* whole model — ACTION-R50 8f (83 classes), 2 clips at 112² and 1 clip at 224²: ``none`` (plain TSN),
  ``optimised``, ``reference`` (same weights, ACTION modules swapped for the reference formulation).

The ACTION overhead of a variant is ``median(variant) - median(none)``; the target is
``overhead(optimised) <= 0.5 * overhead(reference)``, identical outputs (checked here in eval mode), and the
optimised model never slower than the reference. Also checks that channels_last and bf16 autocast run.
Writes ``bench_model.json`` (raw times, medians, ratios, environment) and ``bench_model.png``.
No GPU here: torch.compile and CUDA timings are not measured by this script.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from action import build_model  # noqa: E402
from action.temporal import Action  # noqa: E402
from tests.action_reference import ReferenceAction, make_reference_model  # noqa: E402

# (label, channels, spatial) of the inputs of ACTION-wrapped convs in R50 at 112² (spatial halves per stage)
BLOCKS_112 = [("layer1 C=256", 256, 28), ("layer2 C=512", 512, 14), ("layer3 C=1024", 1024, 7),
              ("layer4 C=2048", 2048, 4)]


def _fwd_bwd(model: nn.Module, x: torch.Tensor) -> None:
    xx = x.detach().requires_grad_(x.dim() == 4)
    out = model(xx)
    if out.dim() == 2:  # whole model: a real loss
        loss = nn.functional.cross_entropy(out.float(), torch.arange(out.shape[0]) % out.shape[1])
    else:
        loss = out.float().sum()
    loss.backward()
    for p in model.parameters():
        p.grad = None


def interleaved(variants: dict, x: torch.Tensor, reps: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        for f in variants.values():
            f(x)
    times = {k: [] for k in variants}
    for _ in range(reps):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f(x)
            times[k].append(time.perf_counter() - t0)
    return times


def summarise(times: dict) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    mins = {k: min(v) for k, v in times.items()}
    ov_opt = med["optimised"] - med["none"]
    ov_ref = med["reference"] - med["none"]
    ov_ref_min = mins["reference"] - mins["none"]
    return {"median_s": med, "min_s": mins, "overhead_optimised_s": ov_opt, "overhead_reference_s": ov_ref,
            "overhead_ratio": ov_opt / ov_ref if ov_ref > 0 else None,
            "overhead_ratio_from_min": (mins["optimised"] - mins["none"]) / ov_ref_min if ov_ref_min > 0 else None,
            "optimised_vs_reference_speedup": med["reference"] / med["optimised"], "raw_s": times}


def bench_blocks(reps: int, clips: int, frames: int, scale: int) -> list[dict]:
    rows = []
    for label, c, hw in BLOCKS_112:
        hw = hw * scale
        torch.manual_seed(0)
        net = nn.Conv2d(c, c // 4, 1, bias=False)
        opt = Action(net, n_segment=frames)
        ref = ReferenceAction(net, n_segment=frames)
        ref.load_state_dict(opt.state_dict())
        x = torch.randn(clips * frames, c, hw, hw)
        variants = {"none": lambda v, m=net: _fwd_bwd(m, v), "optimised": lambda v, m=opt: _fwd_bwd(m, v),
                    "reference": lambda v, m=ref: _fwd_bwd(m, v)}
        res = summarise(interleaved(variants, x, reps))
        with torch.no_grad():
            opt.eval()
            ref.eval()
            res["max_abs_diff_eval"] = (opt(x) - ref(x)).abs().max().item()
        res.update({"label": label, "channels": c, "spatial": hw, "clips": clips, "frames": frames})
        rows.append(res)
        print(f"  block {label:<14} {clips}×{frames}×{hw}²: none {res['median_s']['none'] * 1e3:7.2f} ms | "
              f"+opt {res['overhead_optimised_s'] * 1e3:6.2f} | +ref {res['overhead_reference_s'] * 1e3:6.2f} | "
              f"ratio {res['overhead_ratio']:.2f}", flush=True)
    return rows


def bench_model(reps: int, clips: int, size: int, frames: int = 8, channels_last: bool = False) -> dict:
    torch.manual_seed(0)
    none = build_model("resnet50", num_classes=83, num_segments=frames, temporal="none")
    opt = build_model("resnet50", num_classes=83, num_segments=frames, temporal="action", action_impl="torch")
    ref = make_reference_model(copy.deepcopy(opt))
    models = {"none": none, "optimised": opt, "reference": ref}
    if channels_last:
        for m in models.values():
            m.to(memory_format=torch.channels_last)
    x = torch.randn(clips, frames, 3, size, size)
    variants = {k: (lambda v, m=m: _fwd_bwd(m, v)) for k, m in models.items()}
    res = summarise(interleaved(variants, x, reps))
    with torch.no_grad():
        opt.eval()
        ref.eval()
        a, b = opt(x), ref(x)
        res["max_abs_diff_logits_eval"] = (a - b).abs().max().item()
        res["max_abs_logit"] = b.abs().max().item()
    res.update({"arch": "resnet50", "clips": clips, "frames": frames, "size": size, "channels_last": channels_last})
    print(f"  R50 {frames}f {clips}×{size}² {'channels_last' if channels_last else 'NCHW'}: "
          f"none {res['median_s']['none']:.3f} s | opt {res['median_s']['optimised']:.3f} s "
          f"(+{res['overhead_optimised_s']:.3f}) | ref {res['median_s']['reference']:.3f} s "
          f"(+{res['overhead_reference_s']:.3f}) | overhead ratio {res['overhead_ratio']:.2f} | "
          f"logit diff {res['max_abs_diff_logits_eval']:.2e}", flush=True)
    return res


def check_bf16(size: int = 112) -> dict:
    torch.manual_seed(0)
    m = build_model("resnet50", num_classes=83, num_segments=8, temporal="action", action_impl="torch")
    x = torch.randn(1, 8, 3, size, size)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        nn.functional.cross_entropy(out.float(), torch.zeros(1, dtype=torch.long)).backward()
    dt = time.perf_counter() - t0
    ok = bool(torch.isfinite(out.float()).all())
    print(f"  bf16 autocast fwd+bwd (1×{size}², one run): {dt:.3f} s, finite={ok}", flush=True)
    return {"ok": ok, "seconds_one_run": dt, "size": size}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r["label"].split()[0] + f"\n{r['clips']}×{r['spatial']}²", r)
            for r in results["blocks_112"] + results.get("blocks_224", [])]
    rows += [(f"R50 8f\n{r['clips']}×{r['size']}²" + ("\nCL" if r["channels_last"] else ""), r)
             for r in results["models"]]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.95 * len(rows)), 4.6))
    xs = range(len(rows))
    ref = [r["overhead_reference_s"] / max(r["overhead_reference_s"], 1e-12) for _, r in rows]
    opt = [r["overhead_optimised_s"] / max(r["overhead_reference_s"], 1e-12) for _, r in rows]
    ax.bar([i - 0.2 for i in xs], ref, width=0.4, label="reference (official formulation)", color="#bbbbbb")
    ax.bar([i + 0.2 for i in xs], opt, width=0.4, label="optimised", color="#1f77b4")
    for i, (_, r) in enumerate(rows):
        ax.text(i + 0.2, min(opt[i], 1.12) + 0.02, f"{r['overhead_ratio']:.2f}", ha="center", fontsize=8)
        ax.text(i - 0.2, 1.02, f"{r['overhead_reference_s'] * 1e3:.0f} ms", ha="center", fontsize=7)
    ax.axhline(0.5, color="red", ls="--", lw=1, label="target 0.5×")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([k for k, _ in rows], fontsize=8)
    ax.set_ylabel("ACTION overhead (fwd+bwd) / reference overhead")
    ax.set_ylim(0, 1.2)
    ax.set_title("ACTION modules: cost over the plain network, CPU (median of interleaved runs)", pad=28)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.subplots_adjust(bottom=0.22)
    from common.files import save_figure

    save_figure(fig, path, tight=False, dpi=120)


def replot(json_path: str) -> None:
    """Redraw the PNG next to an existing results JSON."""
    p = Path(json_path)
    plot(json.loads(p.read_text()), p.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions for the whole model")
    ap.add_argument("--block-reps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, skip 224² (smoke test)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tag", default="", help="suffix for the output names (bench_model<tag>.json/png)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.reps, args.block_reps = 3, 5
    torch.set_flush_denormal(True)  # tiny gradients must not hit the slow denormal path on x86
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "argv": sys.argv[1:], "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "processor": platform.processor(),
           "loadavg_start": os.getloadavg(), "device": "cpu"}
    print(f"torch {torch.__version__}, {env['threads']} threads, load {env['loadavg_start']}", flush=True)
    results: dict = {"env": env}
    print("block level (2 clips × 8 frames, R50 shapes at 112²):", flush=True)
    results["blocks_112"] = bench_blocks(args.block_reps, clips=2, frames=8, scale=1)
    if not args.quick:
        print("block level (1 clip × 8 frames, R50 shapes at 224²):", flush=True)
        results["blocks_224"] = bench_blocks(max(5, args.block_reps // 2), clips=1, frames=8, scale=2)
    print("whole model:", flush=True)
    results["models"] = [bench_model(args.reps, clips=2, size=112)]
    if not args.quick:
        results["models"].append(bench_model(max(3, args.reps - 2), clips=1, size=224))
        results["models"].append(bench_model(max(3, args.reps - 2), clips=2, size=112, channels_last=True))
    results["bf16_autocast"] = check_bf16()
    env["loadavg_end"] = os.getloadavg()
    main_row = results["models"][0]
    results["verdict"] = {
        "target": "overhead(optimised) <= 0.5 * overhead(reference), whole model never slower",
        "overhead_ratio_r50_112": main_row["overhead_ratio"],
        "met": all(r["overhead_ratio"] is not None and r["overhead_ratio"] <= 0.5 for r in results["models"])
        and all(r["median_s"]["optimised"] <= r["median_s"]["reference"] for r in results["models"]),
        "not_measured": "GPU (CUDA) and torch.compile timings: no GPU on this machine",
    }
    name = f"bench_model{args.tag}"
    from common.files import atomic_write_json

    atomic_write_json(out / f"{name}.json", results)
    plot(results, out / f"{name}.png")
    print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}; verdict: {results['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

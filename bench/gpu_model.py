"""Model-bound training rate on a GPU: TSN (no temporal module) vs TSM vs ACTION -- ACTION's torch path, its
fused Triton kernels (action/fused_action.py, PyTorch custom operators) and torch.compile -- interleaved in one
process, plus the fused kernels' achieved memory bandwidth.

    python bench/gpu_model.py --arch resnet50 --batch-size 32 --json bench/results/gpu/gpu_model.json

One training step = bf16 autocast forward, cross-entropy, backward, SGD step, channels_last, random input already
on the device (what ``train.py --synthetic`` measures). Each variant: warm-up steps (compile included), then
timed steps between two ``torch.cuda.synchronize()``. Variants run one after another in one process; the
``--rounds`` loop interleaves them so clock or thermal drift hits all alike, and the best round is reported.
Before timing, one forward of a small batch checks the fused ACTION path against the torch path on this GPU:
the logits of both, fp32 and bf16, relative to the fp32 torch path (the JSON's ``fused_check``). After the
timings, ``--bandwidth`` times each fused kernel alone at the R50 ACTION block shapes (bf16, channels_last) and
reports bytes moved / time against torch's copy of the same tensor and of a 1 GiB buffer (the JSON's
``bandwidth``). Implementations are model options (action.models.build_model / set_impl), never module globals.
Needs a CUDA device (it is a GPU benchmark; on CPU use ``make bench-model``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


SHIFT_IMPLS = ("auto", "fused", "reference")  # build_model(shift_impl=...)
ACTION_IMPLS = ("triton", "torch")  # build_model(action_impl=...)
COMPILE_MODES = {"compile": "default", "cudagraphs": "reduce-overhead"}  # '+compile' / '+cudagraphs'


def parse_variant(name: str) -> tuple[str, str, str | None]:
    """``temporal[@impl][+compile|+cudagraphs]`` -> (temporal, implementation, torch.compile mode or None)."""
    head, _, opt = name.partition("+")
    temporal, _, impl = head.partition("@")
    impl = impl or "auto"
    if impl not in SHIFT_IMPLS + ACTION_IMPLS:
        raise ValueError(f"unknown implementation {impl!r} in variant {name!r}; "
                         f"choose one of {', '.join(SHIFT_IMPLS + ACTION_IMPLS)}")
    if opt and opt not in COMPILE_MODES:
        raise ValueError(f"unknown option {opt!r} in variant {name!r}; choose one of {', '.join(COMPILE_MODES)}")
    return temporal, impl, COMPILE_MODES.get(opt)


def impl_options(impl: str) -> dict:
    """build_model options of a variant's '@impl': '@triton' / '@torch' pick ACTION's implementation (the shifts
    stay "auto"); '@reference' / '@fused' pick the shifts' and run ACTION's torch path (where its shift lives);
    'auto' leaves both at their defaults."""
    if impl in ACTION_IMPLS:
        return {"action_impl": impl, "shift_impl": "auto"}
    if impl == "auto":
        return {"action_impl": "auto", "shift_impl": "auto"}
    return {"action_impl": "torch", "shift_impl": impl}


def fused_check(arch: str, segments: int, size: int, batch: int = 2) -> dict:
    """Logits of the fused ACTION path and of the torch path, fp32 and bf16 autocast, each against the fp32 torch
    path on this GPU (same weights and input, train-mode BN): ``max|a - ref| / max|ref|`` per pair."""
    import torch

    from action import build_model
    from action.models import set_impl

    torch.manual_seed(0)
    model = build_model(arch=arch, num_classes=174, num_segments=segments, temporal="action", dropout=0.0)
    model = model.cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, segments, 3, size, size, device="cuda")
    logits = {}
    for bf16 in (False, True):
        for impl in ("torch", "triton"):
            set_impl(model, impl)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                logits[f"{impl}_{'bf16' if bf16 else 'fp32'}"] = model(x).float()
    ref = logits.pop("torch_fp32")
    return {f"{k}_vs_torch_fp32": ((v - ref).abs().max() / ref.abs().max()).item() for k, v in logits.items()}


def _cuda_ms(fn, reps: int = 20) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def kernel_bandwidth(frames: int, arch: str = "resnet50") -> dict:
    """Achieved GB/s of each fused kernel alone at the input shapes of the ACTION blocks of ``arch`` (bf16,
    channels_last, ``frames`` = batch x segments): bytes a kernel must move (x-sized tensors read + written, for
    the motion passes the squeeze conv's output and y; the gate vectors and partial sums are small and not
    counted) / time, against torch's copy of the same tensor
    (read + write) and the copy rate of a 1 GiB buffer."""
    import torch

    from action import fused_action as FA, fused_motion as FM

    shapes = {"resnet50": [(256, 56), (512, 28), (1024, 14), (2048, 7)],
              "resnet18": [(64, 56), (128, 28), (256, 14), (512, 7)]}.get(arch, [(256, 56), (512, 28)])
    big = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    big2 = torch.empty_like(big)
    copy_gbs = 2 * big.numel() * 2 / _cuda_ms(lambda: big2.copy_(big)) / 1e6
    del big, big2
    rows = []
    for c, hw in shapes:
        x = torch.randn(frames, c, hw, hw, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        ws = torch.randn(c, 3, device="cuda")
        gate = torch.rand(frames, c, device="cuda", dtype=torch.bfloat16) + 3
        s1 = torch.rand(frames, hw * hw, device="cuda", dtype=torch.bfloat16)
        g = torch.randn_like(x)
        y = torch.empty_like(x)
        nbytes = x.numel() * x.element_size()
        t = 8
        # the motion passes read/write the squeeze conv's output: 3·(r+1) rows padded to 8, r = C/16
        r = c // 16
        kz = -(-3 * (r + 1) // 8) * 8
        z = torch.randn(frames, kz, hw, hw, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        ym, sm, st = FM.motion_stats(z, t, r)
        gs, gst = torch.randn_like(sm), torch.randn_like(st)
        zbytes, ybytes = z.numel() * z.element_size(), ym.numel() * ym.element_size()
        ops = {"copy (torch)": (lambda: y.copy_(x), 2 * nbytes),
               "shift_gate fwd": (lambda: FA._launch_fwd(x, ws, gate, s1, t), 2 * nbytes),
               "shift_gate bwd (reduce + input)": (lambda: FA._launch_bwd(g, x, ws, gate, s1, t), 4 * nbytes),
               # z read, y (+ s) written; backward: y read, g_z written
               "motion_stats fwd": (lambda: FM.motion_stats(z, t, r), zbytes + ybytes),
               "motion_stats bwd": (lambda: FM.motion_stats_backward(gs, gst, ym, st, kz, t), zbytes + ybytes)}
        for name, (fn, nb) in ops.items():
            ms = _cuda_ms(fn)
            gbs = nb / ms / 1e6
            rows.append({"kernel": name, "shape": [frames, c, hw, hw], "ms": ms, "bytes": nb,
                         "gb_s": gbs, "vs_copy_1gib": gbs / copy_gbs})
    return {"copy_1gib_gb_s": copy_gbs, "rows": rows}


def make_step(temporal: str, *, arch: str, segments: int, size: int, batch: int, mode: str | None,
              impl: str = "auto"):
    import torch
    import torch.nn.functional as F

    from action import build_model

    torch.manual_seed(0)
    model = build_model(arch=arch, num_classes=174, num_segments=segments, temporal=temporal, dropout=0.5,
                        **impl_options(impl))
    model = model.cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # the fused kernels are custom operators: fullgraph=True holds for every variant (one graph per model)
    fwd = torch.compile(model, mode=mode, fullgraph=True) if mode else model
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, segments, 3, size, size, device="cuda", generator=g)
    x = x.view(batch * segments, 3, size, size).contiguous(memory_format=torch.channels_last).view(x.shape)
    y = torch.randint(0, 174, (batch,), device="cuda", generator=g)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(step, warmup: int, steps: int) -> float:
    import torch

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--variants", default="none,none+compile,tsm,action@torch,action@triton,action@triton+compile",
                    help="comma-separated temporal modules (none, tsm, action) with an optional '@impl' and "
                         "'+compile' (torch.compile(fullgraph=True)) or '+cudagraphs' (mode='reduce-overhead'). "
                         "ACTION's implementation (build_model(action_impl=...)): '@torch' the torch path, '@triton' "
                         "the fused Triton kernels as custom operators (the CUDA default, so plain 'action' is the "
                         "same; 'action@triton+compile' traces them inside the compiled graph). The shifts' "
                         "implementation (shift_impl): '@reference' the official formulations, '@fused' the "
                         "autograd Functions")
    ap.add_argument("--bandwidth", action="store_true",
                    help="also time each fused kernel alone at the ACTION block shapes: achieved GB/s vs copy")
    ap.add_argument("--no-check", action="store_true", help="skip the fused-vs-torch logits check")
    ap.add_argument("--profile", default=None,
                    help="also profile one step of this variant and print its top CUDA kernels")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        ap.error("needs a CUDA device (use `make bench-model` on CPU)")
    torch.backends.cudnn.benchmark = True
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        for n in names:
            parse_variant(n)
    except ValueError as e:
        ap.error(str(e))
    check, failed = {}, {}
    if not args.no_check and any(parse_variant(n)[0] == "action" for n in names):
        try:
            check = fused_check(args.arch, args.segments, args.size)
            print("fused check: " + ", ".join(f"{k} {v:.2e}" for k, v in check.items()), flush=True)
        except Exception as e:  # noqa: BLE001 - reported, the timings still run
            failed["fused_check"] = f"{type(e).__name__}: {e}"[:2000]
            print(f"fused check: FAILED ({failed['fused_check'][:300]})", flush=True)
    steps = {}
    for name in names:
        temporal, impl, mode = parse_variant(name)
        t0 = time.perf_counter()
        try:
            steps[name] = make_step(temporal, arch=args.arch, segments=args.segments, size=args.size,
                                    batch=args.batch_size, mode=mode, impl=impl)
            time_steps(steps[name], args.warmup, 1)  # warm-up (and compile) outside the timed rounds
        except Exception as e:  # noqa: BLE001 - a benchmark reports a variant that cannot run and goes on
            steps.pop(name, None)
            failed[name] = f"{type(e).__name__}: {e}"[:2000]
            print(f"{name}: FAILED ({failed[name][:300]})", flush=True)
            continue
        print(f"{name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    names = [n for n in names if n in steps]
    per_round = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            per_round[n].append(time_steps(steps[n], 2, args.steps))
    results = []
    base = min(per_round["none"]) if "none" in per_round else None
    for n in names:
        s = min(per_round[n])
        r = {"variant": n, "impl": parse_variant(n)[1], "step_ms": 1000 * s, "clips_per_s": args.batch_size / s,
             "frames_per_s": args.batch_size * args.segments / s, "rounds_step_ms": [1000 * x for x in per_round[n]]}
        if base:
            r["step_vs_none"] = s / base
        results.append(r)
        print(f"{n:>16}: {1000 * s:7.1f} ms/step  {r['clips_per_s']:7.1f} clips/s  {r['frames_per_s']:7.0f} frames/s"
              + (f"  x{r['step_vs_none']:.2f} of none" if base else ""), flush=True)
    kernels = []
    if args.profile and args.profile in steps:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            time_steps(steps[args.profile], 0, 2)
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
        print(f"== top CUDA kernels, 2 steps of {args.profile}\n{table}", flush=True)
        for e in sorted(prof.key_averages(), key=lambda e: -getattr(e, "self_device_time_total", 0))[:40]:
            kernels.append({"name": e.key, "self_cuda_ms": getattr(e, "self_device_time_total", 0) / 1000 / 2,
                            "calls_per_step": e.count / 2})
    bandwidth = {}
    if args.bandwidth:
        try:
            bandwidth = kernel_bandwidth(args.batch_size * args.segments, args.arch)
            print(f"== fused kernels alone, bf16 channels_last; copy of 1 GiB: {bandwidth['copy_1gib_gb_s']:.0f} GB/s")
            for r in bandwidth["rows"]:
                print(f"{r['kernel']:>32} {str(tuple(r['shape'])):>20}: {r['ms']:7.3f} ms {r['gb_s']:7.0f} GB/s "
                      f"({100 * r['vs_copy_1gib']:.0f} % of copy)", flush=True)
        except Exception as e:  # noqa: BLE001 - reported, the rest is kept
            failed["bandwidth"] = f"{type(e).__name__}: {e}"[:2000]
            print(f"bandwidth: FAILED ({failed['bandwidth'][:300]})", flush=True)
    out = {"config": vars(args), "results": results, "failed": failed, "fused_check": check, "profile": kernels,
           "bandwidth": bandwidth,
           "machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "python": platform.python_version(), "cpus": os.cpu_count()}}
    if args.json:
        from common.files import atomic_write_json

        atomic_write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

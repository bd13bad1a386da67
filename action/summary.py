"""Parameter and FLOP report for one clip: ``python -m action.summary --arch resnet50 --classes 174 --segments 8``.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one clip (1, T, 3, S, S) in eval
mode. That counter reports 2 FLOPs per multiply-accumulate and only counts matmul/conv-like operators; papers
in this line (TSM, ACTION-Net) quote multiply-accumulates as "FLOPs", so the report prints both — compare the
``GMACs`` column with the paper's 34.75 G (ACTION-ResNet-50, 8 frames, 224², 28.08 M parameters with 174
classes).

The count runs this project's forward. It computes the same function as the official one, but the counter
sees slightly different operators: the learnable shift is three multiply-adds here (not counted) instead of a
depthwise ``Conv1d`` (counted, ~0.09 G for R50 8f), the p3 depthwise conv is never run at full resolution,
and the p1 channel mean rides on the squeeze GEMM. Counted on the official formulation
(``tests/action_reference.py``) the same model gives 34.44 GMACs.
"""
from __future__ import annotations

import argparse
import sys

PAPER = {("resnet50", 8, 174, "action"): (28.08e6, 34.75e9)}


def count(arch: str, classes: int, segments: int, temporal: str, size: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from action.models import build_model

    model = build_model(arch=arch, num_classes=classes, num_segments=segments, temporal=temporal, dropout=0.5)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.zeros(1, segments, 3, size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    flops = counter.get_total_flops()
    return {"arch": arch, "classes": classes, "segments": segments, "temporal": temporal, "size": size,
            "params": params, "flops": flops, "macs": flops / 2}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m action.summary", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--classes", type=int, default=174)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--temporal", default="action", choices=["action", "tsm", "none"])
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    from action.errors import ModelError

    try:
        r = count(args.arch, args.classes, args.segments, args.temporal, args.size)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{r['arch']} temporal={r['temporal']} T={r['segments']} classes={r['classes']} {r['size']}x{r['size']}")
    print(f"  parameters : {r['params']:,} ({r['params'] / 1e6:.2f} M)")
    print(f"  per clip   : {r['macs'] / 1e9:.2f} GMACs (= {r['flops'] / 1e9:.2f} GFLOPs at 2 FLOPs/MAC, "
          f"torch.utils.flop_counter)")
    paper = PAPER.get((r["arch"], r["segments"], r["classes"], r["temporal"]))
    if paper and r["size"] == 224:
        print(f"  paper      : {paper[0] / 1e6:.2f} M parameters, {paper[1] / 1e9:.2f} G 'FLOPs' (MACs); "
              f"difference {100 * (r['params'] / paper[0] - 1):+.2f} % params, "
              f"{100 * (r['macs'] / paper[1] - 1):+.2f} % MACs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

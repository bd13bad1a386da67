#!/usr/bin/env python
"""How many operators one ACTION block dispatches per training step (forward + backward), per implementation:
in eager mode on a GPU each is at least one kernel launch with its CPU cost, so this count is what the fused
path's eager step pays on the host (the GPU profile in docs/action-kernels.md: the eager ACTION step was bound by
the host's launches). Counted on CPU with a ``TorchDispatchMode`` (views and metadata-only ops left out), the
Triton path under the interpreter; the count does not depend on the tensor sizes.

    python bench/action_ops.py                       # this tree -> bench/results/action_ops.json + .png
    python bench/action_ops.py --tree ../old-checkout # also count an older checkout of the project, side by side
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "action_ops.json"
# ops that only make views or read metadata: no kernel
_VIEWS = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze",
          "select", "slice", "as_strided", "detach", "alias", "unfold", "split", "diagonal", "_reshape_alias",
          "split_with_sizes", "lift_fresh", "empty", "empty_like", "new_empty", "empty_strided", "is_same_size"}


def count(impl: str, shift_impl: str) -> dict:
    """Operators dispatched by one ACTION block (C=64, 4 frames of 6x6, channels_last, train) in a forward and a
    backward, after a warm-up step."""
    import torch
    from torch import nn
    from torch.utils._python_dispatch import TorchDispatchMode

    import action.temporal as AT

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name not in _VIEWS:
                self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    mod = AT.Action(nn.Conv2d(64, 16, 3, padding=1, bias=False), n_segment=4, impl=impl)
    mod.shift_impl = shift_impl
    x = torch.randn(8, 64, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    mod(x).sum().backward()
    with Count() as fwd:
        out = mod(x)
    g = torch.ones_like(out)
    with Count() as bwd:
        out.backward(g)
    return {"forward": sum(fwd.ops.values()), "backward": sum(bwd.ops.values()),
            "forward_ops": dict(fwd.ops.most_common()), "backward_ops": dict(bwd.ops.most_common())}


def _commit(tree: Path) -> str:
    res = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def _count_in(tree: Path, impl: str, shift_impl: str) -> dict:
    """``count`` run in a fresh interpreter against ``tree``'s code (this file's function, that tree's ACTION)."""
    env = dict(os.environ, PYTHONPATH=str(tree), TRITON_INTERPRET="1")
    code = (f"import json, sys, importlib.util as u; s = u.spec_from_file_location('ao', {str(Path(__file__))!r}); "
            f"m = u.module_from_spec(s); s.loader.exec_module(m); sys.path.insert(0, {str(tree)!r}); "
            f"print(json.dumps(m.count({impl!r}, {shift_impl!r})))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=600)
    if res.returncode:
        raise SystemExit(f"counting in {tree} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], help="another checkout of this project to count too")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    rows = []
    for tree in [ROOT, *map(Path, args.tree)]:
        label = _commit(tree) + (" (this tree)" if tree == ROOT else "")
        # the GPU's paths: the Triton kernels, and the torch path with its GPU shift (the autograd Function)
        for impl, shift in (("triton", "auto"), ("torch", "fused")):
            c = _count_in(tree.resolve(), impl, shift)
            rows.append({"tree": label, "impl": impl, **c})
            print(f"{label:>24} {impl:>7}: forward {c['forward']:3d}, backward {c['backward']:3d}, "
                  f"total {c['forward'] + c['backward']:3d}")
    result = {"what": "operators dispatched per ACTION block per training step (eager: kernel launches)",
              "rows": rows}
    from common.files import atomic_write_json, save_figure

    atomic_write_json(Path(args.out), result)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [f"{r['impl']}\n{r['tree']}" for r in rows]
    ax.barh(names, [r["forward"] for r in rows], label="forward")
    ax.barh(names, [r["backward"] for r in rows], left=[r["forward"] for r in rows], label="backward")
    ax.set_xlabel("operators dispatched per ACTION block per step")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`train.py export`: a checkpoint's model as a ``torch.export`` program (``pt2``) or an ONNX file, checked.

    python train.py export --checkpoint runs/jester/best.pt --format onnx|pt2 --out model.onnx

The model is exported through its torch path (``action_impl="torch"``: no Triton kernel) by ``torch.export``
with a dynamic batch axis. Input: float32 ``(B, T, 3, size, size)``, already normalised
(:func:`pipelines.plan.presets.normalize` with the dataset preset's mean/std); output: logits ``(B, classes)``.
``pt2`` saves the ExportedProgram (:func:`torch.export.save`); ``onnx`` goes through the dynamo-based exporter
(``torch.onnx.export(..., dynamo=True)``; the TorchScript exporter and ``torch.jit.trace`` fail on this model).
``OUT.json`` beside it records what a runtime needs: class names, T, size, mean/std, the dataset's eval
pre-resize, arch and temporal module.

Then the exported file is loaded (``torch.export.load`` / ONNX Runtime) and run on a random clip of another
batch size than the one traced; the command prints ``{"max_rel_diff": ...}`` -- the largest absolute difference
to the PyTorch logits divided by their largest magnitude -- and exits 4 when it is above :data:`TOLERANCE`.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from trainer.errors import TrainingError

log = logging.getLogger("export")

TOLERANCE = 1e-4
FORMATS = ("onnx", "pt2")


def _torch_path(model):
    """Context: ACTION's torch path on ``model`` (export does not trace the Triton kernels' CPU interpreter);
    each block's implementation option is restored afterwards."""
    import contextlib

    from action.temporal import Action

    @contextlib.contextmanager
    def ctx():
        blocks = [m for m in model.modules() if isinstance(m, Action)]
        old = [m.impl for m in blocks]
        for m in blocks:
            m.impl = "torch"
        try:
            yield
        finally:
            for m, impl in zip(blocks, old):
                m.impl = impl
    return ctx()


def export_model(model, example, fmt: str, out: str) -> None:
    """Export ``model`` (eval mode, CPU) traced on ``example`` with a dynamic batch axis to ``out``."""
    import torch

    from common.files import atomic_path

    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines are pass-by-pass chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {"x": {0: batch}}
    with _torch_path(model), torch.no_grad():
        if fmt == "pt2":
            ep = torch.export.export(model, (example,), dynamic_shapes=shapes)
            with atomic_path(out) as tmp:
                torch.export.save(ep, tmp)
            return
        prog = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=shapes, input_names=["x"],
                                 output_names=["logits"], verbose=False)
        with atomic_path(out) as tmp:
            prog.save(str(tmp))


def run_exported(fmt: str, path: str, x):
    """Logits of the exported file on ``x`` (float32 torch tensor), as a torch tensor."""
    import torch

    if fmt == "pt2":
        with torch.inference_mode():
            return torch.export.load(path).module()(x)
    try:
        import onnxruntime as ort
    except ImportError:
        raise TrainingError("checking an ONNX export needs onnxruntime: pip install '.[export]' "
                            "(or make setup-export)") from None
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def max_rel_diff(ref, got) -> float:
    """max |ref - got| / max |ref| (the scale of the logits; 0 for identical outputs)."""
    scale = float(ref.abs().max())
    return float((ref.float() - got.float()).abs().max()) / (scale if scale > 0 else 1.0)


def run_export(checkpoint: str, fmt: str, out: str, *, batch: int = 2, check_batch: int = 3, seed: int = 0) -> dict:
    """Export ``checkpoint`` to ``out`` and check it (see the module docstring); the JSON-able result."""
    import torch

    from trainer.data import input_spec
    from trainer.predict import load_model

    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401 - the dynamo exporter's dependency
        except ImportError:
            raise TrainingError("--format onnx needs onnx and onnxscript: pip install '.[export]' "
                                "(or make setup-export)") from None
    loaded = load_model(checkpoint, torch.device("cpu"))
    cfg, model = loaded.cfg, loaded.model
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.num_segments, 3, cfg.size, cfg.size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_model(model, torch.randn((batch, *shape), generator=g), fmt, out)
    seconds = time.perf_counter() - t0
    x = torch.randn((check_batch, *shape), generator=g)
    with _torch_path(model), torch.inference_mode():
        ref = model(x)
    got = run_exported(fmt, out, x)
    diff = max_rel_diff(ref, got)
    meta = {"format": fmt, "checkpoint": str(checkpoint), "classes": loaded.classes, "dataset": cfg.dataset,
            "arch": cfg.arch, "temporal": cfg.temporal, "num_segments": cfg.num_segments, "size": cfg.size,
            "input": "float32 (batch, num_segments, 3, size, size), normalised", **input_spec(cfg)}
    from common.files import atomic_write_json

    atomic_write_json(Path(f"{out}.json"), meta)
    return {"kind": "export", "format": fmt, "out": str(out), "seconds": round(seconds, 2),
            "check_batch": check_batch, "max_abs_logit": float(ref.abs().max()), "max_rel_diff": diff,
            "tolerance": TOLERANCE, "ok": diff <= TOLERANCE}


@click.command("export", context_settings={"max_content_width": 110})
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="RUN/best.pt or RUN/last.pt")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="onnx or pt2 (torch.export)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the exported file")
def export_command(checkpoint, fmt, out):
    """Export a checkpoint's model (dynamic batch axis) and check it against PyTorch (exit 4 above 1e-4)."""
    try:
        res = run_export(checkpoint, fmt, out)
    except (TrainingError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3 if isinstance(e, TrainingError) else 1)
    click.echo(json.dumps(res))
    if not res["ok"]:
        click.echo(f"error: {out}: the exported model differs from PyTorch by {res['max_rel_diff']:.2e} of the "
                   f"logits' scale (> {TOLERANCE:g})", err=True)
        sys.exit(4)

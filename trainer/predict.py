"""`train.py predict`: a trained checkpoint on videos, frame folders, shard splits and live streams.

    python train.py predict --checkpoint runs/jester/best.pt clip.mp4 frames/ data/shards/jester:val \\
        [--out preds.jsonl] [--window-s 2] [--stride-s 0.5] [--topk 3] [--fps F] [--device cpu|cuda] \\
        [--online] [--video-out annotated.mp4] [--plot timeline.png] [--onnx model.onnx] [--strict]

The checkpoint (``RUN/best.pt`` / ``RUN/last.pt``) holds the run's config and the dataset's class names: the
model is rebuilt from them, and every window is sampled as that model was tested (its T segments, its preset's
val transform, :func:`pipelines.plan.presets.normalize`). Output (JSON lines; stdout unless ``--out``): one
``{"kind": "window", "source", "start_s", "end_s", "top": [{"label", "index", "prob"}, ...]}`` per window
(online also ``"latency_ms"``: from the arrival of the frame that completed the window to its prediction), then
one ``{"kind": "segments", "source", "segments": [...]}`` per input (:func:`trainer.predict_out.segments`).

Offline, windows are predicted in batches of ``--batch-size``. Online (live sources), each window is predicted
as soon as it completes; when the model falls behind, only the newest completed window is predicted and the
older ones are counted as skipped (latency stays bounded instead of growing).
"""
from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click

from trainer.errors import TrainingError

log = logging.getLogger("predict")


class PredictError(TrainingError):
    """A prediction cannot start (checkpoint, model file, options): one line naming the file and the fix."""


@dataclass
class Loaded:
    """A checkpoint made ready for inference: the eval-mode model, its run config and the class names."""

    model: object
    cfg: object
    classes: list
    path: str


def read_checkpoint(path: str) -> tuple[object, list, dict]:
    """``(Config, class names, model state)`` of a train.py checkpoint; PredictError (one line) otherwise."""
    import pickle

    import torch

    from trainer.checkpoint import CKPT_FORMAT
    from trainer.config import Config, coerce

    p = Path(path)
    if not p.is_file():
        raise PredictError(f"{p}: no such checkpoint file (train.py writes RUN/best.pt and RUN/last.pt)")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PredictError(f"{p}: refusing to load: not a plain weights checkpoint ({str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PredictError(f"{p}: not a readable checkpoint ({first})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT or not isinstance(ck.get("config"), dict):
        raise PredictError(f"{p}: not a train.py run checkpoint (no run config and class names); predict needs "
                           f"RUN/best.pt or RUN/last.pt of a train.py run -- for official weights, train or "
                           f"evaluate with --init-from first")
    classes = [str(c) for c in ck.get("classes") or []]
    if not classes:
        raise PredictError(f"{p}: the checkpoint holds no class names (a run trained without a shard manifest, "
                           f"e.g. --synthetic); predict needs a run trained on converted shards")
    known = {f: coerce(f, v) for f, v in ck["config"].items() if f in Config.__dataclass_fields__}
    return Config(**known), classes, ck["model"]


def load_model(path: str, device) -> Loaded:
    """The checkpoint's model in eval mode on ``device`` (its weights must fit its own config exactly)."""
    from action import build_model
    from action.checkpoint import extract_state_dict
    from action.errors import CheckpointError, ModelError

    cfg, classes, state = read_checkpoint(path)
    try:
        model = build_model(arch=cfg.arch, num_classes=len(classes), num_segments=cfg.num_segments,
                            temporal=cfg.temporal, shift_div=cfg.shift_div, dropout=cfg.dropout)
        sd = extract_state_dict({"model": state}, path)
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except (CheckpointError, ModelError) as e:
        raise PredictError(str(e).splitlines()[0]) from None
    except RuntimeError as e:  # mis-shaped tensors
        detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1][:160]
        raise PredictError(f"{path}: weights of another model: they do not fit the {cfg.arch}/{cfg.temporal} "
                           f"model of its own config with {len(classes)} classes ({detail})") from None
    if missing or unexpected:
        raise PredictError(f"{path}: weights of another model: {len(missing)} parameters of the {cfg.arch}/"
                           f"{cfg.temporal} model are missing, {len(unexpected)} unknown (first: "
                           f"{(missing or unexpected)[0]})")
    return Loaded(model.to(device).eval(), cfg, classes, str(path))


class TorchRunner:
    """uint8 clips ``(B, T, 3, H, W)`` -> class probabilities ``(B, C)`` numpy, in PyTorch."""

    def __init__(self, loaded: Loaded, device):
        from trainer.data import ModelInput

        self.model, self.to_input = loaded.model, ModelInput(loaded.cfg.dataset, device)

    def __call__(self, clips):
        import torch

        with torch.inference_mode():
            return torch.softmax(self.model(self.to_input(clips)).float(), dim=1).cpu().numpy()


class OnnxRunner:
    """The same through ONNX Runtime on an exported model (``train.py export --format onnx``)."""

    def __init__(self, loaded: Loaded, path: str):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PredictError("--onnx needs onnxruntime: pip install '.[export]' (or make setup-export)") from None
        from trainer.data import ModelInput

        try:
            self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise PredictError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
        self.name = self.sess.get_inputs()[0].name
        self.to_input = ModelInput(loaded.cfg.dataset, "cpu")
        n = self.sess.get_outputs()[0].shape[-1]
        if isinstance(n, int) and n != len(loaded.classes):
            raise PredictError(f"{path}: the ONNX model has {n} classes, the checkpoint {len(loaded.classes)}; "
                               f"export this checkpoint again")

    def __call__(self, clips):
        import numpy as np

        logits = self.sess.run(None, {self.name: self.to_input(clips).numpy()})[0].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def window_record(source: str, win, probs, classes: list, topk: int) -> dict:
    import numpy as np

    order = np.argsort(-probs, kind="stable")[:topk]
    return {"kind": "window", "source": source, "start_s": round(win.start_s, 6), "end_s": round(win.end_s, 6),
            "top": [{"label": classes[i], "index": int(i), "prob": round(float(probs[i]), 6)} for i in order]}


def _live(frames):
    """``frames`` read on a thread as they arrive: yields lists of the frames available now (at least one)."""
    q: queue.Queue = queue.Queue()
    done = object()

    def pump():
        try:
            for f in frames:
                q.put(f)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=pump, daemon=True, name="live-source").start()
    while True:
        got = [q.get()]
        while not q.empty():
            got.append(q.get_nowait())
        items = [g for g in got if g is not done and not isinstance(g, BaseException)]
        if items:
            yield items
        for g in got:
            if isinstance(g, BaseException):
                raise g
            if g is done:
                return


@dataclass
class Options:
    window_s: float = 2.0
    stride_s: float = 0.5
    topk: int = 3
    batch_size: int = 8


def predict_source(src, sampler, runner, classes: list, opts: Options, emit, annotate=None) -> dict:
    """Predict every window of ``src``: ``emit(record)`` per window in time order; returns counts and the
    records (``{"records", "skipped", "latency_ms"}``)."""
    from trainer.data import windows

    win, pending, records, lat, skipped = windows(opts.window_s, opts.stride_s), [], [], [], 0
    topk = min(opts.topk, len(classes))

    def flush():
        if not pending:
            return
        import torch

        probs = runner(torch.stack([c for _, c in pending]))
        now = time.perf_counter()
        for (w, _), p in zip(pending, probs):
            rec = window_record(src.name, w, p, classes, topk)
            if src.live and w.arrival is not None:
                rec["latency_ms"] = round(1000 * (now - w.arrival), 2)
                lat.append(rec["latency_ms"])
            records.append(rec)
            emit(rec)
            if annotate is not None:
                annotate.prediction(rec)
        pending.clear()

    def add(ws, limit):
        for w in ws:
            if w.frames:
                pending.append((w, sampler(w)))
                if len(pending) >= limit:
                    flush()

    if src.live:
        for frames in _live(src.frames()):
            done = [w for f in frames for w in win.push(f)]
            if annotate is not None:
                for f in frames:
                    annotate.frame(f)
            skipped += max(0, len(done) - 1)  # behind: only the newest completed window is worth predicting
            add(done[-1:], 1)
    else:
        for f in src.frames():
            if annotate is not None:
                annotate.frame(f)
            add(win.push(f), opts.batch_size)
    add(win.finish(src.end_s), opts.batch_size)
    flush()
    if annotate is not None:
        annotate.close()
    return {"records": records, "skipped": skipped, "latency_ms": lat}


def run_predict(checkpoint: str, inputs: tuple, *, out: str | None, opts: Options, fps: float | None, device: str,
                online: bool, video_out: str | None, plot: str | None, onnx: str | None, strict: bool,
                reconnect: int = 5) -> int:
    """The predict command: returns the exit status (0; 1 when an input could not be read or, with
    ``strict``, stopped early)."""
    import torch

    from trainer import data, predict_out

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    loaded = load_model(checkpoint, dev)
    runner = OnnxRunner(loaded, onnx) if onnx else TorchRunner(loaded, dev)
    cfg = loaded.cfg
    if (video_out or plot) and len(inputs) > 1:
        raise PredictError("--video-out and --plot draw one input: give a single INPUT")
    fh = open(out, "w", encoding="utf-8") if out else sys.stdout

    def emit(rec):
        fh.write(json.dumps(rec) + "\n")
        fh.flush()

    status, DataError = 0, data.data_error()
    try:
        for spec in inputs:
            try:
                sources = data.prediction_sources(spec, fps=fps, online=online, reconnect=reconnect)
            except DataError as e:
                click.echo(f"error: {e}", err=True)
                status = 1
                continue
            for src in sources:
                sampler = data.window_sampler(cfg)
                ann = predict_out.Annotator(video_out) if video_out else None
                try:
                    res = predict_source(src, sampler, runner, loaded.classes, opts, emit, ann)
                except DataError as e:
                    click.echo(f"error: {e}", err=True)
                    status = 1
                    continue
                rec = {"kind": "segments", "source": src.name, "segments": predict_out.segments(res["records"])}
                if src.live:
                    rec["skipped_windows"] = res["skipped"]
                emit(rec)
                if src.stopped:
                    click.echo(f"warning: {src.stopped}", err=True)
                    status = 1 if strict or src.live else status
                if res["skipped"]:
                    log.info("%s: %d windows skipped (the model was slower than the stride)", src.name, res["skipped"])
                if plot:
                    predict_out.plot_timeline(res["records"], plot, title=f"{src.name} ({Path(checkpoint).name})")
    finally:
        if out:
            fh.close()
    return status


@click.command("predict", context_settings={"max_content_width": 110})
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="RUN/best.pt or RUN/last.pt")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="JSON lines file (default stdout)")
@click.option("--window-s", type=click.FloatRange(0, min_open=True), default=2.0, show_default=True,
              help="window length in seconds")
@click.option("--stride-s", type=click.FloatRange(0, min_open=True), default=0.5, show_default=True,
              help="seconds between window starts")
@click.option("--topk", type=click.IntRange(1), default=3, show_default=True, help="classes listed per window")
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None,
              help="frame rate of frame folders and shard clips (default 12)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--online", is_flag=True, help="read URLs, FIFOs and - as live streams (webcams, rtsp:// always are)")
@click.option("--video-out", type=click.Path(dir_okay=False), default=None, help="the input with the top-1 drawn")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="timeline chart of the top classes")
@click.option("--onnx", type=click.Path(dir_okay=False), default=None,
              help="run this ONNX export of the checkpoint in ONNX Runtime instead of PyTorch")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="windows per model call")
@click.option("--reconnect", type=click.IntRange(0), default=5, show_default=True,
              help="live sources: reconnect attempts in a row before giving up")
@click.option("--strict", is_flag=True, help="exit 1 when an input stops decoding early")
def predict_command(checkpoint, inputs, out, window_s, stride_s, topk, fps, device, online, video_out, plot, onnx,
                    batch_size, reconnect, strict):
    """Predict the gestures in videos, frame folders, DATA:split shard clips or live streams (JSON lines)."""
    try:
        status = run_predict(checkpoint, inputs, out=out, opts=Options(window_s, stride_s, topk, batch_size),
                             fps=fps, device=device, online=online, video_out=video_out, plot=plot, onnx=onnx,
                             strict=strict, reconnect=reconnect)
    except (TrainingError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3 if isinstance(e, TrainingError) else 1)
    sys.exit(status)

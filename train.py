"""ACTION-Net trainer: the click CLI over :mod:`trainer` (the package beside this file holds the parts).

Read top to bottom: config -> distributed init -> data -> model -> optimiser -> (resume) -> epochs of train steps
+ exact evaluation -> checkpoints and logs. Commands::

    python train.py train --dataset jester --data data/shards/jester --run-dir runs/jester-r50
    torchrun --nproc_per_node=4 train.py train --dataset jester --data ...     # DDP (make train GPUS=0,1,2,3)
    python train.py eval  --run-dir runs/jester-r50 [--checkpoint best.pt]         # single-clip val top-1/top-5
    python train.py test  --run-dir runs/jester-r50 --test-crops 3 --test-clips 10           # multi-clip x multi-crop
    python train.py validate --dataset jester --data ... --nproc 4             # check a config, start nothing

Every config field is a command-line option (``--lr-steps 5,10,15``, ``--batch-size 64``, ...); per-dataset
defaults come from ``configs/<dataset>.toml``. The final config is validated and frozen before any work and saved
as ``RUN/config.json`` (URIs without credentials). A run owns its RUN (a lock; a fresh run into a used RUN stops:
``--resume`` or ``--overwrite``); SIGTERM/SIGINT/SIGUSR1 write a checkpoint at the current step and exit 75
(docs/runs.md).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from common.files import atomic_write_json
from pipelines.shards.storage import redact_logs, scrub, shown
from trainer import data, predictions, rundir
from trainer.checkpoint import Checkpointer, check_in_run
from trainer.config import Config, config_options, make_config, merge_saved
from trainer.dist import all_gather_objects, any_rank, distributed, elastic_seed, env_rank
from trainer.errors import TrainingError
from trainer.export import export_command
from trainer.loop import Parts, Progress, evaluate, measure_synthetic_rate, train_one_epoch
from trainer.metrics import MetricsLog
from trainer.model import (amp_dtype, build_model_for, build_optimizer, build_scheduler, install_warmup,
                           resume_schedule)
from trainer.preempt import PREEMPTED, Preempted, StopRequest
from trainer.predict import predict_command

log = logging.getLogger("train")


@dataclasses.dataclass
class Run:
    """Everything one training run holds: the config, this rank, the model and its optimiser state, progress."""

    cfg: Config
    info: Any
    dir: Path
    classes: list
    parts: Parts
    scheduler: Any
    ckpt: Checkpointer
    prog: Progress
    metrics: MetricsLog | None = None


def stored_config(cfg: Config) -> dict:
    """``cfg`` as a run stores it (``config.json``, checkpoints, ``validate``): every URI without its credentials
    (:func:`pipelines.shards.storage.shown`); the process that was given them keeps using them for I/O only."""
    return {k: shown(v) if isinstance(v, str) and "://" in v else v for k, v in cfg.to_json().items()}


def run_training(cfg: Config, resume: bool, overwrite: bool = False) -> dict:
    """Train ``cfg`` (``resume``: from RUN/last.pt; ``overwrite``: move an earlier run in RUN aside)."""
    with distributed(cfg.device, cfg.dist_timeout) as info:
        if cfg.batch_size % info.world:
            raise TrainingError(f"--batch-size {cfg.batch_size} is global and must divide evenly over {info.world} ranks")
        lock = _claim(cfg, info, resume, overwrite)
        try:
            return _train(cfg, resume, info)
        finally:
            if lock is not None:
                lock.release()


def _claim(cfg: Config, info, resume: bool, overwrite: bool):
    """Rank 0 locks RUN and checks it (trainer/rundir.py); every rank gets its answer, so all stop together."""
    lock, problem = None, ""
    if info.main:
        try:
            lock = rundir.claim(Path(cfg.run_dir), resume=resume, overwrite=overwrite)
        except TrainingError as e:
            problem = str(e)
    problem = all_gather_objects(problem, info.world)[0]
    if problem:
        raise TrainingError(problem)
    return lock


def _train(cfg: Config, resume: bool, info) -> dict:
    """The story of a run: set up (or resume), measure the ceiling, train the epochs, summarise."""
    r = _setup(cfg, info)
    rng = _resume(r) if resume else _fresh_seeds(r)
    r.metrics = MetricsLog(r.dir, info.main, resume_step=r.prog.global_step if resume else None)
    ceiling = _ceiling(r)
    train_loader, val_loader = _loaders(r)
    recorder = data.ClipRecorder(r.dir, info, train_loader, resumed_at=r.prog.global_step) if cfg.record_clips else None
    _restore_rng(rng, info)
    try:
        with StopRequest() as stop:
            last_eval = _epochs(r, train_loader, val_loader, recorder, stop)
        return _summary(r, last_eval, ceiling)
    finally:
        if recorder is not None:
            recorder.close()
        r.metrics.close()


def _setup(cfg: Config, info) -> Run:
    """config.json (URIs without credentials), the model (DDP-wrapped, maybe compiled), optimiser, schedule."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    run = Path(cfg.run_dir)
    if info.main:
        atomic_write_json(run / "config.json", stored_config(cfg))
    classes = list(data.manifest(cfg.data)["classes"]) if cfg.data else []
    core = build_model_for(cfg, cfg.num_classes or len(classes), info)
    optimizer = build_optimizer(cfg, core)
    scaler = torch.amp.GradScaler(enabled=amp_dtype(cfg, info) == torch.float16)
    model = core
    if info.world > 1:
        model = DDP(core, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    parts = Parts(torch.compile(model) if cfg.compile else model, core, optimizer, scaler,
                  data.ModelInput(cfg.dataset, info.device))
    return Run(cfg, info, run, classes, parts, build_scheduler(cfg, optimizer), Checkpointer(run, info.main),
               Progress())


def _num_classes(r: Run) -> int:
    return r.cfg.num_classes or len(r.classes)


def _fresh_seeds(r: Run) -> None:
    import torch
    torch.manual_seed(r.cfg.seed * 1000 + r.info.rank)  # per-rank dropout streams


def _resume(r: Run):
    """Load RUN/last.pt into the run; the RNG states to restore once the loaders exist (None when elastic)."""
    import torch

    cfg, info, p = r.cfg, r.info, r.parts
    ck = r.ckpt.load_last()
    p.core.load_state_dict(ck["model"])
    p.optimizer.load_state_dict(ck["optimizer"])
    resume_schedule(cfg, p.optimizer, r.scheduler, ck.get("scheduler"), ck["epoch"])
    p.scaler.load_state_dict(ck["scaler"])
    r.prog = Progress(ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck["best_top1"])
    log.info("resumed %s at epoch %d step %d (global step %d)", r.ckpt.last, r.prog.epoch, r.prog.step_in_epoch,
             r.prog.global_step)
    if ck["world"] == info.world:  # the same per-rank dropout streams: an exact continuation
        return ck["rng_torch"][info.rank], (ck.get("rng_cuda") or [None] * info.world)[info.rank]
    # elastic: the same clips per global step, fresh dropout streams (docs/training.md "Elastic resume")
    torch.manual_seed(elastic_seed(cfg.seed, r.prog.global_step, info.rank))
    log.info("%s was written by %d ranks, resuming on %d: dropout RNG re-seeded from (seed %d, step %d, rank)",
             r.ckpt.last, ck["world"], info.world, cfg.seed, r.prog.global_step)
    return None


def _restore_rng(rng, info) -> None:
    import torch

    if rng is not None:
        torch.set_rng_state(rng[0])
        if rng[1] is not None and info.device.type == "cuda":
            torch.cuda.set_rng_state(rng[1], info.device)


def _ceiling(r: Run) -> float:
    """Steps/s of the same model on synthetic on-device batches (the model-bound ceiling), or NaN."""
    cfg = r.cfg
    if not cfg.ceiling_steps or cfg.synthetic:
        return float("nan")
    synth = data.SyntheticLoader(cfg.batch_size // r.info.world, cfg, _num_classes(r), r.info.device,
                                 cfg.ceiling_steps + 1)
    return measure_synthetic_rate(r.parts, synth, cfg, r.info, cfg.ceiling_steps)


def _loaders(r: Run):
    """The train and val loaders: built once, pointed at each epoch (and at the resume step) with set_epoch."""
    cfg, info = r.cfg, r.info
    if cfg.synthetic:
        train = data.SyntheticLoader(cfg.batch_size // info.world, cfg, _num_classes(r), info.device,
                                     cfg.max_steps_per_epoch or 50)
        return train, train if cfg.eval_every else None
    train = data.build(cfg, info, "train", "train", epoch=r.prog.epoch)
    return train, data.build(cfg, info, "val", "val", epoch=r.prog.epoch) if cfg.eval_every else None


def _save(r: Run, best: bool = False) -> None:
    """RUN/last.pt at the current step (a collective: every rank calls it, rank 0 writes)."""
    import torch

    info, p, prog = r.info, r.parts, r.prog
    states = all_gather_objects(torch.get_rng_state(), info.world)
    cuda = all_gather_objects(torch.cuda.get_rng_state(info.device), info.world) if info.device.type == "cuda" else None
    r.ckpt.save({"model": p.core.state_dict(), "optimizer": p.optimizer.state_dict(),
                 "scheduler": r.scheduler.state_dict(), "scaler": p.scaler.state_dict(), "epoch": prog.epoch,
                 "step_in_epoch": prog.step_in_epoch, "global_step": prog.global_step, "best_top1": prog.best,
                 "world": info.world, "rng_torch": states, "rng_cuda": cuda, "config": stored_config(r.cfg),
                 "classes": r.classes}, best=best)


def _preempted(r: Run, stop: StopRequest) -> Preempted:
    """Write the stop checkpoint at the agreed step; the error that ends the command with status PREEMPTED."""
    _save(r)
    name = "a signal on another rank" if stop.signum is None else signal.Signals(stop.signum).name
    msg = (f"preempted ({name}) at global step {r.prog.global_step}: {r.ckpt.last} written; run the same command "
           f"with --resume to continue (exit status {PREEMPTED})")
    log.warning(msg)
    return Preempted(msg)


def _epochs(r: Run, train_loader, val_loader, recorder, stop: StopRequest) -> dict:
    """Train from ``r.prog`` to ``cfg.epochs``: each epoch's steps, its evaluation, its record and checkpoint."""
    cfg, info, prog = r.cfg, r.info, r.prog
    install_warmup(r.parts.optimizer, cfg, len(train_loader) if not cfg.max_steps_per_epoch
                   else min(len(train_loader), cfg.max_steps_per_epoch))
    last_eval: dict = {}
    for epoch in range(prog.epoch, cfg.epochs):
        prog.epoch = epoch
        steps = len(train_loader) if not cfg.max_steps_per_epoch else min(len(train_loader), cfg.max_steps_per_epoch)
        if steps == 0:
            raise TrainingError(f"{stored_config(cfg)['data']}: the train split gives no full batch of "
                                f"{cfg.batch_size // info.world} per rank; lower --batch-size")
        train_loader.set_epoch(epoch, start=prog.step_in_epoch)  # a resumed epoch: batches k.. only, none decoded before
        rec = train_one_epoch(r.parts, train_loader, cfg, info, prog, steps=steps, metrics=r.metrics,
                              save=lambda: _save(r), recorder=recorder, where=str(r.ckpt.last), stop=stop)
        if rec is None:
            raise _preempted(r, stop)
        r.scheduler.step()
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            val_loader.set_epoch(epoch)
            last_eval = evaluate(r.parts.core, val_loader, cfg, info, r.parts.to_input)
            rec.update(val_top1=last_eval["top1"], val_top5=last_eval["top5"], val_loss=last_eval["loss"],
                       val_clips=last_eval["clips"])
        r.metrics.write(rec, prog.global_step)
        improved = last_eval.get("top1", -1.0) > prog.best
        prog.best = max(prog.best, last_eval.get("top1", -1.0))
        prog.epoch, prog.step_in_epoch = epoch + 1, 0
        _save(r, best=improved)
        val = f"{rec['val_top1']:.2f}" if "val_top1" in rec else "not evaluated"
        log.info("epoch %d/%d: loss %.4f, val top-1 %s, %.1f clips/s, data-wait %.1f%%, loader CPU %.2f cores "
                 "(%.2f per 1,000 clips/s)", epoch + 1, cfg.epochs, rec["train_loss"], val, rec["clips_per_s"],
                 100 * rec["data_wait"], rec["loader_cores"], rec["loader_cores_per_1k_clips_s"])
        if epoch + 1 < cfg.epochs and any_rank(stop.requested, info.world, info.device):
            raise _preempted(r, stop)  # asked during the epoch's last step or its evaluation
    return last_eval


def _summary(r: Run, last_eval: dict, ceiling: float) -> dict:
    """The run's summary record (also the command's JSON output) and its last log line."""
    prog, cfg = r.prog, r.cfg
    real = (sum(prog.rates) / len(prog.rates)) / cfg.batch_size if prog.rates else float("nan")
    frac = real / ceiling if ceiling == ceiling and ceiling > 0 else None
    summary = {"kind": "summary", "best_top1": prog.best, "steps_per_s": real, "synthetic_steps_per_s": ceiling,
               "fraction_of_synthetic": frac, "last_eval": last_eval, "run": str(r.dir)}
    r.metrics.write(summary, prog.global_step)
    log.info("done: best val top-1 %s; %.2f steps/s%s", f"{prog.best:.2f}" if prog.best >= 0 else "n/a (no eval)",
             real, f" = {frac:.0%} of the synthetic-data ceiling ({ceiling:.2f} steps/s)" if frac
             else " (synthetic-data ceiling not measured: --ceiling-steps 0)")
    return summary


def run_eval(cfg: Config, checkpoint: Path, mode: str, split: str = "val") -> dict:
    from action import load_checkpoint

    with distributed(cfg.device, cfg.dist_timeout) as info:
        num_classes = cfg.num_classes or len(data.manifest(cfg.data)["classes"])
        model = build_model_for(dataclasses.replace(cfg, init_from=""), num_classes, info)
        load_checkpoint(model, str(checkpoint))
        extra = {}
        if mode == "test":
            extra = {"test_clips": cfg.test_clips, "test_crops": cfg.test_crops, "test_sampling": cfg.test_sampling}
        loader = data.build(cfg, info, split, mode, **extra)
        res = evaluate(model, loader, cfg, info, data.ModelInput(cfg.dataset, info.device), per_clip=True)
        res.update(kind=mode, split=split, checkpoint=str(checkpoint))
        rows, scores, score = res.pop("rows"), res.pop("scores"), res.pop("score")
        if info.main:
            meta = loader.shards.metadata()  # the clip ids and labels of the split's rows
            res["predictions"] = predictions.write(
                cfg.run_dir, f"predictions-{split}" + ("" if mode == "test" else "-eval"), split=split,
                dataset=cfg.dataset, classes=list(loader.shards.classes), keys=[meta["key"][r] for r in rows.tolist()],
                labels=meta["label"][rows.numpy()], scores=scores, score=score, checkpoint=str(checkpoint))
        if not res["labelled"]:  # hidden labels (Jester / SSv2 test): predictions only, no accuracy
            for k in ("top1", "top5", "loss", "per_class"):
                res.pop(k)
        if info.main:
            MetricsLog(Path(cfg.run_dir), True).write(res, 0)
        return res


# ----------------------------------------------------------------------------------------------------------- CLI
def _report(fn, *args):
    """``fn(*args)``, its JSON result printed by rank 0; a known error is one line (exit 3 or 1), no traceback;
    a preempted run exits PREEMPTED (75). Every line passes through the URI redaction (no credentials)."""
    try:
        res = fn(*args)
    except Preempted:
        sys.exit(PREEMPTED)  # its line was logged
    except Exception as e:  # TrainingError, OSError, and DataError / CheckpointError from the libraries
        ours = isinstance(e, (TrainingError, OSError)) or (
            type(e).__name__.endswith("Error") and type(e).__module__.split(".")[0] in ("pipelines", "action"))
        if not ours:  # a bug: its traceback, redacted
            click.echo(scrub("".join(traceback.format_exception(e))), err=True)
            sys.exit(1)
        click.echo(scrub(f"error (rank {env_rank()}): {e}"), err=True)
        sys.exit(3 if isinstance(e, TrainingError) else 1)
    if env_rank() == 0:
        click.echo(scrub(json.dumps(res)))


def _saved_with(overrides: dict, *, resume: bool) -> dict:
    """:func:`merge_saved` for a run whose config.json stores ``--data`` without credentials: the URI given now
    (credentials and all) is compared in its stored form and used as given."""
    given = overrides.get("data")
    merged = merge_saved({**overrides, "data": shown(given) if given else None}, resume=resume)
    if given:
        merged["data"] = given
    return merged


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """Train and evaluate ACTION-ResNet on Arrow shards (see README.md)."""
    rank = env_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    redact_logs()


@cli.command()
@config_options
@click.option("--resume", is_flag=True, help="continue RUN/last.pt (exactly on the same number of ranks; on another "
                                             "number with the same clips per global step)")
@click.option("--overwrite", is_flag=True, help="start over in a --run-dir that holds an earlier run (moved aside to "
                                                "RUN.replaced-<time>, not deleted)")
def train(config_file, resume, overwrite, **overrides):
    """Train (single process, or one process per GPU under torchrun). SIGTERM/SIGINT/SIGUSR1: checkpoint at the
    current step and exit 75 (continue with --resume); a second signal exits at once."""
    cfg = make_config(_saved_with(overrides, resume=True) if resume else overrides, config_file)
    _report(run_training, cfg, resume, overwrite)


def _eval_command(mode: str):
    @config_options
    @click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                  help="checkpoint (default RUN/best.pt, else RUN/last.pt; official ones load too)")
    @click.option("--split", default="val", show_default=True, help="shard split to score (val or test)")
    def cmd(config_file, checkpoint, split, **overrides):
        cfg = make_config(_saved_with(overrides, resume=False), config_file)
        run = Path(cfg.run_dir)
        ck = Path(checkpoint) if checkpoint else (run / "best.pt" if (run / "best.pt").exists() else run / "last.pt")
        _report(lambda: run_eval(cfg, ck if checkpoint else check_in_run(ck), mode, split))
    return cmd


cli.command("eval", help="Single-clip validation top-1/top-5 of a checkpoint (exact under DDP); per-clip predictions "
                         "in RUN/predictions-SPLIT-eval.{csv,json,npy}.")(_eval_command("val"))
cli.command("test", help="Multi-clip × multi-crop test (softmax averaged over --test-clips × --test-crops views); "
                         "per-clip top-5 in RUN/predictions-SPLIT.{csv,json,npy} (the CSV in the dataset's leaderboard "
                         "format); on a split without labels (Jester/SSv2 test) no accuracy.")(
    _eval_command("test"))


@cli.command()
@config_options
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="ranks the run will have (torchrun's nodes x nproc_per_node): the batch must divide over them")
@click.option("--resume", is_flag=True, help="check the config `train --resume` would use")
def validate(config_file, nproc, resume, **overrides):
    """Check a config, its data and backend (starts nothing; `make train` runs this before torchrun)."""
    cfg = make_config(_saved_with(overrides, resume=True) if resume else overrides, config_file)
    problems = data.check(cfg, nproc)
    for p in problems:
        click.echo(scrub(f"error: {p}"), err=True)
    if problems:
        sys.exit(2)
    click.echo(json.dumps(stored_config(cfg), indent=2))


cli.add_command(predict_command)  # train.py predict / export: trainer/predict.py, trainer/export.py
cli.add_command(export_command)

if __name__ == "__main__":
    cli()

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
as ``RUN/config.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from common.files import atomic_write_json
from trainer import data
from trainer.checkpoint import Checkpointer, check_in_run
from trainer.config import Config, config_options, make_config, merge_saved
from trainer.dist import all_gather_objects, distributed, elastic_seed, env_rank
from trainer.errors import TrainingError
from trainer.loop import Parts, Progress, evaluate, measure_synthetic_rate, train_one_epoch
from trainer.metrics import MetricsLog
from trainer.model import amp_dtype, build_model_for, build_optimizer, build_scheduler, resume_schedule

log = logging.getLogger("train")


def run_training(cfg: Config, resume: bool) -> dict:
    with distributed(cfg.device, cfg.dist_timeout) as info:
        return _train(cfg, resume, info)


def _train(cfg: Config, resume: bool, info) -> dict:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    run = Path(cfg.run_dir)
    if cfg.batch_size % info.world:
        raise TrainingError(f"--batch-size {cfg.batch_size} is global and must divide evenly over {info.world} ranks")
    if info.main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", cfg.to_json())
    classes = list(data.manifest(cfg.data)["classes"]) if cfg.data else []
    num_classes = cfg.num_classes or len(classes)
    per_rank = cfg.batch_size // info.world

    model = build_model_for(cfg, num_classes, info)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler(enabled=amp_dtype(cfg, info) == torch.float16)
    ckpt, prog, rng = Checkpointer(run, info.main), Progress(), None
    if resume:
        ck = ckpt.load_last()
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        resume_schedule(cfg, optimizer, scheduler, ck.get("scheduler"), ck["epoch"])
        scaler.load_state_dict(ck["scaler"])
        prog = Progress(ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck["best_top1"])
        if ck["world"] == info.world:  # the same per-rank dropout streams: an exact continuation
            rng = (ck["rng_torch"][info.rank], (ck.get("rng_cuda") or [None] * info.world)[info.rank])
        else:  # elastic: the same clips per global step, fresh dropout streams (docs/training.md "Elastic resume")
            torch.manual_seed(elastic_seed(cfg.seed, prog.global_step, info.rank))
            log.info("%s was written by %d ranks, resuming on %d: dropout RNG re-seeded from (seed %d, step %d, rank)",
                     ckpt.last, ck["world"], info.world, cfg.seed, prog.global_step)
        log.info("resumed %s at epoch %d step %d (global step %d)", ckpt.last, prog.epoch, prog.step_in_epoch,
                 prog.global_step)
    else:
        torch.manual_seed(cfg.seed * 1000 + info.rank)  # per-rank dropout streams

    core = model
    if info.world > 1:
        model = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    parts = Parts(torch.compile(model) if cfg.compile else model, core, optimizer, scaler,
                  data.ModelInput(cfg.dataset, info.device))
    metrics = MetricsLog(run, info.main)
    ceiling = float("nan")
    if cfg.ceiling_steps and not cfg.synthetic:
        synth = data.SyntheticLoader(per_rank, cfg, num_classes, info.device, cfg.ceiling_steps + 1)
        ceiling = measure_synthetic_rate(parts, synth, cfg, info, cfg.ceiling_steps)

    # loaders: built once, pointed at each epoch (and at the resume step) with set_epoch
    if cfg.synthetic:
        train_loader = data.SyntheticLoader(per_rank, cfg, num_classes, info.device, cfg.max_steps_per_epoch or 50)
        val_loader = train_loader if cfg.eval_every else None
    else:
        train_loader = data.build(cfg, info, "train", "train", epoch=prog.epoch)
        val_loader = data.build(cfg, info, "val", "val", epoch=prog.epoch) if cfg.eval_every else None
    recorder = data.ClipRecorder(run, info, train_loader, resumed_at=prog.global_step) if cfg.record_clips else None
    if rng is not None:
        torch.set_rng_state(rng[0])
        if rng[1] is not None and info.device.type == "cuda":
            torch.cuda.set_rng_state(rng[1], info.device)

    def save(best: bool = False) -> None:
        states = all_gather_objects(torch.get_rng_state(), info.world)
        cuda = all_gather_objects(torch.cuda.get_rng_state(info.device), info.world) if info.device.type == "cuda" else None
        ckpt.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": prog.epoch,
                   "step_in_epoch": prog.step_in_epoch, "global_step": prog.global_step, "best_top1": prog.best,
                   "world": info.world, "rng_torch": states, "rng_cuda": cuda, "config": cfg.to_json(), "classes": classes}, best=best)

    last_eval: dict = {}
    for epoch in range(prog.epoch, cfg.epochs):
        prog.epoch = epoch
        steps = len(train_loader) if not cfg.max_steps_per_epoch else min(len(train_loader), cfg.max_steps_per_epoch)
        if steps == 0:
            raise TrainingError(f"{cfg.data}: the train split gives no full batch of {per_rank} per rank; "
                                f"lower --batch-size")
        train_loader.set_epoch(epoch, start=prog.step_in_epoch)  # a resumed epoch: batches k.. only, none decoded before
        rec = train_one_epoch(parts, train_loader, cfg, info, prog, steps=steps, metrics=metrics, save=save,
                              recorder=recorder, where=str(ckpt.last))
        scheduler.step()
        if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            val_loader.set_epoch(epoch)
            last_eval = evaluate(core, val_loader, cfg, info, parts.to_input)
            rec.update(val_top1=last_eval["top1"], val_top5=last_eval["top5"], val_loss=last_eval["loss"],
                       val_clips=last_eval["clips"])
        metrics.write(rec, prog.global_step)
        improved = last_eval.get("top1", -1.0) > prog.best
        prog.best = max(prog.best, last_eval.get("top1", -1.0))
        prog.epoch, prog.step_in_epoch = epoch + 1, 0
        save(best=improved)
        val = f"{rec['val_top1']:.2f}" if "val_top1" in rec else "not evaluated"
        log.info("epoch %d/%d: loss %.4f, val top-1 %s, %.1f clips/s, data-wait %.1f%%, loader CPU %.2f cores "
                 "(%.2f per 1,000 clips/s)", epoch + 1, cfg.epochs, rec["train_loss"], val, rec["clips_per_s"],
                 100 * rec["data_wait"], rec["loader_cores"], rec["loader_cores_per_1k_clips_s"])
    if recorder is not None:
        recorder.close()
    real = (sum(prog.rates) / len(prog.rates)) / cfg.batch_size if prog.rates else float("nan")
    frac = real / ceiling if ceiling == ceiling and ceiling > 0 else None
    summary = {"kind": "summary", "best_top1": prog.best, "steps_per_s": real, "synthetic_steps_per_s": ceiling,
               "fraction_of_synthetic": frac, "last_eval": last_eval, "run": str(run)}
    metrics.write(summary, prog.global_step)
    metrics.close()
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
        res = evaluate(model, loader, cfg, info, data.ModelInput(cfg.dataset, info.device))
        res.update(kind=mode, split=split, checkpoint=str(checkpoint))
        if info.main:
            MetricsLog(Path(cfg.run_dir), True).write(res, 0)
        return res


# ----------------------------------------------------------------------------------------------------------- CLI
def _report(fn, *args):
    """``fn(*args)``, its JSON result printed by rank 0; a known error is one line (exit 3 or 1), no traceback."""
    try:
        res = fn(*args)
    except Exception as e:  # TrainingError, OSError, and DataError / CheckpointError from the libraries
        ours = isinstance(e, (TrainingError, OSError)) or (
            type(e).__name__.endswith("Error") and type(e).__module__.split(".")[0] in ("pipelines", "action"))
        if not ours:
            raise
        click.echo(f"error (rank {env_rank()}): {e}", err=True)
        sys.exit(3 if isinstance(e, TrainingError) else 1)
    if env_rank() == 0:
        click.echo(json.dumps(res))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """Train and evaluate ACTION-ResNet on Arrow shards (see README.md)."""
    rank = env_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


@cli.command()
@config_options
@click.option("--resume", is_flag=True, help="continue RUN/last.pt (exactly on the same number of ranks; on another "
                                             "number with the same clips per global step)")
def train(config_file, resume, **overrides):
    """Train (single process, or one process per GPU under torchrun)."""
    cfg = make_config(merge_saved(overrides, resume=True) if resume else overrides, config_file)
    _report(run_training, cfg, resume)


def _eval_command(mode: str):
    @config_options
    @click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                  help="checkpoint (default RUN/best.pt, else RUN/last.pt; official ones load too)")
    @click.option("--split", default="val", show_default=True, help="shard split to score (val or test)")
    def cmd(config_file, checkpoint, split, **overrides):
        cfg = make_config(merge_saved(overrides, resume=False), config_file)
        run = Path(cfg.run_dir)
        ck = Path(checkpoint) if checkpoint else (run / "best.pt" if (run / "best.pt").exists() else run / "last.pt")
        _report(lambda: run_eval(cfg, ck if checkpoint else check_in_run(ck), mode, split))
    return cmd


cli.command("eval", help="Single-clip validation top-1/top-5 of a checkpoint (exact under DDP).")(_eval_command("val"))
cli.command("test", help="Multi-clip × multi-crop test (softmax averaged over --test-clips × --test-crops views).")(
    _eval_command("test"))


@cli.command()
@config_options
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="ranks the run will have (torchrun's nodes x nproc_per_node): the batch must divide over them")
@click.option("--resume", is_flag=True, help="check the config `train --resume` would use")
def validate(config_file, nproc, resume, **overrides):
    """Check a config, its data and backend (starts nothing; `make train` runs this before torchrun)."""
    cfg = make_config(merge_saved(overrides, resume=True) if resume else overrides, config_file)
    problems = data.check(cfg, nproc)
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if problems:
        sys.exit(2)
    click.echo(json.dumps(cfg.to_json(), indent=2))


if __name__ == "__main__":
    cli()

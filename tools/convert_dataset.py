#!/usr/bin/env python
"""Convert an official raw dataset tree into Arrow shards, or verify converted shards.

    convert_dataset.py DATASET --raw RAW --out OUT [options]     DATASET: egogesture | jester | sthv2
    convert_dataset.py convert DATASET --raw RAW --out OUT ...   the same, spelled with a verb
    convert_dataset.py verify OUT [--decode]
    convert_dataset.py to-ffcv OUT [FILE.beton] [--splits S]    FFCV files for backend="ffcv" (optional)

The engine is :mod:`pipelines.ingest.convert`; this file only parses options and prints one-line errors.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import time

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import click

from pipelines.errors import DataError

DATASETS = ("egogesture", "jester", "sthv2")

MAIN_HELP = """Convert raw frame folders + official label files into sharded Arrow datasets, or verify them.

\b
  convert_dataset.py DATASET --raw RAW --out OUT [options]
  convert_dataset.py convert DATASET --raw RAW --out OUT [options]   (same thing)
  convert_dataset.py verify OUT [--decode]

DATASET is egogesture, jester or sthv2; RAW is the dataset root in the official layout (see docs/DESIGN.md:
EgoGesture frames/ + labels/, Jester jester-v1-*.csv + frames/, SSv2 something-something-v2-*.json or
labels/*.json + frames/ or the release's 20bn-something-something-v2/<id>.webm videos). A video file
<folder>.webm/.mp4/.mkv may stand in for any frame folder: it is decoded and its frames stored as JPEG.
OUT receives OUT/manifest.json and OUT/<split>/shard-NNNNN.arrow; it may be a local path or a
pyarrow filesystem URI (file://, s3://, gs://, hdfs://).

\b
Behaviour:
  * JPEG bytes are stored untouched (a stored frame is byte-identical to its file); video frames are
    encoded once (--jpeg-quality, --short-side, --fps).
  * Clips are shuffled once with --seed; the same input and seed give the same sha256 for every shard,
    whatever --workers is.
  * Resumable: after an interruption (even kill -9) run the same command again; finished shards are kept
    and the result is identical to an uninterrupted run. Files appear only under their final name when
    complete; the manifest is written last.
  * Bad input stops the run with one line `error: <file>: <problem>` and exit code 1 (finished shards stay);
    with --skip-bad the bad clips are left out and listed in the manifest's "skipped".

Run `convert_dataset.py DATASET --help` or `convert_dataset.py verify --help` for the options.
"""


class _Cli(click.Group):
    def format_commands(self, ctx, formatter):  # keep datasets first, in a fixed order
        rows = [(n, self.commands[n].get_short_help_str(80)) for n in (*DATASETS, "convert", "verify", "to-ffcv")]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_Cli, help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    pass


def _setup_logging(verbose: int) -> None:
    from pipelines.shards.storage import redact_logs

    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    redact_logs()  # an --out URI with credentials reaches the filesystem only, never a log line


def _fail(e: BaseException | str) -> None:
    from pipelines.shards.storage import scrub

    click.echo(scrub(f"error: {e}"), err=True)
    sys.exit(1)


def _common_options(f):
    opts = [
        click.option("--raw", required=True, type=click.Path(file_okay=False),
                     help="Dataset root in the official layout."),
        click.option("--out", required=True,
                     help="Output root (local path or pyarrow filesystem URI such as s3://bucket/prefix)."),
        click.option("--splits", default="train,val,test", show_default=True,
                     help="Comma-separated splits to convert (Jester/SSv2 'validation' files are split 'val'; "
                          "test splits have label -1)."),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
                     help="Worker processes for scanning and shard writing (output does not depend on it)."),
        click.option("--shard-mb", default=256.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Target shard size in MiB of JPEG bytes (a shard closes once it reaches this)."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seed of the one-time clip shuffle (recorded in the manifest)."),
        click.option("--skip-bad", is_flag=True,
                     help="Leave bad clips out and record {path, reason} in the manifest instead of stopping "
                          "at the first problem (missing/empty folders, bad/truncated JPEGs, frame gaps, bad "
                          "label rows, unknown labels, unsafe ids; missing, unreadable or truncated videos)."),
        click.option("--limit", default=None, type=click.IntRange(0),
                     help="Keep at most N clips per split (after the shuffle): quick trial runs."),
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="tqdm bar per split (clips/s or videos/s, MB/s, frames/s) on stderr."),
        click.option("--fps", default=None, type=click.FloatRange(min=0, min_open=True),
                     help="Videos only: resample to N frames/s like `ffmpeg -vf fps=N` (default: every decoded "
                          "frame, at the native rate)."),
        click.option("--short-side", default=None, type=click.IntRange(1),
                     help="Videos only: resize so the shorter side is N px (bicubic, aspect kept) before JPEG "
                          "encoding (default: native size)."),
        click.option("--jpeg-quality", default=90, show_default=True, type=click.IntRange(1, 100),
                     help="Videos only: JPEG quality of the stored frames (libjpeg-turbo, 4:2:0)."),
        click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _run(dataset: str, raw, out, splits, workers, shard_mb, seed, skip_bad, limit, progress, verbose,
         fps=None, short_side=None, jpeg_quality=90, **reader_options) -> None:
    from pipelines.ingest.convert import convert_dataset
    from pipelines.shards.storage import scrub, shown

    _setup_logging(verbose)
    t0 = time.perf_counter()
    try:
        m = convert_dataset(dataset, raw, out, splits=splits, workers=workers, shard_mb=shard_mb, seed=seed,
                            skip_bad=skip_bad, limit=limit, progress=progress, fps=fps, short_side=short_side,
                            jpeg_quality=jpeg_quality, **reader_options)
    except DataError as e:
        _fail(e)
    except ValueError as e:
        raise click.UsageError(scrub(str(e))) from None
    except OSError as e:  # writing OUT failed (disk full, permissions): one line, finished shards are kept
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "No space left" in str(e):
            _fail(f"{shown(out)}: no space left on device while writing shards; finished shards are kept "
                  "(free space and run the same command again to resume)")
        _fail(f"{shown(out)}: cannot write the output ({e}); finished shards are kept, run the same command again")
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    dt = time.perf_counter() - t0
    total = sum(s["bytes"] for sp in m["splits"].values() for s in sp["shards"])
    for name, sp in m["splits"].items():
        click.echo(f"{name}: {sp['clips']} clips, {sp['frames']} frames, {len(sp['shards'])} shard(s)")
    click.echo(f"wrote {shown(out)} ({total / 1e6:.1f} MB in {dt:.1f}s, {total / 1e6 / max(dt, 1e-9):.1f} MB/s); "
               f"skipped {len(m['skipped'])}")


def _make_dataset_command(name: str, extra=()):
    def cmd(**kw):
        _run(name, **kw)

    cmd.__doc__ = f"Convert the raw {name} tree RAW into shards under OUT."
    for o in reversed(extra):
        cmd = o(cmd)
    return cli.command(name)(_common_options(cmd))


_EGO_OPTIONS = (
    click.option("--drop-last-two", is_flag=True,
                 help="Official-code quirk: keep frames start..end-2 of each gesture (range(start, end-1))."),
    click.option("--train-on-trainval", is_flag=True,
                 help="Official recipe: split 'train' also holds the val subjects (val is still written)."),
)
_STHV2_OPTIONS = (
    click.option("--source", type=click.Choice(("auto", "frames", "videos")), default="auto", show_default=True,
                 help="frames/<id>/ or the release's 20bn-something-something-v2/<id>.webm videos (auto: frames/ "
                      "when it exists, else the videos; a warning says which when both exist)."),
)
for _name in DATASETS:
    _make_dataset_command(_name, {"egogesture": _EGO_OPTIONS, "sthv2": _STHV2_OPTIONS}.get(_name, ()))


@cli.command("convert")
@click.argument("dataset", type=click.Choice(DATASETS))
@_common_options
@click.option("--drop-last-two", is_flag=True, help="EgoGesture only: see `egogesture --help`.")
@click.option("--train-on-trainval", is_flag=True, help="EgoGesture only: see `egogesture --help`.")
@click.option("--source", type=click.Choice(("auto", "frames", "videos")), default=None,
              help="SSv2 only: see `sthv2 --help`.")
def convert_cmd(dataset, drop_last_two, train_on_trainval, source, **kw):
    """Convert DATASET (egogesture, jester, sthv2); same as `convert_dataset.py DATASET ...`."""
    extra = {}
    if dataset == "egogesture":
        extra = {"drop_last_two": drop_last_two, "train_on_trainval": train_on_trainval}
    elif drop_last_two or train_on_trainval:
        raise click.UsageError("--drop-last-two/--train-on-trainval apply to egogesture only")
    if dataset == "sthv2":
        extra["source"] = source or "auto"
    elif source:
        raise click.UsageError("--source applies to sthv2 only")
    _run(dataset, **kw, **extra)


@cli.command("verify")
@click.argument("out")
@click.option("--decode", is_flag=True, help="Also fully decode every frame (simplejpeg); slower.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="tqdm bar over shards.")
def verify_cmd(out, decode, progress):
    """Check OUT: re-hash every shard against the manifest and check every row (schema, counts, labels,
    complete JPEGs whose header size matches the row). Exit 1 with the first problem."""
    from pipelines.shards.reader import verify
    from pipelines.shards.storage import read_manifest, shown

    _setup_logging(0)
    try:
        verify(out, decode=decode, progress=progress)
        _, _, m = read_manifest(out)
    except DataError as e:
        _fail(e)
    n = sum(len(s["shards"]) for s in m["splits"].values())
    clips = sum(s["clips"] for s in m["splits"].values())
    click.echo(f"ok: {shown(out)}: {n} shard(s), {clips} clips")


@cli.command("to-ffcv")
@click.argument("shards")
@click.argument("out", required=False)
@click.option("--splits", default=None, help="comma-separated splits (default: every split of the manifest)")
@click.option("--workers", default=1, show_default=True, help="FFCV writer processes")
@click.option("--progress/--no-progress", default=False, show_default=True, help="FFCV's tqdm bar")
def to_ffcv_cmd(shards, out, splits, workers, progress):
    """Write SHARDS' splits as FFCV .beton files (one row per clip: label, frame count, the JPEG bytes behind
    an offsets header) for backend="ffcv". OUT (one split only) defaults to SHARDS/ffcv/<split>.beton, where
    the loader looks. Needs ffcv (`make setup-ffcv`)."""
    from pipelines.backends.ffcv.convert import FfcvUnavailable, to_beton
    from pipelines.shards.storage import read_manifest

    try:
        names = [s for s in splits.split(",") if s] if splits else list(read_manifest(shards)[2]["splits"])
        if out and len(names) != 1:
            raise click.UsageError("OUT names one .beton: give exactly one split with --splits")
        for name in names:
            t0 = time.perf_counter()
            path = to_beton(shards, name, out, workers=workers, progress=progress)
            click.echo(f"ok: {path} ({time.perf_counter() - t0:.1f} s)")
    except (DataError, FfcvUnavailable, ValueError) as e:
        _fail(e)


if __name__ == "__main__":
    cli()

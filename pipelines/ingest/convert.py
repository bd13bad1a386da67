"""The conversion engine: raw frame folders + label files -> shards + manifest (docs/DESIGN.md "Shard format").

``convert_dataset(dataset, raw, out, ...)`` runs steps 1-3 for every split first (so annotation and
folder problems stop a strict run before anything is written), then step 4 for all shards of all splits in
one pool of ``workers`` processes (``fork`` on Linux, see :func:`default_start_method`), then step 5:

1. **read** the official annotation files (:mod:`pipelines.ingest.datasets`), sort the clips by key, shuffle them
   once with ``numpy.random.Generator(PCG64(seed))`` (one generator per split, so a split's bytes do not
   depend on which other splits are converted), then apply ``limit``;
2. **scan** every frame folder (:mod:`pipelines.ingest.scan`; list + stat only; in ``workers`` processes): names
   ``<number>.jpg`` of any zero-padded width, sorted by number, consecutive numbers, no zero-byte files. A video file
   ``<folder>.webm``/``.mp4``/... may stand in for a folder: it is probed here, decoded and JPEG-encoded in
   step 4, and laid out from an estimate (:mod:`pipelines.ingest.video`);
3. **lay out** the shard boundaries from the file sizes alone: a shard is closed as soon as its frame bytes
   reach ``shard_mb`` MiB. The layout therefore does not depend on ``workers``;
4. **write** each shard (one process per shard): the JPEG bytes are read untouched, every frame's header is
   checked (SOI, SOF size equal for all frames of a clip, EOI), batches of ``format.ROWS_PER_BATCH`` rows
   are streamed to ``.<shard>.tmp-<pid>`` (:func:`common.files.temp_name`) and hashed; a small state file
   ``OUT/.convert/<split>-<index>.json`` records the shard's layout fingerprint, sha256 and skips; then the shard
   is moved into place. Memory per process: about one record batch of frame bytes (a shard on object stores);
5. **manifest** -- written last, atomically. Any old manifest is removed when a run starts, so a visible
   manifest always describes the shards next to it.

Resume: a shard is kept when its state file matches the current layout and the file's size and sha256 match
the state; everything else is rewritten. The result is byte-identical to an uninterrupted run.

Bad input: strict by default -- the first problem raises a :class:`~pipelines.errors.DataError` (finished
shards stay); with ``skip_bad`` the clip is left out and ``{"path", "reason"}`` is recorded in the
manifest's ``"skipped"`` list (paths relative to RAW). All frames of a clip must have the same size.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import re
import sys
import time

import numpy as np
import pyarrow.fs as pafs

from common import files
from pipelines.decode import jpeg
from pipelines.errors import AnnotationError, DataError, FrameError
from pipelines.ingest import datasets, video
from pipelines.ingest.datasets import ClipRef, Problems, bad
from pipelines.ingest.scan import Clip, layout_fingerprint, layout_shards, scan_clips
from pipelines.shards import format as fmt, storage, writer as sh

log = logging.getLogger(__name__)

STATE_DIR = ".convert"
MIB = 1 << 20


# ----------------------------------------------------------------------------------------------- writing
def _read_clip(raw: str, clip: Clip, buf: np.ndarray, off: int, check: jpeg.JpegChecker) -> tuple[int, int]:
    """Read ``clip``'s frames into ``buf[off:]``; check each JPEG header. Returns (height, width)."""
    hw0 = None
    mv = memoryview(buf)
    spare = bytearray(1)  # a read that fills it means the file grew since the scan
    for rel, size in zip(clip.files, clip.sizes):
        path = os.path.join(raw, rel)
        try:  # os.open + one readv: fewer syscalls than open(); the frame lands directly in the batch buffer
            fd = os.open(path, os.O_RDONLY)
            try:
                n = os.readv(fd, [mv[off:off + size], spare])
            finally:
                os.close(fd)
        except OSError as e:
            raise bad(FrameError, path, f"cannot read the frame ({e.strerror})") from None
        if n != size:
            raise bad(FrameError, path, "frame file changed size during the conversion", "re-run")
        try:
            hw = check(mv[off:off + size])
        except ValueError as e:
            raise bad(FrameError, path, str(e)) from None
        if hw0 is None:
            hw0 = hw
        elif hw != hw0:
            raise bad(FrameError, path, f"frame is {hw[1]}x{hw[0]} but the clip's first frame is "
                                        f"{hw0[1]}x{hw0[0]} (all frames of a clip must have one size)")
        off += size
    return hw0  # type: ignore[return-value]


_BUFFER: list[np.ndarray] = []


def _batch_buffer(n: int) -> np.ndarray:
    """A uint8 buffer of ``n`` bytes, reused across batches of this process (fresh pages cost page faults).

    Safe because a batch is written out before the next one is read (``write_shard`` consumes the generator).
    """
    if not _BUFFER or _BUFFER[0].size < n:
        _BUFFER[:] = [np.empty(max(n, 1), dtype=np.uint8)]
    return _BUFFER[0][:n]


def _batches(raw: str, clips: list[Clip], problems: Problems, stats: dict, on_batch=None):
    check = jpeg.JpegChecker()
    for i in range(0, len(clips), fmt.ROWS_PER_BATCH):
        group = clips[i:i + fmt.ROWS_PER_BATCH]
        videos = {}  # a video's JPEG frames exist only once decoded: encode them first to size the buffer
        for j, c in enumerate(group):
            if isinstance(c, video.VideoClip):
                try:
                    videos[j] = video.read_clip(raw, c)
                except DataError as e:
                    problems(e)
                    videos[j] = None
        buf = _batch_buffer(sum(sum(c.sizes) for j, c in enumerate(group) if j not in videos)
                            + sum(sum(map(len, v[0])) for v in videos.values() if v is not None))
        keys, labels, counts, hs, ws, offs = [], [], [], [], [], [0]
        off = 0
        for j, c in enumerate(group):
            if j in videos:
                if videos[j] is None:
                    continue
                jpegs, h, w = videos.pop(j)
                sizes = [len(b) for b in jpegs]
                for b in jpegs:
                    buf[off:off + len(b)] = memoryview(b)
                    off += len(b)
                keys.append(c.key)
                labels.append(c.label)
                counts.append(len(jpegs))
                hs.append(h)
                ws.append(w)
                for s in sizes:
                    offs.append(offs[-1] + s)
                continue
            try:
                h, w = _read_clip(raw, c, buf, off, check)
            except DataError as e:
                problems(e)  # strict: raises; skip_bad: records and the clip is left out
                continue
            n = sum(c.sizes)
            keys.append(c.key)
            labels.append(c.label)
            counts.append(len(c.files))
            hs.append(h)
            ws.append(w)
            for s in c.sizes:
                offs.append(offs[-1] + s)
            off += n
        # a skipped clip's bytes are overwritten by the next kept clip: buf[:off] holds exactly the kept frames
        data = buf[:off]
        stats["frames"] += sum(counts)
        stats["data_bytes"] += off
        if on_batch is not None:
            on_batch(len(group), off, sum(counts))
        if keys:
            yield sh.make_batch(keys, labels, counts, hs, ws, data, np.asarray(offs, dtype=np.int64))


def write_shard_task(task: dict, on_batch=None) -> dict:
    """Write one laid-out shard (runs in a worker process). Returns its manifest entry + stats + skips.

    The state file is written before the shard is moved into place, so a shard under its final name always
    has a state file describing it (a kill between the two leaves a state without a shard: rewritten)."""
    raw, clips = task["raw"], task["clips"]
    fs, root = storage.resolve(task["out"])
    problems = Problems(skip_bad=task["skip_bad"], raw=raw)
    stats = {"frames": 0, "data_bytes": 0}
    state: dict = {}

    def record(entry: dict) -> None:  # state first, then the shard is moved into place
        state.update({"layout": task["layout"], "path": task["path"], **entry, "frames": stats["frames"],
                      "skipped": problems.skipped})
        storage.write_json_atomic(fs, storage.join(root, task["state"]), state)

    sh.write_shard(fs, storage.join(root, task["path"]), _batches(raw, clips, problems, stats, on_batch), record)
    return {**state, "data_bytes": stats["data_bytes"], "planned_clips": len(clips)}


def _finished(fs, root: str, task: dict) -> dict | None:
    """The state of a shard finished by an earlier run with the same layout, else None."""
    state = storage.read_json(fs, storage.join(root, task["state"]))
    if not isinstance(state, dict) or state.get("layout") != task["layout"] or state.get("path") != task["path"]:
        return None
    if state.get("skipped") and not task["skip_bad"]:
        return None  # written by a --skip-bad run: a strict run must see (and stop at) the problem
    path = storage.join(root, task["path"])
    info = fs.get_file_info(path)
    if info.type != sh.pafs.FileType.File or info.size != state.get("bytes"):
        return None
    digest, _ = storage.sha256_file(fs, path)
    return state if digest == state.get("sha256") else None


# ----------------------------------------------------------------------------------------------- engine
def default_start_method() -> str:
    """``fork`` on Linux (workers start in milliseconds; they only read files and write shards), else ``spawn``."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _pool(workers: int, start_method: str | None):
    ctx = mp.get_context(start_method or default_start_method())
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) if workers > 1 else None


def _map(pool, fn, items, chunksize=1):
    return map(fn, items) if pool is None else pool.map(fn, items, chunksize=chunksize)


def read_split(spec, raw: str, split: str, classes: list[str], problems: Problems, *, seed: int,
               limit: int | None, options: dict) -> list[ClipRef]:
    """Annotation clips of ``split`` sorted by key, shuffled with ``seed``, cut to ``limit``."""
    refs = sorted(spec.read(raw, split, problems, classes=classes, **options), key=lambda r: r.key)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(refs))
    refs = [refs[i] for i in order]
    return refs[:limit] if limit is not None else refs


def convert_dataset(dataset: str, raw, out, *, splits=None, workers: int = 1, shard_mb: float = 256.0,
                    seed: int = 0, skip_bad: bool = False, limit: int | None = None, progress: bool = False,
                    start_method: str | None = None, fps: float | None = None, short_side: int | None = None,
                    jpeg_quality: int = video.DEFAULT_QUALITY, **reader_options) -> dict:
    """Convert the raw tree ``raw`` of ``dataset`` into shards under ``out``; return the manifest.

    Args:
        dataset: ``egogesture``, ``jester`` or ``sthv2``.
        raw: dataset root as the official release lays it out (local path).
        out: output root: a local path or a pyarrow filesystem URI.
        splits: iterable (or comma-separated string) of ``train``/``val``/``test``; default all three.
        workers: processes for scanning and writing (1: everything in this process).
        shard_mb: target shard size in MiB of frame bytes.
        seed: shuffle seed (recorded in the manifest).
        skip_bad: leave bad clips out and record them instead of stopping at the first problem.
        limit: keep at most this many clips per split (after the shuffle).
        progress: tqdm bars per split (clips/s and MB/s).
        start_method: multiprocessing start method of the workers (default :func:`default_start_method`;
            use ``"spawn"`` when calling from a process whose threads must not be forked).
        fps, short_side, jpeg_quality: how clips stored as video files become JPEG frames
            (:mod:`pipelines.ingest.video`; ignored for frame folders).
        **reader_options: dataset reader options (EgoGesture: ``drop_last_two``, ``train_on_trainval``).

    Raises:
        DataError: bad input (strict mode), with a one-line message naming the file and the problem.
    """
    spec = datasets.get(dataset)
    raw = os.path.abspath(os.fspath(raw))
    splits, options = _check_args(dataset, spec, splits, shard_mb, limit, reader_options)
    workers = max(1, int(workers))
    decode = video.Decode(fps=fps, short_side=short_side, quality=int(jpeg_quality))

    spec.check_root(raw)
    classes = spec.load_classes(raw)
    if len(classes) != spec.num_classes:
        raise AnnotationError(f"{raw}: {len(classes)} class names, expected {spec.num_classes}")

    fs, root = storage.resolve(out)
    fs.create_dir(root, recursive=True)
    manifest_path = storage.join(root, fmt.MANIFEST_NAME)
    if storage.exists(fs, manifest_path):
        fs.delete_file(manifest_path)  # rewritten at the end; never describes half-updated shards
    fs.create_dir(storage.join(root, STATE_DIR), recursive=True)

    problems = Problems(skip_bad=skip_bad, raw=raw)
    manifest = {"format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "dataset": spec.name,
                "classes": list(classes), "seed": int(seed), "splits": {}, "skipped": [],
                "options": {**options, "shard_mb": float(shard_mb), "limit": limit}}
    pool = _pool(workers, start_method)
    try:
        layouts: dict[str, list[list[Clip]]] = {}
        for split in splits:  # read + scan + lay out every split first: strict errors stop before any writing
            t0 = time.perf_counter()
            refs = read_split(spec, raw, split, classes, problems, seed=seed, limit=limit, options=options)
            clips = scan_clips(refs, raw, lambda fn, items: _map(pool, fn, items, max(1, len(items) // (workers * 8))),
                               decode, problems)
            layouts[split] = layout_shards(clips, shard_mb * MIB)
            if any(isinstance(c, video.VideoClip) for c in clips):
                manifest["options"]["video"] = decode.manifest()
            log.info("%s/%s: %d clips, %d frames, %.1f MB in %d shard(s) (scan %.1fs)", spec.name, split,
                     len(clips), sum(len(c.files) for c in clips), sum(sum(c.sizes) for c in clips) / 1e6,
                     len(layouts[split]), time.perf_counter() - t0)
        manifest["splits"] = _write_all(fs, root, out, raw, layouts, pool, skip_bad, progress, problems, spec.name)
        for split, layout in layouts.items():
            _remove_stale(fs, root, split, len(layout))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _BUFFER.clear()  # the in-process (workers=1) batch buffer
    uniq = {(s["path"], s["reason"]): s for s in problems.skipped}
    manifest["skipped"] = [uniq[k] for k in sorted(uniq)]
    fmt.validate_manifest(manifest)
    storage.write_json_atomic(fs, manifest_path, manifest)
    return manifest


def _check_args(dataset: str, spec, splits, shard_mb: float, limit: int | None, reader_options: dict):
    """``(splits, reader options)`` of a conversion, checked before anything is read."""
    unknown = set(reader_options) - set(spec.options)
    if unknown:
        raise TypeError(f"{dataset}: unknown reader option(s) {sorted(unknown)}; known: {sorted(spec.options)}")
    if splits is None:
        splits = spec.splits
    elif isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    splits = list(dict.fromkeys(splits))
    for s in splits:
        if s not in spec.splits:
            raise ValueError(f"unknown split {s!r}; expected some of {', '.join(spec.splits)}")
    if shard_mb <= 0:
        raise ValueError("shard_mb must be > 0")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    return splits, {**spec.options, **reader_options}


def _write_all(fs, root, out, raw, layouts, pool, skip_bad, progress, problems, name) -> dict:
    """Write every laid-out shard of every split (all in one pool pass); returns the manifest's "splits"."""
    from tqdm import tqdm

    tasks = []
    for split, layout in layouts.items():
        fs.create_dir(storage.join(root, split), recursive=True)
        _remove_tmp(fs, storage.join(root, split))
        for i, clips in enumerate(layout):
            tasks.append({"raw": raw, "out": os.fspath(out), "split": split, "path": fmt.shard_name(split, i),
                          "clips": clips, "skip_bad": skip_bad, "layout": layout_fingerprint(clips),
                          "state": f"{STATE_DIR}/{split}-{i:05d}.json"})
    unit = {s: "video" if any(isinstance(c, video.VideoClip) for sh_ in p for c in sh_) else "clip"
            for s, p in layouts.items()}
    bars = {split: tqdm(total=sum(len(c) for c in layout), desc=f"{name}/{split}", unit=unit[split], position=k,
                        disable=not progress, dynamic_ncols=True) for k, (split, layout) in enumerate(layouts.items())}
    done_bytes = dict.fromkeys(layouts, 0)
    done_frames = dict.fromkeys(layouts, 0)
    t0 = time.perf_counter()

    def tick(split: str, n_clips: int, n_bytes: int, n_frames: int = 0) -> None:
        done_bytes[split] += n_bytes
        done_frames[split] += n_frames
        bars[split].update(n_clips)
        dt = max(time.perf_counter() - t0, 1e-9)
        bars[split].set_postfix_str(f"{done_bytes[split] / 1e6 / dt:.1f} MB/s, {done_frames[split] / dt:.0f} frames/s",
                                    refresh=False)

    results: list[dict | None] = [None] * len(tasks)
    todo = []
    for i, t in enumerate(tasks):
        st = _finished(fs, root, t)
        if st is not None:
            results[i] = st
            bars[t["split"]].update(len(t["clips"]))
            log.info("%s: kept from an earlier run", t["path"])
        else:
            todo.append(i)
    try:
        if pool is None:
            for i in todo:
                split = tasks[i]["split"]
                results[i] = write_shard_task(tasks[i], on_batch=lambda c, b, f, s=split: tick(s, c, b, f))
        else:
            futs = {pool.submit(write_shard_task, tasks[i]): i for i in todo}
            try:
                for f in cf.as_completed(futs):
                    r = f.result()  # re-raises a worker's DataError (strict mode)
                    results[futs[f]] = r
                    tick(tasks[futs[f]]["split"], r["planned_clips"], r["data_bytes"], r["frames"])
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
    finally:
        for bar in bars.values():
            bar.close()
    out_splits = {split: {"clips": 0, "frames": 0, "shards": []} for split in layouts}
    for t, r in zip(tasks, results):
        assert r is not None
        s = out_splits[t["split"]]
        s["shards"].append({"path": r["path"], "clips": r["clips"], "bytes": r["bytes"], "sha256": r["sha256"]})
        s["clips"] += r["clips"]
        s["frames"] += r["frames"]
        problems.skipped.extend(r.get("skipped", []))
    return out_splits


def _remove_tmp(fs, folder: str) -> None:
    """Delete temporary files left by a killed run."""
    sel = pafs.FileSelector(folder, allow_not_found=True)
    for info in fs.get_file_info(sel):
        if info.type == sh.pafs.FileType.File and files.temp_writer(info.base_name) is not None:
            fs.delete_file(info.path)


def _remove_stale(fs, root: str, split: str, n: int) -> None:
    """Delete shards (and their state) numbered >= n left by an earlier run with another layout."""
    sel = pafs.FileSelector(storage.join(root, split), allow_not_found=True)
    pat = re.compile(r"^shard-(\d{5})\.arrow$")
    for info in fs.get_file_info(sel):
        m = pat.match(info.base_name)
        if m and int(m.group(1)) >= n:
            fs.delete_file(info.path)
            st = storage.join(root, f"{STATE_DIR}/{split}-{m.group(1)}.json")
            if storage.exists(fs, st):
                fs.delete_file(st)

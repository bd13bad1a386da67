#!/usr/bin/env python
"""SSv2 videos -> shards in one step vs the peers' extract-then-convert (``make bench-convert-video``).

Generates (once, cached under ``--raw-dir``) an SSv2-release-layout tree of ``--videos`` VP9 webm videos,
240 px high, widths drawn from 240-427 px, 2-6 s at 12 fps (a panning texture with moving objects and sensor
noise), then measures in one run, on ``--workers`` processes each:

* (a) this converter: ``convert_dataset("sthv2", RAW, OUT, source="videos")`` -- decode + JPEG + shards;
* (b) the peers' way: ``ffmpeg -threads 1 -i <id>.webm -q:v Q <id>/%06d.jpg`` (the apt ``ffmpeg`` CLI, one
  process per worker, as TSM's ``vid2img_sthv2.py`` / mmaction2 / SlowFast scripts run it), then frame
  conversion of the extracted tree.

Reported: wall time of each (b: extraction + conversion), bytes and files written (b: the intermediate frame
tree + shards), and the mean absolute pixel error of the stored frames against PyAV's RGB decode of the video
(a: at ``--jpeg-quality`` and a few other qualities; b: at ``-q:v Q``) on a sample of videos. The videos are
read once first, so both start from a warm page cache. Results: ``OUT/bench_convert_video.json`` + ``.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from bench_convert import tree_bytes  # beside this script: files and bytes under a folder

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

WIDTHS = (240, 320, 352, 360, 400, 427)  # the release's widths at 240 px height range over 240..427


def _frames(seed: int, w: int, h: int, n: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 255, (h // 12 + 2, (w + 8 * n) // 12 + 2, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(lo).resize(((w + 8 * n), h), Image.BICUBIC)).astype(np.float32)
    speed = rng.uniform(0.5, 3.0)
    blobs = rng.uniform(0, 1, (2, 5))  # x, y, vx, vy, grey
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for t in range(n):
        x0 = int(t * speed)
        img = big[:, x0:x0 + w].copy()
        for b in blobs:
            cx = (b[0] + 0.02 * t * (b[2] - 0.5)) * w
            cy = (b[1] + 0.02 * t * (b[3] - 0.5)) * h
            m = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.12 * h) ** 2
            img[m] = 255 * b[4]
        img += rng.normal(0, 2.0, img.shape)
        yield np.clip(img, 0, 255).astype(np.uint8)


def _make_video(args) -> int:
    import videotrees as vt

    path, seed, w, h, n = args
    vt.write_video(path, n, size=(w, h), fps=12, codec="vp9", images=list(_frames(seed, w, h, n)))
    return os.path.getsize(path)


def generate(raw: str, n_videos: int, workers: int) -> None:
    """SSv2 release layout: flat label JSONs + 20bn-something-something-v2/<id>.webm (80/15/5 % train/val/test)."""
    import rawtrees

    stamp = os.path.join(raw, ".bench-stamp.json")
    params = {"videos": n_videos, "version": 1}
    if os.path.exists(stamp) and json.load(open(stamp)) == params:
        return
    shutil.rmtree(raw, ignore_errors=True)
    vdir = os.path.join(raw, "20bn-something-something-v2")
    os.makedirs(vdir)
    classes = rawtrees.sthv2_classes()
    with open(os.path.join(raw, "something-something-v2-labels.json"), "w") as f:
        json.dump({c: str(i) for i, c in enumerate(classes)}, f)
    rng = np.random.default_rng(0)
    ids = [str(100000 + 7 * i) for i in range(n_videos)]
    jobs = [(os.path.join(vdir, f"{v}.webm"), i, int(rng.choice(WIDTHS)), 240, int(rng.integers(24, 73)))
            for i, v in enumerate(ids)]
    n_tr, n_va = int(n_videos * 0.8), int(n_videos * 0.15)
    parts = {"train": ids[:n_tr], "validation": ids[n_tr:n_tr + n_va], "test": ids[n_tr + n_va:]}
    for split, part in parts.items():
        entries = [{"id": v} if split == "test" else
                   {"id": v, "template": classes[int(v) % 174].replace("something", "[something]")} for v in part]
        with open(os.path.join(raw, f"something-something-v2-{split}.json"), "w") as f:
            json.dump(entries, f)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_make_video, jobs, chunksize=4))
    print(f"generated {n_videos} videos in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    json.dump(params, open(stamp, "w"))




def _cpu() -> float:
    """CPU seconds of this process + its finished children (ffmpeg processes, pool workers): robust to load."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _ffmpeg_one(args) -> None:
    src, dst, q = args
    os.makedirs(dst, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", src, "-q:v", str(q),
                    os.path.join(dst, "%06d.jpg")], check=True)


def peers(raw: str, work: str, workers: int, q: int) -> dict:
    """(b): ffmpeg CLI extraction into WORK/raw/frames/<id>/, then frame conversion into WORK/shards."""
    from pipelines.ingest.convert import convert_dataset

    shutil.rmtree(work, ignore_errors=True)
    fraw = os.path.join(work, "raw")
    os.makedirs(os.path.join(fraw, "frames"))
    for fn in os.listdir(raw):
        if fn.endswith(".json"):
            shutil.copy(os.path.join(raw, fn), fraw)
    vdir = os.path.join(raw, "20bn-something-something-v2")
    jobs = [(os.path.join(vdir, fn), os.path.join(fraw, "frames", fn[:-5]), q) for fn in sorted(os.listdir(vdir))]
    c0, t0 = _cpu(), time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:  # one ffmpeg process per worker at a time
        list(ex.map(_ffmpeg_one, jobs))
    c1, t1 = _cpu(), time.perf_counter()
    m = convert_dataset("sthv2", fraw, os.path.join(work, "shards"), workers=workers, source="frames")
    c2, t2 = _cpu(), time.perf_counter()
    n_tree, tree = tree_bytes(os.path.join(fraw, "frames"))
    n_sh, shards = tree_bytes(os.path.join(work, "shards"))
    return {"extract_s": t1 - t0, "convert_s": t2 - t1, "total_s": t2 - t0, "extract_cpu_s": c1 - c0,
            "convert_cpu_s": c2 - c1, "total_cpu_s": c2 - c0, "frames_tree_bytes": tree,
            "frames_tree_files": n_tree, "shard_bytes": shards, "shard_files": n_sh,
            "written_bytes": tree + shards, "frames": sum(s["frames"] for s in m["splits"].values())}


def ours(raw: str, out: str, workers: int, quality: int) -> dict:
    from pipelines.ingest.convert import convert_dataset

    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = _cpu(), time.perf_counter()
    m = convert_dataset("sthv2", raw, out, workers=workers, source="videos", jpeg_quality=quality)
    c1, dt = _cpu(), time.perf_counter() - t0
    n_sh, shards = tree_bytes(out)
    return {"total_s": dt, "total_cpu_s": c1 - c0, "shard_bytes": shards, "shard_files": n_sh, "written_bytes": shards,
            "frames": sum(s["frames"] for s in m["splits"].values()), "skipped": len(m["skipped"]),
            "shards": sum(len(s["shards"]) for s in m["splits"].values()), "manifest": m}


def errors(raw: str, out_a: str, frames_b: str, sample: int, qualities) -> dict:
    """Mean |stored - PyAV RGB decode| over the frames of ``sample`` videos: ours per quality, ffmpeg's."""
    import simplejpeg
    import videotrees as vt

    from pipelines.ingest import video
    from pipelines.ingest.datasets import ClipRef

    vdir = os.path.join(raw, "20bn-something-something-v2")
    names = sorted(os.listdir(vdir))[:sample]
    refs = {n: vt.decoded_rgb(os.path.join(vdir, n)) for n in names}
    res: dict = {"sample_videos": len(names), "sample_frames": sum(len(r) for r in refs.values())}
    for q in qualities:
        errs, nbytes, px = [], 0, 0
        for n in names:
            info = video.probe(raw, f"20bn-something-something-v2/{n}")
            clip = video.resolve_clip(ClipRef(n[:-5], 0, f"20bn-something-something-v2/{n[:-5]}"), info,
                                      video.Decode(quality=q))
            jpegs, h, w = video.read_clip(raw, clip)
            errs += [np.abs(simplejpeg.decode_jpeg(b).astype(np.int16) - r).mean() for b, r in zip(jpegs, refs[n])]
            nbytes += sum(map(len, jpegs))
            px += len(jpegs) * h * w
        res[f"ours_q{q}"] = {"mean_abs_err": float(np.mean(errs)), "max_frame_err": float(np.max(errs)),
                             "bytes_per_pixel": nbytes / px}
    errs = []
    for n in names:
        d = os.path.join(frames_b, n[:-5])
        files = sorted(os.listdir(d))
        assert len(files) == len(refs[n]), (n, len(files), len(refs[n]))
        errs += [np.abs(simplejpeg.decode_jpeg(open(os.path.join(d, f), "rb").read()).astype(np.int16) - r).mean()
                 for f, r in zip(files, refs[n])]
    res["ffmpeg"] = {"mean_abs_err": float(np.mean(errs)), "max_frame_err": float(np.max(errs))}
    return res


def decoders(raw: str, sample: int, rounds: int = 3) -> dict:
    """Decode-only CPU cost (one thread) to RGB uint8: PyAV (pinned) vs torchcodec when importable.

    torchcodec loads the system FFmpeg (apt ``ffmpeg``) at import; it is not a dependency, so this runs only where
    it is installed (e.g. ``pip install --target DIR torchcodec`` + ``PYTHONPATH=DIR``)."""
    import av

    vdir = os.path.join(raw, "20bn-something-something-v2")
    paths = [os.path.join(vdir, n) for n in sorted(os.listdir(vdir))[:sample]]

    def pyav(p):
        with av.open(p) as c:
            s = c.streams.video[0]
            s.codec_context.thread_count = 1
            return sum(1 for f in c.decode(s) if f.to_ndarray(format="rgb24") is not None)

    fns = {"pyav": pyav}
    res: dict = {"sample_videos": len(paths), "measure": "CPU seconds of one process (time.process_time), best of "
                 f"{rounds} interleaved rounds"}
    try:
        import torch
        import torchcodec
        from torchcodec.decoders import VideoDecoder

        torch.set_num_threads(1)
        fns["torchcodec"] = lambda p: int(VideoDecoder(p, device="cpu", num_ffmpeg_threads=1,
                                                       seek_mode="approximate")[:].shape[0])
        res["torchcodec_version"] = torchcodec.__version__
    except Exception as e:  # noqa: BLE001 - absent or no system FFmpeg: recorded, not fatal
        res["torchcodec"] = f"unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    best: dict = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            n = sum(fn(p) for p in paths)
            dt = time.process_time() - t0
            if name not in best or dt < best[name][0]:
                best[name] = (dt, n)
    for name, (dt, n) in best.items():
        res[name] = {"frames": n, "cpu_s": dt, "frames_per_cpu_s": n / dt}
    res["pyav_version"] = av.__version__
    return res


def chart(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = res["ours"], res["peers"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    ax1.bar(["(a) videos → shards\n(this converter)"], [a["total_s"]], color="#4c72b0")
    ax1.bar(["(b) ffmpeg → frames\n→ shards"], [b["extract_s"]], color="#dd8452", label="ffmpeg extraction")
    ax1.bar(["(b) ffmpeg → frames\n→ shards"], [b["convert_s"]], bottom=[b["extract_s"]], color="#c44e52",
            label="frame conversion")
    ax1.text(0, a["total_s"], f"{a['total_s']:.1f} s", ha="center", va="bottom")
    ax1.text(1, b["total_s"], f"{b['total_s']:.1f} s", ha="center", va="bottom")
    ax1.set_ylabel("wall time (s)")
    ax1.set_title(f"{res['videos']} VP9 webm, {res['frames']} frames, {res['workers']} workers", fontsize=9)
    ax1.legend(fontsize=8, loc="upper left")
    mb = 1e6
    ax2.bar(["(a)"], [a["written_bytes"] / mb], color="#4c72b0")
    ax2.bar(["(b)"], [b["frames_tree_bytes"] / mb], color="#dd8452", label=f"frame tree ({b['frames_tree_files']} files)")
    ax2.bar(["(b)"], [b["shard_bytes"] / mb], bottom=[b["frames_tree_bytes"] / mb], color="#c44e52", label="shards")
    ax2.set_ylabel("MB written")
    ax2.set_title(f"disk written (videos: {res['video_mb']:.0f} MB)", fontsize=9)
    ax2.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"SSv2 videos: {res['speedup']:.2f}x faster end to end, no intermediate tree", fontsize=10)
    from common.files import save_figure

    save_figure(fig, path)


def main(argv=None) -> int:
    from common.files import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results", help="folder for bench_convert_video.json/.png")
    ap.add_argument("--raw-dir", default="data/bench/raw-sthv2-videos", help="generated videos (cached)")
    ap.add_argument("--work-dir", default="data/bench/convert-video", help="outputs (deleted per run)")
    ap.add_argument("--videos", type=int, default=240)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--ffmpeg-q", type=int, default=2, help="ffmpeg -q:v of the baseline (2: high quality)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved (b), (a) rounds; the fastest of each is kept")
    ap.add_argument("--error-sample", type=int, default=24, help="videos in the pixel-error measurement")
    ap.add_argument("--decoders-only", action="store_true",
                    help="only (re)measure PyAV vs torchcodec decoding into the existing JSON's 'decoders'")
    args = ap.parse_args(argv)
    path = os.path.join(args.out, "bench_convert_video.json")
    if args.decoders_only:
        res = json.load(open(path))
        res["decoders"] = decoders(os.path.abspath(args.raw_dir), args.error_sample)
        atomic_write_json(path, res, indent=1)
        print(json.dumps(res["decoders"], indent=1))
        return 0
    if args.videos < 200:
        ap.error("the benchmark needs at least 200 videos")
    if shutil.which("ffmpeg") is None:
        ap.error("the baseline needs the ffmpeg CLI: apt-get install -y --no-install-recommends ffmpeg")
    raw, work = os.path.abspath(args.raw_dir), os.path.abspath(args.work_dir)
    generate(raw, args.videos, workers=os.cpu_count() or 1)
    n_videos, video_bytes = tree_bytes(os.path.join(raw, "20bn-something-something-v2"))
    tree_bytes(raw)
    subprocess.run(["bash", "-c", f"cat {raw}/20bn-something-something-v2/*.webm > /dev/null"], check=True)
    load_before = os.getloadavg()
    rounds = []
    for _ in range(args.repeat):  # interleaved, so both see the same (shared) machine load
        rounds.append((peers(raw, os.path.join(work, "peers"), args.workers, args.ffmpeg_q),
                       ours(raw, os.path.join(work, "ours"), args.workers, args.jpeg_quality)))
    b = min((r[0] for r in rounds), key=lambda x: x["total_s"])
    a = min((r[1] for r in rounds), key=lambda x: x["total_s"])
    assert a["frames"] == b["frames"], (a["frames"], b["frames"])  # same frames: every decoded frame
    m = a.pop("manifest")
    for r in rounds:
        r[1].pop("manifest", None)
    err = errors(raw, os.path.join(work, "ours"), os.path.join(work, "peers", "raw", "frames"), args.error_sample,
                 sorted({75, 85, args.jpeg_quality, 95}))
    ff = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    import av

    res = {
        "what": "SSv2 release layout of generated VP9 webm videos -> shards: (a) this converter in one step vs "
                "(b) ffmpeg CLI frame extraction (one process per worker) + frame conversion; warm page cache",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "videos": n_videos, "video_mb": video_bytes / 1e6, "frames": a["frames"], "workers": args.workers,
        "heights": 240, "widths": list(WIDTHS), "fps": 12, "seconds": [2, 6],
        "ours_decoder": f"PyAV {av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', '?')} in the wheel)",
        "peers_cli": ff, "peers_cmd": f"ffmpeg -threads 1 -i <id>.webm -q:v {args.ffmpeg_q} <id>/%06d.jpg",
        "jpeg_quality": args.jpeg_quality, "ffmpeg_q": args.ffmpeg_q,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "repeat": args.repeat, "best_of": "min wall time over interleaved rounds",
        "rounds_wall_s": [[r[0]["total_s"], r[1]["total_s"]] for r in rounds],
        "rounds_cpu_s": [[r[0]["total_cpu_s"], r[1]["total_cpu_s"]] for r in rounds],
        "ours": a, "peers": b, "errors": err, "options": m["options"],
        "speedup": b["total_s"] / a["total_s"], "cpu_ratio": b["total_cpu_s"] / a["total_cpu_s"],
        "disk_ratio": b["written_bytes"] / a["written_bytes"],
    }
    res["target_met"] = res["speedup"] >= 2.0
    res["decoders"] = decoders(raw, args.error_sample)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(path, res, indent=1)
    chart(res, os.path.join(args.out, "bench_convert_video.png"))
    print(json.dumps({k: res[k] for k in ("videos", "frames", "speedup", "cpu_ratio", "disk_ratio", "target_met")},
                     indent=1))
    print(f"(a) {a['total_s']:.1f} s, {a['written_bytes'] / 1e6:.1f} MB written; (b) {b['total_s']:.1f} s "
          f"(extract {b['extract_s']:.1f} + convert {b['convert_s']:.1f}), {b['written_bytes'] / 1e6:.1f} MB written")
    return 0


if __name__ == "__main__":
    sys.exit(main())

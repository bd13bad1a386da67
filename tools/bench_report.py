#!/usr/bin/env python
"""Render the measurement tables of ``docs/benchmarks.md`` from the JSON files in ``bench/results/``.

Each table lives between a pair of markers naming its section, e.g.::

    <!-- bench:loader_cpu:start -->
    ...generated from bench/results/profile_loader.json...
    <!-- bench:loader_cpu:end -->

Only the text between markers changes; the prose around them is written by hand. ``tests/test_docs.py`` checks
that the committed file equals what this tool generates, so a benchmark that rewrites its JSON is followed by::

    python tools/bench_report.py              # rewrite docs/benchmarks.md in place (atomically)
    python tools/bench_report.py --check      # exit 1 naming the sections that are out of date

A section whose JSON file is missing renders as one line saying so (the tables never invent a number).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
_MARK = re.compile(r"<!-- bench:([a-z0-9_]+):start -->\n.*?<!-- bench:\1:end -->", re.S)


# ---------------------------------------------------------------------------------------------- formatting
def _f(x, nd: int = 0) -> str:
    """A number with ``nd`` decimals and thousands separators; '-' for None."""
    return "-" if x is None else f"{x:,.{nd}f}"


def _x(x, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}x"


def _table(head: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(head) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _load(rel: str):
    return json.loads((RESULTS / rel).read_text(encoding="utf-8"))


def _source(*rels: str) -> str:
    return "Source: " + ", ".join(f"`bench/results/{r}`" for r in rels) + "."


def _load_avg(cfg: dict) -> str:
    la = cfg.get("load_average") or cfg.get("loadavg_before")
    return f"load {la[0]:.1f}" if la else "load not recorded"


# ---------------------------------------------------------------------------------------------- sections
def loader(rel: str) -> str:
    """A ``tools/profile_loader.py --json`` file: clips/s per backend, ratios, stage times, the decode ceiling."""
    d = _load(rel)
    cfg, m, ratios = d["config"], d["machine"], d.get("ratios", {})
    ceiling = d.get("ceiling") or {}
    rows = []
    for r in d["results"]:
        b = r["backend"]

        def ratio(ref, b=b):
            return 1.0 if b == ref else ratios.get(f"{b}_over_{ref}")
        st = r.get("stage_ms") or {}
        stages = " / ".join(_f(st.get(k), 1) for k in ("read", "decode", "augment", "to_device"))
        rows.append([f"`{b}`", _f(r["clips_per_s"]), _f(r["frames_per_s"]), _x(ratio("folder")),
                     _x(ratio("torch")), _x(ratios.get(f"{b}_over_ceiling")), stages])
    if ceiling:
        rows.append([f"decode-only ceiling ({cfg['workers']} processes)", _f(ceiling["decode_only_clips_per_s"]),
                     _f(ceiling["decode_only_frames_per_s"]), "", "", "1.00x", ""])
    head = ["backend", "clips/s", "frames/s", "x folder", "x torch", "x ceiling",
            "read / decode / augment / to_device ms per batch"]
    what = (f"{cfg['mode']}, B={cfg['batch_size']}, T={cfg['num_segments']}, {cfg['size']} px, {cfg['workers']} "
            f"workers, device {cfg['device']}, {cfg['batches']} batches x {cfg.get('rounds', 1)} interleaved rounds"
            f" (best round; ratios are medians of same-round ratios), "
            f"{'normalised in the loader' if cfg.get('normalize') else 'uint8 out'}; {m['cpu']}, {m['cores']} "
            f"cores, torch {m['torch']}, {_load_avg(cfg)} at the start.")
    return what + "\n\n" + _table(head, rows, "lrrrrrl") + "\n\n" + _source(rel)


def loader_cpu() -> str:
    return loader("profile_loader.json")


def loader_ffcv() -> str:
    return loader("profile_loader_ffcv.json")


def loader_roi() -> str:
    return loader("profile_loader_roi.json")


def loader_normalize() -> str:
    return loader("profile_loader_normalize.json")


def loader_gpu() -> str:
    return loader("gpu/profile_loader_gpu.json")


def convert() -> str:
    d = _load("bench_convert.json")
    rows = [["`tar cf - RAW | cat` (reading the tree)", _f(d["tar_piped_s"], 2), _f(d["tar_piped_mb_s"]), ""],
            ["convert, 1 worker", _f(d["convert_w1_s"], 2), _f(d["convert_w1_mb_s"]), ""],
            ["convert, 2 workers", _f(d["convert_w2_s"], 2), _f(d["convert_w2_mb_s"]),
             _x(d["ratio_w2_vs_tar"], 3)]]
    what = (f"{d['frames']:,} frames ({d['raw_mb']:.0f} MB, {d['avg_frame_kb']:.1f} kB a frame) into "
            f"{d['shards']} shards of {d['shard_mb']:.0f} MB; {d['host']['cpus']} cores, best of {d['repeat']} "
            f"interleaved rounds, load {d['loadavg_before'][0]:.1f} at the start. {d['what']}.")
    verdict = (f"Shard sha256 identical for 1 and 2 workers: {'yes' if d['same_sha_w1_w2'] else 'NO'}; "
               f"target (2 workers >= 0.5x the tar rate) {'met' if d['target_met'] else 'NOT met'}.")
    return (what + "\n\n" + _table(["run", "seconds", "MB/s", "x tar"], rows) + "\n\n" + verdict + " "
            + _source("bench_convert.json"))


def convert_video() -> str:
    d = _load("bench_convert_video.json")
    ours, peers = d["ours"], d["peers"]
    rows = [["(a) this converter, one step", _f(ours["total_s"], 1), _f(ours["total_cpu_s"], 1),
             _f(ours["written_bytes"] / 1e6), "1.00x"],
            [f"(b) `{d['peers_cmd']}` + frame conversion", f"{_f(peers['total_s'], 1)} ({_f(peers['extract_s'], 1)}"
             f" + {_f(peers['convert_s'], 1)})", _f(peers["total_cpu_s"], 1), _f(peers["written_bytes"] / 1e6),
             _x(peers["total_s"] / ours["total_s"])]]
    q = {k: v for k, v in d["errors"].items() if isinstance(v, dict)}
    erows = [[k.replace("ours_q", "this converter, quality ").replace("ffmpeg", f"ffmpeg -q:v {d['ffmpeg_q']}"),
              _f(v["mean_abs_err"], 2), _f(v.get("bytes_per_pixel"), 3)] for k, v in sorted(q.items())]
    what = (f"{d['videos']} VP9 webm videos ({d['heights']} px high, {min(d['widths'])}-{max(d['widths'])} wide, "
            f"{d['fps']} fps; {d['frames']:,} frames), {d['workers']} workers, best of {d['repeat']} interleaved "
            f"rounds, load {d['loadavg_before'][0]:.1f} at the start; {d['ours_decoder']} vs "
            f"{d['peers_cli'].split(' Copyright')[0]}.")
    errs = (f"Mean absolute error (0-255) of stored frames against PyAV's RGB decode, {d['errors']['sample_frames']:,}"
            f" frames of {d['errors']['sample_videos']} videos:")
    return (what + "\n\n" + _table(["pipeline", "wall s", "CPU s", "MB written", "wall time / (a)"], rows) + "\n\n" + errs
            + "\n\n" + _table(["frames", "mean abs error", "bytes/pixel"], erows) + "\n\n"
            + _source("bench_convert_video.json"))


def model() -> str:
    out = []
    for rel in ("bench_model.json", "bench_model_1thread.json"):
        d = _load(rel)
        rows = []
        for m in d["models"]:
            ms = m["median_s"]
            rows.append([f"{m['arch']} {m['clips']}x{m['frames']}x{m['size']}^2"
                         + (" channels_last" if m["channels_last"] else ""),
                         _f(ms["none"] * 1e3), _f(ms["optimised"] * 1e3), _f(ms["reference"] * 1e3),
                         _f(m["overhead_ratio"], 2), f"{m['max_abs_diff_logits_eval']:.1e}"])
        for key in ("blocks_112", "blocks_224"):
            for m in d[key]:
                ms = m["median_s"]
                rows.append([f"block {m['label']}, {m['clips']}x{m['frames']}x{m['spatial']}^2",
                             _f(ms["none"] * 1e3, 1), _f(ms["optimised"] * 1e3, 1), _f(ms["reference"] * 1e3, 1),
                             _f(m["overhead_ratio"], 2), f"{m['max_abs_diff_eval']:.1e}"])
        env, v = d["env"], d["verdict"]
        out.append(f"**{env['threads']} thread{'s' if env['threads'] > 1 else ''}** ({env['device']}, torch "
                   f"{env['torch']}, load {env['loadavg_start'][0]:.1f} at the start; forward + backward, median ms):"
                   "\n\n" + _table(["what", "no temporal module", "ACTION (ours)", "ACTION (official)",
                                    "overhead ours / official", "max abs diff"], rows)
                   + f"\n\nTarget: {v['target']}: {'met' if v['met'] else 'NOT met'} "
                   f"({v['overhead_ratio_r50_112']:.2f} for R50 at 112^2). {_source(rel)}")
    return "\n\n".join(out)


def remote() -> str:
    d = _load("bench_remote.json")
    names = {"local": "local shards", "cold": "cold cache (download + sha256 included)",
             "warm": "warm cache (manifest read only)", "direct": "direct, exact frames (`gap=0`)",
             "direct-1req": "direct, one request a clip (`gap=1<<30`)"}
    rows = [[names.get(b["mode"], b["mode"]), _f(b["first_batch_s"], 2), _f(b["steady_clips_per_s"]),
             "-" if "requests_per_clip" not in b else
             f"{b['requests_per_clip']:.1f} ({b['mb_per_clip'] * 1e3:.0f} kB)"] for b in d["best"]]
    ds, ld = d["dataset"], d["loader"]
    what = (f"{ds['clips']} clips, {ds['frames']:,} frames of {ds['frame_size']}, {ds['shard_bytes'] / 1e6:.1f} MB "
            f"of {ds['shard_mb']} MiB shards on a moto S3 server on 127.0.0.1 (converted there in "
            f"{d['convert_to_s3_s']:.1f} s); `build_loader`, {ld['backend']} backend, {ld['mode']}, batch "
            f"{ld['batch_size']}, {ld['num_segments']} segments, {ld['size']} px, {ld['workers']} decode threads, "
            f"{ld['direct_threads']} requests in flight; best of the rounds, {d['machine']['cpus']} cores. First "
            f"batches equal in every mode: {'yes' if d['first_batches_equal'] else 'NO'}.")
    return (what + "\n\n" + _table(["data", "first batch s", "steady clips/s", "requests a clip"], rows) + "\n\n"
            + _source("bench_remote.json"))


def demo() -> str:
    d = _load("demo.json")
    res, cfg = d["results"], d["config"]
    arms = [a for a in ("action", "none") if a in res]
    rows = [["val top-1 (1 clip)"] + [_f(res[a]["train"]["val_top1"], 1) + " %" for a in arms],
            ["val top-5 (1 clip)"] + [_f(res[a]["train"]["val_top5"], 1) + " %" for a in arms],
            ["test top-1 (2 clips, val)"] + [_f(res[a]["test"]["top1"], 1) + " %" for a in arms],
            ["train clips/s"] + [_f(res[a]["train"]["clips_per_s"], 1) for a in arms],
            ["data-wait fraction"] + [_f(100 * res[a]["train"]["data_wait"], 1) + " %" for a in arms],
            ["val top-1 by epoch"] + [", ".join(_f(e["val_top1"], 1) for e in res[a]["train"]["epochs"])
                                      for a in arms]]
    for pair in res[arms[0]]["pairs"]:
        rows.append([f"test top-1, {pair}"] + [_f(res[a]["pairs"][pair], 1) + " %" for a in arms])
    still = str(d["classes"].index("Stop Sign")) if "Stop Sign" in d.get("classes", []) else None
    if still and all(still in res[a]["test"]["per_class"] for a in arms):
        rows.append(["test top-1, no motion (Stop Sign)"]
                    + [_f(res[a]["test"]["per_class"][still], 1) + " %" for a in arms])
    s = d["fresh_run"]["seconds"]
    times = ", ".join(f"{k.replace('_', ' ')} {v} s" for k, v in s.items())
    what = (f"{cfg['arch']}, {cfg['segments']} segments of {cfg['size']}^2, batch {cfg['batch_size']}, lr {cfg['lr']}"
            f" (x0.1 at epoch {cfg['lr_steps']}), {cfg['epochs']} epochs, {cfg['clips_per_class']} train clips a "
            f"class; `temporal=none` is the TSN baseline.")
    wall = (f"`{d['fresh_run']['command']}`: {d['fresh_run']['wall_seconds'] / 60:.1f} min ({times}) on "
            f"{d['fresh_run']['machine']}.")
    pr = d.get("predict")
    long_video = "" if not pr else (
        f"Then `train.py predict` on a generated {pr['seconds_of_video']:.0f} s video of {pr['gestures']} gestures "
        f"one after another (windows of {pr['window_s']:g} s every {pr['stride_s']:g} s): top-1 is the gesture being "
        f"performed in **{_f(pr['window_top1'], 1)} %** of the {pr['scored_windows']} windows lying at least "
        f"{100 * pr['inside_fraction']:.0f} % inside one gesture ({_f(pr['transition_top1'], 1)} % of the "
        f"{pr['transition_windows']} windows straddling a boundary); predict stage "
        f"{d['seconds'].get('predict', 0):.0f} s.\n\n")
    return (what + "\n\n" + _table(["", *arms], rows, "l" + "r" * len(arms)) + "\n\n" + long_video + wall + " "
            + _source("demo.json"))


def rooms() -> str:
    i = _load("rooms_identity.json")
    a, b = i["runs"]["previous_main"], i["runs"]["this_tree"]
    rows = []
    for m in a:
        rows.append([f"{m}: step losses", f"{len(a[m]['step_losses'])} steps",
                     "equal" if a[m]["step_losses"] == b[m]["step_losses"] else "DIFFER"])
        rows += [[f"{m}: {k.replace('_', ' ')}", _f(a[m][k], 4), "equal" if a[m][k] == b[m][k] else f"{b[m][k]:.8g}"]
                 for k in ("train_loss", "val_top1", "val_loss", "test_top1", "test_top5")]
    return (f"{i['what']}\n\n`{i['command']}`\n\n" + _table(["", "previous main", "this tree"], rows) + "\n\n"
            + f"{i['note']}. " + _source("rooms_identity.json"))


def gpu_model() -> str:
    out = []
    for rel in ("gpu/gpu_model_shift.json", "gpu/gpu_model_before_fused_shift.json"):
        d = _load(rel)
        c, m = d["config"], d["machine"]
        rows = [[f"`{r['variant']}`", _f(r["step_ms"], 1), _f(r["clips_per_s"]), _x(r["step_vs_none"])]
                for r in d["results"]]
        failed = "; failed: " + ", ".join(d["failed"]) if d.get("failed") else ""
        out.append(f"{c['arch']}, batch {c['batch_size']} x {c['segments']} x {c['size']}^2, {m['gpu']}, torch "
                   f"{m['torch']}, {c['steps']} steps x {c['rounds']} rounds{failed}:\n\n"
                   + _table(["variant", "ms/step", "clips/s", "x none"], rows) + "\n\n" + _source(rel))
    return "\n\n".join(out)


def action_ops() -> str:
    d = _load("action_ops.json")
    rows = [[r["tree"], f"`{r['impl']}`", str(r["forward"]), str(r["backward"]), str(r["forward"] + r["backward"])]
            for r in d["rows"]]
    return (f"{d['what']}:\n\n" + _table(["tree", "impl", "forward", "backward", "total"], rows, "llrrr")
            + "\n\n" + _source("action_ops.json", "action_ops.png"))


def staging() -> str:
    d = _load("gpu/staging.json")
    rows = []
    for w in d["manifest"]["wheels"]:
        rp = w.get("repacked") or {}
        rows.append([f"`{w['wheel'].split('-py')[0].split('-cp')[0]}`", _f(w["bytes"] / 1e6, 1),
                     _f(w["staged_bytes"] / 1e6, 1), str(rp.get("dropped_files", "")),
                     _f(rp["seconds"]) if rp else ""])
    mib = 1 << 20
    what = (f"{d['wheels']} wheels for CPython {d['manifest']['python']}, {d['downloaded_bytes'] / mib:.1f} MiB as "
            f"downloaded = {d['parts_without_repack']} parts of {d['part_mib']:.0f} MiB; repacked "
            f"({d['manifest']['compression']}) {d['staged_bytes'] / mib:.1f} MiB = **{d['parts']} parts**.")
    return (what + "\n\n" + _table(["wheel", "MB downloaded", "MB staged", "files dropped", "repack s"], rows)
            + "\n\n" + _source("gpu/staging.json"))


def refactor() -> str:
    i, lo = _load("refactor_identity.json"), _load("refactor_loader_old_vs_new.json")
    a, b = i["runs"]["previous_main"], i["runs"]["this_tree"]
    rows = [["step losses", f"{len(a['step_losses'])} steps", "equal" if a["step_losses"] == b["step_losses"]
             else "DIFFER"]]
    rows += [[k.replace("_", " "), _f(a[k], 4), "equal" if a[k] == b[k] else f"{b[k]:.4f}"]
             for k in ("train_loss", "val_top1", "val_loss")]
    lrows = [[str(r["round"]), _f(r[next(k for k in r if k.startswith("previous"))], 1), _f(r["this_tree"], 1),
              _x(r["ratio"])] for r in lo["rounds"]]
    return (f"{i['what']}\n\n`{i['command']}`\n\n" + _table(["", "previous main", "this tree"], rows) + "\n\n"
            + f"{i['also']}.\n\n{lo['what']}:\n\n"
            + _table(["round", "previous clips/s", "this tree clips/s", "ratio"], lrows)
            + f"\n\nMedian ratio {lo['median_ratio']:.2f}. {_source('refactor_identity.json', 'refactor_loader_old_vs_new.json')}")


SECTIONS = {f.__name__: f for f in (demo, rooms, convert, convert_video, loader_cpu, loader_ffcv, loader_roi,
                                      loader_normalize, model, remote, loader_gpu, gpu_model, action_ops, staging,
                                      refactor)}


def render_section(name: str) -> str:
    try:
        return SECTIONS[name]()
    except FileNotFoundError as e:
        rel = Path(e.filename).relative_to(RESULTS).as_posix()
        return f"(no results: bench/results/{rel} is missing; run the benchmark that writes it)"


def render(text: str) -> str:
    """``text`` with every marked section regenerated (an unknown section name is an error)."""
    def sub(m):
        name = m.group(1)
        if name not in SECTIONS:
            raise SystemExit(f"error: docs/benchmarks.md: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        return f"<!-- bench:{name}:start -->\n{render_section(name)}\n<!-- bench:{name}:end -->"
    return _MARK.sub(sub, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default=str(DOC), help="the Markdown file with bench:<name> markers")
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from the generated one")
    a = ap.parse_args(argv)
    path = Path(a.doc)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        print(f"error: {path}: cannot read ({e.strerror}); it must hold the bench:<name> markers", file=sys.stderr)
        return 1
    new = render(text)
    if a.check:
        stale = [n for n in _MARK.findall(text) if render_section(n) not in text]
        if new != text:
            print(f"error: {path}: out of date ({', '.join(stale) or 'layout'}); run python tools/bench_report.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        from common.files import atomic_write

        atomic_write(path, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

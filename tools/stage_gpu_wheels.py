#!/usr/bin/env python
"""Stage DALI (and the wheels the GPU host lacks) in parts that fit one device call each.

    python tools/stage_gpu_wheels.py [--out .gpu-stage] [--no-repack] [--nvcomp] [--part-mib 55] [--report J]

The GPU host has no package registry and a call carries at most 64 MiB of the working tree, while
``nvidia-dali-cuda130`` is a ~190 MB wheel. So, here, where PyPI is reachable:

1. ``pip download --no-deps --only-binary=:all:`` the pinned wheels for the host (CPython 3.12, manylinux
   x86-64) into ``OUT/download``;
2. repack (default) DALI and nvImageCodec into ``OUT/repacked``: drop the extension modules built for other
   Python versions and the nvImageCodec extensions whose libraries are not staged (nvJPEG2000, nvTIFF), and
   recompress with LZMA (pip installs any zip method Python reads); RECORD is rewritten to match;
3. write one uncompressed tar of the wheels, cut into parts of at most ``--part-mib`` MiB:
   ``OUT/parts/wheels.tar.partNN``, ``SHA256SUMS`` (the parts), ``BUNDLE.sha256`` (the whole tar) and
   ``manifest.json``;
4. print the device calls: one part per call, each carrying that part only (plus the 1 KB sums file), the
   last one running ``bash bench/gpu_check.sh``, which reassembles and verifies the parts with ``sha256sum``
   and installs the wheels with ``pip install --no-deps --target`` (docs/gpu-hosts.md).

Ignored files in the device's checkout stay there while it is warm, which is what lets the parts add up.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.files import atomic_path, atomic_write, atomic_write_json, save_figure, temp_name

from pipelines.shards.storage import sha256_file

log = logging.getLogger("stage_gpu_wheels")

MIB = 1 << 20
# What `pip install nvidia-dali-cuda130==2.4.0` would add on the GPU host for JPEG decoding (its image already
# has numpy, six, packaging, pyyaml, typing-extensions, wheel), plus simplejpeg, the project's CPU JPEG decoder.
WHEELS = ("nvidia-dali-cuda130==2.4.0", "nvidia-nvimgcodec-cu13==0.9.0.20", "nvidia-nvjpeg==13.3.2.43",
          "astunparse==1.6.3", "gast==0.7.0", "optree==0.20.0", "nvtx==0.2.17", "makefun==1.16.0",
          "libcst==1.9.0", "simplejpeg==1.9.0")
# Declared by DALI but loaded only by its inflate operator and nvImageCodec's nvTIFF extension (dlopen, no
# DT_NEEDED in any DALI or nvImageCodec library): not staged unless --nvcomp.
NVCOMP = "nvidia-libnvcomp-cu13==5.3.0.16"
# The tags the wheels above are published with (DALI and nvImageCodec: manylinux_2_28; nvcomp: 2_27; nvJPEG:
# manylinux2014 = 2_17); pip matches each tag exactly.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# nvImageCodec's extensions for codecs whose libraries are not staged: each prints an ERROR when it fails to load.
DROP = {"nvidia_nvimgcodec": ("nvidia/nvimgcodec/extensions/libnvjpeg2k_ext.so*",
                              "nvidia/nvimgcodec/extensions/libnvtiff_ext.so*")}
REPACK = ("nvidia_dali", "nvidia_nvimgcodec")  # wheel-name prefixes worth repacking (the rest are small)
COMPRESSION = {"lzma": zipfile.ZIP_LZMA, "bzip2": zipfile.ZIP_BZIP2, "deflate": zipfile.ZIP_DEFLATED}
_ABI = re.compile(r"\.cpython-(\d+)(t?)-[^/]*\.so$")
BUNDLE = "wheels.tar"


# ----------------------------------------------------------------------------------------------- repack
def other_python_build(name: str, python: str) -> bool:
    """True for an extension module built for another CPython than ``python`` ("3.12"), free-threaded included."""
    m = _ABI.search(name)
    return bool(m) and (m.group(1) != python.replace(".", "") or m.group(2) == "t")


def repack_wheel(src: Path, dst: Path, *, python: str = "3.12", drop: tuple[str, ...] = (),
                 compression: str = "lzma") -> dict:
    """Copy the wheel ``src`` to ``dst`` without other Pythons' extension modules and the ``drop`` globs,
    every member recompressed with ``compression``; RECORD loses the dropped files' lines (the others' hashes
    are of the uncompressed bytes, so they stay valid). Returns what was dropped and the sizes."""
    method = COMPRESSION[compression]
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        gone = {i.filename for i in infos
                if other_python_build(i.filename, python) or any(fnmatch.fnmatch(i.filename, p) for p in drop)}
        records = [i for i in infos if i.filename.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise click.ClickException(f"{src}: not a wheel (expected one *.dist-info/RECORD, found "
                                       f"{len(records)}); delete it and download it again")
        with atomic_path(dst) as tmp, zipfile.ZipFile(tmp, "w") as zout:
            for i in infos:
                if i.filename in gone:
                    continue
                zi = zipfile.ZipInfo(i.filename, i.date_time)
                zi.external_attr, zi.create_system, zi.compress_type = i.external_attr, i.create_system, method
                if i is records[0]:
                    lines = zin.read(i).decode().splitlines(keepends=True)
                    zout.writestr(zi, "".join(x for x in lines if x.split(",", 1)[0] not in gone))
                    continue
                zi.file_size = i.file_size
                with zin.open(i) as r, zout.open(zi, "w") as w:
                    shutil.copyfileobj(r, w, 4 * MIB)
    return {"dropped": sorted(gone), "dropped_bytes": sum(i.file_size for i in infos if i.filename in gone),
            "bytes_in": src.stat().st_size, "bytes_out": dst.stat().st_size,
            "unpacked_bytes_out": sum(i.file_size for i in infos if i.filename not in gone)}


def repacked(src: Path, folder: Path, **opts) -> dict:
    """:func:`repack_wheel` into ``folder``, reusing an earlier result of the same source and options (LZMA
    over DALI takes minutes): a ``<wheel>.json`` beside it records both."""
    dst, side = folder / src.name, folder / f"{src.name}.json"
    key = {"source_sha256": sha256_file(None, str(src))[0], **{k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in opts.items()}}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(side.read_text())
        if old["key"] == key and dst.is_file() and sha256_file(None, str(dst))[0] == old["sha256"]:
            log.info("%s: reusing the repacked wheel from an earlier run", src.name)
            return {**old["stats"], "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = repack_wheel(src, dst, **opts)
    stats = {"bytes": info["bytes_out"], "unpacked_bytes": info["unpacked_bytes_out"],
             "dropped_files": len(info["dropped"]), "dropped_unpacked_bytes": info["dropped_bytes"],
             "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(side, {"key": key, "sha256": sha256_file(None, str(dst))[0], "stats": stats})
    return stats


# ----------------------------------------------------------------------------------------------- split
class _Parts(io.RawIOBase):
    """A write-only stream cut into files ``<dir>/<stem>.partNN`` of at most ``part_bytes`` each, hashed as
    they are written (each part and the whole stream)."""

    def __init__(self, directory: Path, stem: str, part_bytes: int):
        super().__init__()
        self.dir, self.stem, self.part_bytes = directory, stem, part_bytes
        self.parts: list[dict] = []
        self.whole = hashlib.sha256()
        self.total = 0
        self._f = None
        self._h = None
        self._n = 0

    def writable(self) -> bool:
        return True

    def _roll(self) -> None:
        self._close_part()
        name = f"{self.stem}.part{len(self.parts) + 1:02d}"
        self._f, self._h, self._n = open(self.dir / name, "wb"), hashlib.sha256(), 0
        self.parts.append({"name": name})

    def _close_part(self) -> None:
        if self._f is not None:
            self._f.close()
            self.parts[-1].update(sha256=self._h.hexdigest(), bytes=self._n)
            self._f = None

    def write(self, b) -> int:
        mv = memoryview(b).cast("B")
        done = 0
        while done < len(mv):
            if self._f is None or self._n == self.part_bytes:
                self._roll()
            chunk = mv[done:done + self.part_bytes - self._n]
            self._f.write(chunk)
            self._h.update(chunk)
            self.whole.update(chunk)
            self._n += len(chunk)
            done += len(chunk)
        self.total += done
        return done

    def close(self) -> None:
        self._close_part()
        super().close()


def tar_bytes(sizes) -> int:
    """Size of the uncompressed tar that :func:`split_bundle` writes for files of these sizes (to plan parts)."""
    body = sum(512 + -(-s // 512) * 512 for s in sizes) + 1024
    return -(-body // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def split_bundle(files: list[Path], parts_dir: Path, part_bytes: int) -> dict:
    """One deterministic uncompressed tar of ``files`` (by name, in order) cut into ``parts_dir``'s parts;
    the folder is replaced as a whole (written next to it, then renamed). Returns the manifest's bundle part."""
    if part_bytes <= 0:
        raise click.ClickException(f"--part-mib must be positive (got {part_bytes / MIB:g})")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise click.ClickException(f"two staged wheels share a file name ({sorted(names)}): keep one of each")
    parts_dir = Path(parts_dir)
    tmp = temp_name(parts_dir)  # a whole folder: written under the temp name, then swapped in
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        out = _Parts(tmp, BUNDLE, part_bytes)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for f in files:
                ti = tarfile.TarInfo(f.name)
                ti.size, ti.mode, ti.mtime = f.stat().st_size, 0o644, 0
                with open(f, "rb") as r:
                    tar.addfile(ti, r)
        out.close()
        bundle = {"name": BUNDLE, "sha256": out.whole.hexdigest(), "bytes": out.total, "part_bytes": part_bytes}
        atomic_write(tmp / "SHA256SUMS", "".join(f"{p['sha256']}  {p['name']}\n" for p in out.parts))
        atomic_write(tmp / "BUNDLE.sha256", f"{bundle['sha256']}  {BUNDLE}\n")
        old = parts_dir.with_name(f".{parts_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if parts_dir.exists():
            parts_dir.rename(old)
        tmp.rename(parts_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"bundle": bundle, "parts": out.parts}


def device_calls(parts: list[dict], stage: str = ".gpu-stage") -> list[dict]:
    """The device tool's calls: one part per call (plus the sums file); the last one runs the GPU check."""
    n, pdir = len(parts), f"{stage}/parts"
    calls = []
    for k, p in enumerate(parts, 1):
        carry = [f"{pdir}/SHA256SUMS", f"{pdir}/{p['name']}"]
        if k < n:
            cmd = (f"cd {pdir} && sha256sum --quiet --ignore-missing -c SHA256SUMS && "
                   f"echo \"parts verified here: $(ls {BUNDLE}.part* | wc -l)/{n}\"")
            calls.append({"command": cmd, "carry": carry, "timeout_s": 60})
        else:
            check = "bash bench/gpu_check.sh" if stage == ".gpu-stage" else f"STAGE={stage} bash bench/gpu_check.sh"
            calls.append({"command": check,
                          "carry": carry + [f"{pdir}/BUNDLE.sha256", f"{pdir}/manifest.json"], "timeout_s": 600})
    return calls


def travelling_bytes(repo: Path = ROOT) -> int | None:
    """Bytes of the working tree a device call sends besides what it carries (tracked + untracked files git
    does not ignore), or None where git cannot tell."""
    try:
        r = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                           check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(p.stat().st_size for n in r.stdout.split(b"\0") if n and (p := repo / n.decode()).is_file())


# ----------------------------------------------------------------------------------------------- download
def download(reqs: list[str], dest: Path, python: str) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "-d", str(dest), "-q"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    log.info("downloading %d wheels for CPython %s into %s", len(reqs), python, dest)
    r = subprocess.run(cmd + reqs, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise click.ClickException(f"pip download into {dest} failed ({last}); check that PyPI is reachable, "
                                   "or stage from wheels already there with --no-download")
    return find_wheels(dest, reqs)


def find_wheels(folder: Path, reqs: list[str]) -> list[Path]:
    """The one wheel in ``folder`` for each ``name==version`` requirement (pip's normalised file names)."""
    out = []
    for req in reqs:
        name, _, version = req.partition("==")
        stem = re.sub(r"[-_.]+", "_", name).lower()
        hits = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
        if len(hits) != 1:
            raise click.ClickException(f"{folder}: expected one wheel for {req}, found {len(hits)} "
                                       f"({[h.name for h in hits]}); run without --no-download to fetch it")
        out.append(hits[0])
    return out


def plot(rows: list[dict], summary: dict, path: str) -> None:
    """Stacked MiB per wheel group, as downloaded and as staged, with the part boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {"DALI": "nvidia_dali", "nvImageCodec": "nvidia_nvimgcodec", "nvJPEG": "nvidia_nvjpeg"}

    def group(name: str) -> str:
        return next((g for g, p in groups.items() if name.startswith(p)), "others")

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    labels = [f"downloaded\n{summary['parts_without_repack']} parts", f"staged\n{summary['parts']} parts"]
    bottom = [0.0, 0.0]
    for g, colour in zip([*groups, "others"], ["#2a7", "#47b", "#cc4", "#999"]):
        vals = [sum(r[key] for r in rows if group(r["wheel"]) == g) / MIB for key in ("bytes", "staged_bytes")]
        ax.bar(labels, vals, bottom=bottom, color=colour, label=g, width=0.5)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for k in range(1, max(summary["parts"], summary["parts_without_repack"]) + 1):
        ax.axhline(k * summary["part_mib"], color="#c33", lw=0.6, ls="--")
    for x, key in enumerate(("downloaded_bytes", "staged_bytes")):
        ax.text(x, summary[key] / MIB, f"{summary[key] / MIB:.1f} MiB", ha="center", va="bottom")
    ax.set_ylabel(f"MiB (dashed: {summary['part_mib']:g} MiB parts)")
    ax.set_title("GPU host wheels: as downloaded vs repacked (LZMA, other-Python builds dropped)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------------------------- CLI
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default=".gpu-stage", show_default=True, type=click.Path(file_okay=False),
              help="staging folder (git-ignored): download/, repacked/, parts/")
@click.option("--python", "python", default="3.12", show_default=True, help="the GPU host's CPython version")
@click.option("--repack/--no-repack", default=True, show_default=True,
              help="drop other Pythons' builds and unstaged codec extensions from DALI / nvImageCodec, recompress")
@click.option("--compression", type=click.Choice(sorted(COMPRESSION)), default="lzma", show_default=True)
@click.option("--nvcomp/--no-nvcomp", default=False, show_default=True,
              help=f"also stage {NVCOMP} (declared by DALI; JPEG decoding does not load it)")
@click.option("--part-mib", default=55.0, show_default=True, help="largest part, MiB (a call carries <= 64 MiB)")
@click.option("--download/--no-download", "do_download", default=True, show_default=True,
              help="--no-download reuses the wheels already in OUT/download")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="write sizes, part counts and timings as JSON here (e.g. bench/results/gpu/staging.json)")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="bar chart of the sizes, as downloaded and as staged (PNG)")
def main(out, python, repack, compression, nvcomp, part_mib, do_download, report, plot_path):
    """Download, repack and split the GPU host's wheels; print the device calls."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from tqdm import tqdm

    out = Path(out)
    reqs = list(WHEELS) + ([NVCOMP] if nvcomp else [])
    t0 = time.perf_counter()
    wheels = download(reqs, out / "download", python) if do_download else find_wheels(out / "download", reqs)
    t_download = time.perf_counter() - t0
    staged, rows = [], []
    t0 = time.perf_counter()
    for w in tqdm(wheels, desc="repack" if repack else "hash", unit="wheel"):
        row = {"wheel": w.name, "bytes": w.stat().st_size}
        prefix = next((p for p in REPACK if w.name.startswith(p + "_") or w.name.startswith(p + "-")), None)
        if repack and prefix:
            row["repacked"] = repacked(w, out / "repacked", python=python, drop=DROP.get(prefix, ()),
                                       compression=compression)
            w = out / "repacked" / w.name
        row["sha256"], row["staged_bytes"] = sha256_file(None, str(w))
        staged.append(w)
        rows.append(row)
    t_repack = time.perf_counter() - t0
    part_bytes = int(part_mib * MIB)
    split = split_bundle(staged, out / "parts", part_bytes)
    manifest = {"python": python, "platforms": list(PLATFORMS), "requirements": reqs, "compression":
                compression if repack else None, "wheels": rows, **split}
    atomic_write_json(out / "parts" / "manifest.json", manifest)
    try:  # the device tool carries paths relative to the checkout, and only git-ignored ones stay between calls
        stage = out.resolve().relative_to(ROOT).as_posix()
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{stage}/parts/x"], cwd=ROOT,
                                 check=False).returncode == 0
    except (ValueError, OSError):
        stage, ignored = out.as_posix(), False
    if not ignored:
        click.echo(f"WARNING: {out} is not a git-ignored folder of this checkout ({ROOT}): the device calls below "
                   "cannot carry its parts from there; use the default --out .gpu-stage", err=True)
    calls = device_calls(split["parts"], stage=stage)
    plain = [r["bytes"] for r in rows]
    summary = {
        "part_mib": part_mib, "wheels": len(rows),
        "downloaded_bytes": sum(plain), "staged_bytes": sum(r["staged_bytes"] for r in rows),
        "parts": len(split["parts"]), "part_bytes": [p["bytes"] for p in split["parts"]],
        "parts_without_repack": math.ceil(tar_bytes(plain) / part_bytes),
        "seconds": {"download": round(t_download, 1), "repack_and_hash_this_run": round(t_repack, 1),
                    "repack": round(sum(r.get("repacked", {}).get("seconds", 0.0) for r in rows), 1)},
    }
    click.echo(f"staged {len(rows)} wheels: {summary['downloaded_bytes'] / MIB:.1f} MiB downloaded, "
               f"{summary['staged_bytes'] / MIB:.1f} MiB staged -> {len(split['parts'])} parts of <= {part_mib:g} "
               f"MiB in {out / 'parts'} (without repacking: {summary['parts_without_repack']} parts)")
    tree = travelling_bytes()
    if tree is not None and tree + max(p["bytes"] for p in split["parts"]) + 64 * 1024 > 64 * MIB:
        click.echo(f"WARNING: the working tree sends {tree / MIB:.1f} MiB with every call; with a part that is more "
                   f"than the 64 MiB a call carries: stage again with a smaller --part-mib", err=True)
    summary["tree_bytes"] = tree
    click.echo("Device calls, one after another (the machine stays warm 30 s after each; a cold one has none of "
               "the earlier parts, so start again from call 1):")
    for k, c in enumerate(calls, 1):
        click.echo(f"  {k}/{len(calls)}: " + json.dumps(c))
    click.echo("Then unpack the results: tar -xzf <files_at>/gpu_check.tgz -C bench/results/gpu")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(report, {**summary, "manifest": manifest, "device_calls": calls})
    if plot_path:
        plot(rows, summary, plot_path)
    return 0


if __name__ == "__main__":
    main()

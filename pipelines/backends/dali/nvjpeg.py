"""Which nvJPEG DALI's GPU decoders use, and the decode mode that is correct with it (issue 21, "Quiet").

DALI 2.4 decodes through nvImageCodec, whose nvJPEG extension ``dlopen``\\ s ``libnvjpeg.so.<CUDA major>`` by
name. Its RUNPATH names the nvJPEG wheel (``nvidia/cu13/lib`` beside ``nvidia/nvimgcodec``), but ``dlopen``
searches ``LD_LIBRARY_PATH`` *before* RUNPATH, and a library with that SONAME already loaded in the process
(torchvision's nvJPEG decode, a CUDA toolkit on ``LD_LIBRARY_PATH``) is reused whatever its version. That is how
the 2026-12-04 H200 run staged nvJPEG 13.3 yet got an older one: nvImageCodec's nvJPEG extension then prints
"ROI decode with fancy upsampling may produce wrong results on image edge ... with nvJPEG < 13.2" for *every*
ROI-decoded frame, once per decoder (hardware and CUDA), i.e. twice per frame.

So, before the first GPU graph is built: :func:`prepare` loads the nvJPEG next to nvImageCodec by absolute path
(unless one is loaded already), reads the version of the one that is in the process now, and
:func:`choose_decode` picks ROI decode only where it is correct (``MIN_ROI_FANCY``), full-frame decode + GPU
crop/resize otherwise. With that choice made, nvImageCodec's remaining warnings are performance notes, so its log
level is set to errors only (``DALI_NVIMGCODEC_LOG_LEVEL=1``, unless the user set the variable: 2 shows them),
and the loader logs one line naming the choice.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: nvImageCodec 0.9 decodes a ROI with fancy upsampling right at the image edge only with nvJPEG >= 13.2.
MIN_ROI_FANCY = (13, 2)
LOG_ENV = "DALI_NVIMGCODEC_LOG_LEVEL"


@dataclass(frozen=True)
class Nvjpeg:
    """The nvJPEG in (or about to be in) this process: its file, version ``(major, minor, patch)`` (``None`` if
    unknown) and whether :func:`prepare` loaded it."""

    path: str | None
    version: tuple[int, int, int] | None
    preloaded: bool = False

    def describe(self) -> str:
        if self.path is None:
            return "nvJPEG not found"
        v = ".".join(map(str, self.version)) if self.version else "version unknown"
        return f"nvJPEG {v} ({self.path}{', preloaded' if self.preloaded else ''})"


def loaded_nvjpeg(maps: str = "/proc/self/maps") -> str | None:
    """The libnvjpeg file mapped into this process, if any (the one every later ``dlopen`` by SONAME gets)."""
    try:
        with open(maps) as f:
            for line in f:
                path = line.split(None, 5)[-1].strip()
                if re.search(r"/libnvjpeg[^/]*\.so", path):
                    return path
    except OSError:
        return None
    return None


def nvjpeg_version(path: str) -> tuple[int, int, int] | None:
    """``nvjpegGetProperty`` (major, minor, patch) of the library at ``path`` (needs no GPU); ``None`` if it
    cannot be loaded."""
    try:
        lib = ctypes.CDLL(path)
        out = []
        for prop in range(3):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            x = ctypes.c_int()
            if lib.nvjpegGetProperty(prop, ctypes.byref(x)) != 0:
                return None
            out.append(x.value)
    except (OSError, AttributeError):
        return None
    return tuple(out)


def wanted_by_nvimgcodec() -> list[Path]:
    """The nvJPEG files nvImageCodec's extension would find through its RUNPATH, the SONAME it asks for first
    (``libnvjpeg.so.13`` for the cu13 build, ``.12`` for cu12)."""
    try:
        import nvidia.nvimgcodec as nic  # noqa: PLC0415
    except ImportError:
        return []
    base = Path(next(iter(nic.__path__)))
    ext = sorted((base / "extensions").glob("libnvjpeg_ext.so*"))
    majors = ["13", "12"]
    if ext:
        data = ext[0].read_bytes()
        majors = [m for m in ("13", "12") if b"libnvjpeg.so." + m.encode() in data] or majors
    dirs = [base.parent / "cu13" / "lib", base.parent / "nvjpeg" / "lib"]
    return [d / f"libnvjpeg.so.{m}" for m in majors for d in dirs if (d / f"libnvjpeg.so.{m}").exists()]


def prepare() -> Nvjpeg:
    """Make the nvJPEG next to nvImageCodec the one DALI gets (unless one is loaded already) and say which it is.
    Also sets nvImageCodec's log level to errors only unless the user chose one (see the module docstring)."""
    os.environ.setdefault(LOG_ENV, "1")
    path = loaded_nvjpeg()
    if path is not None:
        return Nvjpeg(path, nvjpeg_version(path))
    for cand in wanted_by_nvimgcodec():
        try:
            ctypes.CDLL(str(cand), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        return Nvjpeg(str(cand), nvjpeg_version(str(cand)), preloaded=True)
    return Nvjpeg(None, None)


def choose_decode(decode: str, gpu: bool, nvjpeg: Nvjpeg | None) -> str:
    """``"roi"`` or ``"full"`` for the requested ``decode`` (``"auto"``, ``"roi"``, ``"full"``).

    On the CPU (libjpeg-turbo) ROI decode is exact: ``auto`` is ``roi``. On a GPU, ROI decode with fancy
    upsampling (which the pixels need, to match libjpeg-turbo) is wrong at the image edge with nvJPEG older
    than :data:`MIN_ROI_FANCY`: ``auto`` is then ``full`` and an explicit ``roi`` is a ValueError."""
    if decode not in ("auto", "roi", "full"):
        raise ValueError(f"dali backend: decode must be auto, roi or full, got {decode!r}")
    if not gpu or decode == "full":
        return "roi" if decode == "auto" else decode
    ok = nvjpeg is not None and nvjpeg.version is not None and nvjpeg.version[:2] >= MIN_ROI_FANCY
    if decode == "roi" and not ok:
        raise ValueError(f"dali backend: decode='roi' on the GPU needs nvJPEG >= {MIN_ROI_FANCY[0]}."
                         f"{MIN_ROI_FANCY[1]} (ROI + fancy upsampling is wrong at image edges before), this process"
                         f" has {nvjpeg.describe() if nvjpeg else 'none'}: use decode='full' or 'auto'")
    return "roi" if ok else "full"

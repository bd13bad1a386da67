"""tools/stage_gpu_wheels.py + bench/gpu_check.sh's stage step: wheels repacked, cut into parts with sha256s,
reassembled, verified and installed the way the GPU host does it (``sha256sum``, ``tar``, ``pip --target``), on
small generated wheels (no download)."""
from __future__ import annotations

import base64
import hashlib
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tools.stage_gpu_wheels import (BUNDLE, device_calls, other_python_build, repack_wheel, split_bundle,
                                    tar_bytes)

ROOT = Path(__file__).resolve().parent.parent
SO = "-x86_64-linux-gnu.so"


def make_wheel(folder: Path, name: str, files: dict[str, bytes], *, method=zipfile.ZIP_DEFLATED) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD with sha256s), .so members executable."""
    dist = f"{name}-1.0.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n"}
    rec = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rec.append(f"{path},sha256={digest},{len(data)}\n")
    rec.append(f"{dist}/RECORD,,\n")
    whl = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", compression=method) as z:
        for path, data in [*files.items(), (f"{dist}/RECORD", "".join(rec).encode())]:
            zi = zipfile.ZipInfo(path, (2024, 1, 2, 3, 4, 6))
            zi.compress_type = method
            zi.external_attr = (0o100755 if path.endswith(".so") or ".so." in path else 0o100644) << 16
            z.writestr(zi, data)
    return whl


def _noise(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _lib(n: int, seed: int) -> bytes:  # compressible like a shared library: repeated blocks plus some noise
    return (_noise(512, seed) * (n // 1024)) + _noise(n - 512 * (n // 1024), seed + 1)


def _stage(stage: Path, tmp: Path, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, STEPS="stage", STAGE=str(stage), PY=sys.executable, RESULTS=str(tmp / "results"), **env)
    e.pop("OUT", None)
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=120, check=False)


def test_other_python_builds_are_recognised():
    assert other_python_build(f"nvidia/dali/backend_impl.cpython-311{SO}", "3.12")
    assert other_python_build(f"nvidia/dali/backend_impl.cpython-312t{SO}", "3.12")  # free-threaded ABI
    assert other_python_build(f"nvidia/nvimgcodec/nvimgcodec_impl.cpython-39{SO}", "3.12")
    assert not other_python_build(f"nvidia/dali/backend_impl.cpython-312{SO}", "3.12")
    assert not other_python_build("nvidia/dali/libdali_operators.so", "3.12")
    assert other_python_build(f"x/m.cpython-312{SO}", "3.11") and not other_python_build(f"x/m.cpython-310{SO}", "3.10")


def test_repack_drops_other_pythons_and_recompresses(tmp_path):
    files = {"pkg/__init__.py": b"VALUE = 42\n", f"pkg/_impl.cpython-312{SO}": _lib(60_000, 1),
             f"pkg/_impl.cpython-311{SO}": _lib(50_000, 2), f"pkg/_impl.cpython-313t{SO}": _lib(40_000, 3),
             "pkg/ext/libfoo_ext.so.0.9.0": _lib(30_000, 4), "pkg/ext/libbar_ext.so.0.9.0": _lib(20_000, 5)}
    src = make_wheel(tmp_path, "pkg", files)
    (tmp_path / "out").mkdir()
    info = repack_wheel(src, tmp_path / "out" / src.name, python="3.12", drop=("pkg/ext/libfoo_ext.so*",))
    gone = [f"pkg/_impl.cpython-311{SO}", f"pkg/_impl.cpython-313t{SO}", "pkg/ext/libfoo_ext.so.0.9.0"]
    assert info["dropped"] == sorted(gone)
    assert info["dropped_bytes"] == sum(len(files[g]) for g in gone)
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(tmp_path / "out" / src.name) as b:
        kept = [i.filename for i in a.infolist() if i.filename not in gone]
        assert [i.filename for i in b.infolist()] == kept  # same order, nothing else
        assert {i.compress_type for i in b.infolist()} == {zipfile.ZIP_LZMA}
        for i in b.infolist():
            orig = a.getinfo(i.filename)
            assert i.external_attr == orig.external_attr and i.date_time == orig.date_time
            if not i.filename.endswith("RECORD"):
                assert b.read(i) == a.read(orig)
        record = b.read("pkg-1.0.dist-info/RECORD").decode().splitlines()
        assert [r.split(",")[0] for r in record] == kept
        assert set(record) <= set(a.read("pkg-1.0.dist-info/RECORD").decode().splitlines())
    assert info["bytes_out"] < 0.6 * info["bytes_in"]  # dropped a third of the bytes, and LZMA beats deflate


def test_split_reassemble_verify_install_round_trip(tmp_path):
    """Parts of <= part_bytes whose sums and joined tar match; gpu_check.sh's stage step reassembles them with
    sha256sum + tar and pip-installs every wheel (an LZMA-repacked one included) into STAGE/site."""
    src = tmp_path / "src"
    src.mkdir()
    a = make_wheel(src, "alpha", {"alpha/__init__.py": b"A = 1\n", "alpha/blob.bin": _noise(9_000, 7)})
    b0 = make_wheel(src, "beta", {"beta/__init__.py": b"B = 2\n", f"beta/_x.cpython-311{SO}": _lib(20_000, 8),
                                  "beta/lib.so.1": _lib(12_000, 9)})
    (src / "re").mkdir()
    repack_wheel(b0, src / "re" / b0.name, python="3.12")
    files = [a, src / "re" / b0.name]
    stage = tmp_path / "stage"
    part_bytes = 4096
    got = split_bundle(files, stage / "parts", part_bytes)
    parts = got["parts"]
    size = tar_bytes([f.stat().st_size for f in files])
    assert got["bundle"]["bytes"] == size and len(parts) == math.ceil(size / part_bytes) >= 3
    assert all(p["bytes"] == part_bytes for p in parts[:-1]) and 0 < parts[-1]["bytes"] <= part_bytes
    joined = b"".join((stage / "parts" / p["name"]).read_bytes() for p in parts)
    assert hashlib.sha256(joined).hexdigest() == got["bundle"]["sha256"]
    sums = (stage / "parts" / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{hashlib.sha256((stage / 'parts' / p['name']).read_bytes()).hexdigest()}  {p['name']}"
                    for p in parts]
    assert (stage / "parts" / "BUNDLE.sha256").read_text() == f"{got['bundle']['sha256']}  {BUNDLE}\n"
    again = split_bundle(files, tmp_path / "again", part_bytes)  # deterministic: same bytes, same sums
    assert again == got

    r = _stage(stage, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    site = stage / "site"
    assert (site / "alpha" / "blob.bin").read_bytes() == _noise(9_000, 7)
    assert (site / "beta" / "lib.so.1").read_bytes() == _lib(12_000, 9)
    assert not (site / "beta" / f"_x.cpython-311{SO}").exists()  # dropped by the repack
    assert os.access(site / "beta" / "lib.so.1", os.X_OK)
    assert (site / ".bundle").read_text().strip() == got["bundle"]["sha256"]
    assert sorted(p.name for p in (stage / "wheels").iterdir()) == sorted(f.name for f in files)
    assert not (stage / BUNDLE).exists()
    assert "rc=0" in (tmp_path / "results" / "summary.txt").read_text()
    r2 = _stage(stage, tmp_path)  # same tar again: the install is reused
    assert r2.returncode == 0 and "already holds" in r2.stdout


@pytest.mark.parametrize("how", ["corrupt", "missing", "other_run", "other_python"])
def test_bad_parts_are_refused_before_anything_is_installed(tmp_path, how):
    src = tmp_path / "src"
    src.mkdir()
    w = make_wheel(src, "gamma", {"gamma/__init__.py": b"G = 3\n", "gamma/blob.bin": _noise(10_000, 11)})
    stage = tmp_path / "stage"
    got = split_bundle([w], stage / "parts", 4096)
    p2 = stage / "parts" / got["parts"][1]["name"]
    if how == "corrupt":
        data = bytearray(p2.read_bytes())
        data[100] ^= 0x01
        p2.write_bytes(bytes(data))
        want = f"{p2.name}: FAILED"
    elif how == "missing":
        p2.unlink()
        want = p2.name
    elif how == "other_run":  # every part intact, but the tar sum is another staging run's
        (stage / "parts" / "BUNDLE.sha256").write_text(f"{'0' * 64}  {BUNDLE}\n")
        want = "different staging runs"
    else:  # staged for another CPython than the one that would install them
        (stage / "parts" / "manifest.json").write_text('{"python": "2.7"}')
        want = f"staged for CPython 2.7, this host runs {sys.version_info[0]}.{sys.version_info[1]}"
    r = _stage(stage, tmp_path)
    assert r.returncode != 0
    assert want in r.stdout + r.stderr
    assert not (stage / "site").exists() and not (stage / BUNDLE).exists()
    assert "stage rc=1" in (tmp_path / "results" / "summary.txt").read_text()


def test_device_calls_carry_one_part_each_and_end_with_the_check():
    parts = [{"name": f"{BUNDLE}.part{k:02d}", "sha256": "0" * 64, "bytes": 1} for k in (1, 2, 3)]
    calls = device_calls(parts, stage=".gpu-stage")
    assert len(calls) == 3
    for k, c in enumerate(calls, 1):
        carried = [p for p in c["carry"] if ".part" in p]
        assert carried == [f".gpu-stage/parts/{BUNDLE}.part{k:02d}"] and ".gpu-stage/parts/SHA256SUMS" in c["carry"]
    assert all("sha256sum" in c["command"] and "/3" in c["command"] for c in calls[:-1])
    assert calls[-1]["command"] == "bash bench/gpu_check.sh" and calls[-1]["timeout_s"] == 600
    assert ".gpu-stage/parts/BUNDLE.sha256" in calls[-1]["carry"]

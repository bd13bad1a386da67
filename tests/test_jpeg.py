"""The one JPEG validity rule (pipelines.decode.jpeg) and the copies that must agree with it: DALI's pre-check and
the numba kernel of the FFCV decoder, on the same good and bad inputs."""
from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.decode import jpeg


def _jpeg(w=40, h=30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


GOOD = _jpeg()
CASES = {
    "good": GOOD,
    "zero padding after EOI": GOOD + b"\0\0\0",
    "truncated": GOOD[: len(GOOD) // 2],
    "last byte cut": GOOD[:-1],
    "garbage after EOI": GOOD + b"\x12\x34",
    "EOI only inside the last KiB": GOOD + bytes(range(1, 200)),
    "empty": b"",
    "not a JPEG": b"GIF89a" + bytes(40),
}
VALID = {"good", "zero padding after EOI"}


def _rule(b: bytes) -> bool:
    try:
        jpeg.jpeg_size(b)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_rule(name):
    assert _rule(CASES[name]) == (name in VALID)
    if name in VALID:
        assert jpeg.jpeg_size(CASES[name]) == (30, 40) == jpeg.JpegChecker()(CASES[name])


@pytest.mark.skipif(importlib.util.find_spec("simplejpeg") is None, reason="simplejpeg missing")
@pytest.mark.parametrize("name", sorted(CASES))
def test_dali_precheck_agrees(name):
    from pipelines.backends.dali.loader import precheck_jpeg

    data = np.frombuffer(CASES[name], np.uint8) if CASES[name] else np.zeros(0, np.uint8)
    verdict = precheck_jpeg(data, (30, 40))
    assert (verdict is None) == (name in VALID), verdict


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba (the ffcv extra) is not installed")
@pytest.mark.parametrize("name", sorted(CASES))
def test_ffcv_kernel_agrees(name):
    from pipelines.backends.ffcv import kernels as K

    data = np.frombuffer(CASES[name], np.uint8).copy() if CASES[name] else np.zeros(0, np.uint8)
    hh, ww = K.jpeg_size(data) if len(data) else (-1, -1)
    ok = hh > 0 and K.has_eoi(data)
    assert bool(ok) == (name in VALID)

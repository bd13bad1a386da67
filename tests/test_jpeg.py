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


def _corpus() -> dict[str, bytes]:
    """The named cases plus every cut of the header and one-byte changes of each header byte (deterministic):
    where the marker walk can go wrong, so the compiled mirror is checked against the rule there too."""
    out = dict(CASES)
    sos = GOOD.index(b"\xff\xda")
    for k in range(0, sos + 8):
        out[f"cut at {k}"] = GOOD[:k] + b"\xff\xd9"
    for k in range(2, sos + 4):
        for v in (0x00, 0xFF, GOOD[k] ^ 0x01):
            out[f"byte {k} = {v}"] = GOOD[:k] + bytes([v]) + GOOD[k + 1:]
    return out


CORPUS = _corpus()


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
def test_ffcv_kernel_agrees():
    """The numba mirror gives the rule's verdict and size on every input of the corpus."""
    from pipelines.backends.ffcv import kernels as K

    assert len(CORPUS) > 500
    verdicts = set()
    for name, b in CORPUS.items():
        data = np.frombuffer(b, np.uint8).copy() if b else np.zeros(0, np.uint8)
        hh, ww = K.jpeg_size(data) if len(data) else (-1, -1)
        ok = hh > 0 and ww > 0 and K.has_eoi(data)
        want = jpeg.problem(b) is None
        assert bool(ok) == want, name
        if want:
            assert (hh, ww) == jpeg.jpeg_size(b), name
        verdicts.add(want)
    assert verdicts == {True, False}


@pytest.mark.parametrize("name", sorted(CASES))
def test_problem_names_the_size(name):
    got = jpeg.problem(CASES[name], (30, 40))
    assert (got is None) == (name in VALID)
    if name in VALID:
        assert jpeg.problem(CASES[name], (30, 41)) == "JPEG header says 40x30, the shard says 41x30"

"""The one JPEG validity rule (converter, loaders and ``verify`` alike): SOI at the start, EOI at the end
(trailing zero padding tolerated), a frame header giving the size. Every check calls it: the converter and
``verify`` (:class:`JpegChecker`), the torch decode (:func:`check_eoi` before libjpeg-turbo's strict decode), DALI's
pre-check (:func:`problem`). The numba copy in :mod:`pipelines.backends.ffcv.kernels` is a compiled mirror (numba
cannot call Python), tested equal to it on the same corpus.

* :func:`jpeg_size` -- (height, width) from a JPEG's SOF header; checks SOI/EOI so truncation is caught.
* :class:`JpegChecker` -- the same with a one-entry cache of the last header prefix (frames of one encoder).
* :func:`problem` -- why bytes are not a good frame of a given size (None when they are).
"""
from __future__ import annotations

import threading

import numpy as np

_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def jpeg_size(b) -> tuple[int, int]:
    """(height, width) from the SOF header of JPEG bytes ``b`` (bytes/memoryview/uint8 array).

    Raises ValueError with a short problem description: empty, not a JPEG (no SOI), truncated (no EOI at the
    end; trailing zero padding is tolerated), no frame header, corrupt marker structure.
    """
    h, w, _ = jpeg_header(b)
    return h, w


def check_eoi(b) -> None:
    """Raise ValueError unless ``b`` ends with the EOI marker (trailing zero padding tolerated)."""
    if isinstance(b, np.ndarray):
        b = memoryview(np.ascontiguousarray(b, dtype=np.uint8))
    e = len(b)
    while e > 4 and b[e - 1] == 0:
        e -= 1
    if e < 4 or b[e - 2] != 0xFF or b[e - 1] != 0xD9:
        raise ValueError("truncated JPEG (no EOI marker at the end)")


def jpeg_header(b) -> tuple[int, int, int]:
    """``(height, width, end)`` where ``b[:end]`` is everything up to the SOF size fields (see jpeg_size).

    Two JPEGs whose first ``end`` bytes are equal have the same size; :class:`JpegChecker` uses that to skip
    the marker walk for frames written by the same encoder.
    """
    if isinstance(b, np.ndarray):
        b = memoryview(np.ascontiguousarray(b, dtype=np.uint8))
    n = len(b)
    if n == 0:
        raise ValueError("zero-byte file")
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        raise ValueError("not a JPEG (no SOI marker at the start)")
    check_eoi(b)
    i = 2
    while i < n:
        if b[i] != 0xFF:
            raise ValueError(f"corrupt JPEG (no marker at byte {i})")
        while i < n and b[i] == 0xFF:
            i += 1
        if i >= n:
            break
        m = b[i]
        i += 1
        if m == 0x01 or 0xD0 <= m <= 0xD8:
            continue
        if m in (0xD9, 0xDA):
            break
        if i + 2 > n:
            break
        length = (b[i] << 8) | b[i + 1]
        if m in _SOF:
            if i + 7 > n:
                break
            h = (b[i + 3] << 8) | b[i + 4]
            w = (b[i + 5] << 8) | b[i + 6]
            if h == 0 or w == 0:
                raise ValueError(f"JPEG frame header gives size {w}x{h}")
            return h, w, i + 7
        if length < 2:
            raise ValueError(f"corrupt JPEG (segment length {length} at byte {i})")
        i += length
    raise ValueError("corrupt JPEG (no frame header before the image data)")


class JpegChecker:
    """:func:`jpeg_size` with a one-entry cache of the last header prefix (same encoder -> no marker walk).

    The result is always what :func:`jpeg_size` returns: a frame whose bytes up to the SOF size fields equal
    the cached prefix has, by construction, the same walk and the same size; its EOI is still checked.
    """

    def __init__(self) -> None:
        self.prefix = b""
        self.hw = (0, 0)

    def __call__(self, b) -> tuple[int, int]:
        if isinstance(b, np.ndarray):
            b = memoryview(np.ascontiguousarray(b, dtype=np.uint8))
        k = len(self.prefix)
        if k and len(b) > k + 2 and b[:k] == self.prefix:
            check_eoi(b)
            return self.hw
        h, w, end = jpeg_header(b)
        self.prefix, self.hw = bytes(b[:end]), (h, w)
        return h, w


_LOCAL = threading.local()


def problem(b, size: tuple[int, int] | None = None) -> str | None:
    """Why the JPEG bytes ``b`` break the rule, or are not ``size`` = (height, width) when given; None when they
    are a good frame. Uses one :class:`JpegChecker` per thread (frames of one encoder skip the marker walk)."""
    check = getattr(_LOCAL, "check", None)
    if check is None:
        check = _LOCAL.check = JpegChecker()
    try:
        hw = check(b)
    except ValueError as e:
        return str(e)
    if size is not None and hw != tuple(size):
        return f"JPEG header says {hw[1]}x{hw[0]}, the shard says {size[1]}x{size[0]}"
    return None

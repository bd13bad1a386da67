"""Where prediction frames come from: video files, frame folders, shard splits and live streams.

:func:`open_inputs` turns one command-line INPUT into :class:`Source` objects. A source's :meth:`Source.frames`
yields :class:`Frame` objects in presentation order; pixels are decoded only when asked
(:meth:`Frame.rgb`), so a window sampler touches only the frames it samples.

* a video file (any container/codec PyAV's FFmpeg decodes: .mp4 H.264, .webm VP9, .avi, ...): times are the
  frames' presentation times from the first frame (:func:`pipelines.ingest.video.decode_timed`). A file that
  stops decoding early (a decode error, or fewer frames / a shorter duration than the container declares) gives
  the frames that decoded and sets :attr:`Source.stopped` to one line naming the file and the time it stopped;
* a folder of frames (.jpg/.jpeg/.png, sorted by name): frame ``i`` at ``i / fps``;
* a shard split ``DATA:split``: every clip of the split, one source each (``DATA:split/<key>``), frames at
  ``fps`` (only the sampled JPEGs are decoded);
* a live source -- ``/dev/videoN`` (V4L2), ``rtsp://`` / ``http(s)://`` URLs, a FIFO or ``-`` (stdin) -- read
  as frames arrive. A stream that fails to open or drops is reopened after 0.5, 1, 2, 4, ... s (at most
  ``max_backoff``), ``reconnect`` times in a row at most, then the source stops with one line saying so. A
  FIFO or stdin whose writer closes simply ends.

The end time :attr:`Source.end_s` (when the last frame stops showing) is known once :meth:`frames` is exhausted.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from pipelines.errors import DataError, SourceError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
DEFAULT_FPS = 12.0  # frame folders and shards carry no rate: Jester's and SSv2's frame rate unless --fps


@dataclass
class Frame:
    """One frame: ``t`` seconds from the source's start, ``arrival`` (``time.perf_counter()`` when it was read),
    ``index`` (0-based, over the whole source) and a function decoding it to uint8 RGB ``(H, W, 3)``."""

    t: float
    index: int
    decode: Callable[[], np.ndarray]
    arrival: float = field(default_factory=time.perf_counter)
    dur: float = 0.0  # how long it shows (0: unknown; then the next frame completes the window it ends)

    def rgb(self) -> np.ndarray:
        return self.decode()


class Source:
    """A stream of frames. ``live``: frames arrive in real time (predict each window as soon as it completes)."""

    live = False

    def __init__(self, name: str):
        self.name = name
        self.end_s: float | None = None
        self.stopped: str | None = None  # one line: the source ended early (truncated file, stream gave up)

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError


class VideoFile(Source):
    """A video file decoded by PyAV, in presentation order."""

    def frames(self) -> Iterator[Frame]:
        from pipelines.ingest.video import decode_timed

        n, t = 0, 0.0
        try:
            for sec, f in decode_timed(self.name):
                if f is None:
                    self.end_s = float(sec)
                    return
                t = float(sec)
                yield Frame(t, n, _rgb_of(f), dur=_duration(f))
                n += 1
        except DataError as e:
            if n == 0:
                raise SourceError(str(e)) from None
            self.stopped = f"{e}; predicted up to {t:.3f} s, where decoding stopped"
            self.end_s = t


class FrameFolder(Source):
    """Image files of one folder, sorted by name, at ``fps``."""

    def __init__(self, name: str, fps: float):
        super().__init__(name)
        self.fps = float(fps)

    def frames(self) -> Iterator[Frame]:
        files = sorted(e.name for e in os.scandir(self.name) if e.name.lower().endswith(IMAGE_EXTS) and e.is_file())
        if not files:
            raise SourceError(f"{self.name}: no frames ({'/'.join(IMAGE_EXTS)} files) in this folder")
        for i, fn in enumerate(files):
            yield Frame(i / self.fps, i, _image_file(os.path.join(self.name, fn)), dur=1 / self.fps)
        self.end_s = len(files) / self.fps


class ShardClip(Source):
    """One clip of a shard split; its JPEG frames at ``fps``."""

    def __init__(self, name: str, ds, row: int, num_frames: int, fps: float):
        super().__init__(name)
        self.ds, self.row, self.n, self.fps = ds, row, int(num_frames), float(fps)

    def frames(self) -> Iterator[Frame]:
        for i in range(self.n):
            yield Frame(i / self.fps, i, _jpeg_frame(self.ds, self.row, i, self.name), dur=1 / self.fps)
        self.end_s = self.n / self.fps


class LiveStream(Source):
    """A webcam, network stream, FIFO or stdin, decoded by PyAV as data arrives; reconnects with backoff."""

    live = True

    def __init__(self, name: str, *, reconnect: int = 5, backoff: float = 0.5, max_backoff: float = 8.0,
                 timeout: float = 10.0):
        super().__init__(name)
        self.reconnect, self.backoff, self.max_backoff, self.timeout = int(reconnect), backoff, max_backoff, timeout
        self.ends_at_eof = name == "-" or _is_fifo(name)
        self.reconnects = 0  # how many times the stream was reopened

    def _open(self):
        import av

        opts = {"probesize": "32768", "analyzeduration": "0"}  # start on the first packets (no fflags=nobuffer: it loses frames)
        if self.name == "-":
            import sys
            return av.open(sys.stdin.buffer, "r", options=opts)
        fmt = None
        if self.name.startswith("/dev/video"):
            fmt = "v4l2"
        elif self.name.startswith("rtsp://"):
            opts["rtsp_transport"] = "tcp"
        return av.open(self.name, "r", format=fmt, options=opts, timeout=(self.timeout, self.timeout))

    def frames(self) -> Iterator[Frame]:
        import av

        fails, offset, last_t, n = 0, 0.0, None, 0
        lost_at = None
        while True:
            why = None
            try:
                c = self._open()
            except (av.error.FFmpegError, OSError) as e:
                why = getattr(e, "strerror", None) or str(e)
            else:
                try:
                    if not c.streams.video:
                        raise SourceError(f"{self.name}: has no video stream")
                    s = c.streams.video[0]
                    tb, first = s.time_base, None
                    if last_t is not None:  # after a drop: the stream's clock restarts; keep ours going
                        offset = last_t + max(time.perf_counter() - lost_at, 1e-3)
                    for f in c.decode(s):
                        now = time.perf_counter()
                        if f.pts is not None and tb:
                            sec = float(f.pts * tb)
                            first = sec if first is None else first
                            t = offset + sec - first
                        else:
                            first = now if first is None else first
                            t = offset + now - first
                        if last_t is not None and t <= last_t:
                            t = last_t + 1e-6
                        # shown until the next frame: its own duration, else the last interval seen
                        dur = _duration(f) or (t - last_t if last_t is not None else 0.0)
                        fails, last_t = 0, t
                        yield Frame(t, n, _rgb_of(f), now, dur)
                        n += 1
                    if self.ends_at_eof:
                        self.end_s = last_t
                        return
                    why = "the stream ended"
                except av.error.FFmpegError as e:
                    why = getattr(e, "strerror", None) or str(e)
                finally:
                    c.close()
            lost_at = time.perf_counter()
            fails += 1
            if fails > self.reconnect:
                self.stopped = (f"{self.name}: stream lost ({why}); gave up after {self.reconnect} reconnect "
                                f"attempt(s) with backoff")
                self.end_s = last_t
                return
            wait = min(self.backoff * 2 ** (fails - 1), self.max_backoff)
            log.warning("%s: %s; reconnecting in %.1f s (%d/%d)", self.name, why, wait, fails, self.reconnect)
            self.reconnects += 1
            time.sleep(wait)


def _rgb_of(f) -> Callable[[], np.ndarray]:
    return lambda: f.to_ndarray(format="rgb24")


def _duration(f) -> float:
    return float(f.duration * f.time_base) if f.duration and f.time_base else 0.0


def _image_file(path: str) -> Callable[[], np.ndarray]:
    def decode():
        from PIL import Image, UnidentifiedImageError

        try:
            if path.lower().endswith(".png"):
                with Image.open(path) as im:
                    return np.asarray(im.convert("RGB"))
            from pipelines.decode.frames import decode_jpeg

            with open(path, "rb") as fh:
                return decode_jpeg(fh.read())
        except (OSError, ValueError, UnidentifiedImageError) as e:
            raise SourceError(f"{path}: cannot decode this frame ({e})") from None
    return decode


def _jpeg_frame(ds, row: int, i: int, name: str) -> Callable[[], np.ndarray]:
    def decode():
        from pipelines.decode.frames import decode_jpeg

        try:
            return decode_jpeg(ds.frames(row, [i])[0])
        except ValueError as e:
            raise SourceError(f"{name}: frame {i}: corrupt JPEG ({e})") from None
    return decode


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


_SPLIT = re.compile(r"^(?P<data>.+):(?P<split>[A-Za-z0-9_-]+)$")
_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.I)


def is_live(spec: str, online: bool) -> bool:
    """Whether INPUT is read as a live stream: webcams and RTSP always; URLs, FIFOs and ``-`` with ``--online``."""
    if spec.startswith("/dev/video") or spec.lower().startswith(("rtsp://", "rtsps://")):
        return True
    return online and (spec == "-" or bool(_URL.match(spec)) or _is_fifo(spec))


def open_inputs(spec: str, *, fps: float | None = None, online: bool = False, reconnect: int = 5,
                backoff: float = 0.5) -> list[Source]:
    """The sources of one INPUT (a list: a shard split gives one per clip). SourceError (one line naming the
    input and the fix) when it is missing or of no known kind."""
    if is_live(spec, online):
        return [LiveStream(spec, reconnect=reconnect, backoff=backoff)]
    if _URL.match(spec):
        return [VideoFile(spec)]
    if os.path.isdir(spec):
        return [FrameFolder(spec, fps or _default_fps(spec))]
    if os.path.exists(spec):
        return [VideoFile(spec)]
    m = _SPLIT.match(spec)
    if m and not _URL.match(spec):
        return _shard_split(m["data"], m["split"], fps)
    raise SourceError(f"{spec}: no such file or folder (INPUT is a video file, a frame folder, DATA:split, "
                      f"/dev/videoN, an rtsp:// or http:// URL, or a FIFO with --online)")


def _default_fps(where: str) -> float:
    log.info("%s: no --fps given: frames taken at %.0f per second", where, DEFAULT_FPS)
    return DEFAULT_FPS


def _shard_split(data: str, split: str, fps: float | None) -> list[Source]:
    from pipelines.shards.reader import ShardDataset

    ds = ShardDataset(data, split)  # ShardError (a DataError) naming the manifest when it is not a split
    meta = ds.metadata()
    rate = fps or _default_fps(f"{data}:{split}")
    return [ShardClip(f"{data}:{split}/{k}", ds, i, int(n), rate)
            for i, (k, n) in enumerate(zip(meta["key"], meta["num_frames"]))]

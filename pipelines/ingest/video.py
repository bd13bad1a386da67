"""Videos in: decode a video file into the JPEG frames that a frame folder would hold (used by :mod:`pipelines.ingest.convert`).

A clip's frame folder ``RAW/<folder>/`` may instead be a video file ``RAW/<folder>.<ext>`` (:data:`EXTS`); the
SSv2 reader points its clips at ``20bn-something-something-v2/<id>`` (the release's ``<id>.webm``). Then:

* **scan** (:func:`probe`): the container header only (size, codec, declared duration/frame count); no decoding;
* **lay out**: a video's frame bytes are not known before it is encoded, so the shard layout uses an estimate
  from the probe (:func:`estimate_bytes`), which is deterministic: the layout does not depend on ``workers``;
* **write** (:func:`read_clip`, in the writer process): PyAV (FFmpeg inside the wheel: VP9, H.264, AV1
  decoders) decodes every frame in presentation order on one thread; the frame is converted to RGB by
  swscale (resized first with ``short_side``, :data:`FILTER`), encoded once to JPEG by libjpeg-turbo
  (simplejpeg, 4:2:0 like the video's chroma) at ``quality``. ``fps`` resamples like ``ffmpeg -vf fps=N``
  (:func:`fps_slots`). Decoding, conversion and encoding are deterministic, so shards keep the same sha256
  whatever ``workers`` is.

Bad videos raise a :class:`~pipelines.errors.FrameError` naming the file: missing, zero-byte, not a video, no
video stream, no decodable frame, a decode error, and a container that declares more frames or a longer
duration than could be decoded (a truncated download).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

from pipelines.ingest.datasets import bad
from pipelines.errors import FrameError

EXTS = (".webm", ".mp4", ".mkv", ".avi", ".mov")
VIDEO_DIRS = ("20bn-something-something-v2",)  # trees that hold only videos: a missing file is "video is missing"
FILTER = "BICUBIC"  # swscale resize filter of --short-side (the default of ffmpeg's scale filter, as peers use)
DEFAULT_QUALITY = 90
EST_BYTES_PER_PIXEL = 0.2  # layout-time estimate of one JPEG frame's bytes per pixel (shards land near --shard-mb)
_TRUNCATION_SLACK = 1.5  # frame intervals the decoded end may fall short of the declared duration


@dataclass(frozen=True)
class Decode:
    """How videos become JPEG frames (part of every video clip's resume fingerprint)."""

    fps: float | None = None
    short_side: int | None = None
    quality: int = DEFAULT_QUALITY

    def __post_init__(self):
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError("fps must be > 0")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError("short_side must be >= 1")
        if not 1 <= self.quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")

    def manifest(self) -> dict:
        return {"fps": self.fps, "short_side": self.short_side, "jpeg_quality": self.quality,
                "resize_filter": FILTER.lower(), "jpeg_subsampling": "4:2:0", "decoder": f"PyAV {_av().__version__}"}


@dataclass(frozen=True)
class VideoInfo:
    """A probed video: path relative to RAW, file size/mtime and what its container declares."""

    rel: str
    size: int
    mtime: int
    width: int
    height: int
    rate: float        # native frame rate (guessed by FFmpeg from the stream)
    duration: float    # declared duration in seconds (0: unknown)
    frames: int        # declared frame count (0: unknown; Matroska/WebM never declare it)


@dataclass(frozen=True)
class VideoClip:
    """A clip whose frames come from one video (same fields as ``convert.Clip`` where the planner reads them)."""

    key: str
    label: int
    files: tuple[str, ...]   # (video path relative to RAW,)
    sizes: tuple[int, ...]   # (estimated JPEG bytes,): used by the shard layout only
    mtimes: tuple[int, ...]  # (mtime, file size): the resume fingerprint
    info: VideoInfo
    decode: Decode
    start: int | None = None  # 1-based inclusive range of decoded (native-rate) frames; None: all
    end: int | None = None


def _av():
    import av  # imported lazily: nothing happens at import, and frame-only conversions never load FFmpeg

    return av


def find(raw: str, folder: str) -> str | None:
    """``folder`` + a video extension (relative to RAW) when ``RAW/folder`` is not a frame folder and that file
    exists, else None. Raises FrameError for a clip under a video-only tree (:data:`VIDEO_DIRS`) with no video."""
    base = os.path.join(raw, folder)
    if os.path.isdir(base):
        return None
    for ext in EXTS:
        if os.path.exists(base + ext):
            return folder + ext
    if folder.split("/")[0] in VIDEO_DIRS:
        raise bad(FrameError, base + EXTS[0], "video is missing",
                  f"the annotation lists this id; expected {os.path.basename(base)}{EXTS[0]} (or {', '.join(EXTS[1:])})")
    return None


def _inside(raw: str, rel: str) -> None:
    parts = rel.split("/")  # the tree is RAW/<first component> (it may itself be a symlink), as for frame folders
    top = os.path.realpath(os.path.join(raw, parts[0] if len(parts) > 1 else "")).rstrip(os.sep) + os.sep
    path = os.path.join(raw, rel)
    if not os.path.realpath(path).startswith(top):
        raise bad(FrameError, path, f"video resolves to {os.path.realpath(path)}, outside {top} "
                                    "(symlink out of the dataset tree)")


def _open(path: str):
    av = _av()
    try:
        return av.open(path, "r")
    except av.error.FFmpegError as e:
        raise bad(FrameError, path, f"not a readable video ({_why(e)})", "re-download the file") from None


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def probe(raw: str, rel: str) -> VideoInfo:
    """Stat and open ``RAW/rel`` and read its container header (no frame is decoded). Raises FrameError."""
    _inside(raw, rel)
    return probe_file(os.path.join(raw, rel), rel)


def probe_file(path: str, rel: str) -> VideoInfo:
    """:func:`probe` of any ``path`` (no dataset tree to stay inside); ``rel`` is what the info records."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise bad(FrameError, path, f"cannot read the video ({e.strerror})") from None
    if st.st_size == 0:
        raise bad(FrameError, path, "zero-byte video file", "re-download the file")
    with _open(path) as c:
        if not c.streams.video:
            raise bad(FrameError, path, "has no video stream")
        s = c.streams.video[0]
        cc = s.codec_context
        if not cc.width or not cc.height:
            raise bad(FrameError, path, "video stream has no frame size (not a decodable video)")
        rate = s.guessed_rate or s.average_rate or s.base_rate
        duration = 0.0
        if s.duration and s.time_base:
            duration = float(s.duration * s.time_base)
        elif c.duration:
            duration = c.duration / 1e6
        if s.start_time is not None and s.time_base and not s.duration and c.duration:
            duration -= max(0.0, float(s.start_time * s.time_base))
        return VideoInfo(rel=rel, size=st.st_size, mtime=st.st_mtime_ns, width=cc.width, height=cc.height,
                         rate=float(rate) if rate else 0.0, duration=max(duration, 0.0), frames=int(s.frames or 0))


def out_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``short_side`` (aspect kept, rounded)."""
    if not short_side:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def estimate_bytes(info: VideoInfo, decode: Decode, start=None, end=None) -> int:
    """Plan-time estimate of a clip's JPEG bytes (deterministic; only the shard boundaries depend on it)."""
    w, h = out_size(info.width, info.height, decode.short_side)
    if start is not None:
        n = end - start + 1
        if decode.fps and info.rate:
            n = n * decode.fps / info.rate
    else:
        n = info.frames or info.duration * (decode.fps or info.rate) or 1
    return max(1, int(n * w * h * EST_BYTES_PER_PIXEL))


def resolve_clip(ref, info: VideoInfo, decode: Decode) -> VideoClip:
    return VideoClip(key=ref.key, label=ref.label, files=(info.rel,),
                     sizes=(estimate_bytes(info, decode, ref.start, ref.end),), mtimes=(info.mtime, info.size),
                     info=info, decode=decode, start=ref.start, end=ref.end)


def _round_half_away(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2)) if x >= 0 else -math.floor(-x + Fraction(1, 2))


def resample(timed, fps):
    """Constant-``fps`` output from ``timed`` like libavfilter's ``fps`` filter (what ``ffmpeg -vf fps=N`` does).

    ``timed`` yields ``(seconds, item)`` in presentation order and ends with ``(end, None)``, the time the last
    item stops showing. Item ``i`` goes to output slot ``round(t_i * fps)`` (half away from zero); output slots
    run from the first item's slot to ``round(end * fps)``, each showing the last item whose slot is <= it
    (items sharing a slot: the last wins; gaps: the previous item repeats). Yields the item of every output
    slot, streaming (one item held).
    """
    fps = Fraction(fps).limit_denominator(1 << 20)
    prev, slot, first = None, None, None
    for t, item in timed:
        s = _round_half_away(t * fps)
        if item is None:
            s = max(s, first + 1) if first is not None else s
        if prev is not None:
            while slot < s:
                yield prev
                slot += 1
        elif item is not None:
            slot = first = s
        if item is None:
            return
        prev = item


def fps_slots(pts, end, fps) -> list[int]:
    """The input frame index of every output frame of :func:`resample` (``pts``/``end`` in seconds)."""
    return list(resample([*zip(pts, range(len(pts))), (end, None)], fps))


def _frames(path: str, container, clip: VideoClip):
    """Yield ``(seconds, frame)`` of the clip's decoded frames in presentation order, times relative to its first
    frame (as the ffmpeg CLI offsets the input start time); the last item is ``(end, None)``. Raises FrameError for decode errors, no frame, and truncated files."""
    av = _av()
    s = container.streams.video[0]
    s.codec_context.thread_count = 1  # one process per core already; deterministic either way
    tb = s.time_base or Fraction(1, 1000)
    rate = Fraction(clip.info.rate).limit_denominator(1 << 16) if clip.info.rate else Fraction(25)
    n, last, last_dur = 0, None, Fraction(0)
    first = None
    lo = (clip.start - 1) if clip.start is not None else 0
    hi = (clip.end - 1) if clip.end is not None else None
    try:
        for f in container.decode(s):
            t = Fraction(f.pts) * tb if f.pts is not None else (last + 1 / rate if last is not None else Fraction(0))
            if last is not None and t <= last:  # decoders emit presentation order; a repeated pts is bumped
                t = last + Fraction(1, 1 << 20)
            last_dur = Fraction(f.duration) * tb if f.duration else 1 / rate
            if n >= lo:
                if first is None:
                    first = t
                yield t - first, f
            last = t
            n += 1
            if hi is not None and n > hi:
                yield t + last_dur - first, None
                return
    except av.error.FFmpegError as e:
        raise bad(FrameError, path, f"decode error after {n} frame(s) ({_why(e)})",
                  "truncated or corrupt download; re-download it") from None
    if n == 0:
        raise bad(FrameError, path, "no decodable video frame")
    if clip.start is not None:
        raise bad(FrameError, path, f"frames {clip.start}..{clip.end} are outside the {n} decoded frames")
    end = last + last_dur
    got = float(end - first)
    slack = _TRUNCATION_SLACK / float(rate)
    if clip.info.frames and n < clip.info.frames:
        raise bad(FrameError, path, f"truncated: the container declares {clip.info.frames} frames, "
                                    f"{n} could be decoded", "re-download the file")
    if clip.info.duration and got < clip.info.duration - slack:
        raise bad(FrameError, path, f"truncated: the container declares {clip.info.duration:.3f} s, "
                                    f"{n} frames ({got:.3f} s) could be decoded", "re-download the file")
    yield end - first, None


def decode_timed(path: str):
    """Every decoded frame of the video at ``path`` as ``(seconds, av.VideoFrame)`` in presentation order, times
    from the first frame, then ``(end, None)``. Raises FrameError up front (missing, zero-byte, not a video) or
    after the frames that decoded (a decode error, or fewer frames / a shorter duration than the container
    declares: a truncated file); the message names the file."""
    info = probe_file(path, path)
    clip = VideoClip(key=path, label=-1, files=(path,), sizes=(0,), mtimes=(0, 0), info=info, decode=Decode())
    with _open(path) as c:
        yield from _frames(path, c, clip)


def read_clip(raw: str, clip: VideoClip) -> tuple[list[bytes], int, int]:
    """Decode ``clip``'s video into JPEG frames: ``(frames, height, width)``. Raises FrameError."""
    import simplejpeg

    path = os.path.join(raw, clip.files[0])
    d = clip.decode
    try:
        st = os.stat(path)
    except OSError as e:
        raise bad(FrameError, path, f"cannot read the video ({e.strerror})") from None
    if (st.st_mtime_ns, st.st_size) != tuple(clip.mtimes):
        raise bad(FrameError, path, "video changed during the conversion", "re-run")
    size = None
    jpegs: list[bytes] = []

    def encode(f) -> bytes:
        nonlocal size
        if size is None:  # every frame of a clip is stored at its first frame's (scaled) size
            size = out_size(f.width, f.height, d.short_side)
        if size == (f.width, f.height):
            rgb = f.to_ndarray(format="rgb24")
        else:
            rgb = f.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation=FILTER)
        return simplejpeg.encode_jpeg(rgb, quality=d.quality, colorsubsampling="420")

    with _open(path) as c:
        if not c.streams.video:
            raise bad(FrameError, path, "has no video stream")
        timed = _frames(path, c, clip)
        if d.fps is None:
            jpegs = [encode(f) for _, f in timed if f is not None]
        else:  # an input frame is encoded once; a repeated output frame reuses its bytes
            last, data = None, b""
            for f in resample(timed, d.fps):
                if f is not last:
                    last, data = f, encode(f)
                jpegs.append(data)
    if not jpegs:
        raise bad(FrameError, path, "no decodable video frame")
    return jpegs, size[1], size[0]  # type: ignore[index]

"""Steps 2-3 of a conversion (:mod:`pipelines.ingest.convert`): scan the frame folders (list + stat only, or probe the
video that stands in for a folder) and lay out the shard boundaries from file sizes alone, so the layout does not
depend on the number of workers (a shard *layout*; a *plan* is a :class:`~pipelines.plan.clip.ClipPlan`)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from pipelines.shards import format as fmt
from pipelines.ingest import video
from pipelines.ingest.datasets import ClipRef, bad
from pipelines.errors import AnnotationError, DataError, FrameError

_FRAME = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class Folder:
    """A scanned frame folder: frame numbers (consecutive), file names and sizes, in temporal order."""

    first: int
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    mtimes: tuple[int, ...] = ()


def scan_folder(raw: str, folder: str) -> Folder:
    """List ``RAW/folder`` and check it (no frame is opened). Raises FrameError."""
    path = os.path.join(raw, folder)
    # the tree is RAW/<first component of folder> (frames/); it may itself be a symlink (data on another
    # disk), but nothing inside it may resolve outside it
    parts = folder.split("/")
    top = os.path.realpath(os.path.join(raw, parts[0] if len(parts) > 1 else "")).rstrip(os.sep) + os.sep

    def outside(p: str) -> bool:
        return not os.path.realpath(p).startswith(top)

    if outside(path):
        raise bad(FrameError, path, f"frame folder resolves to {os.path.realpath(path)}, outside {top} "
                                    "(symlink out of the dataset tree)")
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        raise bad(FrameError, path, "frame folder is missing") from None
    except NotADirectoryError:
        raise bad(FrameError, path, "is not a folder (expected a folder of <number>.jpg frames)") from None
    except OSError as e:
        raise bad(FrameError, path, f"cannot list the frame folder ({e.strerror})") from None
    frames = []
    for e in entries:
        if e.name.startswith("."):
            continue
        m = _FRAME.match(e.name)
        if e.is_symlink() and outside(e.path):
            raise bad(FrameError, e.path, f"frame resolves to {os.path.realpath(e.path)}, outside {top} "
                                          "(symlink out of the dataset tree)")
        if not m or not e.is_file():
            raise bad(FrameError, os.path.join(path, e.name), "unexpected entry in a frame folder",
                      "frames must be files named <number>.jpg")
        st = e.stat()
        frames.append((int(m.group(1)), e.name, st.st_size, st.st_mtime_ns))
    if not frames:
        raise bad(FrameError, path, "frame folder is empty (no <number>.jpg files)")
    frames.sort()
    for (a, na, *_), (b, nb, *_) in zip(frames, frames[1:]):
        if b == a:
            raise bad(FrameError, os.path.join(path, nb), f"frame number {b} appears twice ({na}, {nb})")
        if b != a + 1:
            raise bad(FrameError, os.path.join(path, nb),
                      f"frame-number gap: {na} is followed by {nb} (frames {a + 1}..{b - 1} missing)")
    for num, name, size, _ in frames:
        if size == 0:
            raise bad(FrameError, os.path.join(path, name), "zero-byte frame file")
    return Folder(first=frames[0][0], names=tuple(f[1] for f in frames), sizes=tuple(f[2] for f in frames),
                  mtimes=tuple(f[3] for f in frames))


def _scan_task(args):
    raw, folder = args
    try:
        rel = video.find(raw, folder)  # a video file may stand in for the frame folder (pipelines/ingest/video.py)
        return video.probe(raw, rel) if rel is not None else scan_folder(raw, folder)
    except DataError as e:
        return e


@dataclass(frozen=True)
class Clip:
    """A clip ready to be written: frame files (relative to RAW) and their sizes."""

    key: str
    label: int
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    mtimes: tuple[int, ...] = ()  # only for the resume fingerprint


def resolve_clip(ref: ClipRef, folder: Folder, raw: str) -> Clip:
    """Select ``ref``'s frames from its scanned folder. Raises AnnotationError if the range is out of it."""
    n = len(folder.names)
    if ref.start is None:
        a, z = 0, n
    else:
        last = folder.first + n - 1
        if ref.start < folder.first or ref.end > last:
            raise bad(AnnotationError, os.path.join(raw, ref.source or ref.folder),
                      f"frames {ref.start}..{ref.end} are outside the {n} frames "
                      f"({folder.first}..{last}) of {ref.folder}")
        a, z = ref.start - folder.first, ref.end - folder.first + 1
    return Clip(key=ref.key, label=ref.label, files=tuple(f"{ref.folder}/{x}" for x in folder.names[a:z]),
                sizes=folder.sizes[a:z], mtimes=folder.mtimes[a:z])


# ------------------------------------------------------------------------------------- scan + shard layout
def scan_clips(refs: list[ClipRef], raw: str, map_fn, decode, problems) -> list[Clip]:
    """The clips of ``refs`` with their frames: every distinct folder (EgoGesture clips share one) scanned once, in
    a fixed order, by ``map_fn(fn, items)`` (e.g. a process pool's ordered map); a video stands in for a folder
    (decoded as ``decode`` says). Bad folders and clips go to ``problems`` (which raises in strict mode)."""
    folders = sorted({r.folder for r in refs})
    scanned = dict(zip(folders, map_fn(_scan_task, [(raw, f) for f in folders])))
    for f in folders:
        if isinstance(scanned[f], DataError):
            problems(scanned[f])  # raises in strict mode; once per folder otherwise
    clips: list[Clip] = []
    for r in refs:
        got = scanned[r.folder]
        if isinstance(got, DataError):
            continue
        try:
            clips.append(video.resolve_clip(r, got, decode) if isinstance(got, video.VideoInfo)
                         else resolve_clip(r, got, raw))
        except DataError as e:
            problems(e)
    return clips


def layout_shards(clips: list[Clip], shard_bytes: float) -> list[list[Clip]]:
    """Cut ``clips`` (in order) into shards: a shard closes once its frame bytes reach ``shard_bytes``."""
    out, cur, size = [], [], 0
    for c in clips:
        cur.append(c)
        size += sum(c.sizes)
        if size >= shard_bytes:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


def layout_fingerprint(clips: list[Clip]) -> str:
    """Hash of everything a shard's bytes depend on (format version, keys, labels, files, sizes, mtimes)."""
    h = hashlib.sha256(f"{fmt.FORMAT_NAME}/{fmt.FORMAT_VERSION}/{fmt.ROWS_PER_BATCH}".encode())
    for c in clips:
        row = [c.key, c.label, c.files, c.sizes, c.mtimes]
        if isinstance(c, video.VideoClip):  # the decoded bytes also depend on the decode options and range
            row += [c.decode.manifest(), c.start, c.end]  # (the decoder's version included)
        h.update(json.dumps(row).encode())
    return h.hexdigest()

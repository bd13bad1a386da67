"""The data side's error classes.

Every problem caused by input data (raw trees, annotation files, shards, manifests) is raised as a
:class:`DataError` (or a subclass) whose message names the file and, where there is one, the fix. CLIs catch
it and print the one line without a traceback.
"""
from __future__ import annotations


class DataError(Exception):
    """Bad input data: the message names the file and the problem."""


class AnnotationError(DataError):
    """A label/annotation file is missing, malformed or inconsistent."""


class FrameError(DataError):
    """A frame folder or JPEG frame is missing, empty, corrupt or out of sequence."""


class ShardError(DataError):
    """A shard or manifest is missing, corrupt, or does not match its checksum."""


class ClipError(DataError, ValueError):
    """A clip's frame count or frame size cannot be sampled or cropped (zero frames, a zero-sized frame, a
    crop larger than the frame). Also a ``ValueError``, which these pure functions raised before."""


class SourceError(DataError):
    """A prediction input (video file, frame folder, shard split, live stream) cannot be read at all."""

"""The model side's error classes.

Every problem with a model request or a weights file (unknown architecture, bad option, checkpoint that cannot
be read, refused, or does not fit the model) is raised as a :class:`ModelError` (or a subclass) whose message
names the file or option and the problem. CLIs catch it and print the one line without a traceback.
``action/`` never imports ``pipelines/``: these classes are deliberately separate from ``pipelines.errors``.
"""
from __future__ import annotations


class ModelError(Exception):
    """A bad model request (architecture, temporal module, sizes)."""


class CheckpointError(ModelError):
    """A checkpoint or pretrained-weights file is missing, unreadable, refused by ``weights_only``, or its
    keys/shapes do not match the model. The message names the file and lists the offending keys."""

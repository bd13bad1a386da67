"""The trainer's two error types: both print as one line naming the fix (train.py turns them into exit codes)."""
from __future__ import annotations

import click


class ConfigError(click.UsageError):
    """A config value is out of its allowed range (raised before any process or file is touched)."""


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, no disk space, bad checkpoint); the message says what to do."""

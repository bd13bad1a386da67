"""TSN temporal sampling (docs/DESIGN.md "Sampling"): which T of a video's n frames a clip uses.

Pure functions: integers (and a ``numpy.random.Generator`` where the rule is random) in, an int64 array of
frame indices (0-based, into the video's stored frame list, in temporal order) out. No I/O.

Rules, with ``n`` frames and ``T`` segments (``num_segments``):

* **train** (:func:`train_indices`), ``n >= T``: ``i * (n // T) + randint(n // T)`` for segment ``i``
  (exactly the original ``TemporalUniformCrop_train``; frames past ``T * (n // T)`` are never used).
* **val / single-clip test** (:func:`val_indices`), ``n >= T``: ``int(tick / 2 + tick * i)`` with
  ``tick = n / T`` (the original ``TemporalUniformCrop_val``; for ``n == T`` it gives ``0..T-1`` where the
  original returned zeros).
* **multi-clip test** (:func:`multiclip_indices`): ``K`` clips. ``"uniform"`` (the default, deterministic): clip
  ``k`` takes, in every segment, the frame at fraction ``(k + 0.5) / K`` of the segment,
  ``int(tick * i + tick * (k + 0.5) / K)``; with ``K == 1`` this *is* :func:`val_indices`. ``"random"``
  (the original ``test.py``): ``K`` independent draws of the train rule.
* **short videos** (``n < T``, every mode): the *spread* rule ``floor((i + 0.5) * n / T)`` -- each frame is
  used ``T / n`` times (rounded), in order; e.g. ``n=3, T=8 -> 0 0 0 1 1 2 2 2``. It draws no random
  numbers. (The original repeated frame 0 ``T`` times, which shows the network one still image.) The same
  formula is the val rule's value at ``n < T``, so val and train agree on short videos.

``n == 0`` raises :class:`~pipelines.errors.ClipError` (a ``ValueError``) (a clip with no frames is rejected at conversion).
"""
from __future__ import annotations

import numpy as np

from pipelines.errors import ClipError

MODES = ("train", "val", "test")
TEST_SAMPLING = ("uniform", "random")


def _check(n: int, t: int) -> None:
    if int(t) < 1:
        raise ClipError(f"num_segments must be >= 1, got {t}")
    if int(n) < 1:
        raise ClipError(f"a video needs at least one frame, got num_frames={n}")


def spread_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """Short-video rule: ``floor((i + 0.5) * n / T)`` for ``i < T`` (any ``n >= 1``; used when ``n < T``)."""
    _check(num_frames, num_segments)
    i = np.arange(num_segments, dtype=np.int64)
    return ((2 * i + 1) * int(num_frames)) // (2 * int(num_segments))


def train_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """TSN random segment sampling for training.

    Contract: ``n >= T`` -> ``i * (n // T) + rng.integers(n // T, size=T)`` (one call); ``n < T`` ->
    :func:`spread_indices` (no draw). Returns int64 (T,), non-decreasing, all in ``[0, n)``.
    """
    _check(num_frames, num_segments)
    n, t = int(num_frames), int(num_segments)
    if n < t:
        return spread_indices(n, t)
    avg = n // t
    return np.arange(t, dtype=np.int64) * avg + rng.integers(avg, size=t).astype(np.int64)


def val_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """Centre of each segment: ``int(tick / 2 + tick * i)``, ``tick = n / T`` (``n < T``: spread rule).

    Computed as in the original, in float64 (``int`` truncation). Returns int64 (T,).
    """
    _check(num_frames, num_segments)
    n, t = int(num_frames), int(num_segments)
    if n < t:
        return spread_indices(n, t)
    tick = n / float(t)
    return np.array([int(tick / 2.0 + tick * i) for i in range(t)], dtype=np.int64)


def multiclip_indices(num_frames: int, num_segments: int, num_clips: int = 1, *, sampling: str = "uniform",
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices of ``num_clips`` test clips: int64 (K, T).

    ``sampling="uniform"`` (deterministic, default): clip ``k`` row is ``int(tick * i + tick * (k + 0.5) / K)``
    with ``tick = n / T`` (``K = 1`` equals :func:`val_indices`; ``n < T`` uses the same formula, which for
    ``K = 1`` is the spread rule). ``sampling="random"``: ``K`` successive :func:`train_indices` draws from
    ``rng`` (required).
    """
    _check(num_frames, num_segments)
    k_clips = int(num_clips)
    if k_clips < 1:
        raise ClipError(f"num_clips must be >= 1, got {num_clips}")
    n, t = int(num_frames), int(num_segments)
    if sampling == "random":
        if rng is None:
            raise ValueError("test sampling 'random' needs rng")
        return np.stack([train_indices(n, t, rng) for _ in range(k_clips)])
    if sampling != "uniform":
        raise ValueError(f"test sampling must be one of {TEST_SAMPLING}, got {sampling!r}")
    if k_clips == 1:
        return val_indices(n, t)[None, :]
    tick = n / float(t)
    out = np.empty((k_clips, t), dtype=np.int64)
    for k in range(k_clips):
        frac = (k + 0.5) / k_clips
        out[k] = [min(int(tick * i + tick * frac), n - 1) for i in range(t)]
    return out


def sample_indices(mode: str, num_frames: int, num_segments: int, *, rng: np.random.Generator | None = None,
                   num_clips: int = 1, test_sampling: str = "uniform") -> np.ndarray:
    """Dispatch on ``mode``: train -> (T,), val -> (T,), test -> (K, T). ``rng`` is needed for random rules."""
    if mode == "train":
        if rng is None:
            raise ValueError("train sampling needs rng")
        return train_indices(num_frames, num_segments, rng)
    if mode == "val":
        return val_indices(num_frames, num_segments)
    if mode == "test":
        return multiclip_indices(num_frames, num_segments, num_clips, sampling=test_sampling, rng=rng)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

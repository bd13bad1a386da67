"""Exact TSN sampling indices (pipelines.plan.sampling), incl. n < T, n = T and n = T + 1."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.plan import sampling


def rng(seed=0):
    return np.random.default_rng(seed)


def test_train_long_video_matches_tsn_formula():
    # n=20, T=4: avg=5; default_rng(0).integers(5, size=4) == [4, 3, 2, 1]
    assert rng().integers(5, size=4).tolist() == [4, 3, 2, 1]
    assert sampling.train_indices(20, 4, rng()).tolist() == [4, 8, 12, 16]


def test_train_tail_frames_are_never_used():
    # n=23, T=4: avg=5, frames 20..22 unreachable (as the original)
    for s in range(50):
        idx = sampling.train_indices(23, 4, rng(s))
        assert all(5 * i <= v < 5 * i + 5 for i, v in enumerate(idx))


def test_train_n_equals_t_and_t_plus_one():
    assert sampling.train_indices(8, 8, rng()).tolist() == list(range(8))
    assert sampling.train_indices(5, 4, rng()).tolist() == [0, 1, 2, 3]  # avg = 1: randint(1) == 0


@pytest.mark.parametrize("n, t, expected", [
    (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),
    (1, 4, [0, 0, 0, 0]),
    (5, 8, [0, 0, 1, 2, 2, 3, 4, 4]),
    (7, 8, [0, 1, 2, 3, 3, 4, 5, 6]),
])
def test_short_video_spread_rule_in_every_mode(n, t, expected):
    r = rng()
    state = r.bit_generator.state
    assert sampling.train_indices(n, t, r).tolist() == expected
    assert r.bit_generator.state == state  # no draw for short videos
    assert sampling.val_indices(n, t).tolist() == expected
    assert sampling.multiclip_indices(n, t, 1).tolist() == [expected]


@pytest.mark.parametrize("n, t, expected", [
    (16, 4, [2, 6, 10, 14]),     # tick 4
    (10, 4, [1, 3, 6, 8]),       # tick 2.5: int(1.25), int(3.75), int(6.25), int(8.75)
    (5, 4, [0, 1, 3, 4]),        # n = T + 1: tick 1.25
    (8, 8, list(range(8))),      # n = T (the original returned zeros here)
    (9, 8, [0, 1, 2, 3, 5, 6, 7, 8]),
    (37, 8, [2, 6, 11, 16, 20, 25, 30, 34]),
])
def test_val_centre_of_segments(n, t, expected):
    assert sampling.val_indices(n, t).tolist() == expected


def test_multiclip_uniform_offsets_inside_segments():
    # tick 2.5, K=3: fractions 1/6, 1/2, 5/6 of each segment
    assert sampling.multiclip_indices(10, 4, 3).tolist() == [[0, 2, 5, 7], [1, 3, 6, 8], [2, 4, 7, 9]]
    assert sampling.multiclip_indices(16, 4, 2).tolist() == [[1, 5, 9, 13], [3, 7, 11, 15]]
    assert sampling.multiclip_indices(16, 4, 1).tolist() == [sampling.val_indices(16, 4).tolist()]


def test_multiclip_random_is_successive_train_draws():
    got = sampling.multiclip_indices(20, 4, 2, sampling="random", rng=rng(1))
    r = rng(1)
    assert got.tolist() == [sampling.train_indices(20, 4, r).tolist(), sampling.train_indices(20, 4, r).tolist()]


def test_indices_always_in_range():
    for n in range(1, 40):
        for t in (1, 3, 8):
            for f in (sampling.val_indices(n, t), sampling.train_indices(n, t, rng(n)),
                      sampling.multiclip_indices(n, t, 4).ravel()):
                assert f.dtype == np.int64 and f.min() >= 0 and f.max() < n
                assert np.all(np.diff(f.reshape(-1, t), axis=1) >= 0)


def test_dispatch_and_errors():
    assert sampling.sample_indices("val", 16, 4).tolist() == [2, 6, 10, 14]
    assert sampling.sample_indices("test", 16, 4, num_clips=2).shape == (2, 4)
    with pytest.raises(ValueError):
        sampling.train_indices(0, 4, rng())
    with pytest.raises(ValueError):
        sampling.val_indices(4, 0)
    with pytest.raises(ValueError):
        sampling.sample_indices("train", 4, 4)
    with pytest.raises(ValueError):
        sampling.sample_indices("bogus", 4, 4)
    with pytest.raises(ValueError):
        sampling.multiclip_indices(4, 4, 2, sampling="random")

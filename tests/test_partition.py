"""The elastic contract of pipelines/plan/partition.py: for a fixed global batch, the clips of global step s are the
same set whatever the world size (pure functions, no data)."""
from __future__ import annotations

import numpy as np
import pytest

import shardtools
from pipelines.plan import partition


def _step_sets(n: int, batch: int, world: int, epoch: int) -> list[set[int]]:
    """Per global step, the union over ranks of the clips each rank's training partition reads."""
    per_rank = [shardtools.partition(n, rank=r, world=world, batch_size=batch // world, shuffle=True, seed=7,
                                    epoch=epoch, equal=True, drop_last=True) for r in range(world)]
    steps = {len(b) for b in per_rank}
    assert len(steps) == 1, f"ranks disagree on the number of steps: {steps}"
    out = []
    for s in range(steps.pop()):
        clips = np.concatenate([per_rank[r][s] for r in range(world)])
        assert len(clips) == batch and len(set(clips.tolist())) == batch  # B clips, none twice
        out.append(set(clips.tolist()))
    return out


@pytest.mark.parametrize("n", [12, 13, 35, 61, 97])  # uneven: n % B != 0 and n % world != 0 for most
@pytest.mark.parametrize("batch", [12, 24])
def test_global_step_clips_do_not_depend_on_world(n, batch):
    for epoch in (0, 3):
        order = partition.epoch_order(n, shuffle=True, seed=7, epoch=epoch)
        want = [set(order[s * batch:(s + 1) * batch].tolist()) for s in range(n // batch)]
        assert len(want) == n // batch
        for world in (1, 2, 3, 4):
            assert _step_sets(n, batch, world, epoch) == want, (n, batch, world, epoch)


def test_resume_on_another_world_continues_the_same_clips():
    """Steps 0..s-1 on 2 ranks, then s.. on 3 ranks: every clip of the epoch order's first (n // B) * B positions
    is trained exactly once, in the order a 1-rank run trains them."""
    n, batch, s = 61, 12, 2
    two, three, one = (_step_sets(n, batch, w, epoch=1) for w in (2, 3, 1))
    assert two[:s] + three[s:] == one
    seen = [c for step in two[:s] + three[s:] for c in step]
    assert len(seen) == len(set(seen)) == (n // batch) * batch

"""Per-dataset presets and flip label maps (pipelines.plan.presets) for egogesture, jester and sthv2."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.plan import presets


def swaps(m):
    return sorted((a, int(b)) for a, b in enumerate(m) if a < b)


def test_pre_resize_rules():
    assert presets.scale_size(224) == 256 and presets.scale_size(112) == 128 and presets.scale_size(64) == 73
    assert presets.resize_short(240, 320, 256) == (256, 341)
    assert presets.resize_short(320, 240, 256) == (341, 256)
    assert presets.resize_short(100, 176, 256) == (256, 450)
    assert presets.resize_shape("squash", (480, 640), 224) == (224, 224)
    assert presets.resize_shape("short", (240, 320), 224) == (256, 341)
    assert presets.resize_shape("none", (240, 427), 224) == (240, 427)
    with pytest.raises(ValueError):
        presets.resize_shape("bogus", (1, 1), 1)


def test_dataset_presets():
    ego, jes, sth = presets.get("egogesture"), presets.get("jester"), presets.get("sthv2")
    assert (ego.train_resize, ego.eval_resize, ego.eval_center_crop) == ("squash", "squash", False)
    assert ego.test_crops == (1,)
    assert (jes.train_resize, jes.eval_resize, jes.eval_center_crop, jes.test_crops) == ("short", "short", True, (1, 3))
    assert (sth.train_resize, sth.eval_resize, sth.eval_center_crop) == ("none", "short", True)
    for p in (ego, jes, sth):
        assert p.flip_allowed and p.scales == (1.0, 0.875, 0.75, 0.66) and p.max_distort == 1 and p.more_fix_crop
        assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError):
        presets.get("kinetics")


def test_flip_map_jester():
    from pipelines.ingest.datasets import jester
    m = presets.flip_label_map("jester", list(jester.CLASSES))
    assert m.dtype == np.int64 and len(m) == 27
    assert swaps(m) == [(0, 1), (6, 7), (14, 15)]
    assert (m[m] == np.arange(27)).all()


def test_flip_map_sthv2_by_name():
    from pipelines.ingest.datasets import sthv2
    names = [f"class {i}" for i in range(174)]
    (a, b), (c, d), (e, f) = sthv2.FLIP_PAIRS
    names[86], names[87], names[93], names[94], names[166], names[167] = a, b, c, d, e, f
    assert swaps(presets.flip_label_map("sthv2", names)) == [(86, 87), (93, 94), (166, 167)]
    # keyed by name: another order of the same classes moves the pairs with them
    names[0], names[86] = names[86], names[0]
    assert (0, 87) in swaps(presets.flip_label_map("sthv2", names))


def test_flip_map_egogesture():
    from pipelines.ingest.datasets import egogesture
    names = egogesture.load_classes()
    m = presets.flip_label_map("egogesture", names)
    assert swaps(m) == [(0, 1), (9, 10), (13, 14), (58, 59), (64, 65), (70, 71), (76, 77), (80, 81)]
    assert names[0] == "Scroll_hand_towards_right" and names[1] == "Scroll_hand_towards_left"

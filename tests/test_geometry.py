"""Crop windows, flips and plans (pipelines.plan.geometry) against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.plan import geometry as g
from pipelines.plan import presets, sampling
from pipelines.plan.clip import ClipPlan, source_window


class Scripted:
    """A stand-in generator returning scripted ``integers``/``random`` values (to pin a window exactly)."""

    def __init__(self, *values):
        self.values = list(values)

    def integers(self, high, size=None):
        v = self.values.pop(0)
        assert 0 <= v < high
        return v

    def random(self):
        return self.values.pop(0)


def test_crop_pairs_tsn_order_and_snapping():
    # jester after the 256 pre-resize: int(256 * s) = 256, 224, 192, 168 (224 already equals size)
    assert g.multiscale_crop_pairs(256, 341, 224) == [
        (256, 256), (224, 256), (256, 224), (224, 224), (192, 224), (224, 192), (192, 192), (168, 192),
        (192, 168), (168, 168)]
    # egogesture squash 224: 224, 196, 168, int(147.84) = 147
    assert [p for p in g.multiscale_crop_pairs(224, 224, 224) if p[0] == p[1]] == [
        (224, 224), (196, 196), (168, 168), (147, 147)]
    # sthv2 raw 240x320: 240, 210, 180, int(158.4) = 158 (none within 3 px of 224)
    assert g.multiscale_crop_pairs(240, 320, 224)[-1] == (158, 158)
    # snapping: base 226 -> int(226*1)=226 within 3 of 224 -> 224; int(226*.875)=197 stays
    assert g.multiscale_crop_pairs(226, 300, 224)[:4] == [(224, 224), (197, 224), (224, 197), (197, 197)]
    # base 222: 222 snaps to 224 > frame -> clamped to the frame
    assert g.multiscale_crop_pairs(222, 300, 224)[0] == (224, 222)
    assert len(g.multiscale_crop_pairs(256, 341, 224, max_distort=0)) == 4
    assert len(g.multiscale_crop_pairs(256, 341, 224, max_distort=3)) == 16


def test_thirteen_fixed_offsets_in_tsn_order():
    # W=341, H=256, crop 224: ws = 117 // 4 = 29, hs = 32 // 4 = 8
    assert g.fix_offsets(341, 256, 224, 224) == [
        (0, 0), (116, 0), (0, 32), (116, 32), (58, 16),
        (0, 16), (116, 16), (58, 32), (58, 0),
        (29, 8), (87, 8), (29, 24), (87, 24)]
    assert g.fix_offsets(341, 256, 224, 224, more_fix_crop=False) == [(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)]
    assert g.fix_offsets(224, 224, 224, 224) == [(0, 0)] * 13


def test_multiscale_crop_window_hand_computed():
    # pair 7 = (w 168, h 192); ws = (341-168)//4 = 43, hs = (256-192)//4 = 16; offset 10 = (3ws, hs)
    assert g.multiscale_crop(256, 341, 224, Scripted(7, 10)) == (129, 16, 168, 192)
    # pair 0 = (256, 256); ws = 85//4 = 21, hs = 0; offset 1 = upper right (84, 0)
    assert g.multiscale_crop(256, 341, 224, Scripted(0, 1)) == (84, 0, 256, 256)


def test_multiscale_crop_stays_inside_the_frame():
    r = np.random.default_rng(0)
    for h, w in [(256, 341), (224, 224), (240, 427), (240, 320), (100, 60)]:
        for _ in range(200):
            x, y, cw, ch = g.multiscale_crop(h, w, 224, r)
            assert 0 <= x and x + cw <= w and 0 <= y and y + ch <= h


def test_center_and_three_crops():
    assert g.center_crop(256, 341, 224, 224) == (58, 16, 224, 224)   # round(58.5) = 58 (half to even)
    assert g.center_crop(256, 343, 224, 224) == (60, 16, 224, 224)   # round(59.5) = 60
    assert g.center_crop(224, 224, 224, 224) == (0, 0, 224, 224)
    assert g.three_crops(256, 341, 224) == [(0, 16, 224, 224), (116, 16, 224, 224), (58, 16, 224, 224)]
    assert g.three_crops(341, 256, 224) == [(0, 58, 224, 224), (32, 58, 224, 224), (16, 58, 224, 224)]
    with pytest.raises(ValueError):
        g.center_crop(200, 300, 224, 224)


def test_flip_decision_and_label():
    assert g.flip_decision(Scripted(0.49)) is True
    assert g.flip_decision(Scripted(0.5)) is False
    m = np.array([1, 0, 2])
    assert g.flip_label(0, True, m) == 1 and g.flip_label(2, True, m) == 2
    assert g.flip_label(0, False, m) == 0 and g.flip_label(-1, True, m) == -1


def test_clip_rng_is_keyed_by_seed_epoch_clip():
    a = g.clip_rng(1, 2, 3).integers(1 << 30, size=4)
    assert a.tolist() == np.random.default_rng([1, 2, 3]).integers(1 << 30, size=4).tolist()
    assert a.tolist() != g.clip_rng(1, 2, 4).integers(1 << 30, size=4).tolist()


def test_train_plan_jester_is_the_documented_draw_sequence():
    p = presets.get("jester")
    (plan,) = g.make_plans(p, "train", clip=5, key="v5", label=3, num_frames=37, src_size=(240, 320),
                           num_segments=8, size=224, seed=7, epoch=2)
    r = np.random.default_rng([7, 2, 5])
    frames = sampling.train_indices(37, 8, r)
    win = g.multiscale_crop(256, 341, 224, r)
    assert plan == ClipPlan(clip=5, key="v5", label=3, frames=tuple(frames.tolist()), src_size=(240, 320),
                            resize=(256, 341), crop=win, out=(224, 224), flip=False)


def test_train_plan_small_size_and_presets():
    ego = g.make_plans(presets.get("egogesture"), "train", clip=0, key="k", label=0, num_frames=40,
                       src_size=(480, 640), num_segments=4, size=112, seed=0, epoch=0)[0]
    assert ego.resize == (112, 112) and ego.out == (112, 112)
    jes = g.make_plans(presets.get("jester"), "train", clip=0, key="k", label=0, num_frames=40,
                       src_size=(240, 320), num_segments=4, size=112, seed=0, epoch=0)[0]
    assert jes.resize == (128, 170)  # short side round(112*256/224) = 128, long int(128*320/240) = 170
    sth = g.make_plans(presets.get("sthv2"), "train", clip=0, key="k", label=0, num_frames=40,
                       src_size=(240, 427), num_segments=4, size=224, seed=0, epoch=0)[0]
    assert sth.resize == (240, 427)


def test_flip_changes_only_the_flip_and_label():
    p = presets.get("jester")
    m = np.arange(27)
    m[[0, 1]] = [1, 0]
    flips = []
    for clip in range(40):
        kw = dict(clip=clip, key="k", label=0, num_frames=30, src_size=(240, 320), num_segments=8, seed=1, epoch=0)
        a = g.make_plans(p, "train", **kw)[0]
        b = g.make_plans(p, "train", flip=True, flip_map=m, **kw)[0]
        assert (a.frames, a.crop, a.resize) == (b.frames, b.crop, b.resize)
        assert b.label == (1 if b.flip else 0)
        flips.append(b.flip)
    assert 5 < sum(flips) < 35


def test_val_plans():
    v = g.make_plans(presets.get("sthv2"), "val", clip=0, key="k", label=4, num_frames=16, src_size=(240, 320),
                     num_segments=4, size=224)
    assert v == [ClipPlan(0, "k", 4, (2, 6, 10, 14), (240, 320), (256, 341), (58, 16, 224, 224), (224, 224), False)]
    e = g.make_plans(presets.get("egogesture"), "val", clip=1, key="k", label=4, num_frames=16,
                     src_size=(480, 640), num_segments=4, size=224)
    assert e[0].resize == (224, 224) and e[0].crop == (0, 0, 224, 224) and e[0].out == (224, 224)
    # val plans do not depend on seed or epoch
    assert v == g.make_plans(presets.get("sthv2"), "val", clip=0, key="k", label=4, num_frames=16,
                             src_size=(240, 320), num_segments=4, size=224, seed=9, epoch=3, flip=True)


def test_test_plans_clip_major_three_crops():
    ps = g.make_plans(presets.get("jester"), "test", clip=0, key="k", label=1, num_frames=10, src_size=(240, 320),
                      num_segments=4, size=224, test_clips=2, test_crops=3)
    assert len(ps) == 6
    assert [p.frames for p in ps] == [(0, 3, 5, 8)] * 3 + [(1, 4, 6, 9)] * 3
    assert [p.crop[0] for p in ps] == [0, 116, 58] * 2
    assert all(p.out == (224, 224) and p.resize == (256, 341) and not p.flip for p in ps)
    with pytest.raises(ValueError):
        g.make_plans(presets.get("egogesture"), "test", clip=0, key="k", label=1, num_frames=10,
                     src_size=(240, 320), num_segments=4, test_crops=3)
    assert g.num_views("test", test_clips=2, test_crops=3) == 6 and g.num_views("train", test_clips=2) == 1


def test_source_window_of_a_plan():
    v = g.make_plans(presets.get("jester"), "val", clip=0, key="k", label=0, num_frames=16, src_size=(240, 320),
                     num_segments=4, size=224)[0]
    x, y, w, h = source_window(v)
    assert (round(x, 4), round(y, 4)) == (round(58 * 320 / 341, 4), 15.0)
    assert h == 210.0

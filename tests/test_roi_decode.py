"""ROI decode (pipelines.decode.frames): the region each resample mode reads, the region decoder, and the loader's pixels
being bit-identical with and without it for every preset and mode."""
from __future__ import annotations

import io
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import rawtrees
from pipelines.decode import frames as decode
from pipelines.plan import geometry, presets
from pipelines.ingest.convert import convert_dataset
from pipelines.errors import FrameError
from pipelines.loader import build_loader
from pipelines.plan.clip import ClipPlan

try:
    import nvidia.nvimgcodec  # noqa: F401
    HAVE_NV = True
except ImportError:  # optional: without it ROI decode falls back to full decode (tested below)
    HAVE_NV = False
needs_nv = pytest.mark.skipif(not HAVE_NV, reason="ROI decode needs nvidia-nvimgcodec-cu12 (installed with DALI)")

T, SIZE = 4, 32
FRAME = (88, 60)  # (w, h): not a multiple of the 16-px 4:2:0 MCU, so crops cut MCUs


def _plan(src, resize, crop, out, flip=False):
    return ClipPlan(clip=0, key="k", label=0, frames=(0,), src_size=src, resize=resize, crop=crop, out=out,
                    flip=flip)


def _jpeg(h, w, seed, subsampling=2, gray=False):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 256], -1) + rng.normal(0, 12, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img).convert("L") if gray else Image.fromarray(img)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90, subsampling=subsampling)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- regions (pure)
def test_resize_support_exact_numbers():
    assert decode.resize_support(240, 256, 16, 240) == (14, 226)  # Jester 240 -> 256 upsampling: support 1
    assert decode.resize_support(320, 341, 0, 341) == (0, 320)
    assert decode.resize_support(48, 32, 4, 28) == (5, 43)  # downsampling by 1.5: support 1.5
    assert decode.resize_support(48, 32, 0, 1) == (0, 2)
    assert decode.resize_support(100, 10, 9, 10) == (85, 100)  # 10x down: 10 px each side of the centre 95


@pytest.mark.parametrize("impl", ["torch", "pil"])
def test_resize_support_is_all_the_resize_reads(impl):
    """Changing every input pixel outside resize_support never changes the outputs it is asked for (and the
    range is tight: changing the pixel just inside it does)."""
    rng = np.random.default_rng(1)
    for in_size, out_size in [(240, 256), (48, 32), (60, 37), (37, 49), (100, 10), (64, 64 * 3)]:
        img = rng.integers(0, 256, (5, in_size, 3), dtype=np.uint8)

        def run(a, out_size=out_size):
            if impl == "pil":
                return np.asarray(Image.fromarray(a).resize((out_size, 5), Image.BILINEAR))
            t = torch.from_numpy(a).permute(2, 0, 1)[None]
            return F.interpolate(t, size=(5, out_size), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()

        ref = run(img)
        for lo, hi in [(0, out_size), (out_size // 3, out_size // 2), (out_size - 1, out_size), (1, 2)]:
            a, b = decode.resize_support(in_size, out_size, lo, hi)
            other = img.copy()
            other[:, :a] = 255 - other[:, :a]
            other[:, b:] = 255 - other[:, b:]
            assert np.array_equal(run(other)[:, lo:hi], ref[:, lo:hi]), (impl, in_size, out_size, lo, hi)


def test_read_region_exact_numbers():
    jester = presets.get("jester")
    # fused (pre-resize + rescaled crop): the fused_window slice, 1 px margin
    p = _plan((240, 320), (256, 341), (29, 0, 224, 256), (224, 224))
    assert decode.fused_window(p, 240, 320) == (27, 0, 210, 240)
    assert decode.read_region(p, 240, 320, fused="auto") == (26, 0, 238, 240)
    # the same plan through the reference order: the pre-resize's filter support of the crop (x: 341 -> 320
    # is scale 0.938, support 1: output 29 reads from int(29.5 * 0.938 - 0.5) = 27, output 252 up to 238)
    assert decode.read_region(p, 240, 320, fused=False, margin=0) == (27, 0, 238, 240)
    assert decode.read_region(p, 240, 320, fused=False) == (26, 0, 239, 240)
    # val centre crop: 256x341 pre-resize, (58, 16, 224, 224)
    v = geometry.make_plans(jester, "val", clip=0, key="k", label=0, num_frames=8, src_size=(240, 320))[0]
    assert v.crop == (58, 16, 224, 224)
    assert decode.read_region(v, 240, 320) == (53, 13, 266, 227)
    # no pre-resize (SSv2 train): the crop slice itself
    s = _plan((240, 320), (240, 320), (40, 30, 180, 180), (224, 224))
    assert decode.read_region(s, 240, 320) == (39, 29, 221, 211)
    # clipped to the frame
    assert decode.read_region(_plan((48, 64), (48, 64), (0, 0, 64, 48), (48, 64)), 48, 64) == (0, 0, 64, 48)


def test_roi_cost_and_clip_region():
    assert decode.roi_cost(0, 120, 240) == pytest.approx(0.64)
    assert decode.roi_cost(0, 240, 240) == pytest.approx(1.15)  # nvImageCodec's whole frame
    assert decode.roi_cost(120, 240, 240) == pytest.approx(0.13 + 1.02 - 0.225)
    top = _plan((240, 320), (240, 320), (40, 0, 160, 120), (224, 224))
    bottom = _plan((240, 320), (240, 320), (160, 120, 160, 120), (224, 224))
    tall = _plan((240, 320), (240, 320), (0, 20, 100, 150), (224, 224))
    assert decode.clip_region([top], 240, 320) == (0, 0, 320, 121)  # whole rows: 0.13 + 1.02 * 121/240 = 0.64
    assert decode.clip_region([bottom], 240, 320) is None  # 0.93: the rows above are entropy-decoded anyway
    assert decode.clip_region([top, bottom], 240, 320) is None
    assert decode.clip_region([top, bottom], 240, 320, max_cost=2) == (0, 0, 320, 240)
    assert decode.roi_cost(19, 171, 240) == pytest.approx(0.8211, abs=1e-4)  # rows [19, 171)
    assert decode.clip_region([tall], 240, 320) == (0, 19, 320, 171)
    assert decode.clip_region([tall], 240, 320, max_cost=0.8) is None


# ------------------------------------------------------------------------------------------- the decoder
@needs_nv
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_region_pixels_equal_the_full_decode(subsampling):
    rng = np.random.default_rng(subsampling)
    dec = decode.roi_decoder()
    for seed in range(4):
        h, w = (60, 88) if seed % 2 else (67, 93)
        data = _jpeg(h, w, seed, subsampling)
        ref = decode.decode_jpeg(data)
        for _ in range(25):
            y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
            y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
            out = np.full((h, w, 3), 7, np.uint8)
            assert dec.decode_into(data, (x0, y0, x1, y1), out)
            assert np.array_equal(out[y0:y1, x0:x1], ref[y0:y1, x0:x1]), (seed, (x0, y0, x1, y1))
            out[y0:y1, x0:x1] = 7
            assert (out == 7).all()  # nothing written outside the region


@needs_nv
def test_rejected_frames_are_left_to_the_full_decode():
    good = _jpeg(60, 88, 0)
    arr = np.zeros((5, 60, 88, 3), np.uint8)
    bufs = [good, good[: len(good) // 2], b"\xff\xd8garbage\xff\xd9", _jpeg(61, 88, 1), _jpeg(60, 88, 2, gray=True)]
    plan = _plan((60, 88), (60, 88), (0, 0, 40, 30), (32, 32))
    assert decode.decode_clip_roi(bufs, [plan], arr) == [1, 2, 3]  # truncated, garbage, wrong size
    assert np.array_equal(arr[0, :31], decode.decode_jpeg(good)[:31]) and not arr[0, 31:].any()
    assert np.array_equal(arr[4, :31], decode.decode_jpeg(bufs[4])[:31])  # grey -> RGB as simplejpeg
    assert not arr[1:4].any()


def test_without_nvimgcodec_it_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # import raises ImportError
    result = {}

    def other_thread():  # a fresh thread: no decoder made yet
        result["dec"] = decode.roi_decoder()
        plan = _plan((60, 88), (60, 88), (0, 0, 40, 30), (32, 32))
        result["roi"] = decode.decode_clip_roi([_jpeg(60, 88, 0)], [plan], np.zeros((1, 60, 88, 3), np.uint8))

    th = threading.Thread(target=other_thread)
    th.start()
    th.join()
    assert result == {"dec": None, "roi": None}


@needs_nv
@pytest.mark.parametrize("resample", ["torch", "pil", "fused"])
def test_executor_never_reads_outside_the_region(resample):
    """Decode the region into frames filled with 0 and with 255: the executor's output is the same, and equal
    to its output on fully decoded frames."""
    rng = np.random.default_rng(5)
    bufs = [_jpeg(60, 88, s) for s in range(T)]
    full = np.stack([decode.decode_jpeg(b) for b in bufs])
    fused = {"torch": False, "pil": False, "fused": True}[resample]  # the backend's FUSED
    for name in ("jester", "sthv2", "egogesture"):
        preset = presets.get(name)
        for clip in range(6):
            for mode, kw in (("train", {}), ("val", {}), ("test", {"test_crops": max(preset.test_crops)})):
                plans = geometry.make_plans(preset, mode, clip=clip, key="k", label=0, num_frames=T,
                                            src_size=(60, 88), num_segments=T, size=SIZE, seed=int(rng.integers(99)),
                                            **kw)
                outs = []
                for fill in (0, 255):
                    arr = np.full((T, 60, 88, 3), fill, np.uint8)
                    assert decode.decode_clip_roi(bufs, plans, arr, fused=fused, max_cost=10) == []
                    outs.append(arr)
                for plan in plans:
                    got = [_execute(a, plan, resample, fused) for a in outs + [full]]
                    assert torch.equal(got[0], got[2]) and torch.equal(got[1], got[2]), (name, mode, plan)


def _execute(frames, plan, resample, fused):
    if resample == "pil":
        return torch.from_numpy(decode.run_plan_pil_arrays(frames, plan))
    return decode.run_plan_torch(frames, plan, fused=fused)


# ------------------------------------------------------------------------------------------- the loader
@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("roi")
    out = {}
    for name, kw in (("jester", {"n_train": 6, "n_val": 3, "n_test": 2, "frames": (5, 9)}),
                     ("sthv2", {"n_train": 6, "n_val": 3, "n_test": 2, "frames": (5, 9)}),
                     ("egogesture", {"frames": (4, 6)})):
        rawtrees.make_tree(name, root / name / "raw", size=FRAME, **kw)
        convert_dataset(name, root / name / "raw", root / name / "out")
        out[name] = str(root / name / "out")
    return out


@pytest.fixture
def count_roi(monkeypatch):
    """Let ROI decode run on every clip (the test frames are too small for its cost model to choose it) and
    count the frames it decoded."""
    monkeypatch.setattr(decode, "ROI_MAX_COST", 10.0)
    calls = []
    real = decode.RoiDecoder.decode_into

    def counted(self, data, region, out):
        ok = real(self, data, region, out)
        calls.append(ok)
        return ok

    monkeypatch.setattr(decode.RoiDecoder, "decode_into", counted)
    return calls


@needs_nv
@pytest.mark.parametrize("resample", ["auto", "torch", "pil", "fused"])
@pytest.mark.parametrize("name", ["jester", "sthv2", "egogesture"])
def test_batches_identical_with_and_without_roi_decode(trees, count_roi, name, resample):
    modes = [("train", {}), ("val", {}), ("test", {"test_clips": 2, "test_crops": max(presets.get(name).test_crops)})]
    for mode, kw in modes:
        args = dict(backend="torch", mode=mode, batch_size=2, num_segments=T, size=SIZE, workers=0, seed=4,
                    resample=resample, flip=mode == "train", **kw)
        split = "val" if mode == "val" else ("test" if mode == "test" else "train")
        want = list(build_loader(trees[name], split, roi_decode=False, **args))
        n = len(count_roi)
        got = list(build_loader(trees[name], split, roi_decode=True, **args))
        assert len(count_roi) > n and all(count_roi[n:]), (mode, "ROI decode did not run")
        assert len(got) == len(want) > 0
        for (a, la), (b, lb) in zip(got, want):
            assert torch.equal(la, lb) and torch.equal(a, b), (name, mode, resample)


@needs_nv
def test_threads_and_corrupt_frames_with_roi_decode(trees, count_roi, tmp_path):
    args = dict(backend="torch", mode="train", batch_size=2, num_segments=T, size=SIZE, seed=1)
    want = list(build_loader(trees["jester"], "train", workers=0, roi_decode=False, **args))
    got = list(build_loader(trees["jester"], "train", workers=2, executor="threads", roi_decode=True, **args))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, want)) and all(count_roi)
    # DataLoader processes forked from a process whose thread already holds a decoder make their own
    assert decode.roi_decoder() is not None
    procs = list(build_loader(trees["jester"], "train", workers=2, executor="processes", roi_decode=True, **args))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(procs, want)) and len(procs) == len(want)
    # a truncated frame is named exactly as without ROI decode
    from test_loader import corrupt_copy

    corrupt_copy(trees["jester"], tmp_path / "bad", "val", [1])
    msgs = []
    for roi in (False, True):
        with pytest.raises(FrameError) as e:
            list(build_loader(tmp_path / "bad", "val", backend="torch", mode="val", batch_size=2, num_segments=T,
                              size=SIZE, workers=0, roi_decode=roi))
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "corrupt JPEG" in msgs[1]


def test_loader_without_nvimgcodec_decodes_in_full(trees, count_roi, monkeypatch):
    args = dict(backend="torch", mode="train", batch_size=2, num_segments=T, size=SIZE, seed=2, workers=2)
    want = list(build_loader(trees["sthv2"], "train", roi_decode=False, **args))
    assert bool(list(build_loader(trees["sthv2"], "train", roi_decode=True, **args))) and len(count_roi) == HAVE_NV * 24
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # the loader's fresh threads cannot import it
    got = list(build_loader(trees["sthv2"], "train", roi_decode=True, **args))
    assert len(count_roi) == HAVE_NV * 24 and all(torch.equal(a, b) for (a, _), (b, _) in zip(got, want))


@needs_nv
def test_roi_decode_is_off_with_dct_scale(trees, count_roi):
    args = dict(backend="torch", mode="train", batch_size=2, num_segments=T, size=SIZE, workers=0, seed=1,
                dct_scale=True)
    list(build_loader(trees["jester"], "train", roi_decode=True, **args))
    assert count_roi == []

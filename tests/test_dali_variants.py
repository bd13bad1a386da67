"""The ``dali`` backend's variants (issue 21): full-frame vs ROI decode, the parallel (worker-process) feed, one
pipeline streaming epoch after epoch (the next epoch's batches prefetched before the current one ends), the
nvJPEG check that keeps ROI decode + fancy upsampling off where it is wrong, and a quiet log.

On the CPU every variant runs the same DALI operators as on a GPU except the decoder (libjpeg-turbo): each must
give the torch backend's clips within ``test_dali``'s tolerances, and the variants agree with the default graph
exactly (parallel feed) or within 1 grey level (full-frame decode: the resize's taps at the crop border read
real neighbours instead of the window's clamped edge -- measured max 1, mean 1.3e-4 on the test tree).
"""
from __future__ import annotations

import logging

import pytest
from test_dali import dali_test, tolerance



@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    import rawtrees
    from pipelines.ingest.convert import convert_dataset

    root = tmp_path_factory.mktemp("dali_variants")
    rawtrees.make_jester(root / "raw", n_train=11, n_val=7, n_test=3, frames=(3, 14), size=(96, 72))
    convert_dataset("jester", root / "raw", root / "out")
    return str(root / "out")


ARGS = dict(batch_size=3, num_segments=4, size=48, workers=0, seed=5)


def _batches(shards, split, epoch=0, backend="dali", **kw):
    from pipelines.loader import build_loader

    loader = build_loader(shards, split, backend=backend, mode=split, **{**ARGS, **kw})
    loader.set_epoch(epoch)
    return loader, list(loader)


VARIANTS = [pytest.param({"decode": "full"}, 1, id="full-frame"),
            pytest.param({"feed": "parallel", "py_workers": 1}, 0, id="parallel-feed"),
            pytest.param({"decode": "roi", "prefetch": 1, "num_threads": 1}, 0, id="roi-prefetch1")]


@dali_test
@pytest.mark.parametrize("variant, max_vs_default", VARIANTS)
def test_every_variant_gives_the_torch_backends_clips(shards, variant, max_vs_default):
    import torch

    for split, kw in (("train", {"flip": True}), ("test", {"test_clips": 2, "test_crops": 3})):
        d, db = _batches(shards, split, epoch=1, record=True, **variant, **kw)
        _, ref = _batches(shards, split, epoch=1, **kw)  # the default DALI graph
        t, tb = _batches(shards, split, epoch=1, backend="torch", resample="pil", **kw)  # the reference pixels
        want = [[t.planner.plans(int(c), 1) for c in b] for b in t.planner.batches(1)]
        assert [vids for _, vids in d.served] == want and len(db) == len(tb) == len(ref) > 0
        for (dc, dl), (rc, _), (tc, tl), vids in zip(db, ref, tb, want):
            assert torch.equal(dl, tl) and dc.shape == tc.shape and dc.dtype == torch.uint8
            assert (dc.int() - rc.int()).abs().max() <= max_vs_default
            dc5, tc5 = (dc, tc) if split == "test" else (dc[:, None], tc[:, None])
            for k, plans in enumerate(vids):
                for v, plan in enumerate(plans):
                    diff = (dc5[k, v].int() - tc5[k, v].int()).abs().float()
                    mean_tol, max_tol = tolerance(plan, d.two_step)
                    assert diff.mean() <= mean_tol and diff.max() <= max_tol, (plan, diff.mean(), diff.max())


@dali_test
def test_next_epoch_is_prefetched_by_one_pipeline_before_this_one_ends(shards):
    """Timing-free: the source reads clips of epoch e+1 before epoch e's last batch is handed over, the pipeline
    is built once for three epochs, and the batches are those of a loader made fresh for each epoch."""
    import torch

    from pipelines.loader import build_loader

    log: list = []
    loader = build_loader(shards, "train", backend="dali", mode="train", prefetch=2, **ARGS)
    real = loader.fetch
    loader.fetch = lambda row, idx: log.append(row) or real(row, idx)  # callback feed: same thread, ordered
    n, B = len(loader), ARGS["batch_size"]
    ahead = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        got = []
        for b, batch in enumerate(loader):
            got.append(batch)
            if b == n - 1:  # epoch's last batch in hand: how many batches beyond the epoch were read?
                ahead.append(len(log) // B - (epoch + 1) * n)
        _, fresh = _batches(shards, "train", epoch=epoch)
        assert len(got) == len(fresh) == n
        assert all(torch.equal(a[0], f[0]) and torch.equal(a[1], f[1]) for a, f in zip(got, fresh))
    assert loader.built == 1
    assert all(a >= 1 for a in ahead), ahead  # prefetch 2: epoch e+1's first batch(es) already requested
    loader.set_epoch(0)  # an epoch the stream does not continue into: a new pipeline, right batches
    assert [int(x) for _, lab in loader for x in lab] == [int(x) for _, lab in _batches(shards, "train")[1]
                                                         for x in lab]
    assert loader.built == 2


@dali_test
def test_one_log_line_names_the_decoder_and_dali_prints_nothing(shards, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="pipelines.backends.dali.loader"):
        loader, _ = _batches(shards, "train", epoch=0)
        loader.set_epoch(1)
        list(loader)
        loader.set_epoch(0)  # rebuilt: still one line
        list(loader)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipelines.backends.dali.loader"]
    assert len(lines) == 1 and "CPU: libjpeg-turbo; ROI decode" in lines[0] and "prefetch 2" in lines[0], lines
    err = capfd.readouterr().err
    assert "ROI decode" not in err and "WARNING" not in err.upper(), err[-500:]


# ----------------------------------------------------------------------------------------- nvJPEG choice
def test_roi_decode_is_chosen_only_where_nvjpeg_decodes_it_right():
    from pipelines.backends.dali.nvjpeg import Nvjpeg, choose_decode

    old, new, unknown = Nvjpeg("/x/libnvjpeg.so.13", (13, 0, 1)), Nvjpeg("/y/libnvjpeg.so.13", (13, 3, 2)), None
    assert choose_decode("auto", False, None) == "roi"  # CPU: libjpeg-turbo ROI decode is exact
    assert choose_decode("full", False, None) == "full"
    assert choose_decode("auto", True, old) == "full"
    assert choose_decode("auto", True, new) == "roi"
    assert choose_decode("auto", True, unknown) == "full"
    assert choose_decode("full", True, new) == "full"
    with pytest.raises(ValueError, match=r"nvJPEG >= 13.2 .* nvJPEG 13.0.1 \(/x/libnvjpeg.so.13\).*decode='full'"):
        choose_decode("roi", True, old)
    with pytest.raises(ValueError, match="auto, roi or full"):
        choose_decode("slice", False, None)


def test_the_nvjpeg_in_the_process_is_read_from_its_memory_map(tmp_path):
    from pipelines.backends.dali.nvjpeg import loaded_nvjpeg

    maps = tmp_path / "maps"
    maps.write_text("7f0-7f1 r-xp 0 08:01 1 /usr/lib/libc.so.6\n"
                    "7f2-7f3 r-xp 0 08:01 2 /usr/local/cuda/lib64/libnvjpeg.so.13.0.1\n"
                    "7f4-7f5 r-xp 0 08:01 3 /site/nvidia/cu13/lib/libnvjpeg.so.13\n")
    assert loaded_nvjpeg(str(maps)) == "/usr/local/cuda/lib64/libnvjpeg.so.13.0.1"  # the first one wins dlopen
    maps.write_text("7f0-7f1 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    assert loaded_nvjpeg(str(maps)) is None
    assert loaded_nvjpeg(str(tmp_path / "missing")) is None


def test_nvjpeg_version_is_read_without_a_gpu():
    """The nvJPEG wheel installed beside nvImageCodec (cu12 here) answers nvjpegGetProperty on a CPU host."""
    from pipelines.backends.dali.nvjpeg import nvjpeg_version, wanted_by_nvimgcodec

    libs = wanted_by_nvimgcodec()
    if not libs:
        pytest.skip("no nvImageCodec / nvJPEG wheel installed")
    v = nvjpeg_version(str(libs[0]))
    assert v is not None and str(v[0]) == libs[0].name.rsplit(".", 1)[1] and v[1] >= 0  # major = SONAME's
    assert nvjpeg_version("/nonexistent/libnvjpeg.so.13") is None


def test_profile_loader_names_the_dali_variants():
    from tools.profile_loader import dali_option

    kw: dict = {}
    for part in "full+parallel+hw0.75+pf4+t3+pw6".split("+"):
        assert dali_option(part, kw)
    assert kw == {"decode": "full", "feed": "parallel", "hw_decoder_load": 0.75, "prefetch": 4, "num_threads": 3,
                  "py_workers": 6}
    assert not dali_option("once", kw) and not dali_option("pfx", kw)  # resample / unknown: not a DALI knob


def _gpu() -> bool:
    from test_dali import _gpu_available

    return _gpu_available()


@dali_test
@pytest.mark.skipif(not _gpu(), reason="no CUDA device: the mixed (nvJPEG) variants run on GPU hosts only")
@pytest.mark.parametrize("variant", [{"decode": "auto"}, {"decode": "full", "hw_decoder_load": 0.5},
                                     {"decode": "roi"}, {"decode": "full", "feed": "parallel", "py_workers": 2}])
def test_gpu_variants_give_the_torch_backends_clips_and_print_nothing(shards, variant, capfd):
    """GPU hosts: every variant within test_dali's GPU tolerance of the torch backend; ROI decode only where the
    nvJPEG in the process decodes it right (else a ValueError saying so); not one line from nvImageCodec."""
    import torch

    try:
        d, db = _batches(shards, "train", epoch=0, device="cuda", record=True, flip=True, **variant)
    except ValueError as e:
        assert variant["decode"] == "roi" and "nvJPEG >= 13.2" in str(e)
        return
    t, tb = _batches(shards, "train", epoch=0, backend="torch", resample="pil", flip=True)
    assert d.gpu and (d.decode == "roi") == (d.nvjpeg.version is not None and d.nvjpeg.version[:2] >= (13, 2)
                                              and variant["decode"] != "full")
    want = [[t.planner.plans(int(c), 0) for c in b] for b in t.planner.batches(0)]
    assert [vids for _, vids in d.served] == want
    for (dc, dl), (tc, tl), vids in zip(db, tb, want):
        assert dc.is_cuda and torch.equal(dl.cpu(), tl)
        for k, plans in enumerate(vids):
            diff = (dc[k].cpu().int() - tc[k].int()).abs().float()
            mean_tol, max_tol = tolerance(plans[0], d.two_step)
            assert diff.mean() <= mean_tol + 0.5 and diff.max() <= max_tol + 4, (variant, diff.mean(), diff.max())
    err = capfd.readouterr().err
    assert "ROI decode with fancy upsampling" not in err and "WARNING" not in err.upper(), err[-1000:]


@dali_test
def test_parallel_feed_names_a_bad_clip_in_one_line_or_replaces_it(shards, tmp_path):
    """A worker process's FrameError reaches DALI's caller as a bare Exception with a traceback: the loader
    traces it to the clip on the host and raises the one-line FrameError; with on_bad="replace" the worker
    replaces the clip by the next row, and the loader counts it."""
    from test_loader import corrupt_copy

    from pipelines.errors import FrameError
    from pipelines.loader import build_loader

    keys = corrupt_copy(shards, tmp_path / "bad", "val", [4])
    kw = dict(mode="val", batch_size=2, num_segments=4, size=48, workers=1, feed="parallel")
    with pytest.raises(FrameError) as e:
        list(build_loader(tmp_path / "bad", "val", backend="dali", **kw))
    assert str(e.value).startswith(f"jester val: clip {keys[4]!r} (row 4) frame ") and "\n" not in str(e.value)
    rep = build_loader(tmp_path / "bad", "val", backend="dali", on_bad="replace", record=True, **kw)
    assert sum(len(lab) for _, lab in rep) == 7 and rep.replaced == 1
    assert [ps[0].clip for _, vids in rep.served for ps in vids] == [0, 1, 2, 3, 5, 5, 6]

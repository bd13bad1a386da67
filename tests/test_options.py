"""Typed backend options (pipelines/backends/options.py): validation on construction, the keyword shorthand of
LoaderSpec / build_loader, the one resample vocabulary, and the Config fields that reach the LoaderSpec."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.backends.options import (OPTIONS, RESAMPLE, DaliOptions, FfcvOptions, FolderOptions, TorchOptions,
                                        options_for)
from pipelines.loader import LoaderSpec
from trainer.config import make_config
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_every_backend_has_its_options_class():
    from pipelines.backends import BACKENDS

    assert set(OPTIONS) == set(BACKENDS)
    assert {b: type(options_for(b)) for b in OPTIONS} == {"torch": TorchOptions, "dali": DaliOptions,
                                                          "ffcv": FfcvOptions, "folder": FolderOptions}


@pytest.mark.parametrize("cls, kw, message", [
    (TorchOptions, {"resample": "exact"}, "torch backend: resample='exact' is not allowed (allowed: one of auto, "
                                          "reference, once, pil)"),
    (TorchOptions, {"resample": "torch"}, "torch backend: resample='torch' is not allowed"),
    (TorchOptions, {"executor": "fork"}, "torch backend: executor='fork' is not allowed (allowed: one of threads, "
                                         "processes)"),
    (TorchOptions, {"prefetch_factor": 0}, "torch backend: prefetch_factor=0 is not allowed (allowed: an integer >= 1)"),
    (TorchOptions, {"decode_device": "tpu"}, "torch backend: decode_device='tpu' is not allowed"),
    (TorchOptions, {"dct_scale": "yes"}, "torch backend: dct_scale='yes' is not allowed (allowed: True or False)"),
    (DaliOptions, {"resample": "pil"}, "dali backend: resample='pil' is not allowed (allowed: one of auto, "
                                       "reference, once)"),
    (DaliOptions, {"resample": "twice"}, "dali backend: resample='twice' is not allowed"),
    (DaliOptions, {"num_threads": 0}, "dali backend: num_threads=0 is not allowed (allowed: an integer >= 1)"),
    (DaliOptions, {"feed": "threads"}, "dali backend: feed='threads' is not allowed (allowed: one of callback, "
                                       "parallel)"),
    (DaliOptions, {"decode": "gpu"}, "dali backend: decode='gpu' is not allowed (allowed: one of auto, roi, full)"),
    (DaliOptions, {"hw_decoder_load": 1.5}, "dali backend: hw_decoder_load=1.5 is not allowed (allowed: None or a "
                                            "number in [0, 1])"),
    (DaliOptions, {"py_workers": 0}, "dali backend: py_workers=0 is not allowed"),
    (FfcvOptions, {"batches_ahead": -1}, "ffcv backend: batches_ahead=-1 is not allowed"),
    (FolderOptions, {"prefetch_factor": 1.5}, "folder backend: prefetch_factor=1.5 is not allowed"),
])
def test_bad_values_are_one_line_errors_naming_backend_and_option(cls, kw, message):
    with pytest.raises(ValueError) as e:
        cls(**kw)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_dali_choices_are_the_graphs():
    from pipelines.backends.dali.graph import FEEDS
    from pipelines.backends.options import DALI_FEEDS

    assert DALI_FEEDS == FEEDS
    assert DaliOptions(feed="parallel", decode="full", hw_decoder_load=0.75, py_workers=3).py_workers == 3


def test_options_are_frozen_and_normalised():
    o = TorchOptions(decode_device="cuda:1")
    assert o.decode_device == "cuda:1" and o.resample == "auto"
    with pytest.raises(AttributeError):
        o.resample = "pil"
    assert FfcvOptions(beton=Path("/x/a.beton")).beton == "/x/a.beton"


def test_resample_means_one_thing_on_every_backend_that_resamples():
    """torch's and dali's ``resample`` share the vocabulary; each keeps its measured default (torch ``auto``,
    dali ``reference``), and dali maps the words onto its two_step switch."""
    from pipelines.backends.torch.loader import FUSED

    assert RESAMPLE == ("auto", "reference", "once", "pil") and set(FUSED) == set(RESAMPLE)
    assert FUSED == {"auto": "auto", "reference": False, "once": True, "pil": False}
    assert TorchOptions().resample == "auto" and DaliOptions().resample == "reference"
    # None: two resamplings exactly where the reference has two; False: once, from the source window
    assert {r: DaliOptions(resample=r).two_step for r in ("auto", "reference", "once")} == \
        {"auto": False, "reference": None, "once": False}


def test_loader_spec_carries_typed_options(tmp_path):
    spec = LoaderSpec.of(tmp_path, "train", backend="dali", prefetch=3, workers=1)
    assert spec.options == DaliOptions(prefetch=3) and spec.workers == 1
    assert LoaderSpec(tmp_path, "train").options == TorchOptions()
    assert LoaderSpec(tmp_path, "train", options={"resample": "pil"}).options == TorchOptions(resample="pil")
    given = FolderOptions(prefetch_factor=4)
    assert LoaderSpec.of(tmp_path, "val", backend="folder", options=given).options is given
    with pytest.raises(TypeError, match="folder backend: unknown option.s. resample .its options: prefetch_factor."):
        LoaderSpec.of(tmp_path, "val", backend="folder", resample="pil")
    with pytest.raises(TypeError, match="backend 'dali' takes DaliOptions options, got TorchOptions"):
        LoaderSpec(tmp_path, "val", backend="dali", options=TorchOptions())
    with pytest.raises(TypeError, match=r"options \['prefetch_factor'\] given besides an options object"):
        LoaderSpec.of(tmp_path, "val", options=TorchOptions(), prefetch_factor=3)
    with pytest.raises(ValueError, match="remote_gap >= 0"):
        LoaderSpec(tmp_path, "val", remote_gap=-1)
    with pytest.raises(ValueError, match="remote timeouts must be > 0"):
        LoaderSpec(tmp_path, "val", remote_request_s=0)


def test_remote_defaults_are_the_readers_defaults(tmp_path):
    """A spec (and a Config) that sets nothing reads remote data exactly as the shard reader's own defaults."""
    from trainer.config import Config
    from pipelines.shards import cache, storage

    spec = LoaderSpec(tmp_path, "train")
    params = inspect.signature(cache.open_shards).parameters
    assert (spec.remote_threads, spec.remote_gap) == (params["threads"].default, params["gap"].default)
    assert spec.timeouts == storage.TIMEOUTS
    cfg = Config()
    assert [getattr(cfg, f) for f in ("remote_threads", "remote_gap", "remote_connect_s", "remote_request_s",
                                      "remote_attempts", "on_bad")] == \
        [getattr(spec, f) for f in ("remote_threads", "remote_gap", "remote_connect_s", "remote_request_s",
                                    "remote_attempts", "on_bad")]


def test_options_module_and_config_import_no_backend_package():
    code = ("import sys, trainer.config, pipelines.loader, pipelines.backends.options; "
            "print(sorted(m for m in ('torch', 'nvidia.dali', 'ffcv', 'simplejpeg') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("over, line", [
    ({"backend": "dali", "resample": "pil"},
     "--resample pil: dali backend: resample='pil' is not allowed (allowed: one of auto, reference, once)"),
    ({"backend": "ffcv", "resample": "once"},
     "--resample once is not an option of --backend ffcv (it is a torch/dali-backend option)"),
    ({"backend": "dali", "decode_on": "device"},
     "--decode-on device is not an option of --backend dali (it is a torch-backend option)"),
    ({"on_bad": "skip"}, "--on-bad='skip' is not allowed (allowed: one of raise, replace)"),
    ({"remote_gap": "-1"}, "--remote-gap=-1 is not allowed (allowed: >= 0)"),
    ({"remote_request_s": "0"}, "--remote-request-s=0.0 is not allowed (allowed: > 0.0)"),
])
def test_config_rejects_bad_backend_options_in_one_line(tmp_path, over, line):
    with pytest.raises(ConfigError) as e:
        make_config({"dataset": "jester", "data": str(tmp_path), **over})
    assert str(e.value).splitlines() == ["invalid config:", "  " + line]


def test_config_builds_the_backends_options():
    cfg = make_config({"dataset": "jester", "data": "x", "resample": "pil", "decode_on": "device", "device": "cpu"})
    assert cfg.loader_options() == TorchOptions(resample="pil", decode_device="cpu")
    assert cfg.loader_options("cuda:1").decode_device == "cuda:1"
    assert make_config({"dataset": "jester", "data": "x", "backend": "dali"}).loader_options() == DaliOptions()
    assert make_config({"dataset": "jester", "data": "x", "backend": "dali", "resample": "once"}).loader_options() \
        == DaliOptions(resample="once")

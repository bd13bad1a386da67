"""Typed options of each loader backend: one small frozen dataclass per backend, validated on construction.

A :class:`~pipelines.loader.LoaderSpec` carries the options object of its backend (``spec.options``); the
builder reads it. This module imports nothing heavy (no torch, DALI or FFCV), so ``train.py validate`` builds the
options object -- and rejects a bad value in one line -- before any process starts.

``resample`` has one vocabulary wherever a backend resamples (torch, dali); the reference resamples *twice*
where it pre-resizes the frame and then rescales the crop (Jester / EgoGesture train), once elsewhere:

* ``"auto"``: one resize from the crop window mapped to the source where the reference resamples twice; the
  reference's order elsewhere (torch's default);
* ``"reference"``: the reference's order everywhere -- two resamplings where it has two (dali's default);
* ``"once"``: one resize from the crop window mapped to the source everywhere (for dali the same as ``"auto"``:
  its one-step path always starts from the source window);
* ``"pil"``: PIL's resampling, bit-identical to the ``folder`` backend (torch only).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

RESAMPLE = ("auto", "reference", "once", "pil")
ON_BAD = ("raise", "replace")  # LoaderSpec.on_bad (every backend): here so a config can check it without numpy
EXECUTORS = ("threads", "processes")
DALI_DECODES = ("auto", "roi", "full")
DALI_FEEDS = ("callback", "parallel")  # pipelines.backends.dali.graph.FEEDS
DEVICE_TYPES = ("cpu", "cuda")


class _Options:
    """Shared behaviour: :meth:`of` (keywords -> options, TypeError naming an unknown one) and the checks."""

    backend: ClassVar[str]

    def __post_init__(self):
        self.check()

    def check(self) -> None:  # pragma: no cover - every backend overrides
        pass

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, **kw) -> "_Options":
        unknown = sorted(set(kw) - set(cls.names()))
        if unknown:
            raise TypeError(f"{cls.backend} backend: unknown option(s) {', '.join(unknown)} "
                            f"(its options: {', '.join(cls.names()) or 'none'})")
        return cls(**kw)

    def _fail(self, name: str, allowed: str) -> None:
        raise ValueError(f"{self.backend} backend: {name}={getattr(self, name)!r} is not allowed (allowed: {allowed})")

    def _choice(self, name: str, allowed) -> None:
        if getattr(self, name) not in allowed:
            self._fail(name, "one of " + ", ".join(map(str, allowed)))

    def _at_least(self, name: str, lo: int) -> None:
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            self._fail(name, f"an integer >= {lo}")

    def _flags(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "True or False")


@dataclass(frozen=True)
class TorchOptions(_Options):
    """``torch`` backend (:mod:`pipelines.backends.torch.loader` describes each option)."""

    backend: ClassVar[str] = "torch"
    resample: str = "auto"
    dct_scale: bool = False
    decode_device: str | None = None
    prefetch_factor: int = 2
    verify: bool = False
    executor: str = "threads"
    channels_last: bool = True

    def check(self) -> None:
        self._choice("resample", RESAMPLE)
        self._choice("executor", EXECUTORS)
        self._at_least("prefetch_factor", 1)
        self._flags("dct_scale", "verify", "channels_last")
        if self.decode_device is not None:
            object.__setattr__(self, "decode_device", str(self.decode_device))  # a torch.device is welcome
            if self.decode_device.split(":")[0] not in DEVICE_TYPES:
                self._fail("decode_device", "None, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class DaliOptions(_Options):
    """``dali`` backend (:func:`pipelines.backends.dali.loader.build_dali_loader`, the meaning of each option in
    :class:`~pipelines.backends.dali.loader.DaliLoader`); ``num_threads`` / ``py_workers`` None: the spec's
    ``workers`` (at least 1); ``hw_decoder_load`` None: DALI's default."""

    backend: ClassVar[str] = "dali"
    num_threads: int | None = None
    prefetch: int = 2
    record: bool = False
    strict: bool = False
    resample: str = "reference"
    verify: bool = False
    decode: str = "auto"
    hw_decoder_load: float | None = None
    feed: str = "callback"
    py_workers: int | None = None

    def check(self) -> None:
        self._choice("resample", [r for r in RESAMPLE if r != "pil"])
        self._choice("decode", DALI_DECODES)
        self._choice("feed", DALI_FEEDS)
        for name in ("num_threads", "py_workers"):
            if getattr(self, name) is not None:
                self._at_least(name, 1)
        self._at_least("prefetch", 1)
        self._flags("record", "strict", "verify")
        load = self.hw_decoder_load
        if load is not None and (isinstance(load, bool) or not isinstance(load, (int, float)) or not 0 <= load <= 1):
            self._fail("hw_decoder_load", "None or a number in [0, 1]")

    @property
    def two_step(self) -> bool | None:
        """:class:`~pipelines.backends.dali.loader.DaliLoader`'s ``two_step`` (None: where the reference has two)."""
        return None if self.resample == "reference" else False


@dataclass(frozen=True)
class FfcvOptions(_Options):
    """``ffcv`` backend (:func:`pipelines.backends.ffcv.loader.build_ffcv_loader`); ``beton`` None:
    ``<data>/ffcv/<split>.beton``."""

    backend: ClassVar[str] = "ffcv"
    beton: str | None = None
    batches_ahead: int = 2
    os_cache: bool = True
    record: bool = False
    verify: bool = False

    def check(self) -> None:
        if self.beton is not None:
            object.__setattr__(self, "beton", str(self.beton))
        self._at_least("batches_ahead", 1)
        self._flags("os_cache", "record", "verify")


@dataclass(frozen=True)
class FolderOptions(_Options):
    """``folder`` backend (:func:`pipelines.backends.folder.build_folder_loader`)."""

    backend: ClassVar[str] = "folder"
    prefetch_factor: int = 2

    def check(self) -> None:
        self._at_least("prefetch_factor", 1)


OPTIONS = {cls.backend: cls for cls in (TorchOptions, DaliOptions, FfcvOptions, FolderOptions)}


def options_for(backend: str, **kw):
    """The options object of ``backend`` from keywords (TypeError for an unknown keyword, ValueError for a bad
    value or an unknown backend)."""
    try:
        cls = OPTIONS[backend]
    except KeyError:
        raise ValueError(f"unknown loader backend {backend!r}; expected one of {', '.join(OPTIONS)}") from None
    return cls.of(**kw)

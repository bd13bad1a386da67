"""The trainer: what ``train.py`` (the click CLI at the top level) runs.

One file per concern, in the order a run uses them:

* :mod:`trainer.config` -- the frozen :class:`~trainer.config.Config`, TOML layering, validation (click types),
  the resume/eval merge with ``RUN/config.json``.
* :mod:`trainer.dist` -- the one process-group init (:class:`~trainer.dist.DistInfo`) and the reductions.
* :mod:`trainer.data` -- the only module that imports ``pipelines``: loaders (built once per run), the synthetic
  loader, normalisation on the training device, clip records, the pre-launch data checks.
* :mod:`trainer.model` -- model, AMP, channels_last, optimiser and the lr schedule (``MultiStepLR``).
* :mod:`trainer.loop` -- ``train_one_epoch``, ``evaluate`` and the synthetic-data ceiling.
* :mod:`trainer.checkpoint` -- the one checkpoint saver (atomic, fsync, symlink-safe) and loader.
* :mod:`trainer.metrics` -- ``RUN/metrics.jsonl`` and TensorBoard.

Nothing happens at import: torch and ``pipelines`` are imported inside the functions that need them.
"""

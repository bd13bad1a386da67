"""``RUN/metrics.jsonl`` (append, one JSON object per line) and TensorBoard curves, written by rank 0 only."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("train")


class MetricsLog:
    def __init__(self, run: Path, enabled: bool):
        self.enabled = enabled
        self.path = Path(run) / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(run) / "tb"))
            except ImportError:  # tensorboard is optional at run time
                log.warning("tensorboard is not installed: curves only in %s", self.path)

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

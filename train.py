"""ACTION-Net trainer (joins action/ and pipelines/). Not yet implemented: see issue 7."""
from __future__ import annotations

import sys


def main() -> int:
    sys.stderr.write("train.py: not yet — the DDP trainer lands with the trainer issue (#7).\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Helpers of the predict/export tests: tiny train.py-format checkpoints and videos written with PyAV."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["Swiping Left", "Swiping Right", "Stop Sign"]


def make_checkpoint(path: Path, *, arch: str = "resnet18", temporal: str = "action", num_segments: int = 4,
                    size: int = 32, classes=CLASSES, seed: int = 0, spread: float = 0.01) -> Path:
    """A checkpoint as train.py writes it (format, config, classes, model) for a tiny model whose weights are
    perturbed by ``spread`` so that its logits are far from zero (a fresh model's are ~0 in eval mode)."""
    import torch

    from action import build_model
    from trainer.checkpoint import Checkpointer
    from trainer.config import Config

    torch.manual_seed(seed)
    cfg = Config(dataset="jester", data="x", arch=arch, temporal=temporal, num_segments=num_segments, size=size,
                 run_dir=str(path.parent))
    model = build_model(arch=arch, num_classes=len(classes), num_segments=num_segments, temporal=temporal,
                        zero_init=False)  # the official init: every residual branch live
    with torch.no_grad():
        for p in model.parameters():
            p.add_(spread * torch.randn_like(p))
        torch.nn.init.normal_(model.new_fc.weight, std=0.5)
        torch.nn.init.normal_(model.new_fc.bias, std=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    Checkpointer(path.parent, True).save({"model": model.state_dict(), "config": cfg.to_json(),
                                          "classes": list(classes), "epoch": 1})
    if path.name != "last.pt":
        (path.parent / "last.pt").rename(path)
    return path


def frame_of(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    """Frame ``i`` of the test videos: a bright square moving right over a gradient (deterministic)."""
    f = np.zeros((h, w, 3), np.uint8)
    f[..., 0] = np.linspace(0, 200, w, dtype=np.uint8)[None, :]
    f[..., 2] = (i * 7) % 256
    x = (i * 3) % (w - 10)
    f[h // 2 - 5:h // 2 + 5, x:x + 10] = 255
    return f


def write_video(path: Path, n: int, fps: int, codec: str = "libx264", w: int = 64, h: int = 48,
                options: dict | None = None) -> Path:
    """``n`` frames at ``fps`` encoded with PyAV (H.264 in .mp4 with the index up front, VP9 in .webm)."""
    import av

    opts = {"movflags": "faststart"} if str(path).endswith(".mp4") else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream(codec, rate=fps, options=options or {})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_of(i, w, h), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path

"""What `train.py predict` makes of its window predictions besides the JSON lines: merged segments, the
annotated video (``--video-out``) and the timeline chart (``--plot``)."""
from __future__ import annotations

import logging
import os
from fractions import Fraction

log = logging.getLogger("predict")

EPS = 1e-6
CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def segments(records: list[dict]) -> list[dict]:
    """Runs of consecutive windows with the same top-1 merged: ``{"label", "start_s", "end_s", "prob"}``, from the
    run's first window start to its last window end, ``prob`` the mean top-1 probability over the run."""
    out: list[dict] = []
    probs: list[float] = []
    for r in records:
        top = r["top"][0]
        if out and out[-1]["label"] == top["label"]:
            out[-1]["end_s"] = r["end_s"]
            probs.append(top["prob"])
        else:
            if out:
                out[-1]["prob"] = round(sum(probs) / len(probs), 6)
            out.append({"label": top["label"], "start_s": r["start_s"], "end_s": r["end_s"], "prob": 0.0})
            probs = [top["prob"]]
    if out:
        out[-1]["prob"] = round(sum(probs) / len(probs), 6)
    return out


class Annotator:
    """``--video-out``: every input frame, with the top-1 of the newest window that had ended by the frame's
    time (what a live viewer would see) and its probability drawn on it; encoded by PyAV (H.264 for .mp4/.mkv/
    .mov, VP9 for .webm, MPEG-4 for .avi). Frames wait until the prediction they show is known."""

    def __init__(self, path: str):
        ext = os.path.splitext(path)[1].lower()
        if ext not in CODECS:
            from trainer.predict import PredictError
            raise PredictError(f"{path}: --video-out must end in {', '.join(CODECS)}")
        self.path, self.codec = path, CODECS[ext]
        self.tmp = f"{path}.tmp{os.getpid()}{ext}"
        self.waiting: list = []  # frames not drawn yet
        self.shown: list[tuple[float, str]] = []  # (window end, text) of the predictions so far
        self.out = self.stream = self.font = None
        self.pts = -1
        self.frames = 0

    def frame(self, f) -> None:
        self.waiting.append(f)

    def prediction(self, rec: dict) -> None:
        top = rec["top"][0]
        self.shown.append((rec["end_s"], f"{top['label']}  {100 * top['prob']:.0f}%"))
        while self.waiting and self.waiting[0].t + EPS < rec["end_s"]:
            self._draw(self.waiting.pop(0))

    def _text(self, t: float) -> str:
        text = "..."
        for end, s in self.shown:
            if end > t + EPS:
                break
            text = s
        return text

    def _draw(self, f) -> None:
        import av
        import numpy as np
        from PIL import Image, ImageDraw, ImageFont

        rgb = f.rgb()
        h, w = rgb.shape[:2]
        if self.out is None:
            self.rate = Fraction(round(1 / f.dur)) if f.dur else Fraction(25)
            self.out = av.open(self.tmp, "w")
            self.stream = self.out.add_stream(self.codec, rate=self.rate)
            self.stream.width, self.stream.height = w - w % 2, h - h % 2
            self.stream.pix_fmt = "yuv420p"
            self.font = ImageFont.load_default(size=max(10, h // 14))
        img = Image.fromarray(np.ascontiguousarray(rgb[: self.stream.height, : self.stream.width]))
        d = ImageDraw.Draw(img)
        text = self._text(f.t)
        box = d.textbbox((4, 2), text, font=self.font)
        d.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
        d.text((4, 2), text, font=self.font, fill=(255, 255, 0))
        vf = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")
        self.pts = max(self.pts + 1, int(round(f.t * self.rate)))
        vf.pts = self.pts
        for p in self.stream.encode(vf):
            self.out.mux(p)
        self.frames += 1

    def close(self) -> None:
        for f in self.waiting:
            self._draw(f)
        self.waiting = []
        if self.out is None:
            return
        for p in self.stream.encode():
            self.out.mux(p)
        self.out.close()
        os.replace(self.tmp, self.path)
        log.info("%s: %d annotated frames", self.path, self.frames)


def plot_timeline(records: list[dict], path: str, *, title: str = "", truth: list[dict] | None = None,
                  top: int = 5) -> None:
    """The probabilities of the ``top`` classes that were ever most likely, over time (window centres), with the
    merged top-1 segments (and ``truth`` segments ``{"label", "start_s", "end_s"}``, if given) as bands below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.files import save_figure

    best: dict[str, float] = {}
    for r in records:
        for c in r["top"]:
            best[c["label"]] = max(best.get(c["label"], 0.0), c["prob"])
    names = sorted(best, key=lambda n: -best[n])[:top]
    shown = names + [n for n in dict.fromkeys([s["label"] for s in segments(records)] +
                                              [s["label"] for s in truth or []]) if n not in names]
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(shown)}
    fig, (ax, bands) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    xs = [(r["start_s"] + r["end_s"]) / 2 for r in records]
    for n in names:
        ys = [next((c["prob"] for c in r["top"] if c["label"] == n), 0.0) for r in records]
        ax.plot(xs, ys, label=n, color=colours[n], lw=1.4)
    ax.set(ylabel="probability", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    rows = [("predicted", segments(records))] + ([("truth", truth)] if truth else [])
    for y, (name, segs) in enumerate(rows):
        for s in segs:
            bands.broken_barh([(s["start_s"], s["end_s"] - s["start_s"])], (y + 0.1, 0.8),
                              color=colours.get(s["label"], "lightgrey"))
    bands.set_yticks([y + 0.5 for y in range(len(rows))], [r[0] for r in rows])
    bands.set_xlabel("time (s)")
    save_figure(fig, path, dpi=110)

"""Tiny synthetic video trees (PyAV encoders in the wheel: VP9 webm, H.264 mp4), built on the fly.

    write_video(path, n, *, size=(64, 48), fps=12, codec="vp9", seed=0) -> path
    make_sthv2_videos(root, *, n_train=4, n_val=2, n_test=2, frames=(6, 12), size=(64, 48), fps=12,
                      naming="flat", codec="vp9", seed=0) -> tree
    folders_to_videos(tree, *, codec="h264", fps=12) -> tree   # a rawtrees tree with every frame folder
                                                                # replaced by <folder>.mp4 (or .webm)

A tree is ``{"root", "classes", "clips": {split: {key: {"label", "video": path, ...}}}}``. SSv2 ``naming``:
``"flat"`` (``something-something-v2-*.json`` in RAW) or ``"labels"`` (the newer ``labels/*.json``). Frames
are smooth moving gradients (video-like, so VP9/H.264 code them in a few hundred bytes each).
"""
from __future__ import annotations

import json
import os

import numpy as np
import rawtrees

CODECS = {"vp9": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}),
          "h264": ("libx264", ".mp4", {"preset": "ultrafast", "crf": "23"})}  # x264 default: B-frames (reordering)


def frame_image(t: int, size=(64, 48), seed: int = 0) -> np.ndarray:
    """RGB uint8 (h, w, 3): a gradient that pans with ``t`` plus a moving bright square (frames all differ)."""
    w, h = size
    rng = np.random.default_rng(seed)
    c = rng.uniform(40, 215, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([c[k] + 35 * np.sin((xx + 3 * t) / (9 + 4 * k)) + 25 * np.cos((yy - 2 * t) / (7 + 3 * k))
                    for k in range(3)], -1)
    s = max(4, min(w, h) // 4)
    x0, y0 = (5 * t) % max(1, w - s), (3 * t) % max(1, h - s)
    img[y0:y0 + s, x0:x0 + s] = 240
    return np.clip(img, 0, 255).astype(np.uint8)


def write_video(path, n: int, *, size=(64, 48), fps: int = 12, codec: str = "vp9", seed: int = 0,
                images=None) -> str:
    """Encode ``n`` frames (``images`` or :func:`frame_image`) at ``fps`` into ``path``."""
    import av

    name, _, opts = CODECS[codec]
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with av.open(os.fspath(path), "w") as c:
        s = c.add_stream(name, rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = dict(opts)
        s.codec_context.thread_count = 1
        for t in range(n):
            img = images[t] if images is not None else frame_image(t, size, seed)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return os.fspath(path)


def decoded_rgb(path) -> list[np.ndarray]:
    """Every frame PyAV decodes from ``path``, in presentation order, as RGB (the reference of the tests)."""
    import av

    with av.open(os.fspath(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def make_sthv2_videos(root, *, n_train: int = 4, n_val: int = 2, n_test: int = 2, frames=(6, 12), size=(64, 48),
                      fps: int = 12, naming: str = "flat", codec: str = "vp9", seed: int = 0) -> dict:
    """The SSv2 release layout: label JSONs (``naming``) + ``20bn-something-something-v2/<id>.webm``."""
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    classes = rawtrees.sthv2_classes()
    if naming == "flat":
        files = {"labels": "something-something-v2-labels.json", "train": "something-something-v2-train.json",
                 "val": "something-something-v2-validation.json", "test": "something-something-v2-test.json"}
    else:
        files = {"labels": "labels/labels.json", "train": "labels/train.json", "val": "labels/validation.json",
                 "test": "labels/test.json"}
    os.makedirs(os.path.join(root, os.path.dirname(files["labels"])), exist_ok=True)
    with open(os.path.join(root, files["labels"]), "w") as f:
        json.dump({c: str(i) for i, c in enumerate(classes)}, f)
    picks = [86, 87, 93, 94, 166, 167, 0, 5, 42, 173]
    ext = CODECS[codec][1]
    clips: dict = {}
    vid = 1000
    for split, n in {"train": n_train, "val": n_val, "test": n_test}.items():
        clips[split], entries = {}, []
        for i in range(n):
            vid += int(rng.integers(1, 500))
            key = str(vid)
            label = -1 if split == "test" else picks[(i + (split == "val")) % len(picks)]
            k = int(rng.integers(frames[0], frames[1] + 1))
            path = write_video(os.path.join(root, "20bn-something-something-v2", key + ext), k, size=size, fps=fps,
                               codec=codec, seed=vid)
            clips[split][key] = {"label": label, "video": path, "frames": k}
            if split == "test":
                entries.append({"id": key})
            else:
                entries.append({"id": key, "label": classes[label].replace("something", "a cup"),
                                "template": classes[label].replace("something", "[something]"),
                                "placeholders": ["a cup"]})
        with open(os.path.join(root, files[split]), "w") as f:
            json.dump(entries, f)
    return {"root": root, "classes": classes, "clips": clips}


def folders_to_videos(tree: dict, *, codec: str = "h264", fps: int = 12) -> dict:
    """Replace every frame folder of a :mod:`rawtrees` tree by ``<folder><ext>`` holding the same frames."""
    import shutil

    import simplejpeg

    folders = sorted({os.path.dirname(f) for split in tree["clips"].values() for c in split.values()
                      for f in c["files"]})
    for d in folders:
        names = sorted(os.listdir(d), key=lambda n: int(n.split(".")[0]))
        imgs = [simplejpeg.decode_jpeg(open(os.path.join(d, n), "rb").read()) for n in names]
        h, w = imgs[0].shape[:2]
        write_video(d + CODECS[codec][1], len(imgs), size=(w, h), fps=fps, codec=codec, images=imgs)
        shutil.rmtree(d)
    for split in tree["clips"].values():
        for c in split.values():
            c["video"] = os.path.dirname(c["files"][0]) + CODECS[codec][1]
    return tree

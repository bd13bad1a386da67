#!/usr/bin/env python
"""Generate a synthetic raw dataset in an official layout: moving shapes whose class is only in the motion.

    make_synthetic.py OUT [--layout jester|egogesture|sthv2] [--clips-per-class N] [--val-per-class N]
                          [--test-clips N] [--classes N] [--size WxH] [--frames A-B] [--seed S]
                          [--workers W] [--quality Q] [--texture X] [--force]

    from tools.make_synthetic import make_synthetic
    summary = make_synthetic("data/raw/synthetic", layout="jester", clips_per_class=240, workers=2)

Every clip is a textured, asymmetric shape (L, F, T, arrow, key; randomly mirrored, random tints and
stripes, always far in luma from the background) over a textured background (random per clip, static over
time; clutter strength --texture) with a little fresh noise per frame.
Appearance, clip length and the distributions of position, size and angle are the same for every class: a
single frame carries no class information. The class is the motion:

\b
  motion  jester (label)                      egogesture (CSV class; label = class - 1)
  left    Swiping Left (0)                    Scroll_hand_towards_left (2)
  right   Swiping Right (1)                   Scroll_hand_towards_right (1)
  cw      Turning Hand Clockwise (14)         Rotate_fists_clockwise (10)
  ccw     Turning Hand Counterclockwise (15)  Rotate_fists_counterclockwise (11)
  down    Swiping Down (2)                    Scroll_hand_downward (3)
  up      Swiping Up (3)                      Scroll_hand_upward (4)
  grow    Zooming In With Full Hand (16)      Zoom_in_with_fists (8)
  shrink  Zooming Out With Full Hand (17)     Zoom_out_with_fists (9)
  static  Stop Sign (23)                      Static_fist (21)

\b
  sthv2 (label): left: Pushing something from right to left (94); right: Pushing something from left to
  right (93); pan right: Turning the camera left while filming something (166); pan left: Turning the
  camera right while filming something (167); down: Moving something down (43); up: Moving something up
  (45); grow: Moving something towards the camera (44); shrink: Moving something away from the camera
  (41); static: Holding something (16).

(sthv2 has no rotation classes; its third pair is a camera pan: background and object move together.)
Left/right and the rotation (or pan) pair are each other's horizontal mirror image, so the datasets'
label-aware flip maps apply (jester 0<->1, 14<->15; egogesture 0<->1, 9<->10; sthv2 93<->94, 166<->167).
``--classes N`` keeps the first N rows (2, 4, 6, 8 or 9 keep the mirror pairs whole). The label file of the
layout always lists the official class names (27 / 83 bundled / 174) so the readers accept it; only the rows
above are used.

Layouts written (docs/DESIGN.md "Raw dataset layouts"):

\b
  jester      frames/<id>/00001.jpg, jester-v1-labels.csv, jester-v1-{train,validation}.csv ("id;Label"),
              jester-v1-test.csv (ids only)
  egogesture  frames/SubjectXX/SceneN/Color/rgbG/000001.jpg, labels/SubjectXX/SceneN/{G,g}roupG.csv
              (rows "class,start,end", 1-based inclusive; several gestures per group video, idle frames
              between them); subjects from the official train/val/test lists
  sthv2       frames/<id>/000001.jpg, something-something-v2-labels.json, -train.json, -validation.json
              ({"id","label","template","placeholders"}), -test.json ([{"id"}])

jester and sthv2 also get ``synthetic-test-answers.csv`` (``id;Label name``; not part of the official
layout, ignored by the readers). ``.synthetic-complete.json`` (the parameters and counts) is written last;
running again with the same parameters does nothing, different parameters need ``--force``. The output is
byte-identical for the same parameters and seed, whatever ``--workers`` is (one RNG per clip/group video).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

LAYOUTS = ("jester", "egogesture", "sthv2")
MARKER = ".synthetic-complete.json"
PARTIAL = ".synthetic-incomplete.json"
ANSWERS = "synthetic-test-answers.csv"
FORMAT = "action-net-fast/synthetic-motion"
VERSION = 2  # 2: --texture, high-contrast and larger shapes
DEFAULT_TEXTURE = 0.35  # background clutter strength (0 flat .. 1 the hardest); see _background

# (class name, motion) in the order --classes keeps them. Motions are what the image does:
# left/right/up/down: the shape translates; cw/ccw: it rotates (clockwise as seen on screen);
# grow/shrink: it scales; static: nothing moves; pan_left/pan_right: background and shape move together.
JESTER_CLASSES = (
    ("Swiping Left", "left"), ("Swiping Right", "right"),
    ("Turning Hand Clockwise", "cw"), ("Turning Hand Counterclockwise", "ccw"),
    ("Swiping Down", "down"), ("Swiping Up", "up"),
    ("Zooming In With Full Hand", "grow"), ("Zooming Out With Full Hand", "shrink"),
    ("Stop Sign", "static"),
)
EGOGESTURE_CLASSES = (  # (1-based class number of the CSV, motion); name = egogesture_classes.txt line
    (2, "left"), (1, "right"), (10, "cw"), (11, "ccw"), (3, "down"), (4, "up"), (8, "grow"), (9, "shrink"),
    (21, "static"),
)
STHV2_CLASSES = (
    ("Pushing something from right to left", "left"), ("Pushing something from left to right", "right"),
    ("Turning the camera left while filming something", "pan_right"),
    ("Turning the camera right while filming something", "pan_left"),
    ("Moving something down", "down"), ("Moving something up", "up"),
    ("Moving something towards the camera", "grow"), ("Moving something away from the camera", "shrink"),
    ("Holding something", "static"),
)
FLIP_MOTIONS = {"left": "right", "right": "left", "cw": "ccw", "ccw": "cw", "pan_left": "pan_right",
                "pan_right": "pan_left"}
"""Motion seen in the horizontally mirrored clip (the rest map to themselves)."""

# Something-Something V2 class names in the official label order (sorted; index = label).
STHV2_NAMES = (
    "Approaching something with your camera", "Attaching something to something",
    "Bending something so that it deforms", "Bending something until it breaks", "Burying something in something",
    "Closing something", "Covering something with something", "Digging something out of something",
    "Dropping something behind something", "Dropping something in front of something",
    "Dropping something into something", "Dropping something next to something", "Dropping something onto something",
    "Failing to put something into something because something does not fit", "Folding something",
    "Hitting something with something", "Holding something", "Holding something behind something",
    "Holding something in front of something", "Holding something next to something",
    "Holding something over something", "Laying something on the table on its side, not upright",
    "Letting something roll along a flat surface", "Letting something roll down a slanted surface",
    "Letting something roll up a slanted surface, so it rolls back down",
    "Lifting a surface with something on it but not enough for it to slide down",
    "Lifting a surface with something on it until it starts sliding down",
    "Lifting something up completely without letting it drop down",
    "Lifting something up completely, then letting it drop down", "Lifting something with something on it",
    "Lifting up one end of something without letting it drop down",
    "Lifting up one end of something, then letting it drop down", "Moving away from something with your camera",
    "Moving part of something", "Moving something across a surface until it falls down",
    "Moving something across a surface without it falling down",
    "Moving something and something away from each other", "Moving something and something closer to each other",
    "Moving something and something so they collide with each other",
    "Moving something and something so they pass each other", "Moving something away from something",
    "Moving something away from the camera", "Moving something closer to something", "Moving something down",
    "Moving something towards the camera", "Moving something up", "Opening something", "Picking something up",
    "Piling something up", "Plugging something into something",
    "Plugging something into something but pulling it right out as you remove your hand",
    "Poking a hole into some substance", "Poking a hole into something soft",
    "Poking a stack of something so the stack collapses", "Poking a stack of something without the stack collapsing",
    "Poking something so it slightly moves", "Poking something so lightly that it doesn't or almost doesn't move",
    "Poking something so that it falls over", "Poking something so that it spins around",
    "Pouring something into something", "Pouring something into something until it overflows",
    "Pouring something onto something", "Pouring something out of something",
    "Pretending or failing to wipe something off of something", "Pretending or trying and failing to twist something",
    "Pretending to be tearing something that is not tearable",
    "Pretending to close something without actually closing it",
    "Pretending to open something without actually opening it", "Pretending to pick something up",
    "Pretending to poke something", "Pretending to pour something out of something, but something is empty",
    "Pretending to put something behind something", "Pretending to put something into something",
    "Pretending to put something next to something", "Pretending to put something on a surface",
    "Pretending to put something onto something", "Pretending to put something underneath something",
    "Pretending to scoop something up with something", "Pretending to spread air onto something",
    "Pretending to sprinkle air onto something", "Pretending to squeeze something",
    "Pretending to take something from somewhere", "Pretending to take something out of something",
    "Pretending to throw something", "Pretending to turn something upside down",
    "Pulling something from behind of something", "Pulling something from left to right",
    "Pulling something from right to left", "Pulling something onto something", "Pulling something out of something",
    "Pulling two ends of something but nothing happens", "Pulling two ends of something so that it gets stretched",
    "Pulling two ends of something so that it separates into two pieces", "Pushing something from left to right",
    "Pushing something from right to left", "Pushing something off of something", "Pushing something onto something",
    "Pushing something so it spins", "Pushing something so that it almost falls off but doesn't",
    "Pushing something so that it falls off the table", "Pushing something so that it slightly moves",
    "Pushing something with something", "Putting number of something onto something",
    "Putting something and something on the table", "Putting something behind something",
    "Putting something in front of something", "Putting something into something",
    "Putting something next to something", "Putting something on a flat surface without letting it roll",
    "Putting something on a surface",
    "Putting something on the edge of something so it is not supported and falls down",
    "Putting something onto a slanted surface but it doesn't glide down", "Putting something onto something",
    "Putting something onto something else that cannot support it so it falls down",
    "Putting something similar to other things that are already on the table",
    "Putting something that can't roll onto a slanted surface, so it slides down",
    "Putting something that can't roll onto a slanted surface, so it stays where it is",
    "Putting something that cannot actually stand upright upright on the table, so it falls on its side",
    "Putting something underneath something", "Putting something upright on the table",
    "Putting something, something and something on the table", "Removing something, revealing something behind",
    "Rolling something on a flat surface", "Scooping something up with something",
    "Showing a photo of something to the camera", "Showing something behind something",
    "Showing something next to something", "Showing something on top of something",
    "Showing something to the camera", "Showing that something is empty", "Showing that something is inside something",
    "Something being deflected from something", "Something colliding with something and both are being deflected",
    "Something colliding with something and both come to a halt", "Something falling like a feather or paper",
    "Something falling like a rock", "Spilling something behind something", "Spilling something next to something",
    "Spilling something onto something", "Spinning something so it continues spinning",
    "Spinning something that quickly stops spinning", "Spreading something onto something",
    "Sprinkling something onto something", "Squeezing something", "Stacking number of something",
    "Stuffing something into something", "Taking one of many similar things on the table",
    "Taking something from somewhere", "Taking something out of something", "Tearing something into two pieces",
    "Tearing something just a little bit", "Throwing something", "Throwing something against something",
    "Throwing something in the air and catching it", "Throwing something in the air and letting it fall",
    "Throwing something onto a surface", "Tilting something with something on it slightly so it doesn't fall down",
    "Tilting something with something on it until it falls off", "Tipping something over",
    "Tipping something with something in it over, so something in it falls out",
    "Touching (without moving) part of something",
    "Trying but failing to attach something to something because it doesn't stick",
    "Trying to bend something unbendable so nothing happens",
    "Trying to pour something into something, but missing so it spills next to it", "Turning something upside down",
    "Turning the camera downwards while filming something", "Turning the camera left while filming something",
    "Turning the camera right while filming something", "Turning the camera upwards while filming something",
    "Twisting (wringing) something wet until water comes out", "Twisting something", "Uncovering something",
    "Unfolding something", "Wiping something off of something",
)
STHV2_OBJECTS = {"L": "an L-shaped block", "F": "a letter F", "T": "a T-shaped piece", "arrow": "an arrow sign",
                 "key": "a key"}

EGO_SUBJECTS_USED = {"train": 4, "val": 2, "test": 2}
"""How many subjects (the first ones of each official list) hold the generated EgoGesture group videos."""
EGO_SCENES = 6
EGO_GESTURES_PER_GROUP = 6


class SyntheticError(Exception):
    """The output folder cannot be (re)generated as asked: the message says why and what to do."""


# ============================================================================================= parameters
@dataclass(frozen=True)
class Params:
    """Everything the generated bytes depend on (recorded in the completion marker)."""

    layout: str
    clips_per_class: int
    val_per_class: int
    test_clips: int
    classes: int
    width: int
    height: int
    frames_min: int
    frames_max: int
    seed: int
    quality: int
    texture: float = DEFAULT_TEXTURE


def parse_size(text: str) -> tuple[int, int]:
    """'128x96' -> (128, 96) (width, height)."""
    try:
        w, h = (int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 128x96)") from None
    return w, h


def parse_frames(text: str) -> tuple[int, int]:
    """'12-20' -> (12, 20); '16' -> (16, 16)."""
    try:
        parts = [int(v) for v in str(text).split("-")]
    except ValueError:
        raise ValueError(f"frames {text!r} is not N or MIN-MAX (e.g. 12-20)") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"frames {text!r} is not N or MIN-MAX (e.g. 12-20)")
    return parts[0], parts[1]


def _check(p: Params) -> None:
    if p.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {p.layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not 2 <= p.classes <= len(JESTER_CLASSES):
        raise ValueError(f"classes must be between 2 and {len(JESTER_CLASSES)}, got {p.classes}")
    if p.clips_per_class < 1 or p.val_per_class < 0 or p.test_clips < 0:
        raise ValueError("clips_per_class must be >= 1, val_per_class and test_clips >= 0")
    if not (32 <= p.width <= 4096 and 32 <= p.height <= 4096):
        raise ValueError(f"size {p.width}x{p.height}: width and height must be 32..4096 pixels")
    if not 4 <= p.frames_min <= p.frames_max <= 10000:
        raise ValueError(f"frames {p.frames_min}-{p.frames_max}: need 4 <= MIN <= MAX")
    if not 1 <= p.quality <= 100:
        raise ValueError(f"quality must be 1..100, got {p.quality}")
    if not 0.0 <= p.texture <= 1.0:
        raise ValueError(f"texture must be 0..1 (0 = flat backgrounds, 1 = the hardest), got {p.texture}")


# ============================================================================================= classes
def class_table(layout: str, classes: int = 9) -> list[dict]:
    """The classes used by ``layout``: ``[{"name", "label", "motion"}, ...]`` (label = index in the label file)."""
    if layout == "jester":
        from pipelines.ingest.datasets.jester import CLASSES as names
        rows = [(n, names.index(n), m) for n, m in JESTER_CLASSES]
    elif layout == "egogesture":
        names = egogesture_names()
        rows = [(names[c - 1], c - 1, m) for c, m in EGOGESTURE_CLASSES]
    elif layout == "sthv2":
        rows = [(n, STHV2_NAMES.index(n), m) for n, m in STHV2_CLASSES]
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return [{"name": n, "label": int(lab), "motion": m} for n, lab, m in rows[:classes]]


def egogesture_names() -> list[str]:
    from pipelines.ingest.datasets.egogesture import load_classes
    return load_classes()


def flip_pairs(table: list[dict]) -> list[tuple[str, str]]:
    """Pairs of class names (among ``table``) that a horizontal flip swaps."""
    by_motion = {r["motion"]: r["name"] for r in table}
    out = []
    for a, b in (("left", "right"), ("cw", "ccw"), ("pan_right", "pan_left")):
        if a in by_motion and b in by_motion:
            out.append((by_motion[a], by_motion[b]))
    return out


# ============================================================================================= rendering
def _box(cx, cy, hw, hh):
    return ("box", cx, cy, hw, hh)


def _tri(*pts):
    return ("tri", *pts)


def _ell(cx, cy, a, b):
    return ("ell", cx, cy, a, b)


# Shapes in unit coordinates (x right, y down), none with a rotational symmetry.
SHAPES = {
    "L": (_box(-0.35, -0.05, 0.2, 0.8), _box(0.1, 0.6, 0.6, 0.2)),
    "F": (_box(-0.4, 0.0, 0.19, 0.85), _box(0.1, -0.67, 0.55, 0.18), _box(0.0, 0.02, 0.35, 0.16)),
    "T": (_box(0.0, -0.6, 0.8, 0.2), _box(0.0, 0.15, 0.2, 0.7)),
    "arrow": (_box(-0.3, 0.0, 0.55, 0.2), _tri((0.2, -0.6), (0.2, 0.6), (0.9, 0.0))),
    "key": (_ell(-0.45, 0.0, 0.42, 0.42), _box(0.3, 0.0, 0.55, 0.14), _box(0.72, 0.22, 0.12, 0.2)),
}
SHAPE_NAMES = tuple(SHAPES)
SHAPE_RADIUS = 1.2  # every shape lies inside this radius (unit coordinates)
BASE_RADIUS = 0.2  # shape radius in units of the frame height at scale 1


def _sdf(prims, u, v):
    """Approximate signed distance (unit coordinates, < 0 inside) to the union of ``prims``."""
    d = None
    for p in prims:
        if p[0] == "box":
            _, cx, cy, hw, hh = p
            e = np.maximum(np.abs(u - cx) - hw, np.abs(v - cy) - hh)
        elif p[0] == "ell":
            _, cx, cy, a, b = p
            e = (np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2) - 1.0) * min(a, b)
        else:  # triangle, counter-clockwise or not: use the sign of the area
            (x1, y1), (x2, y2), (x3, y3) = p[1:]
            s = 1.0 if (x2 - x1) * (y3 - y1) - (y2 - y1) * (x3 - x1) > 0 else -1.0
            e = None
            for (ax, ay), (bx, by) in (((x1, y1), (x2, y2)), ((x2, y2), (x3, y3)), ((x3, y3), (x1, y1))):
                nx, ny = (by - ay) * s, -(bx - ax) * s
                n = math.hypot(nx, ny)
                dist = ((u - ax) * nx + (v - ay) * ny) / n
                e = dist if e is None else np.maximum(e, dist)
        d = e if d is None else np.minimum(d, e)
    return d


def _smooth_field(rng, h, w, cells_x, cells_y):
    """A smooth random RGB field in [0, 1] of shape (h, w, 3) (bicubic upsampling of a small random grid)."""
    from PIL import Image

    small = rng.integers(0, 256, size=(cells_y, cells_x, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def _background(rng, h, w, texture=DEFAULT_TEXTURE):
    """Textured background (float32, h x w x 3): colour base + ``texture`` x (smooth blobs + a grating + static
    grain). ``texture`` 1 makes shapes hard to find from scratch (a 2-class ResNet-18 stays at chance for
    hundreds of steps); the default keeps the clutter visible and lets the demo learn in minutes."""
    mean = rng.uniform(70, 185, size=3).astype(np.float32)
    coarse = _smooth_field(rng, h, w, max(2, w // 40), max(2, h // 40)) - 0.5
    mid = _smooth_field(rng, h, w, max(2, w // 10), max(2, h // 10)) - 0.5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(6, 20)
    grating = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period) + rng.uniform(0, 6.3))
    gcol = rng.uniform(-1, 1, size=3).astype(np.float32) * rng.uniform(8, 22)
    grain = rng.integers(-10, 11, size=(h, w, 1)).astype(np.float32)
    bg = mean + texture * (coarse * rng.uniform(50, 110) + mid * rng.uniform(20, 50) + grating[..., None] * gcol
                           + grain)
    return np.clip(bg, 0, 255), float(mean @ np.array([0.299, 0.587, 0.114], np.float32))


def _appearance(rng, bg_luma):
    """Shape, mirror flag, two stripe colours, stripe frequency/phase/angle.

    The colours are tinted but far from the background's luma (dark shapes on bright backgrounds and the
    reverse, >= ~100 grey levels apart), so the shape is easy to find and the task is about its motion."""
    shape = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
    hue = rng.uniform(0, 1, size=3)
    hue = hue / max(hue.max(), 1e-3)
    if bg_luma > 128:
        c1 = 5 + hue * rng.uniform(20, 45)
        c2 = c1 + rng.uniform(25, 40)
    else:
        c1 = 250 - (1 - hue) * rng.uniform(20, 45)
        c2 = c1 - rng.uniform(25, 40)
    return {"shape": shape, "mirror": bool(rng.integers(2)), "c1": c1.astype(np.float32),
            "c2": np.clip(c2, 0, 255).astype(np.float32), "freq": float(rng.uniform(4, 8)),
            "phase": float(rng.uniform(0, 2 * math.pi)), "tangle": float(rng.uniform(0, math.pi))}


def _trajectory(rng, motion, n, w, h):
    """Per-frame centre x, y (px), radius (px), angle (rad) and background offset (px) for ``motion``.

    Every axis (x, y, log-scale, angle, pan) is drawn the same way for every class; only the class's own axis
    moves (linearly or eased, a symmetric profile, so a reversed clip is a clip of the mirror class), the
    others stay at an offset drawn from the same range as the moving axis covers. Hence the per-frame
    distributions of position, size and angle do not depend on the class.
    """
    def profile(t, ease):  # in [-0.5, 0.5]; profile(1 - t) == -profile(t): a reversed clip is a mirror clip
        return (1 - ease) * t + ease * t * t * (3 - 2 * t) - 0.5

    prof = profile(np.linspace(0.0, 1.0, n), rng.uniform(0, 1))
    lx = rng.uniform(0.28, 0.42) * w
    ly = rng.uniform(0.28, 0.42) * h
    ls = math.log(rng.uniform(1.6, 2.2))
    la = rng.uniform(0.5, 1.0) * math.pi
    cx = w / 2 + rng.uniform(-0.06, 0.06) * w
    cy = h / 2 + rng.uniform(-0.06, 0.06) * h
    r0 = BASE_RADIUS * h * math.exp(rng.uniform(-0.1, 0.1))
    a0 = rng.uniform(0, 2 * math.pi)
    off = profile(rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3))  # still axes: where a moving one may be
    jit = rng.uniform(-0.6, 0.6, size=(2, n))  # sub-pixel hand tremor (symmetric)
    sx = {"right": prof, "left": -prof, "pan_right": prof, "pan_left": -prof}.get(motion, np.full(n, off[0]))
    sy = {"down": prof, "up": -prof}.get(motion, np.full(n, off[1]))
    ss = {"grow": prof, "shrink": -prof}.get(motion, np.full(n, off[2]))
    sa = {"cw": prof, "ccw": -prof}.get(motion, np.zeros(n))
    pan_max = int(math.ceil(0.42 * w)) + 2
    if motion in ("pan_left", "pan_right"):
        # the scene moves with the shape: the window slides the other way over a wider background
        bgx = np.round(pan_max / 2 - sx * lx).astype(np.int64)
        x = cx + (pan_max / 2 - bgx)  # the object is fixed in the scene
    else:
        bgx = np.full(n, int(rng.integers(0, pan_max + 1)), dtype=np.int64)
        x = cx + sx * lx + jit[0]
    y = cy + sy * ly + jit[1] * (motion not in ("pan_left", "pan_right"))
    radius = r0 * np.exp(ss * ls)
    angle = a0 + sa * la
    return x, y, radius, angle, bgx, pan_max


def _draw(frame, look, x, y, radius, angle):
    """Alpha-blend the shape (float32 frame, in place) centred at (x, y) px with ``radius`` px and ``angle``."""
    h, w = frame.shape[:2]
    reach = SHAPE_RADIUS * radius + 2
    x0, x1 = max(0, int(x - reach)), min(w, int(math.ceil(x + reach)) + 1)
    y0, y1 = max(0, int(y - reach)), min(h, int(math.ceil(y + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xx + 0.5 - x) / radius, (yy + 0.5 - y) / radius
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy  # inverse rotation: increasing angle turns the shape clockwise on screen (y down)
    v = -s * dx + c * dy
    if look["mirror"]:
        u = -u
    d = _sdf(SHAPES[look["shape"]], u, v)
    alpha = np.clip(0.5 - d * radius, 0.0, 1.0)[..., None]
    ta = look["tangle"]
    stripes = np.clip(0.5 + 1.5 * np.sin(look["freq"] * (u * math.cos(ta) + v * math.sin(ta)) + look["phase"]), 0, 1)
    colour = look["c1"] + stripes[..., None] * (look["c2"] - look["c1"])
    region = frame[y0:y1, x0:x1]
    region += alpha * (colour - region)


_NOISE_LUT = (np.arange(256) % 9 - 4).astype(np.float32)


def _noise(rng, h, w):
    """Fresh per-frame noise, integers in [-4, 4] (cheap: a lookup of raw random bytes)."""
    return _NOISE_LUT[np.frombuffer(rng.bytes(h * w * 3), dtype=np.uint8)].reshape(h, w, 3)


def render_clip(rng, motion, n, w, h, *, background=None, offset=None, texture=DEFAULT_TEXTURE):
    """Render one clip: list of ``n`` uint8 (h, w, 3) frames and the trajectory (for tests and checks).

    ``background`` (float32, h x (w + pan) x 3, from :func:`_background`) and the window ``offset`` into it
    are shared by the gestures of an EgoGesture group video (motions other than pan_left/pan_right).
    """
    x, y, radius, angle, bgx, pan_max = _trajectory(rng, motion, n, w, h)
    if offset is not None and motion not in ("pan_left", "pan_right"):
        bgx = np.full(n, int(offset), dtype=np.int64)
    if background is None:
        background, luma = _background(rng, h, w + pan_max, texture)
    else:
        luma = float(background.mean(axis=(0, 1)) @ np.array([0.299, 0.587, 0.114], np.float32))
    look = _appearance(rng, luma)
    frames = []
    for i in range(n):
        f = background[:, bgx[i]:bgx[i] + w].copy()
        _draw(f, look, float(x[i]), float(y[i]), float(radius[i]), float(angle[i]))
        f += _noise(rng, h, w)
        frames.append(np.clip(f + 0.5, 0, 255).astype(np.uint8))
    return frames, {"x": x, "y": y, "radius": radius, "angle": angle, "bg_offset": bgx, "shape": look["shape"],
                    "mirror": look["mirror"]}


def _idle_frame(rng, background, w, h, offset):
    f = background[:, offset:offset + w].copy()
    f += _noise(rng, h, w)
    return np.clip(f + 0.5, 0, 255).astype(np.uint8)


# ============================================================================================= planning
def _rng(seed, *key):
    return np.random.default_rng([int(seed), *[int(k) for k in key]])


def _split_classes(p: Params, split: str, count_per_class: int | None, total: int | None) -> list[int]:
    """Class positions (0..classes-1) of a split's clips: balanced, shuffled with the seed."""
    split_no = {"train": 0, "val": 1, "test": 2}[split]
    if count_per_class is not None:
        seq = np.repeat(np.arange(p.classes), count_per_class)
    else:
        seq = np.resize(np.arange(p.classes), total)
    return [int(c) for c in _rng(p.seed, 7, split_no).permutation(seq)]


def plan_units(p: Params) -> list[dict]:
    """The work units: one clip (jester, sthv2) or one group video (egogesture) each, in a fixed order.

    A unit holds everything needed to render it: ``index`` (its RNG key), ``split``, where to write, and the
    classes and frame counts of its clip(s).
    """
    splits = {"train": _split_classes(p, "train", p.clips_per_class, None),
              "val": _split_classes(p, "val", p.val_per_class, None),
              "test": _split_classes(p, "test", None, p.test_clips)}
    units: list[dict] = []
    if p.layout in ("jester", "sthv2"):
        digits = 5 if p.layout == "jester" else 6
        for split in ("train", "val", "test"):
            for c in splits[split]:
                k = len(units)
                n = int(_rng(p.seed, 0, k).integers(p.frames_min, p.frames_max + 1))
                units.append({"index": k, "split": split, "id": str(k + 1), "digits": digits,
                              "folder": f"frames/{k + 1}", "clips": [{"class": c, "start": 1, "end": n}],
                              "frames": n})
        return units
    from pipelines.ingest.datasets.egogesture import SUBJECTS

    for split in ("train", "val", "test"):
        seq = splits[split]
        subjects = SUBJECTS[split][:EGO_SUBJECTS_USED[split]]
        groups = [seq[i:i + EGO_GESTURES_PER_GROUP] for i in range(0, len(seq), EGO_GESTURES_PER_GROUP)]
        for j, classes in enumerate(groups):
            k = len(units)
            subj = subjects[j % len(subjects)]
            local = j // len(subjects)
            scene, group = 1 + local % EGO_SCENES, 1 + local // EGO_SCENES
            r = _rng(p.seed, 0, k)
            t = int(r.integers(3, 9))  # idle frames before the first gesture
            clips = []
            for c in classes:
                n = int(r.integers(p.frames_min, p.frames_max + 1))
                clips.append({"class": c, "start": t + 1, "end": t + n})
                t += n + int(r.integers(3, 9))  # idle frames after it
            units.append({"index": k, "split": split, "subject": subj, "scene": scene, "group": group,
                          "digits": 6, "folder": f"frames/Subject{subj:02d}/Scene{scene}/Color/rgb{group}",
                          "label_file": f"labels/Subject{subj:02d}/Scene{scene}/"
                                        f"{'group' if k % 2 else 'Group'}{group}.csv",
                          "clips": clips, "frames": t})
    return units


# ============================================================================================= writing
def _render_unit(args) -> tuple[int, int, int, list[str]]:
    """Render and write one unit's frames; returns (unit index, frames, bytes, shape of each clip)."""
    import simplejpeg

    root, p, motions, unit = args
    w, h = p.width, p.height
    rng = _rng(p.seed, 1, unit["index"])
    folder = os.path.join(root, *unit["folder"].split("/"))
    os.makedirs(folder, exist_ok=True)
    if p.layout == "egogesture":  # one scene (background) per group video, one shape per gesture
        pan_max = int(math.ceil(0.42 * w)) + 2
        background, _ = _background(rng, h, w + pan_max, p.texture)
        offset = int(rng.integers(0, pan_max + 1))
        frames, shapes = [None] * unit["frames"], []
        for g, clip in enumerate(unit["clips"]):
            n = clip["end"] - clip["start"] + 1
            clip_frames, info = render_clip(_rng(p.seed, 2, unit["index"], g), motions[clip["class"]], n, w, h,
                                            background=background, offset=offset)
            frames[clip["start"] - 1:clip["end"]] = clip_frames
            shapes.append(info["shape"])
        for i, f in enumerate(frames):
            if f is None:
                frames[i] = _idle_frame(rng, background, w, h, offset)
    else:
        clip = unit["clips"][0]
        frames, info = render_clip(rng, motions[clip["class"]], unit["frames"], w, h, texture=p.texture)
        shapes = [info["shape"]]
    total = 0
    for i, f in enumerate(frames, 1):
        data = simplejpeg.encode_jpeg(f, quality=p.quality, colorspace="RGB")
        with open(os.path.join(folder, f"{i:0{unit['digits']}d}.jpg"), "wb") as fh:
            fh.write(data)
        total += len(data)
    return unit["index"], len(frames), total, shapes


def _write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary name, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    from common.files import atomic_write

    atomic_write(path, text)


def _write_annotations(root: str, p: Params, table: list[dict], units: list[dict], shapes: dict) -> None:
    if p.layout == "jester":
        from pipelines.ingest.datasets.jester import CLASSES, LABELS_FILE, SPLIT_FILES

        _write_text(os.path.join(root, LABELS_FILE), "\n".join(CLASSES) + "\n")
        for split in ("train", "val", "test"):
            rows = [u for u in units if u["split"] == split]
            if split == "test":
                lines = [u["id"] for u in rows]
            else:
                lines = [f"{u['id']};{table[u['clips'][0]['class']]['name']}" for u in rows]
            _write_text(os.path.join(root, SPLIT_FILES[split]), "".join(f"{ln}\n" for ln in lines))
    elif p.layout == "sthv2":
        files = {"train": "something-something-v2-train.json", "val": "something-something-v2-validation.json",
                 "test": "something-something-v2-test.json"}
        _write_text(os.path.join(root, "something-something-v2-labels.json"),
                    json.dumps({n: str(i) for i, n in enumerate(STHV2_NAMES)}, indent=1) + "\n")
        for split in ("train", "val", "test"):
            entries = []
            for u in (u for u in units if u["split"] == split):
                if split == "test":
                    entries.append({"id": u["id"]})
                    continue
                name = table[u["clips"][0]["class"]]["name"]
                obj = STHV2_OBJECTS[shapes[u["index"]][0]]  # the placeholder names the shape drawn
                entries.append({"id": u["id"], "label": name.replace("something", obj),
                                "template": name.replace("something", "[something]"), "placeholders": [obj]})
            _write_text(os.path.join(root, files[split]), json.dumps(entries, indent=1) + "\n")
    else:
        for u in units:
            rows = [f"{table[c['class']]['label'] + 1},{c['start']},{c['end']}" for c in u["clips"]]
            _write_text(os.path.join(root, *u["label_file"].split("/")), "".join(f"{r}\n" for r in rows))
    if p.layout in ("jester", "sthv2"):
        lines = [f"{u['id']};{table[u['clips'][0]['class']]['name']}" for u in units if u["split"] == "test"]
        _write_text(os.path.join(root, ANSWERS), "".join(f"{ln}\n" for ln in lines))


def _ours(root: str) -> bool:
    return os.path.exists(os.path.join(root, MARKER)) or os.path.exists(os.path.join(root, PARTIAL))


def _clean(root: str) -> None:
    """Remove what this tool writes (only called on a folder that carries one of its markers)."""
    for name in ("frames", "labels"):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for name in os.listdir(root):
        if name.startswith(("jester-v1-", "something-something-v2-", ANSWERS, MARKER, PARTIAL)):
            os.remove(os.path.join(root, name))


def _summary(p: Params, table: list[dict], units: list[dict]) -> dict:
    splits = {}
    for s in ("train", "val", "test"):
        us = [u for u in units if u["split"] == s]
        splits[s] = {"clips": sum(len(u["clips"]) for u in us), "videos": len(us),
                     "frames": sum(u["frames"] for u in us)}
    return {"format": FORMAT, "version": VERSION, "params": asdict(p), "classes": table,
            "flip_pairs": [list(x) for x in flip_pairs(table)], "splits": splits,
            "label_file_classes": {"jester": 27, "egogesture": 83, "sthv2": 174}[p.layout]}


def make_synthetic(out, *, layout: str = "jester", clips_per_class: int = 240, val_per_class: int = 60,
                   test_clips: int = 36, classes: int = 9, size=(128, 96), frames=(12, 20), seed: int = 0,
                   workers: int = 1, quality: int = 90, texture: float = DEFAULT_TEXTURE, force: bool = False,
                   progress: bool = False) -> dict:
    """Write a synthetic motion dataset in the official ``layout`` under ``out``; return a summary dict.

    Args:
        out: output folder (created; must be empty, new, or an earlier output of this tool).
        layout: ``jester``, ``egogesture`` or ``sthv2``.
        clips_per_class: train clips per class; ``val_per_class``: validation clips per class;
            ``test_clips``: test clips in all (classes balanced; hidden in jester/sthv2 test files).
        classes: how many of the 9 motion classes to use (the first ones of the module table).
        size: (width, height) or "WxH"; frames: (min, max) or "A-B" frames per clip (uniform).
        seed: the output is a function of the parameters and the seed only (not of ``workers``).
        workers: processes rendering clips; quality: JPEG quality.
        texture: background clutter strength, 0 (flat colour) .. 1 (strong blobs, gratings and grain, which a
            network trained from scratch needs far more steps to see through).
        force: regenerate even if ``out`` holds a complete output (with other parameters, too).
        progress: tqdm progress bar.

    Returns:
        ``{"root", "skipped", "seconds", "clips_per_s", "bytes", "format", "params", "classes"
        ([{"name","label","motion"}]), "flip_pairs", "splits" ({split: {"clips","videos","frames"}}),
        "label_file_classes"}``. ``skipped`` is True when a complete output with the same parameters was found.

    Raises:
        SyntheticError: ``out`` is not empty and was not written by this tool, or holds a complete output
            with other parameters and ``force`` is False.
        ValueError: bad parameters.
    """
    if isinstance(size, str):
        size = parse_size(size)
    if isinstance(frames, str):
        frames = parse_frames(frames)
    p = Params(layout=layout, clips_per_class=int(clips_per_class), val_per_class=int(val_per_class),
               test_clips=int(test_clips), classes=int(classes), width=int(size[0]), height=int(size[1]),
               frames_min=int(frames[0]), frames_max=int(frames[1]), seed=int(seed), quality=int(quality),
               texture=float(texture))
    _check(p)
    root = os.path.abspath(os.fspath(out))
    table = class_table(p.layout, p.classes)
    units = plan_units(p)
    summary = _summary(p, table, units)
    marker = os.path.join(root, MARKER)

    if os.path.isdir(root) and os.listdir(root):
        if not _ours(root):
            raise SyntheticError(f"{root}: folder is not empty and was not written by make_synthetic "
                                 f"(no {MARKER}); choose a new or empty folder")
        if os.path.exists(marker) and not force:
            try:
                with open(marker, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict) and {k: v for k, v in old.items() if k != "bytes"} == \
                    json.loads(json.dumps(summary)):
                return {"root": root, "skipped": True, "seconds": 0.0, "clips_per_s": 0.0,
                        "bytes": old.get("bytes", 0), **summary}
            old_params = (old or {}).get("params")
            diff = sorted(k for k in asdict(p) if not old_params or old_params.get(k) != asdict(p)[k])
            raise SyntheticError(f"{root}: holds a complete synthetic dataset made with other parameters "
                                 f"({', '.join(diff) or 'format'} differ); use --force to regenerate it")
        _clean(root)  # an interrupted run, or --force
    os.makedirs(root, exist_ok=True)
    _write_text(os.path.join(root, PARTIAL), json.dumps(summary, indent=1, sort_keys=True) + "\n")

    t0 = time.perf_counter()
    motions = [r["motion"] for r in table]
    tasks = [(root, p, motions, u) for u in units]
    n_clips = sum(len(u["clips"]) for u in units)
    total_bytes = 0
    shapes: dict[int, list[str]] = {}
    from tqdm import tqdm

    pool = None
    if workers > 1:  # started before tqdm's monitor thread exists
        import multiprocessing as mp

        pool = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers)
    bar = tqdm(total=sum(u["frames"] for u in units), unit="frame", disable=not progress, smoothing=0.1,
               desc=f"synthetic {p.layout}")
    try:
        results = map(_render_unit, tasks) if pool is None else \
            pool.imap_unordered(_render_unit, tasks, chunksize=8)
        for k, n, b, sh in results:
            shapes[k] = sh
            total_bytes += b
            bar.update(n)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    _write_annotations(root, p, table, units, shapes)
    _write_text(marker, json.dumps({**summary, "bytes": total_bytes}, indent=1, sort_keys=True) + "\n")
    os.remove(os.path.join(root, PARTIAL))
    seconds = time.perf_counter() - t0
    return {"root": root, "skipped": False, "seconds": seconds, "clips_per_s": n_clips / max(seconds, 1e-9),
            "bytes": total_bytes, **summary}


# ============================================================================================= CLI
def _cli_help() -> str:
    """The --help text: the module docstring without its Python usage lines."""
    doc = __doc__ or ""
    start = doc.index("Every clip is")
    return ("Generate a synthetic raw dataset in an official layout (OUT): moving shapes whose class is only in "
            "the motion.\n\n" + doc[start:])


CLI_HELP = _cli_help()


def _cli():
    import click

    def size_type(text):
        try:
            return parse_size(text)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    def frames_type(text):
        try:
            return parse_frames(text)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    @click.command(help=CLI_HELP,
                   context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120,
                                     "terminal_width": 120})
    @click.argument("out", type=click.Path(file_okay=False))
    @click.option("--layout", type=click.Choice(LAYOUTS), default="jester", show_default=True,
                  help="official raw layout to write")
    @click.option("--clips-per-class", type=click.IntRange(1), default=240, show_default=True,
                  help="train clips per class")
    @click.option("--val-per-class", type=click.IntRange(0), default=60, show_default=True,
                  help="validation clips per class")
    @click.option("--test-clips", type=click.IntRange(0), default=36, show_default=True,
                  help="test clips in all (balanced over the classes)")
    @click.option("--classes", type=click.IntRange(2, 9), default=9, show_default=True,
                  help="use the first N motion classes of the table above")
    @click.option("--size", default="128x96", show_default=True, help="frame WIDTHxHEIGHT")
    @click.option("--frames", default="12-20", show_default=True, help="frames per clip: N or MIN-MAX")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
                  help="rendering processes (does not change the output)")
    @click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality")
    @click.option("--texture", type=click.FloatRange(0, 1), default=DEFAULT_TEXTURE, show_default=True,
                  help="background clutter: 0 flat colour .. 1 strong blobs, gratings and grain (much harder "
                       "to learn from scratch)")
    @click.option("--force", is_flag=True, help="regenerate even if OUT holds a complete output")
    def main(out, layout, clips_per_class, val_per_class, test_clips, classes, size, frames, seed, workers,
             quality, texture, force):
        try:
            s = make_synthetic(out, layout=layout, clips_per_class=clips_per_class, val_per_class=val_per_class,
                               test_clips=test_clips, classes=classes, size=size_type(size),
                               frames=frames_type(frames), seed=seed, workers=workers, quality=quality,
                               texture=texture, force=force, progress=True)
        except (SyntheticError, ValueError, OSError) as e:
            raise click.ClickException(str(e)) from None
        sp = s["splits"]
        counts = ", ".join(f"{k} {v['clips']}" for k, v in sp.items())
        if s["skipped"]:
            click.echo(f"{s['root']}: already complete ({counts} clips); nothing to do (--force regenerates)")
        else:
            click.echo(f"{s['root']}: {layout} layout, {len(s['classes'])} classes, clips: {counts}; "
                       f"{sum(v['frames'] for v in sp.values())} frames, {s['bytes'] / 2**20:.1f} MiB "
                       f"in {s['seconds']:.1f} s ({s['clips_per_s']:.0f} clips/s)")
        names = ", ".join(f"{c['label']}={c['name']}" for c in s["classes"])
        click.echo(f"classes (label=name): {names}")

    return main


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script from a checkout without `pip install -e .`
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _cli()()

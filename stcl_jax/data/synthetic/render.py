"""How the synthetic datasets look: a colour and texture per class, the scenes (bands top to bottom and the objects
that may appear), the object shapes. Shared by the VSPW videos (`vspw`) and the ADE20K / COCO images (`images`),
so classes the datasets share look alike in all of them.
"""

from __future__ import annotations

import numpy as np

# class name -> (base RGB, texture kind, relative period, amplitude)
LOOK = {
    "sky": ((110, 160, 225), "waves", 0.45, 12),
    "building": ((150, 120, 105), "checker", 0.12, 35),
    "road": ((85, 85, 90), "stripes0", 0.06, 18),
    "mountain": ((95, 110, 80), "waves", 0.20, 25),
    "tree": ((40, 120, 45), "dots", 0.07, 40),
    "water": ((40, 90, 150), "stripes0", 0.05, 30),
    "wall": ((205, 195, 170), "stripes90", 0.10, 14),
    "floor": ((150, 105, 60), "stripes90", 0.04, 30),
    "person": ((215, 60, 60), "stripes45", 0.05, 35),
    "dog": ((190, 140, 70), "dots", 0.04, 35),
    "car": ((230, 210, 40), "checker", 0.05, 45),
    "ship_or_boat": ((230, 210, 40), "checker", 0.05, 45),  # same look as car: only the context differs
    "chair_or_seat": ((120, 60, 150), "stripes0", 0.03, 40),
    "ball": ((240, 240, 240), "checker", 0.03, 60),
    "others": ((170, 150, 200), "stripes30", 0.04, 50),   # raw 0: a sign / poster of no VSPW class
}
# scene -> (bands top to bottom with their lower edge as a share of the height, object classes)
SCENES = {
    "street": ((("sky", 0.35), ("building", 0.6), ("road", 1.0)), ("car", "person", "dog")),
    "lake": ((("sky", 0.3), ("mountain", 0.45), ("tree", 0.55), ("water", 1.0)), ("ship_or_boat", "person", "dog")),
    "room": ((("wall", 0.55), ("floor", 1.0)), ("chair_or_seat", "person", "ball", "dog")),
}
SHAPES = {"car": "box", "ship_or_boat": "box", "chair_or_seat": "box", "person": "person", "dog": "ellipse",
           "ball": "ellipse"}


def texture(kind: str, period: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pattern in [-1, 1] at pixel coordinates x, y (already shifted into the texture's own frame)."""
    w = 2 * np.pi / period
    if kind.startswith("stripes"):
        a = np.deg2rad(float(kind[len("stripes"):]))
        return np.sin(w * (x * np.sin(a) + y * np.cos(a)))
    if kind == "checker":
        return np.sign(np.sin(w * x) * np.sin(w * y) + 1e-6)
    if kind == "waves":
        return np.sin(w * x + 2.0 * np.sin(0.5 * w * y))
    if kind == "dots":
        return np.clip(2.5 * np.cos(w * x) * np.cos(w * y) - 1.0, -1, 1)
    raise ValueError(f"unknown texture kind {kind!r}")


def shape_region(shape: str, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Pixels inside an object of kind `shape` ("box", "ellipse", "person"), at coordinates v (down), u (right)
    relative to its centre in units of its half size."""
    if shape == "box":
        return (np.abs(v) < 0.55) & (np.abs(u) < 1.0)
    if shape == "ellipse":
        return (v / 0.7) ** 2 + u ** 2 < 1.0
    if shape == "person":                             # body + head
        return ((v / 1.0) ** 2 + (u / 0.35) ** 2 < 1.0) | ((v + 1.25) ** 2 + u ** 2 < 0.09)
    raise ValueError(shape)

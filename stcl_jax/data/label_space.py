"""Label spaces: raw mask values -> train ids of one dataset, and mapping files between datasets' classes.

Every build stores raw values in the VSPW convention: raw k (1..n) = class k - 1 of the dataset, raw 0 ("other",
unlabelled, crowd) and 255 (void) = ignored. `raw_lut(n)` turns raw values into the dataset's own train ids.

A mapping file sends each class of a source dataset (ADE20K, COCO panoptic, ...) to a class of the target label
space (VSPW's 124 classes) or to `ignore`, so several datasets can train one classifier. Format, one line per
source class, every source class exactly once (so a typo cannot silently drop a class):

    # comment
    source class name -> target class name      # trailing comment
    other source name -> ignore

Shipped maps (`stcl_jax/data/label_maps/`, give the name or a path): ade20k_to_vspw, coco_panoptic_to_vspw. Copy
and edit one to change a decision. Check a map and see how many pixels it keeps (`stcl_jax.data.label_map`):

    python -m stcl_jax.data.label_map --map ade20k_to_vspw --source ade20k [--pixels BUILD_DIR]

This module is the library (numpy only, no dataset imports): every dataset, reader and the training pipeline
builds on it.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

IGNORE = 255
IGNORE_NAME = "ignore"
MAPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "label_maps")


class LabelMapError(ValueError):
    """A mapping file that cannot be applied; the message names the file and line."""


def raw_lut(num_classes: int) -> np.ndarray:
    """uint8 (256,): raw k -> k - 1 for 1..num_classes, everything else -> 255."""
    if not 1 <= num_classes <= 254:
        raise ValueError(f"num_classes={num_classes}: raw masks hold 1..254 classes")
    lut = np.full(256, IGNORE, np.uint8)
    lut[1:num_classes + 1] = np.arange(num_classes, dtype=np.uint8)
    return lut


def valid_raw_values(num_classes: int) -> np.ndarray:
    """bool (256,): which raw values a mask of a `num_classes` dataset may hold (0..num_classes and 255)."""
    ok = np.zeros(256, bool)
    ok[:num_classes + 1] = True
    ok[255] = True
    return ok


def apply_raw_lut(raw: np.ndarray, lut: np.ndarray, valid: np.ndarray, where: str) -> np.ndarray:
    """`lut[raw]` for a raw mask whose values are all `valid` (see `valid_raw_values`); else ValueError naming
    `where` and the offending values."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or not valid[raw].all():
        bad = sorted(set(np.unique(raw).tolist()) - set(np.flatnonzero(valid).tolist()))
        raise ValueError(f"{where}: mask values {bad[:10]} are neither a class (1..{int(valid[1:255].sum())}) of "
                         "its dataset, 0 nor 255")
    return lut[raw]


def resolve_map_path(name_or_path: str) -> str:
    """A shipped map's name (e.g. "ade20k_to_vspw") or a file path -> the file's path."""
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = os.path.join(MAPS_DIR, f"{name_or_path}.txt")
    if os.path.isfile(shipped):
        return shipped
    names = sorted(f[:-4] for f in os.listdir(MAPS_DIR) if f.endswith(".txt"))
    raise FileNotFoundError(f"label map {name_or_path!r}: neither a file nor a shipped map ({', '.join(names)})")


def _norm(name: str) -> str:
    return name.strip()


def read_label_map(name_or_path: str, source_names: Sequence[str], target_names: Sequence[str]) -> np.ndarray:
    """uint8 (256,): source train id -> target train id (255 = ignore), from a mapping file.

    Raises LabelMapError naming the file and line for: a malformed line, an unknown source or target class, a
    source class listed twice, and (naming them) source classes the file does not list."""
    path = resolve_map_path(name_or_path)
    src = {_norm(n): i for i, n in enumerate(source_names)}
    tgt = {_norm(n): i for i, n in enumerate(target_names)}
    if len(src) != len(source_names) or len(tgt) != len(target_names):
        raise ValueError("class names must be distinct within a dataset")
    lut = np.full(256, IGNORE, np.uint8)
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            where = f"{path}:{lineno}"
            if body.count("->") != 1:
                raise LabelMapError(f"{where}: expected 'source class -> target class' (or '-> ignore'), got "
                                    f"{body!r}")
            s, t = (_norm(x) for x in body.split("->"))
            if s not in src:
                raise LabelMapError(f"{where}: {s!r} is not a class of the source dataset")
            if s in seen:
                raise LabelMapError(f"{where}: {s!r} is already mapped on line {seen[s]}")
            seen[s] = lineno
            if t == IGNORE_NAME:
                continue
            if t not in tgt:
                raise LabelMapError(f"{where}: {t!r} is not a class of the target label space (or 'ignore')")
            lut[src[s]] = tgt[t]
    missing = [n for n in src if n not in seen]
    if missing:
        raise LabelMapError(f"{path}: {len(missing)} source classes are not listed (write '-> ignore' to drop one): "
                            f"{missing[:10]}")
    return lut


def compose_raw_lut(num_source_classes: int, class_lut: np.ndarray | None) -> np.ndarray:
    """uint8 (256,): raw value of the source dataset -> train id of the target space (or of the source itself
    when `class_lut` is None)."""
    lut = raw_lut(num_source_classes)
    if class_lut is None:
        return lut
    out = np.full(256, IGNORE, np.uint8)
    keep = lut != IGNORE
    out[keep] = class_lut[lut[keep]]
    return out


def kept_pixels(class_lut: np.ndarray, pixels_per_class: Sequence[float]) -> dict:
    """Share of the labelled pixels (per class counts or ratios, index = source train id) a map keeps."""
    p = np.asarray(pixels_per_class, np.float64)
    kept = class_lut[:len(p)] != IGNORE
    total = float(p.sum())
    return {"classes": int(len(p)), "classes_kept": int(kept.sum()), "pixels": total,
            "pixels_kept": float(p[kept].sum()), "share_kept": float(p[kept].sum() / total) if total else float("nan")}

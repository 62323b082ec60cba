"""ADE20K SceneParsing (ADEChallengeData2016): class names, label encoding, on-disk layout.

Label encoding (as the release and mmseg read it): an annotation PNG stores one raw value per pixel, 0 = "other"
(not evaluated: ignored) and 1..150 = the 150 classes below; train id = raw - 1, raw 0 -> ignore, the same
convention as VSPW's `raw_to_train_ids`.

Layout of the extracted release (`ADEChallengeData2016.zip`)::

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png

Split "train" is `training`, "val" is `validation`. Some JPEGs are greyscale; the decoder reads them as RGB.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

NUM_CLASSES = 150
RAW_OTHER = 0
FOLDER = "ADEChallengeData2016"
SPLITS = {"train": "training", "val": "validation"}
IMAGE_EXT = ".jpg"      # the extensions files are written with
MASK_EXT = ".png"
IMAGE_EXTS = (".jpg", ".jpeg")   # accepted when reading, in any letter case
MASK_EXTS = (".png",)

# Index = train id (raw value - 1). mmseg's ADE20KDataset spelling (its "bed " without the trailing space).
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(CLASS_NAMES) == NUM_CLASSES == len(set(CLASS_NAMES))


def resolve_root(root: str) -> str:
    """The ADEChallengeData2016 folder: `root` itself or `root/ADEChallengeData2016`; else FileNotFoundError."""
    for cand in (root, os.path.join(root, FOLDER)):
        if os.path.isdir(os.path.join(cand, "images")) and os.path.isdir(os.path.join(cand, "annotations")):
            return cand
    raise FileNotFoundError(
        f"--data-root {root} is not an ADE20K SceneParsing folder: expected {FOLDER}/images/{{training,validation}}/"
        f"*.jpg and {FOLDER}/annotations/{{training,validation}}/*.png (pass {FOLDER} or its parent)")


def _split_folder(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"ADE20K split {split!r}: expected one of {sorted(SPLITS)}")
    return SPLITS[split]


def image_dir(root: str, split: str) -> str:
    return os.path.join(root, "images", _split_folder(split))


def annotation_dir(root: str, split: str) -> str:
    return os.path.join(root, "annotations", _split_folder(split))


def image_path(root: str, split: str, stem: str) -> str:
    return os.path.join(image_dir(root, split), stem + IMAGE_EXT)


def annotation_path(root: str, split: str, stem: str) -> str:
    return os.path.join(annotation_dir(root, split), stem + MASK_EXT)


def list_files(folder: str, exts: Sequence[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """({name without extension: path} sorted by name, problems [(path, reason)]) of an images or annotations
    folder: extensions `exts` in any letter case are accepted; every other non-hidden file, and a second file of
    the same name (`x.jpg` + `x.jpeg`), is a problem, never dropped unseen."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"ADE20K folder {folder} not found")
    files: dict[str, str] = {}
    problems = []
    for fname in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fname)
        path = os.path.join(folder, fname)
        if fname.startswith("."):
            continue
        if ext.lower() not in exts:
            problems.append((path, f"not an {'/'.join(exts)} file (any letter case)"))
        elif stem in files:
            problems.append((path, f"a second file named {stem!r} besides {files[stem]}; keep one"))
        else:
            files[stem] = path
    return files, problems


def image_files(root: str, split: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The images of `split` (`list_files`: .jpg/.jpeg in any case)."""
    return list_files(image_dir(root, split), IMAGE_EXTS)


def annotation_files(root: str, split: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    return list_files(annotation_dir(root, split), MASK_EXTS)


def invalid_raw_values(values: np.ndarray) -> list[int]:
    """Sorted distinct values that are not an ADE20K raw label (0..150); [] if all are valid."""
    return [int(v) for v in np.unique(values) if not 0 <= v <= NUM_CLASSES]


"""COCO panoptic 2017: the 133 categories, the panoptic -> semantic conversion, the accepted layouts.

Layouts accepted (the official zips extracted into ROOT, and detectron2's `datasets/coco`)::

    ROOT/annotations/panoptic_{train,val}2017.json
    ROOT/annotations/panoptic_{train,val}2017/*.png   or   ROOT/panoptic_{train,val}2017/*.png
    ROOT/{train,val}2017/*.jpg

Conversion to a semantic map of raw values (the encoding of the build's masks): a panoptic PNG holds per pixel
the segment id R + 256 G + 256^2 B; id 0 (unlabelled) and segments with iscrowd=1 -> raw 0 (ignored); a segment of
category c -> raw (contiguous index of c) + 1, the contiguous index being c's position in the JSON's `categories`
sorted by id (normally CATEGORIES below: raw 1..133, train id = raw - 1 as for VSPW). Errors (ValueError): a
segment id in the PNG but not in its image's `segments_info`, a category id not in `categories`, a PNG size
differing from its image's, more than 254 categories, an image listed twice (two entries of one file name) or
annotated twice (two annotations of one image id).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

NUM_CLASSES = 133
SPLITS = ("train", "val")
MAX_CATEGORIES = 254   # raw values 1..254; 0 = ignore

# (category id, name, isthing) sorted by id: 80 things and 53 stuff classes, as in panoptic_{train,val}2017.json.
CATEGORIES = (
    (1, "person", 1), (2, "bicycle", 1), (3, "car", 1), (4, "motorcycle", 1), (5, "airplane", 1), (6, "bus", 1),
    (7, "train", 1), (8, "truck", 1), (9, "boat", 1), (10, "traffic light", 1), (11, "fire hydrant", 1),
    (13, "stop sign", 1), (14, "parking meter", 1), (15, "bench", 1), (16, "bird", 1), (17, "cat", 1),
    (18, "dog", 1), (19, "horse", 1), (20, "sheep", 1), (21, "cow", 1), (22, "elephant", 1), (23, "bear", 1),
    (24, "zebra", 1), (25, "giraffe", 1), (27, "backpack", 1), (28, "umbrella", 1), (31, "handbag", 1),
    (32, "tie", 1), (33, "suitcase", 1), (34, "frisbee", 1), (35, "skis", 1), (36, "snowboard", 1),
    (37, "sports ball", 1), (38, "kite", 1), (39, "baseball bat", 1), (40, "baseball glove", 1),
    (41, "skateboard", 1), (42, "surfboard", 1), (43, "tennis racket", 1), (44, "bottle", 1),
    (46, "wine glass", 1), (47, "cup", 1), (48, "fork", 1), (49, "knife", 1), (50, "spoon", 1), (51, "bowl", 1),
    (52, "banana", 1), (53, "apple", 1), (54, "sandwich", 1), (55, "orange", 1), (56, "broccoli", 1),
    (57, "carrot", 1), (58, "hot dog", 1), (59, "pizza", 1), (60, "donut", 1), (61, "cake", 1), (62, "chair", 1),
    (63, "couch", 1), (64, "potted plant", 1), (65, "bed", 1), (67, "dining table", 1), (70, "toilet", 1),
    (72, "tv", 1), (73, "laptop", 1), (74, "mouse", 1), (75, "remote", 1), (76, "keyboard", 1),
    (77, "cell phone", 1), (78, "microwave", 1), (79, "oven", 1), (80, "toaster", 1), (81, "sink", 1),
    (82, "refrigerator", 1), (84, "book", 1), (85, "clock", 1), (86, "vase", 1), (87, "scissors", 1),
    (88, "teddy bear", 1), (89, "hair drier", 1), (90, "toothbrush", 1), (92, "banner", 0), (93, "blanket", 0),
    (95, "bridge", 0), (100, "cardboard", 0), (107, "counter", 0), (109, "curtain", 0), (112, "door-stuff", 0),
    (118, "floor-wood", 0), (119, "flower", 0), (122, "fruit", 0), (125, "gravel", 0), (128, "house", 0),
    (130, "light", 0), (133, "mirror-stuff", 0), (138, "net", 0), (141, "pillow", 0), (144, "platform", 0),
    (145, "playingfield", 0), (147, "railroad", 0), (148, "river", 0), (149, "road", 0), (151, "roof", 0),
    (154, "sand", 0), (155, "sea", 0), (156, "shelf", 0), (159, "snow", 0), (161, "stairs", 0), (166, "tent", 0),
    (168, "towel", 0), (171, "wall-brick", 0), (175, "wall-stone", 0), (176, "wall-tile", 0),
    (177, "wall-wood", 0), (178, "water-other", 0), (180, "window-blind", 0), (181, "window-other", 0),
    (184, "tree-merged", 0), (185, "fence-merged", 0), (186, "ceiling-merged", 0), (187, "sky-other-merged", 0),
    (188, "cabinet-merged", 0), (189, "table-merged", 0), (190, "floor-other-merged", 0),
    (191, "pavement-merged", 0), (192, "mountain-merged", 0), (193, "grass-merged", 0), (194, "dirt-merged", 0),
    (195, "paper-merged", 0), (196, "food-other-merged", 0), (197, "building-other-merged", 0),
    (198, "rock-merged", 0), (199, "wall-other-merged", 0), (200, "rug-merged", 0),
)
assert len(CATEGORIES) == NUM_CLASSES and sum(t for _, _, t in CATEGORIES) == 80
CLASS_NAMES = tuple(name for _, name, _ in CATEGORIES)


@dataclasses.dataclass(frozen=True)
class Layout:
    json: str        # panoptic_<split>2017.json
    png_dir: str     # panoptic PNGs
    image_dir: str   # JPEGs


def find_layout(root: str, split: str) -> Layout:
    """The files of `split` under `root` (see the module docstring), or FileNotFoundError naming what is missing."""
    if split not in SPLITS:
        raise ValueError(f"COCO panoptic split {split!r}: expected one of {list(SPLITS)}")
    expected = (f"expected {root}/annotations/panoptic_{split}2017.json, its PNGs in {root}/annotations/"
                f"panoptic_{split}2017/ or {root}/panoptic_{split}2017/, and the images in {root}/{split}2017/")
    path = os.path.join(root, "annotations", f"panoptic_{split}2017.json")
    pngs = [d for d in (os.path.join(root, "annotations", f"panoptic_{split}2017"),
                        os.path.join(root, f"panoptic_{split}2017")) if os.path.isdir(d)]
    images = os.path.join(root, f"{split}2017")
    for ok, what in ((os.path.isfile(path), path), (bool(pngs), "the panoptic PNG folder"),
                     (os.path.isdir(images), images)):
        if not ok:
            raise FileNotFoundError(f"--data-root {root} is not a COCO panoptic folder: {what} not found; {expected}")
    return Layout(path, pngs[0], images)


def category_raw_values(categories: list[dict], path: str = "the JSON") -> dict[int, int]:
    """{category id: raw value} = position in `categories` sorted by id, plus 1."""
    if len(categories) > MAX_CATEGORIES:
        raise ValueError(f"{path}: {len(categories)} categories, more than the {MAX_CATEGORIES} an 8-bit mask holds")
    ids = sorted(int(c["id"]) for c in categories)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: category ids are not unique")
    return {c: i + 1 for i, c in enumerate(ids)}


def load_annotations(path: str) -> dict:
    """Reads panoptic_<split>2017.json: {"class_names": names in raw order, "raw": {category id: raw value},
    "images": JSON images sorted by file name, "annotations": {image id: annotation}}."""
    with open(path) as f:
        data = json.load(f)
    try:
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        raw = category_raw_values(cats, path)
        anns = {int(a["image_id"]): a for a in data["annotations"]}
        images = sorted(data["images"], key=lambda im: im["file_name"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a COCO panoptic annotation file (missing {e})") from None
    _check_unique(path, [int(a["image_id"]) for a in data["annotations"]], "annotations of image id")
    _check_unique(path, [os.path.splitext(im["file_name"])[0] for im in images], "images named")
    return {"class_names": [c["name"] for c in cats], "raw": raw, "images": images, "annotations": anns}


def _check_unique(path: str, keys: list, what: str) -> None:
    """ValueError naming the first key listed twice (a second entry would silently replace or repeat one)."""
    seen = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{path}: two {what} {key!r}; each image must be listed, and annotated, once")
        seen.add(key)


def segment_ids(rgb: np.ndarray) -> np.ndarray:
    """Panoptic PNG pixels (H, W, 3) uint8 -> segment ids (H, W) int64: R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def panoptic_to_semantic(rgb: np.ndarray, segments_info: list[dict], raw: dict[int, int]) -> np.ndarray:
    """One panoptic PNG's pixels (H, W, 3) -> semantic raw values (H, W) uint8 (module docstring); ValueError if a
    segment id in the PNG has no `segments_info` entry or a segment's category is not in `raw`."""
    value = {0: 0}
    for s in segments_info:
        cat = int(s["category_id"])
        if cat not in raw:
            raise ValueError(f"segment {s['id']} has category id {cat}, which is not in the JSON's categories")
        value[int(s["id"])] = 0 if s.get("iscrowd", 0) else raw[cat]
    ids, inverse = np.unique(segment_ids(rgb), return_inverse=True)
    missing = [int(i) for i in ids if int(i) not in value]
    if missing:
        raise ValueError(f"segment ids {missing[:10]} are in the PNG but not in the image's segments_info")
    lut = np.array([value[int(i)] for i in ids], np.uint8)
    return lut[inverse.reshape(rgb.shape[:2])]

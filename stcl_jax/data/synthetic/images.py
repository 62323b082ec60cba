"""Small synthetic image datasets in the real ADE20K SceneParsing and COCO panoptic layouts (tests, CPU demo).

    python -m stcl_jax.data.synthetic --layout {ade20k,coco-panoptic} --output DIR
                                      [--train N] [--val M] [--size HxW] [--seed S]   (`cli`)

Images are drawn like `synthetic.vspw`'s VSPW frames (street / lake / room scenes of textured bands and objects, one
colour and texture per class), so classes shared with VSPW (person, car, tree, sky, road, wall, ...) look alike
in all three datasets and a short pre-training is meaningful. Every image has several instances of one category;
even images hold an unlabelled patch (raw 0), odd ones a patch of a class beyond VSPW's (ADE20K "flag", raw 150;
COCO "rug-merged", raw 133); one COCO image in three has a crowd segment (raw 0 once converted), one ADE20K image
in four a greyscale JPEG. The writers return the expected raw semantic map of every image, computed from their own
drawing state (not with the converters), as the truth the build is tested against.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from stcl_jax.data.datasets import ade20k, coco_panoptic
from stcl_jax.data.synthetic.render import LOOK, SCENES, SHAPES, shape_region, texture

# look (render.LOOK) -> (ADE20K class, COCO panoptic category)
NAMES = {
    "sky": ("sky", "sky-other-merged"), "building": ("building", "building-other-merged"),
    "road": ("road", "road"), "mountain": ("mountain", "mountain-merged"), "tree": ("tree", "tree-merged"),
    "water": ("water", "water-other"), "wall": ("wall", "wall-other-merged"), "floor": ("floor", "floor-wood"),
    "person": ("person", "person"), "dog": ("animal", "dog"), "car": ("car", "car"),
    "ship_or_boat": ("boat", "boat"), "chair_or_seat": ("chair", "chair"), "ball": ("ball", "sports ball"),
    "high": ("flag", "rug-merged"),          # a class beyond VSPW's, the last raw value of each dataset
}
HIGH_LOOK = ((200, 60, 160), "stripes30", 0.04, 50)
_UNLABELLED = "others"                       # render.LOOK's look of the raw-0 patch


def _look(key: str):
    return HIGH_LOOK if key == "high" else LOOK[key]


def _ade_raw(key: str) -> int:
    return ade20k.CLASS_NAMES.index(NAMES[key][0]) + 1


def _coco_raw(key: str) -> int:
    """Position of the category in the canonical (id-sorted) list + 1."""
    return [name for _, name, _ in coco_panoptic.CATEGORIES].index(NAMES[key][1]) + 1


def _coco_id(key: str) -> int:
    return next(i for i, name, _ in coco_panoptic.CATEGORIES if name == NAMES[key][1])


def render(rng: np.random.Generator, h: int, w: int, index: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Draws image `index`: (uint8 (h, w, 3), segment map int32 (h, w) with 0 = unlabelled and k = segment k,
    looks of segments 1..K). Bands are one segment each; every object is its own segment (instance)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    seg = np.zeros((h, w), np.int32)
    looks: list[str] = []
    light = rng.uniform(0.85, 1.15)

    def paint(key, region, dx=0.0, dy=0.0):
        base, kind, period, amp = _look(key)
        colour = np.clip(np.array(base) * light + rng.uniform(-12, 12, 3), 0, 255)
        pattern = texture(kind, period * min(h, w), x[region] - dx + rng.uniform(0, 100), y[region] - dy)
        img[region] = colour + amp * light * pattern[:, None]
        if key != _UNLABELLED:
            looks.append(key)
            seg[region] = len(looks)
        else:
            seg[region] = 0

    bands, objects = SCENES[sorted(SCENES)[index % len(SCENES)]]
    top = 0.0
    for key, edge in bands:
        edge = edge + rng.uniform(-0.05, 0.05) * (edge < 1)
        paint(key, (y >= top * h) & (y < edge * h) if edge < 1 else (y >= top * h))
        top = edge
    patch = _UNLABELLED if index % 2 == 0 else "high"
    (y0, x0), (dh, dw) = rng.uniform(0, 0.7, 2) * (h, w), rng.uniform(0.15, 0.3, 2) * (h, w)
    paint(patch, (y >= y0) & (y < y0 + dh) & (x >= x0) & (x < x0 + dw))
    twice = str(rng.choice(objects))             # at least two instances of this category
    for key in [twice, twice] + [str(rng.choice(objects)) for _ in range(int(rng.integers(0, 3)))]:
        cy, cx = rng.uniform(0.35, 0.9) * h, rng.uniform(0.1, 0.9) * w
        r = rng.uniform(0.12, 0.25) * min(h, w)
        region = shape_region(SHAPES[key], (y - cy) / r, (x - cx) / r)
        if region.any():
            paint(key, region, cx, cy)
    img += rng.normal(0, 3, img.shape)
    # segments fully covered by later ones are dropped, so every listed segment is present in the map
    present = np.unique(seg[seg > 0])
    renumber = np.zeros(len(looks) + 1, np.int32)
    renumber[present] = np.arange(1, len(present) + 1)
    return np.clip(img, 0, 255).astype(np.uint8), renumber[seg], [looks[k - 1] for k in present]


def write_synthetic_ade20k(root: str, images: dict[str, int] | None = None, size: tuple[int, int] = (64, 96),
                           seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Writes `root` as an ADEChallengeData2016 folder (images/ and annotations/, training/ and validation/).

    Returns {split: {image stem: expected raw map uint8 (h, w)}} (0 = other, k = ADE20K class k - 1)."""
    images = {"train": 6, "val": 2} if images is None else images
    h, w = size
    out: dict[str, dict[str, np.ndarray]] = {}
    for si, (split, n) in enumerate(images.items()):
        os.makedirs(ade20k.image_dir(root, split), exist_ok=True)
        os.makedirs(ade20k.annotation_dir(root, split), exist_ok=True)
        out[split] = {}
        for i in range(n):
            img, seg, looks = render(np.random.default_rng([seed, si, i]), h, w, i)
            raw = np.array([0] + [_ade_raw(k) for k in looks], np.uint8)[seg]
            stem = f"ADE_{split}_{i + 1:08d}"
            pil = Image.fromarray(img)
            if i % 4 == 3:
                pil = pil.convert("L")           # the release has greyscale JPEGs too
            pil.save(ade20k.image_path(root, split, stem), quality=90)
            Image.fromarray(raw, mode="L").save(ade20k.annotation_path(root, split, stem))
            out[split][stem] = raw
    return out


def write_synthetic_coco_panoptic(root: str, images: dict[str, int] | None = None, size: tuple[int, int] = (64, 96),
                                  seed: int = 0, png_folder: str = "annotations") -> dict[str, dict[str, np.ndarray]]:
    """Writes `root` in the COCO panoptic 2017 layout: annotations/panoptic_<split>2017.json, the panoptic PNGs in
    annotations/panoptic_<split>2017/ (png_folder="annotations", the official zips) or panoptic_<split>2017/
    (png_folder="root", detectron2's), the JPEGs in <split>2017/. The JSON lists all 133 real categories (in
    shuffled order), random segment ids, and images / annotations in shuffled order.

    Returns {split: {image stem: expected semantic raw map uint8 (h, w)}} (0 = unlabelled or crowd, k = category
    k - 1 of coco_panoptic.CATEGORIES)."""
    images = {"train": 6, "val": 2} if images is None else images
    h, w = size
    out: dict[str, dict[str, np.ndarray]] = {}
    for si, (split, n) in enumerate(images.items()):
        rng = np.random.default_rng([seed, si, 10**6])
        png_dir = os.path.join(root, "annotations" if png_folder == "annotations" else "", f"panoptic_{split}2017")
        image_dir = os.path.join(root, f"{split}2017")
        os.makedirs(png_dir, exist_ok=True)
        os.makedirs(image_dir, exist_ok=True)
        cats = [{"id": i, "name": name, "isthing": t, "supercategory": "synthetic"}
                for i, name, t in coco_panoptic.CATEGORIES]
        data = {"info": {"description": "synthetic"}, "categories": [cats[k] for k in rng.permutation(len(cats))],
                "images": [], "annotations": []}
        ids = rng.choice(np.arange(1, 10**6), n, replace=False)
        out[split] = {}
        for i, image_id in enumerate(ids):
            img, seg, looks = render(np.random.default_rng([seed, si, i]), h, w, i)
            objects = [j for j, k in enumerate(looks) if k in SHAPES]
            crowd = [i % 3 == 0 and j == objects[-1] for j in range(len(looks))]   # last object: a crowd
            segment_ids = rng.choice(np.arange(1, 2**24), len(looks), replace=False)
            lut = np.array([0] + list(segment_ids), np.int64)
            pan = lut[seg]
            rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], -1).astype(np.uint8)
            stem = f"{int(image_id):012d}"
            Image.fromarray(img).save(os.path.join(image_dir, stem + ".jpg"), quality=90)
            Image.fromarray(rgb, mode="RGB").save(os.path.join(png_dir, stem + ".png"))
            data["images"].append({"id": int(image_id), "file_name": stem + ".jpg", "height": h, "width": w})
            data["annotations"].append({"image_id": int(image_id), "file_name": stem + ".png", "segments_info": [
                {"id": int(s), "category_id": _coco_id(k), "iscrowd": int(c), "area": int((seg == j + 1).sum()),
                 "bbox": [0, 0, w, h]} for j, (s, k, c) in enumerate(zip(segment_ids, looks, crowd))]})
            expected = np.array([0] + [0 if c else _coco_raw(k) for k, c in zip(looks, crowd)], np.uint8)
            out[split][stem] = expected[seg]
        for key in ("images", "annotations"):
            data[key] = [data[key][k] for k in rng.permutation(n)]
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        with open(os.path.join(root, "annotations", f"panoptic_{split}2017.json"), "w") as f:
            json.dump(data, f)
    return out


"""VSPW label encoding, class names, palette and on-disk layout.

Label encoding (official VSPW release and its evaluation scripts): a mask PNG stores one raw value per pixel,
0 = "others" (not evaluated), 1..124 = the 124 classes below, 255 = void. Training and evaluation use
train ids: raw k -> k - 1 (0..123); raw 0 and 255 -> IGNORE_INDEX (255).

Layout of the extracted 480p release (`VSPW_480p/`)::

    train.txt  val.txt  test.txt            one video folder name per line
    data/<index>_<YouTube id>/origin/<8-digit frame index>.jpg
    data/<index>_<YouTube id>/mask/<8-digit frame index>.png     (absent for the test split)

Frame names are indices into the source video, so a video's first frame is rarely 00000000: always use the sorted
file names, never name arithmetic. YouTube ids may contain "_", so split a folder name on the FIRST "_" only.

Listing a frame (or mask) folder (`list_folder`): frames are the files whose extension is one of FRAME_EXTS (masks:
MASK_EXTS) in any letter case (`.JPG`, `.jpeg`), ordered by the NUMBER their name holds (so unpadded `8, 9, 10`
keep video order). Every other file is a problem reported with its path, never dropped unseen: a name that is not
a number, another extension, two files of one frame (`00000541.jpg` + `00000541.jpeg`, or `10.jpg` + `010.jpg`).
Only hidden files (name starting with ".", e.g. macOS `._*` and `.DS_Store`) are ignored.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from stcl_jax.data.label_space import raw_lut

NUM_CLASSES = 124
IGNORE_INDEX = 255
RAW_OTHERS = 0
RAW_VOID = 255
SPLITS = ("train", "val", "test")
FRAME_EXT = ".jpg"          # the extension files are written with
MASK_EXT = ".png"
FRAME_EXTS = (".jpg", ".jpeg")   # accepted when reading, in any letter case
MASK_EXTS = (".png",)

# Index = train id (raw mask value - 1). Spelling as in the official release (including its capitals).
CLASS_NAMES = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide", "handrail_or_fence",
    "window", "rail", "goal", "pillar", "pole", "floor", "ground", "grass", "sand", "athletic_field", "road",
    "path", "crosswalk", "building", "house", "bridge", "tower", "windmill", "well_or_well_lid",
    "other_construction", "sky", "mountain", "stone", "wood", "ice", "snowfield", "grandstand", "sea", "river",
    "lake", "waterfall", "water", "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag",
    "parasol_or_umbrella", "cushion_or_carpet", "tent", "roadblock", "car", "bus", "truck", "bicycle",
    "motorcycle", "wheeled_machine", "ship_or_boat", "raft", "airplane", "tyre", "traffic_light", "lamp",
    "person", "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower", "other_plant", "toy",
    "ball_net", "backboard", "skateboard", "bat", "ball", "cupboard_or_showcase_or_storage_rack", "box",
    "traveling_case_or_trolley_case", "basket", "bag_or_package", "trash_can", "cage", "plate",
    "tub_or_bowl_or_pot", "bottle_or_cup", "barrel", "fishbowl", "bed", "pillow", "table_or_desk",
    "chair_or_seat", "bench", "sofa", "shelf", "bathtub", "gun", "commode", "roaster", "other_machine",
    "refrigerator", "washing_machine", "Microwave_oven", "fan", "curtain", "textiles", "clothes",
    "painting_or_poster", "mirror", "flower_pot_or_vase", "clock", "book", "tool", "blackboard", "tissue",
    "screen_or_television", "computer", "printer", "Mobile_phone", "keyboard", "other_electronic_product",
    "fruit", "food", "instrument", "train",
)
assert len(CLASS_NAMES) == NUM_CLASSES


def _bit_interleaved_palette(n: int, offset: int) -> np.ndarray:
    """The PASCAL-VOC colour map (bits of the label spread over R, G, B), for labels offset .. offset + n - 1."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        label, r, g, b = i + offset, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        out[i] = (r, g, b)
    return out


# Colour of train id c = the VOC colour of its raw value c + 1, so raw "others" (0) would be black.
# All 124 colours are distinct.
PALETTE = _bit_interleaved_palette(NUM_CLASSES, offset=1)
PALETTE.setflags(write=False)
_PALETTE_254 = _bit_interleaved_palette(254, offset=1)   # the same colours, continued for larger label sets


def raw_to_train_ids(mask: np.ndarray) -> np.ndarray:
    """Raw VSPW mask values -> train ids (uint8): k -> k - 1 for 1..124; 0 and 255 -> IGNORE_INDEX.

    Raises ValueError on any other value (not a VSPW label)."""
    mask = np.asarray(mask)
    bad = invalid_raw_values(mask)
    if bad:
        raise ValueError(f"mask holds values {bad} that are neither a VSPW class (0..{NUM_CLASSES}) nor void (255)")
    return raw_lut(NUM_CLASSES)[mask.astype(np.uint8)]


def train_ids_to_raw(ids: np.ndarray) -> np.ndarray:
    """Train ids (0..123, IGNORE_INDEX) -> raw VSPW values (uint8): c -> c + 1, IGNORE_INDEX -> 255 (void)."""
    ids = np.asarray(ids)
    bad = np.unique(ids[(ids < 0) | ((ids >= NUM_CLASSES) & (ids != IGNORE_INDEX))]).tolist()
    if bad:
        raise ValueError(f"train ids {bad} are neither 0..{NUM_CLASSES - 1} nor the ignore index {IGNORE_INDEX}")
    return np.where(ids == IGNORE_INDEX, RAW_VOID, ids + 1).astype(np.uint8)


def invalid_raw_values(mask: np.ndarray) -> list[int]:
    """Sorted distinct values of `mask` that are not a raw VSPW label (0..124 or 255); [] if all are valid."""
    mask = np.asarray(mask)
    if mask.dtype == np.uint8:                        # bincount: ~10x faster than np.unique's sort at 480p
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    else:
        values = np.unique(mask)
    return [int(v) for v in values if not (0 <= v <= NUM_CLASSES or v == RAW_VOID)]


def colorize(train_ids: np.ndarray, ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Train ids (H, W) -> RGB uint8 (H, W, 3) with PALETTE (continued past 124 for models of other label sets,
    e.g. COCO's 133 classes); ignored pixels get `ignore_color`."""
    ids = np.asarray(train_ids)
    lut = np.zeros((256, 3), np.uint8)
    lut[:254] = _PALETTE_254
    lut[IGNORE_INDEX] = ignore_color
    return lut[ids.astype(np.uint8)]


# ---------------------------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------------------------

def split_video_name(video: str) -> tuple[str, str]:
    """'<index>_<YouTube id>' -> (index, youtube_id); the id may itself contain '_'."""
    index, sep, youtube_id = video.partition("_")
    if not sep or not index:
        raise ValueError(f"video folder name {video!r} is not '<index>_<YouTube id>'")
    return index, youtube_id


def split_file(root: str, split: str) -> str:
    return os.path.join(root, f"{split}.txt")


def read_split(root: str, split: str) -> list[str]:
    """Video names listed in `<root>/<split>.txt` (blank lines skipped, order kept, duplicates rejected)."""
    path = split_file(root, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path} not found: expected the extracted VSPW_480p folder with "
                                f"{'/'.join(s + '.txt' for s in SPLITS)}")
    with open(path) as f:
        videos = [line.strip() for line in f if line.strip()]
    seen = set()
    for v in videos:
        if v in seen:
            raise ValueError(f"{path}: video {v!r} is listed twice")
        seen.add(v)
    return videos


def video_dir(root: str, video: str) -> str:
    return os.path.join(root, "data", video)


def frame_path(root: str, video: str, frame: str) -> str:
    """Path of frame `frame` (name without extension, e.g. '00000123') of `video`."""
    return os.path.join(root, "data", video, "origin", frame + FRAME_EXT)


def mask_path(root: str, video: str, frame: str) -> str:
    return os.path.join(root, "data", video, "mask", frame + MASK_EXT)


def list_folder(folder: str, exts: Sequence[str], what: str = "frame"
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(files, problems) of a frame or mask folder (module docstring): files = [(name without extension, file
    name)] in frame-number order; problems = [(path, reason)] for every non-hidden file that is not one of them."""
    by_number: dict[int, list[str]] = {}
    problems = []
    for fname in sorted(os.listdir(folder)):
        if fname.startswith("."):
            continue
        stem, ext = os.path.splitext(fname)
        path = os.path.join(folder, fname)
        if ext.lower() not in exts:
            problems.append((path, f"not a {what} file: expected {'/'.join(exts)} (any letter case)"))
        elif not (stem.isascii() and stem.isdigit()):
            problems.append((path, f"{what} name {stem!r} is not a frame number: VSPW {what}s are named by their "
                                   "index in the video (e.g. 00000123), which gives their order"))
        else:
            by_number.setdefault(int(stem), []).append(fname)
    files = []
    for number in sorted(by_number):
        names = by_number[number]
        if len(names) > 1:
            problems.append((os.path.join(folder, names[0]), f"{len(names)} files are {what} {number}: "
                             f"{', '.join(os.path.join(folder, n) for n in names)}; keep one"))
            continue
        files.append((os.path.splitext(names[0])[0], names[0]))
    return files, problems


def _names(folder: str, exts: Sequence[str], what: str) -> list[str]:
    files, problems = list_folder(folder, exts, what)
    if problems:
        path, reason = problems[0]
        more = f" (and {len(problems) - 1} more problems in {folder})" if len(problems) > 1 else ""
        raise ValueError(f"{path}: {reason}{more}")
    return [stem for stem, _ in files]


def frame_names(root: str, video: str) -> list[str]:
    """Frame names (no extension) of `video`'s origin/ folder in frame-number order: the frame order of the video.
    Raises ValueError naming a file that is not a frame (see `list_folder`)."""
    folder = os.path.join(video_dir(root, video), "origin")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"video {video!r}: frame folder {folder} not found")
    return _names(folder, FRAME_EXTS, "frame")


def mask_names(root: str, video: str) -> list[str] | None:
    """Mask names (no extension) of `video` in frame-number order, or None if it has no mask/ folder (test
    split). Raises ValueError naming a file that is not a mask (see `list_folder`)."""
    folder = os.path.join(video_dir(root, video), "mask")
    if not os.path.isdir(folder):
        return None
    return _names(folder, MASK_EXTS, "mask")

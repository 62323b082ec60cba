"""A small synthetic dataset in the exact VSPW_480p layout: the data of the demo config and of the tests.

    python -m stcl_jax.data.synthetic --output DIR --videos N --frames F [--size HxW] [--seed S]   (`cli`)

Each video is one of three scene types (street / lake / room) drawn as textured horizontal bands (sky, building,
road, ...), with 2-4 textured objects that move, bounce, swell and shrink and occlude each other in depth order,
while the camera pans. Every class has its own colour and texture (stripes, checks, waves, dots), jittered per
video, plus sensor noise and JPEG compression. Two classes need context: "car" and "ship_or_boat" look the
same, but cars only drive on roads and boats only float on water. Some videos carry an "others" patch (raw 0) and
a void patch (raw 255), so both ignore cases occur. Frame names are 8-digit indices that start at a random
offset and step by 1-3, as in the real release; video folders are `<index>_<11-char id>` with ids that may hold
"_". The test split has no masks.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from stcl_jax.data.datasets import vspw
from stcl_jax.data.synthetic.render import LOOK, SCENES, SHAPES, shape_region, texture

_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def _raw(name: str) -> int:
    return vspw.CLASS_NAMES.index(name) + 1


class _Video:
    """Random scene parameters of one video; `render(t)` draws frame t."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.h, self.w = h, w
        self.scene = str(rng.choice(sorted(SCENES)))
        bands, objects = SCENES[self.scene]
        self.bands = [(name, edge + rng.uniform(-0.05, 0.05) * (edge < 1)) for name, edge in bands]
        # sorted: the draws below must not follow set order, which changes with each process's string hashing
        names = sorted({n for n, _ in self.bands} | set(objects) | {"others"})
        self.light = rng.uniform(0.85, 1.15)
        self.colour = {n: np.clip(np.array(LOOK[n][0]) * self.light
                                  + rng.uniform(-12, 12, 3), 0, 255) for n in names}
        self.tex_offset = {n: rng.uniform(0, 100, 2) for n in names}
        self.pan = rng.uniform(-0.01, 0.01) * w         # camera pan in pixels per frame
        s = min(h, w)
        self.objects = []
        for _ in range(int(rng.integers(2, 5))):
            name = str(rng.choice(objects))
            floor_top = self.bands[-2][1] if name in ("car", "ship_or_boat") else 0.3
            self.objects.append(dict(
                name=name, shape=SHAPES[name],
                pos=np.array([rng.uniform(floor_top, 0.95) * h, rng.uniform(0.1, 0.9) * w]),
                floor_top=floor_top * h,
                vel=rng.uniform(-0.05, 0.05, 2) * s,
                size=rng.uniform(0.25, 0.5) * s, grow=(rng.uniform(0, 6.3), rng.uniform(0.05, 0.2)),
                depth=rng.uniform()))
        self.objects.sort(key=lambda o: o["depth"])        # far to near: nearer objects occlude
        self.others = (rng.uniform(0, 0.7, 2) * (h, w), rng.uniform(0.1, 0.25, 2) * (h, w)) if rng.uniform() < 0.5 \
            else None
        self.void = (rng.uniform(0, 0.85, 2) * (h, w), rng.uniform(0.05, 0.12, 2) * (h, w)) if rng.uniform() < 0.5 \
            else None
        self.noise_rng = rng

    def _paint(self, img, name, region, x, y):
        _, kind, period, amp = LOOK[name]
        ox, oy = self.tex_offset[name]
        pattern = texture(kind, period * min(self.h, self.w), x[region] + ox, y[region] + oy)
        img[region] = self.colour[name] + amp * self.light * pattern[:, None]

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.h, self.w
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.zeros((h, w, 3), np.float32)
        mask = np.zeros((h, w), np.uint8)
        xs = x + self.pan * t                            # background texture moves with the camera
        top = 0.0
        for name, edge in self.bands:
            region = (y >= top * h) & (y < edge * h) if edge < 1 else (y >= top * h)
            self._paint(img, name, region, xs, y)
            mask[region] = _raw(name)
            top = edge
        if self.others is not None:
            (y0, x0), (dh, dw) = self.others
            region = (y >= y0) & (y < y0 + dh) & (xs >= x0) & (xs < x0 + dw)
            self._paint(img, "others", region, x, y)
            mask[region] = vspw.RAW_OTHERS
        for o in self.objects:
            cy, cx = self._position(o, t)
            r = o["size"] * (1 + 0.3 * np.sin(o["grow"][0] + o["grow"][1] * t)) / 2   # breathes in size
            region = shape_region(o["shape"], (y - cy) / r, (x - cx) / r)
            self._paint(img, o["name"], region, x - cx, y - cy)   # texture moves with the object
            mask[region] = _raw(o["name"])
        if self.void is not None:
            (y0, x0), (dh, dw) = self.void
            region = (y >= y0) & (y < y0 + dh) & (x >= x0) & (x < x0 + dw)
            img[region] = 128
            mask[region] = vspw.RAW_VOID
        img += self.noise_rng.normal(0, 3, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), mask

    def _position(self, o, t):
        """Linear motion reflected at the borders (cars and boats stay on their road / water)."""
        lo = np.array([o["floor_top"], 0.0])
        hi = np.array([self.h - 1.0, self.w - 1.0])
        p = o["pos"] + o["vel"] * t - lo
        span = np.maximum(hi - lo, 1.0)
        p = np.abs((p + span) % (2 * span) - span)       # triangle wave = bouncing
        return lo + p


def _split_counts(videos: int) -> dict[str, int]:
    test = max(1, videos // 8) if videos >= 3 else 0
    val = max(1, videos // 6) if videos >= 2 else 0
    return {"train": videos - val - test, "val": val, "test": test}


def write_synthetic_vspw(root: str, videos: int, frames: int, size: tuple[int, int] = (64, 96),
                         seed: int = 0, jpeg_quality: int = 90) -> dict[str, list[str]]:
    """Writes `videos` videos of `frames` frames of size (h, w) under `root` in the VSPW_480p layout.

    Returns {split: [video names]}. The same arguments always write the same files."""
    if videos < 1 or frames < 1:
        raise ValueError(f"need videos >= 1 and frames >= 1, got videos={videos} frames={frames}")
    h, w = size
    if h < 8 or w < 8:
        raise ValueError(f"size {size} too small: need at least 8x8")
    rng = np.random.default_rng(seed)
    counts = _split_counts(videos)
    splits = {s: [] for s in vspw.SPLITS}
    order = [s for s in vspw.SPLITS for _ in range(counts[s])]
    palette = np.zeros((256, 3), np.uint8)
    palette[1:vspw.NUM_CLASSES + 1] = vspw.PALETTE
    palette[vspw.RAW_VOID] = 255
    for i, split in enumerate(order):
        yid = "".join(rng.choice(list(_ID_CHARS), 11))
        if i == 0:
            yid = yid[:4] + "_" + yid[5:]                 # at least one id with "_", as in the real release
        name = f"{i + 1}_{yid}"
        splits[split].append(name)
        video = _Video(np.random.default_rng([seed, i]), h, w)
        start, step = int(rng.integers(1, 600)), int(rng.integers(1, 4))
        origin = os.path.join(vspw.video_dir(root, name), "origin")
        os.makedirs(origin, exist_ok=True)
        if split != "test":
            os.makedirs(os.path.join(vspw.video_dir(root, name), "mask"), exist_ok=True)
        for t in range(frames):
            frame = f"{start + t * step:08d}"
            img, mask = video.render(t)
            Image.fromarray(img).save(vspw.frame_path(root, name, frame), quality=jpeg_quality)
            if split != "test":
                png = Image.fromarray(mask, mode="P")
                png.putpalette(palette.tobytes())
                png.save(vspw.mask_path(root, name, frame))
    for split, names in splits.items():
        with open(vspw.split_file(root, split), "w") as f:
            f.writelines(n + "\n" for n in names)
    return splits


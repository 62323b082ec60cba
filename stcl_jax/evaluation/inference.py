"""Segmentation inference: whole image or sliding window, multi-scale + flip TTA, ensembles, data-parallel.

Follows mmseg's `EncoderDecoder.slide_inference` / `aug_test`, so numbers are comparable with the paper's setup:
- slide: windows of `crop` = (h, w) every `stride` pixels; a window that would cross the border is moved back
  inside (`y1 = max(min(y1 + h, H) - h, 0)`), so no window is padded; an image smaller than the crop along an
  axis is covered by a single window of the image's size. Logits are summed and divided by the number of windows
  covering each pixel.
- multi-scale: for each ratio r the frame is resized (bilinear, half-pixel centres, no antialiasing, like
  cv2/F.interpolate) to (int(H r + 0.5), int(W r + 0.5)), segmented, and the logits resized back to (H, W);
  with `flip` the mirrored frame is segmented too and its logits mirrored back. The softmax probabilities of
  all views are averaged (mmseg `aug_test`); an ensemble averages the probabilities of its members.

Everything about the geometry is decided from static shapes at trace time: all windows of a scale have the same
size and go through the model together (`jax.lax.map` over chunks of `window_batch` windows), so a frame size
compiles once and nothing recompiles per frame.

Generic over `apply_fn(variables, images) -> logits`: images (B, h, w, 3) normalised float, logits (B, h, w, C)
at input resolution. `segmenter_apply(model)` adapts a `stcl_jax.models.build_segmenter` module.

Data parallel: `Predictor` splits each batch of frames over the local devices (one mesh axis "data", variables
replicated, `jax.shard_map` so each device works on its own frames alone). With several processes each process runs its own videos (see `shard_for_process`) and the metrics
are reduced across processes once, so no process waits for another during inference.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from stcl_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD, scale_and_shift

ApplyFn = Callable[[object, jax.Array], jax.Array]

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def segmenter_apply(model) -> ApplyFn:
    """`apply_fn` for a `build_segmenter` module: the main head's logits in inference mode."""
    return lambda variables, images: model.apply(variables, images, train=False)["logits"]


def window_grid(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of mmseg's sliding windows over an image of `size`; each window is
    (min(crop_h, H), min(crop_w, W)) pixels."""
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    if min(ch, cw, sh, sw) <= 0:
        raise ValueError(f"crop {crop} and stride {stride} must be positive")
    grids_h = max(h - ch + sh - 1, 0) // sh + 1
    grids_w = max(w - cw + sw - 1, 0) // sw + 1
    corners = []
    for i in range(grids_h):
        for j in range(grids_w):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            corners.append((max(y2 - ch, 0), max(x2 - cw, 0)))
    return corners


def slide_logits(apply_fn: ApplyFn, variables, images, crop, stride, window_batch: int = 4) -> jax.Array:
    """Sliding-window logits (B, H, W, C) of normalised images (B, H, W, 3), averaged where windows overlap."""
    b, h, w, _ = images.shape
    corners = window_grid((h, w), crop, stride)
    wh, ww = min(crop[0], h), min(crop[1], w)
    windows = jnp.concatenate([images[:, y : y + wh, x : x + ww] for y, x in corners])  # (n * B, wh, ww, 3)
    # model batches of `window_batch` windows, one traced model call (lax.map over the chunks) bounds memory
    chunk = max(1, min(window_batch, len(windows)))
    pad = -len(windows) % chunk
    chunks = jnp.pad(windows, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape((-1, chunk, *windows.shape[1:]))
    logits = jax.lax.map(lambda x: apply_fn(variables, x).astype(jnp.float32), chunks)
    logits = logits.reshape((-1, *logits.shape[2:]))[: len(windows)].reshape((len(corners), b, wh, ww, -1))
    total = jnp.zeros((b, h, w, logits.shape[-1]), jnp.float32)
    count = np.zeros((h, w), np.float32)
    for k, (y, x) in enumerate(corners):
        total = total.at[:, y : y + wh, x : x + ww].add(logits[k])
        count[y : y + wh, x : x + ww] += 1
    return total / jnp.asarray(count)[None, :, :, None]


def whole_logits(apply_fn: ApplyFn, variables, images) -> jax.Array:
    return apply_fn(variables, images).astype(jnp.float32)


def _resize(x, size):
    """Bilinear resize of (B, h, w, C) to size (H, W), half-pixel centres, no antialiasing (= cv2 / F.interpolate
    with align_corners=False)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "linear", antialias=False)


def scaled_size(size: tuple[int, int], ratio: float) -> tuple[int, int]:
    """mmcv `imrescale` rounding: int(dim * ratio + 0.5)."""
    return int(size[0] * ratio + 0.5), int(size[1] * ratio + 0.5)


def _single_view(apply_fn, variables, images, mode, crop, stride, window_batch):
    if mode == "whole":
        return whole_logits(apply_fn, variables, images)
    if mode == "slide":
        return slide_logits(apply_fn, variables, images, crop, stride, window_batch)
    raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")


def predict_probs(apply_fn: ApplyFn, variables, images, *, mode: str = "slide", crop=(768, 768),
                  stride=(512, 512), scales: Sequence[float] = (1.0,), flip: bool = False,
                  window_batch: int = 4) -> jax.Array:
    """Mean softmax probabilities (B, H, W, C) over the views: every ratio in `scales`, mirrored too if `flip`."""
    b, h, w, _ = images.shape
    total = None
    for ratio in scales:
        size = scaled_size((h, w), ratio)
        x = _resize(images, size)
        if flip:  # the mirrored frames share the window geometry: one pass over 2B frames
            x = jnp.concatenate([x, x[:, :, ::-1]])
        logits = _single_view(apply_fn, variables, x, mode, crop, stride, window_batch)
        if flip:
            logits = jnp.concatenate([logits[:b], logits[b:, :, ::-1]])
        probs = jax.nn.softmax(_resize(logits, (h, w)), axis=-1)
        probs = probs[:b] + probs[b:] if flip else probs
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def predict_logits(apply_fn: ApplyFn, variables, images, *, mode: str = "slide", crop=(768, 768),
                   stride=(512, 512), scales: Sequence[float] = (1.0,), flip: bool = False,
                   window_batch: int = 4) -> jax.Array:
    """Scores (B, H, W, C) whose argmax is the prediction: the logits for a single view (one scale, no flip),
    else log of the mean softmax over the views (so softmax of the result is the averaged probability)."""
    if tuple(scales) == (1.0,) and not flip:
        return _single_view(apply_fn, variables, images, mode, crop, stride, window_batch)
    probs = predict_probs(apply_fn, variables, images, mode=mode, crop=crop, stride=stride, scales=scales,
                          flip=flip, window_batch=window_batch)
    return jnp.log(probs)


def ensemble_probs(members: Sequence[tuple[ApplyFn, object]], images, **kwargs) -> jax.Array:
    """Mean over the ensemble members (apply_fn, variables) of their `predict_probs`."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    probs = [predict_probs(fn, v, images, **kwargs) for fn, v in members]
    return sum(probs[1:], probs[0]) / len(probs)


def normalize(frames, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 RGB (..., 3) -> float32 normalised as mmseg (mean/std in 0..255 units), with training's arithmetic
    (`stcl_jax.data.normalize`)."""
    inv_std, shift = scale_and_shift(mean, std)
    return jnp.asarray(frames, jnp.float32) * inv_std - shift


class Predictor:
    """Frames -> label maps, data-parallel over local devices, one compilation per frame size.

    `Predictor(members, mode=..., crop=..., stride=..., scales=..., flip=..., batch_size=...)`, members a list of
    (apply_fn, variables); one member = a single model. `predictor(frames uint8 (N, H, W, 3))` -> uint8 (N, H, W)
    train ids. Frames go through in batches of `batch_size` (rounded up to a multiple of the device count; the
    last batch is padded), so every call with frames of one size reuses the same executable.

    `postprocess(probs (B, H, W, C)) -> tuple of arrays with leading axis B`, if given, replaces the argmax: it gets
    the averaged probabilities (e.g. pseudo-labelling thresholds them) and the call returns the tuple, concatenated.
    """

    def __init__(self, members: Sequence[tuple[ApplyFn, object]], *, mode: str = "slide", crop=(768, 768),
                 stride=(512, 512), scales: Sequence[float] = (1.0,), flip: bool = False, batch_size: int = 0,
                 window_batch: int = 4, mean=IMAGENET_MEAN, std=IMAGENET_STD, devices=None,
                 postprocess: Callable | None = None):
        if mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
        devices = list(devices if devices is not None else jax.local_devices())
        self.mesh = Mesh(np.array(devices), ("data",))
        n = len(devices)
        self.batch_size = max(n, -(-(batch_size or n) // n) * n)
        self._data = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self._variables = [jax.device_put(v, replicated) for _, v in members]
        self._postprocess = postprocess
        fns = [fn for fn, _ in members]
        options = dict(mode=mode, crop=tuple(crop), stride=tuple(stride), scales=tuple(scales), flip=flip,
                       window_batch=window_batch)
        single = len(members) == 1 and tuple(scales) == (1.0,) and not flip and postprocess is None

        def run(variables, frames):
            images = normalize(frames, mean, std)
            if single:  # argmax of the logits: skips a softmax over the full-resolution scores
                return (jnp.argmax(predict_logits(fns[0], variables[0], images, **options), -1).astype(jnp.uint8),)
            probs = ensemble_probs(list(zip(fns, variables)), images, **options)
            if postprocess is not None:
                return tuple(postprocess(probs))
            return (jnp.argmax(probs, axis=-1).astype(jnp.uint8),)

        # shard_map: each device segments its own frames with no cross-device traffic (under plain jit the
        # partitioner would have to reshard the window batches that mix frames of several devices).
        per_device = jax.shard_map(run, mesh=self.mesh, in_specs=(P(), P("data")), out_specs=P("data"),
                                   check_vma=False)
        self._run = jax.jit(per_device)

    def __call__(self, frames: np.ndarray):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
            raise ValueError(f"frames must be (N, H, W, 3) RGB with N > 0, got shape {frames.shape}")
        outs = []
        for s in range(0, len(frames), self.batch_size):
            batch = frames[s : s + self.batch_size]
            k = len(batch)
            if k < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - k, *batch.shape[1:]), batch.dtype)])
            outs.append([np.asarray(x)[:k] for x in self._run(self._variables, jax.device_put(batch, self._data))])
        result = tuple(np.concatenate(parts) for parts in zip(*outs))
        return result if self._postprocess is not None else result[0]


def shard_for_process(items: Sequence, process_index: int | None = None, process_count: int | None = None):
    """This process's share of `items` (item i goes to process i % count): videos for multi-host evaluation."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return list(items)[index::count]


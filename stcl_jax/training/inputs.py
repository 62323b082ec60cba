"""What the train step receives from the data pipeline, and the on-device half of its preprocessing.

With `config.data.device_normalize` (the default) the pipeline ships uint8 images padded with 0 plus each clip's
valid (h, w) extent, and the step normalises them on the accelerator: a quarter of the bytes to copy and about half
of the per-frame CPU work of float32 batches, with exactly the values of mmseg's Normalize -> Pad(0) on the host.
"""

import jax.numpy as jnp

from stcl_jax.data.normalize import scale_and_shift


def batch_spec(config, batch_size: int) -> dict:
    """{key: (shape, dtype)} of a batch of `batch_size` clips (the global batch for the compiled step, the
    per-process batch for checking the loader's output)."""
    crop, frames = tuple(config.data.crop_size), config.data.num_frames
    spec = {"label": ((batch_size, frames, *crop), jnp.uint8), "stcl": ((batch_size,), jnp.bool_)}
    if device_normalize(config.data):
        spec["image"] = ((batch_size, frames, *crop, 3), jnp.uint8)
        spec["image_hw"] = ((batch_size, 2), jnp.int32)
    else:
        spec["image"] = ((batch_size, frames, *crop, 3), jnp.float32)
    return spec


def device_normalize(data_cfg) -> bool:
    return bool(data_cfg.device_normalize)


def normalize_padded(images, hw, mean, std):
    """uint8 (B, T, H, W, 3) clips + their valid (B, 2) top-left extents -> float32 (x - mean) / std inside the
    extent, 0 outside it: the float32 arithmetic of `stcl_jax.data.normalize`."""
    inv_std, shift = scale_and_shift(mean, std)
    x = images.astype(jnp.float32) * inv_std - shift
    h, w = images.shape[-3:-1]
    rows = jnp.arange(h)[None, :, None] < hw[:, 0, None, None]
    cols = jnp.arange(w)[None, None, :] < hw[:, 1, None, None]
    valid = rows & cols                                                   # (B, H, W)
    return jnp.where(valid[:, None, :, :, None], x, jnp.float32(0))


def train_images(batch, data_cfg):
    """The float32 normalised images of a batch, whichever form the pipeline shipped."""
    images = batch["image"]
    if images.dtype == jnp.uint8:
        return normalize_padded(images, batch["image_hw"], data_cfg.mean, data_cfg.std)
    return images

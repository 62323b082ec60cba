"""ResNeSt-101 as mmsegmentation's `ResNeSt` (timm's `resnest101e`): split-attention bottlenecks, Flax, NHWC.

Zhang et al. 2020. The network is `ResNet` (stcl_jax.models.backbones.resnet) with a deep stem of widths
64-64-128, average-pool shortcuts (`avg_down`) and `ResNeStBottleneck` blocks:
  1x1 conv (width) -> BN -> ReLU -> split attention (3x3, radix r) -> [3x3 average pool, stride s, padding 1,
  padding counted, when the block strides: "avd", after the attention] -> 1x1 conv (4 * width) -> BN
  -> + shortcut -> ReLU.
Split attention (`conv2`): a grouped 3x3 conv to r * width channels (groups r) -> BN (`bn0`) -> ReLU; the r
splits are summed and globally averaged, `fc1` (1x1 conv with bias, to max(width * r / 4, 32) rounded to a
multiple of 8, as timm) -> BN (`bn1`) -> ReLU -> `fc2` (to r * width) -> softmax over the r splits -> the
attention-weighted sum of the splits. Cardinality is 1 (ResNeSt-101).

Parameter names: as ResNet's, with `conv2/{conv,bn0,fc1,bn1,fc2}` in place of `conv2`/`bn2`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from stcl_jax.models.backbones.resnet import Dtype, ResNet, batch_norm, conv, shortcut


def attention_channels(width: int, radix: int) -> int:
    """timm's `make_divisible(width * radix / 4, divisor=8, min_value=32)` (mmseg: max(width * radix // 4, 32))."""
    value = width * radix * 0.25
    rounded = max(32, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


class SplitAttention(nn.Module):
    width: int
    radix: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        d, r = self.dtype, self.radix
        x = conv(self.width * r, 3, dtype=d, groups=r, name="conv")(x)
        x = nn.relu(batch_norm(train, dtype=d, name="bn0")(x))
        splits = x.reshape(*x.shape[:3], r, self.width)                     # channel = split * width + c
        gap = jnp.mean(splits.sum(axis=3), axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(d)
        gap = nn.Conv(attention_channels(self.width, r), (1, 1), dtype=d, name="fc1")(gap)
        gap = nn.relu(batch_norm(train, dtype=d, name="bn1")(gap))
        logits = nn.Conv(self.width * r, (1, 1), dtype=d, name="fc2")(gap)  # (B, 1, 1, r * width)
        weights = jax.nn.softmax(logits.reshape(x.shape[0], 1, 1, r, self.width).astype(jnp.float32), axis=3)
        return jnp.sum(splits * weights.astype(d), axis=3)


class ResNeStBottleneck(nn.Module):
    width: int
    stride: int = 1
    project: bool = False
    avg_down: bool = True
    radix: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        d = self.dtype
        y = nn.relu(batch_norm(train, dtype=d, name="bn1")(conv(self.width, 1, dtype=d, name="conv1")(x)))
        y = SplitAttention(self.width, self.radix, d, name="conv2")(y, train)
        if self.stride > 1:  # "avd": the block's stride as a 3x3 average pool after the attention
            y = nn.avg_pool(y, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)),
                            count_include_pad=True)
        y = batch_norm(train, dtype=d, name="bn3")(conv(4 * self.width, 1, dtype=d, name="conv3")(y))
        if self.project:
            x = shortcut(x, 4 * self.width, self.stride, self.avg_down, train, d)
        return nn.relu(y + x)


ResNeSt = functools.partial(ResNet, block=ResNeStBottleneck, radix=2, avg_down=True)

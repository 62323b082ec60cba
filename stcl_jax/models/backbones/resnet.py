"""ResNet-50 as mmsegmentation's `ResNetV1c` (timm's `resnet50c`), Flax linen, NHWC, for segmentation.

Layout (He et al. 2016 with the "C" deep stem of Bag of Tricks, He et al. 2019):
  stem     3x3 conv stride 2 (stem_width) -> BN -> ReLU -> 3x3 conv (stem_width) -> BN -> ReLU
           -> 3x3 conv (2 * stem_width) -> BN -> ReLU -> 3x3 max pool stride 2 (padding 1)
  stages   `depths` bottleneck blocks of widths width * 2**i (outputs 4x that); the first block of stages 2-4
           strides in its 3x3 conv (mmseg style="pytorch", ResNet v1.5); projection shortcuts are a strided
           1x1 conv + BN, or with `avg_down` a 2x2 average pool (ceil mode, padding not counted) + 1x1 conv + BN.
  returns  the four stage outputs at strides 4, 8, 16, 32 (what mmseg's UperNet reads, out_indices 0..3).

Any height and width works (PyTorch's floor/ceil rules for convs and pools). BatchNorm uses the statistics of
the whole batch given to `apply` in training (under jit on a sharded batch: all devices, i.e. SyncBN) and the
running averages otherwise, momentum 0.1 / eps 1e-5 as PyTorch. `block` selects the bottleneck: `Bottleneck`
here or `ResNeStBottleneck` (stcl_jax.models.backbones.resnest).

Parameter names (stcl_jax/convert/cnn.py maps timm and mmseg checkpoints onto them):
  stem/conv_{0,1,2}, stem/bn_{0,1,2}
  layers_{i}/blocks_{j}/{conv1,bn1,conv2,bn2,conv3,bn3,downsample_conv,downsample_bn}
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
BN_MOMENTUM = 0.9  # flax convention: PyTorch momentum 0.1.
BN_EPS = 1e-5


def conv(features: int, kernel: int, stride: int = 1, *, dtype: Dtype, name: str, groups: int = 1,
         bias: bool = False) -> nn.Conv:
    """PyTorch `Conv2d(kernel, stride, padding=kernel // 2)` (symmetric padding, floor output size)."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=bias, dtype=dtype, name=name)


def batch_norm(train: bool, *, dtype: Dtype, name: str) -> nn.BatchNorm:
    """PyTorch BatchNorm2d; the batch variance as the mean of squared deviations (flax's default E[x^2] - E[x]^2
    loses the digits of small variances, e.g. split attention's pooled maps: 4e-4 relative error measured)."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype,
                        use_fast_variance=False, name=name)


def avg_pool_ceil(x: jax.Array, stride: int) -> jax.Array:
    """PyTorch `AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)`: odd edges average fewer."""
    if stride == 1:
        return x
    pad = [(0, 0), (0, -x.shape[1] % stride), (0, -x.shape[2] % stride), (0, 0)]
    window = (1, stride, stride, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, window, pad)
    return total / count


def shortcut(x: jax.Array, features: int, stride: int, avg_down: bool, train: bool, dtype: Dtype) -> jax.Array:
    """The projection shortcut of a stage's first block (`downsample_conv`, `downsample_bn`)."""
    if avg_down:
        x = avg_pool_ceil(x, stride)
        stride = 1
    x = conv(features, 1, stride, dtype=dtype, name="downsample_conv")(x)
    return batch_norm(train, dtype=dtype, name="downsample_bn")(x)


class Bottleneck(nn.Module):
    """1x1 (width) -> 3x3 (width, stride) -> 1x1 (4 * width), each with BN; ReLU after the residual sum."""
    width: int
    stride: int = 1
    project: bool = False      # projection shortcut (the first block of a stage)
    avg_down: bool = False
    radix: int = 0             # unused here (ResNeSt's split attention); keeps the block interface uniform
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        d = self.dtype
        y = nn.relu(batch_norm(train, dtype=d, name="bn1")(conv(self.width, 1, dtype=d, name="conv1")(x)))
        y = nn.relu(batch_norm(train, dtype=d, name="bn2")(conv(self.width, 3, self.stride, dtype=d,
                                                                   name="conv2")(y)))
        y = batch_norm(train, dtype=d, name="bn3")(conv(4 * self.width, 1, dtype=d, name="conv3")(y))
        if self.project:
            x = shortcut(x, 4 * self.width, self.stride, self.avg_down, train, d)
        return nn.relu(y + x)


class DeepStem(nn.Module):
    """Three 3x3 conv-BN-ReLU (stride 2, widths w, w, 2w) and a 3x3 stride-2 max pool: stride 4 overall."""
    stem_width: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        widths = (self.stem_width, self.stem_width, 2 * self.stem_width)
        for i, (features, stride) in enumerate(zip(widths, (2, 1, 1))):
            x = conv(features, 3, stride, dtype=self.dtype, name=f"conv_{i}")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"bn_{i}")(x))
        return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class ResLayer(nn.Module):
    """`depth` blocks (`blocks_{j}`); the first one strides and projects the shortcut."""
    block: Any
    depth: int
    width: int
    stride: int
    radix: int = 0
    avg_down: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for j in range(self.depth):
            x = self.block(self.width, self.stride if j == 0 else 1, project=j == 0, avg_down=self.avg_down,
                           radix=self.radix, dtype=self.dtype, name=f"blocks_{j}")(x, train)
        return x


class ResNet(nn.Module):
    """Deep-stem ResNet returning the outputs of its four stages (strides 4, 8, 16, 32), NHWC."""
    depths: Sequence[int] = (3, 4, 6, 3)
    stem_width: int = 32
    width: int = 64            # bottleneck width of stage 1; stage i has width * 2**i, outputs 4x that
    radix: int = 0
    avg_down: bool = False
    block: Any = Bottleneck
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
        x = DeepStem(self.stem_width, self.dtype, name="stem")(images.astype(self.dtype), train)
        outs = []
        for i, depth in enumerate(self.depths):
            x = ResLayer(self.block, depth, self.width * 2 ** i, 1 if i == 0 else 2, self.radix, self.avg_down,
                         self.dtype, name=f"layers_{i}")(x, train)
            outs.append(x)
        return outs

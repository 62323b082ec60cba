"""UperNet decoder (Xiao et al. 2018) as in mmsegmentation's `UPerHead` / Hugging Face `UperNetHead`, NHWC.

PPM (adaptive average pooling at scales 1, 2, 3, 6 + ConvModule 1x1, bilinearly upsampled) on the last stage,
3x3 bottleneck; FPN laterals (1x1) on the other stages, top-down path with bilinear upsampling, FPN 3x3 convs,
upsampling of every level to stride 4, concatenation and the 3x3 `fpn_bottleneck`; dropout (channel-wise, as
mmseg's Dropout2d) and the 1x1 classifier `conv_seg`.

Parameter names follow mmseg one to one: `psp_modules_{i}`, `bottleneck`, `lateral_convs_{i}`, `fpn_convs_{i}`,
`fpn_bottleneck`, `conv_seg`; a ConvModule holds `conv` (no bias) and `bn`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
BN_MOMENTUM = 0.9  # flax convention: PyTorch momentum 0.1.
BN_EPS = 1e-5


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC `x` to `size`, equal to PyTorch `F.interpolate(..., align_corners=False)`.

    Antialiasing is off so that downsampling (e.g. a 6x6 pooled map onto a 4x5 feature map) matches PyTorch too.
    """
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear", antialias=False)


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix of PyTorch `AdaptiveAvgPool` bins [floor(i*n/o), ceil((i+1)*n/o))."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jax.Array, scale: int) -> jax.Array:
    """NHWC adaptive average pooling to (scale, scale) as two small matmuls with constant matrices."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], scale), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], scale), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", ph, x, pw)


class ConvModule(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU (mmcv ConvModule with norm_cfg=BN/SyncBN, act_cfg=ReLU)."""
    features: int
    kernel: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad = self.kernel // 2
        x = nn.Conv(self.features, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)), use_bias=False,
                    dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=self.dtype,
                         name="bn")(x)
        return nn.relu(x)


class UPerHead(nn.Module):
    """Returns (class logits at stride 4 in float32, fused `fpn_bottleneck` feature at stride 4)."""
    num_classes: int
    channels: int = 512
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False):
        top = features[-1]
        psp = [top]
        for i, scale in enumerate(self.pool_scales):
            pooled = ConvModule(self.channels, 1, self.dtype, name=f"psp_modules_{i}")(
                adaptive_avg_pool(top, scale), train)
            psp.append(resize_bilinear(pooled, top.shape[1:3]))
        laterals = [ConvModule(self.channels, 1, self.dtype, name=f"lateral_convs_{i}")(f, train)
                    for i, f in enumerate(features[:-1])]
        laterals.append(ConvModule(self.channels, 3, self.dtype, name="bottleneck")(
            jnp.concatenate(psp, axis=-1), train))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
        outs = [ConvModule(self.channels, 3, self.dtype, name=f"fpn_convs_{i}")(laterals[i], train)
                for i in range(len(laterals) - 1)]
        outs.append(laterals[-1])
        size = outs[0].shape[1:3]
        fused = ConvModule(self.channels, 3, self.dtype, name="fpn_bottleneck")(
            jnp.concatenate([resize_bilinear(o, size) for o in outs], axis=-1), train)
        y = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(fused)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="conv_seg")(y)
        return logits.astype(jnp.float32), fused

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
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
BN_MOMENTUM = 0.9  # flax convention: PyTorch momentum 0.1.
BN_EPS = 1e-5


# Longest period (output pixels per repeat of the tap pattern) resized with strided slices; longer periods (sizes
# with a small common divisor, e.g. 50 -> 853) use two static gathers instead.
MAX_SLICE_PERIOD = 16


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC `x` to `size`, equal to PyTorch `F.interpolate(..., align_corners=False)`.

    Antialiasing is off, so downsampling (e.g. a 6x6 pooled map onto a 4x5 feature map) matches PyTorch too. A
    2-tap interpolation along H, then W, with PyTorch's taps and float32 weights (`bilinear_taps`, NumPy at trace
    time): static strided slices (or gathers, for long tap periods) and a lerp with constant weights; no matmul,
    and for the usual integer ratios no scatter in the gradient either. Low-precision inputs (bf16) are
    interpolated in float32 and rounded once at the end, as PyTorch's CUDA kernel does under autocast
    (`upsample_bilinear2d` keeps the input dtype and accumulates in float32).
    """
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    compute = jnp.promote_types(x.dtype, jnp.float32)
    y = _resize_axis(x.astype(compute), 1, size[0])
    return _resize_axis(y, 2, size[1]).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w1) per output pixel: out[i] = (1 - w1[i]) * x[i0[i]] + w1[i] * x[i1[i]], with PyTorch's float32
    arithmetic: src = fma(n_in / n_out, i + 0.5, -0.5) clamped at 0, i0 = floor(src), i1 = min(i0 + 1, n_in - 1).
    (Its compiled kernels contract that multiply-add; the float32 product is exact in float64.)"""
    f32 = np.float32
    scale = np.float64(f32(n_in) / f32(n_out))
    src = (scale * (np.arange(n_out, dtype=f32) + f32(0.5)).astype(np.float64) - 0.5).astype(f32)
    src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.clip(src - i0.astype(f32), 0, 1).astype(np.float64)


@functools.lru_cache(maxsize=None)
def phase_plan(n_in: int, n_out: int) -> tuple[tuple[int, np.ndarray], ...] | None:
    """The taps of `bilinear_taps` as strided slices, or None if the period is too long for that.

    With n_out / n_in = p / q in lowest terms and g = gcd(n_in, n_out), output pixel p*k + r (k < g) reads input
    pixels d_r + q*k and d_r + q*k + 1, where d_r = floor((r + 0.5) q / p - 0.5) >= -1. Returns (d_r, w1 of those g
    pixels) per phase r < p; taps at -1 or n_in read an edge-padded input, which reproduces PyTorch's clamping.
    None also when PyTorch's float32 rounding moves a tap off that pattern.
    """
    g = math.gcd(n_in, n_out)
    p, q = n_out // g, n_in // g
    if p > MAX_SLICE_PERIOD:
        return None
    i0, _, w1 = bilinear_taps(n_in, n_out)
    plan = []
    for r in range(p):
        d = ((2 * r + 1) * q - p) // (2 * p)
        first = d + q * np.arange(g)
        taps, weights = i0[r::p], w1[r::p]
        clamped = (first == -1) & (taps == 0) & (weights == 0)  # PyTorch reads x[0]; so does padded x[-1]
        if not np.all((taps == first) | clamped):
            return None
        plan.append((d, weights))
    return tuple(plan)


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if n_in == 1:  # every tap reads the one pixel
        return jnp.broadcast_to(x, (*x.shape[:axis], n_out, *x.shape[axis + 1:]))
    plan = phase_plan(n_in, n_out)
    if plan is None:
        i0, i1, w1 = bilinear_taps(n_in, n_out)
        return _lerp(jnp.take(x, i0, axis), jnp.take(x, i1, axis), w1, axis)
    q = n_in // math.gcd(n_in, n_out)
    padded = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), x,
                              jax.lax.slice_in_dim(x, n_in - 1, n_in, axis=axis)], axis=axis)
    phases = []
    for d, w1 in plan:  # the slices' transposes are pads: no scatter in the gradient
        n = len(w1)
        a = jax.lax.slice_in_dim(padded, d + 1, d + 2 + q * (n - 1), stride=q, axis=axis)
        if w1.any():
            b = jax.lax.slice_in_dim(padded, d + 2, d + 3 + q * (n - 1), stride=q, axis=axis)
            a = _lerp(a, b, w1, axis)
        phases.append(a)
    out = jnp.stack(phases, axis=axis + 1)  # (..., g, p, ...) -> (..., g * p, ...)
    return out.reshape(*x.shape[:axis], n_out, *x.shape[axis + 1:])


def _lerp(a: jax.Array, b: jax.Array, w1: np.ndarray, axis: int) -> jax.Array:
    """(1 - w1) * a + w1 * b with constant weights `w1` (one per position along `axis`)."""
    shape = [1] * a.ndim
    shape[axis] = len(w1)
    w1 = np.asarray(w1, np.float64).reshape(shape)
    return a * jnp.asarray(1.0 - w1, a.dtype) + b * jnp.asarray(w1, a.dtype)


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
    """Returns (class logits at stride 4, fused `fpn_bottleneck` feature at stride 4), both in `dtype`."""
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
        return logits, fused

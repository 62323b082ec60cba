"""Swin Transformer encoder (Liu et al. 2021) in Flax linen, NHWC, as used for segmentation by mmsegmentation.

Any input height and width works: the image is padded to a patch multiple, each block pads its feature map to a
window multiple (zeros after `norm1`, cropped after attention) and patch merging pads odd sizes, exactly as
mmseg / the official Swin segmentation code / Hugging Face `SwinBackbone` do. Shifted windows are always used
(no clamping of the window to small feature maps, as mmseg and HF's backbone). The relative-position index and
the per-token shift regions are small NumPy constants built at trace time from the static shapes; the (nW, N, N)
shift masks are computed from the regions inside the graph.

Parameter names follow the official Swin / timm / mmseg checkpoints one to one (`patch_embed/proj`,
`layers_{i}/blocks_{j}/{norm1,attn/qkv,attn/proj,attn/relative_position_bias_table,norm2,mlp/fc1,mlp/fc2}`,
`layers_{i}/downsample/{norm,reduction}`, output norms `norm{i}`), see stcl_jax/convert.py.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax.kernels.window_attention import window_attention, window_region_ids
from stcl_jax.models.config import ATTENTION_IMPLS

Dtype = Any
LN_EPS = 1e-5  # PyTorch nn.LayerNorm default.


def relative_position_index(window: int) -> np.ndarray:
    """(window**2, window**2) int index into the (2w-1)**2 bias table, as in the official Swin code."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)


def shift_attention_mask(region_ids: np.ndarray) -> jax.Array:
    """(num_windows, N, N) float32 additive mask, 0 within a region and -100 across regions, computed in the graph
    from the small `window_region_ids` constant (the official code's mask values)."""
    ids = jnp.asarray(region_ids)
    return jnp.where(ids[:, :, None] != ids[:, None, :], jnp.float32(-100.0), jnp.float32(0.0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax_low_precision(logits: jax.Array, dtype) -> jax.Array:
    """softmax(float32 logits) rounded to `dtype`, saving only those `dtype` probabilities for the backward
    (jax.nn.softmax would keep its float32 output): statistics and the gradient are computed in float32."""
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


def _softmax_low_precision_fwd(logits, dtype):
    probs = softmax_low_precision(logits, dtype)
    return probs, probs


def _softmax_low_precision_bwd(dtype, probs, grad):
    p, g = probs.astype(jnp.float32), grad.astype(jnp.float32)
    return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax_low_precision.defvjp(_softmax_low_precision_fwd, _softmax_low_precision_bwd)


def resolve_attention_impl(name: str) -> str:
    """The window-attention path of `model.attention_impl`: "xla" | "cudnn" | "pallas" as named; "auto" is "xla"
    on every platform for now: no GPU or TPU measurement of the Pallas kernel exists yet (bench/attention_kernel.py
    is the one to make), so nothing justifies another default."""
    if name not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={name!r}: expected one of {ATTENTION_IMPLS}")
    return "xla" if name == "auto" else name


def remat_policy(name: str):
    """The `jax.checkpoint` policy of `model.remat_policy`: "full" saves nothing (the whole block is recomputed),
    "dots" saves the outputs of the matmuls without batch dimensions (the Dense layers qkv, proj, fc1, fc2)."""
    policies = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
    if name not in policies:
        raise ValueError(f"remat_policy={name!r}: expected one of {tuple(policies)}")
    return policies[name]


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Per-stage stochastic-depth rates increasing linearly from 0 to `rate` over all blocks (mmseg / timm)."""
    rates = np.linspace(0.0, rate, sum(depths)).tolist()
    bounds = np.cumsum([0, *depths])
    return [rates[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """(B, H, W, C) -> (B, num_windows, window*window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(x: jax.Array, window: int, h: int, w: int) -> jax.Array:
    """Inverse of `window_partition`."""
    b, _, _, c = x.shape
    x = x.reshape(b, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (rng stream "drop_path")."""
    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("drop_path"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


def einsum_attention(q, k, v, bias, region_ids: np.ndarray | None = None):
    """The "xla" path: softmax(q k^T + bias [+ shift mask]) v with einsums, q already scaled; q, k, v (B, nW, N,
    heads, d), bias (heads, N, N) float32, region_ids (nW, N) or None. Float32 inputs: exact float32 softmax;
    lower precision: `softmax_low_precision` (float32 statistics, probabilities saved in q's dtype)."""
    bias = bias[None, None]                                            # (1, 1, heads, N, N)
    if region_ids is not None:
        bias = bias + shift_attention_mask(region_ids)[None, :, None]  # (1, nW, heads, N, N)
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(jnp.float32) + bias
    if q.dtype == jnp.float32:
        probs = jax.nn.softmax(logits, axis=-1)
    else:
        probs = softmax_low_precision(logits, q.dtype)
    return jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v)


class WindowAttention(nn.Module):
    """Multi-head self attention inside windows with a learned relative-position bias.

    Scores: bf16 QK^T (in a bf16 model) upcast to float32 with the bias (and, in shifted windows, the region mask
    built from per-token region ids) for the softmax, whose backward keeps only the probabilities in the compute
    dtype (`softmax_low_precision`: 2 bytes per score element; exact float32 softmax in float32 mode).
    `attention_impl="cudnn"` sends the regular (non-shifted) windows to `jax.nn.dot_product_attention(
    implementation="cudnn")` with the (1, heads, N, N) bias (cuDNN's fused attention; GPU only, not yet measured:
    see BENCHMARKS.md). The shifted windows stay on the einsum path: their per-window mask would have to broadcast
    over the batch there. (`implementation=None` is XLA's einsum attention on jax 0.10-0.11, which keeps float32
    and bf16 probabilities for the backward, 6 bytes per element: so it is not used.)
    `attention_impl="pallas"` sends regular and shifted windows to the fused Pallas kernels
    (`stcl_jax.kernels.window_attention`: Triton on GPU, Mosaic on TPU, interpret mode on the CPU), which keep no
    (N, N) array in HBM and save only q, k, v; "auto" is "xla" (see `resolve_attention_impl`).
    """
    dim: int
    num_heads: int
    window: int
    qkv_bias: bool = True
    dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, region_ids: np.ndarray | None):
        # x: (B, nW, N, C); region_ids: (nW, N) constant (`window_region_ids`) for shifted windows, else None.
        b, nw, n, c = x.shape
        head_dim = c // self.num_heads
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * self.window - 1) ** 2, self.num_heads), jnp.float32)
        bias = table[relative_position_index(self.window).reshape(-1)]
        bias = bias.reshape(n, n, self.num_heads).transpose(2, 0, 1)  # (heads, N, N)

        qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, nw, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        impl = resolve_attention_impl(self.attention_impl)
        if region_ids is None and impl == "cudnn":
            flat = lambda t: t.reshape(b * nw, n, self.num_heads, head_dim)  # noqa: E731
            out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), bias=bias[None].astype(q.dtype),
                                               scale=head_dim**-0.5, implementation="cudnn")
        else:
            attend = window_attention if impl == "pallas" else einsum_attention
            out = attend(q * jnp.asarray(head_dim**-0.5, q.dtype), k, v, bias, region_ids)
        return nn.Dense(c, dtype=self.dtype, name="proj")(out.reshape(b, nw, n, c))


class Mlp(nn.Module):
    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        out = x.shape[-1]
        x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)  # PyTorch nn.GELU default (erf).
        return nn.Dense(out, dtype=self.dtype, name="fc2")(x)


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP block with pre-norm residuals and stochastic depth."""
    num_heads: int
    window: int
    shift: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        b, h, w, c = x.shape
        ws = self.window
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")(x)
        ph, pw = (-h) % ws, (-w) % ws
        if ph or pw:
            y = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)))
        hp, wp = h + ph, w + pw
        region_ids = None
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
            region_ids = window_region_ids(hp, wp, ws, self.shift)
        y = window_partition(y, ws)
        y = WindowAttention(c, self.num_heads, ws, self.qkv_bias, self.dtype, self.attention_impl,
                            name="attn")(y, region_ids)
        y = window_reverse(y, ws, hp, wp)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        y = y[:, :h, :w, :]
        x = x + DropPath(self.drop_path)(y, deterministic)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")(x)
        y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x + DropPath(self.drop_path)(y, deterministic)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (official order x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]) + norm + linear."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = x.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c)   # (b, h2, dh, w2, dw, c)
        x = x.transpose(0, 1, 3, 4, 2, 5).reshape(b, (h + 1) // 2, (w + 1) // 2, 4 * c)  # order (dw, dh)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)
        return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction")(x)


class PatchEmbed(nn.Module):
    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        h, w = x.shape[1:3]
        if h % p or w % p:
            x = jnp.pad(x, ((0, 0), (0, (-h) % p), (0, (-w) % p), (0, 0)))
        x = nn.Conv(self.embed_dim, (p, p), (p, p), padding="VALID", dtype=self.dtype, name="proj")(x)
        return nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)


class SwinStage(nn.Module):
    """`depth` blocks alternating regular and shifted windows, then (optionally) patch merging.

    Returns (stage output before merging, input of the next stage).
    """
    depth: int
    num_heads: int
    window: int
    drop_path: Sequence[float]
    downsample: bool
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    remat: bool = False
    dtype: Dtype = jnp.float32
    remat_policy: str = "full"
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        block_cls = SwinBlock
        if self.remat:
            block_cls = nn.remat(SwinBlock, static_argnums=(2,), policy=remat_policy(self.remat_policy))
        for j in range(self.depth):
            shift = 0 if j % 2 == 0 else self.window // 2
            x = block_cls(self.num_heads, self.window, shift, self.mlp_ratio, self.qkv_bias,
                          float(self.drop_path[j]), self.dtype, self.attention_impl,
                          name=f"blocks_{j}")(x, deterministic)
        merged = PatchMerging(self.dtype, name="downsample")(x) if self.downsample else x
        return x, merged


class SwinTransformer(nn.Module):
    """Returns the four stage outputs (NHWC, strides 4, 8, 16, 32), each after its own LayerNorm `norm{i}`."""
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    remat_policy: str = "full"
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, name="patch_embed")(images.astype(self.dtype))
        outs = []
        for i, (depth, heads, rates) in enumerate(
                zip(self.depths, self.num_heads, drop_path_rates(self.depths, self.drop_path_rate))):
            stage = SwinStage(depth, heads, self.window_size, tuple(rates), i < len(self.depths) - 1,
                              self.mlp_ratio, self.qkv_bias, self.remat, self.dtype, self.remat_policy,
                              self.attention_impl, name=f"layers_{i}")
            y, x = stage(x, not train)
            outs.append(nn.LayerNorm(LN_EPS, dtype=self.dtype, name=f"norm{i}")(y))
        return outs

"""CSWin Transformer encoder (Dong et al. 2022) in Flax linen, NHWC, as the official segmentation backbone
(microsoft/CSWin-Transformer `segmentation/backbone/cswin_transformer.py`).

Layout:
  stage1_conv_embed  7x7 conv stride 4 (padding 2) -> LayerNorm: embed_dim channels at stride 4
  stage{1..4}        CSWin blocks (pre-norm): LayerNorm -> qkv -> cross-shaped window attention -> proj, residual;
                     LayerNorm -> MLP (GELU), residual; stochastic depth on both branches
  merge{1..3}        3x3 conv stride 2 (padding 1) -> LayerNorm between stages, doubling the channels
  norm{1..4}         a LayerNorm on each stage output (the four NHWC maps at strides 4, 8, 16, 32)

Cross-shaped window attention: the heads are split in two halves; the first attends inside vertical stripes
(full height, `split_size` columns: the official `idx=0` branch `attns_0`), the second inside horizontal stripes
(`split_size` rows, full width: `attns_1`). The last stage uses one branch of full attention over the whole map,
as the official code. LePE: a depth-wise 3x3 conv (`get_v`) on V, applied to each stripe separately (zero
padding at the stripe borders), added to the attention output.

Any input size: the conv embedding and merges follow PyTorch's conv arithmetic (stage 1 has floor((H + 1) / 4)
rows, each merge ceil(h / 2)). When a stripe width does not divide the map, the q, k, v maps of that branch are
zero-padded *centred* (top = pad // 2, as the official code, so the padded tokens have q = k = v = 0, not the qkv
bias), attended WITHOUT a mask (padded keys take part in the softmax with logit 0, exactly as the official code
does), and the output is cropped back.

Stage i has embed_dim * 2**i channels: the classification checkpoints' layout (the official segmentation code
computes embed_dim * heads[i] / heads[0], the same for T/S/B; for CSwin-L, heads (6, 12, 24, 24), it would give
576 stage-4 channels that cannot hold the 1152-channel ImageNet-22K weights; the published 208M UperNet-CSwin-L
parameters are the 1152-channel layout).

Parameter names follow the official state dict one to one (stcl_jax/convert/cswin.py):
  stage1_conv_embed/{conv, ln}   (official `stage1_conv_embed.0`, `.2`; "ln", not "norm": the official recipe's
                                  mmseg no-decay key "norm" does not match `stage1_conv_embed.2`, so it decays)
  stage{i}/blocks_{j}/{norm1, qkv, attns_{k}/get_v, proj, norm2, mlp/fc1, mlp/fc2}
  merge{i}/{conv, norm}, norm{i}

There is no PyTorch CSwin package in this project's environment, so no test compares this module numerically
with the official model: tests/test_cswin.py checks the checkpoint layout, the shapes, the parameter counts and
the attention against an independent NumPy implementation (docs/design.md, "CSwin encoder").
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from stcl_jax.models.swin import LN_EPS, DropPath, Mlp, drop_path_rates, remat_policy, softmax_low_precision

Dtype = Any


class CSWinConfig(NamedTuple):
    """The `cswin` group of a model config as a hashable module attribute."""
    embed_dim: int
    depths: tuple
    num_heads: tuple
    split_size: tuple
    mlp_ratio: float
    drop_path_rate: float

    @classmethod
    def of(cls, c) -> "CSWinConfig":
        return cls(c.embed_dim, tuple(c.depths), tuple(c.num_heads), tuple(c.split_size), c.mlp_ratio,
                   c.drop_path_rate)


def stripe_shape(height: int, width: int, split: int, branch: int) -> tuple[int, int]:
    """(rows, columns) of one attention window: branch 0 vertical stripes, 1 horizontal, -1 the whole map."""
    if branch == -1:
        return height, width
    return (height, split) if branch == 0 else (split, width)


def centred_padding(size: int, window: int) -> tuple[int, int]:
    """(before, after) zero padding of `size` to a multiple of `window`, the odd pixel after (official code)."""
    pad = (-size) % window
    return pad // 2, pad - pad // 2


def to_stripes(x: jax.Array, rows: int, cols: int) -> jax.Array:
    """(B, H, W, C) -> (B, num_windows, rows, cols, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // rows, rows, w // cols, cols, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // rows) * (w // cols), rows, cols, c)


def from_stripes(x: jax.Array, h: int, w: int) -> jax.Array:
    """Inverse of `to_stripes` for a (padded) (h, w) map."""
    b, _, rows, cols, c = x.shape
    x = x.reshape(b, h // rows, w // cols, rows, cols, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class StripeAttention(nn.Module):
    """One branch of cross-shaped window attention with LePE (the official `LePEAttention`), on projected q, k, v
    maps (B, H, W, c) of this branch's channels; `branch` as in `stripe_shape`."""
    num_heads: int
    split: int
    branch: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q, k, v):
        b, h, w, c = q.shape
        rows, cols = stripe_shape(h, w, self.split, self.branch)
        (top, bottom), (left, right) = centred_padding(h, rows), centred_padding(w, cols)
        pad = ((0, 0), (top, bottom), (left, right), (0, 0))
        hp, wp = h + top + bottom, w + left + right
        q, k, v = (to_stripes(jnp.pad(t, pad), rows, cols) for t in (q, k, v))  # (B, nW, rows, cols, c)
        nw, n, head_dim = q.shape[1], rows * cols, c // self.num_heads

        get_v = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=c, dtype=self.dtype,
                        name="get_v")
        lepe = get_v(v.reshape(b * nw, rows, cols, c)).reshape(b, nw, n, c)

        heads = lambda t: t.reshape(b, nw, n, self.num_heads, head_dim)  # noqa: E731
        q = heads(q) * jnp.asarray(head_dim**-0.5, q.dtype)
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, heads(k)).astype(jnp.float32)
        if jnp.dtype(self.dtype) == jnp.float32:
            probs = jax.nn.softmax(logits, axis=-1)
        else:
            probs = softmax_low_precision(logits, jnp.dtype(self.dtype))
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", probs, heads(v)).reshape(b, nw, n, c) + lepe
        out = from_stripes(out.reshape(b, nw, rows, cols, c), hp, wp)
        return out[:, top:top + h, left:left + w, :]


class CSWinBlock(nn.Module):
    """Cross-shaped window attention (or, with `full_attention`, one full-attention branch) + MLP block."""
    num_heads: int
    split: int
    full_attention: bool = False
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        c = x.shape[-1]
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")(x)
        q, k, v = jnp.split(nn.Dense(3 * c, dtype=self.dtype, name="qkv")(y), 3, axis=-1)
        if self.full_attention:
            y = StripeAttention(self.num_heads, self.split, -1, self.dtype, name="attns_0")(q, k, v)
        else:
            halves = (slice(0, c // 2), slice(c // 2, c))
            y = jnp.concatenate([
                StripeAttention(self.num_heads // 2, self.split, i, self.dtype, name=f"attns_{i}")(
                    q[..., s], k[..., s], v[..., s]) for i, s in enumerate(halves)], axis=-1)
        y = nn.Dense(c, dtype=self.dtype, name="proj")(y)
        x = x + DropPath(self.drop_path)(y, deterministic)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")(x)
        y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x + DropPath(self.drop_path)(y, deterministic)


class CSWinStage(nn.Module):
    """`depth` CSWin blocks (`blocks_{j}`), optionally rematerialised one by one in the backward pass."""
    depth: int
    num_heads: int
    split: int
    full_attention: bool
    drop_path: Sequence[float]
    mlp_ratio: float = 4.0
    remat: bool = False
    remat_policy: str = "full"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        block_cls = CSWinBlock
        if self.remat:
            block_cls = nn.remat(CSWinBlock, static_argnums=(2,), policy=remat_policy(self.remat_policy))
        for j in range(self.depth):
            x = block_cls(self.num_heads, self.split, self.full_attention, self.mlp_ratio, float(self.drop_path[j]),
                          self.dtype, name=f"blocks_{j}")(x, deterministic)
        return x


class ConvNorm(nn.Module):
    """PyTorch `Conv2d(kernel, stride, padding)` (with bias, floor output size) then a LayerNorm over channels:
    the conv embedding (7x7, stride 4, padding 2) and the merge blocks (3x3, stride 2, padding 1)."""
    features: int
    kernel: int
    stride: int
    padding: int
    norm_name: str = "norm"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.padding
        x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), padding=((p, p), (p, p)),
                    dtype=self.dtype, name="conv")(x)
        return nn.LayerNorm(LN_EPS, dtype=self.dtype, name=self.norm_name)(x)


class CSWinTransformer(nn.Module):
    """Returns the four stage outputs (NHWC, strides 4, 8, 16, 32), each after its own LayerNorm `norm{i}`."""
    config: CSWinConfig
    remat: bool = False
    remat_policy: str = "full"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False):
        c = self.config
        x = ConvNorm(c.embed_dim, 7, 4, 2, "ln", self.dtype, name="stage1_conv_embed")(images.astype(self.dtype))
        outs = []
        for i, rates in enumerate(drop_path_rates(c.depths, c.drop_path_rate)):
            if i:
                x = ConvNorm(c.embed_dim * 2 ** i, 3, 2, 1, "norm", self.dtype, name=f"merge{i}")(x)
            x = CSWinStage(c.depths[i], c.num_heads[i], c.split_size[i], i == len(c.depths) - 1, tuple(rates),
                           c.mlp_ratio, self.remat, self.remat_policy, self.dtype, name=f"stage{i + 1}")(x, not train)
            outs.append(nn.LayerNorm(LN_EPS, dtype=self.dtype, name=f"norm{i + 1}")(x))
        return outs

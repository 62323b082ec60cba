"""Auxiliary FCN head (mmseg `FCNHead`) and the STCL projection head (per-pixel FC -> BN -> ReLU)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from stcl_jax.models.upernet import BN_EPS, BN_MOMENTUM, ConvModule

Dtype = Any


class FCNHead(nn.Module):
    """`num_convs` 3x3 ConvModules (`convs_{i}`), channel dropout, 1x1 classifier `conv_seg`; logits in `dtype`."""
    num_classes: int
    channels: int = 256
    num_convs: int = 1
    dropout: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.num_convs):
            x = ConvModule(self.channels, 3, self.dtype, name=f"convs_{i}")(x, train)
        x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="conv_seg")(x)


class ProjectionHead(nn.Module):
    """Per-pixel FC (`fc`, no bias: BN follows) -> BatchNorm (`bn`) -> ReLU, as in the STCL paper (Sec. 2.3).

    The output is not L2-normalised; the STCL loss normalises the embeddings itself.
    """
    dim: int = 512
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(self.dim, use_bias=False, dtype=self.dtype, name="fc")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=self.dtype,
                         name="bn")(x)
        return nn.relu(x)

"""The STCL segmenter: Swin (or CSWin, ResNet, ResNeSt: `model.backbone`) encoder + UperNet decoder + auxiliary FCN
head + STCL projection head.

Contract (docs/design.md): `model.apply(variables, images (B, H, W, 3), train=...)` returns
`{"logits": (B, H, W, C), "aux_logits": (B, H, W, C), "embeddings": (B, h, w, D)}` where the embeddings live at
`model_config.projection.stride`. All three are in the compute dtype (`model_config.dtype`: bfloat16 logits for a
bf16 model, as under torch autocast); the logits are upsampled from stride 4 in that dtype (float32 arithmetic,
one rounding) and consumers upcast them (`cross_entropy` inside its fused reductions, inference before averaging).
Top-level parameter groups follow mmseg: `backbone`, `decode_head`, `auxiliary_head`, plus `projection_head`.

BatchNorm statistics are those of the whole batch passed to `apply`; under `jax.jit` with a batch sharded over
devices that is the global batch (XLA inserts the cross-device reductions), i.e. SyncBN semantics.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from stcl_jax.models import config as config_lib
from stcl_jax.models.backbones import CNNConfig, CSWinConfig, CSWinTransformer, cnn_encoder
from stcl_jax.models.heads import FCNHead, ProjectionHead
from stcl_jax.models.swin import SwinTransformer
from stcl_jax.models.upernet import UPerHead, resize_bilinear

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Segmenter(nn.Module):
    num_classes: int
    embed_dim: int
    depths: Sequence[int]
    num_heads: Sequence[int]
    window_size: int
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3
    decoder_channels: int = 512
    pool_scales: Sequence[int] = (1, 2, 3, 6)
    decoder_dropout: float = 0.1
    aux_channels: int = 256
    aux_in_index: int = 2
    aux_num_convs: int = 1
    aux_dropout: float = 0.1
    projection_dim: int = 512
    projection_feature: str = config_lib.DEFAULT_PROJECTION_FEATURE
    remat: bool = False
    remat_policy: str = "full"
    attention_impl: str = "xla"
    dtype: Any = jnp.float32
    backbone: str = "swin"
    cnn: Any = None            # model_config().cnn (frozen) when backbone is a CNN
    cswin: Any = None          # CSWinConfig of model_config().cswin when backbone is "cswin"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3) NHWC, got shape {images.shape}")
        size = images.shape[1:3]
        if self.backbone == "swin":
            encoder = SwinTransformer(self.embed_dim, tuple(self.depths), tuple(self.num_heads), self.window_size,
                                      self.patch_size, self.mlp_ratio, self.qkv_bias, self.drop_path_rate,
                                      self.remat, self.dtype, self.remat_policy, self.attention_impl,
                                      name="backbone")
        elif self.backbone == "cswin":
            encoder = CSWinTransformer(self.cswin, self.remat, self.remat_policy, self.dtype, name="backbone")
        else:
            encoder = cnn_encoder(self.cnn, self.dtype)
        feats = encoder(images, train)
        logits, fused = UPerHead(self.num_classes, self.decoder_channels, tuple(self.pool_scales),
                                 self.decoder_dropout, self.dtype, name="decode_head")(feats, train)
        aux = FCNHead(self.num_classes, self.aux_channels, self.aux_num_convs, self.aux_dropout, self.dtype,
                      name="auxiliary_head")(feats[self.aux_in_index], train)
        source = fused if self.projection_feature == "fused" else feats[int(self.projection_feature[-1]) - 1]
        embeddings = ProjectionHead(self.projection_dim, self.dtype, name="projection_head")(source, train)
        return {"logits": resize_bilinear(logits, size), "aux_logits": resize_bilinear(aux, size),
                "embeddings": embeddings}


def build_segmenter(model_config) -> Segmenter:
    """Builds the Flax module described by a `model_config(...)` ConfigDict (validated first)."""
    config_lib.validate(model_config)
    c = model_config
    return Segmenter(
        num_classes=c.num_classes, embed_dim=c.swin.embed_dim, depths=tuple(c.swin.depths),
        num_heads=tuple(c.swin.num_heads), window_size=c.swin.window_size, patch_size=c.swin.patch_size,
        mlp_ratio=c.swin.mlp_ratio, qkv_bias=c.swin.qkv_bias, drop_path_rate=c.swin.drop_path_rate,
        decoder_channels=c.decoder.channels, pool_scales=tuple(c.decoder.pool_scales),
        decoder_dropout=c.decoder.dropout, aux_channels=c.aux.channels, aux_in_index=c.aux.in_index,
        aux_num_convs=c.aux.num_convs, aux_dropout=c.aux.dropout, projection_dim=c.projection.dim,
        projection_feature=c.projection.feature, remat=c.remat, remat_policy=c.remat_policy,
        attention_impl=c.attention_impl, dtype=DTYPES[c.dtype], backbone=c.backbone,
        cnn=CNNConfig.of(c.cnn) if c.backbone in config_lib.CNN_BACKBONES else None,
        cswin=CSWinConfig.of(c.cswin) if c.backbone == "cswin" else None)

"""Encoders of the segmenter besides Swin (stcl_jax.models.swin): ResNet-50 (mmseg V1c), ResNeSt-101 and the
CSWin Transformer (cswin.py).

`cnn_encoder(cnn_config)` builds the CNN of a model config's `cnn` group, `CSWinTransformer(CSWinConfig.of(
model_config.cswin))` the CSWin encoder; every encoder returns four NHWC stage outputs at strides 4, 8, 16, 32 for
the UperNet, auxiliary and projection heads.
"""

from __future__ import annotations

from typing import NamedTuple

from stcl_jax.models.backbones.cswin import CSWinConfig, CSWinTransformer
from stcl_jax.models.backbones.resnest import ResNeSt, ResNeStBottleneck
from stcl_jax.models.backbones.resnet import Bottleneck, ResNet


class CNNConfig(NamedTuple):
    """The `cnn` group of a model config as a hashable module attribute."""
    depths: tuple
    stem_width: int
    width: int
    radix: int
    avg_down: bool

    @classmethod
    def of(cls, cnn) -> "CNNConfig":
        return cls(tuple(cnn.depths), cnn.stem_width, cnn.width, cnn.radix, cnn.avg_down)


def cnn_encoder(cnn, dtype, name: str = "backbone") -> ResNet:
    """The ResNet (radix 0) or ResNeSt (radix >= 1, split attention) described by `model_config().cnn`."""
    block = ResNeStBottleneck if cnn.radix >= 1 else Bottleneck
    return ResNet(tuple(cnn.depths), cnn.stem_width, cnn.width, cnn.radix, cnn.avg_down, block, dtype, name=name)


__all__ = ["CNNConfig", "CSWinConfig", "CSWinTransformer", "Bottleneck", "ResNeSt", "ResNeStBottleneck", "ResNet",
           "cnn_encoder"]

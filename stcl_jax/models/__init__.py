"""stcl_jax.models: Swin + UperNet segmenter with the STCL projection head (Flax linen, NHWC)."""

from stcl_jax.models.config import model_config, projection_stride
from stcl_jax.models.segmenter import Segmenter, build_segmenter

__all__ = ["model_config", "projection_stride", "build_segmenter", "Segmenter"]

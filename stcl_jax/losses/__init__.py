"""stcl_jax.losses: pure loss functions (arrays in, scalar float32 out)."""

from stcl_jax.losses.segmentation import cross_entropy
from stcl_jax.losses.stcl import downsample_labels, spatial_temporal_consistency_loss, stcl_flops

__all__ = ["cross_entropy", "downsample_labels", "spatial_temporal_consistency_loss", "stcl_flops"]

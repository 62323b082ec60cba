"""stcl_jax: Spatial-Temporal Semantic Consistency video scene parsing (Swin + UperNet + STCL) in JAX/Flax."""

__version__ = "0.1.0"

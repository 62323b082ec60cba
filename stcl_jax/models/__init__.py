"""stcl_jax.models."""

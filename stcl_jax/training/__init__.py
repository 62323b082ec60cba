"""stcl_jax.training."""

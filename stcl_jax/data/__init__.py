"""stcl_jax.data."""

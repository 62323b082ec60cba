"""stcl_jax.losses."""

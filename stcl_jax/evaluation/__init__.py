"""stcl_jax.evaluation."""

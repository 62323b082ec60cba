"""stcl_jax.kernels: Pallas kernels (Triton on GPUs, Mosaic on TPUs, interpret mode elsewhere)."""

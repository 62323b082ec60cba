"""stcl_jax.kernels: Pallas kernels (Triton on GPU, Mosaic on TPU, interpret mode on the CPU).

Each kernel module exposes its entry points and `lowering_cases(small) -> [(name, fn, args)]`, which
`python -m stcl_jax.kernels --lower cuda tpu` lowers for every platform (see __main__.py). Back-end choice:
backend.py.

  window_attention   fused Swin (shifted-)window attention, forward + backward (models.attention_impl="pallas");
                     its kernels and layouts: window_attention_kernels.py
  stcl_contrast      flash-style STCL contrast, forward with gradients (loss.stcl_implementation="pallas")
  sharding.py        batch partitioning of kernel calls under a sharded jit (custom_partitioning)
"""

KERNEL_MODULES = ("stcl_jax.kernels.window_attention", "stcl_jax.kernels.stcl_contrast")

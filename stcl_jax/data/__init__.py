"""stcl_jax.data: VSPW labels and layout (vspw), synthetic VSPW (synthetic), ArrayRecord build (build, vspw_tfds,
scan), record reading (records), clip augmentation (augment) and the grain pipelines (pipeline)."""

"""stcl_jax.data: the datasets, their ArrayRecord builds, and the input pipelines. Imports run one way (each
line imports only lines above it):

  label_space.py   raw mask values -> train ids, label mapping files between datasets (label_maps/*.txt)
  formats.py       the builds' names (tfds name, config, version) and VSPW's split kinds: constants
  datasets/        vspw, ade20k, coco_panoptic: classes, label encoding, on-disk layout, raw-value validity
  records.py       reading a build: locate it, open a split, decode frames and masks, iterate whole videos
  augment.py       mmseg's clip augmentation (resize, crop, flip, photometric, normalise)
  sources.py       config.data's fields and the sources of training clips in one label space
  pipeline.py      the grain pipeline of training clips (make_train_loader)
  build/           python -m stcl_jax.data.build, build_dataset: checks the inputs and writes the shards
  synthetic/       python -m stcl_jax.data.synthetic: small datasets in the real layouts (demo, tests)
  label_map.py     python -m stcl_jax.data.label_map: checks a mapping file (a command; nothing imports it)
"""

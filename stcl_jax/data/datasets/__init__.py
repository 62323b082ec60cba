"""The datasets' own facts: class names, label encodings, on-disk layouts, raw-value validity (vspw, ade20k,
coco_panoptic). No scanning, no tensorflow-datasets: the builders (`stcl_jax.data.build`) and the readers build on
these."""

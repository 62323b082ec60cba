"""The training config schema, once: every field with the paper's value, plus the tiny `runlocal` variant.

The files users pass to `--config` (`configs/*.py` at the repository root) import this module and
`stcl_jax.configs.recipes`, so they work from any directory and in a non-editable install. `base_config()` holds
every field but `config.model` (from `stcl_jax.models.model_config`); `finish(c, arg)` locks the result, so a
typo in `--config.loss.temperture=...` fails instead of being ignored.

Recipe (He et al. 2021, Sec. 4.2, and mmseg's UperNet-Swin schedule it was trained with): AdamW, lr 7e-5,
betas (0.9, 0.999), weight decay 0.01 with no decay on norms, relative-position tables and position embeddings
(mmseg's paramwise_cfg: biases and head BatchNorms decay); linear warmup for 1,500 iterations then poly decay (power 1.0, mmseg `PolyLrUpdaterHook`); 20K
iterations; global batch 16 clips; random resize 0.5-2.0, crop 768x768, horizontal flip; drop path 0.3; loss
1.0 CE + 0.4 auxiliary CE + 0.2 STCL with tau 0.07 and a 512-d projection; a query frame + 1 reference frame.

`config.loss.ce_average` is the reduction of both CE terms: "all" (default) divides the summed per-pixel loss
by every pixel of the batch, ignored ones included, as mmseg's CrossEntropyLoss does with its default
`avg_non_ignore=False` (the paper's toolbox); "valid" divides by the valid pixels only (PyTorch's / Hugging Face's
`ignore_index` mean). Any other value stops the train step's construction with an error naming the field.

`config.data` (read by `stcl_jax.data.pipeline.make_train_loader`):
  dir               built dataset directory (output of `stcl_jax.data.build`); "" in demo.py = generate one.
  train_split, val_split   split names inside `dir`.
  num_frames        frames per clip: frame 0 is the query frame, the others are reference frames.
  ref_offsets       (lo, hi): each reference frame is query index + k, k uniform in [lo, hi] without 0,
                    clipped to the video (negative = past frames).
  base_size         (h, w): the clip is rescaled keeping its aspect ratio to fit base_size * r,
                    r ~ U(scale_range) (mmseg `Resize(img_scale, ratio_range, keep_ratio=True)`).
  scale_range       (lo, hi) of r.
  crop_size         (h, w) random crop, the same window for every frame of a clip; padded with
                    ignore_index (labels) and 0 (images) when the rescaled clip is smaller.
  cat_max_ratio     mmseg RandomCrop: retry (up to 10x) crops where one class covers more than this share.
  flip_prob         probability of a horizontal flip of the whole clip.
  photometric       mmseg PhotoMetricDistortion (brightness, contrast, saturation, hue), same for all frames.
  mean, std         per-channel normalisation in 0..255 units (ImageNet, as mmseg).
  device_normalize  True: batches carry uint8 images + their valid extent and the train step normalises on the
                    accelerator (a quarter of the host-to-device bytes, about half the CPU per frame); False:
                    float32 normalised on the host. Same values either way.
  ignore_index      label value that no loss or metric counts.
  worker_count      grain worker processes (0 = in the main process).
  prefetch_buffer   grain per-worker buffer size.
  read_threads      threads per process producing batches.
  pseudo_dir, pseudo_split, pseudo_ratio   a build holding pseudo-labelled records and the share of clips
                    drawn from it (0 = none; see stcl_jax.pseudo_label).
  label_map         "" = train `dir`'s own classes; else a mapping file (stcl_jax.data.label_space, shipped:
                    ade20k_to_vspw, coco_panoptic_to_vspw) putting them onto VSPW's 124 classes.
  single_frame_stcl for an image build (ADE20K, COCO) in `dir` or a mixture entry: "spatial" = the frame's
                    pixels contrast with each other (anchors and contrast from the one frame), "skip" = no STCL
                    on those samples (CE only).
  mixture           name -> mixture_source(dir, ratio, label_map, split,
                    single_frame_stcl): more builds mixed into training, each drawn for `ratio` of the clips
                    (`dir` gets the rest). All sources must land in one label space: the VSPW one when any
                    label_map is set, else `dir`'s classes.

`config.synthetic` (only in configs that generate their data: demo.py, `:runlocal`): with `data.dir` empty,
training generates this dataset into `workdir/data` and trains on it. `synthetic_videos(videos, frames, size,
seed)` (layout "vspw") or `synthetic_images(train, val, size, seed)` (layout "coco-panoptic").
"""

import ml_collections

from stcl_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from stcl_jax.models import model_config


def base_config() -> ml_collections.ConfigDict:
    """Everything but `config.model`, with the paper's recipe; unlocked so callers can add the model."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 20_000
    c.global_batch_size = 16          # clips per step over all devices (8 GPUs x 2 in the paper)
    c.init_from = ""                  # params-only export (stcl_jax.export / convert) or training workdir
    # Leaves whose path matches one of these regexes are re-initialised when their shape differs from init_from's
    # (the classifiers of a model pre-trained on another label set, e.g. COCO's 133 classes); any other shape
    # difference stops the run.
    c.init_from_reset = ("conv_seg",)

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.num_frames = 2
    c.data.ref_offsets = (-3, 3)
    c.data.base_size = (480, 853)     # VSPW 480p
    c.data.scale_range = (0.5, 2.0)
    c.data.crop_size = (768, 768)
    c.data.cat_max_ratio = 0.75
    c.data.flip_prob = 0.5
    c.data.photometric = True
    c.data.mean = IMAGENET_MEAN
    c.data.std = IMAGENET_STD
    c.data.ignore_index = 255
    c.data.worker_count = 4
    c.data.prefetch_buffer = 2
    c.data.read_threads = 2
    c.data.pseudo_dir = ""
    c.data.pseudo_split = "extra"
    c.data.pseudo_ratio = 0.0
    c.data.device_normalize = True
    c.data.label_map = ""
    c.data.single_frame_stcl = "spatial"
    c.data.mixture = ml_collections.ConfigDict()

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"            # "adamw" (Swin recipe) or "sgd" (the CNN recipe: configs/resnet50.py)
    c.optim.momentum = 0.9            # SGD only
    c.optim.learning_rate = 7e-5
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.01
    # Parameters whose path matches one of these regexes get no weight decay: mmseg's Swin `paramwise_cfg`
    # (custom_keys norm / relative_position_bias_table / absolute_pos_embed, decay_mult 0): biases and the heads'
    # BatchNorms ("bn") decay. decay_exempt="norms_and_biases" also exempts every 1-d leaf, "bias" and "scale".
    c.optim.no_decay_patterns = ("norm", "relative_position_bias_table", "absolute_pos_embed")
    c.optim.decay_exempt = "mmseg"
    c.optim.warmup_steps = 1_500
    c.optim.warmup_ratio = 1e-6       # mmseg: lr starts at warmup_ratio * poly lr
    c.optim.poly_power = 1.0
    c.optim.min_lr = 0.0
    c.optim.grad_clip_norm = 0.0      # 0 = off (mmseg's Swin configs do not clip)

    c.loss = ml_collections.ConfigDict()
    c.loss.ce_weight = 1.0
    c.loss.ce_average = "all"         # CE reduction: "all" pixels (mmseg) or "valid" ones; see the docstring
    c.loss.aux_weight = 0.4
    c.loss.stcl_weight = 0.2
    c.loss.temperature = 0.07
    c.loss.contrast_scope = "clip"    # "clip" (paper) or "batch": see stcl_jax.losses.stcl
    c.loss.stcl_pool = 1              # average-pool the embeddings by this factor before the contrast
    c.loss.stcl_max_anchors = 0       # > 0: sample this many query pixels per clip as anchors (0 = all)
    # "rows" (3 GEMM passes), "tiled" (least memory), "dense" (baseline), "pallas" (Pallas kernels; interpret mode
    # on a CPU), "auto" (= "rows" until a GPU / TPU measurement says otherwise): see stcl_jax.losses.stcl
    c.loss.stcl_implementation = "rows"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = False               # True: shard params + optimizer state over the "data" axis (ZeRO-3 style)
    c.mesh.fsdp_min_size = 2 ** 16    # leaves smaller than this many elements stay replicated

    c.log_every_steps = 50
    c.checkpoint_every_steps = 1_000
    c.keep_checkpoints = 3
    c.eval_every_steps = 4_000        # 0 = never during training; evaluation needs stcl_jax.evaluation
    c.eval = ml_collections.ConfigDict()
    c.eval.at_end = True              # validation after the last step
    c.eval.rerun = False              # True: a rerun of a finished run evaluates it again (else it stops at once)
    c.eval.mode = "slide"
    c.eval.crop = (768, 768)
    c.eval.stride = (512, 512)
    c.eval.max_videos = 0             # 0 = all videos of data.val_split
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a full config in place to a tiny one that trains a few steps on one CPU in about a minute; without
    `--config.data.dir` it trains on a tiny synthetic dataset generated in the workdir (`config.synthetic`)."""
    c.total_steps = 4
    c.global_batch_size = 2
    c.data.crop_size = (64, 64)
    c.data.base_size = (64, 96)
    c.data.worker_count = 0
    c.optim.warmup_steps = 2
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.eval_every_steps = 0
    c.eval.mode = "whole"
    c.eval.crop = (64, 64)
    c.eval.stride = (48, 48)
    c.eval.max_videos = 2
    if "synthetic" not in c:  # with data.dir empty, training generates this tiny dataset in the workdir (as demo.py)
        if c.data.num_frames == 1:  # an image pre-training config (COCO panoptic's 133 classes)
            c.synthetic = synthetic_images(train=8, val=4, seed=1)
        else:
            c.synthetic = synthetic_videos(videos=6, frames=4)
    c.model = model_config("micro", window_size=4, num_classes=c.model.num_classes if "model" in c else 124,
                           backbone=c.model.backbone if "model" in c else "swin")
    return c


def synthetic_videos(videos: int, frames: int, size=(64, 96), seed: int = 0) -> ml_collections.ConfigDict:
    """`config.synthetic` of a generated VSPW-layout dataset: `videos` x `frames` of size (h, w)."""
    return ml_collections.ConfigDict(dict(layout="vspw", videos=videos, frames=frames, size=tuple(size), seed=seed))


def synthetic_images(train: int, val: int, size=(64, 96), seed: int = 1) -> ml_collections.ConfigDict:
    """`config.synthetic` of a generated COCO-panoptic-layout image set (`train` / `val` images)."""
    return ml_collections.ConfigDict(dict(layout="coco-panoptic", train=train, val=val, size=tuple(size), seed=seed))


def mixture_source(dir: str = "", ratio: float = 0.0, label_map: str = "", split: str = "train",  # noqa: A002
                   single_frame_stcl: str = "spatial") -> ml_collections.ConfigDict:
    """One entry of `config.data.mixture`: a build, the share of clips drawn from it, and its label mapping."""
    return ml_collections.ConfigDict(dict(dir=dir, ratio=ratio, label_map=label_map, split=split,
                                          single_frame_stcl=single_frame_stcl))


def finish(c: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
    """Applies the `arg` variant ("" / None = full recipe, "runlocal" = tiny) and locks the config."""
    arg = arg or ""
    if arg == "runlocal":
        runlocal(c)
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}: expected '' or 'runlocal' (as --config=FILE:runlocal)")
    c.lock()
    return c


def model(size: str, **kwargs) -> ml_collections.ConfigDict:
    """`stcl_jax.models.model_config(size, **kwargs)` with the paper's training settings on top."""
    m = model_config(size, **kwargs)
    m.swin.drop_path_rate = 0.3
    m.cswin.drop_path_rate = 0.3
    m.projection.dim = 512
    m.dtype = "bfloat16"
    return m


def synthetic_runlocal(c: ml_collections.ConfigDict, arg) -> None:
    """`:runlocal` of a config without data: generate a tiny synthetic VSPW in the workdir (as configs/demo.py)."""
    if arg == "runlocal" and not c.data.dir:
        c.synthetic = synthetic_videos(videos=4, frames=4)

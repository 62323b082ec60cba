"""The training loop: `train_and_evaluate(config, workdir)`.

Stages: config checks (whole config validated; a resume compared with workdir/config.json, see
`config_check`) -> data -> mesh, model, optimizer -> state (restored from the newest intact checkpoint, else
initialised, else `config.init_from`) -> one train step compiled once (memory use logged) -> the loop (metrics
fetched one step late, progress line, TensorBoard + JSONL + workdir/train.log, NaN/inf stop naming the last good
checkpoint, async checkpoints of checked-finite states only, SIGTERM save-and-exit) -> final checkpoint and
validation mIoU. A finished run returns before compiling anything.

Loss per step (clips of T frames, frame 0 the query): 1.0 CE(logits) + 0.4 CE(aux_logits) over every frame,
+ 0.2 STCL(embeddings of the clip, labels taken at the embedding stride by `downsample_labels`; clips whose
batch["stcl"] is False, single-frame samples with `single_frame_stcl="skip"`, count as all-ignore there).
"""

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stcl_jax import losses
from stcl_jax import workdir as workdir_lib
from stcl_jax.workdir import load_trained_variables
from stcl_jax.data.pipeline import make_train_loader
from stcl_jax.data.sources import training_sources
from stcl_jax.data.synthetic import demo
from stcl_jax.evaluation.runner import evaluate_segmenter
from stcl_jax.models import build_segmenter
from stcl_jax.training import checkpoint as ckpt_lib
from stcl_jax.training import config_check
from stcl_jax.training import inputs as inputs_lib
from stcl_jax.training import logging as log_lib
from stcl_jax.training import mesh as mesh_lib
from stcl_jax.training import state as state_lib
from stcl_jax.training.optim import make_optimizer

log = logging.getLogger("stcl_jax.train")


# ------------------------------------------------------------------------------------------------- train step
def make_train_step(model, tx, schedule, config):
    """step(state, batch) -> (state, metrics); batch = {"image": (B, T, H, W, 3), "label": (B, T, H, W),
    "stcl": (B,) bool} (+ "image_hw" (B, 2) with uint8 images: see stcl_jax.training.inputs)."""
    lc = config.loss
    ignore = config.data.ignore_index
    ce_average = lc.ce_average
    if ce_average not in losses.segmentation.AVERAGES:
        raise ValueError(f"config.loss.ce_average={ce_average!r}: expected one of {losses.segmentation.AVERAGES}")

    def loss_fn(params, batch_stats, batch, rng):
        images, labels = inputs_lib.train_images(batch, config.data), batch["label"]
        b, t, h, w = labels.shape
        k_dropout, k_drop_path, k_anchors = jax.random.split(rng, 3)
        out, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                   images.reshape(b * t, h, w, images.shape[-1]), train=True,
                                   rngs={"dropout": k_dropout, "drop_path": k_drop_path}, mutable=["batch_stats"])
        flat = labels.reshape(b * t, h, w)
        terms = {"ce": losses.cross_entropy(out["logits"], flat, ignore_index=ignore, average=ce_average),
                 "aux": losses.cross_entropy(out["aux_logits"], flat, ignore_index=ignore, average=ce_average)}
        total = lc.ce_weight * terms["ce"] + lc.aux_weight * terms["aux"]
        if lc.stcl_weight:
            emb = out["embeddings"]
            emb = emb.reshape(b, t, *emb.shape[1:])
            small = losses.downsample_labels(labels, emb.shape[2:4], ignore_index=ignore)
            small = jnp.where(batch["stcl"][:, None, None, None], small, ignore)
            max_anchors = lc.stcl_max_anchors or None
            terms["stcl"] = losses.spatial_temporal_consistency_loss(
                emb, small, temperature=lc.temperature, ignore_index=ignore, contrast_scope=lc.contrast_scope,
                pool=lc.stcl_pool, max_anchors=max_anchors, key=k_anchors if max_anchors else None,
                implementation=lc.stcl_implementation)
            total = total + lc.stcl_weight * terms["stcl"]
        return total, (terms, updates.get("batch_stats", batch_stats))

    def step(state, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (terms, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **terms, "lr": schedule(state.step), "grad_norm": optax.global_norm(grads)}
        metrics[FINITE] = all_finite(metrics, params, batch_stats)
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new, metrics

    return step


FINITE = "state_finite"  # the step's flag: every metric and every updated parameter / statistic is finite


def all_finite(*trees):
    """One bool: every leaf of `trees` is finite (a cheap reduction inside the step)."""
    flags = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(trees)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def compile_train_step(step_fn, abstract_state, state_shardings, batch_shapes, mesh):
    """AOT-compiles the step once for these shapes/shardings (state donated) and logs its memory use."""
    batch_sharding = mesh_lib.batch_sharding(mesh)
    abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding) for k, (s, d) in batch_shapes.items()}
    jitted = jax.jit(step_fn, in_shardings=(state_shardings, {k: batch_sharding for k in batch_shapes}),
                     out_shardings=(state_shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = jitted.lower(ckpt_lib.abstract_with_shardings(abstract_state, state_shardings),
                            abstract_batch).compile()
    log.info("train step compiled in %.1f s", time.perf_counter() - t0)
    log_memory(compiled)
    return compiled


def log_memory(compiled) -> dict:
    """Logs (and returns, in bytes per device) the compiled step's memory analysis, where the backend has one."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        m = None
    if m is None:
        log.info("train step memory analysis: not available on this backend")
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    sizes = {f: int(getattr(m, f, 0) or 0) for f in fields}
    peak = sizes["argument_size_in_bytes"] + sizes["output_size_in_bytes"] - sizes["alias_size_in_bytes"] + \
        sizes["temp_size_in_bytes"]
    sizes["peak_estimate_bytes"] = peak
    log.info("train step memory per device: arguments %.1f MiB, outputs %.1f MiB (aliased %.1f MiB), temporaries "
             "%.1f MiB, peak estimate %.1f MiB", *(sizes[f] / 2 ** 20 for f in fields[:4]), peak / 2 ** 20)
    return sizes


# ------------------------------------------------------------------------------------------------------- data
def resolve_data_dir(config, workdir):
    """The config with `data.dir` set: given (it must exist), or (configs with a `synthetic` block) the workdir's
    generated dataset (`stcl_jax.data.synthetic.demo`). Touches nothing."""
    if config.data.dir:
        if not os.path.isdir(config.data.dir):
            raise FileNotFoundError(f"config.data.dir={config.data.dir!r} does not exist: build a dataset with "
                                    "`python -m stcl_jax.data.build --data-root VSPW --output DIR`")
        return config
    if "synthetic" not in config:
        raise ValueError("config.data.dir is empty: set --config.data.dir=DIR (a dataset built by "
                         "`python -m stcl_jax.data.build`), or use configs/demo.py, which generates one")
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.dir = demo.built_dir(os.path.join(workdir, workdir_lib.GENERATED_DATA))
    config.lock()
    return config


def prepare_data(config, workdir):
    """`resolve_data_dir`, then generates the `synthetic` dataset into the workdir when it is not there yet."""
    if not config.data.dir:
        demo.ensure_demo_dataset(config.synthetic, os.path.join(workdir, workdir_lib.GENERATED_DATA),
                                 (config.data.train_split, config.data.val_split))
    return resolve_data_dir(config, workdir)


# ------------------------------------------------------------------------------------------------------- loop
def train_and_evaluate(config, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its newest intact checkpoint) and returns the final metrics.

    Before anything is written: the config is validated and compared with the workdir's config.json
    (stcl_jax.training.config_check). A finished run (its newest checkpoint at config.total_steps) returns at
    once, unless `config.eval.rerun` asks to evaluate it again."""
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir} is a file, not a folder")
    config_check.validate(config)
    has_checkpoints = bool(workdir_lib.step_folders(workdir_lib.checkpoints_dir(workdir)))
    allowed = config_check.check_resume(resolve_data_dir(config, workdir), workdir) if has_checkpoints else {}
    config = prepare_data(config, workdir)
    config_check.check_val_split(config)
    config_check.record_config(config, workdir, allowed, resumed=has_checkpoints)
    with log_lib.log_file(os.path.join(workdir, workdir_lib.TRAIN_LOG)):
        checkpointer = ckpt_lib.Checkpointer(workdir, every_steps=config.checkpoint_every_steps,
                                             keep=config.keep_checkpoints)
        try:
            return _train(config, workdir, checkpointer)
        finally:
            checkpointer.close()  # waits for the async save in flight (also when the run fails)


def _train(config, workdir: str, checkpointer) -> dict:
    latest = checkpointer.intact_latest_step()
    rerun = bool(config.eval.rerun)
    if latest is not None and latest >= config.total_steps and not rerun:
        log.info("already at step %d of %d in %s: nothing to train (set --config.eval.rerun=True to evaluate "
                 "it again, or raise --config.total_steps to train on)", latest, config.total_steps, workdir)
        return {**log_lib.last_logged(workdir), "step": latest}

    # --- mesh, model, optimizer, data
    mesh = mesh_lib.make_mesh()
    local_batch = mesh_lib.check_batch_size(config.global_batch_size, mesh)
    log.info("mesh %s over %d devices (%d processes); global batch %d clips, %d per process", dict(mesh.shape),
             jax.device_count(), jax.process_count(), config.global_batch_size, local_batch)
    space, sources = training_sources(config.data)  # read once: the loader, the check and validation share it
    _check_label_space(config, space, sources)
    model = build_segmenter(config.model)
    tx, schedule = make_optimizer(config)
    crop, frames = tuple(config.data.crop_size), config.data.num_frames
    data_iter = make_train_loader(config.data, seed=config.seed, process_index=jax.process_index(),
                                  process_count=jax.process_count(), batch_size_per_host=local_batch,
                                  sources=sources)

    # --- state: resume > init_from > fresh
    abstract, shardings = state_lib.abstract_state_and_shardings(model, tx, (1, *crop, 3), mesh, config.mesh)
    if config.mesh.fsdp:
        split = [s for s in jax.tree_util.tree_leaves(shardings) if not s.is_fully_replicated]
        log.info("FSDP: %d of %d state leaves split over 'data'", len(split), len(jax.tree_util.tree_leaves(shardings)))
    if latest is not None:
        state = checkpointer.restore(latest, ckpt_lib.abstract_with_shardings(abstract, shardings), data_iter)
    else:
        state = state_lib.create_train_state(model, tx, (1, *crop, 3), config.seed, shardings)
        if config.init_from:
            state = _init_from(config.init_from, state, tx, shardings, workdir,
                               tuple(config.init_from_reset))
    step = int(state.step)
    log.info("model: %.2f M parameters; starting at step %d of %d", state_lib.param_count(state.params) / 1e6,
             step, config.total_steps)

    # --- the step, compiled once (not for a finished run that is only evaluated again)
    g = config.global_batch_size
    local_spec = inputs_lib.batch_spec(config, local_batch)
    if step < config.total_steps:
        train_step = compile_train_step(make_train_step(model, tx, schedule, config), abstract, shardings,
                                        inputs_lib.batch_spec(config, g), mesh)

    # --- the loop
    writer = log_lib.MetricWriter(workdir, resume_step=step)
    watcher = ckpt_lib.PreemptionWatcher(checkpointer.manager)
    progress = log_lib.Progress(config.total_steps, g * frames, start_step=step)
    logger = _StepLogger(config, writer, progress, checkpointer.last_good_description)
    pending = None  # (step, device metrics) of the previous step: fetched after the next step is dispatched
    final = {}
    try:
        while step < config.total_steps:
            batch = mesh_lib.global_batch(_check_batch(next(data_iter), local_spec), mesh)
            state, metrics = train_step(state, batch)
            step += 1
            if pending is not None:
                logger.record(*pending)
            pending = (step, metrics)
            preempted = watcher.preempted(step)
            if preempted or checkpointer.should_save(step, config.total_steps) or (
                    config.eval_every_steps and step % config.eval_every_steps == 0):
                logger.record(*pending)  # never checkpoint (or evaluate) a state that was not checked finite
                pending = None
                checkpointer.save(step, state, data_iter, force=preempted)
            if config.eval_every_steps and step % config.eval_every_steps == 0 and step < config.total_steps:
                writer.write(step, evaluate(config, model, state, step, space))
            if preempted:
                log.warning("preempted: saved step %d, exiting; rerun the same command to resume", step)
                break
        if pending is not None:
            logger.record(*pending)
        final = dict(logger.last)
        if step >= config.total_steps and (config.eval.at_end or rerun):
            scores = evaluate(config, model, state, step, space)
            writer.write(step, scores)
            final.update(scores)
    finally:
        checkpointer.close()  # waits for the async save in flight
        watcher.restore_handler()
        writer.close()
    final["step"] = step
    return final


def _init_from(path, state, tx, shardings, workdir, reset_patterns=()):
    """Loads a params-only export (stcl_jax.export / convert) or the newest checkpoint of a training workdir into
    a fresh state; leaves matching `reset_patterns` whose shape differs (a classifier for another label set) are
    re-initialised; any other shape mismatch is an error. Writes the key report to workdir/init_from_report.json."""
    loaded, _ = load_trained_variables(path, "config.init_from")
    state, report = state_lib.merge_pretrained(state, loaded, tx, shardings, source=path,
                                               reset_patterns=reset_patterns)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, workdir_lib.INIT_FROM_REPORT), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if not report["loaded"]:
        raise ValueError(f"config.init_from={path!r}: none of its {len(report['unused'])} arrays matches a model "
                         "parameter by name and shape; is it an export of this architecture?")
    if report["mismatched"]:
        raise ValueError(f"config.init_from={path!r}: {len(report['mismatched'])} arrays differ in shape from the "
                         f"model's: {report['mismatched'][:5]}; train with the architecture they come from, or add a "
                         "regex matching them to config.init_from_reset to re-initialise them")
    return state


class _StepLogger:
    """Checks and accumulates the per-step metrics; every `log_every_steps` writes their means and a progress line.

    `last_good()` describes the last good checkpoint, for the message when a step is not finite."""

    def __init__(self, config, writer, progress, last_good=lambda: ""):
        self.every, self.total = config.log_every_steps, config.total_steps
        self.writer, self.progress, self.last_good = writer, progress, last_good
        self.sums, self.count, self.last = {}, 0, {}

    def record(self, step, device_metrics):
        m = jax.device_get(device_metrics)
        state_finite = bool(m.pop(FINITE, True))
        m = {k: float(v) for k, v in m.items()}
        log_lib.check_finite(step, m, state_finite, self.last_good())
        self.last = m
        for k, v in m.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        if step % self.every == 0 or step == self.total:
            means = {k: v / self.count for k, v in self.sums.items()}
            means["lr"] = m["lr"]
            speed = self.progress.update(step)
            log.info(log_lib.progress_line(step, self.total, means, speed))
            self.writer.write(step, {f"train/{k}": v for k, v in means.items()} |
                              {"train/img_per_s": speed["img_per_s"]})
            self.sums, self.count = {}, 0


def _check_label_space(config, space, sources):
    """The classes the data trains (one label space over every source) must be the model's classifier."""
    space.check_classifier(config.model.num_classes, f"config.model.num_classes={config.model.num_classes}")
    for s in sources:
        log.info("training source %-8s %5.1f%% of clips: %s [%s]%s", s.name, 100 * s.weight, s.dir, s.split,
                 " (single frames, STCL " + ("within the frame)" if s.stcl else "skipped)") if s.single_frame else "")


def _check_batch(batch, spec):
    for k, (shape, dtype) in spec.items():
        if k not in batch or tuple(np.shape(batch[k])) != shape or np.asarray(batch[k]).dtype != dtype:
            got = f"{np.asarray(batch[k]).dtype}{tuple(np.shape(batch[k]))}" if k in batch else "missing"
            raise ValueError(f"the data loader gave batch[{k!r}] = {got}, expected {np.dtype(dtype)}{shape} "
                             "(config.global_batch_size / process count, config.data.num_frames, crop_size, "
                             "device_normalize)")
    return batch


# ------------------------------------------------------------------------------------------------- evaluation
def evaluate(config, model, state, step: int, space) -> dict:
    """Validation scores of `state` on `config.data.val_split` (scored in the training label space `space`) as
    {"val/miou": ...} (fractions), logged. Every process takes part (videos are split over processes, the
    confusion matrix is reduced across them)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if not all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(variables)):
        from jax.experimental import multihost_utils  # FSDP over several processes: gather the parameters

        variables = multihost_utils.process_allgather(variables, tiled=True)
    t0 = time.perf_counter()
    result = evaluate_segmenter(model, variables, config, space)
    scores = {f"val/{k}": float(result[k]) for k in ("miou", "wiou", "pixel_acc", "mean_class_acc", "vc8", "vc16")
              if isinstance(result.get(k), (int, float))}
    log.info("validation at step %d on %s/%s (%.0f s): %s", step, config.data.dir, config.data.val_split,
             time.perf_counter() - t0, "  ".join(f"{k[4:]} {100 * v:.2f}%" for k, v in scores.items()))
    return scores

"""The whole train step of configs/demo.py:runlocal with both Pallas kernels on (interpret mode on the CPU:
`model.attention_impl="pallas"`, `loss.stcl_implementation="pallas"`) equals the XLA step: every loss term and
every parameter gradient. The step runs with plain SGD at learning rate 1, so `params - new params` is exactly
the gradient the step applied."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stcl_jax.config_files import load_config
from stcl_jax.models import build_segmenter
from stcl_jax.training.loop import make_train_step
from stcl_jax.training.state import init_fn

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")


def _config(attention, stcl):
    c = load_config(DEMO + ":runlocal")
    c.global_batch_size, c.data.crop_size = 1, (32, 48)   # one clip of two frames: interpret mode is slow
    c.model.attention_impl, c.loss.stcl_implementation = attention, stcl
    c.model.decoder.dropout = c.model.aux.dropout = c.model.swin.drop_path_rate = 0.0
    return c


def _step(config, batch):
    model = build_segmenter(config.model)
    tx = optax.sgd(1.0)
    state = init_fn(model, tx, (1, *config.data.crop_size, 3))(jax.random.PRNGKey(0))
    new, metrics = jax.jit(make_train_step(model, tx, lambda s: 1.0, config))(state, batch)
    grads = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), state.params, new.params)
    return jax.device_get(metrics), grads


def test_train_step_with_both_kernels_equals_the_xla_step():
    rng = np.random.default_rng(0)
    h, w = 32, 48
    labels = np.repeat(np.repeat(rng.integers(0, 5, size=(1, 2, h // 8, w // 8)), 8, axis=2), 8, axis=3)
    labels[0, 1, :4] = 255                                              # some ignored pixels in the reference frame
    batch = {"image": jnp.asarray(rng.integers(0, 256, size=(1, 2, h, w, 3)), jnp.uint8),
             "image_hw": jnp.asarray([[h, w]], jnp.int32), "label": jnp.asarray(labels, jnp.uint8),
             "stcl": jnp.asarray([True])}
    ref_metrics, ref_grads = _step(_config("xla", "rows"), batch)
    metrics, grads = _step(_config("pallas", "pallas"), batch)
    assert float(ref_metrics["stcl"]) > 0
    for term in ("loss", "ce", "aux", "stcl", "grad_norm"):
        np.testing.assert_allclose(metrics[term], ref_metrics[term], rtol=1e-5, err_msg=term)
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref_grads))
    flat = dict(jax.tree_util.tree_leaves_with_path(grads))
    assert flat.keys() == flat_ref.keys()
    for path, g in flat_ref.items():
        scale = max(np.abs(g).max(), 1e-12)
        np.testing.assert_allclose(flat[path], g, rtol=0, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path))

"""The Pallas STCL kernels (implementation="pallas") in interpret mode against the float64 reference of
tests/test_stcl.py and against implementation="rows", and their lowering for GPUs (Triton) and TPUs (Mosaic)."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax.kernels import stcl_contrast
from stcl_jax.losses import spatial_temporal_consistency_loss as stcl
from stcl_jax.losses.contrast_rows import rows_contrast
from stcl_jax.losses.stcl import sample_anchors, stcl_flops
from test_stcl import _case, _loss_and_grad, reference_stcl  # one jitted loss per shape and options

TRITON_CALL, TPU_CALL = "__gpu$xla.gpu.triton", "tpu_custom_call"


def _assert_close(got, want, rtol, grad_rtol, what):
    (loss, grad), (ref_loss, ref_grad) = got, want
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=1e-7, err_msg=what)
    np.testing.assert_allclose(grad, ref_grad, rtol=grad_rtol, atol=grad_rtol * np.abs(ref_grad).max(), err_msg=what)


def _assert_matches(feats, labels, tau, ref_kw=None, **kw):
    """"pallas" against the float64 reference (1e-5 relative on the loss, 1e-5 of the largest gradient entry) and
    against "rows" (the same float32 math in another order); returns the loss."""
    ref = reference_stcl(feats, labels, tau, **(ref_kw or {}))
    pallas = _loss_and_grad(feats, labels, tau, implementation="pallas", **kw)
    _assert_close(pallas, ref, 1e-5, 1e-5, "pallas vs float64 reference")
    _assert_close(pallas, _loss_and_grad(feats, labels, tau, implementation="rows", **kw), 1e-5, 1e-5,
                  "pallas vs rows")
    return pallas[0]


# Every float32 check at the clip scope shares one shape, so one compile of each implementation: N = T h w = 70
# is no multiple of the 64-pixel contrast tile, D = 8 is padded to 16. Labels and temperature are traced.
SHAPE = (2, 2, 5, 7, 8)


@pytest.mark.parametrize("seed,classes,ignore,tau", [(0, 4, 0.2, 0.07), (4, 9, 0.1, 0.05), (5, 2, 0.3, 0.2)])
def test_matches_reference_and_rows(seed, classes, ignore, tau):
    feats, labels = _case(seed, *SHAPE, classes, ignore)
    assert _assert_matches(feats, labels, tau) > 0


def test_edge_cases():
    """tau = 0.01, anchors without positives, zero feature vectors, one class (no negatives), nothing valid."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, size=SHAPE[:4]).astype(np.int32)
    # tau = 0.01 with all cosines near 0.98: exp(s) ~ e^98 overflows float32, the loss itself is O(1).
    offsets = rng.normal(size=(3, SHAPE[4]))
    feats = 5.0 * np.eye(SHAPE[4])[0] + 0.4 * offsets[labels] + 0.3 * rng.normal(size=SHAPE)
    loss = _assert_matches(feats.astype(np.float32), labels, 0.01)
    assert 0.1 < loss < 100

    feats, labels = _case(14, *SHAPE, 3, 0.1)
    labels[0, 0, 2, 3] = 7  # the only pixel of class 7: an anchor without positives, left out
    labels[1] = np.where(labels[1] == 1, 255, labels[1])
    labels[1, 0, 0, 0] = 1  # ... and in clip 1 a query pixel whose class appears nowhere else
    _assert_matches(feats, labels, 0.07)

    feats, labels = _case(22, *SHAPE, 3, 0.2)
    feats[0, 0, 1, 1] = 0.0  # a ReLU head can emit all-zero vectors: finite gradients, as the reference
    feats[1, 1, 2, :] = 0.0
    zero = np.all(feats == 0.0, axis=-1)
    loss, grad = _loss_and_grad(feats, labels, implementation="pallas")
    ref_loss, ref_grad = reference_stcl(feats, labels, 0.07)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    rest, at_zero = ref_grad[~zero], ref_grad[zero]  # at the zero vectors: dL/dz / eps, as in tests/test_stcl.py
    np.testing.assert_allclose(grad[~zero], rest, rtol=1e-5, atol=1e-5 * np.abs(rest).max())
    np.testing.assert_allclose(grad[zero], at_zero, rtol=1e-3, atol=1e-3 * np.abs(at_zero).max())

    feats, labels = _case(13, *SHAPE, 1, 0.3)  # one class: no negatives, every term 0, exactly
    for case in ("one class", "nothing valid", "query frame void"):
        if case == "nothing valid":
            labels[:] = 255
        if case == "query frame void":
            labels[:, 1:] = 0  # reference frames labelled: still no anchor
        loss, grad = _loss_and_grad(feats, labels, implementation="pallas")
        assert loss == 0.0 and np.all(grad == 0.0), case
        assert _loss_and_grad(feats, labels, implementation="rows")[0] == 0.0, case


def test_batch_scope_pool_and_sampled_anchors_together():
    """One compile for the three options that change the kernels' inputs: one group of B clips (M = B x 9
    anchors), features average-pooled by 3 (labels at the cell centres), 9 sampled anchors per clip (their self
    indices are no longer 0..M-1)."""
    feats, labels = _case(19, 3, 2, 6, 9, 5, 4, 0.2)
    key = jax.random.PRNGKey(3)
    query = labels[:, 0, 1::3, 1::3].reshape(3, -1)  # the pooled query frame's labels
    idx = np.asarray(sample_anchors(jnp.asarray(query != 255), 5, key))
    loss = _assert_matches(feats, labels, 0.1, ref_kw={"scope": "batch", "pool": 3, "anchor_index": idx},
                           contrast_scope="batch", pool=3, max_anchors=5, key=key)
    clip = reference_stcl(feats, labels, 0.1, pool=3, anchor_index=idx)[0]
    assert abs(loss - clip) > 1e-3  # the batch scope is not the clip scope on these inputs


def test_bfloat16_features_accumulate_in_float32():
    feats, labels = _case(18, 2, 2, 5, 5, 6, 4, 0.2)
    bf16 = jnp.asarray(feats, jnp.bfloat16)
    fn = jax.jit(jax.value_and_grad(lambda f, y, impl: stcl(f, y, implementation=impl), argnums=0),
                 static_argnums=2)
    loss, grad = fn(bf16, jnp.asarray(labels), "pallas")
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    # The reference on the bf16-rounded inputs (as tests/test_stcl.py): the rest is the rounding of z and of the
    # score gradient; "rows" rounds the same quantities in another order.
    ref_loss, ref_grad = reference_stcl(np.asarray(bf16, np.float32), labels, 0.07)
    rows_loss, rows_grad = fn(bf16, jnp.asarray(labels), "rows")
    grad = np.asarray(grad, np.float32)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-2)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=3e-2 * np.abs(ref_grad).max())
    np.testing.assert_allclose(float(loss), float(rows_loss), rtol=1e-2)
    np.testing.assert_allclose(grad, np.asarray(rows_grad, np.float32), rtol=0, atol=2e-2 * np.abs(ref_grad).max())


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_small_tiles_and_skipped_positive_tiles_match_rows():
    """The kernels on 16 x 16 tiles (3 anchor tiles x 5 contrast tiles per group, both padded) against "rows",
    with labels sorted so that some tile pairs hold no positive pair (pass 2 skips them) and others do."""
    rng = np.random.default_rng(40)
    b, m, n, d = 2, 37, 70, 20
    lc = np.sort(rng.integers(0, 5, size=(b, n)), axis=1)
    lc[rng.random(lc.shape) < 0.1] = -1
    anchors = np.sort([rng.choice(n, size=m, replace=False) for _ in range(b)], axis=1)  # contrast pixels
    zc = _unit(rng, b, n, d)
    za = np.take_along_axis(zc, anchors[..., None], axis=1)
    la = np.take_along_axis(lc, anchors, axis=1)
    pair = (la[:, :, None] == lc[:, None, :]) & (lc[:, None, :] >= 0)
    tiles_with_pairs = np.pad(pair, ((0, 0), (0, 48 - m), (0, 80 - n))).reshape(b, 3, 16, 5, 16).any(axis=(2, 4))
    assert tiles_with_pairs.any() and not tiles_with_pairs.all()
    args = [jnp.asarray(x, dt) for x, dt in [(za, jnp.float32), (la, jnp.int32), (anchors, jnp.int32),
                                             (zc, jnp.float32), (lc, jnp.int32)]]
    inv_tau = jnp.float32(1 / 0.07)
    grads = functools.partial(jax.value_and_grad, argnums=(0, 3))
    loss, (dza, dzc) = jax.jit(grads(lambda a, la, sa, c, lc: stcl_contrast.pallas_contrast(
        a, la, sa, c, lc, inv_tau, tiles=(16, 16), backend="interpret")))(*args)
    pad = lambda x, v: jnp.pad(x, [(0, 0), (0, 48 - m)] + [(0, 0)] * (x.ndim - 2), constant_values=v)
    ref_loss, (ref_a, ref_c) = jax.jit(grads(lambda a, la, sa, c, lc: rows_contrast(
        pad(a, 0), pad(la, -1), pad(sa, -1), c, lc, inv_tau, 16)))(*args)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for got, want in ((dza, np.asarray(ref_a)[:, :m]), (dzc, np.asarray(ref_c))):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # Plain evaluation runs the loss-only kernel: the same value.
    value = jax.jit(lambda *a: stcl_contrast.pallas_contrast(*a, inv_tau, tiles=(16, 16), backend="interpret"))
    np.testing.assert_allclose(float(value(*args)), float(loss), rtol=1e-6)


def test_auto_is_rows_and_bad_values_name_the_field():
    feats, labels = _case(20, 2, 2, 5, 5, 6, 3, 0.2)
    auto = jax.jit(lambda f, y: stcl(f, y, implementation="auto"))(feats, labels)
    rows = jax.jit(lambda f, y: stcl(f, y, implementation="rows"))(feats, labels)
    assert float(auto) == float(rows)
    assert stcl_flops("auto", 2, 25, 50, 6) == stcl_flops("rows", 2, 25, 50, 6)
    assert stcl_flops("pallas", 2, 25, 50, 6, positive_fraction=0.5) == 5 * 2 * 2 * 25 * 50 * 6
    with pytest.raises(ValueError, match="config.loss.stcl_implementation"):
        stcl(jnp.asarray(feats), jnp.asarray(labels), implementation="flash")
    with pytest.raises(ValueError, match="backend must be one of"):
        stcl_contrast.pallas_contrast(*[jnp.zeros((1, 4, 8))] * 5, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="powers of two"):
        stcl_contrast.pallas_contrast(jnp.zeros((1, 4, 8)), *[jnp.zeros((1, 4), jnp.int32)] * 2,
                                      jnp.zeros((1, 4, 8)), jnp.zeros((1, 4), jnp.int32), 1.0, tiles=(24, 16),
                                      backend="interpret")


def _lowered_text(fn, args, platform):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def test_whole_loss_lowers_to_triton_and_mosaic_kernels():
    """The loss with its gradient, backend "auto": two kernels (anchor tiles, contrast tiles) per platform, the
    kernel of the lowering platform only; plain evaluation: the loss-only kernel alone."""
    feats = jax.ShapeDtypeStruct((2, 2, 6, 6, 24), jnp.bfloat16)
    labels = jax.ShapeDtypeStruct((2, 2, 6, 6), jnp.int32)
    grad_fn = jax.value_and_grad(lambda f, y: stcl(f, y, implementation="pallas"))
    cuda, tpu, cpu = (_lowered_text(grad_fn, (feats, labels), p) for p in ("cuda", "tpu", "cpu"))
    assert cuda.count(TRITON_CALL) == 2 and TPU_CALL not in cuda
    assert tpu.count(TPU_CALL) == 2 and TRITON_CALL not in tpu
    assert TRITON_CALL not in cpu and TPU_CALL not in cpu  # interpret mode: plain HLO
    loss_fn = lambda f, y: stcl(f, y, implementation="pallas")
    assert _lowered_text(loss_fn, (feats, labels), "cuda").count(TRITON_CALL) == 1


@pytest.mark.parametrize("small", [True, False])
def test_lowering_cases_lower_for_gpu_and_tpu(small):
    """`lowering_cases` (also the Swin-L stride-8 and stride-4 shapes, abstract: nothing is allocated) lower for
    both. Lowering is not compiling: Mosaic's VMEM limit is checked only by the TPU compiler (BENCHMARKS.md)."""
    cases = stcl_contrast.lowering_cases(small)
    assert len(cases) == (1 if small else 2)
    for name, fn, args in cases:
        assert _lowered_text(fn, args, "cuda").count(TRITON_CALL) == 2, name
        assert _lowered_text(fn, args, "tpu").count(TPU_CALL) == 2, name


_SHARDED = """
import json, re
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from stcl_jax.losses import spatial_temporal_consistency_loss as stcl

mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(0)
f = rng.normal(size=(4, 2, 5, 5, 8)).astype(np.float32)
y = rng.integers(0, 4, size=(4, 2, 5, 5)).astype(np.int32)
y[rng.random(y.shape) < 0.2] = 255
fn = jax.jit(jax.value_and_grad(lambda f, y: stcl(f, y, implementation="pallas")))
loss, grad = fn(f, y)
data = NamedSharding(mesh, P("data"))
compiled = fn.lower(jax.device_put(f, data), jax.device_put(y, data)).compile()
sloss, sgrad = compiled(jax.device_put(f, data), jax.device_put(y, data))
collectives = [line.split("=", 1)[1].strip()[:120] for line in compiled.as_text().splitlines()
               if re.search(r"(all-gather|all-to-all|collective-permute|reduce-scatter|all-reduce)\\(", line)]
print(json.dumps({"loss": float(loss), "sharded_loss": float(sloss), "grad_spec": str(sgrad.sharding.spec),
                  "grad_diff": float(np.abs(np.asarray(grad) - np.asarray(sgrad)).max()),
                  "grad_scale": float(np.abs(grad).max()), "collectives": collectives}))
"""


def test_batch_sharded_loss_equals_unsharded_and_gathers_nothing():
    """4 clips over 4 devices: the kernels partition along the clips (`custom_partitioning`); a bare
    `pallas_call` would all-gather every input. The only communication left is the scalar all-reduce."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(r["sharded_loss"] - r["loss"]) <= 1e-6 * abs(r["loss"]), r
    assert r["grad_diff"] <= 1e-5 * r["grad_scale"] and "data" in r["grad_spec"], r
    assert r["collectives"] and all(re.match(r"\(?f32\[\](, f32\[\])*\)? all-reduce\(", c) for c in r["collectives"]), r

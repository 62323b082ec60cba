"""STCL loss against an independent dense float64 reference (PyTorch autograd, written from eq. 1-2).

The reference shares no code with `stcl_jax.losses`: the full similarity matrix of each group, the ratio
exp(s_ip) / (exp(s_ip) + sum_n exp(s_in)) taken literally (float64 holds exp(1/tau) for tau >= 0.01), and the
gradient from torch.autograd. Each check runs both exact implementations ("rows", the default, and "tiled")
against one reference computation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stcl_jax.losses import downsample_labels, spatial_temporal_consistency_loss as stcl
from stcl_jax.losses.stcl import sample_anchors

IMPLEMENTATIONS = ("rows", "tiled")


def reference_stcl(features, labels, tau, *, ignore_index=255, scope="clip", pool=1, anchor_index=None):
    """Loss and d loss / d features (both float64 NumPy) for features (B, T, h, w, D), labels (B, T, h, w).

    anchor_index: optional (B, K) query-frame pixel indices (row-major) used as the candidate anchors instead of
    every query pixel; entries may repeat an invalid pixel (dropped like any invalid anchor).
    """
    f = torch.tensor(np.asarray(features, np.float64), requires_grad=True)
    lab = torch.tensor(np.asarray(labels, np.int64))
    x = f
    if pool > 1:
        b, t, h, w, d = x.shape
        x = x.reshape(b, t, h // pool, pool, w // pool, pool, d).mean(dim=(3, 5))
        lab = lab[:, :, pool // 2::pool, pool // 2::pool]  # centre pixel of each pool x pool cell
    b, t, h, w, d = x.shape
    z = x / torch.clamp(torch.linalg.norm(x, dim=-1, keepdim=True), min=1e-12)
    z = z.reshape(b, t * h * w, d)
    lab = lab.reshape(b, t * h * w)
    if anchor_index is None:
        anchor_index = np.tile(np.arange(h * w), (b, 1))
    anchor_index = torch.tensor(np.asarray(anchor_index, np.int64))
    if scope == "clip":
        groups = [(z[i], lab[i], anchor_index[i]) for i in range(b)]
    else:
        offsets = (torch.arange(b) * (t * h * w))[:, None]
        groups = [(z.reshape(-1, d), lab.reshape(-1), (anchor_index + offsets).reshape(-1))]

    per_anchor = []
    for zg, lg, anchors in groups:
        valid = (lg != ignore_index) & (lg >= 0)
        sim = torch.exp(zg[anchors] @ zg.T / tau)  # (anchors, contrast)
        for row, i in enumerate(anchors.tolist()):
            if not valid[i]:
                continue
            pos = valid & (lg == lg[i])
            pos[i] = False
            neg = valid & (lg != lg[i])
            if not pos.any():
                continue
            neg_sum = sim[row][neg].sum()
            e_pos = sim[row][pos]
            per_anchor.append(torch.mean(-torch.log(e_pos / (e_pos + neg_sum))))
    loss = torch.stack(per_anchor).mean() if per_anchor else (f * 0.0).sum()
    loss.backward()
    return loss.item(), f.grad.numpy()


def _case(seed, b, t, h, w, d, classes, ignore_frac):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(b, t, h, w, d)).astype(np.float32)
    labels = rng.integers(0, classes, size=(b, t, h, w))
    labels[rng.random(labels.shape) < ignore_frac] = 255
    return feats, labels.astype(np.int32)


@functools.lru_cache(maxsize=None)
def _compiled(static_kw):
    """One jitted value_and_grad per set of static options (temperature and key are traced arguments)."""
    kw = dict(static_kw)
    return jax.jit(jax.value_and_grad(lambda f, y, tau, key: stcl(f, y, temperature=tau, key=key, **kw)))


def _loss_and_grad(feats, labels, temperature=0.07, key=None, **kw):
    fn = _compiled(tuple(sorted(kw.items())))
    loss, grad = fn(jnp.asarray(feats), jnp.asarray(labels), jnp.float32(temperature), key)
    return float(loss), np.asarray(grad)


def _assert_matches(feats, labels, tau, rtol=2e-5, ref_kw=None, implementations=IMPLEMENTATIONS, **kw):
    """Loss and gradient of each implementation against one reference computation; returns the first loss."""
    ref_loss, ref_grad = reference_stcl(feats, labels, tau, **(ref_kw or {}))
    scale = max(np.abs(ref_grad).max(), 1e-30)
    losses = []
    for implementation in implementations:
        loss, grad = _loss_and_grad(feats, labels, temperature=tau, implementation=implementation, **kw)
        np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=1e-7, err_msg=implementation)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-4 * scale, err_msg=implementation)
        losses.append(loss)
    return losses[0]


# (seed, B, T, h, w, D, classes, ignore fraction, tau, anchor_tile, contrast_tile)
CASES = [
    (0, 2, 2, 5, 7, 8, 4, 0.2, 0.07, 16, 32),
    (1, 1, 3, 3, 9, 5, 3, 0.0, 0.05, 7, 13),
    (2, 3, 2, 7, 5, 16, 6, 0.5, 0.2, 35, 70),
    (3, 2, 3, 5, 5, 3, 2, 0.3, 0.1, 8, 8),
    (4, 2, 2, 9, 3, 12, 9, 0.1, 0.01, 4, 20),
]


@pytest.mark.parametrize("seed,b,t,h,w,d,classes,ignore,tau,ta,tc", CASES)
def test_matches_dense_reference(seed, b, t, h, w, d, classes, ignore, tau, ta, tc):
    feats, labels = _case(seed, b, t, h, w, d, classes, ignore)
    loss = _assert_matches(feats, labels, tau, anchor_tile=ta, contrast_tile=tc)
    assert loss > 0


@pytest.mark.parametrize("tau", [0.05, 0.07, 0.2])
def test_temperatures(tau):
    feats, labels = _case(10, 2, 2, 5, 5, 6, 3, 0.2)
    _assert_matches(feats, labels, tau, anchor_tile=8, contrast_tile=16)
    if tau == 0.07:  # the dense baseline (bench/stcl_loss.py) against the same reference
        _assert_matches(feats, labels, tau, implementations=("dense",))


def test_stable_at_small_temperature():
    """tau = 0.01 with all cosines near 0.98: exp(s) ~ e^98 overflows float32, the loss itself is O(1)."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, size=(2, 2, 5, 5)).astype(np.int32)
    offsets = rng.normal(size=(3, 6))
    feats = 5.0 * np.eye(6)[0] + 0.4 * offsets[labels] + 0.3 * rng.normal(size=labels.shape + (6,))
    loss = _assert_matches(feats.astype(np.float32), labels, 0.01, rtol=1e-4, anchor_tile=8, contrast_tile=16)
    assert 0.1 < loss < 100


def test_zero_feature_vectors_keep_finite_gradients():
    """A ReLU projection head can emit all-zero vectors: their cosines are 0 and no gradient is NaN."""
    feats, labels = _case(22, 2, 2, 5, 5, 6, 3, 0.2)
    feats[0, 0, 1, 1] = 0.0
    feats[1, 1, 2, :] = 0.0
    zero = np.all(feats == 0.0, axis=-1)
    ref_loss, ref_grad = reference_stcl(feats, labels, 0.07)
    for implementation in IMPLEMENTATIONS:
        loss, grad = _loss_and_grad(feats, labels, anchor_tile=8, contrast_tile=16, implementation=implementation)
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
        # Elsewhere the usual tolerance; at the zero vectors both give dL/dz / eps (x / max(|x|, eps) at x = 0).
        rest, at_zero = ref_grad[~zero], ref_grad[zero]
        np.testing.assert_allclose(grad[~zero], rest, rtol=1e-4, atol=1e-4 * np.abs(rest).max())
        np.testing.assert_allclose(grad[zero], at_zero, rtol=1e-3, atol=1e-3 * np.abs(at_zero).max())


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_all_ignored_gives_zero_and_finite_zero_gradient(implementation):
    feats, labels = _case(12, 2, 2, 5, 5, 6, 3, 0.0)
    labels[:] = 255
    loss, grad = _loss_and_grad(feats, labels, anchor_tile=8, contrast_tile=16, implementation=implementation)
    assert loss == 0.0 and np.all(grad == 0.0)
    labels[:, 1:] = 0  # reference frames labelled, query frame void: still no anchor
    loss, grad = _loss_and_grad(feats, labels, anchor_tile=8, contrast_tile=16, implementation=implementation)
    assert loss == 0.0 and np.all(grad == 0.0)


def test_one_class_only():
    """No negatives: every term is -log(e^s / e^s) = 0; the anchors are kept, the loss and gradient are 0."""
    feats, labels = _case(13, 2, 2, 5, 5, 6, 1, 0.3)
    ref_loss, ref_grad = reference_stcl(feats, labels, 0.07)
    assert abs(ref_loss) < 1e-12 and np.abs(ref_grad).max() < 1e-12  # the reference, up to float64 rounding
    for implementation in IMPLEMENTATIONS:
        loss, grad = _loss_and_grad(feats, labels, anchor_tile=8, contrast_tile=16, implementation=implementation)
        assert loss == 0.0 and np.all(grad == 0.0), implementation


def test_anchor_whose_class_appears_nowhere_else_is_left_out():
    feats, labels = _case(14, 2, 2, 5, 5, 6, 3, 0.1)
    labels[0, 0, 2, 3] = 7  # a single pixel of class 7 in the whole clip (and the batch)
    labels[1, :, :, :] = np.where(labels[1] == 1, 255, labels[1])  # clip 1: class 1 absent
    labels[1, 0, 0, 0] = 1  # ... except for one query pixel
    _assert_matches(feats, labels, 0.07, anchor_tile=8, contrast_tile=16)
    _assert_matches(feats, labels, 0.07, ref_kw={"scope": "batch"}, contrast_scope="batch", anchor_tile=8,
                    contrast_tile=16)


def test_tile_size_independence_and_rows_equal_tiled():
    """Every tiling of both implementations gives the same loss and gradient up to float32 rounding."""
    feats, labels = _case(15, 2, 3, 7, 5, 8, 5, 0.25)
    tiled = [_loss_and_grad(feats, labels, anchor_tile=ta, contrast_tile=tc, implementation="tiled")
             for ta, tc in [(35, 105), (1, 7), (6, 50), (1024, 2048)]]
    rows = [_loss_and_grad(feats, labels, anchor_tile=ta, implementation="rows") for ta in (1, 6, None)]
    for loss, grad in tiled[1:] + rows:
        np.testing.assert_allclose(loss, tiled[0][0], rtol=1e-6)
        np.testing.assert_allclose(grad, tiled[0][1], rtol=1e-5, atol=1e-6 * np.abs(tiled[0][1]).max())


def test_batch_scope_matches_reference_and_differs_from_clip_scope():
    feats, labels = _case(16, 3, 2, 5, 3, 6, 4, 0.2)
    batch = _assert_matches(feats, labels, 0.1, ref_kw={"scope": "batch"}, contrast_scope="batch",
                            anchor_tile=8, contrast_tile=16)
    clip = _assert_matches(feats, labels, 0.1, anchor_tile=8, contrast_tile=16)
    assert abs(batch - clip) > 1e-3


def test_pool_option_matches_pooled_reference():
    feats, labels = _case(17, 2, 2, 6, 9, 5, 4, 0.2)
    _assert_matches(feats, labels, 0.07, ref_kw={"pool": 3}, pool=3, anchor_tile=4, contrast_tile=8)
    with pytest.raises(ValueError, match="pool=4"):
        stcl(jnp.asarray(feats), jnp.asarray(labels), pool=4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bfloat16_features_accumulate_in_float32(implementation):
    feats, labels = _case(18, 2, 2, 5, 5, 6, 4, 0.2)
    bf16 = jnp.asarray(feats, jnp.bfloat16)
    # The reference on the bf16-rounded inputs: what is left is the rounding of z and of the score gradient.
    ref_loss, ref_grad = reference_stcl(np.asarray(bf16, np.float32), labels, 0.07)
    fn = jax.jit(jax.value_and_grad(lambda f, y: stcl(f, y, anchor_tile=8, contrast_tile=16,
                                                      implementation=implementation)))
    loss, grad = fn(bf16, jnp.asarray(labels))
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-2)
    scale = np.abs(ref_grad).max()
    np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, rtol=0, atol=3e-2 * scale)


def test_anchor_cap_samples_valid_pixels_and_matches_reference_on_the_sample():
    feats, labels = _case(19, 3, 2, 5, 7, 6, 3, 0.4)
    key = jax.random.PRNGKey(3)
    valid = jnp.asarray(labels[:, 0].reshape(3, -1) != 255)
    idx = np.asarray(sample_anchors(valid, 9, key))
    assert idx.shape == (3, 9)
    for row, v in zip(idx, np.asarray(valid)):
        assert len(set(row.tolist())) == 9 and v[row].all()  # distinct valid pixels (each clip has >= 9)
    _assert_matches(feats, labels, 0.07, ref_kw={"anchor_index": idx}, max_anchors=9, key=key,
                    anchor_tile=4, contrast_tile=16)
    other = np.asarray(sample_anchors(valid, 9, jax.random.PRNGKey(4)))
    assert not np.array_equal(idx, other)
    # A cap of at least the number of valid query pixels keeps them all: the uncapped loss.
    cap = int(np.asarray(valid).sum(axis=1).max())
    full, _ = _loss_and_grad(feats, labels)
    capped, _ = _loss_and_grad(feats, labels, max_anchors=cap, key=key)
    np.testing.assert_allclose(capped, full, rtol=1e-6)


def test_sampling_is_uniform_over_valid_pixels():
    valid = jnp.asarray(np.arange(12) % 3 != 0)[None]  # 8 valid positions
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    idx = np.asarray(jax.vmap(lambda k: sample_anchors(valid, 2, k))(keys)).reshape(-1)
    counts = np.bincount(idx, minlength=12)
    assert counts[::3].sum() == 0
    np.testing.assert_allclose(counts[np.asarray(valid[0])] / 4000, 1 / 8, atol=0.02)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_jit_matches_eager(implementation):
    feats, labels = _case(20, 2, 2, 5, 5, 6, 3, 0.2)
    loss_fn = functools.partial(stcl, temperature=0.05, anchor_tile=8, contrast_tile=16,
                                implementation=implementation)
    fn = jax.jit(loss_fn)
    eager = loss_fn(jnp.asarray(feats), jnp.asarray(labels))
    np.testing.assert_allclose(float(fn(feats, labels)), float(eager), rtol=1e-6)
    if implementation == "rows":  # its gradient comes from the forward sweep: eager and jitted alike
        eager_loss, eager_grad = jax.value_and_grad(loss_fn)(jnp.asarray(feats), jnp.asarray(labels))
        jit_loss, jit_grad = jax.jit(jax.value_and_grad(loss_fn))(feats, labels)
        np.testing.assert_allclose(float(jit_loss), float(eager_loss), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(jit_grad), np.asarray(eager_grad), rtol=1e-5,
                                   atol=1e-6 * np.abs(np.asarray(eager_grad)).max())


@pytest.mark.parametrize("src,dst", [((12, 12), (3, 3)), ((7, 10), (3, 4)), ((5, 9), (5, 9)), ((3, 4), (7, 9))])
def test_downsample_labels_matches_torch_nearest_exact(src, dst):
    labels = np.random.default_rng(21).integers(0, 255, size=(2, 3) + src).astype(np.int32)
    ours = np.asarray(downsample_labels(jnp.asarray(labels), dst))
    theirs = torch.nn.functional.interpolate(torch.tensor(labels, dtype=torch.float64), size=dst,
                                             mode="nearest-exact").numpy().astype(np.int32)
    np.testing.assert_array_equal(ours, theirs)


def test_bad_inputs_name_the_problem():
    f = jnp.zeros((2, 2, 4, 4, 3))
    y = jnp.zeros((2, 2, 4, 4), jnp.int32)
    with pytest.raises(ValueError, match="labels must be"):
        stcl(f, y[:, :, :2])
    with pytest.raises(ValueError, match="features must be"):
        stcl(f[0], y)
    with pytest.raises(ValueError, match="contrast_scope"):
        stcl(f, y, contrast_scope="video")
    with pytest.raises(ValueError, match="PRNG key"):
        stcl(f, y, max_anchors=4)
    with pytest.raises(ValueError, match="temperature"):
        stcl(f, y, temperature=0.0)
    with pytest.raises(ValueError, match="integers"):
        stcl(f, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="implementation must be"):
        stcl(f, y, implementation="flash")
    with pytest.raises(ValueError, match="sort_by_label=True needs implementation='tiled'"):
        stcl(f, y, sort_by_label=True)

"""Label-sorted block skipping (`sort_by_label=True`): same loss and gradient, fewer positive-pass tiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax.losses import spatial_temporal_consistency_loss as stcl
from stcl_jax.losses.contrast_tiles import positive_spans
from test_stcl import _case, reference_stcl


def _blobs(rng, b, t, h, w, classes):
    """Piecewise-constant label maps: a coarse random grid upsampled, as real maps at feature resolution."""
    coarse = rng.integers(0, classes, size=(b, 1, (h + 3) // 4, (w + 3) // 4))
    labels = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    return np.repeat(labels, t, axis=1).astype(np.int32)


def test_sorted_matches_reference_and_unsorted():
    rng = np.random.default_rng(30)
    feats, _ = _case(30, 2, 2, 9, 7, 6, 5, 0.0)
    labels = _blobs(rng, 2, 2, 9, 7, 5)
    labels[rng.random(labels.shape) < 0.15] = 255
    ref_loss, ref_grad = reference_stcl(feats, labels, 0.07)
    for kw in ({"sort_by_label": True}, {"sort_by_label": True, "contrast_scope": "batch"}):
        kw = {**kw, "implementation": "tiled"}
        fn = jax.jit(jax.value_and_grad(lambda f, y, kw=kw: stcl(f, y, anchor_tile=8, contrast_tile=16, **kw)))
        loss, grad = fn(jnp.asarray(feats), jnp.asarray(labels))
        if "contrast_scope" not in kw:
            np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-5)
            np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-4 * np.abs(ref_grad).max())
        else:
            b_loss, b_grad = reference_stcl(feats, labels, 0.07, scope="batch")
            np.testing.assert_allclose(float(loss), b_loss, rtol=2e-5)
            np.testing.assert_allclose(np.asarray(grad), b_grad, rtol=1e-4, atol=1e-4 * np.abs(b_grad).max())


def test_sorted_with_sampled_anchors_matches_unsorted():
    feats, labels = _case(31, 2, 2, 7, 7, 6, 4, 0.2)
    key = jax.random.PRNGKey(5)
    results = [jax.jit(jax.value_and_grad(lambda f, s=s: stcl(f, jnp.asarray(labels), max_anchors=20, key=key,
                                                               anchor_tile=8, contrast_tile=16, sort_by_label=s,
                                                               implementation="tiled")))(
        jnp.asarray(feats)) for s in (False, True)]
    np.testing.assert_allclose(float(results[1][0]), float(results[0][0]), rtol=1e-6)
    grads = [np.asarray(r[1]) for r in results]  # summation order differs: float32 rounding only
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-5 * np.abs(grads[0]).max())


def _needed_tiles(la, lc, ta, tc):
    """Brute force: (na, nc) True where some group has a same-label valid pair in the tile pair."""
    b, m = la.shape
    na, nc = m // ta, lc.shape[1] // tc
    need = np.zeros((na, nc), bool)
    for g in range(b):
        for i in range(na):
            a = set(la[g, i * ta:(i + 1) * ta].tolist()) - {-1}
            for j in range(nc):
                need[i, j] |= bool(a & set(lc[g, j * tc:(j + 1) * tc].tolist()))
    return need


def test_positive_spans_cover_every_positive_tile_and_shrink_when_sorted():
    rng = np.random.default_rng(32)
    la = rng.integers(-1, 6, size=(3, 48)).astype(np.int32)
    lc = rng.integers(-1, 6, size=(3, 96)).astype(np.int32)
    la[1, 8:16] = -1  # an anchor tile with no valid anchor in one group
    for sort in (False, True):
        if sort:
            key = lambda x: np.where(x >= 0, x, 99)
            la = np.take_along_axis(la, np.argsort(key(la), axis=1, kind="stable"), axis=1)
            lc = np.take_along_axis(lc, np.argsort(key(lc), axis=1, kind="stable"), axis=1)
        spans = np.asarray(positive_spans(jnp.asarray(la), jnp.asarray(lc), 8, 16))
        need = _needed_tiles(la, lc, 8, 16)
        for i, (start, end) in enumerate(spans):
            assert not need[i, :start].any() and not need[i, end:].any(), (sort, i, start, end)
        visited = (spans[:, 1] - spans[:, 0]).sum() / need.size
        if sort:
            assert visited < 0.75, visited
    none = np.asarray(positive_spans(jnp.full((1, 8), -1, jnp.int32), jnp.asarray(lc[:1]), 8, 16))
    assert none.tolist() == [[0, 0]]

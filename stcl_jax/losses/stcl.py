"""The spatial-temporal consistency loss (STCL, He et al. 2021, eq. 1-2) and its label helper.

For each clip, frame 0 is the query frame and frames 1..T-1 its reference frames. The anchors are the valid
pixels of the query frame; the contrast set of anchor i is every valid pixel of all T frames except i itself.
Positives P_i share i's label, negatives N_i have another one; with s = cosine / tau,

    L(i) = 1/|P_i| sum_{p in P_i} -log( exp(s_ip) / (exp(s_ip) + sum_{n in N_i} exp(s_in)) ),

anchors without a positive are left out, and the loss is the mean of L(i) over the kept anchors of the whole
batch (0 when none is kept; the gradient is then 0 too). Four exact implementations (`implementation=`):
  "rows" (default, `contrast_rows.py`): per anchor tile the full score rows (B, ta, N) in float32, the loss and
      its gradient in one forward sweep: 3 GEMM passes, memory O(ta x N) per group;
  "tiled" (`contrast_tiles.py`): (B, ta, tc) score blocks only and a custom backward sweep: 5 GEMM passes,
      memory O(ta x tc), and `sort_by_label` can skip positive-pass tiles;
  "dense": the full (M, N) score matrix and plain autodiff (a baseline; quadratic memory);
  "pallas" (`kernels/stcl_contrast.py`): flash-style Pallas kernels, the score tiles never leave the chip
      (Triton on GPUs, Mosaic on TPUs, interpret mode on a CPU): 4 + 2 f GEMM passes (f: the fraction of tile
      pairs holding a positive pair, small since it sorts the pixels by label by default), memory O((M + N) D).
"auto" is "rows" on every back end for now: no GPU or TPU measurement of "pallas" against "rows" exists yet.
`stcl_flops` gives their GEMM FLOPs (XLA's cost analysis counts a scan body once).

Label rule (`downsample_labels`): output pixel (y, x) of an (h, w) map taken from an (H, W) map is input pixel
(floor((y + 1/2) H / h), floor((x + 1/2) W / w)), computed in exact integer arithmetic: the pixel under the
centre of the output cell (torch's `interpolate(mode="nearest-exact")`). For an integer stride k = H / h this is
input pixel (k y + k // 2, k x + k // 2), the centre of the k x k cell that average pooling by k reduces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax.kernels.stcl_contrast import pallas_contrast
from stcl_jax.losses.contrast_rows import default_anchor_tile, rows_contrast
from stcl_jax.losses.contrast_tiles import dense_contrast, tiled_contrast

_SCOPES = ("clip", "batch")
# GEMM-sized passes of 2 x M x N x D FLOPs per group, forward + backward.
_PASSES = {"rows": 3, "tiled": 5, "dense": 3, "pallas": 6}
IMPLEMENTATIONS = ("rows", "tiled", "dense", "pallas", "auto")
# What "auto" means, per back end: "rows" everywhere until a GPU / TPU measurement says otherwise.
AUTO = "rows"


def downsample_labels(labels, size, ignore_index=255):
    """Nearest (cell-centre) resampling of integer label maps (..., H, W) -> (..., h, w); see the module doc.

    `ignore_index` values are copied like any other label (nearest sampling never mixes labels); the argument is
    accepted so that every label helper has the same signature.
    """
    del ignore_index
    h, w = (int(v) for v in size)
    if labels.ndim < 2 or h <= 0 or w <= 0:
        raise ValueError(f"downsample_labels: need labels (..., H, W) and a positive size, got shape "
                         f"{labels.shape} and size {size}")
    big_h, big_w = labels.shape[-2:]
    rows = ((2 * np.arange(h) + 1) * big_h) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * big_w) // (2 * w)
    return labels[..., rows[:, None], cols[None, :]]


def stcl_flops(implementation, groups, anchors, contrast, dim, positive_fraction=1.0):
    """Analytic FLOPs of the loss forward + backward: passes x 2 x M x N x D per group (the GEMMs only).

    groups, anchors M, contrast N per group: with B clips of T frames of h x w (after `pool`) and A anchors per
    clip (h x w, or max_anchors), contrast_scope "clip" is (B, A, T h w) and "batch" (1, B A, B T h w).
    Passes: "rows" 3 (scores, dz_anchor, dz_contrast), "tiled" 4 + positive_fraction (negatives, positives on
    that fraction of tiles, 1 unless sort_by_label; backward scores, dz_anchor, dz_contrast), "dense" 3 (scores
    and the two products of autodiff), "pallas" 4 + 2 positive_fraction (scores + negatives' dz_anchor, the same
    two for the positives on the tiles holding one, which it skips by itself: 1 counts every tile; scores +
    dz_contrast). Padding of the anchors to the tile size is not counted.
    """
    implementation = AUTO if implementation == "auto" else implementation
    if implementation not in _PASSES:
        raise ValueError(f"stcl_flops: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    passes = {"tiled": 4 + float(positive_fraction), "pallas": 4 + 2 * float(positive_fraction)}.get(
        implementation, _PASSES[implementation])
    return passes * 2.0 * groups * anchors * contrast * dim


def _check_inputs(features, labels, temperature, contrast_scope, pool, max_anchors, key, tiles):
    if features.ndim != 5:
        raise ValueError(f"STCL: features must be (B, T, h, w, D), got shape {features.shape}")
    if labels.shape != features.shape[:4]:
        raise ValueError(f"STCL: labels must be (B, T, h, w) = {features.shape[:4]} to match the features, "
                         f"got {labels.shape}; bring full-resolution labels down with downsample_labels")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"STCL: labels must be integers, got dtype {labels.dtype}")
    if isinstance(temperature, (int, float, np.number, np.ndarray)) and not float(temperature) > 0:
        raise ValueError(f"STCL: temperature must be > 0, got {temperature}")
    if contrast_scope not in _SCOPES:
        raise ValueError(f"STCL: contrast_scope must be one of {_SCOPES}, got {contrast_scope!r}")
    h, w = features.shape[2:4]
    if int(pool) < 1 or h % int(pool) or w % int(pool):
        raise ValueError(f"STCL: pool={pool} must be a positive integer dividing the feature size {h}x{w}")
    if max_anchors and (int(max_anchors) < 1 or key is None):
        raise ValueError(f"STCL: max_anchors={max_anchors} needs a positive value and a PRNG key (key={key})")
    for name, value in tiles.items():
        if value is not None and int(value) < 1:
            raise ValueError(f"STCL: {name} must be a positive integer, got {value}")


def _normalise(features, pool):
    """Average-pool by `pool` (fp32), then L2-normalise along D; returned in the compute dtype."""
    compute_dtype = features.dtype if features.dtype in (jnp.bfloat16, jnp.float16) else jnp.float32
    f = features.astype(jnp.float32)
    if pool > 1:
        b, t, h, w, d = f.shape
        f = f.reshape(b, t, h // pool, pool, w // pool, pool, d).mean(axis=(3, 5))
    # f / max(|f|, 1e-12) without a sqrt at 0: an all-zero vector (a ReLU head can emit one) keeps a finite,
    # zero gradient instead of 0 * inf = NaN.
    inv_norm = jax.lax.rsqrt(jnp.maximum(jnp.sum(f * f, axis=-1, keepdims=True), 1e-24))
    return (f * inv_norm).astype(compute_dtype)


def balanced_tile(length, tile):
    """The tile size (<= `tile`, a multiple of 8 when above 8) that covers `length` in as many tiles as `tile`
    would, with the least padding: e.g. 2304 pixels with tile 1024 -> 3 tiles of 768 rather than 3 of 1024."""
    count = -(-length // tile)
    size = -(-length // count)
    rounded = size + (-size % 8)
    return rounded if size > 8 and rounded <= tile else size


def _pad_to(x, multiple, value):
    extra = -x.shape[1] % multiple
    if not extra:
        return x
    widths = [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, widths, constant_values=value)


def sample_anchors(valid, max_anchors, key):
    """Indices (B, max_anchors) int32 of a uniformly random subset of the True entries of `valid` (B, P).

    Without replacement, as ContrastiveSeg's random anchor sampling: the valid positions with the smallest
    uniform keys. A row with fewer valid entries is filled with invalid positions (the loss drops them).
    """
    u = jnp.where(valid, jax.random.uniform(key, valid.shape), 2.0)  # invalid positions sort last
    # A sort along axis 1 stays local under batch sharding (lax.top_k's custom call gathers the batch on CPU).
    return jnp.argsort(u, axis=1)[:, :int(max_anchors)].astype(jnp.int32)


def _anchors(z, lab, max_anchors, key):
    """Query-frame anchors (B, M, D), their labels and their own index in the clip's contrast set."""
    b, hw = lab.shape[0], lab.shape[2]
    za, la = z[:, 0], lab[:, 0]
    if not max_anchors or int(max_anchors) >= hw:
        return za, la, jnp.broadcast_to(jnp.arange(hw, dtype=jnp.int32), (b, hw))
    idx = sample_anchors(la >= 0, max_anchors, key)
    return jnp.take_along_axis(za, idx[..., None], axis=1), jnp.take_along_axis(la, idx, axis=1), idx


@jax.custom_vjp
def _permute(x, order, inverse):
    """x (B, L, D) in the order `order` (B, L); `inverse` its inverse permutation, whose gather is the gradient
    (autodiff would give a scatter-add)."""
    return jnp.take_along_axis(x, order[..., None], axis=1)


def _permute_fwd(x, order, inverse):
    return _permute(x, order, inverse), inverse


def _permute_bwd(inverse, g):
    return jnp.take_along_axis(g, inverse[..., None], axis=1), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def _sort_by_label(za, la, sa, zc, lc):
    """Anchors and contrast pixels of each group in label order (invalid last); self indices follow along."""
    big = jnp.iinfo(jnp.int32).max
    oa = jnp.argsort(jnp.where(la >= 0, la, big), axis=1).astype(jnp.int32)
    oc = jnp.argsort(jnp.where(lc >= 0, lc, big), axis=1).astype(jnp.int32)
    rank_c = jnp.argsort(oc, axis=1).astype(jnp.int32)  # original contrast index -> sorted position
    sa = jnp.take_along_axis(sa, oa, axis=1)
    sa = jnp.where(sa >= 0, jnp.take_along_axis(rank_c, jnp.maximum(sa, 0), axis=1), -1)
    return (_permute(za, oa, jnp.argsort(oa, axis=1).astype(jnp.int32)), jnp.take_along_axis(la, oa, axis=1), sa,
            _permute(zc, oc, rank_c), jnp.take_along_axis(lc, oc, axis=1))


def spatial_temporal_consistency_loss(features, labels, *, temperature=0.07, ignore_index=255,
                                      contrast_scope="clip", pool=1, max_anchors=None, key=None,
                                      anchor_tile=None, contrast_tile=2048, precision=None,
                                      sort_by_label=None, implementation="rows"):
    """STCL loss (module doc) of `features` (B, T, h, w, D) with `labels` (B, T, h, w) -> scalar float32.

    Args:
      temperature: tau, a float or a float32 scalar array (may be traced, e.g. a schedule; it gets no
        gradient); stable down to 0.01 (running log-sum-exp in float32).
      ignore_index: label of pixels that take no part (negative labels are ignored too).
      contrast_scope: "clip" (the paper: anchors contrast with their own clip) or "batch" (with every pixel of
        every clip of the batch; under batch sharding this gathers the features, "clip" gathers nothing).
      pool: average-pool the features by this factor (k x k cells, stride k) and take the labels at the cell
        centres (`downsample_labels`); must divide h and w.
      max_anchors: keep at most this many random valid query pixels per clip as anchors (needs `key`);
        None or 0 = every valid query pixel.
      anchor_tile: the largest anchor tile; the size used is balanced to pad the least (`balanced_tile`).
        None: "rows" takes `contrast_rows.default_anchor_tile` (<= 1024, its float32 (groups, ta, N) score
        block S within 1 GiB: 288 MiB at B=4, N=18,432; 1 GiB at N=73,728), "tiled" 1024.
      contrast_tile: the largest contrast tile of "tiled" (its score blocks are (B, anchor_tile, contrast_tile));
        "rows" and "dense" do not tile the contrast set. No result depends on the tiles beyond float rounding.
      precision: `jax.lax.Precision` of the einsums (None = backend default; on GPU fp32 may then use TF32).
      sort_by_label: "tiled" and "pallas" only: sort each group's pixels by label so that the positive pass skips
        the tiles without a same-label pair (same result; fewer einsum tiles, see BENCHMARKS.md for what it saves).
        None: True for "pallas" (its small tiles hold a positive pair 99% of the time in row-major order on
        VSPW-like maps, 8-10% sorted: 4.2 instead of 6 GEMM passes), False otherwise.
      implementation: "rows" (default, 3 GEMM passes), "tiled" (5 passes, the smallest memory), "dense"
        (materialises the full score matrix; a baseline for benches), "pallas" (the Pallas kernels; on a CPU in
        interpret mode; it ignores anchor_tile / contrast_tile: its tiles are `stcl_contrast.TILES`) or "auto"
        (`AUTO`: "rows"); see the module doc.
    Features may be float32 or bfloat16 (bf16 einsums with float32 accumulation); the result is float32.
    """
    _check_inputs(features, labels, temperature, contrast_scope, pool, max_anchors, key,
                  {"anchor_tile": anchor_tile, "contrast_tile": contrast_tile})
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"STCL: implementation must be one of {IMPLEMENTATIONS} (config.loss.stcl_implementation), "
                         f"got {implementation!r}")
    implementation = AUTO if implementation == "auto" else implementation
    if sort_by_label is None:
        sort_by_label = implementation == "pallas"
    if sort_by_label and implementation not in ("tiled", "pallas"):
        raise ValueError(f"STCL: sort_by_label=True needs implementation='tiled' or 'pallas', got "
                         f"{implementation!r}")
    pool = int(pool)
    z = _normalise(features, pool)
    if pool > 1:
        labels = downsample_labels(labels, z.shape[2:4])
    labels = labels.astype(jnp.int32)
    lab = jnp.where((labels == ignore_index) | (labels < 0), -1, labels)
    b, t, h, w, d = z.shape
    z = z.reshape(b, t, h * w, d)
    lab = lab.reshape(b, t, h * w)

    za, la, sa = _anchors(z, lab, max_anchors, key)
    zc, lc = z.reshape(b, t * h * w, d), lab.reshape(b, t * h * w)
    if contrast_scope == "batch":  # one group: anchor of clip k sits at k * T*h*w + its index in the clip
        sa = sa + (jnp.arange(b, dtype=jnp.int32) * (t * h * w))[:, None]
        za, la, sa = za.reshape(1, -1, d), la.reshape(1, -1), sa.reshape(1, -1)
        zc, lc = zc.reshape(1, -1, d), lc.reshape(1, -1)

    inv_tau = 1.0 / jnp.asarray(temperature, jnp.float32)
    m, n = la.shape[1], lc.shape[1]
    if implementation == "rows":
        cap = default_anchor_tile(la.shape[0], n) if anchor_tile is None else int(anchor_tile)
        ta = balanced_tile(m, cap)
        return rows_contrast(_pad_to(za, ta, 0), _pad_to(la, ta, -1), _pad_to(sa, ta, -1), zc, lc, inv_tau, ta,
                             precision)
    if sort_by_label:
        za, la, sa, zc, lc = _sort_by_label(za, la, sa, zc, lc)
    if implementation == "pallas":
        return pallas_contrast(za, la, sa, zc, lc, inv_tau, precision=precision)
    if implementation == "dense":
        per_anchor, npos = dense_contrast(za, la, sa, zc, lc, inv_tau, precision)
    else:
        ta = balanced_tile(m, 1024 if anchor_tile is None else int(anchor_tile))
        tc = balanced_tile(n, int(contrast_tile))
        per_anchor, npos = tiled_contrast(_pad_to(za, ta, 0), _pad_to(la, ta, -1), _pad_to(sa, ta, -1),
                                          _pad_to(zc, tc, 0), _pad_to(lc, tc, -1), inv_tau, ta, tc, precision,
                                          bool(sort_by_label))
        per_anchor, npos = per_anchor[:, :m], npos[:, :m]
    kept = (la >= 0) & (npos > 0)
    total = jnp.sum(jnp.where(kept, per_anchor, 0.0))
    return total / jnp.maximum(jnp.sum(kept, dtype=jnp.float32), 1.0)

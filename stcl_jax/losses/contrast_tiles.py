"""Tiled supervised pixel contrast with a custom VJP: memory linear in the number of pixels.

The 5-pass core of the STCL loss for implementation="tiled" (`stcl.py` prepares its inputs; the default,
`contrast_rows.py`, does 3 GEMM passes with O(anchor_tile x N) memory). Per group b (a clip, or the whole batch),
anchors z_a (M, D) and contrast pixels z_c (N, D), both L2-normalised, with s_ij = z_i . z_j / tau and

    P_i = {j : y_j = y_i, j valid, j != self(i)},   N_i = {j : y_j != y_i, j valid},
    lN_i = log sum_{n in N_i} exp(s_in),
    L(i) = 1/|P_i| sum_{p in P_i} -log(exp(s_ip) / (exp(s_ip) + exp(lN_i))) = mean_p softplus(lN_i - s_ip).

Forward, per tile of `anchor_tile` anchors, scanning tiles of `contrast_tile` contrast pixels:
  pass 1: lN_i by an online log-sum-exp (running max + rescaled sum, as in flash attention) and |P_i|;
  pass 2: sum_p softplus(lN_i - s_ip) and h_i = 1/|P_i| sum_p sigmoid(lN_i - s_ip) (= dL(i)/dlN_i); it only
          needs tiles holding a same-label pair, so with `skip` it visits just the span of contrast tiles whose
          labels overlap the anchor tile's (few, once the pixels are sorted by label).
Backward, one more sweep over all tiles (the negative terms reach every tile), with the upstream cotangent c_i:
  dL/ds_ip = -c_i/|P_i| sigmoid(lN_i - s_ip)  (positives),   dL/ds_in = c_i h_i exp(s_in - lN_i)  (negatives),
  dz_a = G z_c / tau, dz_c = G^T z_a / tau, accumulated tile by tile.
Only (B, anchor_tile, contrast_tile) score blocks ever exist; the residuals are O(M) per group.

Labels are int32 with -1 = not valid; `sa` gives each anchor's own index in the contrast set (or -1).
Scores are accumulated in float32 whatever the input dtype (bf16 inputs use a bf16 einsum with fp32 output).
Every op is batched over B and never mixes groups, so a batch-sharded input is computed without communication.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32


def score_block(za, zc, inv_tau, precision):
    """(B, ta, D) x (B, tc, D) -> (B, ta, tc) float32 scores s = z_a . z_c / tau."""
    s = jnp.einsum("bad,bcd->bac", za, zc, preferred_element_type=_F32, precision=precision)
    return s * inv_tau


def pair_masks(la, sa, lc, jc):
    """Positive and negative masks (B, ta, tc) of one tile; `jc` are the tile's contrast indices."""
    valid = (lc >= 0)[:, None, :]
    same = la[:, :, None] == lc[:, None, :]
    not_self = sa[:, :, None] != jc[None, None, :]
    return same & valid & not_self, (~same) & valid


def to_tiles(x, n):
    """(B, L, ...) -> (L // n, B, n, ...): the leading axis enumerates tiles, B stays whole."""
    b, length = x.shape[:2]
    return jnp.swapaxes(x.reshape((b, length // n, n) + x.shape[2:]), 0, 1)


def from_tiles(x):
    """Inverse of `to_tiles`: (L // n, B, n, ...) -> (B, L, ...)."""
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _contrast_xs(zc, lc, contrast_tile):
    """Scan inputs over contrast tiles: (features, labels, global indices)."""
    n = zc.shape[1]
    jc = jnp.arange(n, dtype=jnp.int32).reshape(n // contrast_tile, contrast_tile)
    return to_tiles(zc, contrast_tile), to_tiles(lc, contrast_tile), jc


def positive_spans(la, lc, anchor_tile, contrast_tile):
    """(num anchor tiles, 2) int32 [start, end) of the contrast tiles that can hold a positive pair.

    A contrast tile is needed when its label range overlaps the anchor tile's in some group of the batch; the
    span covers every needed tile (one span for the whole batch, so a batched loop can use it). Exact for any
    pixel order; narrow when the pixels of each group are sorted by label (`stcl.py`, `sort_by_label`).
    """
    big = jnp.iinfo(jnp.int32).max
    a_lo = jnp.min(to_tiles(jnp.where(la >= 0, la, big), anchor_tile), axis=-1)  # (na, B)
    a_hi = jnp.max(to_tiles(jnp.where(la >= 0, la, -1), anchor_tile), axis=-1)
    c_lo = jnp.min(to_tiles(jnp.where(lc >= 0, lc, big), contrast_tile), axis=-1)  # (nc, B)
    c_hi = jnp.max(to_tiles(jnp.where(lc >= 0, lc, -1), contrast_tile), axis=-1)
    need = (c_lo[None] <= a_hi[:, None]) & (c_hi[None] >= a_lo[:, None])  # (na, nc, B)
    need = jnp.any(need, axis=-1)
    nc = need.shape[1]
    start = jnp.argmax(need, axis=1)
    end = nc - jnp.argmax(need[:, ::-1], axis=1)
    found = jnp.any(need, axis=1)
    return jnp.stack([jnp.where(found, start, 0), jnp.where(found, end, 0)], axis=1).astype(jnp.int32)


def _anchor_stats(za_t, la_t, sa_t, span, cxs, inv_tau, precision):
    """Both forward passes for one anchor tile. Returns (loss_i, num_pos, lN, h), each (B, ta) float32.

    `span` (2,) int32 limits the positive pass to contrast tiles [start, end), or is None for all of them.
    """
    b, ta = la_t.shape
    # Scores are >= -inv_tau * (1 + eps) for unit vectors, so this start keeps the running max finite.
    m0 = jnp.full((b, ta), -inv_tau - 1.0, _F32)
    zeros = jnp.zeros((b, ta), _F32)

    def pass1(carry, x):
        m, l, npos = carry
        zc_t, lc_t, jc_t = x
        s = score_block(za_t, zc_t, inv_tau, precision)
        pos, neg = pair_masks(la_t, sa_t, lc_t, jc_t)
        m_new = jnp.maximum(m, jnp.max(jnp.where(neg, s, -jnp.inf), axis=-1))
        p = jnp.where(neg, jnp.exp(s - m_new[..., None]), 0.0)
        l = l * jnp.exp(m - m_new) + jnp.sum(p, axis=-1)
        return (m_new, l, npos + jnp.sum(pos, axis=-1, dtype=_F32)), None

    (m, l, npos), _ = lax.scan(pass1, (m0, zeros, zeros), cxs)
    log_neg = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)

    def pass2(carry, x):
        acc, hsum = carry
        zc_t, lc_t, jc_t = x
        s = score_block(za_t, zc_t, inv_tau, precision)
        pos, _ = pair_masks(la_t, sa_t, lc_t, jc_t)
        u = log_neg[..., None] - s
        e = jnp.exp(-jnp.abs(u))  # shared by softplus(u) and sigmoid(u); u = -inf (no negative) gives 0, 0
        softplus = jnp.maximum(u, 0.0) + jnp.log1p(e)
        sigmoid = jnp.where(u >= 0, 1.0, e) / (1.0 + e)
        acc = acc + jnp.sum(jnp.where(pos, softplus, 0.0), axis=-1)
        hsum = hsum + jnp.sum(jnp.where(pos, sigmoid, 0.0), axis=-1)
        return (acc, hsum), None

    if span is None:
        (acc, hsum), _ = lax.scan(pass2, (zeros, zeros), cxs)
    else:
        def body(j, carry):
            return pass2(carry, tuple(lax.dynamic_index_in_dim(x, j, keepdims=False) for x in cxs))[0]
        acc, hsum = lax.fori_loop(span[0], span[1], body, (zeros, zeros))
    inv_p = 1.0 / jnp.maximum(npos, 1.0)
    return acc * inv_p, npos, log_neg, hsum * inv_p


def _forward(za, la, sa, zc, lc, inv_tau, anchor_tile, contrast_tile, precision, skip):
    cxs = _contrast_xs(zc, lc, contrast_tile)
    axs = (to_tiles(za, anchor_tile), to_tiles(la, anchor_tile), to_tiles(sa, anchor_tile))
    if skip:
        axs = axs + (positive_spans(la, lc, anchor_tile, contrast_tile),)

    def one_anchor_tile(x):
        za_t, la_t, sa_t = x[:3]
        return _anchor_stats(za_t, la_t, sa_t, x[3] if skip else None, cxs, inv_tau, precision)

    outs = lax.map(one_anchor_tile, axs)
    loss, npos, log_neg, h = (from_tiles(o) for o in outs)
    return (loss, npos), (log_neg, h, npos)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def tiled_contrast(za, la, sa, zc, lc, inv_tau, anchor_tile, contrast_tile, precision, skip):
    """Per-anchor loss L(i) and |P_i| (both (B, M) float32) without materialising the (M, N) scores.

    za (B, M, D) and zc (B, N, D) are unit vectors in the compute dtype; la (B, M), sa (B, M), lc (B, N) int32;
    inv_tau = 1 / temperature, a float32 scalar (may be traced; no gradient flows to it).
    M must be a multiple of `anchor_tile` and N of `contrast_tile` (pad with label -1). L(i) of an anchor
    without positives is 0. Only `loss` is differentiable (w.r.t. za and zc). `skip`: the positive pass visits
    only the `positive_spans` of each anchor tile (same result; fewer tiles when pixels are sorted by label).
    """
    return _forward(za, la, sa, zc, lc, inv_tau, anchor_tile, contrast_tile, precision, skip)[0]


def _fwd(za, la, sa, zc, lc, inv_tau, anchor_tile, contrast_tile, precision, skip):
    out, (log_neg, h, npos) = _forward(za, la, sa, zc, lc, inv_tau, anchor_tile, contrast_tile, precision, skip)
    return out, (za, la, sa, zc, lc, inv_tau, log_neg, h, npos)


def _bwd(anchor_tile, contrast_tile, precision, skip, res, cts):
    za, la, sa, zc, lc, inv_tau, log_neg, h, npos = res
    ct = cts[0].astype(_F32)  # the |P_i| output carries no gradient
    w_pos = ct / jnp.maximum(npos, 1.0)
    w_neg = ct * h
    cxs = _contrast_xs(zc, lc, contrast_tile)
    dzc0 = jnp.zeros(cxs[0].shape, _F32)

    def one_anchor_tile(dzc, x):
        za_t, la_t, sa_t, ln_t, wp_t, wn_t = x

        def step(dza, y):
            zc_t, lc_t, jc_t = y
            s = score_block(za_t, zc_t, inv_tau, precision)
            pos, neg = pair_masks(la_t, sa_t, lc_t, jc_t)
            ln = ln_t[..., None]
            g = jnp.where(pos, -wp_t[..., None] * jax.nn.sigmoid(ln - s),
                          jnp.where(neg, wn_t[..., None] * jnp.exp(s - ln), 0.0))
            g = (g * inv_tau).astype(za.dtype)
            dza = dza + jnp.einsum("bac,bcd->bad", g, zc_t, preferred_element_type=_F32, precision=precision)
            dzc_t = jnp.einsum("bac,bad->bcd", g, za_t, preferred_element_type=_F32, precision=precision)
            return dza, dzc_t

        dza, dzc_tiles = lax.scan(step, jnp.zeros(za_t.shape, _F32), cxs)
        return dzc + dzc_tiles, dza  # measured on CPU: the same compiled temp as an in-place carried buffer

    axs = tuple(to_tiles(x, anchor_tile) for x in (za, la, sa, log_neg, w_pos, w_neg))
    dzc, dza = lax.scan(one_anchor_tile, dzc0, axs)
    return (from_tiles(dza).astype(za.dtype), None, None, from_tiles(dzc).astype(zc.dtype), None,
            jnp.zeros_like(inv_tau))


tiled_contrast.defvjp(_fwd, _bwd)


def dense_contrast(za, la, sa, zc, lc, inv_tau, precision=None):
    """The same per-anchor (loss, |P_i|) with the full (B, M, N) score matrix; plain autodiff (baseline only)."""
    s = score_block(za, zc, inv_tau, precision)
    pos, neg = pair_masks(la, sa, lc, jnp.arange(zc.shape[1], dtype=jnp.int32))
    has_neg = jnp.any(neg, axis=-1, keepdims=True)
    # Rows without negatives get a dummy finite row so that logsumexp's gradient stays finite.
    log_neg = jax.nn.logsumexp(jnp.where(has_neg, jnp.where(neg, s, -jnp.inf), 0.0), axis=-1, keepdims=True)
    u = jnp.where(has_neg, log_neg, -jnp.inf) - s
    npos = jnp.sum(pos, axis=-1, dtype=_F32)
    total = jnp.sum(jnp.where(pos, jax.nn.softplus(u), 0.0), axis=-1)
    return total / jnp.maximum(npos, 1.0), npos

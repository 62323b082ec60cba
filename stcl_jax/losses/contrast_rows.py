"""Supervised pixel contrast by full score rows: the whole loss and its gradient in one sweep, 3 GEMM passes.

The default core of the STCL loss (`stcl.py` prepares its inputs; `contrast_tiles.py` is the 5-pass tiled core).
Per group b (a clip, or the whole batch), anchors z_a (M, D) and contrast pixels z_c (N, D), both L2-normalised,
with s_ij = z_i . z_j / tau and P_i, N_i, lN_i, L(i) as in `contrast_tiles.py`; the result is the scalar

    loss = (1 / K) sum_{i kept} L(i),   K = #{i : y_i valid, |P_i| > 0}  over all groups (loss 0 when K = 0).

One `lax.scan` over tiles of `anchor_tile` anchors. Per tile, the score rows against the whole contrast set,
S (B, ta, N) float32, are computed once (GEMM 1) and everything else is derived from them:
  lN_i = m_i + log sum_{n in N_i} exp(s_in - m_i) with m_i the row max over N_i (exact down to tau = 0.01),
  |P_i|, L(i) = mean_p softplus(lN_i - s_ip), h_i = mean_p sigmoid(lN_i - s_ip) (= dL(i)/dlN_i), and the score
  gradient G = dL(i)/ds: -sigmoid(lN_i - s_ip) / |P_i| at positives, h_i exp(s_in - lN_i) at negatives, 0 else;
  dz_a = G z_c / tau (GEMM 2) and dz_c += G^T z_a / tau (GEMM 3) into a float32 (B, N, D) scan carry.
The sum over kept anchors is linear, so dz is scaled by 1 / K once at the end. This is a custom VJP over the
scalar: the forward sweep already holds the gradient (saved in the input dtype), and the backward only multiplies
it by the cotangent. Without differentiation (plain evaluation) only GEMM 1 runs.

Memory: the (B, ta, N) float32 block S, the score gradient G in the input dtype, and the float32 (B, N, D) dz_c
accumulator: linear in N for a fixed tile. The accumulator is read and written once per anchor tile
(M / ta times 8 B N D bytes), so large tiles amortise it; `default_anchor_tile` picks the largest tile <= 1024
whose S fits in `ROW_BLOCK_BYTES` (1 GiB).

Labels are int32 with -1 = not valid; `sa` gives each anchor's own index in the contrast set (or -1). Inputs in
bf16 use bf16 GEMMs with float32 accumulation (`preferred_element_type`). Every op is batched over B and never
mixes groups, so a batch-sharded input needs only the two scalar sums (loss total, K) to be reduced.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from stcl_jax.losses.contrast_tiles import pair_masks, score_block, to_tiles, from_tiles

_F32 = jnp.float32

# The largest float32 score block S (groups x anchor_tile x N x 4 bytes) the default anchor tile allows.
ROW_BLOCK_BYTES = 1 << 30


def default_anchor_tile(groups, contrast, cap=1024):
    """The anchor tile for `groups` groups of `contrast` pixels: <= `cap`, S within ROW_BLOCK_BYTES (>= 8).

    Swin-L at a 768 crop, 4 clips of 2 frames: stride 8 (N = 18,432) -> 1024, S = 288 MiB; stride 4
    (N = 73,728) -> 910, S = 1.0 GiB (`stcl.py` then balances the tile over the anchors, as for "tiled").
    """
    return max(8, min(int(cap), ROW_BLOCK_BYTES // (4 * int(groups) * int(contrast))))


def _softplus_sigmoid(u):
    """softplus(u) and sigmoid(u) from one exp; u = -inf (a row without negatives) gives 0 and 0."""
    e = jnp.exp(-jnp.abs(u))
    return jnp.maximum(u, 0.0) + jnp.log1p(e), jnp.where(u >= 0, 1.0, e) / (1.0 + e)


def _row_stats(s, pos, neg):
    """Per-anchor (L(i), |P_i|, lN_i), each (B, ta) float32, of one score block s (B, ta, N) with its masks."""
    m = jnp.max(jnp.where(neg, s, -jnp.inf), axis=-1)
    has_neg = m > -jnp.inf
    m = jnp.where(has_neg, m, 0.0)
    total = jnp.sum(jnp.where(neg, jnp.exp(s - m[..., None]), 0.0), axis=-1)
    log_neg = jnp.where(has_neg, m + jnp.log(jnp.where(has_neg, total, 1.0)), -jnp.inf)
    npos = jnp.sum(pos, axis=-1, dtype=_F32)
    softplus, _ = _softplus_sigmoid(log_neg[..., None] - s)
    loss = jnp.sum(jnp.where(pos, softplus, 0.0), axis=-1) / jnp.maximum(npos, 1.0)
    return loss, npos, log_neg


def _score_grad(s, pos, neg, npos, log_neg):
    """G = dL(i)/ds (B, ta, N) float32 of one block. Rows without a positive (not kept) are 0: h_i = 0 there.

    The elementwise terms are recomputed from s rather than kept from `_row_stats`, so that only S and G are
    (B, ta, N) arrays in memory.
    """
    _, sigmoid = _softplus_sigmoid(log_neg[..., None] - s)
    inv_p = (1.0 / jnp.maximum(npos, 1.0))[..., None]
    h = jnp.sum(jnp.where(pos, sigmoid, 0.0), axis=-1, keepdims=True) * inv_p
    # s_in <= lN_i, so exp(s_in - lN_i) <= 1; rows without negatives select 0 (their lN = -inf).
    return jnp.where(pos, -sigmoid * inv_p, jnp.where(neg, h * jnp.exp(s - log_neg[..., None]), 0.0))


def _sweep(za, la, sa, zc, lc, inv_tau, anchor_tile, precision, with_grad):
    """The scan over anchor tiles. Returns (loss total, K) and, with `with_grad`, unscaled float32 (dz_a, dz_c)."""
    jc = jnp.arange(zc.shape[1], dtype=jnp.int32)
    axs = (to_tiles(za, anchor_tile), to_tiles(la, anchor_tile), to_tiles(sa, anchor_tile))

    def block(za_t, la_t, sa_t):
        s = score_block(za_t, zc, inv_tau, precision)
        pos, neg = pair_masks(la_t, sa_t, lc, jc)
        loss, npos, log_neg = _row_stats(s, pos, neg)
        kept = ((la_t >= 0) & (npos > 0)).astype(_F32)
        return (jnp.sum(loss), jnp.sum(kept)), (s, pos, neg, npos, log_neg)

    def loss_only(carry, x):
        sums, _ = block(*x)
        return jax.tree.map(jnp.add, carry, sums), None

    def loss_and_grad(carry, x):
        sums, dzc = carry
        za_t = x[0]
        tile_sums, terms = block(*x)
        g = (_score_grad(*terms) * inv_tau).astype(za.dtype)
        dza_t = jnp.einsum("bac,bcd->bad", g, zc, preferred_element_type=_F32, precision=precision)
        dzc = dzc + jnp.einsum("bac,bad->bcd", g, za_t, preferred_element_type=_F32, precision=precision)
        return (jax.tree.map(jnp.add, sums, tile_sums), dzc), dza_t

    zero = (jnp.zeros((), _F32), jnp.zeros((), _F32))
    if not with_grad:
        return lax.scan(loss_only, zero, axs)[0]
    (sums, dzc), dza = lax.scan(loss_and_grad, (zero, jnp.zeros(zc.shape, _F32)), axs)
    return sums, (from_tiles(dza), dzc)


def _mean(sums):
    total, kept = sums
    return total / jnp.maximum(kept, 1.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def rows_contrast(za, la, sa, zc, lc, inv_tau, anchor_tile, precision=None):
    """The scalar loss (module doc): mean of L(i) over the kept anchors of every group, float32.

    za (B, M, D) and zc (B, N, D) are unit vectors in the compute dtype; la (B, M), sa (B, M), lc (B, N) int32;
    inv_tau = 1 / temperature, a float32 scalar (may be traced; no gradient flows to it). M must be a multiple
    of `anchor_tile` (pad with label -1); N is not tiled. Differentiable w.r.t. za and zc.
    """
    return _mean(_sweep(za, la, sa, zc, lc, inv_tau, anchor_tile, precision, with_grad=False))


def _fwd(za, la, sa, zc, lc, inv_tau, anchor_tile, precision):
    sums, (dza, dzc) = _sweep(za, la, sa, zc, lc, inv_tau, anchor_tile, precision, with_grad=True)
    scale = 1.0 / jnp.maximum(sums[1], 1.0)
    # Saved in the input dtype: the one rounding the gradient gets anyway; the backward is a multiply.
    return _mean(sums), ((dza * scale).astype(za.dtype), (dzc * scale).astype(zc.dtype), inv_tau)


def _bwd(anchor_tile, precision, res, ct):
    dza, dzc, inv_tau = res
    ct = ct.astype(_F32)
    return ((ct * dza.astype(_F32)).astype(dza.dtype), None, None, (ct * dzc.astype(_F32)).astype(dzc.dtype), None,
            jnp.zeros_like(inv_tau))


rows_contrast.defvjp(_fwd, _bwd)

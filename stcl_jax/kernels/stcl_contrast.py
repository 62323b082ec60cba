"""Flash-style STCL contrast: the loss and its gradient as Pallas kernels (implementation="pallas").

The same scalar as `losses/contrast_rows.py` (its module doc has the math): per group b, anchors z_a (M, D) and
contrast pixels z_c (N, D), unit vectors; s_ij = z_i . z_j / tau; lN_i the log-sum-exp of s over i's negatives;
L(i) = mean_p softplus(lN_i - s_ip); the loss is the mean of L(i) over the K kept anchors (valid, |P_i| > 0).
No score tile ever leaves the chip (SRAM / registers on a GPU, VMEM on a TPU): only O(M) per-anchor statistics
and the (M, D), (N, D) gradients go to HBM.

Kernel A, grid (B, M / ta); each program holds one anchor tile and loops over the contrast tiles twice:
  pass 1: s, the online (max-stabilised) log-sum-exp over the negatives, |P_i| and, with the gradient,
          E_i = sum_n exp(s_in - lN_i) z_n, accumulated flash-attention style (rescaled when the max moves);
  pass 2: s again, sum_p softplus(lN_i - s_ip) -> L(i), h_i = mean_p sigmoid(lN_i - s_ip) and, with the gradient,
          Q_i = sum_p sigmoid(lN_i - s_ip) z_p; tiles without a same-label pair are skipped (`lax.cond`).
  dz_a = (h_i E_i - Q_i / |P_i|) / tau, since dL(i)/ds is h_i exp(s_in - lN_i) at negatives and
  -sigmoid(lN_i - s_ip) / |P_i| at positives (so h_i, known only after pass 2, multiplies E_i at the end).
Kernel B, grid (B, N / tc); each program holds one contrast tile and loops over the anchor tiles: s^T, the score
  gradient G^T from the per-anchor (lN_i, 1/|P_i|, h_i) of kernel A, dz_c = G^T z_a / tau.
Why fused like "rows" (the gradient in the forward of a custom VJP over the scalar) rather than a forward plus a
backward kernel pair: the split needs the forward's two passes and then dz_a (s, G z_c) and dz_c (s^T, G^T z_a),
5 + f GEMM units of 2 M N D FLOPs, f = the fraction of tile pairs holding a positive pair; the fused form folds
dz_a into the forward's passes: 2 (pass 1) + 2 f (pass 2) + 2 (kernel B) = 4 + 2 f units, 1 - f fewer (0.9 with
the pixels sorted by label), and no second read of the residuals. Plain evaluation (no gradient) runs kernel A without E, Q: 1 + f units.

Padding (Triton needs power-of-two block shapes, and its `dot` at least 16 per side; Mosaic (8, 128) tiles):
D is zero-padded to a power of two >= 16 (Triton, interpret) or a multiple of 128 (Mosaic), which changes no dot
product; M and N are padded to multiples of the tiles with zero vectors labelled -1 (= ignored: never valid as
contrast, never kept as anchors). Tiles: powers of two (`TILES`), shrunk to the padded problem when it is small.

Back ends (`backend=`): "triton" (NVIDIA / ROCm GPUs, `jax.experimental.pallas.triton.CompilerParams`),
"mosaic" (TPU, `jax.experimental.pallas.tpu.CompilerParams`), "interpret" (any platform, the kernels run as
plain JAX ops: the CPU path and the tests), or "auto": `lax.platform_dependent` picks at lowering time (cpu ->
interpret, cuda/rocm -> triton, tpu -> mosaic), so one jitted function lowers for every platform.
On Mosaic each program's block of the whole contrast set (kernel A) or anchor set (kernel B) of its group sits in
VMEM (single-buffered: N D bytes-per-element), which bounds N there: see BENCHMARKS.md ("STCL Pallas kernel").
Under batch sharding the kernels are one `custom_partitioning` op split along the groups B (M, N, D whole), so
each device runs its own groups; a bare `pallas_call` would be gathered onto every device.

Analytic cost (NOT measured: no GPU / TPU run exists; BENCHMARKS.md, "STCL Pallas kernel", has the arithmetic):
forward + backward 4 + 2 f GEMM units (f ~ 0.1 with the pixels sorted by label, `stcl.py`'s default for
"pallas"; ~1 in row-major order) and O((M + N) D) compulsory HBM bytes, plus (1 + f) 2 D / ta + 2 D / tc bytes
per score element of re-streamed feature tiles (33.6 B at D = 512 and 64 x 64 tiles), which L2 may or may not
absorb; "rows": 3 units and about 30 HBM bytes per score element (its float32 score block S written once and
read by four dependent fusions, G written and read by two GEMMs, the dz_c accumulator).
jax 0.11 deprecates the Pallas Triton back end (a warning at lowering); Mosaic GPU would be the port.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import ArrayMapping, SdyShardingRule, custom_partitioning
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton
from jax.sharding import NamedSharding, PartitionSpec

_F32 = jnp.float32
BACKENDS = ("auto", "triton", "mosaic", "interpret")
# (anchor tile, contrast tile) per back end: powers of two. Not tuned (no GPU / TPU measurement exists); the
# Triton pair keeps kernel A's float32 (ta, D) accumulator at 128 KiB for D = 512 over 8 warps.
TILES = {"triton": (64, 64), "interpret": (64, 64), "mosaic": (256, 512)}
TRITON_PARAMS = dict(num_warps=8, num_stages=2)


def _pow2_at_least(n, lo):
    return max(lo, 1 << max(0, int(n) - 1).bit_length())


def _layout(backend, m, n, d, tiles):
    """(ta, tc, padded M, padded N, padded D) for a problem of m anchors, n contrast pixels, dimension d."""
    ta, tc = tiles or TILES[backend]
    if ta & (ta - 1) or tc & (tc - 1):
        raise ValueError(f"stcl_contrast: tiles must be powers of two, got {(ta, tc)}")
    lo = 128 if backend == "mosaic" else 16
    ta, tc = min(ta, _pow2_at_least(m, lo)), min(tc, _pow2_at_least(n, lo))
    ta, tc = max(ta, lo), max(tc, lo)
    dp = -(-d // 128) * 128 if backend == "mosaic" else _pow2_at_least(d, 16)
    return ta, tc, -(-m // ta) * ta, -(-n // tc) * tc, dp


def _dot_nt(a, b, precision):
    """a (p, D) . b (q, D)^T -> (p, q) float32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=_F32)


def _dot_nn(a, b, precision):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=_F32)


def _softplus_sigmoid(u):
    """softplus(u), sigmoid(u) from one exp; u = -inf (an anchor without negatives) gives 0 and 0."""
    e = jnp.exp(-jnp.abs(u))
    return jnp.maximum(u, 0.0) + jnp.log1p(e), jnp.where(u >= 0, 1.0, e) / (1.0 + e)


def _masks(anchor_labels, contrast_labels, anchor_self, contrast_index):
    """Positive and negative masks of one score tile, in either orientation (broadcasting); labels -1 = void."""
    same = anchor_labels == contrast_labels
    valid = contrast_labels >= 0
    return same & valid & (anchor_self != contrast_index), valid & ~same


def _anchor_kernel(inv_tau_ref, za_ref, la_ref, sa_ref, zc_ref, lc_ref, *out_refs, tc, with_grad, precision):
    """Kernel A (module doc) for one anchor tile: L(i), |P_i| (+ lN_i, h_i and dz_a, not yet scaled by 1 / K)."""
    za = za_ref[...]
    la, sa = la_ref[...], sa_ref[...]  # (ta, 1) int32
    inv_tau = inv_tau_ref[...]  # (1, 1)
    ta, dp = za.shape
    n_tiles = zc_ref.shape[0] // tc

    def labels(j):
        lc_t = lc_ref[pl.ds(j, 1), :]  # (1, tc): row j of the (N / tc, tc) label layout
        jc = j * tc + lax.broadcasted_iota(jnp.int32, (1, tc), 1)
        return _masks(la, lc_t, sa, jc)

    def features(j):
        return zc_ref[pl.ds(pl.multiple_of(j * tc, tc), tc), :]

    def pass1(j, carry):
        m, l, npos, acc = carry
        pos, neg = labels(j)
        zc_t = features(j)
        s = _dot_nt(za, zc_t, precision) * inv_tau
        m_new = jnp.maximum(m, jnp.max(jnp.where(neg, s, -jnp.inf), axis=1, keepdims=True))
        p = jnp.exp(jnp.where(neg, s - m_new, -jnp.inf))
        alpha = jnp.exp(m - m_new)
        l = l * alpha + jnp.sum(p, axis=1, keepdims=True)
        npos = npos + jnp.sum(pos.astype(_F32), axis=1, keepdims=True)
        if with_grad:
            acc = acc * alpha + _dot_nn(p.astype(zc_t.dtype), zc_t, precision)
        return m_new, l, npos, acc

    col = jnp.zeros((ta, 1), _F32)
    acc0 = jnp.zeros((ta, dp), _F32) if with_grad else col
    # Scores of unit vectors are >= -inv_tau (1 + eps): this start keeps exp(m - m_new) finite (no -inf - -inf).
    m0 = col - inv_tau - 1.0
    m, l, npos, acc = lax.fori_loop(0, n_tiles, pass1, (m0, col, col, acc0))
    has_neg = l > 0
    log_neg = jnp.where(has_neg, m + jnp.log(jnp.where(has_neg, l, 1.0)), -jnp.inf)
    if with_grad:  # E_i, parked in the output block so that one (ta, D) accumulator is live at a time
        out_refs[4][...] = acc / jnp.where(has_neg, l, 1.0)

    def pass2(j, carry):
        pos, _ = labels(j)

        def visit(carry):
            total, hsum, acc = carry
            zc_t = features(j)
            softplus, sigmoid = _softplus_sigmoid(log_neg - _dot_nt(za, zc_t, precision) * inv_tau)
            sig = jnp.where(pos, sigmoid, 0.0)
            total = total + jnp.sum(jnp.where(pos, softplus, 0.0), axis=1, keepdims=True)
            if with_grad:
                acc = acc + _dot_nn(sig.astype(zc_t.dtype), zc_t, precision)
            return total, hsum + jnp.sum(sig, axis=1, keepdims=True), acc

        any_pos = jnp.max(jnp.max(pos.astype(jnp.int32), axis=1, keepdims=True), axis=0, keepdims=True)
        return lax.cond(any_pos[0, 0] > 0, visit, lambda c: c, carry)

    total, hsum, acc = lax.fori_loop(0, n_tiles, pass2, (col, col, jnp.zeros_like(acc0)))
    inv_p = 1.0 / jnp.maximum(npos, 1.0)
    out_refs[0][...] = total * inv_p
    out_refs[1][...] = npos
    if with_grad:
        h = hsum * inv_p
        out_refs[2][...] = log_neg
        out_refs[3][...] = h
        out_refs[4][...] = (h * out_refs[4][...] - acc * inv_p) * inv_tau


def _contrast_kernel(inv_tau_ref, zc_ref, lc_ref, za_ref, la_ref, sa_ref, ln_ref, wp_ref, h_ref, dzc_ref, *,
                     ta, precision):
    """Kernel B (module doc) for one contrast tile: dz_c = G^T z_a / tau, unscaled by 1 / K."""
    zc, lc = zc_ref[...], lc_ref[...]  # (tc, D), (tc, 1)
    inv_tau = inv_tau_ref[...]
    tc, dp = zc.shape
    jc = pl.program_id(1) * tc + lax.broadcasted_iota(jnp.int32, (tc, 1), 0)

    def step(i, acc):
        row = lambda ref: ref[pl.ds(i, 1), :]  # (1, ta): row i of a (M / ta, ta) per-anchor layout
        za_t = za_ref[pl.ds(pl.multiple_of(i * ta, ta), ta), :]
        log_neg, w_pos, h = row(ln_ref), row(wp_ref), row(h_ref)
        pos, neg = _masks(row(la_ref), lc, row(sa_ref), jc)
        s = _dot_nt(zc, za_t, precision) * inv_tau  # (tc, ta) = s^T
        _, sigmoid = _softplus_sigmoid(log_neg - s)
        g = jnp.where(pos, -sigmoid * w_pos, h * jnp.exp(jnp.where(neg, s - log_neg, -jnp.inf)))
        return acc + _dot_nn((g * inv_tau).astype(za_t.dtype), za_t, precision)

    dzc_ref[...] = lax.fori_loop(0, za_ref.shape[0] // ta, step, jnp.zeros((tc, dp), _F32))


def _compiler_kwargs(backend, vmem_bytes):
    if backend == "interpret":
        return {"interpret": True}
    if backend == "triton":
        return {"compiler_params": pltriton.CompilerParams(**TRITON_PARAMS)}
    # Mosaic: ask for what the blocks need (+ room for the score tiles); the chip's VMEM is the hard limit.
    return {"compiler_params": pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"),
                                                    vmem_limit_bytes=int(vmem_bytes) + (16 << 20))}


def _pad(x, length, width, value):
    widths = [(0, 0), (0, length - x.shape[1])] + ([(0, width - x.shape[2])] if x.ndim == 3 else [])
    return jnp.pad(x, widths, constant_values=value)


def _kernels(backend, tiles, precision, with_grad):
    """The function (za, la, sa, zc, lc, inv_tau) -> (L(i), |P_i|[, dz_a, dz_c]) of one back end; the outputs
    are unpadded, float32, and the gradients not yet scaled by 1 / K."""

    def run(za, la, sa, zc, lc, inv_tau):
        b, m, d = za.shape
        n = zc.shape[1]
        ta, tc, mp, np_, dp = _layout(backend, m, n, d, tiles)
        za, zc = _pad(za, mp, dp, 0), _pad(zc, np_, dp, 0)
        la, sa, lc = _pad(la, mp, 0, -1), _pad(sa, mp, 0, -1), _pad(lc, np_, 0, -1)
        inv = jnp.reshape(inv_tau.astype(_F32), (1, 1))
        item = za.dtype.itemsize
        scalar = pl.BlockSpec((1, 1), lambda g, t: (0, 0))
        column = pl.BlockSpec((None, ta, 1), lambda g, t: (g, t, 0))
        # A group's whole contrast (kernel A) or anchor (kernel B) set: one block per group. On Mosaic it is copied
        # to VMEM, single-buffered (its index changes once per group; double-buffering would need 2x the VMEM).
        single = {"pipeline_mode": pl.Buffered(1)} if backend == "mosaic" else {}
        whole = lambda shape: pl.BlockSpec((None,) + shape, lambda g, t: (g, 0, 0), **single)
        n_stats = 4 if with_grad else 2
        outs = pl.pallas_call(
            functools.partial(_anchor_kernel, tc=tc, with_grad=with_grad, precision=precision),
            grid=(b, mp // ta),
            in_specs=[scalar, pl.BlockSpec((None, ta, dp), lambda g, t: (g, t, 0)), column, column,
                      whole((np_, dp)), whole((np_ // tc, tc))],
            out_specs=[column] * n_stats + ([pl.BlockSpec((None, ta, dp), lambda g, t: (g, t, 0))]
                                            if with_grad else []),
            out_shape=[jax.ShapeDtypeStruct((b, mp, 1), _F32)] * n_stats
            + ([jax.ShapeDtypeStruct((b, mp, dp), _F32)] if with_grad else []),
            name="stcl_anchor_tiles", **_compiler_kwargs(backend, np_ * (dp * item + 4) + 4 * ta * dp * 8),
        )(inv, za, la[..., None], sa[..., None], zc, lc.reshape(b, np_ // tc, tc))
        loss, npos = outs[0][:, :m, 0], outs[1][:, :m, 0]
        if not with_grad:
            return loss, npos
        log_neg, h, dza = outs[2], outs[3], outs[4]
        rows = lambda x: x.reshape(b, mp // ta, ta)  # (B, Mp[, 1]) -> the per-anchor row layout: a free reshape
        dzc = pl.pallas_call(
            functools.partial(_contrast_kernel, ta=ta, precision=precision),
            grid=(b, np_ // tc),
            in_specs=[scalar, pl.BlockSpec((None, tc, dp), lambda g, t: (g, t, 0)),
                      pl.BlockSpec((None, tc, 1), lambda g, t: (g, t, 0)), whole((mp, dp))]
            + [whole((mp // ta, ta))] * 5,
            out_specs=pl.BlockSpec((None, tc, dp), lambda g, t: (g, t, 0)),
            out_shape=jax.ShapeDtypeStruct((b, np_, dp), _F32),
            name="stcl_contrast_tiles", **_compiler_kwargs(backend, mp * (dp * item + 20) + 4 * tc * dp * 8),
        )(inv, zc, lc[..., None], za, rows(la), rows(sa), rows(log_neg), rows(1.0 / jnp.maximum(outs[1], 1.0)),
          rows(h))
        return loss, npos, dza[:, :m, :d], dzc[:, :n, :d]

    return run


def _per_platform(za, la, sa, zc, lc, inv_tau, backend, tiles, precision, with_grad):
    args = (za, la, sa, zc, lc, inv_tau)
    if backend != "auto":
        return _kernels(backend, tiles, precision, with_grad)(*args)
    branch = functools.partial(_kernels, tiles=tiles, precision=precision, with_grad=with_grad)
    return lax.platform_dependent(*args, cpu=branch("interpret"), cuda=branch("triton"), rocm=branch("triton"),
                                  tpu=branch("mosaic"), default=branch("interpret"))


# A `pallas_call` has no partitioning rule: under batch sharding XLA would gather every group onto every device.
# As one op that partitions along the group axis B (and replicates M, N, D), each device runs its own groups.
_dispatch_op = custom_partitioning(_per_platform, static_argnums=(6, 7, 8, 9))


def _group_shardings(mesh, arg_shapes, result_shape):
    """Argument and result shardings: the features' sharding of the group axis, everything else replicated."""
    sharding = arg_shapes[0].sharding
    spec = getattr(sharding, "spec", None)  # None: not a named sharding (no mesh to read it on): replicate
    groups = spec[0] if spec else None
    on_groups = lambda ndim: NamedSharding(mesh, PartitionSpec(*((groups,) + (None,) * (ndim - 1))[:ndim]))
    return tuple(on_groups(a.ndim) for a in arg_shapes), tuple(on_groups(r.ndim) for r in result_shape)


def _partition(backend, tiles, precision, with_grad, mesh, arg_shapes, result_shape):
    args, results = _group_shardings(mesh, arg_shapes, result_shape)
    per_shard = lambda *a: _per_platform(*a, backend, tiles, precision, with_grad)
    return mesh, per_shard, results, args


def _infer(backend, tiles, precision, with_grad, mesh, arg_shapes, result_shape):
    return _group_shardings(mesh, arg_shapes, result_shape)[1]


def _sharding_rule(backend, tiles, precision, with_grad, mesh, operand_types, result_types):
    """Shardy's rule: b (groups) passes through; m, n, d must stay whole."""
    del backend, tiles, precision, mesh, operand_types, result_types
    bmd, bm, bnd, bn = (ArrayMapping(*f) for f in ("bmd", "bm", "bnd", "bn"))
    return SdyShardingRule((bmd, bm, bm, bnd, bn, ArrayMapping()), (bm, bm, bmd, bnd) if with_grad else (bm, bm),
                           need_replication_factors=("m", "d", "n"))  # in order of appearance (Shardy)


_dispatch_op.def_partition(partition=_partition, infer_sharding_from_operands=_infer, sharding_rule=_sharding_rule)


def _dispatch(backend, tiles, precision, with_grad, *args):
    return _dispatch_op(*args, backend, tiles, precision, with_grad)


def _kept(la, npos):
    return (la >= 0) & (npos > 0)


def _mean(loss, npos, la):
    kept = _kept(la, npos)
    return jnp.sum(jnp.where(kept, loss, 0.0)) / jnp.maximum(jnp.sum(kept, dtype=_F32), 1.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _contrast(za, la, sa, zc, lc, inv_tau, backend, tiles, precision):
    loss, npos = _dispatch(backend, tiles, precision, False, za, la, sa, zc, lc, inv_tau)
    return _mean(loss, npos, la)


def _fwd(za, la, sa, zc, lc, inv_tau, backend, tiles, precision):
    loss, npos, dza, dzc = _dispatch(backend, tiles, precision, True, za, la, sa, zc, lc, inv_tau)
    scale = 1.0 / jnp.maximum(jnp.sum(_kept(la, npos), dtype=_F32), 1.0)
    # As "rows": the gradient comes from the forward, saved in the input dtype; the backward is a multiply.
    return _mean(loss, npos, la), ((dza * scale).astype(za.dtype), (dzc * scale).astype(zc.dtype), inv_tau)


def _bwd(backend, tiles, precision, res, ct):
    dza, dzc, inv_tau = res
    ct = ct.astype(_F32)
    return ((ct * dza.astype(_F32)).astype(dza.dtype), None, None, (ct * dzc.astype(_F32)).astype(dzc.dtype), None,
            jnp.zeros_like(inv_tau))


_contrast.defvjp(_fwd, _bwd)


def pallas_contrast(za, la, sa, zc, lc, inv_tau, *, backend="auto", tiles=None, precision=None):
    """The scalar STCL loss of `contrast_rows.rows_contrast` (same arguments, no padding needed), by the kernels.

    za (B, M, D), zc (B, N, D) unit vectors in the compute dtype (float32 or bfloat16); la (B, M), sa (B, M),
    lc (B, N) int32 (-1 = void / no self); inv_tau a float32 scalar (may be traced; no gradient). backend: one of
    `BACKENDS` (module doc); tiles: (anchor tile, contrast tile), powers of two, default `TILES[backend]`.
    Differentiable w.r.t. za and zc.
    """
    if backend not in BACKENDS:
        raise ValueError(f"stcl_contrast: backend must be one of {BACKENDS}, got {backend!r}")
    tiles = None if tiles is None else tuple(int(t) for t in tiles)
    return _contrast(za, la, sa, zc, lc, jnp.asarray(inv_tau, _F32), backend, tiles, precision)


def lowering_cases(small: bool):
    """[(name, fn, args)] for the kernels' lowering check (`python -m stcl_jax.kernels`): the loss and its
    gradient w.r.t. both feature sets, backend "auto" (the lowering platform picks the kernels); args are
    ShapeDtypeStructs. small: tiny shapes; else Swin-L at a 768 crop, 4 clips of 2 frames, D = 512, bf16, with
    the embeddings at stride 8 (96 x 96: M = 9,216, N = 18,432 per clip) and stride 4 (192 x 192)."""
    shapes = [("small", 2, 40, 100, 24, jnp.float32)] if small else [
        ("swin_l_stride8", 4, 96 * 96, 2 * 96 * 96, 512, jnp.bfloat16),
        ("swin_l_stride4", 4, 192 * 192, 2 * 192 * 192, 512, jnp.bfloat16)]

    def loss_and_grads(za, la, sa, zc, lc, inv_tau):
        return jax.value_and_grad(pallas_contrast, argnums=(0, 3))(za, la, sa, zc, lc, inv_tau)

    cases = []
    for name, b, m, n, d, dtype in shapes:
        f, i = (lambda *s: jax.ShapeDtypeStruct(s, dtype)), (lambda *s: jax.ShapeDtypeStruct(s, jnp.int32))
        cases.append((f"stcl_contrast_{name}", loss_and_grads,
                      (f(b, m, d), i(b, m), i(b, m), f(b, n, d), i(b, n), jax.ShapeDtypeStruct((), _F32))))
    return cases

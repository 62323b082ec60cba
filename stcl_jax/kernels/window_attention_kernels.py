"""The Pallas kernels of `window_attention` and their layout: one device, one back end.

Kernels. Grid (heads, images, window groups of the image): one program owns `group` consecutive windows of one
image and one head and loops over them; inside a window it loops over query tiles of `tile_q` rows against the *whole* padded key range
(N <= 256 for Swin's windows, so a full score row fits in one block and the softmax is exact in one pass: no
online rescaling and no log-sum-exp residual).
  forward:  S = q_t k^T + bias_t [+ mask_t] (fp32) -> P = softmax(S) -> o_t = P v       (2 matmuls per tile)
  backward: recomputes S and P, dP = do_t v^T, dS = P * (dP - rowsum(P * dP)),
            dq_t = dS k, dk += dS^T q_t, dv += P^T do_t (fp32 accumulators per window),   (5 matmuls per tile)
            dbias += dS into a float32 (rows, cols) block: on GPU each program's own (summed over the image's
            groups outside the kernel: no atomics, programs never share an output block), on TPU one block per
            image and head that the image's groups accumulate in VMEM (the grid runs in order there).
rowsum(P * dP) equals rowsum(do * o) because the row is complete, so the backward needs neither o nor a
log-sum-exp: only q, k, v, the bias and the cotangent.

Padding (both variants pad in XLA, fused into the layout transposes; padded keys get a -1e30 bias, padded
queries, head channels and windows are zeros, and none of them reaches a real output or gradient):
  "gpu" (Triton): Triton tensors must have power-of-two sizes and tl.dot dimensions >= 16, so the key range is
    one power-of-two block, cols = next_pow2(N), the query range is cut in tiles of tile_q = 16 rows (rows =
    round_up(N, 16)) and d is padded to a power of two >= 16. Score elements computed per real one:
    (rows * cols) / N^2 = 144 * 256 / 144^2 = 1.78 at window 12 (64 * 64 / 49^2 = 1.71 at window 7).
    The alternatives: one square power-of-two block per window (256^2 / 144^2 = 3.16, and a 256x256 fp32 tile
    per program), or square 32-tiles over a 160 padding (1.23) or 16-tiles over 144 (1.00) with an online
    softmax, which needs a log-sum-exp residual and a second sweep for dq in the backward (7 matmuls instead
    of 5 per tile), and 16x16 tiles keep tensor cores poorly fed. Not measured on a GPU yet: `tile_q`,
    `group`, warps and stages are arguments so bench/attention_kernel.py can sweep them.
  "tpu" (Mosaic): one tile per window, queries and keys both padded to 128 multiples (rows = cols = 256 at
    window 12: 3.16 score elements per real one; 128 at window 7: 6.8), d unpadded up to 128. Aligned tiles
    are what Mosaic is known to handle: the backward's P^T and dS^T transposes (as in jax's own Pallas TPU
    flash attention, whose blocks are 128 multiples) and padded transposes were unsupported (jax issue #18370);
    rows of 16 would cut the waste to 1.78 but are unverified without a TPU. The shift mask comes from one-hot
    region ids through a (rows, 128) x (128, cols) matmul instead of comparing id vectors, since Mosaic handles
    2D matmuls better than 1D id vectors turned into columns; the GPU variant compares int32 id vectors.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from stcl_jax.kernels import backend as backends

TILE_Q = 16               # query rows per tile on GPU: Triton's smallest dot dimension
REGIONS = 128             # TPU: one-hot width of the region ids (9 regions), the mask matmul's lane-wide K
SHIFT_MASK = -100.0       # added between tokens of different regions (official Swin value)
PAD_BIAS = -1e30          # bias of padded key columns: exp() underflows to exactly 0
VARIANT = {"triton": "gpu", "mosaic": "tpu", "interpret": "gpu"}
# Default windows per program: the largest power of two <= `largest` that keeps >= `programs` programs.
GROUPING = {("gpu", False): (4096, 8), ("gpu", True): (512, 32), ("tpu", False): (1, 8), ("tpu", True): (1, 8)}
F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one call maps onto kernel blocks (everything static)."""
    variant: str
    images: int
    windows: int           # nW per image
    tokens: int            # N
    heads: int
    head_dim: int          # d
    rows: int              # query rows per window after padding
    cols: int              # key columns per window after padding
    depth: int             # head channels after padding
    tile_q: int            # query rows per tile (rows on TPU: one tile)
    group: int             # windows per program
    windows_padded: int    # nW rounded up to a multiple of group

    @property
    def per_image(self) -> int:
        return self.windows_padded // self.group

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.heads, self.images, self.per_image


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def make_layout(shape, variant: str, *, backward: bool, tile_q: int | None = None,
                group: int | None = None) -> Layout:
    b, nw, n, h, d = shape
    if variant == "gpu":
        cols, depth = max(16, _next_pow2(n)), max(16, _next_pow2(d))
        tq = tile_q or TILE_Q
        if tq < 16 or tq != _next_pow2(tq) or tq > cols:
            raise ValueError(f"tile_q={tq}: must be a power of two in [16, {cols}] (the padded key range)")
        rows = _round_up(n, tq)
    elif variant == "tpu":
        rows = cols = _round_up(n, 128)
        depth = d if d <= 128 else _round_up(d, 128)
        if tile_q not in (None, rows):
            raise ValueError(f"tile_q={tile_q}: the TPU variant uses one tile of the whole window ({rows} rows)")
        tq = rows
    else:
        raise ValueError(f"variant={variant!r}: expected 'gpu' or 'tpu'")
    if group is None:
        programs, largest = GROUPING[(variant, backward)]
        per_program = max(1, min(largest, b * nw * h // programs))
        group = 1 << (per_program.bit_length() - 1)
    if group < 1:
        raise ValueError(f"group={group}: must be >= 1 window per program")
    group = min(group, nw)
    return Layout(variant, b, nw, n, h, d, rows, cols, depth, tq, group, _round_up(nw, group))


# ------------------------------------------------------------------------------------------------ XLA side
def _blocks(x, lay: Layout, rows: int):
    """(B, nW, N, heads, d) -> (heads, B * nWp, rows, depth), zero-padded."""
    b, nw, n, _, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, lay.windows_padded - nw), (0, rows - n), (0, 0), (0, lay.depth - d)))
    return x.transpose(3, 0, 1, 2, 4).reshape(lay.heads, b * lay.windows_padded, rows, lay.depth)


def _unblocks(x, lay: Layout):
    """Inverse of `_blocks`: (heads, B * nWp, rows', depth) -> (B, nW, N, heads, d)."""
    x = x.reshape(lay.heads, lay.images, lay.windows_padded, x.shape[2], lay.depth).transpose(1, 2, 3, 0, 4)
    return x[:, :lay.windows, :lay.tokens, :, :lay.head_dim]


def _padded_bias(bias, lay: Layout):
    n = lay.tokens
    padded = jnp.pad(bias.astype(F32), ((0, 0), (0, lay.rows - n), (0, lay.cols - n)))
    return jnp.where(lax.broadcasted_iota(jnp.int32, padded.shape, 2) >= n, F32(PAD_BIAS), padded)


def _mask_inputs(region_ids, lay: Layout) -> list:
    """The shift-mask operands, per window of one image, from the (nW, N) ids (built in the graph, no constants):
    GPU: int32 ids (nWp, cols); TPU: bf16 one-hot ids of the queries (nWp, rows, 16) and transposed ones of the
    keys (nWp, 16, cols). Padded tokens get id -1 (an all-zero one-hot row)."""
    if region_ids is None:
        return []
    ids = jnp.pad(jnp.asarray(region_ids, jnp.int32), ((0, lay.windows_padded - lay.windows),
                                                       (0, lay.cols - lay.tokens)), constant_values=-1)
    if lay.variant == "gpu":
        return [ids]
    onehot = (ids[..., None] == lax.iota(jnp.int32, REGIONS)).astype(jnp.bfloat16)
    return [onehot[:, :lay.rows], onehot.transpose(0, 2, 1)]


def _specs(lay: Layout, masks, *, backward: bool):
    """BlockSpecs of (q, k, v, [do,] bias, masks...) over the grid (heads, images, groups of the image)."""
    g, per_image = lay.group, lay.per_image
    qspec = pl.BlockSpec((None, g, lay.rows, lay.depth), lambda h, b, j: (h, b * per_image + j, 0, 0))
    kspec = pl.BlockSpec((None, g, lay.cols, lay.depth), lambda h, b, j: (h, b * per_image + j, 0, 0))
    specs = [qspec, kspec, kspec] + ([qspec] if backward else [])
    specs.append(pl.BlockSpec((None, lay.rows, lay.cols), lambda h, b, j: (h, 0, 0)))
    for m in masks:
        tail = (0,) * (m.ndim - 1)
        specs.append(pl.BlockSpec((g, *m.shape[1:]), lambda h, b, j, tail=tail: (j, *tail)))
    return qspec, kspec, specs


def _cost(lay: Layout, matmuls: int, masks, operands) -> pl.CostEstimate:
    """Padded (executed) matmul FLOPs: `matmuls` of contraction depth per score, plus the TPU mask's."""
    elements = lay.images * lay.windows_padded * lay.heads * lay.rows * lay.cols
    contraction = matmuls * lay.depth + (REGIONS if masks and lay.variant == "tpu" else 0)
    return pl.CostEstimate(flops=2 * elements * contraction, transcendentals=elements,
                           bytes_accessed=sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in operands))


# ------------------------------------------------------------------------------------------------ kernels
def _dot(a, b, contract=(1, 0)):
    precision = lax.Precision.HIGHEST if a.dtype == F32 else None
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), precision=precision,
                           preferred_element_type=F32)


def _loop(count: int, body, init):
    return body(0, init) if count == 1 else lax.fori_loop(0, count, body, init)


def _rows(lay: Layout, i):
    start = i * lay.tile_q if isinstance(i, int) else pl.multiple_of(i * lay.tile_q, lay.tile_q)
    return pl.ds(start, lay.tile_q)


def _shift_mask(lay: Layout, masks, w, r):
    if lay.variant == "gpu":
        (ids_ref,) = masks
        same = ids_ref[w, r][:, None] == ids_ref[w, :][None, :]
        return jnp.where(same, F32(0.0), F32(SHIFT_MASK))
    query_ref, key_ref = masks
    return (1.0 - _dot(query_ref[w, r, :], key_ref[w])) * SHIFT_MASK      # the matmul gives 1 iff same region


def _probs(lay: Layout, q_ref, k_ref, bias_ref, masks, w, r):
    """Float32 softmax of one query tile's scores against every key of window w."""
    s = _dot(q_ref[w, r, :], k_ref[w], contract=(1, 1)) + bias_ref[r, :]
    if masks:
        s = s + _shift_mask(lay, masks, w, r)
    e = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
    return e / jnp.sum(e, axis=1, keepdims=True)


def _forward_kernel(lay: Layout, *refs):
    q_ref, k_ref, v_ref, bias_ref, *masks, o_ref = refs

    def window(w, carry):
        def tile(i, c):
            r = _rows(lay, i)
            v = v_ref[w]
            p = _probs(lay, q_ref, k_ref, bias_ref, masks, w, r)
            o_ref[w, r, :] = _dot(p.astype(v.dtype), v).astype(o_ref.dtype)
            return c
        return _loop(lay.rows // lay.tile_q, tile, carry)

    _loop(lay.group, window, 0)


def _backward_kernel(lay: Layout, *refs):
    q_ref, k_ref, v_ref, do_ref, bias_ref, *masks, dq_ref, dk_ref, dv_ref, db_ref = refs
    tiles = lay.rows // lay.tile_q

    def zero(i, c):
        db_ref[_rows(lay, i), :] = jnp.zeros((lay.tile_q, lay.cols), F32)
        return c

    def zero_block():
        _loop(tiles, zero, 0)

    if lay.variant == "gpu":        # every program owns its bias-gradient block
        zero_block()
    else:                           # one block per image and head, accumulated over the image's groups
        pl.when(pl.program_id(2) == 0)(zero_block)

    def window(w, carry):
        def tile(i, acc):
            r = _rows(lay, i)
            q, k, v, do = q_ref[w, r, :], k_ref[w], v_ref[w], do_ref[w, r, :]
            p = _probs(lay, q_ref, k_ref, bias_ref, masks, w, r)
            dp = _dot(do, v, contract=(1, 1))
            ds = p * (dp - jnp.sum(p * dp, axis=1, keepdims=True))
            db_ref[r, :] += ds
            ds_in, p_in = ds.astype(q.dtype), p.astype(q.dtype)
            dq_ref[w, r, :] = _dot(ds_in, k).astype(dq_ref.dtype)
            return acc[0] + _dot(ds_in.T, q), acc[1] + _dot(p_in.T, do)

        zeros = jnp.zeros((lay.cols, lay.depth), F32)
        dk, dv = _loop(tiles, tile, (zeros, zeros))
        dk_ref[w] = dk.astype(dk_ref.dtype)
        dv_ref[w] = dv.astype(dv_ref.dtype)
        return carry

    _loop(lay.group, window, 0)


# ------------------------------------------------------------------------------------------------ calls
def forward_call(q, k, v, bias, region_ids, *, backend, variant=None, tile_q=None, group=None, num_warps=4,
                 num_stages=None):
    """The forward kernel on one device: (B, nW, N, heads, d) output in q's dtype."""
    lay = make_layout(q.shape, variant or VARIANT[backend], backward=False, tile_q=tile_q, group=group)
    masks = _mask_inputs(region_ids, lay)
    qspec, _, in_specs = _specs(lay, masks, backward=False)
    operands = [_blocks(q, lay, lay.rows), _blocks(k, lay, lay.cols), _blocks(v, lay, lay.cols),
                _padded_bias(bias, lay), *masks]
    out = pl.pallas_call(
        functools.partial(_forward_kernel, lay), out_shape=jax.ShapeDtypeStruct(operands[0].shape, q.dtype),
        grid=lay.grid, in_specs=in_specs, out_specs=qspec, name="swin_window_attention_fwd",
        cost_estimate=_cost(lay, 2, masks, operands),
        **backends.call_options(backend, ("parallel",) * 3, num_warps=num_warps, num_stages=num_stages))(*operands)
    return _unblocks(out, lay)


def backward_call(q, k, v, bias, dout, region_ids, *, backend, variant=None, tile_q=None, group=None, num_warps=8,
                  num_stages=None):
    """The backward kernel on one device: dq, dk, dv and the bias gradient of each image, (B, heads, N, N) float32
    (the caller sums over the batch, across devices when it is sharded)."""
    lay = make_layout(q.shape, variant or VARIANT[backend], backward=True, tile_q=tile_q, group=group)
    masks = _mask_inputs(region_ids, lay)
    qspec, kspec, in_specs = _specs(lay, masks, backward=True)
    operands = [_blocks(q, lay, lay.rows), _blocks(k, lay, lay.cols), _blocks(v, lay, lay.cols),
                _blocks(dout.astype(q.dtype), lay, lay.rows), _padded_bias(bias, lay), *masks]
    shapes = [jax.ShapeDtypeStruct(operands[i].shape, q.dtype) for i in (0, 1, 2)]
    # Bias-gradient blocks: GPU: one per program (B, groups of the image, heads, ...), summed below; TPU: one per
    # image and head, revisited by the image's groups (the grid's last axis runs in order there, "arbitrary").
    split = lay.per_image if lay.variant == "gpu" else 1
    shapes.append(jax.ShapeDtypeStruct((lay.images, split, lay.heads, lay.rows, lay.cols), F32))
    bias_spec = pl.BlockSpec((None, None, None, lay.rows, lay.cols),
                             lambda h, b, j: (b, j if split > 1 else 0, h, 0, 0))
    semantics = ("parallel", "parallel", "parallel" if lay.variant == "gpu" else "arbitrary")
    dq, dk, dv, db = pl.pallas_call(
        functools.partial(_backward_kernel, lay), out_shape=shapes, grid=lay.grid,
        in_specs=in_specs, out_specs=[qspec, kspec, kspec, bias_spec], name="swin_window_attention_bwd",
        cost_estimate=_cost(lay, 5, masks, operands),
        **backends.call_options(backend, semantics, num_warps=num_warps, num_stages=num_stages))(*operands)
    n = lay.tokens
    db = db.sum(1)[:, :, :n, :n]
    return _unblocks(dq, lay), _unblocks(dk, lay), _unblocks(dv, lay), db

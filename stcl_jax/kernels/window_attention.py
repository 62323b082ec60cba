"""Fused Swin window attention: a Pallas forward kernel and a backward kernel under one `jax.custom_vjp`.

    out = softmax(q k^T + bias [+ shift mask]) v        per window and head, q already scaled by the caller

q, k, v: (B, nW, N, heads, d) (the layout of `stcl_jax.models.swin.WindowAttention`), bias: (heads, N, N) float32
(the relative-position bias, gathered from its table by the caller, who also gets its gradient back through the
gather), region_ids: None (regular windows) or the (nW, N) per-token region ids of shifted windows
(`window_region_ids`, a NumPy constant): tokens of different regions get -100 added, as in the official code.
The shift mask is built inside the kernel from those per-token ids; no (nW, N, N) mask and no (B, nW, heads, N,
N) score array is ever written to HBM. Softmax statistics are float32, the output is in q's dtype. The custom
VJP saves only its inputs q, k, v and bias: no probabilities (the XLA path keeps them in bf16) and no output.
Kernels, tiling and padding: window_attention_kernels.py.

Back end ("triton" | "mosaic" | "interpret", backend.py): None picks it by the platform lowered for; the
interpret back end runs either variant's kernel body ("gpu" by default, `variant="tpu"` for Mosaic's) on the CPU.
Sharded batches: each kernel call is `sharding.batch_partitioned` (every device runs its own images; the bias
gradient is summed over the batch outside, an all-reduce when the batch is split).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax.kernels import backend as backends
from stcl_jax.kernels.sharding import batch_partitioned
from stcl_jax.kernels.window_attention_kernels import F32, backward_call, forward_call


@dataclasses.dataclass(frozen=True)
class Options:
    """The static settings of one kernel call (hashable: the static argument of the partitioned op)."""
    masked: bool = False                 # shifted windows: the region-id operand is used
    backend: str | None = None
    variant: str | None = None
    tile_q: int | None = None
    group: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None

    def call_kwargs(self) -> dict:
        return dict(variant=self.variant, tile_q=self.tile_q, group=self.group, num_warps=self.num_warps,
                    num_stages=self.num_stages)


def _options(region_ids, backend, **settings) -> Options:
    if backend is not None:
        backends.check(backend)
    return Options(region_ids is not None, backend, **settings)


def _ids_operand(region_ids, shape):
    """The (nW, N) int32 region ids as an array operand (zeros, unused, for regular windows): the partitioned op
    may not close over constants."""
    return jnp.asarray(np.zeros(shape[1:3], np.int32) if region_ids is None else region_ids, jnp.int32)


def _check(q, k, v, bias, region_ids, dout=None):
    arrays = (q, k, v) + (() if dout is None else (dout,))
    if q.ndim != 5 or any(a.shape != q.shape for a in arrays) or any(a.dtype != q.dtype for a in (k, v)):
        raise ValueError("window attention: q, k, v (and dout) must share one (B, nW, N, heads, d) shape and q, k, "
                         f"v one dtype, got {[(a.shape, str(a.dtype)) for a in arrays]}")
    _, nw, n, h, _ = q.shape
    if bias.shape != (h, n, n):
        raise ValueError(f"window attention: bias shape {bias.shape}, expected (heads, N, N) = {(h, n, n)}")
    if region_ids is not None and np.shape(region_ids) != (nw, n):
        raise ValueError(f"window attention: region_ids shape {np.shape(region_ids)}, expected (nW, N) = "
                         f"{(nw, n)}")


def _on_backend(call, opts: Options, *arrays):
    """`call(*arrays[:-1], region_ids)` with the options' back end, or under `backends.by_platform` when it is
    None; the last array is the region-id operand (None to the kernels for regular windows)."""
    def run(*a, backend):
        *tensors, ids = a
        return call(*tensors, ids if opts.masked else None, backend=backend, **opts.call_kwargs())

    if opts.backend is None:
        return backends.by_platform(lambda be: functools.partial(run, backend=be), *arrays)
    return run(*arrays, backend=opts.backend)


# Batch-split: q, k, v (dout); kept whole: the bias (3) and the ids (4 / 5).
_forward_op = batch_partitioned(lambda *a: _on_backend(forward_call, a[-1], *a[:-1]), n_arrays=5, n_static=1,
                                replicated=(3, 4))
_backward_op = batch_partitioned(lambda *a: _on_backend(backward_call, a[-1], *a[:-1]), n_arrays=6, n_static=1,
                                 replicated=(3, 5))


def attention_forward(q, k, v, bias, region_ids=None, *, backend=None, variant=None, tile_q=None, group=None,
                      num_warps=4, num_stages=None):
    """The forward kernel alone: (B, nW, N, heads, d) output in q's dtype (no residuals)."""
    _check(q, k, v, bias, region_ids)
    opts = _options(region_ids, backend, variant=variant, tile_q=tile_q, group=group, num_warps=num_warps,
                    num_stages=num_stages)
    return _forward_op(q, k, v, bias, _ids_operand(region_ids, q.shape), opts)


def attention_backward(q, k, v, bias, dout, region_ids=None, *, backend=None, variant=None, tile_q=None,
                       group=None, num_warps=8, num_stages=None):
    """The backward kernel alone: (dq, dk, dv, dbias) for the cotangent `dout` of the output."""
    _check(q, k, v, bias, region_ids, dout)
    opts = _options(region_ids, backend, variant=variant, tile_q=tile_q, group=group, num_warps=num_warps,
                    num_stages=num_stages)
    dq, dk, dv, db_per_image = _backward_op(q, k, v, bias, dout.astype(q.dtype), _ids_operand(region_ids, q.shape),
                                            opts)
    return dq, dk, dv, db_per_image.sum(0).astype(bias.dtype)


def window_attention(q, k, v, bias, region_ids=None, *, backend=None, variant=None, tile_q=None,
                     groups=(None, None), num_warps=(4, 8), num_stages=(None, None)):
    """softmax(q k^T + bias [+ shift mask]) v, differentiable in q, k, v and bias (see the module docstring).

    `groups`: windows per program of the (forward, backward) kernels (None: the defaults of `make_layout`);
    `num_warps`, `num_stages`: Triton warps and software-pipelining stages of the (forward, backward) kernels (GPU
    only; None stages: Pallas's default, 3). Compiled for sm_90 with triton 3.8 at Swin-L stage 1, the backward
    spills registers with 4 warps and not with 8; 3 stages take ~110 KiB of shared memory, 1 stage ~35 KiB."""
    _check(q, k, v, bias, region_ids)
    options = dict(region_ids=region_ids, backend=backend, variant=variant, tile_q=tile_q)

    @jax.custom_vjp
    def attend(q, k, v, bias):
        return attention_forward(q, k, v, bias, group=groups[0], num_warps=num_warps[0], num_stages=num_stages[0],
                                 **options)

    def attend_fwd(q, k, v, bias):
        return attend(q, k, v, bias), (q, k, v, bias)

    def attend_bwd(residuals, dout):
        return attention_backward(*residuals, dout, group=groups[1], num_warps=num_warps[1],
                                  num_stages=num_stages[1], **options)

    attend.defvjp(attend_fwd, attend_bwd)
    return attend(q, k, v, bias)


def window_region_ids(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(num_windows, N) int8 region id (0..8) of every token of the rolled, padded (height, width) map.

    Regions are the 3x3 slices [0, -window), [-window, -shift), [-shift, end) along each axis of the padded map;
    tokens of a window may attend only to tokens from the same region (official Swin / mmseg construction).
    """
    def regions(n):
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int8) + (idx >= n - shift).astype(np.int8)

    img = regions(height)[:, None] * 3 + regions(width)[None, :]
    win = img.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    return win.reshape(-1, window * window)


# ------------------------------------------------------------------------------------------------ lowering CLI
SWIN_L = dict(crop=768, images=8, window=12, dims=(192, 384, 768, 1536), heads=(6, 12, 24, 48))
SMALL = dict(crop=96, images=1, window=12, dims=(32, 64), heads=(1, 2))


def stage_cases(spec: dict):
    """(tag, (B, nW, N, heads, d) shape, region ids or None) of every stage of `spec` (SWIN_L or SMALL), regular
    and shifted windows, the feature maps padded to window multiples as SwinBlock does."""
    ws, cases = spec["window"], []
    for stage, (dim, heads) in enumerate(zip(spec["dims"], spec["heads"])):
        tokens = spec["crop"] // 4 // 2**stage
        side = -(-tokens // ws) * ws
        shape = (spec["images"], (side // ws) ** 2, ws * ws, heads, dim // heads)
        for shifted in (False, True):
            ids = window_region_ids(side, side, ws, ws // 2) if shifted else None
            cases.append((f"stage{stage + 1} {'shifted' if shifted else 'regular'}", shape, ids))
    return cases


def lowering_cases(small: bool):
    """(name, fn, args) per kernel for `python -m stcl_jax.kernels --lower`: the forward and the backward kernel
    of every Swin-L stage (768 crop, 8 images, window 12, bf16; SMALL with `small`), regular and shifted."""
    cases = []
    for tag, shape, ids in stage_cases(SMALL if small else SWIN_L):
        x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
        bias = jax.ShapeDtypeStruct((shape[3], shape[2], shape[2]), F32)
        cases.append((f"window_attention.fwd {tag}", functools.partial(attention_forward, region_ids=ids),
                      (x, x, x, bias)))
        cases.append((f"window_attention.bwd {tag}", functools.partial(attention_backward, region_ids=ids),
                      (x, x, x, bias, x)))
    return cases

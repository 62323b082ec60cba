"""Analytic matmul/conv FLOPs of a JAX function, counted on its jaxpr (unlike XLA's `cost_analysis`, loop bodies
are multiplied by their trip counts).

    from flops import count_flops
    count = count_flops(jax.value_and_grad(loss), params, batch)   # arrays or jax.ShapeDtypeStruct
    count.total, count.by_primitive, count.unknown_trip_loops
    count_flops(fn, *args, tag=source_tag({"stcl": r"stcl_jax/losses/(stcl|contrast)"})).by_tag["stcl"]

What is counted: `dot_general` (2 x output elements x contracted size) and `conv_general_dilated` (2 x the
multiply-adds on real inputs: padding and dilation holes excluded), the two primitives that hold a Swin / UperNet
/ STCL step's arithmetic; elementwise work, reductions and transcendentals are not (on an H100 they cost
bandwidth, not tensor-core FLOPs, and MFU is defined over the model's matmul FLOPs). Rematerialised code
(`jax.checkpoint`) is counted as executed, so with remat on this is the hardware FLOP count, not the model's.

Sub-jaxprs: calls (pjit, closed_call, remat/checkpoint, custom_jvp_call, custom_vjp_call, shard_map, ...) are
counted once per call; `scan` bodies x `length`; `cond` as its most expensive branch; `while` bodies x the static
trip count of a `fori_loop` (counter and bound both literals), otherwise once, and such loops are tallied in
`unknown_trip_loops` so a caller can tell that the total is a lower bound; a `pallas_call` kernel body x its grid
size (so a kernel's skipped tiles, a `cond` inside it, count as visited: an upper bound there). XLA's `cost_analysis()` counts every
loop body once, so it under-counts scanned code (the tiled STCL loss) by the trip count.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter

import jax
import numpy as np
from jax.extend import core as jex_core


@dataclasses.dataclass
class FlopCount:
    total: float = 0.0
    by_primitive: Counter = dataclasses.field(default_factory=Counter)
    by_tag: Counter = dataclasses.field(default_factory=Counter)
    unknown_trip_loops: int = 0

    def add(self, name: str, tag: str, flops: float) -> None:
        self.total += flops
        self.by_primitive[name] += flops
        self.by_tag[tag] += flops

    def merge(self, other: "FlopCount") -> None:
        self.total += other.total
        self.by_primitive.update(other.by_primitive)
        self.by_tag.update(other.by_tag)
        self.unknown_trip_loops += other.unknown_trip_loops


def source_tag(patterns: dict[str, str], default: str = "other"):
    """tag(eqn): the first name whose regex matches a file of the equation's Python traceback (the code that
    emitted it; JAX keeps the forward's traceback on the transposed, backward equations too), else `default`."""
    compiled = [(name, re.compile(rx)) for name, rx in patterns.items()]

    def tag(eqn) -> str:
        tb = eqn.source_info.traceback
        files = [f.file_name.replace("\\", "/") for f in tb.frames] if tb is not None else []
        return next((name for name, rx in compiled if any(rx.search(f) for f in files)), default)

    return tag


def dot_general_flops(eqn) -> float:
    """2 x (output elements) x (product of the contracted dimensions)."""
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _real_taps(in_size, kernel, stride, padding, lhs_dilation, rhs_dilation, out_size) -> int:
    """(output position, kernel tap) pairs along one spatial dimension that land on a real input element, not
    on padding or on a hole of `lhs_dilation` (the zeros a transposed / input-gradient conv inserts)."""
    pos = np.arange(out_size)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dilation - padding[0]
    return int(np.sum((pos >= 0) & (pos <= (in_size - 1) * lhs_dilation) & (pos % lhs_dilation == 0)))


def conv_flops(eqn) -> float:
    """2 x multiply-adds that touch real inputs: output batch x output features x kernel input features x the
    real (output, tap) pairs of each spatial dimension. Zero padding and the holes of an lhs dilation are not
    counted (cuDNN does not multiply them; XLA's cost analysis does not count them either), so the input
    gradient of a strided conv costs what its forward does. Groups: the kernel's input-feature dimension is
    already in_features / feature_group_count."""
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs, out = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
    n_spatial = len(rhs_spec) - 2
    lhs_dil = p.get("lhs_dilation") or (1,) * n_spatial
    rhs_dil = p.get("rhs_dilation") or (1,) * n_spatial
    pairs = math.prod(
        _real_taps(lhs[lhs_spec[2 + i]], rhs[rhs_spec[2 + i]], p["window_strides"][i], p["padding"][i],
                   lhs_dil[i], rhs_dil[i], out[out_spec[2 + i]]) for i in range(n_spatial))
    return 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * pairs


_COUNTERS = {"dot_general": dot_general_flops, "conv_general_dilated": conv_flops}


def _as_jaxpr(obj):
    """The open jaxpr inside a Jaxpr / ClosedJaxpr param, else None."""
    if isinstance(obj, jex_core.ClosedJaxpr):
        return obj.jaxpr
    if isinstance(obj, jex_core.Jaxpr):
        return obj
    return None


def _sub_jaxprs(params) -> list:
    found = []
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        found += [j for j in map(_as_jaxpr, items) if j is not None]
    return found


def _literal_int(atom):
    if isinstance(atom, jex_core.Literal) and isinstance(atom.val, int):
        return int(atom.val)
    try:  # numpy scalars held by a Literal
        return int(atom.val) if isinstance(atom, jex_core.Literal) and atom.aval.shape == () else None
    except (TypeError, ValueError):
        return None


def fori_trip_count(eqn) -> int | None:
    """Trip count of a `while` made by `fori_loop(lower, upper, ...)` with literal bounds, else None.

    fori_loop's while carries (i, upper, x...) and its cond is `i < upper`."""
    cond = eqn.params["cond_jaxpr"].jaxpr
    n_cond_consts, n_body_consts = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    init = eqn.invars[n_cond_consts + n_body_consts:]
    if len(cond.eqns) != 1 or cond.eqns[0].primitive.name != "lt" or len(init) < 2:
        return None
    lhs, rhs = cond.eqns[0].invars
    carry = cond.invars[n_cond_consts:]
    if lhs is not carry[0] or rhs is not carry[1]:
        return None
    lower, upper = _literal_int(init[0]), _literal_int(init[1])
    return None if lower is None or upper is None else max(upper - lower, 0)


def _walk(jaxpr, multiplier: float, count: FlopCount, tag) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _COUNTERS:
            count.add(name, tag(eqn), multiplier * _COUNTERS[name](eqn))
        elif name == "scan":
            _walk(eqn.params["jaxpr"].jaxpr, multiplier * eqn.params["length"], count, tag)
        elif name == "cond":
            branches = []
            for branch in eqn.params["branches"]:
                sub = FlopCount()
                _walk(branch.jaxpr, multiplier, sub, tag)
                branches.append(sub)
            count.merge(max(branches, key=lambda c: c.total))
        elif name == "pallas_call":  # the kernel body runs once per grid point
            grid = math.prod(eqn.params["grid_mapping"].grid)
            _walk(_as_jaxpr(eqn.params["jaxpr"]), multiplier * grid, count, tag)
        elif name == "while":
            trips = fori_trip_count(eqn)
            if trips is None:
                count.unknown_trip_loops += 1
                trips = 1
            _walk(eqn.params["body_jaxpr"].jaxpr, multiplier * trips, count, tag)
        else:  # pjit, closed_call, remat, custom_jvp_call, custom_vjp_call, shard_map, ...: once per call
            for sub in _sub_jaxprs(eqn.params):
                _walk(sub, multiplier, count, tag)


def count_jaxpr(closed_jaxpr, tag=None) -> FlopCount:
    count = FlopCount()
    _walk(_as_jaxpr(closed_jaxpr), 1.0, count, tag or (lambda eqn: "all"))
    return count


def count_flops(fn, *args, tag=None, **kwargs) -> FlopCount:
    """FLOPs of `fn(*args, **kwargs)`; args may be arrays or jax.ShapeDtypeStruct (nothing is run). `tag(eqn)`
    names the part each counted equation belongs to (`FlopCount.by_tag`), e.g. `source_tag(...)`."""
    return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs), tag)


__all__ = ["FlopCount", "count_flops", "count_jaxpr", "source_tag", "dot_general_flops", "conv_flops", "fori_trip_count"]

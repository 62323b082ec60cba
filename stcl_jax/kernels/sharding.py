"""Batch partitioning for kernel calls under a sharded `jax.jit` (the data-parallel train step).

XLA has no partitioning rule for a `pallas_call` custom call: with the batch split over devices it would gather
the whole batch onto every device and run the kernel on all of it there. `batch_partitioned(fn, ...)` wraps `fn`
in `jax.experimental.custom_partitioning`: every array argument and result is split along axis 0 the way the
first argument is (the batch), the other axes and the `replicated` arguments are whole on every device, and each
device runs `fn` on its own shard. Cross-shard reductions are left to the caller: return per-example partial
sums (axis 0 = batch) and reduce them outside, where XLA inserts the all-reduce. On one device the wrapper
lowers `fn` inline (no partitioning step), so the kernels' custom calls appear in the lowered module as usual.
"""

from __future__ import annotations

import jax
from jax.experimental.custom_partitioning import ArrayMapping, SdyShardingRule, custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec


def batch_partitioned(fn, n_arrays: int, n_static: int, replicated: tuple[int, ...] = ()):
    """`fn(*arrays, *statics)` partitioned over axis 0 of its `n_arrays` arrays; the `n_static` arguments after
    them are static (hashable); `replicated` lists the array arguments kept whole (a bias shared by the batch)."""
    op = custom_partitioning(fn, static_argnums=tuple(range(n_arrays, n_arrays + n_static)))

    def shardings(mesh, arg_shapes, result_shape):
        spec = getattr(arg_shapes[0].sharding, "spec", None)  # not a NamedSharding: nothing to split by
        batch = spec[0] if spec else None

        def split(x):
            return NamedSharding(mesh, PartitionSpec(batch, *(None,) * (x.ndim - 1)))

        args = tuple(NamedSharding(mesh, PartitionSpec()) if i in replicated else split(a)
                     for i, a in enumerate(arg_shapes))
        return args, jax.tree.map(split, result_shape)

    def partition(*static_and_shapes):
        *statics, mesh, arg_shapes, result_shape = static_and_shapes
        args, results = shardings(mesh, arg_shapes, result_shape)
        return mesh, lambda *arrays: fn(*arrays, *statics), results, args

    def infer(*static_and_shapes):
        *_, mesh, arg_shapes, result_shape = static_and_shapes
        return shardings(mesh, arg_shapes, result_shape)[1]

    def rule(*static_and_types):
        *_, operand_types, result_types = static_and_types
        fresh = iter(f"x{i}" for i in range(10_000))

        def mapping(ndim, split):
            return ArrayMapping(*(["b"] if split else []), *(next(fresh) for _ in range(ndim - split)))

        operands = tuple(mapping(len(t.shape), i not in replicated) for i, t in enumerate(operand_types))
        results = tuple(mapping(len(t.shape), True) for t in result_types)
        others = tuple(f for m in operands + results for f in m if f != "b")
        return SdyShardingRule(operands, results, need_replication_factors=others)

    op.def_partition(partition=partition, infer_sharding_from_operands=infer, sharding_rule=rule)
    return op

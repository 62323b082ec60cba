"""The device mesh, the shardings derived from shapes, and global batches (the multi-process runtime is
`stcl_jax.distributed`).

One mesh with one named axis, "data", over every device of every process. Batches are split over "data". The
train state is either replicated (the default: plain data parallel) or, with `config.mesh.fsdp`, each leaf of at
least `fsdp_min_size` elements is split over "data" along its largest divisible dimension (ZeRO-3 / FSDP style:
XLA all-gathers the parameters where they are used and reduce-scatters the gradients).
"""

import logging

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

log = logging.getLogger("stcl_jax.train")

DATA_AXIS = "data"

def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-d mesh named "data" over `devices` (default: all devices of all processes, in jax's order)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dimension split over "data"."""
    return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape, n: int, min_size: int) -> P:
    """The PartitionSpec of one leaf under FSDP: its largest dimension divisible by `n`, if it is big enough."""
    if n <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: (-shape[d], d))
    for d in dims:
        if shape[d] % n == 0:
            spec = [None] * len(shape)
            spec[d] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh, *, fsdp: bool = False, min_size: int = 2 ** 16):
    """NamedShardings for every leaf of `abstract_state` (a pytree of ShapeDtypeStructs, from jax.eval_shape)."""
    n = mesh.shape[DATA_AXIS]

    def one(leaf):
        spec = fsdp_spec(leaf.shape, n, min_size) if fsdp else P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map(one, abstract_state)


def global_batch(local_batch: dict, mesh) -> dict:
    """Process-local numpy arrays (leading dim = this process's share) -> global jax.Arrays split over "data"."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def check_batch_size(global_batch_size: int, mesh) -> int:
    """The per-process batch size, or a clear error when the global batch does not split evenly."""
    n_dev, n_proc = mesh.shape[DATA_AXIS], jax.process_count()
    if global_batch_size % n_dev:
        raise ValueError(f"config.global_batch_size={global_batch_size} must be a multiple of the device count "
                         f"({n_dev})")
    return global_batch_size // n_proc

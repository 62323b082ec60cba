"""Which Pallas back end a kernel call uses, and the `pallas_call` options of each.

Back ends: "triton" (NVIDIA / AMD GPUs: Pallas lowers the kernel to Triton IR, one `__gpu$xla.gpu.triton` custom
call), "mosaic" (TPU: Mosaic, one `tpu_custom_call`) and "interpret" (any platform, the CPU in practice: the kernel
body runs as ordinary XLA ops, slowly; used by the tests and CPU runs).

`by_platform(fn)` traces `fn(backend)` once per back end under `jax.lax.platform_dependent`, so the back end
follows the platform the graph is *lowered* for (`jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))` on
a CPU-only jaxlib gives the Triton kernel), not `jax.default_backend()`. Only the selected branch is lowered.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

BACKENDS = ("triton", "mosaic", "interpret")


def check(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"Pallas backend={backend!r}: expected one of {BACKENDS} (or None: by platform)")
    return backend


def call_options(backend: str, semantics: tuple[str, ...], *, num_warps: int | None = None,
                 num_stages: int | None = None) -> dict:
    """`pallas_call` keyword arguments for `backend`: interpret mode, or the Triton / Mosaic compiler params.
    `semantics`: per grid axis "parallel" or "arbitrary" (runs in order: an output block revisited along it may
    accumulate), read by Mosaic; Triton runs every program in parallel."""
    check(backend)
    if backend == "interpret":
        return {"interpret": True}
    if backend == "triton":
        if "arbitrary" in semantics:
            raise ValueError(f"Triton runs every grid program in parallel; got dimension semantics {semantics}")
        return {"compiler_params": pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)}
    return {"compiler_params": pltpu.CompilerParams(dimension_semantics=semantics)}


def by_platform(fn: Callable[[str], Callable], *args):
    """`fn(backend)(*args)` with the back end of the platform being lowered for (see the module docstring)."""
    return jax.lax.platform_dependent(*args, cpu=fn("interpret"), cuda=fn("triton"), rocm=fn("triton"),
                                      tpu=fn("mosaic"), default=fn("interpret"))

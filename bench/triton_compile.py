"""Compiles the Triton kernels of stcl_jax for an NVIDIA GPU without one: registers, spills, shared memory.

    python bench/triton_compile.py                    # every kernel case of stcl_jax.kernels (Swin-L shapes), sm_90
    python bench/triton_compile.py --small --match fwd --warps 8 --stages 1

For each case of `lowering_cases()` (the lowering CLI's, `python -m stcl_jax.kernels`), Pallas lowers the kernel
for "cuda" here; its Triton IR is taken from Pallas's lowering (`jax._src.pallas.triton.lowering`, a private hook:
it may move between jax versions) and compiled by the installed `triton` package to PTX and, with the ptxas that
package ships, to a cubin (`ptxas -v`). The `triton` package is not the Triton inside jaxlib/XLA, so these are
indicative figures (what changes with warps / stages / tiles), not the GPU build's; no GPU is needed or used.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile



def triton_modules(fn, args) -> list[tuple[str, int, int]]:
    """(Triton IR text, num_warps, num_stages) of every pallas_call in `jax.jit(fn)` lowered for cuda."""
    import jax
    from jax._src.pallas.triton import pallas_call_registration as registration

    lower, found = registration.lowering.lower_jaxpr_to_triton_module, []

    def keep(*a, **k):
        result = lower(*a, **k)
        found.append(result.module.operation.get_asm())
        return result

    registration.lowering.lower_jaxpr_to_triton_module = keep
    try:
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    warps = [int(w) for w in re.findall(r"num_warps = (\d+)", text)]
    stages = [int(s) for s in re.findall(r"num_stages = (\d+)", text)]
    return list(zip(found, warps, stages))


def compile_ir(ir: str, capability: int, warps: int, stages: int) -> str:
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ttir")
        with open(path, "w") as f:
            f.write(ir)
        kernel = triton.compile(path, target=GPUTarget("cuda", capability, 32),
                                options={"num_warps": warps, "num_stages": stages})
        ptx = kernel.asm["ptx"]
        with open(os.path.join(tmp, "k.ptx"), "w") as f:
            f.write(ptx)
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        arch = re.search(r"\.target (\w+)", ptx).group(1)
        out = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", os.path.join(tmp, "k.ptx"), "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores", out.stderr)
    return (f"{arch} warps {warps} stages {stages}: {regs.group(1) if regs else '?'} registers, "
            f"{spill.group(1) if spill else '?'} B spill stores, {kernel.metadata.shared} B shared")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--match", default="", help="only cases whose name contains this")
    p.add_argument("--capability", type=int, default=90, help="compute capability (90: H100 / H200)")
    p.add_argument("--warps", type=int, default=0, help="0 = the kernel's own (its pallas_call's num_warps)")
    p.add_argument("--stages", type=int, default=0, help="0 = the kernel's own (Pallas's default: 3)")
    a = p.parse_args(argv)
    from stcl_jax.kernels import KERNEL_MODULES

    failed = 0
    for module in KERNEL_MODULES:
        for name, fn, args in importlib.import_module(module).lowering_cases(a.small):
            if a.match not in name:
                continue
            for ir, warps, stages in triton_modules(fn, args):
                try:
                    print(f"{name}: {compile_ir(ir, a.capability, a.warps or warps, a.stages or stages)}",
                          flush=True)
                except Exception as e:  # noqa: BLE001 (reported per case)
                    failed += 1
                    print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

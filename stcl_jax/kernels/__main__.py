"""Lowers every Pallas kernel of stcl_jax for the given platforms, here, without their devices.

    python -m stcl_jax.kernels --lower cuda tpu            # Swin-L shapes (768 crop, 8 images, window 12)
    python -m stcl_jax.kernels --lower cuda tpu --small    # small shapes (tests)

For each kernel case of each module in `stcl_jax.kernels.KERNEL_MODULES` (`lowering_cases(small)`) and each
platform: `jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))`, then one line: kernel, argument
shapes, platform, the custom calls found in the lowered module, ok / FAILED with the reason. Exit status 1 if
any case failed. Lowering runs Pallas's own lowering (Triton IR for cuda, Mosaic IR for tpu) but not the device
compilers behind it (Triton -> PTX in XLA:GPU; Mosaic's layout passes in libtpu): a kernel that lowers here can
still fail to compile there.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

import jax

from stcl_jax.kernels import KERNEL_MODULES

EXPECTED_CALL = {"cuda": "__gpu$xla.gpu.triton", "rocm": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def _shapes(args) -> str:
    return " ".join(f"{jax.numpy.dtype(a.dtype).name}{list(a.shape)}" for a in args)


def lower_case(fn, args, platform: str) -> tuple[list[str], str]:
    """(custom call targets in the lowered module, "" if ok else the failure reason)."""
    try:
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    except Exception as e:  # noqa: BLE001 (reported, not hidden)
        return [], f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    calls = sorted(set(re.findall(r"custom_call @([\w$.]+)", text)))
    if EXPECTED_CALL[platform] not in calls:
        return calls, f"no {EXPECTED_CALL[platform]} custom call in the lowered module"
    return calls, ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lower", nargs="+", required=True, choices=sorted(EXPECTED_CALL), metavar="PLATFORM",
                   help=f"platforms to lower for: {sorted(EXPECTED_CALL)}")
    p.add_argument("--small", action="store_true", help="small shapes instead of Swin-L's")
    a = p.parse_args(argv)
    failed = 0
    for module_name in KERNEL_MODULES:
        for name, fn, args in importlib.import_module(module_name).lowering_cases(a.small):
            for platform in a.lower:
                calls, error = lower_case(fn, args, platform)
                failed += bool(error)
                status = f"FAILED {error}" if error else "ok"
                print(f"{name} | {_shapes(args)} | {platform} | {','.join(calls) or '-'} | {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

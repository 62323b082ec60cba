"""Shared pieces of the bench scripts: device peaks, the result record of bench/gpu_suite.sh, isolated runs.

A result record (one per measurement, what OUT/results.json lists):
    {"name", "framework", "device", "date", "command", "figures": {...}, "status": "ok" | "skipped: ..." |
     "error: ...", "notes": [...]}
`figures` holds numbers (and short strings) only; `notes` say how to read them (e.g. "device peak: n/a on CPU").
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time

# Dense bf16 tensor-core peaks, TFLOP/s, vendor datasheets (SXM parts). The H200 is the H100's chip with more and
# faster memory, so it has the same arithmetic peak. fp32 runs get half (TF32 dense).
PEAK_TFLOPS_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device_kind: str, dtype: str = "bfloat16", override: float = 0.0) -> float:
    """The device's dense peak for `dtype` (0.0 when unknown, e.g. on a CPU); `override` > 0 wins."""
    if override:
        return override
    for name, value in PEAK_TFLOPS_BF16.items():
        if name.lower() in device_kind.lower():
            return value if dtype == "bfloat16" else value / 2
    return 0.0


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def record(name: str, framework: str, device: str, figures: dict | None = None, status: str = "ok",
           notes: list[str] | None = None) -> dict:
    return {"name": name, "framework": framework, "device": device,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command_line(), "figures": figures or {}, "status": status, "notes": notes or []}


def error_status(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {exc}"[:600]


def write_records(path: str, records: list[dict]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(records, f, indent=1)


def print_records(records: list[dict]) -> None:
    for r in records:
        figs = ", ".join(f"{k} {_fmt(v)}" for k, v in r["figures"].items())
        print(f"[{r['name']}] {r['status']}: {figs}", flush=True)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def timed(fn, args, steps: int):
    """(seconds per call, last output): one untimed call, then `steps` calls back to back, one block at the end."""
    import jax

    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps, out


def run_isolated(script: str, argv: list[str], timeout_s: float = 0) -> list[dict]:
    """Runs `python script argv --json TMP` in a fresh process (its own device memory and peak counters) and
    returns its records; a crash or timeout becomes one record with an error status."""
    out = f"{os.environ.get('TMPDIR', '/tmp')}/bench_{os.getpid()}_{time.monotonic_ns()}.json"
    cmd = [sys.executable, script, *argv, "--json", out]
    try:
        proc = subprocess.run(cmd, timeout=timeout_s or None)
        if os.path.exists(out):
            with open(out) as f:
                return json.load(f)
        status = f"error: {os.path.basename(script)} exited with {proc.returncode} and wrote no results"
    except subprocess.TimeoutExpired:
        status = f"error: timed out after {timeout_s:.0f} s"
    finally:
        if os.path.exists(out):
            os.remove(out)
    return [record(" ".join(argv), "?", "?", status=status)]

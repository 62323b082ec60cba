"""Collects the parts bench/gpu_suite.sh ran into OUT/results.json and OUT/results.md; also its `env` section.

    python bench/suite_report.py env --json PARTS/environment.json   # versions + devices, as a result record
    python bench/suite_report.py collect OUT PARTS                    # PARTS/sections.tsv lists what ran

PARTS/sections.tsv has one line per section, in run order: name, exit code, seconds, timeout (s), and a status
the shell decided (e.g. "skipped: ..."), tab-separated; each section wrote PARTS/<name>.json (a list of result
records, bench/benchlib.py) unless it failed. A section without records becomes one record whose status is the
failure (exit code, timeout, or "wrote no results") with the end of its log. Any other JSON (e.g. the STCL
bench's own format) becomes one record with that JSON as its figures.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import benchlib  # noqa: E402  (bench/ is sys.path[0] when a script of it runs)

# Figures shown in the markdown table, in this order, where a record has them.
KEY_FIGURES = ("img_per_s_per_device", "step_ms", "mfu", "mfu_xla_cost", "device_peak_gib",
               "memory_analysis_peak_estimate_gib", "compile_s", "first_step_s", "analytic_tflop_per_device",
               "analytic_stcl_tflop_per_device", "xla_cost_analysis_tflop", "stcl_stride", "old_ms", "new_ms",
               "speedup", "grad_rel_l2_diff", "jax_frames_per_s", "torch_frames_per_s", "agreement")


def environment_record(path: str) -> None:
    """Package versions (from their metadata: nothing is imported) and the GPUs nvidia-smi lists."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "grain", "torch",
                 "transformers", "timm", "triton", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    try:
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        gpus = ""
    figures = {**versions, "gpus": gpus or "none (nvidia-smi absent or silent)", "cpus": os.cpu_count()}
    device = gpus.splitlines()[0] if gpus else "cpu"
    benchlib.write_records(path, [benchlib.record("environment", "-", device, figures)])


def _read_sections(parts: str):
    with open(os.path.join(parts, "sections.tsv")) as f:
        for line in f:
            name, rc, seconds, timeout, shell_status = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
            yield name, int(rc or 0), float(seconds or 0), float(timeout or 0), shell_status


def _log_tail(parts: str, name: str, lines: int = 6) -> list[str]:
    path = os.path.join(parts, f"{name}.log")
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        return [line.rstrip()[:300] for line in f.readlines()[-lines:]]


def section_records(parts: str, name: str, rc: int, seconds: float, timeout: float, shell_status: str) -> list:
    path = os.path.join(parts, f"{name}.json")
    if shell_status:
        return [benchlib.record(name, "-", "-", status=shell_status)]
    data = None
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
        except ValueError as e:
            data, shell_status = None, f"error: {name}.json is not JSON ({e})"
    if data is None:
        if rc == 124:
            status = f"error: timed out after {timeout:.0f} s"
        elif shell_status:
            status = shell_status
        else:
            status = f"error: exit code {rc}, no results written"
        return [benchlib.record(name, "-", "-", status=status, notes=_log_tail(parts, name))]
    if isinstance(data, list) and all(isinstance(r, dict) and "status" in r for r in data):
        records = data
    else:  # a bench with its own JSON layout: keep it whole
        records = [benchlib.record(name, "jax", "-", {"result": data})]
    if rc not in (0,):
        for r in records:
            r["notes"] = r.get("notes", []) + [f"process exit code {rc}"]
    return records


def markdown(records: list[dict]) -> str:
    env = next((r for r in records if r["name"] == "environment"), None)
    lines = ["# bench/gpu_suite.sh results", ""]
    if env:
        f = env["figures"]
        lines += [f"Device: {f.get('gpus')}; {f.get('cpus')} CPUs. Date: {env['date']}. "
                  + ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("gpus", "cpus")), ""]
    lines += ["| section | measurement | status | figures |", "|---|---|---|---|"]
    for r in records:
        if r is env:
            continue
        figs = r.get("figures", {})
        shown = [f"{k} {_fmt(figs[k])}" for k in KEY_FIGURES if figs.get(k) is not None]
        shown += [f"{k} {_fmt(v)}" for k, v in figs.items()
                  if k not in KEY_FIGURES and isinstance(v, (int, float)) and len(shown) < 14]
        lines.append(f"| {r.get('section', '')} | {r['name']} | {r['status'][:160]} | {'; '.join(shown)} |")
    profiles = [r for r in records if isinstance(r.get("figures", {}).get("profile"), dict)]
    if profiles:
        cats = list(profiles[0]["figures"]["profile"]["per_step_ms"])
        lines += ["", "Profile (3 traced steps, kernel time per step, ms (share)):", "",
                  "| variant | total ms | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
        for r in profiles:
            p = r["figures"]["profile"]
            lines.append(f"| {r['name']} | {p['total_ms_per_step']:.1f} | " + " | ".join(
                f"{p['per_step_ms'][c]:.1f} ({100 * p['share'][c]:.0f}%)" for c in cats) + " |")
    notes = [(r["name"], n) for r in records for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {name}: {n}" for name, n in notes]
    return "\n".join(lines) + "\n"


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def derive(records: list[dict]) -> list[str]:
    """Cross-section figures: torch MFU from the JAX no-STCL step's analytic FLOPs (the same network and loss
    without STCL), and img/s ratios of the JAX steps to each torch mode. Returns readable lines."""
    ok = {r["section"]: r["figures"] for r in records if r["status"] == "ok"}
    lines = []
    plain = ok.get("jax_train_nostcl", {})
    flops, peak = plain.get("analytic_tflop_per_device"), plain.get("peak_tflops_used")
    for r in records:
        if r["status"] != "ok" or not r["section"].startswith("torch_"):
            continue
        f = r["figures"]
        if flops and peak and f.get("step_ms"):
            f["mfu_from_jax_analytic_flops"] = flops / (f["step_ms"] / 1e3) / peak
        for jax_section in ("jax_train_stcl", "jax_train_nostcl"):
            jax_rate = ok.get(jax_section, {}).get("img_per_s_per_device")
            if jax_rate and f.get("img_per_s_per_device"):
                ratio = jax_rate / f["img_per_s_per_device"]
                f[f"{jax_section}_speedup"] = ratio
                lines.append(f"{jax_section} / {r['section']}: {ratio:.2f}x img/s")
    return lines


def collect(out: str, parts: str) -> list[dict]:
    records = []
    for name, rc, seconds, timeout, shell_status in _read_sections(parts):
        for r in section_records(parts, name, rc, seconds, timeout, shell_status):
            r["section"] = name
            r["section_seconds"] = seconds
            records.append(r)
    comparisons = derive(records)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(records, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(records))
        if comparisons:
            f.write("\nRatios (same device, same images per step):\n\n" + "".join(f"- {c}\n" for c in comparisons))
    return records


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["env", "--json"] and len(argv) == 3:
        environment_record(argv[2])
    elif argv[:1] == ["collect"] and len(argv) == 3:
        records = collect(argv[1], argv[2])
        for r in records:
            print(f"{r['section']:<28} {r['status'][:90]}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

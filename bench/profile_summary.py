"""Per-category time of a jax.profiler trace of a compiled step, with nothing but jax itself.

    python bench/profile_summary.py TRACE_DIR HLO_TEXT_FILE [--steps 3]

How it works (no TensorBoard / tensorboard_plugin_profile needed):
1. `jax.profiler.start_trace(dir)` writes `dir/plugins/profile/<run>/<host>.xplane.pb`; `jax.profiler.ProfileData`
   (part of jaxlib) reads it: planes (a GPU = "/device:GPU:0", the host = "/host:CPU") -> lines (CUDA streams,
   host threads) -> events, each XLA op's event carrying the stats `hlo_op` and `hlo_module`.
2. The op's self time is its duration minus nested events on the same line (on the CPU a `while` op's event
   spans its body's ops). On a GPU only device planes are used (kernel time); on the CPU the host threads.
3. `compiled.as_text()` gives each HLO instruction's opcode, fusion body, custom-call target and metadata
   (`op_name` = JAX name stack with Flax module paths, and the Python stack frames of the op).
4. Category by the first rule that matches: STCL (a frame in stcl_jax/losses/stcl*.py or contrast*.py), CE
   (losses/segmentation.py), resize (a frame function named *resize* / *upsample* / *interp*), optimizer
   (optax or training/optim.py, or the `opt_state` / grad-norm part of the step), norm (flax
   normalization.py), attention/softmax (inside `WindowAttention` but not its qkv/proj Dense layers),
   matmul/conv (dot, convolution, gemm/conv custom calls and fusions around them), other.
Kernels whose event has no `hlo_op` (e.g. launched from a CUDA graph / command buffer) are "unattributed": the
summary reports their share; if it is large, rerun with XLA_FLAGS=--xla_gpu_enable_command_buffer= .
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re

CATEGORIES = ("attention/softmax", "matmul/conv", "resize", "CE", "norm", "optimizer", "STCL", "other",
              "unattributed")

_INSTR_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = ")
_OPCODE = re.compile(r"\s*([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+) \(.*\) -> .*\{\s*$")
_FILE = re.compile(r'^(\d+) "(.*)"$')
_LOCATION = re.compile(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+)")
_FRAME = re.compile(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)")
_MATMUL_OPS = {"dot", "convolution"}
_MATMUL_TARGETS = re.compile(r"gemm|matmul|cublas|conv|cudnn", re.I)


def parse_hlo(text: str) -> dict:
    """instruction name -> {"opcode", "target", "op_name", "frames": [(file, function), innermost first],
    "has_matmul"} from the text of a compiled HLO module."""
    tables = {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
    section, computation = None, None
    instrs, comp_ops, comp_targets, calls = {}, collections.defaultdict(set), collections.defaultdict(str), {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in tables:
            section = stripped
            continue
        if section:
            if not stripped:
                continue
            if section in ("FileNames", "FunctionNames") and (m := _FILE.match(stripped)):
                tables[section][m.group(1)] = m.group(2)
                continue
            if section == "FileLocations" and (m := _LOCATION.match(stripped)):
                tables[section][m.group(1)] = (m.group(2), m.group(3))
                continue
            if section == "StackFrames" and (m := _FRAME.match(stripped)):
                tables[section][m.group(1)] = (m.group(2), m.group(3))
                continue
            section = None
        if m := _COMPUTATION.match(line):
            computation = m.group(1)
            continue
        parsed = _instruction(line)
        if not parsed:
            continue
        name, opcode = parsed
        comp_ops[computation].add(opcode)
        target = re.search(r'custom_call_target="([^"]*)"', line)
        comp_targets[computation] += " " + (target.group(1) if target else "")
        op_name = re.search(r'op_name="([^"]*)"', line)
        frame = re.search(r"stack_frame_id=(\d+)", line)
        source = re.search(r'source_file="([^"]*)"', line)
        called = re.search(r"calls=%?([\w.\-]+)", line)
        instrs[name] = {"opcode": opcode, "target": target.group(1) if target else "",
                        "op_name": op_name.group(1) if op_name else "",
                        "frame_id": frame.group(1) if frame else None, "source_file": source.group(1) if source else ""}
        if called:
            calls[name] = called.group(1)
    for name, info in instrs.items():
        info["frames"] = _frames(tables, info.pop("frame_id")) or [(info.pop("source_file"), "")]
        info.pop("source_file", None)
        body = calls.get(name)  # a fusion's computation: does it hold a dot / conv / gemm call?
        info["has_matmul"] = (info["opcode"] in _MATMUL_OPS or bool(_MATMUL_TARGETS.search(info["target"]))
                              or bool(comp_ops.get(body, set()) & _MATMUL_OPS)
                              or bool(_MATMUL_TARGETS.search(comp_targets.get(body, ""))))
    return instrs


def _instruction(line: str):
    """(name, opcode) of an HLO instruction line `name = TYPE opcode(...)`, else None. TYPE may be a tuple
    `(f32[2]{0}, /*index=5*/s32[])`, so it is skipped by matching parentheses, not by a pattern."""
    m = _INSTR_NAME.match(line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                rest = rest[i + 1:]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    op = _OPCODE.match(rest)
    return (m.group(1), op.group(1)) if op else None


def _frames(tables, frame_id) -> list[tuple[str, str]]:
    out, seen = [], set()
    while frame_id and frame_id not in seen and frame_id in tables["StackFrames"]:
        seen.add(frame_id)
        location, parent = tables["StackFrames"][frame_id]
        file_id, func_id = tables["FileLocations"].get(location, (None, None))
        out.append((tables["FileNames"].get(file_id, ""), tables["FunctionNames"].get(func_id, "")))
        frame_id = parent
    return out


def categorize(info: dict | None) -> str:
    if info is None:
        return "unattributed"
    files = [f.replace("\\", "/") for f, _ in info["frames"]]
    funcs = [fn for _, fn in info["frames"]]
    op_name = info["op_name"]
    if any(re.search(r"stcl_jax/losses/(stcl|contrast)", f) for f in files):
        return "STCL"
    if any(f.endswith("stcl_jax/losses/segmentation.py") for f in files):
        return "CE"
    if any(re.search(r"resize|upsample|interp", fn, re.I) for fn in funcs):
        return "resize"
    if any("/optax/" in f or f.endswith("stcl_jax/training/optim.py") for f in files) or \
            re.search(r"opt_state|global_norm|apply_updates", op_name):
        return "optimizer"
    if any(f.endswith("flax/linen/normalization.py") for f in files):
        return "norm"
    if "/attn/" in op_name and not re.search(r"/attn/(qkv|proj)/", op_name) or \
            any(fn.startswith("WindowAttention.") for fn in funcs[:1]):
        return "attention/softmax"
    if info["has_matmul"]:
        return "matmul/conv"
    return "other"


def load_op_events(trace_dir: str):
    """[(hlo_module, hlo_op or None, self time ns)] of the newest xplane.pb under `trace_dir`."""
    from jax.profiler import ProfileData

    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir} (did jax.profiler.start_trace write there?)")
    data = ProfileData.from_file(paths[-1])
    planes = list(data.planes)
    device = [p for p in planes if p.name.startswith("/device:") and _has_op_events(p)]
    use = device or [p for p in planes if p.name.startswith("/host:")]
    events = []
    for plane in use:
        for line in plane.lines:
            if device and line.name in ("XLA Modules", "XLA Ops", "Steps", "TensorFlow Ops", "Framework Ops"):
                continue  # derived lines that repeat the kernels' time
            events += _self_times(line, keep_unnamed=bool(device))
    return events


def _has_op_events(plane) -> bool:
    return any(dict(e.stats).get("hlo_op") for line in plane.lines for e in line.events)


def _self_times(line, keep_unnamed: bool):
    spans = []
    for e in line.events:
        stats = dict(e.stats)
        if "hlo_op" in stats or keep_unnamed:
            spans.append([e.start_ns, e.start_ns + e.duration_ns, stats.get("hlo_module"), stats.get("hlo_op"),
                          e.duration_ns])
    spans.sort(key=lambda s: (s[0], -s[1]))
    stack = []
    for span in spans:  # subtract each nested event from its innermost enclosing one
        while stack and stack[-1][1] <= span[0]:
            stack.pop()
        if stack and span[1] <= stack[-1][1]:
            stack[-1][4] -= span[4]
        stack.append(span)
    return [(s[2], s[3], max(s[4], 0)) for s in spans]


def summarize(trace_dir: str, hlo_text: str, steps: int = 3, module_hint: str = "") -> dict:
    """{"per_step_ms": {category: ms}, "share": {category: fraction}, "total_ms_per_step", "events",
    "top_ops": [...]} over the op events of the module named like `module_hint` (default: the busiest)."""
    instrs = parse_hlo(hlo_text)
    events = load_op_events(trace_dir)
    by_module = collections.Counter()
    for module, op, ns in events:
        by_module[module] += ns
    named = [m for m in by_module if m]
    module = next((m for m in named if module_hint and module_hint in m), None) or \
        (max(named, key=by_module.get) if named else None)
    totals, ops = collections.Counter(), collections.Counter()
    count = 0
    for mod, op, ns in events:
        if mod not in (module, None):
            continue
        totals[categorize(instrs.get(op)) if op else "unattributed"] += ns
        ops[op or "(no hlo_op)"] += ns
        count += 1
    total = sum(totals.values())
    return {"module": module, "events": count, "total_ms_per_step": total / 1e6 / steps,
            "per_step_ms": {c: totals[c] / 1e6 / steps for c in CATEGORIES},
            "share": {c: (totals[c] / total if total else 0.0) for c in CATEGORIES},
            "top_ops": [(op, ns / 1e6 / steps, categorize(instrs.get(op))) for op, ns in ops.most_common(8)]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace_dir")
    p.add_argument("hlo_text", help="file holding compiled.as_text() of the traced executable")
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    with open(a.hlo_text) as f:
        print(json.dumps(summarize(a.trace_dir, f.read(), a.steps), indent=1))


if __name__ == "__main__":
    main()

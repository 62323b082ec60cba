"""Hyper-parameter sweeps: expand a config's named sweep into runs, launch them, and tabulate their results.

    python -m stcl_jax.sweep --config configs/swin_l.py --sweep temperature --workdir-root DIR
        [--launcher local|slurm|tpu] [--launcher-arg ARG ...] [--override FIELD=VALUE ...] [--dry-run]
    python -m stcl_jax.sweep report DIR [--output DIR]

The config module defines `get_sweep(name) -> list[dict]` next to `get_config` (see stcl_jax/configs/sweeps.py). Every
point becomes a run in `DIR/<name>`, the name built from the overridden fields (`temperature-0.05_dim-256`), with
`sweep_point.json` (its overrides) written before it starts and `DIR/sweep.json` listing them all.

Launchers: `local` trains the runs one after another in this process (`train_and_evaluate`) and writes each
run's `final_metrics.json`; a run that has one is skipped on a rerun. `slurm` submits one `sbatch
launch/slurm.sbatch` job per run; `tpu` runs `launch/tpu_pod.sh` per run, one after another (a slice runs one job at
a time; pass `--launcher-arg=--tpu=NAME --launcher-arg=--zone=Z` or set TPU_NAME/ZONE). `--dry-run` prints the
commands (for `local`: the equivalent `python -m stcl_jax.train` command lines) and writes nothing.

A point that sets `global_batch_size` without `optim.learning_rate` gets the linear scaling rule of
stcl_jax/configs/sweeps.py (`scaled_batch_overrides`): lr, total steps and warmup follow the batch.
"""

import csv
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys

from stcl_jax import cli_errors
from stcl_jax.files import atomic_write_json
from stcl_jax import workdir as workdir_lib
from stcl_jax.config_files import apply_overrides, load_config_module, parse_override, split_config_spec
from stcl_jax.configs import sweeps

REPO = pathlib.Path(__file__).resolve().parents[1]
METRICS = ("mIoU", "VC8", "VC16", "loss")


# ---------------------------------------------------------------------------------------------------- configs --
def get_points(module, path: str, sweep: str) -> list[dict]:
    if not hasattr(module, "get_sweep"):
        raise AttributeError(f"config file {path!r} defines no get_sweep(name): add `from stcl_jax.configs.sweeps import "
                             "get_sweep` next to get_config")
    points = module.get_sweep(sweep)
    if not points or not all(isinstance(p, dict) for p in points):
        raise ValueError(f"{path}: get_sweep({sweep!r}) must return a non-empty list of dicts, got {points!r}")
    return points


def resolve_point(config, point: dict) -> dict:
    """`point` plus the linear-scaling fields when it changes the batch but not the learning rate."""
    if "global_batch_size" in point and "optim.learning_rate" not in point:
        scaled = sweeps.scaled_batch_overrides(config, point["global_batch_size"])
        return {**scaled, **point}
    return dict(point)


def run_name(point: dict) -> str:
    """Directory name from the overridden fields: last dotted component (or the whole path if ambiguous)."""
    leaves = [k.split(".")[-1] for k in point]
    parts = []
    for key, value in point.items():
        label = key.split(".")[-1] if leaves.count(key.split(".")[-1]) == 1 else key.replace(".", "-")
        label = "batch" if label == "global_batch_size" else label
        text = format_value(value)
        parts.append(f"{label}-{''.join(c if c.isalnum() or c in '.-' else '-' for c in text)}")
    return "_".join(parts) or "base"


def format_value(value) -> str:
    """How a value is written in `--config.FIELD=VALUE` (absl config_flags parses it by the field's type)."""
    return value if isinstance(value, str) else repr(value)


# ------------------------------------------------------------------------------------------------------ plans --
def plan(config_spec: str, sweep: str, workdir_root: str, *, overrides=None) -> tuple[list[dict], object]:
    """The runs of a sweep: dicts {name, workdir, overrides (shown in names), fields (all overrides applied)}."""
    path, arg = split_config_spec(config_spec)
    module = load_config_module(path)
    base = module.get_config(arg)
    common = dict(overrides or {})
    if common:
        base = apply_overrides(base, common)
    runs, seen = [], set()
    for point in get_points(module, path, sweep):
        fields = {**common, **resolve_point(base, point)}
        apply_overrides(base, fields)  # fail early on a typo, before anything is launched
        name = run_name(point)
        if name in seen:
            raise ValueError(f"sweep {sweep!r}: two points have the same name {name!r}; make the points differ")
        seen.add(name)
        runs.append({"name": name, "workdir": os.path.join(workdir_root, name), "point": point, "fields": fields})
    return runs, base


def train_command(config_spec: str, run: dict) -> list[str]:
    args = ["--config", config_spec, "--workdir", run["workdir"]]
    return args + [f"--config.{k}={format_value(v)}" for k, v in run["fields"].items()]


def launch_command(launcher: str, config_spec: str, run: dict, launcher_args=()) -> list[str]:
    args = train_command(config_spec, run)
    if launcher == "local":
        return [sys.executable, "-m", "stcl_jax.train", *args]
    if launcher == "slurm":
        log = os.path.join(run["workdir"], "slurm-%j")
        return ["sbatch", f"--job-name=stcl-{run['name']}", f"--output={log}.out", f"--error={log}.err",
                *launcher_args, str(REPO / "launch" / "slurm.sbatch"), *args]
    if launcher == "tpu":
        return [str(REPO / "launch" / "tpu_pod.sh"), *launcher_args, "--run-name", run["name"], "--", *args]
    raise ValueError(f"unknown launcher {launcher!r}: expected local, slurm or tpu")


def _write_json(path: str, obj) -> None:
    atomic_write_json(path, obj, default=str)


def run_sweep(config_spec, sweep, workdir_root, *, launcher="local", launcher_args=(), overrides=None,
              dry_run=False, out=print) -> list[dict]:
    """Plans, then launches (or with `dry_run` only prints) every run; returns the runs with their commands."""
    runs, base = prepare(config_spec, sweep, workdir_root, launcher=launcher, launcher_args=launcher_args,
                         overrides=overrides)
    return launch(runs, base, config_spec, sweep, workdir_root, launcher=launcher, dry_run=dry_run, out=out)


def prepare(config_spec, sweep, workdir_root, *, launcher="local", launcher_args=(), overrides=None):
    """`plan` plus each run's launch command; all config errors surface here, before anything starts."""
    from stcl_jax.training import config_check

    runs, base = plan(config_spec, sweep, workdir_root, overrides=overrides)
    for run in runs:
        try:  # every point's whole config, so that a bad one cannot stop the sweep after others ran
            config_check.validate(apply_overrides(base, run["fields"]))
        except ValueError as e:
            raise ValueError(f"sweep point {run['name']}: {e}") from e
        run["command"] = launch_command(launcher, config_spec, run, launcher_args)
    return runs, base


def launch(runs, base, config_spec, sweep, workdir_root, *, launcher, dry_run=False, out=print) -> list[dict]:
    if dry_run:
        for run in runs:
            out(shlex.join(run["command"]))
        return runs
    remote = "://" in workdir_root
    if not remote:
        _write_json(os.path.join(workdir_root, "sweep.json"),
                    {"config": config_spec, "sweep": sweep, "launcher": launcher, "runs": runs})
    for i, run in enumerate(runs):
        out(f"[{i + 1}/{len(runs)}] {run['name']}: {shlex.join(run['command'])}")
        if not remote:
            _write_json(os.path.join(run["workdir"], "sweep_point.json"),
                        {"name": run["name"], "point": run["point"], "fields": run["fields"]})
        if launcher == "local":
            _train_local(base, run, out)
        else:
            subprocess.run(run["command"], check=True)
    return runs


def _train_local(base, run: dict, out) -> None:
    final = os.path.join(run["workdir"], "final_metrics.json")
    if os.path.exists(final):
        out(f"  {run['name']}: {final} exists, skipped")
        return
    from stcl_jax.training.loop import train_and_evaluate

    metrics = train_and_evaluate(apply_overrides(base, run["fields"]), run["workdir"])
    _write_json(final, {k: _to_float(v) for k, v in (metrics or {}).items()})


def _to_float(v):
    """JSON-friendly: scalars as float, arrays as lists, the rest unchanged."""
    if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:
        return v.tolist()
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


# ----------------------------------------------------------------------------------------------------- report --
def _metric_key(key: str) -> str | None:
    """Which report column a logged key feeds: 'val/mIoU' -> 'mIoU', 'eval_vc_8' -> 'VC8', 'loss' -> 'loss'."""
    leaf = key.split("/")[-1].lower().replace("_", "")
    for prefix in ("eval", "val"):
        leaf = leaf[len(prefix):] if leaf.startswith(prefix) and leaf != prefix else leaf
    return {"miou": "mIoU", "vc8": "VC8", "vc16": "VC16", "loss": "loss", "trainloss": "loss"}.get(leaf)


def run_metrics(workdir: str) -> dict:
    """Final mIoU/VC8/VC16/loss of a run: `final_metrics.json`, else the last logged value in `metrics.jsonl`."""
    found = {}
    log = os.path.join(workdir, workdir_lib.METRICS)
    if os.path.exists(log):
        with open(log, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{log}:{line_no}: not JSON ({e})") from None
                for key, value in record.items():
                    col = _metric_key(key)
                    if col and isinstance(value, (int, float)):
                        found[col] = float(value)
                if "step" in record:
                    found["step"] = int(record["step"])
    final = os.path.join(workdir, "final_metrics.json")
    if os.path.exists(final):
        with open(final, encoding="utf-8") as f:
            for key, value in json.load(f).items():
                col = _metric_key(key)
                if col and isinstance(value, (int, float)):
                    found[col] = float(value)
                elif key == "step":
                    found["step"] = int(value)
        found["status"] = "done"
    else:
        found["status"] = "running" if found else "not started"
    return found


def collect(root: str) -> list[dict]:
    """One row per run under `root`: name, its overrides (fields) and final metrics."""
    manifest = os.path.join(root, "sweep.json")
    if os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            runs = json.load(f)["runs"]
    else:
        runs = []
        for point_file in sorted(pathlib.Path(root).glob("*/sweep_point.json")):
            runs.append({**json.loads(point_file.read_text()), "workdir": str(point_file.parent)})
    if not runs:
        raise FileNotFoundError(f"{root}: no sweep.json and no */sweep_point.json: not a sweep directory")
    rows = []
    for run in runs:
        workdir = run["workdir"]
        if not os.path.isabs(workdir) and not os.path.exists(workdir):
            workdir = os.path.join(root, run["name"])
        rows.append({"name": run["name"], **run["point"], **run_metrics(workdir)})
    return rows


def _fmt(v, col) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if col in METRICS else str(v)


def write_report(root: str, output: str | None = None, out=print) -> dict:
    """Writes report.md, report.csv and (with matplotlib) report.png; returns their paths."""
    rows = collect(root)
    output = output or root
    os.makedirs(output, exist_ok=True)
    point_cols = [k for row in rows for k in row if k not in ("name", "status", "step", *METRICS)]
    point_cols = list(dict.fromkeys(point_cols))
    cols = ["name", *point_cols, *METRICS, "step", "status"]
    paths = {"csv": os.path.join(output, "report.csv"), "md": os.path.join(output, "report.md")}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c), c) for c in cols) + " |" for r in rows]
    md = f"# Sweep report: {root}\n\n" + "\n".join(lines) + "\n"
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(md)
    out(md)
    png = _plot(rows, point_cols, os.path.join(output, "report.png"), out)
    if png:
        paths["png"] = png
    return paths


def _plot(rows, point_cols, path, out) -> str | None:
    """mIoU against the first numeric swept field, one line per combination of the others."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out("report.png not written: matplotlib is not installed (pip install matplotlib)")
        return None
    numeric = [c for c in point_cols if all(isinstance(r.get(c), (int, float)) for r in rows)]
    if not numeric or not any("mIoU" in r for r in rows):
        out("report.png not written: no numeric swept field or no mIoU yet")
        return None
    x, others = numeric[0], [c for c in point_cols if c != numeric[0]]
    series = {}
    for r in rows:
        if "mIoU" in r:
            label = ", ".join(f"{c.split('.')[-1]}={r.get(c)}" for c in others) or "mIoU"
            series.setdefault(label, []).append((r[x], r["mIoU"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel(x)
    ax.set_ylabel("mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- main --
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        p = cli_errors.ArgumentParser(prog="python -m stcl_jax.sweep report", description="Tabulate a sweep.")
        p.add_argument("root", help="the sweep's --workdir-root")
        p.add_argument("--output", help="where report.{md,csv,png} go (default: ROOT)")
        a = p.parse_args(argv[1:])
        write_report(a.root, a.output)
        return 0
    p = cli_errors.ArgumentParser(prog="python -m stcl_jax.sweep", description=__doc__.split("\n\n")[0],
                                epilog="`python -m stcl_jax.sweep report DIR` tabulates a sweep's results.")
    p.add_argument("--config", required=True, help="config file, optionally FILE:arg (e.g. configs/demo.py:runlocal)")
    p.add_argument("--sweep", required=True, help="name passed to the config's get_sweep")
    p.add_argument("--workdir-root", required=True, help="each run trains in WORKDIR_ROOT/<run name>")
    p.add_argument("--launcher", choices=("local", "slurm", "tpu"), default="local")
    p.add_argument("--launcher-arg", action="append", default=[],
                   help="extra argument for sbatch / tpu_pod.sh (repeatable; write --launcher-arg=--zone=Z)")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override applied to every run (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, launch nothing, write nothing")
    cli_errors.add_verbose_flag(p)
    a = p.parse_args(argv)
    try:  # config problems: a one-line message; errors once runs have started keep their traceback
        runs, base = prepare(a.config, a.sweep, a.workdir_root, launcher=a.launcher, launcher_args=a.launcher_arg,
                             overrides=dict(parse_override(o) for o in a.override))
    except (KeyError, ValueError, TypeError, AttributeError, FileNotFoundError) as e:
        print(f"error: {cli_errors.one_line(e)}", file=sys.stderr)
        return 2
    if a.launcher == "local" and not a.dry_run:  # the training progress lines, as `python -m stcl_jax.train`
        cli_errors.quiet_logging(a.verbose)
    try:
        launch(runs, base, a.config, a.sweep, a.workdir_root, launcher=a.launcher, dry_run=a.dry_run)
    except subprocess.CalledProcessError as e:
        print(f"python -m stcl_jax.sweep: a launch command failed ({e.returncode}): {shlex.join(e.cmd)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli_errors.run(main)

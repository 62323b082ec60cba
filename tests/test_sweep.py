"""stcl_jax.sweep: point expansion, dry-run commands and workdirs, the batch scaling rule, and the report."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from stcl_jax import sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


def _reexport(base: str) -> str:
    """Config-file text whose get_config is configs/<base>.py's."""
    return (f"from stcl_jax.config_files import load_config_module\n"
            f"get_config = load_config_module({str(REPO / 'configs' / (base + '.py'))!r}).get_config\n")


def _config_with_sweeps(tmp_path, base="swin_l", arg=""):
    """A config file that exposes configs/<base>.py's get_config and configs/sweeps.py's get_sweep."""
    path = tmp_path / f"{base}_sweeps.py"
    path.write_text(_reexport(base) + "from stcl_jax.configs.sweeps import get_sweep  # noqa\n")
    return f"{path}{':' + arg if arg else ''}"


def test_temperature_sweep_is_the_table3_grid():
    from stcl_jax.configs import sweeps as defs

    points = defs.get_sweep("temperature")
    assert sorted((p["loss.temperature"], p["model.projection.dim"]) for p in points) == sorted(
        (t, d) for t in (0.05, 0.07, 0.1, 0.2) for d in (256, 512))
    with pytest.raises(KeyError, match="unknown sweep 'temprature'"):
        defs.get_sweep("temprature")


def test_dry_run_prints_expected_commands_and_writes_nothing(tmp_path):
    spec = _config_with_sweeps(tmp_path)
    root = tmp_path / "sweeps" / "t"
    lines = []
    runs = sweep.run_sweep(spec, "temperature", str(root), dry_run=True, out=lines.append)
    assert not root.exists()
    assert len(runs) == len(lines) == 8
    names = [r["name"] for r in runs]
    assert names[:2] == ["temperature-0.05_dim-256", "temperature-0.07_dim-256"]
    assert names[-1] == "temperature-0.2_dim-512"
    assert len(set(names)) == 8
    expected_first = [sys.executable, "-m", "stcl_jax.train", "--config", spec,
                      "--workdir", str(root / "temperature-0.05_dim-256"),
                      "--config.loss.temperature=0.05", "--config.model.projection.dim=256"]
    assert runs[0]["command"] == expected_first
    assert lines[0].split() == expected_first  # printed, shell-quoted (nothing here needs quotes)
    for r in runs:
        assert r["workdir"] == str(root / r["name"])


def test_dry_run_slurm_and_tpu_commands(tmp_path):
    spec = _config_with_sweeps(tmp_path)
    runs = sweep.run_sweep(spec, "temperature_smoke", "/scratch/sw", launcher="slurm",
                           launcher_args=["--nodes=2"], dry_run=True, out=lambda _: None)
    assert runs[0]["command"] == [
        "sbatch", "--job-name=stcl-temperature-0.05", "--output=/scratch/sw/temperature-0.05/slurm-%j.out",
        "--error=/scratch/sw/temperature-0.05/slurm-%j.err", "--nodes=2", str(REPO / "launch/slurm.sbatch"),
        "--config", spec, "--workdir", "/scratch/sw/temperature-0.05", "--config.loss.temperature=0.05"]
    runs = sweep.run_sweep(spec, "temperature_smoke", "gs://b/sw", launcher="tpu",
                           launcher_args=["--tpu=v4", "--zone=z"], dry_run=True, out=lambda _: None)
    assert runs[1]["command"] == [
        str(REPO / "launch/tpu_pod.sh"), "--tpu=v4", "--zone=z", "--run-name", "temperature-0.2", "--",
        "--config", spec, "--workdir", "gs://b/sw/temperature-0.2", "--config.loss.temperature=0.2"]


def test_large_batch_points_scale_lr_steps_and_warmup_linearly(tmp_path):
    spec = _config_with_sweeps(tmp_path)
    runs = sweep.run_sweep(spec, "temperature_large_batch", str(tmp_path / "lb"), dry_run=True, out=lambda _: None)
    assert len(runs) == 8
    for r in runs:
        f = r["fields"]
        assert f["global_batch_size"] == 64
        assert f["optim.learning_rate"] == pytest.approx(7e-5 * 64 / 16, rel=1e-12)
        assert f["total_steps"] == 20_000 * 16 // 64
        assert f["optim.warmup_steps"] == 1_500 * 16 // 64
        assert f["loss.contrast_scope"] == "batch"
        config = sweep.apply_overrides(sweep.load_config_module(spec).get_config(), f)
        assert config.loss.contrast_scope == "batch" and config.global_batch_size == 64
        assert "--config.loss.contrast_scope=batch" in r["command"]
    # An explicit learning rate in a point wins over the rule.
    base = sweep.load_config_module(spec).get_config()
    assert sweep.resolve_point(base, {"global_batch_size": 32, "optim.learning_rate": 1e-4}) == {
        "global_batch_size": 32, "optim.learning_rate": 1e-4}


def test_overrides_are_checked_against_the_locked_config(tmp_path):
    spec = _config_with_sweeps(tmp_path)
    with pytest.raises(KeyError, match="no field 'temperatur' in loss"):
        sweep.run_sweep(spec, "temperature", str(tmp_path / "x"), overrides={"loss.temperatur": 1.0},
                        dry_run=True, out=lambda _: None)
    with pytest.raises(KeyError, match="no section 'los'"):
        sweep.apply_overrides(sweep.load_config_module(spec).get_config(), {"los.temperature": 1.0})
    no_sweeps = tmp_path / "no_sweeps.py"   # a config file with get_config but no get_sweep
    no_sweeps.write_text(_reexport("swin_t"))
    with pytest.raises(AttributeError, match="defines no get_sweep"):
        sweep.get_points(sweep.load_config_module(str(no_sweeps)), "no_sweeps.py", "temperature")
    assert sweep.parse_override("data.crop_size=(64, 64)") == ("data.crop_size", (64, 64))
    assert sweep.parse_override("loss.contrast_scope=batch") == ("loss.contrast_scope", "batch")


def test_cli_dry_run_and_clear_error(tmp_path):
    spec = _config_with_sweeps(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "stcl_jax.sweep", "--config", spec, "--sweep", "temperature_smoke",
                        "--workdir-root", str(tmp_path / "w"), "--dry-run", "--override", "total_steps=3"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("-m stcl_jax.train") == 2 and "--config.total_steps=3" in r.stdout
    r = subprocess.run([sys.executable, "-m", "stcl_jax.sweep", "--config", spec, "--sweep", "nope",
                        "--workdir-root", str(tmp_path / "w"), "--dry-run"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "unknown sweep 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_report_reads_final_metrics_and_jsonl(tmp_path):
    root = tmp_path / "sw"
    runs = [{"name": "temperature-0.05", "workdir": str(root / "temperature-0.05"), "point": {"loss.temperature": 0.05},
             "fields": {}},
            {"name": "temperature-0.2", "workdir": str(root / "temperature-0.2"), "point": {"loss.temperature": 0.2},
             "fields": {}},
            {"name": "temperature-0.3", "workdir": str(root / "temperature-0.3"), "point": {"loss.temperature": 0.3},
             "fields": {}}]
    os.makedirs(root)
    (root / "sweep.json").write_text(json.dumps({"runs": runs}))
    d0, d1 = root / "temperature-0.05", root / "temperature-0.2"
    d0.mkdir()
    d1.mkdir()
    (d0 / "final_metrics.json").write_text(json.dumps({"loss": 0.5, "val/mIoU": 0.25, "val/VC8": 0.75,
                                                       "val/VC16": 0.625, "step": 4}))
    (d1 / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n'
                                      '{"step": 2, "val/mIoU": 0.125}\n')
    paths = sweep.write_report(str(root), out=lambda _: None)
    md = pathlib.Path(paths["md"]).read_text()
    assert "| temperature-0.05 | 0.05 | 0.2500 | 0.7500 | 0.6250 | 0.5000 | 4 | done |" in md
    assert "| temperature-0.2 | 0.2 | 0.1250 |  |  | 1.5000 | 2 | running |" in md
    assert "| temperature-0.3 | 0.3 |  |  |  |  |  | not started |" in md
    csv_lines = pathlib.Path(paths["csv"]).read_text().splitlines()
    assert csv_lines[0] == "name,loss.temperature,mIoU,VC8,VC16,loss,step,status"
    assert csv_lines[1] == "temperature-0.05,0.05,0.25,0.75,0.625,0.5,4,done"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "png" not in paths
    else:
        assert pathlib.Path(paths["png"]).stat().st_size > 1000


def test_two_point_local_sweep_on_demo_config_runs_and_reports(tmp_path):
    """Trains two points of the demo config (runlocal: micro model, a few steps) one after another, then reports.

    The points differ only in `seed`, so both compile to the same programs: with a persistent compilation cache
    the second run reuses the first's executables (CPU time of this test ~ one tiny training run)."""
    spec = tmp_path / "demo_seeds.py"
    spec.write_text(_reexport("demo") + "\n\ndef get_sweep(name):\n    return [{'seed': 0}, {'seed': 1}]\n")
    root = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               XLA_FLAGS="--xla_backend_optimization_level=0")  # unoptimised CPU code compiles several times faster
    cmd = [sys.executable, "-m", "stcl_jax.sweep", "--config", f"{spec}:runlocal", "--sweep", "seeds",
           "--workdir-root", str(root), "--override", "total_steps=2", "--override", "checkpoint_every_steps=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("seed-0", "seed-1"):
        final = json.loads((root / name / "final_metrics.json").read_text())
        assert final["step"] == 2 and np.isfinite(final["loss"])
        assert json.loads((root / name / "sweep_point.json").read_text())["fields"] == {
            "total_steps": 2, "checkpoint_every_steps": 2, "seed": int(name[-1])}
        assert (root / name / "checkpoints" / "2").is_dir()
    # A rerun skips finished runs.
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.count("exists, skipped") == 2, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "stcl_jax.sweep", "report", str(root)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    md = (root / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| seed-")]
    assert [ln.split(" | ")[0] for ln in rows] == ["| seed-0", "| seed-1"]
    assert all(ln.endswith("| 2 | done |") for ln in rows), rows
    assert (root / "report.csv").read_text().count("\n") == 3

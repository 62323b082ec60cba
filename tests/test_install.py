"""A non-editable install: `pip install .` of a copy of the project into a fresh folder, then the README's demo
command run from outside the checkout, with the path of configs/demo.py. The configs find their schema in the
installed package (no checkout on sys.path), and the shipped label maps come with it."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "stcl_jax")


def test_installed_package_runs_the_demo_from_outside_the_checkout(tmp_path):
    project = tmp_path / "project"  # a copy, so the build leaves nothing in the checkout
    project.mkdir()
    for name in SOURCES:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, project / name)
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(project)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(project)
    assert (site / "stcl_jax" / "data" / "label_maps" / "ade20k_to_vspw.txt").is_file()
    assert not (site / "configs").exists()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(PYTHONPATH=str(site), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    where = subprocess.run([sys.executable, "-c", "import stcl_jax; print(stcl_jax.__file__)"], cwd=outside,
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    cmd = [sys.executable, "-m", "stcl_jax.train", "--config", os.path.join(REPO, "configs", "demo.py") + ":runlocal",
           "--workdir", "workdirs/demo", "--config.total_steps=2", "--config.checkpoint_every_steps=2",
           "--config.eval.max_videos=1"]
    r = subprocess.run(cmd, cwd=outside, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (outside / "workdirs" / "demo" / "checkpoints" / "2").is_dir()
    assert "final:" in r.stdout + r.stderr and "miou=" in r.stdout + r.stderr

"""Every shipped training config exposes the named sweeps, and every point applies to its locked config."""

import pathlib

import pytest

from stcl_jax import sweep

CONFIGS = sorted(str(p) for p in (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py")
                 if p.stem not in ("common", "sweeps"))


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: pathlib.Path(p).stem)
@pytest.mark.parametrize("name", ["temperature", "temperature_large_batch"])
def test_each_config_expands_the_sweep(config_path, name, tmp_path):
    runs, _ = sweep.plan(config_path + ":runlocal", name, str(tmp_path))
    assert len(runs) == len(sweep.load_config_module(config_path).get_sweep(name)) >= 2
    assert len({r["workdir"] for r in runs}) == len(runs)   # one workdir per point

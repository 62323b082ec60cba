"""User errors on the command line: one line `error: ...` naming the flag / field / file, exit 2, traceback only
with --debug; the whole config validated before any data or model work; quiet logs by default."""

import json
import logging
import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from stcl_jax import cli_errors, evaluate, export, predict, pseudo_label
from stcl_jax.training import checkpoint as ckpt_lib
from stcl_jax.training import config_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from stcl_jax.config_files import load_config_module  # noqa: E402
demo = load_config_module(os.path.join(REPO, "configs", "demo.py"))


def _one_line_exit_2(main, argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_errors.run(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_train_user_errors_are_one_line(tmp_path):
    """Each in its own `python -m stcl_jax.train` process (absl flags are parsed once per process), run together."""
    afile = tmp_path / "afile"
    afile.write_text("")
    base = ["--config", "configs/demo.py:runlocal", "--workdir", str(tmp_path / "w")]
    cases = {
        "--config.optim.learnin_rate: no such config field (did you mean \"learning_rate\"?)":
            ["--config", "configs/demo.py:runlocal", "--config.optim.learnin_rate=1", "--workdir", str(tmp_path)],
        "--config configs/nope.py: no such file": ["--config", "configs/nope.py", "--workdir", str(tmp_path)],
        "Unknown command line flag 'workdi'": ["--config", "configs/demo.py:runlocal", "--workdi", str(tmp_path)],
        "--config.data.num_frames=abc": [*base, "--config.data.num_frames=abc"],
        f"--workdir {afile} is a file": ["--config", "configs/demo.py:runlocal", "--workdir", str(afile)],
        "config.data.dir='/nonexistent/built' does not exist": [*base, "--config.data.dir=/nonexistent/built"],
        "config.data.crop_size=(-64, 96) must be positive; config.data.num_frames=-1 must be >= 1":
            [*base, "--config.data.crop_size=(-64, 96)", "--config.data.num_frames=-1"],
    }
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("STCL_DEBUG", None)
    procs = {k: subprocess.Popen([sys.executable, "-m", "stcl_jax.train", *argv], cwd=REPO, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, argv in cases.items()}
    for expected, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, (expected, err[-2000:])
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, (expected, err)
    assert not os.path.exists(tmp_path / "w"), "a failed start wrote into the workdir"
    debug = subprocess.run([sys.executable, "-m", "stcl_jax.train", *cases[f"--workdir {afile} is a file"],
                            "--debug"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "NotADirectoryError" in debug.stderr


@pytest.mark.parametrize("field,value,expected", [
    ("data.crop_size", (-64, 96), "config.data.crop_size=(-64, 96) must be positive"),
    ("data.crop_size", (64,), "config.data.crop_size=(64,) must be 2 integers"),
    ("data.num_frames", 0, "config.data.num_frames=0 must be >= 1"),
    ("data.num_frames", -1, "config.data.num_frames=-1 must be >= 1"),
    ("data.scale_range", (2.0, 1.0), "config.data.scale_range=(2.0, 1.0) must have lo <= hi"),
    ("data.pseudo_ratio", 1.0, "config.data.pseudo_ratio=1.0 must be < 1"),
    ("data.flip_prob", 1.5, "config.data.flip_prob=1.5 must be <= 1"),
    ("optim.learning_rate", float("nan"), "config.optim.learning_rate=nan must be a finite number"),
    ("eval.mode", "sliding", "config.eval.mode='sliding' must be 'slide' or 'whole'"),
    ("checkpoint_every_steps", 0, "config.checkpoint_every_steps=0 must be >= 1"),
])
def test_config_validation_names_each_field(field, value, expected):
    c = demo.get_config("runlocal")
    config_check.validate(c)  # the shipped config is valid
    *path, leaf = field.split(".")
    node = c
    for p in path:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError) as e:
        config_check.validate(c)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_missing_val_split_is_found_before_training(tmp_path):
    from stcl_jax.data.build import build_dataset
    from stcl_jax.data.synthetic import write_synthetic_vspw
    from stcl_jax.training import loop

    write_synthetic_vspw(str(tmp_path / "raw"), videos=3, frames=2, size=(32, 48), seed=0)
    build_dataset(str(tmp_path / "raw"), str(tmp_path / "built"), splits=("train",), progress=False)
    c = demo.get_config("runlocal")
    c.data.dir = str(tmp_path / "built")
    with pytest.raises(ValueError, match=r"config.data.val_split='val' is not in the build .* \(it has \['train'\]"):
        loop.train_and_evaluate(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")
    c.eval.at_end = False  # training without validation does not need the split
    config_check.check_val_split(c)


def test_inference_clis_name_the_flag_typed(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    err = _one_line_exit_2(evaluate.main, ["--checkpoint", missing, "--data", missing], capsys)
    assert f"--checkpoint {missing}: neither a params-only export" in err
    err = _one_line_exit_2(evaluate.main, ["--checkpoint", missing], capsys)
    assert "give --predictions DIR --data-root ROOT, or --checkpoint CKPT --data DIR" in err
    err = _one_line_exit_2(predict.main, ["--checkpoint", missing, "--input", missing, "--output", missing,
                                          "--alpha", "2"], capsys)
    assert "--alpha must be in [0, 1], got 2.0" in err
    err = _one_line_exit_2(pseudo_label.main, ["--checkpoints", missing, "--data", missing, "--split", "x",
                                               "--output", missing], capsys)
    assert f"--checkpoints {missing}: neither" in err
    err = _one_line_exit_2(pseudo_label.main, ["--checkpoint", missing, "--data", missing, "--split", "x",
                                               "--output", missing], capsys)  # not silently read as --checkpoints
    assert "--checkpoints" in err and "required" in err
    err = _one_line_exit_2(export.main, ["--workdir", missing, "--output", missing], capsys)
    assert f"{missing} has no checkpoints/ folder" in err
    from stcl_jax.data import label_map
    from stcl_jax.data.build import cli

    err = _one_line_exit_2(cli.main, ["--data-root", missing, "--output", str(tmp_path / "out")], capsys)
    assert missing in err
    err = _one_line_exit_2(label_map.main, ["--map", str(tmp_path / "nomap.txt"), "--source", "ade20k"], capsys)
    assert "nomap.txt" in err


def test_debug_keeps_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("STCL_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli_errors.run(export.main, ["--workdir", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    monkeypatch.delenv("STCL_DEBUG")
    with pytest.raises(FileNotFoundError):
        cli_errors.run(export.main, ["--workdir", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
                                     "--debug"])


def test_safetensors_without_torch_writes_nothing(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else
                        real(name, *a))
    out = tmp_path / "out"
    err = _one_line_exit_2(export.main, ["--workdir", str(tmp_path), "--output", str(out), "--safetensors"], capsys)
    assert "transformers not installed" in err and "pip install -e .[torch]" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """config.json + synchronous checkpoints 2 and 4 of a micro model (as training leaves them); copied per test."""
    import jax
    import optax

    from stcl_jax.models import build_segmenter, model_config
    from stcl_jax.training.state import TrainState

    cfg = model_config("micro", num_classes=3, window_size=4)
    path = str(tmp_path_factory.mktemp("tiny") / "run")
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": cfg.to_dict()}, f)
    shapes = jax.eval_shape(lambda k: build_segmenter(cfg).init({"params": k, "dropout": k, "drop_path": k},
                                                              np.zeros((1, 32, 32, 3), np.float32), train=False),
                            jax.random.key(0))
    ck = ckpt_lib.Checkpointer(path, every_steps=2, keep=5, async_save=False)
    it = iter(grain.MapDataset.range(4).to_iter_dataset())
    for step in (2, 4):
        v = jax.tree.map(lambda s: np.full(s.shape, step, s.dtype), shapes)
        ck.save(step, TrainState(step=np.int32(step), params=v["params"], batch_stats=v["batch_stats"],
                                 opt_state=optax.sgd(1.0).init(v["params"]), rng=np.zeros(2, np.uint32)), it)
    ck.close()
    return path


def test_export_skips_a_damaged_checkpoint(tiny_run, tmp_path, capsys, caplog):
    import shutil

    wd = str(shutil.copytree(tiny_run, tmp_path / "run"))
    state4 = os.path.join(wd, "checkpoints", "4", "state")
    data = max((os.path.join(r, f) for r, _, fs in os.walk(state4) for f in fs), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 64)
    with caplog.at_level(logging.WARNING, logger="stcl_jax"):
        summary = export.export(wd, str(tmp_path / "e"))
    assert summary["step"] == 2 and "checkpoint step 4" in caplog.text
    err = _one_line_exit_2(export.main, ["--workdir", wd, "--step", "4", "--output", str(tmp_path / "e4")], capsys)
    assert "--step 4" in err and "damaged" in err


def test_quiet_logging_hides_orbax_info(tiny_run, tmp_path, capsys):
    wd = tiny_run
    capsys.readouterr()
    for verbose in (False, True):
        argv = ["--workdir", wd, "--output", str(tmp_path / f"e{verbose}")] + (["--verbose"] if verbose else [])
        assert export.main(argv) == 0
        out = capsys.readouterr().out
        orbax_lines = [line for line in out.splitlines() if " INFO " in line and "stcl_jax" not in line
                       and "exported" not in line]
        assert bool(orbax_lines) == verbose, out
        assert "exported step 4" in out


def test_sweep_validates_every_point_before_any_run(tmp_path, capsys):
    from stcl_jax import sweep

    argv = ["--config", "configs/demo.py:runlocal", "--sweep", "temperature", "--workdir-root", str(tmp_path / "s"),
            "--override", "data.scale_range=(2.0, 1.0)"]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        capsys.readouterr()
        assert sweep.main(argv) == 2
        err = capsys.readouterr().err
    finally:
        os.chdir(cwd)
    assert err.startswith("error: sweep point temperature-") and err.count("\n") == 1
    assert "config.data.scale_range=(2.0, 1.0) must have lo <= hi" in err
    assert not os.path.exists(tmp_path / "s")

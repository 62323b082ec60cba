"""Training helpers without a model: FSDP specs, batch-size checks, distributed auto-detection, logging, NaN stop."""

import json
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from stcl_jax import distributed
from stcl_jax.training import logging as log_lib
from stcl_jax.training import mesh as mesh_lib


def test_fsdp_spec_picks_the_largest_divisible_dimension():
    assert mesh_lib.fsdp_spec((1024, 4096), 8, 1) == P(None, "data")
    assert mesh_lib.fsdp_spec((4096, 1024), 8, 1) == P("data", None)
    assert mesh_lib.fsdp_spec((1000, 12), 8, 1) == P("data", None)      # 1000 % 8 == 0
    assert mesh_lib.fsdp_spec((7, 9), 8, 1) == P()                        # nothing divisible: replicated
    assert mesh_lib.fsdp_spec((1024, 1024), 8, 2 ** 21) == P()            # below fsdp_min_size: replicated
    assert mesh_lib.fsdp_spec((), 8, 0) == P()
    assert mesh_lib.fsdp_spec((64,), 1, 0) == P()                         # one device: nothing to split


def test_state_shardings_follow_the_switch():
    mesh = mesh_lib.make_mesh()
    tree = {"w": jax.ShapeDtypeStruct((16, 4), np.float32), "b": jax.ShapeDtypeStruct((4,), np.float32)}
    for fsdp in (False, True):
        sh = mesh_lib.state_shardings(tree, mesh, fsdp=fsdp, min_size=1)
        assert set(sh) == {"w", "b"} and all(s.mesh.shape == mesh.shape for s in sh.values())


def test_batch_size_must_split_over_devices():
    mesh = mesh_lib.make_mesh()
    assert mesh_lib.check_batch_size(4, mesh) == 4
    n = jax.device_count()
    if n > 1:
        with pytest.raises(ValueError, match="global_batch_size"):
            mesh_lib.check_batch_size(n + 1, mesh)


def test_distributed_is_skipped_for_a_single_process(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES",
                "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(var, raising=False)
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
    assert not distributed.initialize_distributed("auto")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.initialize_distributed("auto")
    assert not distributed.initialize_distributed("off")
    assert not called
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.initialize_distributed("auto")
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "h0,h1")
    assert distributed.initialize_distributed("auto")
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize_distributed("auto")
    assert called[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    assert len(called) == 3
    with pytest.raises(ValueError, match="auto, on or off"):
        distributed.initialize_distributed("yes")


def test_progress_line_and_eta():
    speed = {"img_per_s": 12.345, "eta_s": 3723.4}
    line = log_lib.progress_line(120, 20000, {"loss": 1.5, "ce": 1.0, "aux": 0.5, "stcl": 2.0, "lr": 3.1e-5}, speed)
    assert line == ("step 120/20000 | loss 1.5000 (ce 1.0000 aux 0.5000 stcl 2.0000) | lr 3.1e-05 | 12.3 img/s | "
                    "ETA 1:02:03")
    assert log_lib.format_eta(float("inf")) == "?"
    p = log_lib.Progress(total_steps=10, images_per_step=4, start_step=2)
    s = p.update(4)
    assert s["steps_per_s"] > 0 and math.isclose(s["img_per_s"], 4 * s["steps_per_s"])
    assert math.isclose(s["eta_s"], 6 / s["steps_per_s"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_metric_stops_with_the_step(bad):
    log_lib.check_finite(3, {"loss": 6.8e9, "stcl": 2.0, "grad_norm": 1e30})  # large but finite: fine
    with pytest.raises(FloatingPointError, match="step 17.*stcl"):
        log_lib.check_finite(17, {"loss": 1.0, "stcl": bad})
    with pytest.raises(FloatingPointError, match="step 3.*grad_norm.*last good checkpoint is step 2"):
        log_lib.check_finite(3, {"loss": 1.0, "grad_norm": bad}, last_good="the last good checkpoint is step 2")
    with pytest.raises(FloatingPointError, match="step 4: non-finite parameters"):
        log_lib.check_finite(4, {"loss": 1.0}, state_finite=False)


def test_metric_writer_writes_jsonl_and_tensorboard(tmp_path):
    w = log_lib.MetricWriter(str(tmp_path), enabled=True)
    w.write(1, {"train/loss": np.float32(2.5)})
    w.write(2, {})
    w.write(3, {"train/loss": 1.5, "val/miou": 0.25})
    w.close()
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows == [{"step": 1, "train/loss": 2.5}, {"step": 3, "train/loss": 1.5, "val/miou": 0.25}]
    events = os.listdir(tmp_path / "tensorboard")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 100
    silent = log_lib.MetricWriter(str(tmp_path / "other"), enabled=False)
    silent.write(1, {"x": 1.0})
    assert not os.path.exists(tmp_path / "other")


def test_resume_changes_allowed_and_refused(tmp_path):
    """What a resume may change (applied and recorded) and what it may not (refused naming the fields, nothing
    written)."""
    from stcl_jax.config_files import load_config_module
    from stcl_jax.training import config_check

    demo = load_config_module(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                           "demo.py"))

    old = demo.get_config("runlocal")
    config_check.record_config(old, str(tmp_path), {}, resumed=False)
    saved = (tmp_path / "config.json").read_text()
    new = demo.get_config("runlocal")
    new.total_steps, new.log_every_steps, new.optim.learning_rate, new.eval.at_end = 40, 5, 1e-4, False
    new.optim.grad_clip_norm = 0.0  # off -> off: the optimizer state keeps its structure
    allowed = config_check.check_resume(new, str(tmp_path))
    assert allowed == {"eval.at_end": [True, False], "log_every_steps": [1, 5], "optim.learning_rate": [1e-3, 1e-4],
                       "total_steps": [4, 40]}
    config_check.record_config(new, str(tmp_path), allowed, resumed=True)
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 40
    rows = [json.loads(line) for line in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows] == ["start", "resume"] and rows[1]["changes"]["total_steps"] == [4, 40]
    saved = (tmp_path / "config.json").read_text()
    for field, value in (("model.decoder.channels", 8), ("data.crop_size", (32, 32)), ("data.num_frames", 3),
                         ("global_batch_size", 8), ("seed", 1), ("optim.grad_clip_norm", 1.0)):
        bad = demo.get_config("runlocal")
        bad.total_steps = 40
        *path, leaf = field.split(".")
        node = bad
        for p in path:
            node = node[p]
        node[leaf] = value
        with pytest.raises(ValueError, match=f"cannot resume .* with a changed {field} ") as e:
            config_check.check_resume(bad, str(tmp_path))
        assert "\n" not in str(e.value)
    assert (tmp_path / "config.json").read_text() == saved
    old_json = json.loads(saved)
    del old_json["eval"]["rerun"]  # a field added by a newer version: an allowed change
    assert config_check.changes(old_json, config_check.config_as_json(new)) == ({}, {"eval.rerun": ["<absent>",
                                                                                                   False]})


def test_state_flag_stops_a_finite_loss_with_a_non_finite_update():
    """The issue's case: the loss is still finite (6.8e9) but the update made parameters NaN. The step's flag
    catches it and the logger (called before every save) stops naming the last good checkpoint."""
    import jax.numpy as jnp

    from stcl_jax.training import loop

    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    metrics = {"loss": jnp.float32(6.8e9), "grad_norm": jnp.float32(1e20), "lr": jnp.float32(1e6)}
    assert bool(loop.all_finite(metrics, params, {}))
    poisoned = {"w": params["w"].at[1, 0].set(jnp.nan), "b": params["b"]}
    assert not bool(loop.all_finite(metrics, poisoned, {}))
    assert not bool(loop.all_finite(metrics, params, {"bn": {"var": jnp.array([1.0, jnp.inf])}}))
    assert not bool(loop.all_finite({**metrics, "grad_norm": jnp.float32(jnp.nan)}, params, {}))

    class Config:
        log_every_steps, total_steps = 100, 1000

    logger = loop._StepLogger(Config, writer=None, progress=None,
                              last_good=lambda: "the last good checkpoint is step 6 in /w/checkpoints")
    logger.record(7, {**metrics, loop.FINITE: jnp.bool_(True)})
    with pytest.raises(FloatingPointError, match="step 8: non-finite parameters .* last good checkpoint is step 6"):
        logger.record(8, {**metrics, loop.FINITE: jnp.bool_(False)})

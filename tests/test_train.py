"""End-to-end training: smoke run, kill + resume == straight run, 8 fake devices == 1 device, two processes.

Every run is a subprocess calling the real `train_and_evaluate` on the tiny `swin_t.py:runlocal` config (device
count and process count are fixed when jax is imported). The runs share a persistent compilation cache and XLA's
fastest CPU backend setting, so the identical programs of the resume test compile once.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: workdir, JSON dict of config overrides ("a.b": value), optional step after whose checkpoint the process
# sends itself a signal, optional signal name (default SIGKILL).
_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from stcl_jax import cli_errors, config_files, distributed
    from stcl_jax.training import checkpoint, loop
    cli_errors.quiet_logging()
    distributed.initialize_distributed("auto")
    config = config_files.load_config("configs/swin_t.py:runlocal")
    for key, value in json.loads(sys.argv[2]).items():
        *path, leaf = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    sig = getattr(signal, sys.argv[4]) if len(sys.argv) > 4 else signal.SIGKILL
    save = checkpoint.Checkpointer.save
    def save_then_maybe_die(self, step, *args, **kwargs):
        saved = save(self, step, *args, **kwargs)
        if step == kill_after:
            self.wait_until_finished()
            print("KILLING", step, flush=True)
            os.kill(os.getpid(), sig)
        return saved
    checkpoint.Checkpointer.save = save_then_maybe_die
    result = loop.train_and_evaluate(config, sys.argv[1])
    print("RESULT", json.dumps(result), flush=True)
""")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from stcl_jax.data.build import build_dataset
    from stcl_jax.data.synthetic import write_synthetic_vspw

    root = tmp_path_factory.mktemp("vspw")
    write_synthetic_vspw(str(root / "raw"), videos=4, frames=5, size=(64, 96), seed=0)
    build_dataset(str(root / "raw"), str(root / "built"), splits=("train", "val"), progress=False)
    return str(root / "built")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def _env(cache_dir, devices=1, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0")
    env.update(extra)
    return env


def _overrides(dataset, **kw):
    # optim.eps = 1e-4: some gradients are exactly 0 in exact arithmetic (the key part of the qkv bias: softmax
    # ignores a shift shared by all keys; a bias in front of conv + BatchNorm) and float noise elsewhere. With
    # eps = 1e-8 Adam blows that noise up to lr-sized steps whose signs depend on the summation order, so runs
    # with different device counts could not be compared tightly; with 1e-4 the noise stays negligible.
    o = {"data.dir": dataset, "total_steps": 6, "global_batch_size": 8, "checkpoint_every_steps": 3,
         "log_every_steps": 1, "optim.warmup_steps": 2, "optim.learning_rate": 1e-3, "optim.eps": 1e-4,
         # smaller than runlocal: these tests pay for tracing and compiling the step several times
         "data.crop_size": (32, 32), "data.base_size": (32, 48), "model.swin.depths": (1, 1, 1, 1),
         "eval.at_end": False}
    o.update({k.replace("__", "."): v for k, v in kw.items()})
    return o


def _start(workdir, overrides, env, kill_after=None, sig="SIGKILL"):
    argv = [sys.executable, "-c", _CHILD, str(workdir), json.dumps(overrides)]
    if kill_after is not None:
        argv += [str(kill_after), sig]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _train(workdir, overrides, env, kill_after=None, sig="SIGKILL"):
    code, out = _finish(_start(workdir, overrides, env, kill_after, sig))
    if kill_after is None or sig != "SIGKILL":
        assert code == 0, out[-4000:]
        return json.loads(out.split("RESULT ", 1)[1].splitlines()[0]), out
    return code, out


def _params(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    with ocp.PyTreeCheckpointer() as c:
        tree = c.metadata(path).item_metadata.tree
        args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        state = c.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    return state


def _jsonl(workdir, kind="train/loss"):
    """The rows of metrics.jsonl that hold `kind`."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if kind in row]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, dataset, cache_dir):
    """The reference: 6 uninterrupted steps on one device (checkpoints at 3 and 6)."""
    workdir = tmp_path_factory.mktemp("straight")
    result, out = _train(workdir, _overrides(dataset, eval__at_end=True), _env(cache_dir))
    return workdir, result, out


def _assert_same_params(a, b, what, **tolerance):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        if tolerance:
            np.testing.assert_allclose(y, x, err_msg=f"{what} {jax.tree_util.keystr(path)}", **tolerance)
        else:
            np.testing.assert_array_equal(y, x, err_msg=f"{what} {jax.tree_util.keystr(path)}")


def test_smoke_run_shows_progress_and_writes_logs(straight):
    workdir, result, out = straight
    assert result["step"] == 6 and np.isfinite(result["loss"]) and {"ce", "aux", "stcl", "lr"} <= set(result)
    assert 0.0 <= result["val/miou"] <= 1.0 and "validation at step 6" in out and "miou" in out
    assert "step 6/6 | loss" in out and "img/s" in out and "ETA" in out and "memory per device" in out
    assert [r["step"] for r in _jsonl(workdir)] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in _jsonl(workdir, "val/miou")] == [6]
    assert os.listdir(workdir / "tensorboard")
    with open(workdir / "config.json") as f:
        assert json.load(f)["total_steps"] == 6
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]


def test_kill_and_resume_is_bitwise(tmp_path, straight, dataset, cache_dir):
    """3 steps, SIGKILL, resume for 3 == 6 straight steps, bit for bit (same programs, same batches on CPU)."""
    env = _env(cache_dir)
    code, out = _train(tmp_path, _overrides(dataset), env, kill_after=3)
    assert code == -signal.SIGKILL and "KILLING 3" in out, out[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
    resumed, out = _train(tmp_path, _overrides(dataset), env)
    assert resumed["step"] == 6 and "restored step 3" in out
    _assert_same_params(_params(straight[0], 6), _params(tmp_path, 6), "resumed vs straight")
    logged = _jsonl(straight[0])
    after_resume = [r for r in _jsonl(tmp_path) if r["step"] > 3]
    assert [r["train/loss"] for r in after_resume] == [r["train/loss"] for r in logged[3:]]


def test_sigterm_saves_and_exits_cleanly(tmp_path, straight, dataset, cache_dir):
    """Preemption: SIGTERM during step 4 -> the loop saves step 4 (besides the periodic 3) and returns."""
    result, out = _train(tmp_path, _overrides(dataset), _env(cache_dir), kill_after=3, sig="SIGTERM")
    assert result["step"] == 4 and "preempted: saved step 4" in out
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]
    assert int(_params(tmp_path, 4)["step"]) == 4


def _assert_close_to_straight(workdir, straight, step):
    for r1, r in zip(_jsonl(straight[0])[:step], _jsonl(workdir)):
        for k in ("train/loss", "train/ce", "train/aux", "train/stcl"):
            # fp32 reductions in another order (8 shards vs 1): jax 0.11.2 was seen 1.1e-5 apart at step 3
            np.testing.assert_allclose(r[k], r1[k], rtol=5e-5, err_msg=f"step {r1['step']} {k}")
    a, b = _params(straight[0], step), _params(workdir, step)
    _assert_same_params(a["params"], b["params"], "params", rtol=1e-4, atol=1e-6)
    _assert_same_params(a["batch_stats"], b["batch_stats"], "batch_stats", rtol=1e-4, atol=1e-6)


def test_eight_devices_match_one(tmp_path, straight, dataset, cache_dir):
    """8 fake CPU devices, batch split 8 ways and (config.mesh.fsdp) parameters + optimizer state too: the
    1-device losses and parameters up to float rounding. (Plain replicated data parallel runs in the two-process
    test below.)"""
    o = _overrides(dataset, mesh__fsdp=True, mesh__fsdp_min_size=256)
    code, out = _train(tmp_path, o, _env(cache_dir, devices=8), kill_after=3)
    assert "'data': 8" in out and "KILLING 3" in out, out[-3000:]
    split = int(out.split("FSDP: ", 1)[1].split()[0])
    assert split >= 10, out[-3000:]
    _assert_close_to_straight(tmp_path, straight, 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(tmp_path, dataset, cache_dir):
    """Two processes on localhost through jax.distributed (4 clips each): both train the same global step and one
    checkpoint holds both data iterators. (Not compared with the 1-process run: each process reads its own
    shard of the records, so the clips of a global batch differ.)"""
    port = _free_port()
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2"}
    o = _overrides(dataset, total_steps=2, checkpoint_every_steps=1)
    procs = [_start(tmp_path, o, _env(cache_dir, **env, JAX_PROCESS_ID=str(i))) for i in range(2)]
    outs = [_finish(p) for p in procs]
    for code, out in outs:
        assert code == 0, out[-4000:]
    assert "2 processes" in outs[0][1] and "4 per process" in outs[0][1]
    results = [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for _, out in outs]
    assert results[0] == results[1] and results[0]["step"] == 2 and np.isfinite(results[0]["loss"])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(tmp_path / "checkpoints/2/data_iter"))
    assert int(_params(tmp_path, 2)["step"]) == 2

"""Checkpoints: state + grain iterator round trip, keep-K, a SIGKILL in the middle of a save, SIGTERM, init_from."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stcl_jax.training import checkpoint as ckpt_lib
from stcl_jax.training import mesh as mesh_lib
from stcl_jax.training import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _iterator():
    return iter(grain.MapDataset.range(1000).shuffle(seed=3).map(lambda x: x * 2).to_iter_dataset())


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def test_roundtrip_state_and_data_iterator(tmp_path):
    it = _iterator()
    for _ in range(7):
        next(it)
    state = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.int32(7),
             "rng": jax.random.PRNGKey(5)}
    ck = ckpt_lib.Checkpointer(str(tmp_path), every_steps=7, keep=3)
    assert ck.latest_step() is None
    assert ck.should_save(7, 100) and ck.should_save(100, 100) and not ck.should_save(8, 100)
    assert ck.save(7, state, it)
    ck.wait_until_finished()
    expected_next = [next(it) for _ in range(3)]
    it2 = _iterator()
    restored = ck.restore(7, _abstract(state), it2)
    ck.close()
    assert [next(it2) for _ in range(3)] == expected_next
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.dtype == b.dtype


def test_keeps_the_latest_k(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=2)
    it = _iterator()
    for step in range(1, 5):
        next(it)
        ck.save(step, {"x": jnp.float32(step)}, it)
    ck.close()
    assert ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=2).manager.all_steps() == [3, 4]


def test_restore_mismatch_names_the_checkpoint(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=2)
    it = _iterator()
    ck.save(1, {"x": jnp.zeros(3)}, it)
    ck.wait_until_finished()
    with pytest.raises(RuntimeError, match="could not restore checkpoint step 1"):
        ck.restore(1, {"y": jax.ShapeDtypeStruct((3,), jnp.float32)}, _iterator())
    ck.close()


_KILL_DURING_SAVE = textwrap.dedent("""
    import os, sys, time, grain, jax, jax.numpy as jnp
    from stcl_jax.training.checkpoint import Checkpointer
    ck = Checkpointer(sys.argv[1], every_steps=1, keep=5)
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(it)
    big = {"w": jnp.ones((64, 1024, 1024), jnp.float32)}   # 256 MiB: the write takes a while
    ck.save(1, {"w": big["w"] * 0 + 1}, it)
    ck.wait_until_finished()
    ck.save(2, {"w": big["w"] * 2}, it)                     # async: returns while the files are being written
    print("SAVING", flush=True)
    time.sleep(60)
""")


def test_kill_during_async_save_keeps_previous_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILL_DURING_SAVE, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        for line in proc.stdout:
            if line.startswith("SAVING"):
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = os.listdir(tmp_path / "checkpoints")
    assert any(name.startswith("2.") and "tmp" in name for name in left), f"not killed mid-save: {left}"
    ck = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=5)
    assert ck.latest_step() == 1, f"the interrupted step 2 must not count: {os.listdir(tmp_path / 'checkpoints')}"
    restored = ck.restore(1, {"w": jax.ShapeDtypeStruct((64, 1024, 1024), jnp.float32,
                                                       sharding=mesh_lib.replicated(mesh_lib.make_mesh()))},
                          _iterator())
    assert float(restored["w"].min()) == 1.0 and float(restored["w"].max()) == 1.0
    ck.close()


def test_sigterm_sets_the_preemption_flag(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=1)
    before = signal.getsignal(signal.SIGTERM)
    watcher = ckpt_lib.PreemptionWatcher(ck.manager)
    try:
        assert not watcher.preempted(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.preempted(2)
    finally:
        watcher.restore_handler()
        ck.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_merge_pretrained_reports_missing_unused_and_mismatched():
    params = {"backbone": {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, "head": {"w": jnp.zeros((3, 4))}}
    tx = optax.adamw(1e-3)
    state = state_lib.TrainState(step=jnp.int32(0), params=params, batch_stats={"bn": {"mean": jnp.zeros(4)}},
                                 opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    abstract = jax.eval_shape(lambda: state)
    shardings = mesh_lib.state_shardings(abstract, mesh_lib.make_mesh())
    loaded = {"params": {"backbone": {"w": np.ones((2, 3), np.float32), "b": np.ones(5, np.float32)},
                         "extra": {"k": np.ones(2, np.float32)}},
              "batch_stats": {"bn": {"mean": np.full(4, 2.0, np.float32)}}}
    new, report = state_lib.merge_pretrained(state, loaded, tx, shardings, source="test")
    assert report["loaded"] == ["params/backbone/w", "batch_stats/bn/mean"]
    assert report["missing"] == ["params/head/w"]
    assert report["unused"] == ["params/extra/k"]
    assert report["mismatched"] == ["params/backbone/b: (5,) in test vs (3,)"]
    np.testing.assert_array_equal(new.params["backbone"]["w"], np.ones((2, 3)))
    np.testing.assert_array_equal(new.params["backbone"]["b"], np.zeros(3))
    np.testing.assert_array_equal(new.batch_stats["bn"]["mean"], np.full(4, 2.0))


def test_init_from_reads_a_params_only_export(tmp_path):
    """The loop's `config.init_from` path: models.io.save_variables -> load_variables -> merge_pretrained."""
    from stcl_jax.models import model_config
    from stcl_jax.models.io import save_variables
    from stcl_jax.training import loop

    params = {"backbone": {"w": jnp.zeros((2, 3))}, "head": {"w": jnp.zeros((3, 4))}}
    tx = optax.adamw(1e-3)
    state = state_lib.TrainState(step=jnp.int32(0), params=params, batch_stats={}, opt_state=tx.init(params),
                                 rng=jax.random.PRNGKey(0))
    shardings = mesh_lib.state_shardings(jax.eval_shape(lambda: state), mesh_lib.make_mesh())
    export = str(tmp_path / "export")
    save_variables(export, {"params": {"backbone": {"w": np.full((2, 3), 3.0, np.float32)},
                                       "other": {"w": np.ones(2, np.float32)}}}, model_config("micro"))
    new = loop._init_from(export, state, tx, shardings, str(tmp_path))
    np.testing.assert_array_equal(new.params["backbone"]["w"], np.full((2, 3), 3.0))
    with open(tmp_path / "init_from_report.json") as f:
        report = json.load(f)
    assert report["missing"] == ["params/head/w"] and report["unused"] == ["params/other/w"]
    save_variables(export, {"params": {"x": np.ones(2, np.float32)}}, model_config("micro"))
    with pytest.raises(ValueError, match="none of its 1 arrays"):
        loop._init_from(export, state, tx, shardings, str(tmp_path))

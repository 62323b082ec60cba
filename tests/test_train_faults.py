"""Training faults in a temporary workdir: a finished rerun, refused and allowed config changes on resume, a
damaged newest checkpoint under keep-K, replayed steps in the logs, and a run that diverges.

One tiny run (`base`: 6 steps, checkpoints 3 and 6) is trained once per module and copied for each test; the
runs are subprocesses of test_train's child script (same tiny config, shared compilation cache).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from test_train import REPO, _env, _finish, _jsonl, _overrides, _params, _start, cache_dir, dataset  # noqa: F401

from stcl_jax import workdir as workdir_lib


def _run(workdir, overrides, env):
    code, out = _finish(_start(workdir, overrides, env))
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) if "RESULT " in out else None
    return code, out, result


@pytest.fixture(scope="module")
def base(tmp_path_factory, dataset, cache_dir):  # noqa: F811
    workdir = tmp_path_factory.mktemp("base") / "w"
    code, out, result = _run(workdir, _overrides(dataset), _env(cache_dir))
    assert code == 0 and result["step"] == 6, out[-3000:]
    return workdir


def _copy(base, tmp_path):
    return shutil.copytree(base, tmp_path / "w")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_rerun_of_a_finished_run_stops_at_once(base, tmp_path, dataset, cache_dir):  # noqa: F811
    workdir = _copy(base, tmp_path)
    metrics = _read(workdir / "metrics.jsonl")
    code, out, result = _run(workdir, _overrides(dataset), _env(cache_dir))
    assert code == 0 and "already at step 6 of 6" in out, out[-3000:]
    assert "compiled" not in out and "validation" not in out
    assert result["step"] == 6 and np.isfinite(result["loss"])
    assert _read(workdir / "metrics.jsonl") == metrics


def test_resume_with_another_model_is_refused_before_anything_is_written(base, tmp_path, dataset, cache_dir):  # noqa: F811
    workdir = _copy(base, tmp_path)
    before = {name: _read(workdir / name) for name in ("config.json", "config_history.jsonl", "metrics.jsonl")}
    o = _overrides(dataset, model__decoder__channels=48, data__num_frames=3)
    code, out, _ = _run(workdir, o, _env(cache_dir))
    assert code != 0
    line = out.strip().splitlines()[-1]
    assert "cannot resume" in line and "model.decoder.channels 32 -> 48" in line and "data.num_frames 2 -> 3" in line
    assert {name: _read(workdir / name) for name in before} == before
    assert "train.log" not in os.listdir(workdir) or "cannot resume" not in _read(workdir / "train.log")


def test_train_cli_refusal_is_one_line(base, tmp_path, dataset, cache_dir):  # noqa: F811
    workdir = _copy(base, tmp_path)
    argv = [sys.executable, "-m", "stcl_jax.train", "--config", "configs/swin_t.py:runlocal", "--workdir",
            str(workdir), *(f"--config.{k}={tuple(v) if isinstance(v, list) else v}"
                            for k, v in _overrides(dataset, model__swin__embed_dim=48).items())]
    r = subprocess.run(argv, cwd=REPO, env=_env(cache_dir), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: cannot resume")
    assert "model.swin.embed_dim" in r.stderr


def _corrupt_newest(workdir, step):
    step_dir = os.path.join(workdir, "checkpoints", str(step), "state")
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if os.sep + "d" in r]
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        data = bytearray(f.read(4096))
        f.seek(0)
        f.write(bytes(x ^ 0xFF for x in data))


def test_damaged_newest_with_keep_k_and_no_replayed_rows(base, tmp_path, dataset, cache_dir):  # noqa: F811
    """Checkpoint 6 damaged, resume with a checkpoint every step and keep 2 (allowed changes; the step program is
    the cached one): warns, moves 6 aside, resumes from 3, trains 4..6 again; GC only ever drops intact steps;
    metrics.jsonl holds each step once; the changes are in config_history.jsonl."""
    workdir = _copy(base, tmp_path)
    _corrupt_newest(workdir, 6)
    o = _overrides(dataset, checkpoint_every_steps=1, keep_checkpoints=2)
    code, out, result = _run(workdir, o, _env(cache_dir))
    assert code == 0 and result["step"] == 6, out[-3000:]
    assert "checkpoint step 6" in out and "damaged" in out and "restored step 3" in out
    assert os.path.isdir(workdir / "checkpoints.bad" / "6")
    directory = os.path.join(workdir, "checkpoints")
    assert workdir_lib.step_folders(directory) == [5, 6]
    assert all(workdir_lib.check_step(directory, s) is None for s in (5, 6))
    _assert_same_tree(_params(base, 6), _params(workdir, 6))  # the replayed steps are the same steps
    assert [r["step"] for r in _jsonl(workdir)] == list(range(1, 7))
    history = [json.loads(line) for line in _read(workdir / "config_history.jsonl").splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[-1]["changes"] == {"checkpoint_every_steps": [3, 1], "keep_checkpoints": [3, 2]}
    assert json.loads(_read(workdir / "config.json"))["keep_checkpoints"] == 2
    assert "restored step 3" in _read(workdir / "train.log")
    events = sorted(os.listdir(workdir / "tensorboard"))
    assert len(events) == 2  # the resumed writer's file starts with a purge from step 4 (tensorboardX purge_step)
    starts = [e.step for e in _events(workdir / "tensorboard" / events[-1]) if e.session_log.status == 1]
    assert starts == [4]  # SessionLog.START at 4: TensorBoard drops the first file's events from step 4 on


def _events(path):
    """The Event protos of a TensorBoard event file (TFRecord framing: length, crc, payload, crc)."""
    from tensorboardX.proto import event_pb2

    with open(path, "rb") as f:
        raw = f.read()
    offset = 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset:offset + 8], "little")
        event = event_pb2.Event()
        event.ParseFromString(raw[offset + 12:offset + 12 + length])
        yield event
        offset += 12 + length + 4


def _assert_same_tree(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _finite(tree):
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_diverging_run_never_checkpoints_a_non_finite_state(base, tmp_path, dataset, cache_dir):  # noqa: F811
    """learning_rate 1e6 with a checkpoint every step: the run stops naming the step and the last good checkpoint,
    and every checkpoint on disk is finite."""
    workdir = _copy(base, tmp_path)
    o = _overrides(dataset, total_steps=30, optim__learning_rate=1e6, checkpoint_every_steps=1, keep_checkpoints=30)
    code, out, _ = _run(workdir, o, _env(cache_dir))
    assert code != 0, out[-3000:]
    line = [x for x in out.splitlines() if "FloatingPointError" in x][-1]
    steps = workdir_lib.step_folders(os.path.join(workdir, "checkpoints"))
    assert f"the last good checkpoint is step {steps[-1]}" in line and "training stopped at step" in line
    for step in steps:
        assert _finite(_params(workdir, step)), f"checkpoint {step} holds a non-finite leaf"

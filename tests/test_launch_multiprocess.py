"""launch/local_multiprocess.sh trains the demo config for a few steps as 2 jax.distributed processes (CPU)."""

import json
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_two_processes_train_a_few_steps(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    # Unoptimised XLA CPU code compiles several times faster; the programs are the same.
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0", PYTHONPATH=str(REPO))
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    r = subprocess.run(
        ["bash", str(REPO / "launch/local_multiprocess.sh"), "-n", "2", "--log-dir", str(logs), "--",
         "--config", str(REPO / "configs/demo.py") + ":runlocal", "--workdir", str(workdir),
         "--config.total_steps=2", "--config.checkpoint_every_steps=2", "--config.global_batch_size=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = [(logs / f"process-{i}.log").read_text() for i in range(2)]
    assert r.returncode == 0, r.stderr[-3000:] + out[0][-3000:] + out[1][-3000:]
    for i, log in enumerate(out):
        assert f"jax.distributed: process {i} of 2" in log
        assert "(2 processes)" in log and "1 per process" in log
    assert "step 2/2" in out[0] and "final:" in out[0]          # process 0 logs progress and the result
    assert "step 2/2" in r.stdout                                  # ... and the launcher echoes it
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    # Each process saved its own data-iterator position in the one checkpoint.
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(workdir / "checkpoints/2/data_iter"))
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2

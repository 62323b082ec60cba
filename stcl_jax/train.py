r"""Trains an STCL segmenter: `python -m stcl_jax.train --config configs/swin_l.py --workdir DIR`.

`--config FILE[:runlocal]` is a locked ml_collections config (configs/*.py); override any field with
`--config.optim.learning_rate=1e-4` (an unknown field is an error). Rerunning the same command resumes from the
newest checkpoint in DIR. Multi-process (TPU pod, SLURM, several processes on one machine): the same command on
every process; `jax.distributed.initialize()` runs when the environment says so (`--distributed=auto`, see
`stcl_jax.distributed.initialize_distributed`), or always with `--distributed=on`.

Errors a user can cause (a config typo, a missing config file, a --workdir that is a file, a missing data dir, a
refused resume, a non-finite step) end in one line, `error: ...`, exit 2; `--debug` or STCL_DEBUG=1 keeps the
traceback (stcl_jax.cli_errors).
"""

import logging
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from stcl_jax import cli_errors, distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/swin_l.py[:runlocal]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and the resolved config")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "call jax.distributed.initialize(): auto = when the environment is multi-process")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (else JAX_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "process count (else JAX_NUM_PROCESSES / auto-detected)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's id (else JAX_PROCESS_ID / auto-detected)")
_VERBOSE = flags.DEFINE_bool("verbose", False, "also show other libraries' INFO lines (Orbax, JAX)")
flags.mark_flags_as_required(["config", "workdir"])


def _config_file(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_override_error(argv: list[str], e: Exception) -> str:
    """'--config.optim.learnin_rate: no such config field (did you mean "learning_rate"?)' from ml_collections'
    message, else the message."""
    text = " ".join(str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\'", "'").split())
    key = re.search(r"'([A-Za-z_][A-Za-z0-9_]*)'", text)
    flag = next((a.split("=", 1)[0] for a in argv if key and a.startswith("--config.")
                 and key.group(1) in a.split("=", 1)[0].split(".")), None)
    if flag is None:
        return f"--config: {text}"
    hint = re.search(r"Did you mean (.*?) instead", text)
    return f"{flag}: no such config field" + (f" (did you mean {hint.group(1)}?)" if hint else "")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with one-line errors naming the flag (the config file is imported here)."""
    spec = _config_file(argv[1:])
    if spec is not None and not os.path.isfile(spec.split(":", 1)[0]):
        raise cli_errors.UsageError(f"--config {spec}: no such file {spec.split(':', 1)[0]!r}")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        raise cli_errors.UsageError(cli_errors.one_line(e)) from e
    except (AttributeError, KeyError, TypeError) as e:  # ml_collections: an unknown field or a value of wrong type
        raise cli_errors.UsageError(_config_override_error(argv, e)) from e


def main(argv):
    if len(argv) > 1:
        raise cli_errors.UsageError(f"unexpected arguments: {argv[1:]}")
    cli_errors.quiet_logging(_VERBOSE.value)

    # Must come before anything touches a jax device.
    distributed.initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from stcl_jax.training.loop import train_and_evaluate

    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.getLogger("stcl_jax").info("final: %s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in sorted(result.items())))


def cli(argv: list[str]) -> int:
    app.run(main, argv=[sys.argv[0], *argv], flags_parser=parse_flags)
    return 0


if __name__ == "__main__":
    cli_errors.run(cli)

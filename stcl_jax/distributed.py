"""The multi-process runtime: `initialize_distributed`, called by every command line before jax touches a device."""

import logging
import os

import jax

log = logging.getLogger("stcl_jax")

# Environment variables that mean "this job has several processes" (SLURM, Open MPI, explicit JAX settings).
_MULTIPROCESS_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def _env_process_count() -> int:
    for var in _MULTIPROCESS_ENV:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    for var in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):  # multi-host Cloud TPU slice
        if "," in os.environ.get(var, ""):
            return len(os.environ[var].split(","))
    return 1


def initialize_distributed(mode: str = "auto", coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> bool:
    """Calls `jax.distributed.initialize` when the job is multi-process; returns whether it did.

    mode "auto": initialise when a coordinator address is given (argument or JAX_COORDINATOR_ADDRESS) or the
    environment reports several processes (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE, JAX_NUM_PROCESSES > 1, or a
    TPU_WORKER_HOSTNAMES list); where a TPU VM publishes its hosts only as metadata, pass mode "on". "on": always;
    "off": never. Missing arguments are read from JAX_NUM_PROCESSES / JAX_PROCESS_ID, else left to jax's own cluster detection (SLURM, MPI, TPU).
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--distributed must be auto, on or off, got {mode!r}")
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if mode == "off" or (mode == "auto" and not address and _env_process_count() <= 1):
        return False
    if num_processes <= 0 and os.environ.get("JAX_NUM_PROCESSES", "").isdigit():
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id < 0 and os.environ.get("JAX_PROCESS_ID", "").isdigit():
        process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=address or None,
                               num_processes=num_processes if num_processes > 0 else None,
                               process_id=process_id if process_id >= 0 else None)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True

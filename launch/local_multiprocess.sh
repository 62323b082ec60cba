#!/usr/bin/env bash
# Starts N processes of one stcl_jax command on this machine, joined into one JAX runtime over localhost.
#
# This is how the multi-process path is tested without a cluster: every process gets the coordinator address,
# the process count and its own process id through the environment variables that `stcl_jax.train` (and the other
# CLIs) hand to `jax.distributed.initialize()`. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [options] [-- ARGS...]

Runs `python -m MODULE ARGS...` as NUM_PROCESSES processes on localhost with a jax.distributed coordinator on
127.0.0.1:PORT. Each process sees
  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i   (i = 0 .. N-1)
Process 0's output is shown here; every process writes LOG_DIR/process-<i>.log. If one process fails, the others
are stopped and the script exits with that process's status.

Options (each also settable by the environment variable in brackets):
  -n, --num-processes N     number of processes (NUM_PROCESSES, default 2)
  -m, --module MODULE       python module to run (MODULE, default stcl_jax.train)
  -p, --port PORT           coordinator port (COORDINATOR_PORT, default: a free port)
  --log-dir DIR             per-process logs (LOG_DIR, default ./logs/local-<date>-<pid>)
  --cpu-devices K           give each process K fake CPU devices (CPU_DEVICES; sets XLA_FLAGS, CPU only)
  --gpus-per-process K      process i sees GPUs i*K .. i*K+K-1 via CUDA_VISIBLE_DEVICES (GPUS_PER_PROCESS)
  --python PATH             interpreter (PYTHON, default: python on PATH)
  -h, --help                show this help

Example (two processes, two fake CPU devices each, the tiny demo config):
  launch/local_multiprocess.sh -n 2 --cpu-devices 2 -- --config configs/demo.py:runlocal --workdir /tmp/mp
EOF
}

die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }

NUM_PROCESSES="${NUM_PROCESSES:-2}"
MODULE="${MODULE:-stcl_jax.train}"
COORDINATOR_PORT="${COORDINATOR_PORT:-}"
LOG_DIR="${LOG_DIR:-}"
CPU_DEVICES="${CPU_DEVICES:-}"
GPUS_PER_PROCESS="${GPUS_PER_PROCESS:-}"
PYTHON="${PYTHON:-python}"

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -n|--num-processes) need_value "$@"; NUM_PROCESSES="$2"; shift 2 ;;
    -m|--module) need_value "$@"; MODULE="$2"; shift 2 ;;
    -p|--port) need_value "$@"; COORDINATOR_PORT="$2"; shift 2 ;;
    --log-dir) need_value "$@"; LOG_DIR="$2"; shift 2 ;;
    --cpu-devices) need_value "$@"; CPU_DEVICES="$2"; shift 2 ;;
    --gpus-per-process) need_value "$@"; GPUS_PER_PROCESS="$2"; shift 2 ;;
    --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (arguments for the module go after --; see --help)" ;;
  esac
done

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$NUM_PROCESSES" || die "NUM_PROCESSES must be a positive integer, got '$NUM_PROCESSES'"
[[ -z "$CPU_DEVICES" ]] || is_count "$CPU_DEVICES" || die "CPU_DEVICES must be a positive integer, got '$CPU_DEVICES'"
[[ -z "$GPUS_PER_PROCESS" ]] || is_count "$GPUS_PER_PROCESS" \
  || die "GPUS_PER_PROCESS must be a positive integer, got '$GPUS_PER_PROCESS'"
command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON or --python)"
if [[ -z "$COORDINATOR_PORT" ]]; then
  COORDINATOR_PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$COORDINATOR_PORT" =~ ^[0-9]+$ ]] || die "COORDINATOR_PORT must be a port number, got '$COORDINATOR_PORT'"
LOG_DIR="${LOG_DIR:-logs/local-$(date +%Y%m%d-%H%M%S)-$$}"
mkdir -p "$LOG_DIR"

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'stop_all; exit 130' INT TERM

echo "local_multiprocess.sh: ${NUM_PROCESSES} x python -m ${MODULE} $*; coordinator 127.0.0.1:${COORDINATOR_PORT};" \
  "logs in ${LOG_DIR}" >&2
for ((i = 0; i < NUM_PROCESSES; i++)); do
  log="${LOG_DIR}/process-${i}.log"
  (
    export JAX_COORDINATOR_ADDRESS="127.0.0.1:${COORDINATOR_PORT}" JAX_NUM_PROCESSES="$NUM_PROCESSES" JAX_PROCESS_ID="$i"
    if [[ -n "$CPU_DEVICES" ]]; then
      export JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
    fi
    if [[ -n "$GPUS_PER_PROCESS" ]]; then
      CUDA_VISIBLE_DEVICES="$(seq -s, $((i * GPUS_PER_PROCESS)) $((i * GPUS_PER_PROCESS + GPUS_PER_PROCESS - 1)))"
      export CUDA_VISIBLE_DEVICES
    fi
    if ((i == 0)); then
      exec "$PYTHON" -m "$MODULE" "$@" > >(tee "$log") 2>&1
    else
      exec "$PYTHON" -m "$MODULE" "$@" >"$log" 2>&1
    fi
  ) &
  pids+=("$!")
done

# Wait for all; on the first failure stop the rest (they would otherwise hang in a collective until a timeout).
status=0
for ((left = NUM_PROCESSES; left > 0; left--)); do
  wait -n || status=$?
  if ((status != 0)); then
    echo "local_multiprocess.sh: a process exited with status ${status}; stopping the others (logs in ${LOG_DIR})" >&2
    for ((i = 0; i < NUM_PROCESSES; i++)); do
      echo "--- tail of ${LOG_DIR}/process-${i}.log" >&2
      tail -n 20 "${LOG_DIR}/process-${i}.log" >&2 || true
    done
    break
  fi
done
stop_all
trap - EXIT
exit "$status"

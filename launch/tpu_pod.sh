#!/usr/bin/env bash
# Copies this repository to every worker of a Cloud TPU VM slice and starts the same stcl_jax command on all of
# them. On TPU VMs jax.distributed.initialize() finds the coordinator, process count and process id by itself
# (TPU metadata), so every worker runs the identical command. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [options] [-- ARGS...]

1. packs the files git tracks in this repository (plus uncommitted edits to them) into a tarball,
2. `gcloud compute tpus tpu-vm scp` it to every worker (--worker=all) and unpacks it in REMOTE_DIR,
3. optionally (--setup) creates REMOTE_DIR/.venv and installs the package with jax[tpu],
4. `gcloud compute tpus tpu-vm ssh --worker=all` runs on every worker
     cd REMOTE_DIR && [source .venv/bin/activate] && python -m MODULE ARGS...
   with output to REMOTE_DIR/logs/<run name>-worker-<hostname>.log (and this terminal, unless --detach).
   jax.distributed.initialize() then reads coordinator, process count and id from the TPU metadata.

Options (each also settable by the environment variable in brackets):
  --tpu NAME          TPU VM name (TPU_NAME, required)
  --zone ZONE         its zone (ZONE, required)
  --project PROJECT   GCP project (PROJECT, default: gcloud's configured project)
  --remote-dir DIR    code directory on the workers (REMOTE_DIR, default stcl_jax; relative = under $HOME)
  -m, --module MOD    python module to run (MODULE, default stcl_jax.train)
  --run-name NAME     names the log files (RUN_NAME, default run-<date>)
  --env KEY=VALUE     extra environment for the command on every worker (repeatable)
  --setup             create the venv and pip install (".[tpu]" is not defined: installs -e . and jax[tpu])
  --no-copy           skip steps 1-2 (code already there)
  --detach            start with nohup and return at once; read the logs on the workers
  --no-distributed-flag  do not append --distributed=on (for a module without that flag; by default it is
                      appended unless ARGS choose --distributed=..., because stcl_jax CLIs cannot detect a
                      TPU slice from the environment alone and jax.distributed.initialize() must be called)
  --dry-run           print the gcloud commands instead of running them
  -h, --help          show this help

Example (a v4-32 slice, 4 workers):
  launch/tpu_pod.sh --tpu stcl-v4-32 --zone us-central2-b --setup -- \
      --config configs/swin_l.py --workdir gs://my-bucket/stcl/swin_l
EOF
}

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
REMOTE_DIR="${REMOTE_DIR:-stcl_jax}"
MODULE="${MODULE:-stcl_jax.train}"
RUN_NAME="${RUN_NAME:-run-$(date +%Y%m%d-%H%M%S)}"
GCLOUD="${GCLOUD:-gcloud}"
SETUP=0 COPY=1 DETACH=0 DRY_RUN=0 DISTRIBUTED_FLAG=1
extra_env=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --tpu) need_value "$@"; TPU_NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    -m|--module) need_value "$@"; MODULE="$2"; shift 2 ;;
    --run-name) need_value "$@"; RUN_NAME="$2"; shift 2 ;;
    --env) need_value "$@"; [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$2'"
           extra_env+=("$2"); shift 2 ;;
    --setup) SETUP=1; shift ;;
    --no-copy) COPY=0; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-distributed-flag) DISTRIBUTED_FLAG=0; shift ;;
    --) shift; break ;;
    *) die "unknown option '$1' (arguments for the module go after --; see --help)" ;;
  esac
done

[[ -n "$TPU_NAME" ]] || die "TPU_NAME is not set: pass --tpu NAME (see --help)"
[[ -n "$ZONE" ]] || die "ZONE is not set: pass --zone ZONE (see --help)"
[[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "RUN_NAME may only hold letters, digits and ._- (got '$RUN_NAME')"
if ((DRY_RUN == 0)); then
  command -v "$GCLOUD" >/dev/null || die "'$GCLOUD' not found: install the Google Cloud CLI (or set GCLOUD)"
fi

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gcloud_args=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || gcloud_args+=(--project="$PROJECT")

run() {  # prints (dry run) or runs a command
  if ((DRY_RUN)); then printf '%q ' "$@"; echo; else "$@"; fi
}

# The remote command, built with %q quoting so arguments with spaces or quotes survive the ssh hop.
remote_cmd="set -euo pipefail; cd $(printf '%q' "$REMOTE_DIR")"
if ((COPY)); then
  remote_cmd+="; tar -xzf ~/stcl_jax_code.tgz"
fi
if ((SETUP)); then
  remote_cmd+="; python3 -m venv .venv && . .venv/bin/activate && pip install -q -U 'jax[tpu]' && pip install -q -e ."
fi
remote_cmd+="; if [[ -f .venv/bin/activate ]]; then . .venv/bin/activate; fi; mkdir -p logs"
remote_cmd+="; log=logs/$(printf '%q' "$RUN_NAME")-worker-\$(hostname).log"
py_cmd="env PYTHONUNBUFFERED=1"
for kv in "${extra_env[@]+"${extra_env[@]}"}"; do py_cmd+=" $(printf '%q' "$kv")"; done
py_cmd+=" python -m $(printf '%q' "$MODULE")"
# A TPU VM publishes its worker list only as metadata, so stcl_jax's `--distributed=auto` cannot see that the job
# is multi-host: ask for jax.distributed.initialize() explicitly unless the arguments already choose.
distributed_flag=1
for a in "$@"; do
  py_cmd+=" $(printf '%q' "$a")"
  if [[ "$a" == --distributed* || "$a" == --nodistributed ]]; then distributed_flag=0; fi
done
if ((DISTRIBUTED_FLAG && distributed_flag)); then py_cmd+=" --distributed=on"; fi
if ((DETACH)); then
  remote_cmd+="; nohup $py_cmd >\"\$log\" 2>&1 </dev/null & echo \"\$(hostname): started, log \$PWD/\$log\""
else
  remote_cmd+="; $py_cmd 2>&1 | tee \"\$log\""
fi

if ((COPY)); then
  tarball="$(mktemp -t stcl_jax_code.XXXXXX.tgz)"
  trap 'rm -f "$tarball"' EXIT
  # Files git tracks or would track, as they are in the working tree (uncommitted edits travel too); not what
  # .gitignore excludes (.venv, data, workdirs).
  (
    cd "$REPO_DIR"
    while IFS= read -r -d '' f; do
      if [[ -f "$f" ]]; then printf '%s\0' "$f"; fi
    done < <(git ls-files -z --cached --others --exclude-standard) | tar --null -T - -czf "$tarball"
  )
  run "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all \
    --command="mkdir -p $(printf '%q' "$REMOTE_DIR")"
  run "$GCLOUD" compute tpus tpu-vm scp "$tarball" "${TPU_NAME}:stcl_jax_code.tgz" "${gcloud_args[@]}" --worker=all
fi
echo "tpu_pod.sh: starting 'python -m ${MODULE} $*' on every worker of ${TPU_NAME} (run ${RUN_NAME})" >&2
run "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all --command="bash -c $(printf '%q' "$remote_cmd")"

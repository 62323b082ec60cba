#!/usr/bin/env bash
# Every GPU benchmark of the project in one command, each framework / heavy variant in its own process, within a
# time budget (default 540 s), writing OUT/results.json (one record per measurement) and OUT/results.md.
#
#   bash bench/gpu_suite.sh OUT            # on one H100 / H200
#   bash bench/gpu_suite.sh --smoke OUT    # the same code paths on a CPU at tiny sizes (tests/test_gpu_suite.py)
#
# On the lent GPU machine (its image lacks grain, array-record, ml-collections, tensorflow-datasets):
#   1. here, once: bash bench/fetch_wheels.sh        (fills the git-ignored .whl/, about 11 MB of cp312 wheels)
#   2. the device tool's run:  command "bash bench/gpu_suite.sh $OUT"   carry [".whl"]   timeout_s 600
#      OUT then holds results.json, results.md, suite.log and stcl.json (at most 8 files come back).
#
# Sections, in priority order (the budget cuts the last ones first; SUITE_ONLY="a b" runs only those):
#   environment, jax_train_nostcl, jax_train_stcl (Swin-L UperNet 768x768, 4 clips x 2 frames, bf16; compile,
#   memory_analysis, device peak, img/s, MFU, 3-step profile by op category), torch_eager, torch_compile_default
#   (HF UperNet-Swin-L, channels_last, cudnn.benchmark, bf16 autocast, fused AdamW), stcl_loss, resize_ce,
#   attention_kernel (window attention fwd+bwd per Swin-L stage: XLA einsums vs the Pallas kernels), inference_jax, inference_torch (480x853 sliding window, single scale, bf16), input_pipeline (4/8/16 grain
#   workers), jax_train_kernels (the train step with both Pallas kernels), torch_compile_max_autotune ("max-autotune-no-cudagraphs", minutes of autotuning: last).
# JAX processes preallocate XLA_PYTHON_CLIENT_MEM_FRACTION (0.90) of the GPU; torch processes never import JAX
# onto the GPU (and run with XLA_PYTHON_CLIENT_PREALLOCATE=false in case something does); each process starts
# with a fresh allocator, so every peak is its own. Extra train-step flags: SUITE_TRAIN_FLAGS (e.g.
# "--stcl-feature fused --stcl-impl tiled": the previous default), passed to both JAX train-step variants.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

smoke=0
if [ "${1:-}" = "--smoke" ]; then
  smoke=1
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: bash bench/gpu_suite.sh [--smoke] OUT" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
parts=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")
trap 'rm -rf "$parts"' EXIT
python=${PYTHON:-python3}
budget=${SUITE_BUDGET_S:-540}
started=$(date +%s)
: >"$parts/sections.tsv"
exec > >(tee -a "$out/suite.log") 2>&1

if compgen -G ".whl/*.whl" >/dev/null && ! "$python" -c "import grain, ml_collections, tensorflow_datasets" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/stcl_site \
    .whl/*.whl || echo "gpu_suite: installing .whl/*.whl failed; sections that need grain will fail"
  export PYTHONPATH="/tmp/stcl_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ $smoke = 1 ]; then
  size=(--smoke)
  export JAX_PLATFORMS=cpu OMP_NUM_THREADS=1 XLA_FLAGS="--xla_backend_optimization_level=0"
  export JAX_COMPILATION_CACHE_DIR="$parts/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
  lanes=2    # the CPU sections run two at a time
  scale=4    # and get 4x the GPU time limits (a shared 2-core CPU is slow to compile)
  budget=${SUITE_BUDGET_S:-1200}
else
  size=()
  lanes=1
  scale=1
fi
jax_env=(XLA_PYTHON_CLIENT_PREALLOCATE=true XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}")
torch_env=(XLA_PYTHON_CLIENT_PREALLOCATE=false)
read -r -a train_flags <<<"${SUITE_TRAIN_FLAGS:-}"

# section NAME LIMIT_S ENV... -- COMMAND...: runs COMMAND --json PARTS/NAME.json under `timeout`, with at most
# LIMIT_S seconds and never past the suite's budget; records exit code and time in PARTS/sections.tsv.
section() {
  local name=$1 limit=$(($2 * scale))
  shift 2
  local env=()
  while [ "$1" != "--" ]; do env+=("$1"); shift; done
  shift
  if [ -n "${SUITE_ONLY:-}" ] && [[ " $SUITE_ONLY " != *" $name "* ]]; then
    return
  fi
  local left=$((budget - ($(date +%s) - started) - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    printf '%s\t0\t0\t0\tskipped: the suite time budget (%s s) was spent\n' "$name" "$budget" >>"$parts/sections.tsv"
    return
  fi
  echo "=== $name (limit ${limit} s) $(date -u +%H:%M:%S)"
  local t0 rc
  t0=$(date +%s)
  timeout -k 10 "$limit" env "${env[@]}" "$@" --json "$parts/$name.json" >"$parts/$name.log" 2>&1
  rc=$?
  tail -n 25 "$parts/$name.log"
  printf '%s\t%s\t%s\t%s\t\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$parts/sections.tsv"
}

skip() {  # skip NAME REASON: a section this mode does not run, with the reason
  if [ -z "${SUITE_ONLY:-}" ] || [[ " $SUITE_ONLY " == *" $1 "* ]]; then
    printf '%s\t0\t0\t0\tskipped: %s\n' "$1" "$2" >>"$parts/sections.tsv"
  fi
}

train_sections() {
  section jax_train_nostcl 200 "${jax_env[@]}" -- "$python" bench/train_step.py --stcl off "${size[@]}" \
    "${train_flags[@]}" --profile-dir "$parts/prof_nostcl"
  section jax_train_stcl 200 "${jax_env[@]}" -- "$python" bench/train_step.py --stcl on "${size[@]}" \
    "${train_flags[@]}" --profile-dir "$parts/prof_stcl"
}

kernel_sections() {  # the whole step with both Pallas kernels, beside the two XLA steps of train_sections
  if [ $smoke = 1 ]; then  # interpret mode on a CPU: tests/test_kernels_train_step.py checks its numbers
    skip jax_train_kernels "the Pallas kernels run in interpret mode on a CPU (slow, not a speed)"
  else
    section jax_train_kernels 150 "${jax_env[@]}" -- "$python" bench/train_step.py --stcl on \
      --attention-impl pallas --stcl-impl pallas "${train_flags[@]}"
  fi
}

torch_sections() {
  section torch_eager 90 "${torch_env[@]}" -- "$python" bench/torch_step.py --mode eager "${size[@]}"
  if [ $smoke = 1 ]; then
    skip torch_compile_default "torch.compile is not run on the CPU (the micro model's first compiled step took 162 s there, BENCHMARKS.md); GPU only"
  else
    section torch_compile_default 180 "${torch_env[@]}" -- "$python" bench/torch_step.py --mode default
  fi
}

other_sections() {
  section stcl_loss 100 "${jax_env[@]}" -- "$python" bench/stcl_loss.py "${size[@]}"
  section resize_ce 60 "${jax_env[@]}" -- "$python" bench/resize_ce.py "${size[@]}"
  section attention_kernel 90 "${jax_env[@]}" -- "$python" bench/attention_kernel.py "${size[@]}"
  local infer=(--settings single --score-frames 0)
  [ $smoke = 0 ] && infer+=(--dtype bfloat16 --frames 8)
  section inference_jax 100 "${jax_env[@]}" -- "$python" bench/inference.py --torch off "${infer[@]}" "${size[@]}" \
    --labels-out "$parts/inference_labels.npz"
  section inference_torch 80 "${torch_env[@]}" -- "$python" bench/inference.py --jax off "${infer[@]}" "${size[@]}" \
    --compare-labels "$parts/inference_labels.npz"
  local workers=(--workers "4,8,16" --batches 10)
  [ $smoke = 1 ] && workers=(--workers "0,1")
  section input_pipeline 120 -- "$python" bench/input_pipeline.py "${workers[@]}" "${size[@]}"
}

section environment 30 -- "$python" bench/suite_report.py env
if [ $lanes = 1 ]; then
  train_sections
  torch_sections
  other_sections
  kernel_sections
  section torch_compile_max_autotune 400 "${torch_env[@]}" -- "$python" bench/torch_step.py \
    --mode max-autotune-no-cudagraphs
else
  train_sections &
  lane1=$!
  { torch_sections; other_sections; kernel_sections; } &
  lane2=$!
  wait "$lane1" "$lane2"
  skip torch_compile_max_autotune "torch.compile is not run on the CPU (see torch_compile_default); GPU only"
fi
# The STCL bench keeps its own JSON beside the results.
[ -f "$parts/stcl_loss.json" ] && cp "$parts/stcl_loss.json" "$out/stcl.json"
"$python" bench/suite_report.py collect "$out" "$parts"
echo "gpu_suite: $(($(date +%s) - started)) s; results in $out/results.json and $out/results.md"

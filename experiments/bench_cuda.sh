#!/usr/bin/env bash
# The GPU rows of issue 13 in one short run (a lent GPU machine gives ~15 minutes, start included):
#   1. bench_fused at 1e8 parameters in tensors of 1e7 against torch's fused AdamW (the committed table), each step
#      timed alone (synchronized) and in blocks of 10 queued back to back (as a training loop runs them);
#   2. the fused path's and the CUDA graphs' tests on CUDA (~180 s on 16 workers);
#   3. host time, kernel time and kernels per step of a few modes (cuda_step_profile);
#   4. with QUEUED=1, the pinned/pageable A/B of the coefficients' copy on queued steps (cuda_queued_steps).
# AB=1 adds, after 1, the compiled modes with inductor's combo kernels off (the A/B behind KERNEL_CONFIG's choice).
#   bash experiments/bench_cuda.sh OUT_DIR        (python3 with torch, triton, pytest, pytest-xdist, hypothesis)
# Each part has its own time limit so that a slow one leaves the others their results; every part's output goes to
# OUT_DIR/run.log (a lent machine returns at most 8 files). Where the tree is a copy whose .git is not its own (a lent
# machine), set KALMAN_OPTIM_GIT_COMMIT to the commit it was copied from (provenance).
set -uo pipefail
out=${1:?usage: bench_cuda.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log="$out/run.log"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/environment.txt"

# Every candidate that is a target of the issue, and the modes beside them (innovation, fitted).
candidates=("AdamW [foreach]" "AdamW [fused]" "KalmanAdam adam" "KalmanAdam adam [no CUDA graphs]" "KalmanAdam constant"
            "KalmanAdam adam+VA" "KalmanAdam adam+VA [no CUDA graphs]"
            "KalmanAdam adaptive" "KalmanAdam adaptive, step > 10k" "KalmanAdam innovation" "KalmanAdam fitted"
            "KalmanAdam transport" "KalmanAdam extrapolated" "KalmanLAMB" "KalmanLAMB precision"
            "KalmanLAMB precision [no CUDA graphs]"
            "KalmanLAMB precision, exact mean" "AdamW [compiled]")
compiled=("AdamW [fused]" "KalmanAdam adam+VA" "KalmanAdam adaptive" "KalmanAdam transport" "KalmanAdam extrapolated"
          "KalmanLAMB" "KalmanLAMB precision")

part() { echo "=== $* ($(date -u +%T))" | tee -a "$log"; }
bench() {  # bench SECONDS NAME ROUNDS [bench_fused options...]
    local seconds=$1 name=$2 rounds=$3; shift 3
    timeout "$seconds" $PY -m experiments.bench_fused --device cuda --sizes 1e8 --tensor-size 1e7 --processes 1 \
        --repeats "$rounds" --queued-steps 10 --no-progress --out "$out/$name.json" "$@" 2>&1 | tail -n 90 | tee -a "$log"
}

part "bench, 1e8 in tensors of 1e7"
bench ${BENCH_SECONDS:-300} fused_cuda_tensors_1e7 40 --candidates "${candidates[@]}"
if [ "${AB:-0}" = 1 ]; then
    part "bench, combo kernels off"
    bench ${AB_SECONDS:-120} fused_cuda_no_combo 30 --kernel-option combo_kernels=False --candidates "${compiled[@]}"
fi
part "test_fused on CUDA"
KALMAN_OPTIM_TEST_DEVICE=cuda timeout ${TEST_SECONDS:-220} $PY -m pytest -q -p no:cacheprovider -n 16 -W ignore \
    --junitxml="$out/test_fused_cuda.xml" tests/kalman_optim/test_fused.py tests/kalman_optim/test_cuda_graphs.py \
    2>&1 | tail -n 30 | tee -a "$log"
part "step profile"
timeout ${PROFILE_SECONDS:-60} $PY -m experiments.cuda_step_profile --sizes 1e7 --no-table --optimizers \
    "AdamW [fused]" "KalmanAdam adam" "KalmanAdam adam [no CUDA graphs]" "KalmanAdam adam+VA" "KalmanLAMB" \
    "KalmanLAMB precision" \
    2>&1 | grep -v Warning | tee "$out/profile.log" | tee -a "$log"
if [ "${QUEUED:-0}" = 1 ]; then
    part "queued steps, pinned and pageable coefficients"
    timeout ${QUEUED_SECONDS:-45} $PY -m experiments.cuda_queued_steps 2>&1 | grep -v Warning | tee -a "$log"
fi
part "done"

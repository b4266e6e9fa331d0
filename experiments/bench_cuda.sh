#!/usr/bin/env bash
# The GPU rows of issue 13 in one short run (a lent GPU machine gives ~15 minutes): the fused path's tests on CUDA,
# then bench_fused at 1e8 parameters in tensors of 1e7 and of 1e6 elements, against torch's fused AdamW.
#   bash experiments/bench_cuda.sh OUT_DIR        (python3 with torch, triton, pytest, pytest-xdist, hypothesis)
# Each part has its own time limit so that a slow one leaves the others their results. Where the tree is a copy whose
# .git is not its own (a lent machine), set KALMAN_OPTIM_GIT_COMMIT to the commit it was copied from (provenance).
set -uo pipefail
out=${1:?usage: bench_cuda.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/environment.txt"

# Every candidate that is a target of the issue, and the modes beside them (innovation, fitted).
candidates=("AdamW [foreach]" "AdamW [fused]" "KalmanAdam adam" "KalmanAdam constant" "KalmanAdam adam+VA"
            "KalmanAdam adaptive" "KalmanAdam adaptive, step > 10k" "KalmanAdam innovation" "KalmanAdam fitted"
            "KalmanAdam transport" "KalmanAdam extrapolated" "KalmanLAMB" "KalmanLAMB precision"
            "KalmanLAMB precision, exact mean")

bench() {  # bench TENSOR_SIZE SECONDS NAME [more candidates]
    local size=$1 seconds=$2 name=$3; shift 3
    timeout "$seconds" $PY -m experiments.bench_fused --device cuda --sizes 1e8 --tensor-size "$size" --processes 1 \
        --repeats 40 --no-progress --candidates "${candidates[@]}" "$@" --out "$out/$name.json" 2>&1 \
        | tail -n 60 | tee "$out/$name.log"
}

bench 1e7 ${BENCH_SECONDS_1E7:-200} fused_cuda_tensors_1e7 "AdamW [compiled]"
KALMAN_OPTIM_TEST_DEVICE=cuda timeout ${TEST_SECONDS:-150} $PY -m pytest -q -p no:cacheprovider -n 12 \
    tests/kalman_optim/test_fused.py 2>&1 | tail -n 40 | tee "$out/test_fused_cuda.log"
bench 1e6 ${BENCH_SECONDS_1E6:-200} fused_cuda_tensors_1e6

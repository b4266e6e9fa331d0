"""Steps queued back to back on a GPU, as a training loop issues them (no synchronization between steps): the time
per step of torch's fused AdamW and of KalmanAdam with variance adaptation (a compiled kernel), with the per-step
coefficients copied to the GPU from pinned memory without waiting (kalman_optim.fused._pack) and, for comparison,
from pageable memory (a copy that waits for the GPU's queue).

    python -m experiments.cuda_queued_steps > results/bench/cuda_queued_steps.log

bench_fused times synchronized steps (each step's host time adds to its kernels' time); this measures what the
host time costs when it can overlap the kernels of the steps before. A measurement aid for issue 13, one process.
"""

from __future__ import annotations

import torch

from experiments.bench_fused import CANDIDATES, make_parameters, queued_step_time
from kalman_optim import fused

OPTIMIZERS = ("AdamW [fused]", "KalmanAdam adam+VA")
#: The library's coefficient copy (pinned, non-blocking), restored after the comparison.
PINNED = fused._pack


def pageable(scalars, dtype, device, rows=0):
    """`fused._pack` through a blocking copy from pageable memory (the host waits for the GPU's queue)."""
    return PINNED(scalars, dtype, torch.device("cpu"), rows).to(device)


def queued_ms_per_step(optimizer, steps: int = 20, repeats: int = 5) -> float:
    """Median over `repeats` of the time of `steps` steps issued back to back, synchronized only at both ends
    (bench_fused.queued_step_time)."""
    for _ in range(8):
        optimizer.step()
    device = torch.device("cuda")
    times = sorted(queued_step_time(optimizer, steps, device) * 1e3 for _ in range(repeats))
    return times[repeats // 2]


def main() -> None:
    params = make_parameters(int(1e8), int(1e7), torch.device("cuda"), seed=0)
    try:
        for name in OPTIMIZERS:
            for label, pack in (("pinned", PINNED), ("pageable", pageable)):
                fused._pack = pack
                print(name, label, "unsynchronized ms/step", queued_ms_per_step(CANDIDATES[name][0](params)), flush=True)
    finally:
        fused._pack = PINNED


if __name__ == "__main__":
    main()

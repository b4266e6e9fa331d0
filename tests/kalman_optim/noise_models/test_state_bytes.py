"""Every mode keeps the per-element state STATE_BYTES_PER_PARAM documents (the optimizers' docstrings and E5 cite it)."""

import pytest
import torch

from kalman_optim import KalmanAdam
from kalman_optim.noise_models import STATE_BYTES_PER_PARAM


@pytest.mark.parametrize("noise, expected", sorted(STATE_BYTES_PER_PARAM.items()))
def test_per_element_state_bytes_per_fp32_parameter(noise, expected):
    p = torch.nn.Parameter(torch.zeros(64, 32))  # 2-D: a mode's per-tensor sample is flat, so not counted here
    optimizer = KalmanAdam([p], noise=noise)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        optimizer.step()
    per_element = [v for v in optimizer.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
    assert sum(v.element_size() for v in per_element) == expected

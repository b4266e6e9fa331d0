"""experiments.models: MaxPool2x2 is nn.MaxPool2d(2) bit for bit, ties and NaNs included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.models import MaxPool2x2, SmallCNN


def _pooled_with_grad(pool, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = pool(leaf)
    out.backward(grad)
    return out.detach(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 4, 6, 8), (2, 3, 7, 5), (1, 1, 2, 2)])
def test_max_pool_2x2_equals_max_pool2d_bit_for_bit(shape, dtype):
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        # Small integers: ties in most windows (the kept argmax decides where the gradient goes).
        x = torch.randint(-2, 3, shape, generator=generator).to(dtype)
        if trial % 3 == 0:
            x[torch.rand(shape, generator=generator) < 0.1] = float("nan")
        if trial % 4 == 0:
            x[torch.rand(shape, generator=generator) < 0.2] = -float("inf")
        out_shape = (*shape[:2], shape[2] // 2, shape[3] // 2)
        grad = torch.randn(out_shape, generator=generator, dtype=dtype)
        grad[torch.rand(out_shape, generator=generator) < 0.2] = -0.0
        expected, expected_grad = _pooled_with_grad(lambda t: F.max_pool2d(t, 2), x, grad)
        got, got_grad = _pooled_with_grad(MaxPool2x2(), x, grad)
        assert torch.equal(got.isnan(), expected.isnan())
        assert torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))
        assert torch.equal(got_grad, expected_grad) and torch.equal(got_grad.signbit(), expected_grad.signbit())
        assert got.is_contiguous()


def test_small_cnn_trains_as_with_max_pool2d():
    """A few SGD steps of SmallCNN with MaxPool2x2 and with nn.MaxPool2d give the same parameters, bit for bit."""
    torch.manual_seed(0)
    fast = SmallCNN()
    reference = SmallCNN()
    reference.load_state_dict(fast.state_dict())
    reference.features[2] = torch.nn.MaxPool2d(2)
    reference.features[5] = torch.nn.MaxPool2d(2)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for model in (fast, reference):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(fast.parameters(), reference.parameters()):
        assert torch.equal(a, b)

"""Bad input: clear errors naming the argument and its range, and a step that raises changes nothing."""

import copy
import math

import pytest
import torch

from kalman_optim import KalmanAdam, KalmanLAMB
from tests.kalman_optim.helpers import small_network, train

CLASSES = pytest.mark.parametrize("cls", [KalmanAdam, KalmanLAMB])


@CLASSES
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1e-3), r"Invalid learning rate: lr must be finite and >= 0, got -0.001"),
        (dict(lr=float("nan")), r"Invalid learning rate"),
        (dict(betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\), got 1.0"),
        (dict(betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\)"),
        (dict(betas=(0.9,)), r"betas must be a pair"),
        (dict(betas=(0.0, 0.999), noise="constant"), r"with noise='constant', betas\[0\] must be in the open interval \(0, 1\)"),
        (dict(eps=-1e-8), r"Invalid epsilon value: eps must be finite and >= 0"),
        (dict(weight_decay=-0.1), r"Invalid weight_decay value: weight_decay must be finite and >= 0"),
        (dict(noise="kalman"), r"Invalid noise mode: noise must be one of \('adam', 'constant', 'adaptive', 'innovation', 'fitted', 'transport', 'extrapolated'\), got 'kalman'"),
        (dict(noise="constant", prior_variance=-1.0), r"Invalid prior_variance: must be None \(diffuse\) or finite and >= 0"),
        (dict(noise="adam", prior_variance=1.0), r"noise='adam' fixes the prior"),
        (dict(noise_beta=1.0), r"Invalid noise_beta: must be in the open interval \(0, 1\)"),
        (dict(beta_range=(0.9, 0.5)), r"Invalid beta_range: must be a pair \(low, high\) with 0 < low < high < 1"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(small_network().parameters(), **kwargs)


def test_invalid_kalman_adam_only_options():
    with pytest.raises(ValueError, match=r"Invalid adaptation_scale: must be finite and > 0"):
        KalmanAdam(small_network().parameters(), adaptation_scale=0.0)
    with pytest.raises(ValueError, match=r"Invalid precision_floor"):
        KalmanLAMB(small_network().parameters(), precision_floor=0.0)
    with pytest.raises(ValueError, match=r"Invalid precision_mean: must be one of \('current', 'previous'\)"):
        KalmanLAMB(small_network().parameters(), precision_mean="lagged")
    with pytest.raises(ValueError, match=r"Invalid trust_clip"):
        KalmanLAMB(small_network().parameters(), trust_clip=-1.0)
    with pytest.raises(TypeError, match=r"lr must be a real number"):
        KalmanAdam(small_network().parameters(), lr="0.1")


@CLASSES
def test_sparse_gradients_raise_a_clear_error_and_change_nothing(cls):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    dense = torch.nn.Parameter(torch.ones(3))
    optimizer = cls([dense, embedding.weight])
    before = (dense.detach().clone(), embedding.weight.detach().clone())
    dense.grad = torch.ones(3)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()
    assert torch.equal(before[0], dense) and torch.equal(before[1], embedding.weight)
    assert len(optimizer.state) == 0


@CLASSES
def test_complex_parameters_are_refused_clearly(cls):
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
    optimizer = cls([p])
    p.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="does not support complex parameters.*view_as_real"):
        optimizer.step()


@CLASSES
def test_a_step_that_raises_changes_nothing(cls):
    model = small_network()
    optimizer = cls(model.parameters())
    train(model, optimizer, 3)
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(optimizer.state_dict())
    optimizer.param_groups[0]["lr"] = -1.0  # a user edit that is only seen at step time
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))
    state_after = optimizer.state_dict()
    for key, value in state_before["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, state_after["state"][key][name])


@CLASSES
def test_skip_nonfinite_leaves_parameters_and_state_untouched_and_counts(cls):
    model = small_network()
    optimizer = cls(model.parameters(), skip_nonfinite=True)
    train(model, optimizer, 3)
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(optimizer.state_dict()["state"])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    list(model.parameters())[-1].grad[0] = float("nan")
    optimizer.step()
    list(model.parameters())[-1].grad[0] = float("inf")
    optimizer.step()
    assert optimizer.nonfinite_skips == 2
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))
    for key, value in state_before.items():
        for name, tensor in value.items():
            assert torch.equal(tensor, optimizer.state_dict()["state"][key][name])
    # A finite step afterwards proceeds normally.
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert not all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))


def test_nonfinite_gradient_by_default_behaves_as_torch_adamw():
    model = small_network()
    reference_model = copy.deepcopy(model)
    optimizer = KalmanAdam(model.parameters())
    reference = torch.optim.AdamW(reference_model.parameters())
    for m, o in [(model, optimizer), (reference_model, reference)]:
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        next(m.parameters()).grad[0, 0] = float("nan")
        o.step()
    for p, q in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(p, q, equal_nan=True)
    assert math.isnan(next(model.parameters())[0, 0].item())


@pytest.mark.parametrize("noise", ["adam", "adaptive", "innovation", "transport", "extrapolated"])
def test_step_after_loading_a_state_for_another_model_raises_and_changes_nothing(noise):
    """load_state_dict does not check shapes; the step does, before touching any parameter or state."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    b = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(6))]  # second tensor differs
    source, target = KalmanAdam(a, noise=noise), KalmanAdam(b, noise=noise)
    for params, optimizer in ((a, source), (b, target)):
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()
    target.load_state_dict(source.state_dict())
    for p in b:
        p.grad = torch.randn_like(p)
    params_before = [p.detach().clone() for p in b]
    state_before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError, match=r"Invalid optimizer state: 'exp_avg' .* has shape \(5,\), the parameter \(6,\)"):
        target.step()
    for p, before in zip(b, params_before):
        assert torch.equal(p, before)
    after = target.state_dict()
    for key, value in state_before["state"].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(after["state"][key][name]), torch.as_tensor(tensor)), name


@pytest.mark.parametrize("noise", ["innovation", "fitted"])
def test_a_lag_sample_of_the_wrong_length_raises_and_changes_nothing(noise):
    """The innovation models keep a strided sample of each tensor's previous innovations: its expected length is
    computed from the tensor's size (20,000 elements are sampled with a stride > 1), and a wrong one is rejected."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(20_000)), torch.nn.Parameter(torch.randn(7))]
    optimizer = KalmanAdam(params, noise=noise)
    for _ in range(3):  # a consistent state steps without complaint, strided sample included
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    assert optimizer.state[params[0]]["lag_prev"].numel() < 20_000
    optimizer.state[params[0]]["lag_prev"] = optimizer.state[params[0]]["lag_prev"][:-1].clone()
    before = [p.detach().clone() for p in params]
    exp_avg = optimizer.state[params[0]]["exp_avg"].clone()
    with pytest.raises(ValueError, match=r"Invalid optimizer state: 'lag_prev' of parameter 0"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert torch.equal(optimizer.state[params[0]]["exp_avg"], exp_avg)

"""The library's closed forms against the sympy derivations' lambdified expressions (the oracles)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import kalman_optim as ko
from derivations import d1_steady_state as d1
from derivations import d2_adam_is_kalman as d2

NOISE_RATIOS = np.concatenate([[0.0], np.logspace(-12, 8, 161)])
BETAS = np.concatenate([np.linspace(0.01, 0.99, 99), [0.9, 0.95, 0.98, 0.995, 0.999, 0.9999]])
STEPS = np.array([1, 2, 3, 5, 10, 30, 100, 1000, 10_000])
# float32 tolerance: a few ulps of the result (the library's forms have no cancellation).
RTOL = {torch.float64: 1e-12, torch.float32: 4e-7}


def oracle_mp(f, *args):
    """Evaluate an oracle in float64 numpy (the derivations' lambdified expressions)."""
    return np.asarray(f(*[np.asarray(a, dtype=float) for a in args]), dtype=float)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_steady_state_gain_matches_derivation(dtype):
    lam = torch.tensor(NOISE_RATIOS, dtype=dtype)
    got = ko.steady_state_gain(lam).double().numpy()
    # Oracle in float64 on the float32-rounded inputs, in the cancellation-free form D1 asserts equal.
    lam64 = lam.double().numpy()
    expected = oracle_mp(lambda x: 2 * np.sqrt(x) / (np.sqrt(x) + np.sqrt(x + 4)), lam64)
    moderate = (lam64 > 1e-6) & (lam64 < 1e3)  # where the textbook oracle itself is accurate in float64
    np.testing.assert_allclose(expected[moderate], oracle_mp(d1.steady_state_gain_oracle, lam64[moderate]), rtol=1e-9)
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype], atol=0)
    assert got[0] == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_ratio_to_beta_matches_derivation(dtype):
    lam = torch.tensor(NOISE_RATIOS, dtype=dtype)
    lam64 = lam.double().numpy()
    got = ko.noise_ratio_to_beta(lam).double().numpy()
    moderate = (lam64 > 1e-6) & (lam64 < 1e3)
    np.testing.assert_allclose(got[moderate], oracle_mp(d1.noise_ratio_to_beta_oracle, lam64[moderate]), rtol=max(RTOL[dtype], 1e-9))
    assert got[0] == 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_beta_to_noise_ratio_matches_derivation(dtype):
    beta = torch.tensor(BETAS, dtype=dtype)
    got = ko.beta_to_noise_ratio(beta).double().numpy()
    np.testing.assert_allclose(got, oracle_mp(d1.beta_to_noise_ratio_oracle, beta.double().numpy()), rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adam_gain_and_process_noise_match_derivation(dtype):
    beta, step = np.meshgrid(BETAS, STEPS, indexing="ij")
    beta_t = torch.tensor(beta, dtype=dtype)
    step_t = torch.tensor(step, dtype=dtype)
    b64 = beta_t.double().numpy()
    gain = ko.adam_gain(beta_t, step_t).double().numpy()
    np.testing.assert_allclose(gain, oracle_mp(d2.adam_gain_oracle, b64, step), rtol=max(RTOL[dtype], 1e-8))
    noise = ko.adam_process_noise(beta_t, step_t).double().numpy()
    later = step >= 2
    np.testing.assert_allclose(noise[later], oracle_mp(d2.adam_process_noise_oracle, b64[later], step[later]), rtol=max(RTOL[dtype], 1e-8))
    assert np.all(np.isinf(noise[~later]))  # t = 1: diffuse prior


@pytest.mark.parametrize("prior", [None, 0.0, 0.5, 1.0, 7.0])
def test_constant_noise_gain_matches_derivation(prior):
    beta, step = np.meshgrid(BETAS, STEPS[STEPS <= 1000], indexing="ij")
    got = ko.constant_noise_gain(torch.tensor(beta), torch.tensor(step, dtype=torch.float64), prior_gain=prior).numpy()
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # the oracle's beta^(-2t) overflows
        if prior is None:
            expected = oracle_mp(d1.constant_noise_gain_diffuse_oracle, beta, step)
        else:
            expected = oracle_mp(d1.constant_noise_gain_oracle, beta, np.full_like(beta, prior), step)
    finite = np.isfinite(expected)  # beta^(-2t) overflows in the oracle's form for large t; the library's does not
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-9)
    np.testing.assert_allclose(got[~finite], 1 - beta[~finite], rtol=1e-12)


def test_python_floats_return_floats_equal_to_tensors():
    assert isinstance(ko.steady_state_gain(0.01), float)
    assert round(ko.steady_state_gain(0.01), 7) == 0.0951249  # D1's numeric anchor
    assert ko.noise_ratio_to_beta(0) == 1.0
    assert ko.adam_process_noise(0.9, 1) == math.inf
    for f, args in [
        (ko.steady_state_gain, (0.37,)),
        (ko.noise_ratio_to_beta, (0.37,)),
        (ko.beta_to_noise_ratio, (0.37,)),
        (ko.adam_gain, (0.9, 7)),
        (ko.adam_process_noise, (0.9, 7)),
        (ko.constant_noise_gain, (0.9, 7)),
    ]:
        tensor_args = [torch.tensor(float(a), dtype=torch.float64) for a in args]
        assert f(*args) == pytest.approx(f(*tensor_args).item(), rel=1e-15)


def test_tensor_dtype_is_preserved():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert ko.steady_state_gain(torch.tensor([0.1], dtype=dtype)).dtype == dtype
        assert ko.beta_to_noise_ratio(torch.tensor([0.9], dtype=dtype)).dtype == dtype


# Property tests: the identities of D1 and D2 hold for any valid input.
noise_ratios = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)
betas = st.floats(min_value=1e-6, max_value=1 - 1e-9, exclude_min=False)
steps = st.integers(min_value=1, max_value=100_000)


@given(noise_ratios)
def test_gain_solves_the_steady_state_quadratic(lam):
    gain = ko.steady_state_gain(lam)
    assert 0.0 <= gain <= 1.0
    # K^2 + lambda K - lambda = 0, relative to the size of its terms.
    assert abs(gain * gain + lam * gain - lam) <= 1e-12 * (gain * gain + lam * gain + lam + 1e-300)
    assert ko.noise_ratio_to_beta(lam) == pytest.approx(1 - gain, rel=1e-12, abs=1e-15)


@given(betas)
def test_beta_round_trip(beta):
    lam = ko.beta_to_noise_ratio(beta)
    assert ko.noise_ratio_to_beta(lam) == pytest.approx(beta, rel=1e-9)
    assert ko.steady_state_gain(lam) == pytest.approx(1 - beta, rel=1e-9)


@given(st.floats(min_value=1e-3, max_value=0.999), steps)
def test_adam_gain_is_the_kalman_gain_under_adam_process_noise(beta, step):
    previous = ko.adam_gain(beta, step)
    lam = ko.adam_process_noise(beta, step + 1)
    # One Riccati step of D1's normalized gain with q_{t+1}/r gives Adam's next gain (D2).
    assert (previous + lam) / (previous + lam + 1) == pytest.approx(ko.adam_gain(beta, step + 1), rel=1e-9)
    assert lam >= ko.beta_to_noise_ratio(beta) * (1 - 1e-12)  # decreases to the steady-state ratio


@given(st.floats(min_value=0.01, max_value=0.999), st.floats(min_value=0.0, max_value=100.0), st.integers(1, 200))
def test_constant_noise_gain_follows_the_riccati_recursion(beta, prior, step):
    lam = ko.beta_to_noise_ratio(beta)
    gain = prior
    for _ in range(step):
        gain = (gain + lam) / (gain + lam + 1)
    assert ko.constant_noise_gain(beta, step, prior_gain=prior) == pytest.approx(gain, rel=1e-9)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ko.steady_state_gain(-1e-3), r"noise_ratio must be finite and >= 0"),
        (lambda: ko.steady_state_gain(float("nan")), r"noise_ratio must be finite"),
        (lambda: ko.noise_ratio_to_beta(float("inf")), r"noise_ratio must be finite"),
        (lambda: ko.noise_ratio_to_beta(torch.tensor([0.1, -0.2])), r"noise_ratio must be finite and >= 0"),
        (lambda: ko.beta_to_noise_ratio(0.0), r"beta must be in the open interval \(0, 1\)"),
        (lambda: ko.beta_to_noise_ratio(1.0), r"beta must be in the open interval \(0, 1\)"),
        (lambda: ko.beta_to_noise_ratio(torch.tensor([0.5, 1.5])), r"beta must be in the open interval"),
        (lambda: ko.adam_gain(0.9, 0), r"step must be an integer >= 1, got 0"),
        (lambda: ko.adam_process_noise(0.9, 2.5), r"step must be an integer >= 1"),
        (lambda: ko.adam_process_noise(1.2, 3), r"beta must be in the open interval"),
        (lambda: ko.constant_noise_gain(0.9, 3, prior_gain=-1.0), r"prior_gain must be finite and >= 0"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ko.steady_state_gain("0.1"), r"noise_ratio must be a real number or a torch.Tensor"),
        (lambda: ko.beta_to_noise_ratio(True), r"beta must be a real number"),
        (lambda: ko.steady_state_gain(torch.tensor([1, 2])), r"noise_ratio must be a float or a floating-point tensor"),
        (lambda: ko.adam_gain(0.9, "3"), r"step must be a real number"),
    ],
)
def test_bad_types_raise_type_error_naming_the_argument(call, match):
    with pytest.raises(TypeError, match=match):
        call()

"""torch.optim conventions every optimizer here must follow, for KalmanAdam and KalmanLAMB alike."""

import copy
import io

import pytest
import torch

from kalman_optim import KalmanAdam, KalmanLAMB
from tests.kalman_optim.helpers import batches, loss_fn, small_network, train

OPTIMIZERS = {
    "adam": lambda params, **kw: KalmanAdam(params, **{"lr": 1e-2, **kw}),
    "constant": lambda params, **kw: KalmanAdam(params, **{"lr": 1e-2, "noise": "constant", **kw}),
    "adam-va": lambda params, **kw: KalmanAdam(params, **{"lr": 1e-2, "variance_adaptation": True, "adaptation_scale": 3.0, **kw}),
    "adaptive-va": lambda params, **kw: KalmanAdam(params, **{"lr": 1e-2, "noise": "adaptive", "variance_adaptation": True, "adaptation_scale": 0.5, **kw}),
    "innovation-va": lambda params, **kw: KalmanAdam(params, **{"lr": 1e-2, "noise": "innovation", "variance_adaptation": True, "adaptation_scale": 2.0, "noise_beta": 0.95, **kw}),
    "transport": lambda params, **kw: KalmanAdam(params, **{"lr": 1e-2, "noise": "transport", "noise_beta": 0.95, **kw}),
    "extrapolated": lambda params, **kw: KalmanAdam(params, **{"lr": 1e-2, "noise": "extrapolated", **kw}),
    "lamb": lambda params, **kw: KalmanLAMB(params, **{"lr": 1e-2, **kw}),
    "lamb-adaptive": lambda params, **kw: KalmanLAMB(params, **{"lr": 1e-2, "noise": "adaptive", **kw}),
    "lamb-innovation": lambda params, **kw: KalmanLAMB(params, **{"lr": 1e-2, "noise": "innovation", **kw}),
    # The previous step's layer mean and a trust clip that binds in about a third of the (tensor, step) pairs
    # (||p|| / ||u|| has median ~0.2 and maximum ~1.9 on the small network).
    "lamb-previous-clipped": lambda params, **kw: KalmanLAMB(params, **{
        "lr": 1e-2, "noise": "innovation", "precision_mean": "previous", "trust_clip": 0.3, "weight_decay": 0.05,
        **kw}),
}
ALL = pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())


def snapshot(model, optimizer):
    return copy.deepcopy([p.detach() for p in model.parameters()]), copy.deepcopy(optimizer.state_dict())


def assert_same_snapshot(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    state_a, state_b = a[1]["state"], b[1]["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        for name in state_a[key]:
            assert torch.equal(state_a[key][name], state_b[key][name]), name


def assert_same_training(model_a, opt_a, model_b, opt_b, steps: int) -> None:
    """Train both on the same batches; after every step parameters and every state tensor agree to float32 rounding."""
    for x, y in batches(steps):
        for model, opt in [(model_a, opt_a), (model_b, opt_b)]:
            opt.zero_grad()
            loss_fn(model, x, y).backward()
            opt.step()
        for p, q in zip(model_a.parameters(), model_b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
            for name, value in opt_a.state[p].items():
                torch.testing.assert_close(value, opt_b.state[q][name], rtol=1e-6, atol=1e-7, msg=name)


@ALL
def test_reference_and_foreach_paths_agree_step_by_step(make):
    model_ref, model_fe = small_network(), small_network()
    opt_ref, opt_fe = make(model_ref.parameters(), foreach=False), make(model_fe.parameters(), foreach=True)
    assert_same_training(model_ref, opt_ref, model_fe, opt_fe, steps=40)


@ALL
def test_automatic_cpu_batches_agree_with_the_reference_step_by_step(make, monkeypatch):
    """foreach=None on CPU: foreach calls over chunks of small tensors, larger ones one at a time (chunks shrunk so
    that the small network has both kinds and several chunks); the same numbers as the reference loop."""
    import kalman_optim._base as base

    monkeypatch.setattr(base, "FOREACH_CHUNK_ELEMENTS", 600)
    model_ref, model_auto = small_network(), small_network()
    opt_ref, opt_auto = make(model_ref.parameters(), foreach=False), make(model_auto.parameters())
    params = list(model_auto.parameters())
    batches_used = opt_auto._eager_batches(opt_auto.param_groups[0], params)
    assert sorted(i for index, _ in batches_used for i in index) == list(range(len(params)))
    assert {foreach for _, foreach in batches_used} == {True, False} and len(batches_used) >= 3
    for index, foreach in batches_used:
        sizes = [params[i].numel() for i in index]
        assert (sum(sizes) <= 600 and max(sizes) <= 150) if foreach else (len(index) == 1 and sizes[0] > 150)
    assert_same_training(model_ref, opt_ref, model_auto, opt_auto, steps=25)


def test_explicit_foreach_and_cuda_take_one_call():
    model = small_network()
    params = list(model.parameters())
    for foreach in (True, False):
        optimizer = KalmanAdam(params, foreach=foreach)
        assert optimizer._eager_batches(optimizer.param_groups[0], params) == [(list(range(len(params))), foreach)]


@ALL
def test_state_dict_round_trip_resumes_identically(make):
    model = small_network()
    optimizer = make(model.parameters())
    train(model, optimizer, 15, seed=5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    # Continue uninterrupted ...
    train(model, optimizer, 15, seed=6)
    # ... and resume from the checkpoint into fresh objects.
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_model = small_network(seed=123)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = make(resumed_model.parameters())
    resumed.load_state_dict(checkpoint["optimizer"])
    train(resumed_model, resumed, 15, seed=6)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


@ALL
def test_param_groups_have_their_own_hyperparameters(make):
    model = small_network()
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    optimizer = make([{"params": first, "lr": 0.0}, {"params": rest}])
    before_first = [p.detach().clone() for p in first]
    before_rest = [p.detach().clone() for p in rest]
    train(model, optimizer, 3)
    # Weight decay is multiplied by lr, so lr = 0 freezes the first group entirely; the rest moves.
    assert all(torch.equal(b, p) for b, p in zip(before_first, first))
    assert all(not torch.equal(b, p) for b, p in zip(before_rest, rest))
    extra = torch.nn.Parameter(torch.ones(3))
    optimizer.add_param_group({"params": [extra], "lr": 0.5, "weight_decay": 0.0})
    extra.grad = torch.ones(3)
    optimizer.step()
    assert bool((extra < 1).all())
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "lr": -1.0})
    assert len(optimizer.param_groups) == 3  # the bad group was not added


@ALL
def test_parameters_without_gradients_are_skipped(make):
    model = small_network()
    optimizer = make(model.parameters())
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    train(model, optimizer, 3)
    assert torch.equal(before, frozen) and frozen not in optimizer.state


@ALL
def test_step_counters_count_each_parameters_steps_in_place(make):
    """state["step"] counts the steps each parameter took (one without a gradient does not count, so one group holds
    two step counts), as torch.optim does: a float32 tensor updated in place, never replaced (the eager and fused
    paths share this bookkeeping)."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(3, 2))
    optimizer = make([a, b])
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    optimizer.step()
    counter_a, counter_b = optimizer.state[a]["step"], optimizer.state[b]["step"]
    b.grad = None
    optimizer.step()
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    optimizer.step()
    assert optimizer.state[a]["step"] is counter_a and optimizer.state[b]["step"] is counter_b
    assert counter_a.dtype == torch.float32 and counter_a.dim() == 0
    assert (counter_a.item(), counter_b.item()) == (3.0, 2.0)


@ALL
def test_closure_is_called_and_its_loss_returned(make):
    model = small_network()
    optimizer = make(model.parameters())
    x, y = next(batches(1))
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert calls == [1] and torch.is_tensor(loss)


@ALL
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_maximize_equals_minimizing_the_negated_objective(make, foreach):
    model_max, model_min = small_network(), small_network()
    opt_max = make(model_max.parameters(), maximize=True, foreach=foreach)
    opt_min = make(model_min.parameters(), foreach=foreach)
    for x, y in batches(10):
        opt_max.zero_grad()
        (-loss_fn(model_max, x, y)).backward()
        opt_max.step()
        opt_min.zero_grad()
        loss_fn(model_min, x, y).backward()
        opt_min.step()
    for p, q in zip(model_max.parameters(), model_min.parameters()):
        torch.testing.assert_close(p, q)
    # The posterior is of the gradient that was observed (of the maximized objective).
    p, q = next(model_max.parameters()), next(model_min.parameters())
    if opt_max.param_groups[0]["noise"] in ("transport", "extrapolated"):  # no posterior read-out: the filters saw the same -p.grad
        torch.testing.assert_close(opt_max.state[p]["exp_avg"], opt_min.state[q]["exp_avg"])
    else:
        torch.testing.assert_close(opt_max.gradient_posterior(p)[0], -opt_min.gradient_posterior(q)[0])


@ALL
def test_tensor_learning_rate_equals_float_learning_rate(make):
    model_a, model_b = small_network(), small_network()
    train(model_a, make(model_a.parameters(), lr=torch.tensor(3e-3)), 5)
    train(model_b, make(model_b.parameters(), lr=3e-3), 5)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q)


@ALL
def test_lr_schedulers_including_one_cycle_with_cycle_momentum(make):
    model = small_network()
    optimizer = make(model.parameters())
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=20, cycle_momentum=True)
    betas_seen = []
    for x, y in batches(20):
        optimizer.zero_grad()
        loss_fn(model, x, y).backward()
        optimizer.step()
        scheduler.step()
        betas_seen.append(optimizer.param_groups[0]["betas"][0])
    assert len(set(betas_seen)) > 5  # the scheduler really moved beta1, and the optimizer accepted it
    assert all(torch.isfinite(p).all() for p in model.parameters())
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(make(model.parameters()), T_max=10)
    train(model, cosine.optimizer, 5, scheduler=cosine)


@ALL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_update_in_float32_and_round_once(make, dtype):
    generator = torch.Generator().manual_seed(0)
    p_half = torch.nn.Parameter(torch.randn(64, generator=generator).to(dtype))
    p_full = torch.nn.Parameter(p_half.detach().float())
    opt_half, opt_full = make([p_half]), make([p_full])
    for _ in range(5):
        grad = torch.randn(64, generator=generator).to(dtype)
        p_half.grad, p_full.grad = grad, grad.float()
        opt_half.step()
        opt_full.step()
        # The half-precision path computes in float32 from the same inputs and rounds once.
        assert torch.equal(p_half.detach(), p_full.detach().to(dtype))
        p_full.data.copy_(p_half.detach().float())  # continue from the rounded value, as the half model does
        assert p_half.dtype == dtype and opt_half.state[p_half]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(opt_half.state[p_half]["exp_avg"], opt_full.state[p_full]["exp_avg"])


@ALL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_state_dict_round_trip_keeps_float32_state(make, dtype):
    """load_state_dict casts floating-point state to the parameter's dtype in torch; the float32 filter state of a
    half-precision parameter must come back float32 and the resumed optimizer must step as the original."""
    generator = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, generator=generator).to(dtype))
    optimizer = make([p])
    for _ in range(3):
        p.grad = torch.randn(64, generator=generator).to(dtype)
        optimizer.step()
    q = torch.nn.Parameter(p.detach().clone())
    resumed = make([q])
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert all(v.dtype == torch.float32 for k, v in resumed.state[q].items() if torch.is_tensor(v) and k != "step")
    for _ in range(3):
        grad = torch.randn(64, generator=generator).to(dtype)
        p.grad, q.grad = grad, grad.clone()
        optimizer.step()
        resumed.step()
    assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_trains(dtype):
    model = small_network().to(dtype)
    losses = train(model, KalmanAdam(model.parameters(), lr=1e-2), 100, dtype=dtype)
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


@ALL
def test_setstate_fills_defaults_for_older_checkpoints(make):
    model = small_network()
    optimizer = make(model.parameters())
    train(model, optimizer, 2)
    state = optimizer.__getstate__()
    for group in state["param_groups"]:
        for key in ["noise", "skip_nonfinite", "nonfinite_skips", "adaptation_scale", "foreach", "maximize"]:
            group.pop(key, None)
    fresh = make(small_network().parameters())
    fresh.__setstate__(state)
    assert fresh.param_groups[0]["skip_nonfinite"] is False and fresh.param_groups[0]["nonfinite_skips"] == 0


@ALL
def test_torch_compile_of_a_training_step_matches_eager(make):
    model_eager, model_compiled = small_network(), small_network()
    opt_eager, opt_compiled = make(model_eager.parameters()), make(model_compiled.parameters())

    def training_step(model, optimizer, x, y):
        optimizer.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        optimizer.step()
        return loss

    compiled_step = torch.compile(training_step, backend="aot_eager")
    for x, y in batches(4):
        training_step(model_eager, opt_eager, x, y)
        compiled_step(model_compiled, opt_compiled, x, y)
    for p, q in zip(model_eager.parameters(), model_compiled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@ALL
def test_a_compiled_training_step_or_step_compiles_once_however_many_steps(make):
    """Under a caller's torch.compile the step is not traced (issue 13: a traced step specialized on its step count
    and recompiled every step until dynamo's recompile limit): the frames compiled stay
    those of the first call."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = small_network()
    optimizer = make(model.parameters())
    counter = CompileCounter()

    def training_step(x, y):
        optimizer.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        optimizer.step()
        return loss

    compiled_training_step, compiled_step = torch.compile(training_step, backend=counter), torch.compile(
        optimizer.step, backend=counter)
    frames = []
    for x, y in batches(12):
        compiled_training_step(x, y)
        frames.append(counter.frame_count)
    assert frames == frames[:1] * 12, frames
    before = counter.frame_count
    for _ in range(3):
        compiled_step()
    assert counter.frame_count <= before + 1
    assert all(int(optimizer.state[p]["step"]) == 15 for p in model.parameters())


def test_a_fused_optimizer_inside_a_compiled_training_step_runs_its_own_kernels():
    """The fused path's kernels (per-step scalars as tensors) still run when the caller compiles the training step,
    and the parameters follow the eager path's."""
    torch._dynamo.reset()
    model_eager, model_compiled = small_network(), small_network()
    opt_eager = KalmanAdam(model_eager.parameters(), lr=1e-2, noise="innovation", fused=False)
    opt_compiled = KalmanAdam(model_compiled.parameters(), lr=1e-2, noise="innovation", fused=True)

    def training_step(model, optimizer, x, y):
        optimizer.zero_grad()
        loss_fn(model, x, y).backward()
        optimizer.step()

    compiled_step = torch.compile(training_step, backend="aot_eager")
    for x, y in batches(6):
        training_step(model_eager, opt_eager, x, y)
        compiled_step(model_compiled, opt_compiled, x, y)
    assert opt_compiled.fused_compilations >= 1 and opt_eager.fused_compilations == 0
    for p, q in zip(model_eager.parameters(), model_compiled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

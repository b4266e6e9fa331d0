"""The shared training code: optimizer registry, lr grid, tasks, the training loop and its determinism."""

import math

import pytest
import torch

from experiments import training
from kalman_optim import KalmanAdam, KalmanLAMB

CPU = torch.device("cpu")


def test_every_registered_optimizer_builds_and_steps():
    for name in training.OPTIMIZERS:
        p = torch.nn.Parameter(torch.ones(3))
        opt = training.make_optimizer(name, [p], lr=0.1)
        p.grad = torch.ones(3)
        opt.step()
        assert torch.all(p < 1), name
    assert isinstance(training.make_optimizer("KalmanAdam-VA", [p], 1e-3), KalmanAdam)
    lamb = training.make_optimizer("LAMB", [p], 1e-3)
    assert isinstance(lamb, KalmanLAMB) and lamb.param_groups[0]["precision_weighting"] is False
    with pytest.raises(ValueError, match="Invalid optimizer"):
        training.make_optimizer("SGD!", [p], 1e-3)


def test_lr_grid_is_log_spaced_and_rounded():
    grid = training.lr_grid(1e-4, 1e-1, 7)
    assert grid[0] == 1e-4 and grid[-1] == 0.1 and len(grid) == 7
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) / min(ratios) < 1.01
    assert training.lr_grid(3e-3, 1, 1) == [3e-3]


def test_steps_to_target():
    assert training.steps_to_target([10, 20, 30], [3.0, 1.5, 0.9], 1.5) == 20
    assert training.steps_to_target([10, 20], [3.0, 2.0], 1.0) is None


@pytest.mark.parametrize("task_name, kwargs", [("fashion_mnist", dict(train_size=512, eval_size=256, batch_size=32)),
                                               ("shakespeare", dict(batch_size=4, context=16, width=16, layers=1,
                                                                    heads=2, eval_windows=16))])
def test_training_is_deterministic_and_learns(task_name, kwargs):
    def run():
        torch.manual_seed(0)
        task = training.make_task(task_name, CPU, **kwargs)
        before = task.evaluate(task.model, "val")["loss"]
        opt = training.make_optimizer("AdamW", task.model.parameters(), lr=3e-3)
        return before, training.train(task, opt, steps=30, seed=0, eval_every=10)

    before, first = run()
    _, second = run()
    assert first.val_loss == second.val_loss and first.final_test == second.final_test
    assert first.eval_steps == [10, 20, 30] and not first.diverged
    assert first.val_loss[-1] < before  # 30 steps of AdamW reduce the validation loss


def test_divergence_is_detected_and_reported_as_infinite_loss():
    torch.manual_seed(0)
    task = training.make_task("fashion_mnist", CPU, train_size=256, eval_size=128, batch_size=32)
    opt = torch.optim.SGD(task.model.parameters(), lr=1e6)
    result = training.train(task, opt, steps=50, seed=0, eval_every=5)
    assert result.diverged and result.steps < 50 and math.isinf(result.final_val["loss"])


def test_full_gradient_is_the_mean_of_per_batch_gradients():
    torch.manual_seed(0)
    task = training.make_task("fashion_mnist", CPU, train_size=300, eval_size=100)
    full = task.full_gradient(task.model, max_examples=300)
    loss, _ = task.loss(task.model, task.train_x[:300], task.train_y[:300])
    direct = torch.autograd.grad(loss, list(task.model.parameters()))
    for a, b in zip(full, direct):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="Invalid task"):
        training.make_task("imagenet", CPU)

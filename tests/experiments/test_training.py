"""The shared training code: optimizer registry, lr grid, tasks, the training loop and its determinism."""

import math

import pytest
import torch

from experiments import training
from experiments.models import SmallResNet
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


RESNET = dict(train_size=512, eval_size=256, batch_size=32, channels=(4, 8, 16), stem_stride=2)  # tiny and fast


@pytest.mark.parametrize("task_name, kwargs", [("fashion_mnist", dict(train_size=512, eval_size=256, batch_size=32)),
                                               ("fashion_mnist_resnet", RESNET),
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


def _batchnorm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for b in m.buffers()]


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_small_resnet_has_batchnorm_residual_blocks_and_ten_logits(stem_stride):
    torch.manual_seed(0)
    model = SmallResNet((4, 8, 16), stem_stride=stem_stride)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    # Stem, two per block and the two reshaping shortcuts (stages 2 and 3): 9 BatchNorm layers.
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 9
    assert isinstance(model.stages[0].shortcut, torch.nn.Identity)
    assert isinstance(model.stages[1].shortcut, torch.nn.Sequential)


def test_resnet_task_evaluates_in_eval_mode_deterministically():
    torch.manual_seed(0)
    task = training.make_task("fashion_mnist_resnet", CPU, **RESNET)
    model = task.model
    model.train()
    x = task.train_x[:64]
    model(x)  # move the running statistics off their initial values
    buffers = _batchnorm_buffers(model)
    first, second = task.evaluate(model, "val"), task.evaluate(model, "val")
    assert first == second and model.training  # evaluation restores training mode
    assert all(torch.equal(a, b) for a, b in zip(buffers, _batchnorm_buffers(model)))  # running stats untouched
    model.eval()
    with torch.no_grad():  # eval mode: an image's logits do not depend on the rest of its batch
        torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-5, atol=1e-5)


def test_resnet_full_gradient_is_the_mean_of_mini_batch_gradients_and_keeps_running_stats():
    torch.manual_seed(0)
    task = training.make_task("fashion_mnist_resnet", CPU, **dict(RESNET, train_size=96, batch_size=32))
    model = task.model
    model.eval()
    buffers = _batchnorm_buffers(model)
    full = task.full_gradient(model)
    assert not model.training and all(torch.equal(a, b) for a, b in zip(buffers, _batchnorm_buffers(model)))
    model.train()  # the reference: BatchNorm on the statistics of each mini-batch of 32
    params = list(model.parameters())
    chunks = [torch.autograd.grad(task.loss(model, task.train_x[i:i + 32], task.train_y[i:i + 32])[0], params)
              for i in range(0, 96, 32)]
    for index, total in enumerate(full):
        torch.testing.assert_close(total, sum(c[index] for c in chunks) / 3, rtol=1e-4, atol=1e-6)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="Invalid task"):
        training.make_task("imagenet", CPU)


def test_extrapolated_mode_is_evaluated_at_its_iterate():
    """Mode "extrapolated" holds the extrapolated point in the parameters between steps (D8): train() reports the
    losses of the iterate and leaves the point in place for the next step."""
    torch.manual_seed(0)
    task = training.make_task("fashion_mnist", CPU, train_size=256, eval_size=128, batch_size=32)
    optimizer = training.make_optimizer("KalmanAdam-extrapolated", task.model.parameters(), lr=3e-3)
    result = training.train(task, optimizer, steps=12, seed=0, eval_every=6)
    point = [p.detach().clone() for p in task.model.parameters()]
    at_point = task.evaluate(task.model, "val")["loss"]
    optimizer.eval()
    at_iterate = task.evaluate(task.model, "val")["loss"]
    optimizer.train()
    assert result.final_val["loss"] == at_iterate != at_point
    assert all(torch.equal(p, q) for p, q in zip(task.model.parameters(), point))

"""The per-example ground truth for r (experiments/noise_truth.py): its mean is the full-batch gradient, its
variance the per-example spread; with the true r, D7's error identity gives intervals for mode "innovation"."""

import torch

from experiments import noise_truth, training
from kalman_optim import KalmanAdam

SHAKESPEARE = dict(batch_size=4, context=16, width=16, layers=1, heads=2, eval_windows=8, train_chars=32 * 17,
                   window_pool=32)


def test_per_example_moments_match_the_full_gradient_and_a_direct_variance():
    torch.manual_seed(0)
    task = training.make_task("shakespeare", torch.device("cpu"), **SHAKESPEARE)
    means, variances = noise_truth.per_example_moments(task, task.model)
    full = task.full_gradient(task.model)
    for mean, f in zip(means, full):
        torch.testing.assert_close(mean.float(), f, rtol=1e-4, atol=1e-6)
    inputs, targets = noise_truth.training_examples(task)
    params = list(task.model.parameters())
    grads = [torch.autograd.grad(task.loss(task.model, inputs[i:i + 1], targets[i:i + 1])[0], params)
             for i in range(inputs.shape[0])]
    direct = torch.stack([g[0].double() for g in grads]).var(0, unbiased=False)
    torch.testing.assert_close(variances[0], direct, rtol=1e-6, atol=1e-12)


def test_true_noise_intervals_cover_on_a_static_stream():
    """lr = 0: i.i.d. mini-batches around the full gradient; with the true noise fraction the intervals are
    about right, and the mode's own fraction is close to it."""
    torch.manual_seed(0)
    task = training.make_task("shakespeare", torch.device("cpu"), **SHAKESPEARE)
    params = [p for p in task.model.parameters() if p.requires_grad]
    optimizer = KalmanAdam(params, lr=0.0, weight_decay=0.0, noise="innovation")
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        optimizer.zero_grad()
        x, y = task.batch(generator)
        task.loss(task.model, x, y)[0].backward()
        optimizer.step()
    means, variances = noise_truth.per_example_moments(task, task.model)
    check = noise_truth.innovation_noise_check(optimizer, params, means, [v / task.batch_size for v in variances],
                                               [0.5, 0.95])
    assert check["total"] > 1000
    assert 0.85 <= check["inside"]["0.95"] / check["total"] <= 1.0
    assert 0.8 <= check["phi_over_true_phi_quantiles"][1] <= 1.25

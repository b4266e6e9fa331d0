"""Training on real data for the experiments: the optimizers compared, three tasks, and one training loop.

Tasks keep their whole data set on the device and sample mini-batches with a seeded generator, so there
is no data-loader bottleneck and a run is deterministic in its seed on CPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from experiments.data import fashion_mnist, shakespeare
from experiments.models import CharTransformer, SmallCNN, SmallResNet
from kalman_optim import KalmanAdam, KalmanLAMB

# ------------------------------------------------------------------------------------------ optimizers
# name -> (class, keyword arguments); every entry gets the same lr grid and budget in E4.
OPTIMIZERS: dict[str, tuple[type, dict[str, Any]]] = {
    "AdamW": (torch.optim.AdamW, {}),
    "KalmanAdam-adam": (KalmanAdam, dict(noise="adam")),
    "KalmanAdam-constant": (KalmanAdam, dict(noise="constant")),
    "KalmanAdam-adaptive": (KalmanAdam, dict(noise="adaptive")),
    "KalmanAdam-VA": (KalmanAdam, dict(noise="adam", variance_adaptation=True)),
    "KalmanAdam-innovation": (KalmanAdam, dict(noise="innovation")),
    "KalmanAdam-innovation-fast": (KalmanAdam, dict(noise="innovation", noise_beta=0.9)),
    "KalmanAdam-innovation-VA": (KalmanAdam, dict(noise="innovation", variance_adaptation=True)),
    "KalmanAdam-transport": (KalmanAdam, dict(noise="transport")),
    "LAMB": (KalmanLAMB, dict(noise="adam", precision_weighting=False)),
    "KalmanLAMB-PW": (KalmanLAMB, dict(noise="adam", precision_weighting=True, precision_mean="previous")),
    "KalmanLAMB-adaptive-PW": (KalmanLAMB, dict(noise="adaptive", precision_weighting=True, precision_mean="previous")),
    "KalmanLAMB-innovation-PW": (KalmanLAMB, dict(noise="innovation", precision_weighting=True, precision_mean="previous")),
    # Added last so that the figures' styles (indexed by position) stay as they were; E2 only.
    "KalmanAdam-innovation-medium": (KalmanAdam, dict(noise="innovation", noise_beta=0.95)),
    "KalmanAdam-fitted": (KalmanAdam, dict(noise="fitted")),
    # D8 with the input measured by the gradient at an extrapolated point: the model is evaluated at the iterate.
    "KalmanAdam-extrapolated": (KalmanAdam, dict(noise="extrapolated")),
}
# Optimizers whose steps are AdamW's exactly (Adam's gain and update; they differ only in the uncertainty they read
# out): E2 runs them as shadow filters of its AdamW run, E4 does not train them again.
SAME_STEPS_AS_ADAMW = ("KalmanAdam-innovation", "KalmanAdam-innovation-medium", "KalmanAdam-innovation-fast",
                       "KalmanAdam-fitted")


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, **overrides: Any) -> torch.optim.Optimizer:
    """Optimizer `name` from OPTIMIZERS with learning rate `lr`, decoupled weight decay, and extra keywords."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    cls, kwargs = OPTIMIZERS[name]
    return cls(params, lr=lr, weight_decay=weight_decay, **{**kwargs, **overrides})


def lr_grid(low: float, high: float, count: int) -> list[float]:
    """`count` log-spaced learning rates from low to high, rounded to 3 significant digits (stable run ids)."""
    if count < 2:
        return [float(f"{low:.3g}")]
    return [float(f"{low * (high / low) ** (i / (count - 1)):.3g}") for i in range(count)]


# ------------------------------------------------------------------------------------------ tasks
class Task:
    """A supervised problem with its data on one device: a model, mini-batches, and evaluation per split."""

    name: str
    model: nn.Module

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, number of correct predictions) of a batch."""
        raise NotImplementedError

    def evaluation_batches(self, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Mean loss and accuracy over the (fixed) evaluation batches of `split` ("val" or "test")."""
        was_training = model.training
        model.eval()
        total_loss, correct, count = 0.0, 0.0, 0
        for inputs, targets in self.evaluation_batches(split):
            loss, right = self.loss(model, inputs, targets)
            n = targets.numel()
            total_loss += float(loss) * n
            correct += float(right)
            count += n
        model.train(was_training)
        return dict(loss=total_loss / count, accuracy=correct / count)

    def full_gradient(self, model: nn.Module, max_examples: int | None = None) -> list[torch.Tensor]:
        """The gradient of the mean training loss over the whole training set (or its first max_examples)."""
        raise NotImplementedError


#: Images per forward/backward pass of FashionMNISTTask.full_gradient.
FULL_GRADIENT_CHUNK = 256


class FashionMNISTTask(Task):
    """SmallCNN on Fashion-MNIST; `train_size` limits the training images (smoke), the splits stay fixed."""

    name = "fashion_mnist"

    def __init__(self, device: torch.device, batch_size: int = 128, train_size: int | None = None,
                 eval_size: int | None = None, channels: tuple[int, int] = (16, 32), hidden: int = 64):
        self._load_data(device, batch_size, train_size, eval_size)
        self.model = SmallCNN(channels, hidden).to(device)

    def _load_data(self, device: torch.device, batch_size: int, train_size: int | None, eval_size: int | None) -> None:
        """The first `train_size` training images and the first `eval_size` of each evaluation split, on `device`."""
        data = fashion_mnist()
        n = data.train_x.shape[0] if train_size is None else min(train_size, data.train_x.shape[0])
        e = None if eval_size is None else eval_size
        self.train_x, self.train_y = data.train_x[:n].to(device), data.train_y[:n].to(device)
        self.splits = {"val": (data.val_x[:e].to(device), data.val_y[:e].to(device)),
                       "test": (data.test_x[:e].to(device), data.test_y[:e].to(device))}
        self.batch_size, self.device = batch_size, device

    def batch(self, generator):
        index = torch.randint(0, self.train_x.shape[0], (self.batch_size,), generator=generator).to(self.device)
        return self.train_x[index], self.train_y[index]

    def loss(self, model, inputs, targets):
        logits = model(inputs)
        return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).sum()

    def evaluation_batches(self, split):
        x, y = self.splits[split]
        return [(x[i:i + 2000], y[i:i + 2000]) for i in range(0, x.shape[0], 2000)]

    def full_gradient(self, model, max_examples=None):
        n = self.train_x.shape[0] if max_examples is None else min(max_examples, self.train_x.shape[0])
        params = [p for p in model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        # Chunks of 256: 2.5x faster per image than chunks of 2000 on one CPU thread (measured; cache-sized).
        for i in range(0, n, FULL_GRADIENT_CHUNK):
            x, y = self.train_x[i:min(i + FULL_GRADIENT_CHUNK, n)], self.train_y[i:min(i + FULL_GRADIENT_CHUNK, n)]
            loss, _ = self.loss(model, x, y)
            grads = torch.autograd.grad(loss * (y.shape[0] / n), params)
            for t, g in zip(total, grads):
                t.add_(g)
        return total


class FashionMNISTResNetTask(FashionMNISTTask):
    """SmallResNet (BatchNorm, residual blocks) on Fashion-MNIST: the same data, splits and batches as
    FashionMNISTTask, a deeper network whose normalization layers make most weights scale-invariant.

    Evaluation runs the model in eval mode (Task.evaluate), i.e. on BatchNorm's running statistics."""

    name = "fashion_mnist_resnet"

    def __init__(self, device: torch.device, batch_size: int = 128, train_size: int | None = None,
                 eval_size: int | None = None, channels: tuple[int, int, int] = (16, 32, 64), stem_stride: int = 1):
        self._load_data(device, batch_size, train_size, eval_size)
        self.model = SmallResNet(tuple(channels), stem_stride=stem_stride).to(device)

    def full_gradient(self, model, max_examples=None):
        """Mean of the mini-batch gradients over consecutive chunks of `batch_size` of the first `max_examples`
        training images (all by default), BatchNorm in training mode (weighted by chunk size).

        In training mode an image's loss depends on the batch statistics of its batch, so there is no
        batch-independent full-batch loss; this is the gradient training sees, averaged over one fixed partition
        of the training set into mini-batches (eval mode would differentiate another function, on running
        statistics). The running statistics are restored afterwards: the call leaves the model as it found it."""
        n = self.train_x.shape[0] if max_examples is None else min(max_examples, self.train_x.shape[0])
        params = [p for p in model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        saved = [(buffer, buffer.clone()) for buffer in model.buffers()]  # BN running mean/var and batch counts
        was_training = model.training
        model.train()
        try:
            for i in range(0, n, self.batch_size):
                x, y = self.train_x[i:min(i + self.batch_size, n)], self.train_y[i:min(i + self.batch_size, n)]
                loss, _ = self.loss(model, x, y)
                for t, g in zip(total, torch.autograd.grad(loss * (y.shape[0] / n), params)):
                    t.add_(g)
        finally:
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
            model.train(was_training)
        return total


class ShakespeareTask(Task):
    """CharTransformer on Shakespeare: random windows of `context`+1 characters from the training plays.

    With `window_pool` = n the training set is instead n fixed, evenly spaced windows of the stream, mini-batches
    draw from them (with replacement) and `full_gradient` averages over all of them: the expected mini-batch
    gradient is then exactly the full-batch gradient (E2's calibration needs that ground truth; the mean over
    tiled windows is not the expectation over random offsets)."""

    name = "shakespeare"

    def __init__(self, device: torch.device, batch_size: int = 32, context: int = 64, width: int = 64,
                 layers: int = 2, heads: int = 4, eval_windows: int = 256, train_chars: int | None = None,
                 window_pool: int | None = None):
        corpus = shakespeare()
        self.train = corpus.train[:train_chars].to(device).long()
        self.context, self.batch_size, self.device = context, batch_size, device
        self.model = CharTransformer(len(corpus.vocabulary), context, width, layers, heads).to(device)
        self.vocabulary_size = len(corpus.vocabulary)
        self.splits = {s: self._fixed_windows(getattr(corpus, s).to(device).long(), eval_windows) for s in ("val", "test")}
        self.pool = None if window_pool is None else self._fixed_windows(self.train, int(window_pool))

    def _fixed_windows(self, stream: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` evenly spaced, non-overlapping evaluation windows: the same for every run."""
        starts = torch.linspace(0, stream.numel() - self.context - 2, count, device=stream.device).long()
        windows = stream[starts[:, None] + torch.arange(self.context + 1, device=stream.device)]
        return windows[:, :-1], windows[:, 1:]

    def batch(self, generator):
        if self.pool is not None:
            index = torch.randint(0, self.pool[0].shape[0], (self.batch_size,), generator=generator).to(self.device)
            return self.pool[0][index], self.pool[1][index]
        starts = torch.randint(0, self.train.numel() - self.context - 1, (self.batch_size,), generator=generator)
        windows = self.train[starts.to(self.device)[:, None] + torch.arange(self.context + 1, device=self.device)]
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model, inputs, targets):
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, (logits.argmax(-1) == targets).sum()

    def evaluation_batches(self, split):
        x, y = self.splits[split]
        return [(x[i:i + 128], y[i:i + 128]) for i in range(0, x.shape[0], 128)]

    def full_gradient(self, model, max_examples=None):
        """Gradient of the mean loss over `max_examples` fixed windows tiling the training stream (a proxy for
        the full-corpus gradient: the stream holds ~4.4M characters); with a window pool, the exact mean over the pool."""
        if self.pool is not None:
            inputs, targets = self.pool
            count = inputs.shape[0]
        else:
            count = max_examples or 4096
            inputs, targets = self._fixed_windows(self.train, count)
        params = [p for p in model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        for i in range(0, count, 256):
            x, y = inputs[i:i + 256], targets[i:i + 256]
            loss, _ = self.loss(model, x, y)
            for t, g in zip(total, torch.autograd.grad(loss * (x.shape[0] / count), params)):
                t.add_(g)
        return total


TASKS: dict[str, Callable[..., Task]] = {
    "fashion_mnist": FashionMNISTTask, "fashion_mnist_resnet": FashionMNISTResNetTask, "shakespeare": ShakespeareTask,
}


def make_task(name: str, device: torch.device, **kwargs: Any) -> Task:
    if name not in TASKS:
        raise ValueError(f"Invalid task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name](device, **kwargs)


# ------------------------------------------------------------------------------------------ training loop
@dataclass
class TrainingResult:
    steps: int
    diverged: bool
    train_loss: list[float] = field(default_factory=list)  # mean mini-batch loss over each logging interval
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    final_val: dict[str, float] = field(default_factory=dict)
    final_test: dict[str, float] = field(default_factory=dict)


def train(task: Task, optimizer: torch.optim.Optimizer, steps: int, seed: int, eval_every: int,
          on_step: Callable[[int, Task, torch.optim.Optimizer], None] | None = None,
          evaluate_test: bool = True, progress: str | None = None) -> TrainingResult:
    """`steps` optimizer steps on seeded mini-batches; validation every `eval_every` steps and at the end.

    A non-finite training loss stops the run and marks it diverged (its losses count as +inf in tuning).
    `on_step(step, task, optimizer)` is called after every step (E2's measurements)."""
    generator = torch.Generator().manual_seed(seed)
    model = task.model
    model.train()
    result = TrainingResult(steps=0, diverged=False)
    running, count = 0.0, 0
    for step in tqdm(range(1, steps + 1), desc=progress, leave=False, disable=progress is None, mininterval=2):
        inputs, targets = task.batch(generator)
        loss, _ = task.loss(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        result.steps = step
        if not math.isfinite(value):
            result.diverged = True
            break
        running, count = running + value, count + 1
        if on_step is not None:
            on_step(step, task, optimizer)
        if step % eval_every == 0 or step == steps:
            result.train_loss.append(running / count)
            running, count = 0.0, 0
            metrics = evaluate_iterate(task, optimizer, "val")
            result.eval_steps.append(step)
            result.val_loss.append(metrics["loss"])
            result.val_accuracy.append(metrics["accuracy"])
            if not math.isfinite(metrics["loss"]):
                result.diverged = True
                break
    if result.diverged:
        result.final_val = dict(loss=math.inf, accuracy=0.0)
        result.final_test = dict(loss=math.inf, accuracy=0.0)
        return result
    result.final_val = dict(loss=result.val_loss[-1], accuracy=result.val_accuracy[-1])
    if evaluate_test:
        result.final_test = evaluate_iterate(task, optimizer, "test")
    return result


@contextlib.contextmanager
def at_iterate(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The parameters at the optimizer's iterate inside the block: between optimizer.eval() and optimizer.train() for
    this library's optimizers (KalmanAdam in mode "extrapolated" keeps the extrapolated point in the parameters;
    bit-exact swaps, no-ops in every other mode); torch's optimizers have no such methods and leave them as they are."""
    if not isinstance(optimizer, (KalmanAdam, KalmanLAMB)):
        yield
        return
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()


def evaluate_iterate(task: Task, optimizer: torch.optim.Optimizer, split: str) -> dict[str, float]:
    """task.evaluate at the optimizer's iterate (`at_iterate`)."""
    with at_iterate(optimizer):
        return task.evaluate(task.model, split)


def steps_to_target(eval_steps: list[int], values: list[float], target: float) -> int | None:
    """First evaluation step at which `values` (e.g. validation loss) is at or below `target`; None if never."""
    for step, value in zip(eval_steps, values):
        if value <= target:
            return step
    return None

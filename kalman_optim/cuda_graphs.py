"""CUDA graphs of the fused step: a bucket's kernel launches recorded once and replayed.

On CUDA a compiled step is host-bound: dynamo's guards, inductor's wrapper and the launches cost ~0.5 ms per step on
an H200 where the kernels of 1e8 parameters run in ~0.7 ms (results/bench/cuda_kernel_table.log). A replay costs
one launch. A graph holds the addresses of the tensors it was recorded with, so each bucket's graph is replayed only
while every tensor it reads or writes (parameters, gradients, state, the staged coefficients) is where it was: the
addresses are compared on every step, and a step whose tensors moved (a gradient allocated elsewhere, a state loaded
anew) runs the compiled kernels as they are. The per-step scalars reach the graph through a device buffer of fixed
address (`CoefficientStaging`) that is filled before each replay.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

#: Steps a bucket runs with the same addresses before its graph is recorded: the first compiles (and autotunes) its
#: kernels, which cannot happen inside a recording.
WARMUP_STEPS = 2
#: Recordings per bucket at most: where the addresses keep changing, recording again and again costs more than it
#: saves (each recording synchronizes the device).
MAX_RECORDINGS = 4
#: Pinned host buffers per staged coefficient tensor: the host fills one while the copies from the others may still
#: be queued, so up to this many steps can be in flight before the host waits.
STAGING_SLOTS = 8


def addresses(tensors: tuple, coefficients: Tensor) -> tuple:
    """What a recorded graph depends on: each tensor's address, each parameter's size and each gradient's strides (a
    graph's kernels are specialized on them; a gradient may be assigned with other strides than its parameter's)."""
    params, grads, exp_avgs, exp_avg_sqs, extra = tensors
    pointer = Tensor.data_ptr  # map over the unbound method: a generator costs as much again per tensor
    return (coefficients.data_ptr(), *map(pointer, params), *map(Tensor.numel, params), *map(pointer, grads),
            *map(Tensor.stride, grads), *map(pointer, exp_avgs), *map(pointer, exp_avg_sqs),
            *(t for values in extra.values() for t in map(pointer, values)))


@dataclass
class _Entry:
    graph: object | None = None
    recorded_for: tuple | None = None
    last_addresses: tuple | None = None
    repeats: int = 0
    recordings: int = 0


def _record(call: Callable[[], None]):
    """A CUDA graph of `call`'s launches (recorded, not run), on the current device."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph


def _on(device: torch.device | None):
    """A context on `device` where it is a CUDA device other than the current one (a model spread over several GPUs):
    a graph is recorded on, and replayed into a stream of, the current device."""
    if device is None or device.type != "cuda" or device.index in (None, torch.cuda.current_device()):
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def capturing() -> bool:
    """Whether the caller is recording a CUDA graph of its own (the optimizers refuse to step inside one)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()  # no capture before CUDA is up


@dataclass
class StepGraphs:
    """The CUDA graphs of one optimizer's fused buckets (a KernelCache's), keyed like its kernels."""

    entries: dict = field(default_factory=dict)
    replays: int = 0
    recordings: int = 0
    disabled_reason: str | None = None

    def run(self, key: tuple, where: tuple, call: Callable[[], None], mutated: Callable[[], list[Tensor]],
            device: torch.device | None = None) -> None:
        """Run `call` (one bucket's step) through its graph when it was recorded for the addresses `where`, else as it
        is; record it once the same addresses have come WARMUP_STEPS times. `mutated()`: the tensors the step writes,
        whose autograd version counters a replay moves as the kernels' in-place writes do. `device`: the bucket's.
        Never inside a caller's own capture: the optimizers refuse to step in one (`capturing`)."""
        entry = self.entries.setdefault(key, _Entry())
        if self.disabled_reason is None and entry.graph is not None and entry.recorded_for == where:
            with _on(device):
                self._replay(entry.graph, mutated)
            return
        if (self.disabled_reason is None and entry.last_addresses == where and entry.repeats >= WARMUP_STEPS
                and entry.recordings < MAX_RECORDINGS):
            try:
                with _on(device):
                    graph = _record(call)
            except Exception as error:  # nothing ran: the step runs below, and no graph is tried again
                self.disable(f"recording failed: {type(error).__name__}: {str(error).strip()[:200]}")
            else:
                entry.graph, entry.recorded_for = graph, where
                entry.recordings += 1
                self.recordings += 1
                with _on(device):
                    self._replay(graph, mutated)
                return
        call()
        entry.repeats = entry.repeats + 1 if entry.last_addresses == where else 1
        entry.last_addresses = where

    def _replay(self, graph, mutated: Callable[[], list[Tensor]]) -> None:
        graph.replay()
        torch.autograd.graph.increment_version(mutated())
        self.replays += 1

    def disable(self, reason: str) -> None:
        if self.disabled_reason is None:
            warnings.warn(f"kalman_optim: CUDA graphs of the fused step disabled ({reason}); the compiled kernels run "
                          "as they are", stacklevel=5)
        self.disabled_reason = reason
        self.entries.clear()


class CoefficientStaging:
    """A bucket's per-step scalars on the device at a fixed address (what a recorded graph reads), copied from a ring
    of pinned host buffers without waiting for the device: a copy from pageable memory blocks the host until the work
    queued before it has run, and pinning a new buffer each step costs ~40 us of host time."""

    def __init__(self, values: Sequence[float], dtype: torch.dtype, device: torch.device) -> None:
        self.device_buffer = torch.empty(len(values), dtype=dtype, device=device)
        if device.type != "cuda":  # a fixed buffer filled by a plain copy (the graph bookkeeping's tests on a CPU)
            return
        self.host = [torch.empty(len(values), dtype=dtype, pin_memory=True) for _ in range(STAGING_SLOTS)]
        self.host_arrays = [buffer.numpy() for buffer in self.host]
        self.copied = [torch.cuda.Event() for _ in range(STAGING_SLOTS)]
        self.used = [False] * STAGING_SLOTS
        self.slot = 0
        self.stream = None

    def stage(self, values: Sequence[float]) -> Tensor:
        """The device buffer, holding `values` once the copy queued on the current stream has run."""
        if self.device_buffer.device.type != "cuda":
            return self.device_buffer.copy_(torch.as_tensor(values, dtype=self.device_buffer.dtype))
        slot, self.slot = self.slot, (self.slot + 1) % STAGING_SLOTS
        if self.used[slot]:
            self.copied[slot].synchronize()  # that slot's last copy has been read
        self.host_arrays[slot][:] = values  # rounds each double to the dtype, as torch.tensor(values, dtype) does
        stream = torch.cuda.current_stream(self.device_buffer.device)
        if self.stream is not None and stream != self.stream:
            stream.wait_stream(self.stream)  # the last step's kernels, queued on the other stream, read the buffer
        self.stream = stream
        self.device_buffer.copy_(self.host[slot], non_blocking=True)
        self.copied[slot].record(stream)
        self.used[slot] = True
        return self.device_buffer

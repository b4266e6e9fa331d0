"""Inductor's Triton code for CUDA, generated on a machine without a GPU (code only: nothing is compiled or run).

A CPU-only torch build with the `triton` package installed can lower a graph for CUDA once torch believes a device
is there: FakeTensorMode makes "cuda" tensors with no memory, and `install()` answers the device queries inductor
asks (an H100's properties), skips what would touch a real device (pattern tables traced with real tensors, the
joint graph's constant folding, the device guards of two tensor methods) and stops after code generation. The code
is the one a GPU run compiles up to those two passes: uniform constants stay ops instead of folded scalars. Used by
`triton_bytes` (issue 13: the bytes a fused step moves, read off its kernels, when no GPU is lent)."""

from __future__ import annotations

import types
from typing import Callable

import torch

#: The device inductor is told it compiles for (an H100 SXM: what code generation reads of it).
H100 = types.SimpleNamespace(
    name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, total_memory=80 * 2**30, warp_size=32,
    max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536, max_threads_per_block=1024,
    shared_memory_per_block_optin=232448, shared_memory_per_multiprocessor=233472, shared_memory_per_block=49152,
    L2_cache_size=50 * 2**20, gcnArchName="", uuid="fake", is_integrated=False, is_multi_gpu_board=False,
    clock_rate=1980000, memory_clock_rate=2619000, memory_bus_width=5120)
_INSTALLED = False


def install() -> None:
    """Patch torch (this process only) so that inductor generates CUDA code without a GPU. Irreversible: a process
    that installs it generates code and exits."""
    global _INSTALLED
    if _INSTALLED:
        return
    import triton  # noqa: F401  (the code generator; raises ImportError where it is not installed)
    import torch._inductor.config as inductor_config
    import torch._inductor.scheduler as scheduler
    import torch.utils._triton as torch_triton
    from torch._dynamo import device_interface
    from torch._inductor.fx_passes import fuse_attention, misc_patterns, pad_mm

    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.get_device_properties = lambda *args, **kwargs: H100
    cuda.get_device_capability = lambda *args, **kwargs: (H100.major, H100.minor)
    cuda.get_device_name = lambda *args, **kwargs: H100.name
    cuda.is_bf16_supported = lambda *args, **kwargs: True
    cuda.set_device = lambda *args, **kwargs: None
    cuda._lazy_init = lambda: None
    cuda._exchange_device = cuda._maybe_exchange_device = lambda index: 0
    cuda.get_rng_state = lambda *args, **kwargs: torch.zeros(16, dtype=torch.uint8)
    cuda.set_rng_state = lambda *args, **kwargs: None
    cuda.device.__enter__ = lambda self: None
    cuda.device.__exit__ = lambda self, *args: False
    import torch.cuda.random as cuda_random
    cuda_random._lazy_init = lambda: None
    interface = device_interface.CudaInterface
    for target in (interface, interface.Worker):
        target.get_device_properties = staticmethod(lambda *args, **kwargs: H100)
        target.current_device = staticmethod(lambda: 0)
        target.set_device = staticmethod(lambda index: None)
    interface.device_count = staticmethod(lambda: 1)
    interface.exchange_device = interface.maybe_exchange_device = staticmethod(lambda index: 0)
    interface.is_bf16_supported = staticmethod(lambda *args, **kwargs: True)
    torch_triton.has_triton = scheduler.has_triton = lambda: True
    torch_triton.triton_hash_with_backend = lambda: "fake-cuda-" + "0" * 54  # no driver to name the target
    # Pattern tables are traced with real tensors on the input device; these graphs use none of them.
    fuse_attention._sfdp_init = misc_patterns._misc_patterns_init = pad_mm._pad_mm_init = lambda *args, **kwargs: None
    inductor_config.joint_graph_constant_folding = False  # runs ops on real tensors of the device
    # Two tensor methods enter a device guard in their Python binding, which a CPU build has none of for CUDA: the
    # same ops through the dispatcher.
    aten = torch.ops.aten
    torch.Tensor.copy_ = lambda self, src, non_blocking=False: aten.copy_.default(self, src, non_blocking)
    getitem = torch.Tensor.__getitem__

    def cuda_getitem(self, index):
        if self.device.type == "cuda" and isinstance(index, int):
            return aten.select.int(self, 0, index)
        if self.device.type == "cuda" and isinstance(index, slice):
            return aten.slice.Tensor(self, 0, 0 if index.start is None else index.start,
                                     2**62 if index.stop is None else index.stop, index.step or 1)
        return getitem(self, index)

    torch.Tensor.__getitem__ = cuda_getitem
    _INSTALLED = True


class _Generated(Exception):
    """Raised after code generation: the wrapper would next compile the kernels for a real device."""


def triton_code(function: Callable, args: list, config_patches: dict | None = None) -> str:
    """Inductor's output code (wrapper and Triton kernels) of `function` compiled for CUDA with `args` (tensors on
    "cuda" from `fake_like`, lists and dicts of them), static shapes, `config_patches` as inductor options."""
    install()
    import torch._inductor.graph as graph_lowering
    from torch._inductor.compile_fx import compile_fx

    sources: list[str] = []
    codegen = graph_lowering.GraphLowering.codegen

    def capture(self, *codegen_args, **codegen_kwargs):
        result = codegen(self, *codegen_args, **codegen_kwargs)
        sources.append(getattr(result[0], "value", result[0]))
        raise _Generated

    graph_lowering.GraphLowering.codegen = capture
    try:
        torch.compile(function, backend=lambda gm, inputs: compile_fx(gm, inputs, config_patches=config_patches or {}),
                      fullgraph=True, dynamic=False)(*args)
    except Exception:
        if not sources:
            raise
    finally:
        graph_lowering.GraphLowering.codegen = codegen
    return sources[-1]


def fake_like(value, sizes: dict[int, int], mode) -> object:
    """`value` (a tensor, or lists, tuples and dicts of them) as fake CUDA tensors under FakeTensorMode `mode`, a
    tensor of n elements resized to sizes[n] elements (1-D) where n is in `sizes`."""
    if isinstance(value, torch.Tensor):
        shape = (sizes[value.numel()],) if value.numel() in sizes else tuple(value.shape)
        with mode:
            return torch.empty(shape, dtype=value.dtype, device="cuda")
    if isinstance(value, (list, tuple)):
        return type(value)(fake_like(item, sizes, mode) for item in value)
    if isinstance(value, dict):
        return {key: fake_like(item, sizes, mode) for key, item in value.items()}
    return value

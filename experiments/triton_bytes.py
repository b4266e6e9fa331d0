"""The bytes per parameter element a fused step's CUDA kernels move, read off inductor's Triton code (issue 13).

Without a GPU the fused path's CUDA kernels cannot be timed, but their memory traffic can be read: on large tensors
these kernels are bound by it (bench_fused on an H200: the modes at 94-95% of the copy bandwidth move D6's bytes). The
plan, per candidate of bench_fused: step the optimizer on small CPU tensors in CUDA's structure (one compiled graph
per bucket; modes adam/constant through inductor, as on CUDA), capture each compiled graph with its inputs at the
last step, generate its code for fake CUDA tensors of the bench's size (`fake_cuda`), and count each kernel's loads
and stores of whole tensors (a reduction's per-row results and scalars are not counted), times its launches.

    python -m experiments.triton_bytes --out results/bench/triton_bytes.json   (needs `pip install triton`)
"""

from __future__ import annotations

import argparse
import functools
import itertools
import re
import sys
from pathlib import Path

import torch

from experiments.provenance import atomic_write, atomic_write_json, provenance

#: Candidates of bench_fused whose state is all per-element or per-tensor (the small capture resizes per-element
#: tensors only: modes innovation and fitted keep a strided sample of their own size).
CANDIDATES = ("KalmanAdam adam+VA", "KalmanAdam adaptive", "KalmanLAMB", "KalmanLAMB precision",
              "KalmanLAMB precision, exact mean")
#: Elements per tensor of the capture on the CPU (any size no other state tensor has).
CAPTURE_SIZE = 1000
#: Bytes per element of one fp32 load or store.
ELEMENT_BYTES = 4
#: A kernel section counts its accesses as whole-tensor ones from this many elements (x numel times r0 numel) on.
WHOLE_TENSOR_ELEMENTS = 10**6


# ------------------------------------------------------------------------------------------ reading the code
def kernel_accesses(source: str) -> dict[str, tuple[int, int]]:
    """Kernel name -> (whole-tensor loads, whole-tensor stores) of one graph's output code. A reduction kernel's
    whole-tensor accesses are those indexed by its reduction index (r0_*), a pointwise kernel's those indexed by x*;
    kernels over fewer than WHOLE_TENSOR_ELEMENTS (a reduction's second stage) count none."""
    kernels = {}
    pattern = r"^(triton_\w+) = async_compile\.triton\('\w+', '''(.*?)'''"
    for match in re.finditer(pattern, source, flags=re.S | re.M):
        body = match.group(2)
        xs = [int(n) for n in re.findall(r"\bxnumel = (\d+)", body)] or [1]
        rs = [int(n) for n in re.findall(r"\br0_numel = (\d+)", body)] or [1]
        if max(xs) * max(rs) < WHOLE_TENSOR_ELEMENTS:
            kernels[match.group(1)] = (0, 0)
            continue
        index = r"r0_\d" if max(rs) > 1 else r"x\d"
        loads = len(re.findall(r"tl\.load\(\w+ \+ \([^)]*" + index, body))
        stores = len(re.findall(r"tl\.store\(\w+ \+ \([^)]*" + index, body))
        kernels[match.group(1)] = (loads, stores)
    return kernels


def launches(source: str) -> list[str]:
    """The kernels the wrapper's call() launches, in order, a kernel launched twice listed twice."""
    call = source[source.index("def call(self, args)"):]
    return re.findall(r"(triton_\w+)\.run\(", call)


def graph_traffic(source: str, tensors: int) -> dict[str, float | int]:
    """Launches, whole-tensor loads and stores, and bytes per parameter element of one graph over `tensors`
    equal-sized tensors."""
    kernels = kernel_accesses(source)
    names = launches(source)
    loads = sum(kernels[name][0] for name in names)
    stores = sum(kernels[name][1] for name in names)
    return dict(launches=len(names), loads=loads, stores=stores,
                bytes_per_element=ELEMENT_BYTES * (loads + stores) / tensors)


# ------------------------------------------------------------------------------------------ capturing the graphs
def captured_graphs(candidate: str, tensors: int, steps: int = 4) -> list[tuple]:
    """(kernel function, flags, inputs) of each graph the candidate's last step ran, in CUDA's structure, on
    `tensors` CPU tensors of CAPTURE_SIZE elements."""
    from experiments.bench_fused import CANDIDATES as BENCH_CANDIDATES
    from kalman_optim import fused

    calls: dict[int, tuple] = {}
    counter = itertools.count()
    original_compile = fused.KernelCache._compile

    def recording_compile(self, function, flags, dynamic):
        compiled, index = original_compile(self, function, flags, dynamic), next(counter)

        def call(*args):
            calls[index] = (function, flags, args)
            return compiled(*args)
        return call

    per_tensor_calls = fused.per_tensor_calls
    fused.KernelCache._compile = recording_compile
    fused.per_tensor_calls = lambda device: False  # CUDA's structure: one call per bucket
    try:
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(CAPTURE_SIZE, generator=generator)) for _ in range(tensors)]
        optimizer = BENCH_CANDIDATES[candidate][0](params)
        for group in optimizer.param_groups:
            optimizer._kernel_cache(group).torch_kernel_devices = ()  # modes adam/constant compile on CUDA
        for step in range(steps):
            if step == steps - 1:
                calls.clear()
            for p in params:
                p.grad = torch.randn(CAPTURE_SIZE, generator=generator)
            optimizer.step()
    finally:
        fused.KernelCache._compile = original_compile
        fused.per_tensor_calls = per_tensor_calls
    return [calls[index] for index in sorted(calls)]


def measure(candidates: tuple[str, ...], tensors: int, tensor_size: int, code_dir: Path | None = None) -> dict:
    """Each candidate's graphs (kernel, launches, loads, stores, bytes per element) and their total."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from experiments import fake_cuda
    from experiments.bench_fused import CANDIDATES as BENCH_CANDIDATES
    from kalman_optim import fused

    captures = {name: captured_graphs(name, tensors) for name in candidates}  # on the CPU, before the patches
    fake_cuda.install()
    results = {}
    for name, graphs in captures.items():
        rows = []
        for function, flags, args in graphs:
            mode = FakeTensorMode()
            fake_args = [fake_cuda.fake_like(arg, {CAPTURE_SIZE: tensor_size}, mode) for arg in args]
            source = fake_cuda.triton_code(functools.partial(function, **flags), fake_args, fused.KERNEL_CONFIG)
            rows.append(dict(kernel=function.__name__, **graph_traffic(source, tensors)))
            if code_dir is not None:
                slug = re.sub(r"\W+", "_", name).strip("_").lower()
                atomic_write(code_dir / f"{slug}_{len(rows) - 1}_{function.__name__}.py", source)
        results[name] = dict(graphs=rows, bytes_per_element=sum(row["bytes_per_element"] for row in rows),
                             d6_bytes_per_element=BENCH_CANDIDATES[name][1])
    return results


def report_markdown(report: dict) -> str:
    config = report["config"]
    lines = ["# Bytes per element of the fused CUDA kernels, read off inductor's Triton code", "",
             f"Generated by `{report['provenance']['command']}` at commit {str(report['provenance']['git_commit'])[:12]}"
             f" (torch {report['provenance']['torch']}, triton {config['triton']}), on a CPU: code generated for a"
             f" fake H100, nothing run. {config['tensors']} tensors of {config['tensor_size']:.0e} fp32 elements in"
             " one bucket, as bench_fused times them on a GPU.", "",
             "| candidate | graphs: kernel (launches, loads, stores of whole tensors) | B per element | D6 B per element |",
             "|---|---|---|---|"]
    for name, result in report["results"].items():
        graphs = "; ".join(f"{g['kernel']} ({g['launches']}, {g['loads']}, {g['stores']})" for g in result["graphs"])
        lines.append(f"| {name} | {graphs} | {result['bytes_per_element']:.0f} | {result['d6_bytes_per_element']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.triton_bytes", description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--tensors", type=int, default=10)
    parser.add_argument("--tensor-size", type=float, default=1e7)
    parser.add_argument("--code-dir", type=Path, default=None, help="also write each graph's output code here")
    parser.add_argument("--out", type=Path, default=Path("results/bench/triton_bytes.json"))
    args = parser.parse_args(argv)
    import triton

    results = measure(tuple(args.candidates), args.tensors, int(args.tensor_size), args.code_dir)
    report = dict(config=dict(candidates=args.candidates, tensors=args.tensors, tensor_size=int(args.tensor_size),
                              triton=triton.__version__, device="fake H100 (code generation only)"),
                  provenance=provenance(torch.device("cpu"), argv, module="experiments.triton_bytes"),
                  results=results)
    atomic_write_json(args.out, report)
    atomic_write(args.out.with_suffix(".md"), report_markdown(report))
    print(report_markdown(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

"""E5's reading of the committed `make bench` reports: the step-time reports step_<device>.json (bench_reports)
and the fused-path report fused_<device>.json with its macros and table (fused_report, fused_numbers, fused_table).
The report directory is always passed in: experiments/e5_cost.py owns it (BENCH_DIR) and re-exports these."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from experiments.bench_fused import ratio_between, timing_result
from experiments.bench_step import format_size
from experiments.plotting import FigureOutput

#: bench_fused candidate -> key of its macros (issue 13: the fused path against compiled torch AdamW).
FUSED_VARIANTS = {
    "AdamW [fused]": "TorchFused", "KalmanAdam adam": "Adam", "KalmanAdam constant": "Constant",
    "KalmanAdam adam [torch kernel]": "AdamTorchKernel", "KalmanAdam constant [torch kernel]": "ConstantTorchKernel",
    "KalmanAdam adam+VA": "VarianceAdaptation", "KalmanAdam adaptive": "Adaptive",
    "KalmanAdam adam [no CUDA graphs]": "AdamNoGraphs", "KalmanAdam adam+VA [no CUDA graphs]": "VarianceAdaptationNoGraphs",
    "KalmanLAMB precision [one graph]": "LambPrecisionOneGraph", "KalmanLAMB precision [no CUDA graphs]": "LambPrecisionNoGraphs",
    "KalmanAdam adaptive, step 1k": "AdaptiveMidStartUp", "KalmanAdam adaptive, step > 10k": "AdaptiveAfterStartUp",
    "KalmanAdam innovation": "Innovation",
    "KalmanAdam innovation+VA": "InnovationVA", "KalmanAdam fitted": "Fitted", "KalmanAdam fitted+VA": "FittedVA",
    "KalmanAdam transport": "Transport", "KalmanAdam extrapolated": "Extrapolated", "KalmanLAMB": "Lamb",
    "KalmanLAMB precision": "LambPrecision", "KalmanLAMB precision innovation": "LambPrecisionInnovation",
    "KalmanLAMB precision, exact mean": "LambPrecisionExact",
    "KalmanLAMB precision innovation, exact mean": "LambPrecisionInnovationExact",
}

#: The precision-weighted LAMB candidates whose ratio to plain LAMB is a target (default previous mean, exact mean),
#: and the variants of the first measured beside it on a GPU (0654bb3: "[one graph]" is the default since).
PRECISION_WEIGHTED = ("KalmanLAMB precision", "KalmanLAMB precision, exact mean", "KalmanLAMB precision [one graph]",
                      "KalmanLAMB precision [no CUDA graphs]")


def fused_report(device: str, bench_dir: Path) -> dict | None:
    """The committed `make bench` report of the fused path (<bench_dir>/fused_<device>.json), None if absent.
    A file that is present but unreadable stops the build with its name."""
    path = Path(bench_dir) / f"fused_{device}.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        report["results"][-1]["candidates"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(
            f"{path}: unreadable fused-path benchmark ({error}); regenerate it with `make bench`") from error
    return report


def paired_ratio_quartiles(times: list[float], baseline: list[float]) -> tuple[float, float]:
    """Lower and upper quartile over the interleaved rounds of the per-round ratio times[i] / baseline[i]: how much a
    ratio of medians moves with the machine's load (both ran in every round, in a shuffled order)."""
    ratios = [t / b for t, b in zip(times, baseline, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    return quartiles[0], quartiles[2]


def fused_numbers(report: dict | None, device: str = "cpu", prefix: str | None = None) -> dict[str, float | int | str]:
    """Macros Fused<Device><Variant>{Compiled,Bandwidth,FirstStep} at the largest N of bench_fused: ratio to compiled
    torch AdamW, percent of the measured copy bandwidth, first (compiling) step in seconds; `prefix` names another
    run's macros (a second machine)."""
    if report is None:
        return {}
    result = report["results"][-1]
    prefix = prefix or f"Fused{device.capitalize()}"
    out: dict[str, float | int | str] = {
        f"{prefix}Size": int(result["size"]), f"{prefix}Tensors": int(result["tensors"]),
        f"{prefix}Bandwidth": round(result["bandwidth_bytes_per_s"] / 1e9, 1),
        f"{prefix}CopyBandwidth": round(result["copy_bandwidth_bytes_per_s"] / 1e9, 1),
        f"{prefix}Commit": short_commit(report),
        f"{prefix}Device": cpu_name(report),
        f"{prefix}Processes": int(report.get("config", {}).get("processes", 1)),
        f"{prefix}AdamWCompiledBandwidth": round(100 * result["candidates"]["AdamW [compiled]"]["bandwidth_fraction"]),
    }
    for name, key in FUSED_VARIANTS.items():
        entry = result["candidates"].get(name)
        if entry is not None:
            out[f"{prefix}{key}Compiled"] = round(entry["ratio_to_compiled_adamw"], 2)
            out[f"{prefix}{key}Bandwidth"] = round(100 * entry["bandwidth_fraction"])
            out[f"{prefix}{key}FirstStep"] = round(entry["first_step_s"], 1)
            out[f"{prefix}{key}Milliseconds"] = round(1e3 * entry["median_s"], 1)
    lamb = result["candidates"].get("KalmanLAMB")
    for name in PRECISION_WEIGHTED:
        entry = result["candidates"].get(name)
        if lamb and entry:
            key = f"{prefix}{FUSED_VARIANTS[name]}OverLamb"
            out[key] = round(ratio_between(result, name, "KalmanLAMB"), 2)
            low, high = paired_ratio_quartiles(entry["times_s"], lamb["times_s"])
            out[f"{key}Low"], out[f"{key}High"] = round(low, 2), round(high, 2)
    # The targets' ratios at the largest N with their 95% intervals (bench_fused.ratio_interval: a bootstrap over the
    # processes and their rounds), so the text can say whether a ratio is told apart from its bound.
    for row in report.get("targets", []):
        key = FUSED_VARIANTS.get(row["candidate"])
        if row["size"] != result["size"] or "interval" not in row or key is None:
            continue
        name = f"{prefix}{key}{'OverLamb' if row['versus'] == 'KalmanLAMB' else 'Compiled'}Interval"
        out[f"{name}Low"], out[f"{name}High"] = (round(value, 2) for value in row["interval"])
    # The same ratios at the smallest N, where they differ (the targets hold from 1e7 on, at every N measured).
    smallest = report["results"][0]
    candidates = smallest["candidates"]
    out[f"{prefix}SmallestSize"] = int(smallest["size"])
    for name in ("KalmanAdam adam", "KalmanLAMB", "KalmanAdam adaptive", "KalmanAdam adaptive, step 1k",
                 "KalmanAdam extrapolated", "KalmanAdam innovation"):
        if name in candidates:
            out[f"{prefix}{FUSED_VARIANTS[name]}CompiledAtSmallest"] = round(candidates[name]["ratio_to_compiled_adamw"], 2)
            out[f"{prefix}{FUSED_VARIANTS[name]}BandwidthAtSmallest"] = round(100 * candidates[name]["bandwidth_fraction"])
    for name in PRECISION_WEIGHTED:
        if name in candidates and "KalmanLAMB" in candidates:
            ratio = ratio_between(smallest, name, "KalmanLAMB")
            out[f"{prefix}{FUSED_VARIANTS[name]}OverLambAtSmallest"] = round(ratio, 2)
            out[f"{prefix}{FUSED_VARIANTS[name]}BandwidthAtSmallest"] = round(100 * candidates[name]["bandwidth_fraction"])
    # Issue 13's targets as words, from the printed (rounded) ratios: the adaptive mode within 1.1x its bytes ratio to
    # compiled AdamW, precision-weighted LAMB within 1.1x plain LAMB.
    adaptive, adamw = "KalmanAdam adaptive", "AdamW [compiled]"
    if adaptive in candidates and adaptive in result["candidates"]:
        bound = round(1.1 * result["candidates"][adaptive]["bytes_moved_per_element"]
                      / result["candidates"][adamw]["bytes_moved_per_element"], 2)
        out[f"{prefix}AdaptiveTargetBound"] = bound
        for key in (f"{prefix}Adaptive", f"{prefix}AdaptiveMidStartUp"):  # its first steps, and step 1000
            if f"{key}CompiledAtSmallest" in out and f"{key}Compiled" in out:
                out[f"{key}WithinTarget"] = within_phrase(out[f"{key}CompiledAtSmallest"] <= bound,
                                                          out[f"{key}Compiled"] <= bound)
    for name in PRECISION_WEIGHTED:
        key = f"{prefix}{FUSED_VARIANTS[name]}OverLamb"
        if key in out and f"{key}AtSmallest" in out:
            out[f"{prefix}{FUSED_VARIANTS[name]}WithinTarget"] = within_phrase(out[f"{key}AtSmallest"] <= 1.1,
                                                                              out[key] <= 1.1)
    return out


def ab_numbers(directory: Path, prefix: str) -> dict[str, float]:
    """Macros <prefix>{Before,After}{LambMilliseconds,LambPrecisionOverLamb}{Low,High} of an A/B directory of
    bench_fused reports named before*.json and after*.json (runs alternated on one machine): the range over its runs
    at the largest N of plain LAMB's step time (ms) and of precision-weighted LAMB over plain LAMB. A file that is
    present but unreadable stops the build with its name; no files, no macros."""
    out: dict[str, float] = {}
    for side in ("Before", "After"):
        lamb, ratio = [], []
        for path in sorted(Path(directory).glob(f"{side.lower()}*.json")):
            try:
                result = json.loads(path.read_text(encoding="utf-8"))["results"][-1]
                lamb.append(1e3 * result["candidates"]["KalmanLAMB"]["median_s"])
                ratio.append(ratio_between(result, "KalmanLAMB precision", "KalmanLAMB"))
            except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
                raise ValueError(f"{path}: unreadable A/B benchmark ({error})") from error
        if lamb:
            out[f"{prefix}{side}LambMillisecondsLow"], out[f"{prefix}{side}LambMillisecondsHigh"] = (
                round(min(lamb), 1), round(max(lamb), 1))
            out[f"{prefix}{side}LambPrecisionOverLambLow"], out[f"{prefix}{side}LambPrecisionOverLambHigh"] = (
                round(min(ratio), 2), round(max(ratio), 2))
    return out


def ab_step_times(directory: Path, prefix: str, candidates: tuple[str, ...]) -> dict[str, float]:
    """Macros <prefix>{Before,After}<Variant>Microseconds{Low,High} of an A/B directory laid out as `ab_numbers`
    reads it: the range over its runs of each candidate's median step time (us) at the largest N (host-time A/Bs,
    where the tensors are tiny), from bench_fused's reports or bench_cuda_host's (`_median_microseconds`). A file
    that is present but unreadable, or lacks a candidate, stops the build with its name; no files, no macros."""
    out: dict[str, float] = {}
    for side in ("Before", "After"):
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for path in sorted(Path(directory).glob(f"{side.lower()}*.json")):
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
                for name in candidates:
                    times[name].append(_median_microseconds(report, name))
            except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
                raise ValueError(f"{path}: unreadable A/B benchmark ({error})") from error
        for name, values in times.items():
            if values:
                key = f"{prefix}{side}{FUSED_VARIANTS[name]}Microseconds"
                out[f"{key}Low"], out[f"{key}High"] = round(min(values)), round(max(values))
    return out


def _median_microseconds(report: dict, name: str) -> float:
    """A candidate's median step time (us): bench_cuda_host's median over processes, or bench_fused's at its largest
    N."""
    if "summary" in report:
        return float(report["summary"][name]["median_us"])
    return 1e6 * report["results"][-1]["candidates"][name]["median_s"]


def triton_bytes_numbers(path: Path, prefix: str) -> dict[str, float | str]:
    """Macros <prefix><Variant> (bytes per element the fused CUDA kernels move, read off their Triton code by
    `make triton-bytes`), <prefix>Tensors, <prefix>TensorSize and <prefix>Commit from its report at `path`. A
    report that is present but unreadable stops the build with its name; no report, no macros."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        out: dict[str, float | str] = {f"{prefix}Tensors": int(report["config"]["tensors"]),
                                       f"{prefix}TensorSize": f"{int(report['config']['tensor_size']):,}",
                                       f"{prefix}Commit": short_commit(report)}
        for name, result in report["results"].items():
            out[f"{prefix}{FUSED_VARIANTS[name]}"] = round(float(result["bytes_per_element"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable Triton bytes report ({error}); rerun `make triton-bytes`") from error
    return out


def short_commit(report: dict) -> str:
    """The benchmark's git commit, abbreviated to 7 characters ("unknown" when not recorded)."""
    return str(report.get("provenance", {}).get("git_commit") or "unknown")[:7]


def cpu_name(report: dict) -> str:
    """The measured device as the paper names it ("(R)" marks dropped): benchmarks of one build may come from
    different machines, and their ratios differ between CPUs."""
    return str(report.get("provenance", {}).get("device_name") or "unknown").replace("(R)", "")


def within_phrase(smaller: bool, larger: bool) -> str:
    """Where a bound holds, of the two sizes measured, as the paper says it."""
    return {(True, True): "at both sizes", (True, False): "at the smaller size only",
            (False, True): "at the larger size only", (False, False): "at neither size"}[(smaller, larger)]


def fused_table(report: dict, out: FigureOutput) -> None:
    """Table e5_fused: every fused mode at the largest N against torch AdamW's implementations."""
    result = report["results"][-1]
    header = ["candidate", "state B/param", "B moved/elem", "x compiled AdamW", "x fastest AdamW", "% copy bandwidth",
              "first step (s)"]
    rows = [[name, f"{e['state_bytes_per_param']:.0f}", str(e["bytes_moved_per_element"]),
             f"{e['ratio_to_compiled_adamw']:.2f}", f"{e['ratio_to_fastest_adamw']:.2f}",
             f"{100 * e['bandwidth_fraction']:.0f}", f"{e['first_step_s']:.1f}"]
            for name, e in result["candidates"].items()]
    out.table("e5_fused", header, rows, caption=(
        "Fused path (make bench, results/bench/fused_cpu.json, "
        f"commit {str(report['provenance'].get('git_commit'))[:7]}): "
        f"N={format_size(result['size'])} fp32 parameters in {result['tensors']} tensors, "
        f"{report['provenance'].get('threads')} CPU threads, median of {result['rounds']} interleaved rounds; copy "
        f"bandwidth of the same tensors {result['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
        "(a copy's writes also read their lines, so a step can exceed it). Library rows use fused=True; the first "
        "step includes the compile (from an empty inductor cache)."))


def fused_cuda_numbers(report: dict | None, prefix: str = "FusedCuda",
                       timing: str = "synchronized") -> dict[str, float | int | str]:
    """Macros <prefix><Variant>{OverTorchFused,Bandwidth} of a GPU report (bench_fused --device cuda): each mode's
    step time over torch's fused AdamW (the issue's GPU baseline, same run) and its percent of the copy bandwidth; the
    precision-weighted LAMB variants over plain LAMB; the device, size, tensors, bandwidth and torch version. Another
    `prefix` names a second run of the same device (an A/B of a kernel option, a rerun after a change); `timing`
    picks the report's synchronized steps or its queued ones (bench_fused --queued-steps; none: no macros)."""
    if report is None:
        return {}
    result = timing_result(report, timing)
    if result is None:
        return {}
    baseline = result.get("baseline", "AdamW [fused]")
    out: dict[str, float | int | str] = {
        f"{prefix}Size": int(result["size"]), f"{prefix}Tensors": int(result["tensors"]),
        f"{prefix}TensorSize": int(result["tensor_size"]), f"{prefix}Rounds": int(result["rounds"]),
        f"{prefix}CopyBandwidth": round(result["copy_bandwidth_bytes_per_s"] / 1e12, 2),
        f"{prefix}Device": cpu_name(report), f"{prefix}Torch": str(report["provenance"].get("torch")),
        f"{prefix}Commit": short_commit(report),
    }
    for name, key in FUSED_VARIANTS.items():
        entry = result["candidates"].get(name)
        if entry is not None:
            out[f"{prefix}{key}OverTorchFused"] = round(ratio_between(result, name, baseline), 2)
            out[f"{prefix}{key}Bandwidth"] = round(100 * entry["bandwidth_fraction"])
    if timing == "queued":
        out[f"{prefix}StepsPerSample"] = int(result["steps_per_sample"])
    if "AdamW [compiled]" in result["candidates"]:
        out[f"{prefix}AdamWCompiledOverTorchFused"] = round(ratio_between(result, "AdamW [compiled]", baseline), 2)
        out[f"{prefix}AdamWCompiledBandwidth"] = round(100 * result["candidates"]["AdamW [compiled]"]["bandwidth_fraction"])
    for name in PRECISION_WEIGHTED:
        if name in result["candidates"] and "KalmanLAMB" in result["candidates"]:
            out[f"{prefix}{FUSED_VARIANTS[name]}OverLamb"] = round(ratio_between(result, name, "KalmanLAMB"), 2)
    return out


def fused_cuda_timings(report: dict | None, prefix: str = "FusedCuda") -> dict[str, float | int | str]:
    """`fused_cuda_numbers` of both timings of a GPU report: synchronized steps as <prefix>..., queued steps as
    <prefix>Queued... (none where the report has no queued timing)."""
    return {**fused_cuda_numbers(report, prefix=prefix),
            **fused_cuda_numbers(report, prefix=f"{prefix}Queued", timing="queued")}


#: A line of experiments/cuda_step_profile.py's output: name, host, wall and kernel milliseconds, kernels per step.
PROFILE_LINE = re.compile(r"^\s+(?P<name>\S.*?)\s+host\s+(?P<host>[\d.]+) ms\s+wall\s+(?P<wall>[\d.]+) ms\s+"
                          r"kernels\s+(?P<kernels>[\d.]+) ms in (?P<launches>\d+) per step$")


def cuda_profile_numbers(path: Path, prefix: str = "FusedCudaProfile") -> dict[str, float]:
    """Macros <prefix><Variant>{Host,Wall,Kernels} (milliseconds per step) from the committed output of
    experiments/cuda_step_profile.py (bench_cuda.sh's step profile); none if the file is absent (no GPU was lent). A
    file without a single profile line stops the build with its name."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PROFILE_LINE.match(line)
        if match and match["name"] in FUSED_VARIANTS:
            key = f"{prefix}{FUSED_VARIANTS[match['name']]}"
            out.update({f"{key}Host": float(match["host"]), f"{key}Wall": float(match["wall"]),
                        f"{key}Kernels": float(match["kernels"])})
    if not out:
        raise ValueError(f"{path}: no profile line of a known optimizer; regenerate it with experiments/bench_cuda.sh")
    return out


def overhead_report(bench_dir: Path) -> dict | None:
    """`make bench`'s host-time run of the fused path (<bench_dir>/fused_cpu_overhead.json: tiny tensors, where a step
    is all bookkeeping), read as `fused_report` reads the others."""
    return fused_report("cpu_overhead", bench_dir)


def overhead_numbers(report: dict | None) -> dict[str, float | int | str]:
    """Macros FusedCpuOverhead<Variant>OverTorchFused: a fused step's time over torch's fused AdamW's on tensors so
    small that both are host time (validation, state bookkeeping, kernel calls); FusedCpuOverheadTensors/TensorSize."""
    if report is None:
        return {}
    result = report["results"][-1]
    out: dict[str, float | int | str] = {"FusedCpuOverheadTensors": int(result["tensors"]),
                                         "FusedCpuOverheadTensorSize": int(result["tensor_size"]),
                                         "FusedCpuOverheadCommit": short_commit(report)}
    for name in ("KalmanAdam adam", "KalmanAdam constant", "KalmanAdam adam+VA", "AdamW [compiled]"):
        if name in result["candidates"]:
            key = FUSED_VARIANTS.get(name, "AdamWCompiled")
            out[f"FusedCpuOverhead{key}OverTorchFused"] = round(ratio_between(result, name, "AdamW [fused]"), 2)
    return out


def fused_cuda_table(report: dict, out: FigureOutput) -> None:
    """Table e5_fused_cuda: every fused mode on the GPU against torch's fused AdamW, synchronized steps and (where the
    report has them) steps queued back to back."""
    result, queued = timing_result(report), timing_result(report, "queued")
    baseline = result.get("baseline", "AdamW [fused]")
    timings = [("synchronized", result)] + ([("queued", queued)] if queued is not None else [])
    header = ["candidate", "B moved/elem"] + [column for label, _ in timings
                                               for column in (f"x torch fused ({label})", f"% copy ({label})")]
    header.append("first step (s)")
    rows = []
    for name, entry in result["candidates"].items():
        row = [name, str(entry["bytes_moved_per_element"])]
        for _, timed in timings:
            row += [f"{ratio_between(timed, name, baseline):.2f}", f"{100 * timed['candidates'][name]['bandwidth_fraction']:.0f}"]
        rows.append(row + [f"{entry['first_step_s']:.1f}"])
    queued_text = ("" if queued is None else
                   f"; queued: blocks of {queued['steps_per_sample']} steps issued back to back, synchronized at their ends "
                   f"(copy {queued['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s measured the same way)")
    out.table("e5_fused_cuda", header, rows, caption=(
        f"Fused path on a GPU ({cpu_name(report)}, torch {report['provenance'].get('torch')}; bench_fused --device cuda, "
        f"results/bench/fused_cuda.json): N={format_size(result['size'])} fp32 parameters in {result['tensors']} tensors "
        f"of {format_size(result['tensor_size'])}, median of {result['rounds']} interleaved rounds in one process; "
        "synchronized: wall time of one step alone, copy bandwidth of the same tensors "
        f"{result['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s{queued_text}. Library rows use fused=True; "
        "[no CUDA graphs]: the compiled kernels launched on every step, not replayed from a CUDA graph; "
        "[one graph]: precision-weighted LAMB's step as one compiled graph, where at this commit the default row "
        "ran it as two (the default since, two being slower)."))


def bench_reports(bench_dir: Path) -> dict[str, dict]:
    """The committed `make bench` reports present (<bench_dir>/step_<device>.json): device ('cpu', 'cuda') -> report."""
    bench_dir = Path(bench_dir)
    reports = {}
    for device in ("cpu", "cuda"):
        path = bench_dir / f"step_{device}.json"
        try:
            reports[device] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return reports


#: bench_models: E4 paper optimizer -> key of its macros; task -> key (the models of E4's paper profile).
MODEL_OPTIMIZERS = {"KalmanAdam-adaptive": "Adaptive", "KalmanAdam-innovation-VA": "InnovationVA",
                    "KalmanAdam-transport": "Transport", "KalmanAdam-extrapolated": "Extrapolated", "LAMB": "Lamb", "KalmanLAMB-innovation-PW": "LambInnovationPW"}
MODEL_TASKS = {"fashion_mnist": "Cnn", "fashion_mnist_resnet": "Resnet", "shakespeare": "Transformer"}


def models_report(bench_dir: Path) -> dict | None:
    """The committed report of experiments/bench_models.py (<bench_dir>/models_cpu.json), None if absent; a file that
    is present but unreadable stops the build with its name."""
    path = Path(bench_dir) / "models_cpu.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        for result in report["results"]:
            result["task"], result["candidates"], result["loop_speedup"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: unreadable model-step benchmark ({error}); regenerate it with `make bench`") from error
    return report


def models_numbers(report: dict | None) -> dict[str, float | int | str]:
    """Macros Models<Task><Optimizer>Ratio (default eager path over the fastest torch AdamW, per E4 model), the range
    of the Kalman modes' ratios over the models (ModelsKalmanRatioLow/High; plain LAMB excluded), and the largest
    speed-up of the default path over the per-tensor loop (ModelsLoopSpeedupMax)."""
    if report is None:
        return {}
    out: dict[str, float | int | str] = {"ModelsCommit": short_commit(report),
                                         "ModelsDevice": cpu_name(report)}
    kalman, speedups = [], []
    measured = [r for r in report["results"] if r["task"] in MODEL_TASKS]
    if measured:  # the models' layout: tensor counts and the largest tensor
        out["ModelsTensorsLow"] = min(int(r["tensors"]) for r in measured)
        out["ModelsTensorsHigh"] = max(int(r["tensors"]) for r in measured)
        out["ModelsLargestTensor"] = max(int(r["largest_tensor"]) for r in measured)
    for result in report["results"]:
        task = MODEL_TASKS.get(result["task"])
        if task is None:
            continue
        for name, key in MODEL_OPTIMIZERS.items():
            entry = result["candidates"].get(name)
            if entry is None:
                continue
            out[f"Models{task}{key}Ratio"] = round(entry["ratio"], 2)
            if name != "LAMB":
                kalman.append(entry["ratio"])
            if name in result["loop_speedup"]:
                speedups.append(result["loop_speedup"][name])
    if kalman:
        out["ModelsKalmanRatioLow"], out["ModelsKalmanRatioHigh"] = round(min(kalman), 1), round(max(kalman), 1)
    # The fused path (fused=True) on the same models: over the fastest eager AdamW, over compiled AdamW, its compile.
    fused, over_compiled, first_steps, compiled = [], [], [], []
    for result in measured:
        for name in MODEL_OPTIMIZERS:
            entry = result["candidates"].get(f"{name} [fused]")
            if entry is None or name == "LAMB":
                continue
            fused.append(entry["ratio"])
            over_compiled.append(result["fused_over_compiled_adamw"][name])
            first_steps.append(entry["first_step_s"])
        if "AdamW [compiled]" in result["candidates"]:
            compiled.append(result["candidates"]["AdamW [compiled]"]["ratio"])
    if fused:
        out["ModelsFusedKalmanRatioLow"], out["ModelsFusedKalmanRatioHigh"] = round(min(fused), 1), round(max(fused), 1)
        out["ModelsFusedOverCompiledLow"] = round(min(over_compiled), 1)
        out["ModelsFusedOverCompiledHigh"] = round(max(over_compiled), 1)
        out["ModelsFusedFirstStepLow"], out["ModelsFusedFirstStepHigh"] = (round(min(first_steps)),
                                                                          round(max(first_steps)))
    if compiled:
        out["ModelsCompiledAdamWRatioLow"], out["ModelsCompiledAdamWRatioHigh"] = (round(min(compiled), 2),
                                                                                  round(max(compiled), 2))
    if speedups:
        out["ModelsLoopSpeedupMax"] = round(max(speedups), 1)
    return out


def models_table(report: dict, out: FigureOutput) -> None:
    """Table e5_models: each E4 paper optimizer's step on each E4 model, default path and per-tensor loop."""
    results = [r for r in report["results"] if r["task"] in MODEL_TASKS]
    names = list(results[0]["candidates"])
    header = ["candidate"] + [f"{r['task'].replace('_', ' ')} ({r['tensors']} tensors)" for r in results]
    rows = [[name] + [f"{r['candidates'][name]['ratio']:.2f}x ({1e3 * r['candidates'][name]['median_s']:.2f} ms)"
                      for r in results] for name in names]
    out.table("e5_models", header, rows, caption=(
        "Step on E4's paper models (make bench, results/bench/models_cpu.json, "
        f"commit {str(report['provenance'].get('git_commit'))[:7]}): ratio of the median step to the fastest torch "
        f"AdamW's, {report['provenance'].get('threads')} CPU thread, {results[0]['rounds']} interleaved rounds; "
        "no suffix = the library's default eager path, [loop] = foreach=False (one tensor at a time), [fused] = "
        "fused=True (compiled; its first step, the compile, is not in the timing), AdamW [compiled] = torch.compile "
        "of torch AdamW's step."))

r"""E5: what a Kalman optimizer step costs -- step time and optimizer-state memory against parameter count.

The seed asks: what does it cost per step, and is the memory the same as an EWMA's? E5 answers with
measurements, as ratios to torch.optim.AdamW timed in the same run, for the default eager path
(foreach=None, fused=False; the fused path is `make bench`'s results/bench/fused_cpu.json) of every variant:

* KalmanAdam noise="adam" (AdamW exactly), "constant", "adaptive", and "adam" + variance adaptation;
* KalmanLAMB without (plain LAMB) and with precision weighting.

One run per parameter count N reuses the benchmark of experiments/bench_step.py (`make bench`): N fp32
parameters in tensors of 1e5 elements (layout "many": the layers of a network) with random gradients set
once; every candidate keeps its own state on the same tensors. Timing is interleaved: each round steps
every candidate once in a seeded shuffled order, after untimed warm-up rounds, so slow drift of the
machine falls on all candidates alike. Per candidate:

    ratio = median_rounds(t_candidate) / median_rounds(t_baseline),

the baseline being the fastest torch AdamW implementation at that N (loop, foreach, and fused on CUDA):
the strictest comparison. The interquartile range of the per-round paired ratios t_candidate/t_baseline
is kept as the spread, and the ratio to the AdamW torch picks by default (foreach=None) is recorded too.
State memory is the bytes of every tensor in optimizer.state except the scalar step, per parameter:
Adam's two moments are 8 B/param. D6 (derivations/d6_cost.py) gives the analytic counterpart -- state
bytes and bytes moved per element -- and, since every variant does < 1 flop per byte moved, predicts
time ratio ~ bytes-moved ratio when a step is memory-bound; the table sets the two side by side.

Timings are measurements of this machine, not deterministic: the seed fixes the tensors and the order.
Other load on the cores distorts them badly -- with torch's intra-op threads on every core, a step waits for
a descheduled thread -- so each run records the 1-minute load average before and after it.

figures() also draws the committed `make bench` results (results/bench/step_<device>.json) next to the
E5 runs, each panel naming its source.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from functools import lru_cache
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from experiments.bench_step import Candidate, bench_one, candidates, default_repeats, format_size
from experiments.e5_bench_report import (ab_numbers, ab_step_times, bench_reports, cpu_name, cuda_profile_numbers,
                                         fused_cuda_numbers, fused_cuda_table, fused_cuda_timings, fused_numbers,
                                         fused_report, fused_table, models_numbers, models_report, models_table,
                                         overhead_numbers, overhead_report, short_commit, triton_bytes_numbers)
from experiments.plotting import FigureOutput, style
from experiments.provenance import REPO_ROOT
from experiments.runner import RunSpec

# Re-exported though unused here: the fused path's macro keys are part of E5's interface.
from experiments.e5_bench_report import FUSED_VARIANTS, MODEL_OPTIMIZERS  # noqa: F401

NAME = "e5_cost"
TITLE = "Cost per step: step time and optimizer-state bytes vs parameter count, as ratios to torch AdamW"

PROFILES: dict[str, dict[str, Any]] = {
    # ~30 s on 2 CPU cores. 1e7 parameters (40 MB per tensor set) is past the CPU caches, where a step is
    # memory-bound; the smaller sizes show the per-tensor overhead.
    "smoke": dict(sizes=[1e4, 1e5, 1e6, 1e7], repeats=[60, 40, 20, 8], warmup=3, layout="many",
                  cpu_max_size=None, seeds=[0]),
    # bench_step's default rounds (repeats None); 1e8 only where the device holds it (skipped on CPU).
    "full": dict(sizes=[1e5, 1e6, 1e7, 3e7, 1e8], repeats=None, warmup=3, layout="many",
                 cpu_max_size=3e7, seeds=[0]),
}

# Bench candidate name -> (short variant name used in keys, label in figures and tables, D6 variant).
VARIANTS: dict[str, tuple[str, str, str]] = {
    "KalmanAdam adam": ("Adam", "KalmanAdam adam", "KalmanAdam adam"),
    "KalmanAdam constant": ("Constant", "KalmanAdam constant", "KalmanAdam constant"),
    "KalmanAdam adaptive": ("Adaptive", "KalmanAdam adaptive", "KalmanAdam adaptive"),
    "KalmanAdam adam+VA": ("VarianceAdaptation", "KalmanAdam adam + VA", "KalmanAdam adam + variance adaptation"),
    "KalmanLAMB": ("Lamb", "KalmanLAMB (plain LAMB)", "LAMB"),
    "KalmanLAMB precision": ("LambPrecision", "KalmanLAMB precision", "KalmanLAMB precision weighting"),
}
ADAMW_D6 = "AdamW"
# Where `make bench` writes step_<device>.json and fused_<device>.json; passed to e5_bench_report at each call, so
# that pointing this attribute elsewhere (as the tests do) redirects every read.
BENCH_DIR = REPO_ROOT / "results" / "bench"


# ------------------------------------------------------------------------------------------ candidates
def cost_candidates(device: torch.device) -> list[Candidate]:
    """bench_step's candidates restricted to torch AdamW (every implementation) and the library-default path."""
    return [c for c in candidates(device) if c.optimizer == "AdamW" or c.path == "default"]


def default_adamw_name(device: torch.device) -> str:
    """The AdamW implementation torch picks with foreach=None, fused=None: foreach on CUDA, the loop on CPU."""
    params = [torch.zeros(1, device=device)]
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach  # private, hence the fallback
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    except (ImportError, TypeError):
        foreach = device.type == "cuda"
    return "AdamW [foreach]" if foreach else "AdamW [loop]"


def memory_needed_bytes(size: int, n_candidates: int) -> int:
    """Rough peak: params + grads (2 tensors), 2 state tensors per candidate, 4 more for adaptive, 8 temporaries."""
    return 4 * size * (2 + 2 * n_candidates + 4 + 8)


def skip_reason(size: int, settings_cap: float | None, device: torch.device, n_candidates: int) -> str | None:
    """Why N parameters are not run on this device (None: run them)."""
    if device.type == "cpu" and settings_cap is not None and size > settings_cap:
        return f"N={format_size(size)} above cpu_max_size={format_size(int(settings_cap))}"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        need = memory_needed_bytes(size, n_candidates)
        if need > 0.9 * free:
            return f"N={format_size(size)} needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def load_average() -> float | None:
    """The 1-minute load average: other processes on the cores inflate step times (threads wait for each other)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not on Windows
        return None


# ------------------------------------------------------------------------------------------ plan / execute
def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """One run per (parameter count, seed); repeats per size from the profile or bench_step's defaults."""
    sizes = [int(s) for s in settings["sizes"]]
    repeats = settings.get("repeats") or [default_repeats(s) for s in sizes]
    if len(repeats) != len(sizes):
        raise ValueError(f"Invalid e5 settings: {len(sizes)} sizes but {len(repeats)} repeats")
    specs = []
    for size, rounds in zip(sizes, repeats):
        for seed in seeds:
            config = dict(size=size, repeats=int(rounds), warmup=int(settings["warmup"]), layout=settings["layout"],
                          cpu_max_size=settings.get("cpu_max_size"), seed=int(seed))
            specs.append(RunSpec(f"size={format_size(size)}_seed{seed}", config))
    return specs


def execute(config: dict, device: torch.device) -> dict:
    """Time the candidates at one size (bench_step.bench_one); ratios to the fastest and to the default AdamW."""
    cands = cost_candidates(device)
    size = int(config["size"])
    reason = skip_reason(size, config.get("cpu_max_size"), device, len(cands))
    if reason is not None:
        return {"metrics": dict(size=size, skipped=reason, device=device.type), "curves": {}}
    total_steps = (config["warmup"] + config["repeats"]) * len(cands)
    load_before = load_average()
    with tqdm(total=total_steps, desc=f"e5 N={format_size(size)}", unit="step", leave=False, mininterval=2.0) as bar:
        result = bench_one(size, config["layout"], cands, int(config["repeats"]), int(config["warmup"]), device,
                           int(config["seed"]), bar)
    load_after = load_average()
    default_adamw = default_adamw_name(device)
    default_median = result["candidates"][default_adamw]["median_s"]
    per_candidate = {}
    curves = {}
    for name, entry in result["candidates"].items():
        per_candidate[name] = dict(
            ratio=entry["ratio"], ratio_q25=entry["ratio_q25"], ratio_q75=entry["ratio_q75"],
            ratio_to_default_adamw=entry["median_s"] / default_median,
            median_s=entry["median_s"], iqr_s=entry["iqr_s"], state_bytes_per_param=entry["state_bytes_per_param"],
        )
        if "cuda_event_median_s" in entry:
            per_candidate[name]["cuda_event_median_s"] = entry["cuda_event_median_s"]
        curves[f"times_s/{name}"] = entry["times_s"]
    metrics = dict(
        size=size, device=device.type, threads=torch.get_num_threads(), layout=result["layout"],
        tensors=result["tensors"], rounds=result["rounds"], warmup=result["warmup"], baseline=result["baseline"],
        baseline_median_s=result["baseline_median_s"], default_adamw=default_adamw, candidates=per_candidate,
        load_average_before=load_before, load_average_after=load_after,
    )
    return {"metrics": metrics, "curves": curves}


# ------------------------------------------------------------------------------------------ analysis
@lru_cache(maxsize=1)
def analytic_costs() -> dict[str, dict]:
    """D6's cost table by variant name (state bytes/param, bytes moved/element ...); {} if it cannot be loaded.

    Importing the notebook re-derives it with sympy (~2 s) and prints; the print is swallowed.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from derivations.d6_cost import cost_table_oracle
            table = cost_table_oracle()
    except Exception:  # noqa: BLE001 - the figure should not die with a derivation: it just omits D6's column
        return {}
    return {row["variant"]: row for row in table}


def measured_runs(runs: list[dict]) -> list[dict]:
    return [r for r in runs if "skipped" not in r["metrics"]]


def series_from_runs(runs: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """candidate name -> size -> the candidate's entries (one per seed) from E5 results."""
    out: dict[str, dict[int, list[dict]]] = {}
    for run in measured_runs(runs):
        for name, entry in run["metrics"]["candidates"].items():
            out.setdefault(name, {}).setdefault(int(run["metrics"]["size"]), []).append(entry)
    return out


def series_from_bench(report: dict) -> dict[str, dict[int, list[dict]]]:
    """The same structure from a `make bench` report (layout 'many' only, the layout E5 uses)."""
    out: dict[str, dict[int, list[dict]]] = {}
    for result in report["results"]:
        if result["layout"] != "many":
            continue
        for name, entry in result["candidates"].items():
            out.setdefault(name, {}).setdefault(int(result["size"]), []).append(entry)
    return out


def median_of(entries: list[dict], key: str) -> float:
    return float(np.median([e[key] for e in entries]))


def sources(runs: list[dict], profile: str) -> list[dict]:
    """Every data source to draw: E5 runs per device, then each `make bench` report. Each has a title and series."""
    out = []
    devices = sorted({r["metrics"].get("device", "cpu") for r in measured_runs(runs)})
    for device in devices:
        own = [r for r in measured_runs(runs) if r["metrics"].get("device", "cpu") == device]
        prov = own[0].get("provenance", {})
        threads = prov.get("threads", own[0]["metrics"].get("threads"))
        out.append(dict(
            key=f"e5_{device}", title=f"source: E5 {profile} run ({device})\n{prov.get('device_name', device)}\n{_threads(threads)}",
            short=f"E5 {profile} {device}", series=series_from_runs(own),
        ))
    for device, report in bench_reports(BENCH_DIR).items():
        prov = report.get("provenance", {})
        commit = (prov.get("git_commit") or "unknown")[:7]
        out.append(dict(
            key=f"bench_{device}",
            title=f"source: make bench ({device}), results/bench/step_{device}.json\n"
                  f"{prov.get('device_name', device)}\n{_threads(prov.get('threads', '?'))}, commit {commit}",
            short=f"bench {device}", series=series_from_bench(report),
        ))
    return out


def _threads(count: Any) -> str:
    return "1 thread" if count == 1 else f"{count} threads"


def largest_ratio(series: dict[str, dict[int, list[dict]]], name: str) -> tuple[int, float, float, float] | None:
    """(N, ratio, q25, q75) of a candidate at the largest N it was measured at (median over seeds)."""
    if name not in series or not series[name]:
        return None
    size = max(series[name])
    entries = series[name][size]
    return size, median_of(entries, "ratio"), median_of(entries, "ratio_q25"), median_of(entries, "ratio_q75")


# ------------------------------------------------------------------------------------------ figures
def _log_ratio_axis(ax: plt.Axes, top: float) -> None:
    """Log y axis for ratios with plain tick labels (0.8, 1, 2, 4 ...) instead of 10^x."""
    ax.set_yscale("log")
    ax.set_ylim(0.7, top)
    ticks = [t for t in (0.8, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32) if t <= top]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(plt.NullFormatter())


def figures(runs: list[dict], out: FigureOutput) -> None:
    """e5_cost: step-time ratio to the fastest AdamW vs N per source, plus state bytes per parameter; table e5_cost."""
    drawn = sources(runs, out.profile)
    d6 = analytic_costs()
    names = ["AdamW [default]"] + list(VARIANTS)
    fig, axes = plt.subplots(1, len(drawn) + 1, figsize=(3.3 * (len(drawn) + 1) + 0.4, 3.9), squeeze=False,
                             width_ratios=[1.0] * len(drawn) + [1.1])
    axes = axes[0]
    # One y range for every timing panel, so the sources compare at a glance (medians set it; IQRs may clip).
    top = max([1.0] + [median_of(e, "ratio") for s in drawn for n in VARIANTS
                       for e in s["series"].get(n, {}).values()]) * 1.6
    for ax, source in zip(axes, drawn):
        series = source["series"]
        for i, name in enumerate(VARIANTS):
            if name not in series:
                continue
            sizes = sorted(series[name])
            ratio = [median_of(series[name][s], "ratio") for s in sizes]
            low = [median_of(series[name][s], "ratio_q25") for s in sizes]
            high = [median_of(series[name][s], "ratio_q75") for s in sizes]
            ax.plot(sizes, ratio, label=VARIANTS[name][1], **style(i + 1))
            ax.fill_between(sizes, low, high, color=style(i + 1)["color"], alpha=0.12, linewidth=0)
        ax.axhline(1.0, color="black", linewidth=0.8, label="fastest torch AdamW (= 1)")
        ax.set_xscale("log")
        _log_ratio_axis(ax, top)
        ax.set_xlabel("parameters N (fp32 elements)")
        ax.set_ylabel("step time / fastest AdamW step time")
        ax.set_title(source["title"], fontsize=8)
    if drawn:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4)
    else:
        axes[0].text(0.5, 0.5, "no measured runs", ha="center", transform=axes[0].transAxes)

    # State bytes per parameter: measured (first source: the E5 runs) and D6's analytic count.
    ax = axes[-1]
    measured = state_bytes(drawn)
    labels = ["torch AdamW"] + [VARIANTS[n][1] for n in VARIANTS]
    keys = [ADAMW_D6] + [VARIANTS[n][2] for n in VARIANTS]
    measured_values = [measured.get(n, math.nan) for n in names]
    analytic_values = [d6.get(k, {}).get("state_bytes_per_parameter", math.nan) for k in keys]
    x = np.arange(len(labels))
    bars = ax.bar(x - 0.2, measured_values, width=0.4, color="#444444", label="measured (optimizer.state)")
    ax.bar(x + 0.2, analytic_values, width=0.4, color="white", edgecolor="black", hatch="//", label="D6 analytic")
    ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("optimizer state (bytes per parameter)")
    ax.set_ylim(0, max([8.0] + [v for v in measured_values + analytic_values if v == v]) * 1.45)
    source_name = drawn[0]["short"] if drawn else "none"
    ax.set_title(f"state memory, fp32, step excluded\n(measured: {source_name})", fontsize=8)
    ax.legend(loc="upper right")
    fig.suptitle(f"E5: optimizer step cost relative to torch AdamW ({out.profile} profile; "
                 "eager path, foreach=None, fused=False; shaded: IQR of per-round ratios)")
    out.save(fig, "e5_cost")

    header = ["variant", "state B/param", "D6 state B/param", "D6 bytes moved ×AdamW"]
    header += [f"time ×AdamW, {s['short']} (N={format_size(max_size(s['series']))})" for s in drawn]
    rows = []
    for name, key, label in zip(names, keys, labels):
        d6_row = d6.get(key, {})
        row = [label, _fmt(measured.get(name, math.nan), "{:.0f}"), _fmt(d6_row.get("state_bytes_per_parameter"), "{:.0f}"),
               _fmt(d6_row.get("bytes_relative_to_adamw"), "{:.2f}")]
        for source in drawn:
            found = None if name == "AdamW [default]" else largest_ratio(source["series"], name)
            if found is None:
                row.append("1 (baseline)" if name == "AdamW [default]" else "n/a")
            else:
                _, ratio, q25, q75 = found
                row.append(f"{ratio:.2f} [{q25:.2f}, {q75:.2f}]")
        rows.append(row)
    report = fused_report("cpu", BENCH_DIR)
    if report is not None:
        fused_table(report, out)
    report = fused_report("cuda", BENCH_DIR)
    if report is not None:
        fused_cuda_table(report, out)
    models = models_report(BENCH_DIR)
    if models is not None:
        models_table(models, out)
    out.table("e5_cost", header, rows, caption=(
        f"E5 ({out.profile} profile): optimizer-state bytes per parameter and median step time relative to the fastest "
        "torch AdamW at the largest N measured [IQR of per-round ratios]. D6 bytes moved ×AdamW is the time ratio a "
        "memory-bound step would show."))


def max_size(series: dict[str, dict[int, list[dict]]]) -> int:
    return max((s for per_size in series.values() for s in per_size), default=0)


def state_bytes(drawn: list[dict]) -> dict[str, float]:
    """Measured state bytes per parameter by candidate (from the first source); 'AdamW [default]' is any AdamW."""
    if not drawn:
        return {}
    series = drawn[0]["series"]
    out = {name: median_of(per_size[max(per_size)], "state_bytes_per_param") for name, per_size in series.items()}
    adamw = [v for n, v in out.items() if n.startswith("AdamW")]
    if adamw:
        out["AdamW [default]"] = adamw[0]
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or value != value else spec.format(value)


# ------------------------------------------------------------------------------------------ numbers
def numbers(runs: list[dict]) -> dict[str, float | int | str]:
    """Per variant: median step-time ratio to the fastest AdamW at the largest measured N; state bytes/param."""
    measured = measured_runs(runs)
    if not measured:
        return {}
    series = series_from_runs(measured)
    out: dict[str, float | int | str] = {"LargestSize": max_size(series)}
    for name, (key, _, _) in VARIANTS.items():
        found = largest_ratio(series, name)
        if found is not None:
            out[f"{key}Ratio"] = round(found[1], 3)
    largest = {name: per_size[max(per_size)] for name, per_size in series.items()}
    if "KalmanAdam adam" in largest:
        out["StateBytesAdam"] = median_of(largest["KalmanAdam adam"], "state_bytes_per_param")
    if "KalmanAdam adaptive" in largest:
        out["StateBytesAdaptive"] = median_of(largest["KalmanAdam adaptive"], "state_bytes_per_param")
    adamw = [n for n in largest if n.startswith("AdamW")]
    if adamw:
        out["StateBytesAdamW"] = median_of(largest[adamw[0]], "state_bytes_per_param")
    out.update(bench_numbers(bench_reports(BENCH_DIR)))
    out.update(fused_numbers(fused_report("cpu", BENCH_DIR)))
    # The same benchmark on the first two-core machine (dd12720: the ratios move between machines), and on this kind of
    # machine before LAMB's deferred update (dbca612).
    out.update(fused_numbers(fused_report("cpu_first_machine", BENCH_DIR), prefix="FusedCpuFirstMachine"))
    out.update(fused_numbers(fused_report("cpu_before_deferred_update", BENCH_DIR), prefix="FusedCpuBefore"))
    out.update(ab_numbers(BENCH_DIR / "fused_cpu_ab_deferred", prefix="FusedCpuAbDeferred"))
    # Bytes per element of the fused CUDA kernels read off their Triton code: at HEAD and at the commit the GPU timed.
    out.update(triton_bytes_numbers(BENCH_DIR / "triton_bytes.json", "TritonBytes"))
    out.update(triton_bytes_numbers(BENCH_DIR / "triton_bytes_gpu_commit.json", "TritonBytesGpuCommit"))
    # Host time of mode "fitted" before and after its table read-outs were made cheap (tiny tensors: all host time).
    out.update(ab_step_times(BENCH_DIR / "fused_cpu_ab_fitted_host", "FusedCpuAbFittedHost",
                             ("AdamW [fused]", "KalmanAdam innovation", "KalmanAdam fitted", "KalmanAdam fitted+VA")))
    # Host time of the CUDA code path (bench_cuda_host: CUDA's structure on the CPU, graphs that launch nothing) before
    # and after the eighteenth session's cuts to the per-step bookkeeping.
    out.update(ab_step_times(BENCH_DIR / "cuda_host_ab", "CudaHostAb",
                             ("AdamW [fused]", "KalmanAdam adam", "KalmanAdam adam+VA", "KalmanAdam adaptive",
                              "KalmanAdam innovation", "KalmanAdam fitted", "KalmanLAMB precision")))
    # GPU runs, each in both timings: the fourth session's (CUDA graphs), the third session's (bab9a84, no CUDA graphs;
    # torch's Adam kernel beside the compiled one), the A/B of inductor's aggressive_fusion on the LAMB graphs, and the
    # A/B of its store-or-recompute thresholds (forced recompute, then the defaults).
    for name, prefix in (("cuda", "FusedCuda"), ("cuda_previous", "FusedCudaPrevious"),
                         ("cuda_ab_aggressive_fusion", "FusedCudaAggressive"), ("cuda_ab_recompute", "FusedCudaRecompute"),
                         ("cuda_ab_default", "FusedCudaRecomputeOff")):
        out.update(fused_cuda_timings(fused_report(name, BENCH_DIR), prefix))
    out.update(cuda_profile_numbers(BENCH_DIR / "cuda_step_profile.log"))
    out.update(cuda_profile_numbers(BENCH_DIR / "cuda_step_profile_previous.log", prefix="FusedCudaPreviousProfile"))
    # The GPU session's second runs: the compiled modes with inductor's combo kernels off, and the pinned-copy rerun.
    out.update(fused_cuda_numbers(fused_report("cuda_no_combo", BENCH_DIR), prefix="FusedCudaNoCombo"))
    out.update(fused_cuda_numbers(fused_report("cuda_pinned", BENCH_DIR), prefix="FusedCudaPinned"))
    out.update(overhead_numbers(overhead_report(BENCH_DIR)))
    out.update(models_numbers(models_report(BENCH_DIR)))
    return out


def bench_numbers(reports: dict[str, dict]) -> dict[str, float | int | str]:
    """The same ratios from the committed `make bench` reports (results/bench/step_<device>.json), which are
    measured with more rounds on an otherwise idle machine: keys Bench<Device><Variant>Ratio, and their commit."""
    out: dict[str, float | int | str] = {}
    for device, report in reports.items():
        series = series_from_bench(report)
        prefix = f"Bench{device.capitalize()}"
        out[f"{prefix}LargestSize"] = max_size(series)
        out[f"{prefix}Commit"] = short_commit(report)
        out[f"{prefix}Device"] = cpu_name(report)
        for name, (key, _, _) in VARIANTS.items():
            found = largest_ratio(series, name)
            if found is not None:
                out[f"{prefix}{key}Ratio"] = round(found[1], 3)
    return out

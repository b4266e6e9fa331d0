"""Command line of the experiments.

    python -m experiments list
    python -m experiments run NAME|all [--profile smoke|paper|full] [--seeds 0 1 2] [--device auto|cpu|cuda] [--force]
        [--shard K/N | --jobs N]
    python -m experiments figures [--profile smoke|paper|full] [--prefer-full] [--readme README.md]

`run` writes results/<profile>/<experiment>/<run_id>.json (skipping completed runs); `figures` turns the
results into paper/figures/*.pdf|png, paper/generated/*.tex tables and paper/generated/numbers.tex macros.
With --prefer-full, an experiment whose full-profile (else paper-profile) results are all present is drawn from those.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from experiments import readme_numbers, registry
from experiments.plotting import FigureOutput, format_number, macro_name
from experiments.provenance import REPO_ROOT, atomic_write
from experiments.runner import PROFILES, RESULTS_ROOT, complete, run_experiment, scan_results


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser("run", help="run one experiment (or all), skipping completed runs")
    run.add_argument("name", help="experiment name, its prefix e0..e7, or 'all'")
    run.add_argument("--profile", choices=PROFILES, default="smoke")
    run.add_argument("--seeds", type=int, nargs="+", default=None, help="override the profile's seeds")
    run.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    run.add_argument("--force", action="store_true", help="rerun completed runs")
    run.add_argument("--root", type=Path, default=RESULTS_ROOT, help="results folder (default: results/)")
    run.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                     help="run only the runs of shard K of N (start N processes, then one call without --shard)")
    run.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="run the shards 0/N..N-1/N as N processes of one thread each, again while a pass completes "
                          "runs (a stage unlocked by another shard's results), then what is left in this process")
    man = sub.add_parser("manifest", help="write results/<profile>/.manifest (a hash per result file) when it changed")
    man.add_argument("--profile", choices=PROFILES, default="smoke")
    man.add_argument("--root", type=Path, default=RESULTS_ROOT)
    fig = sub.add_parser("figures", help="figures, tables and number macros from the results")
    fig.add_argument("--profile", choices=PROFILES, default="smoke")
    fig.add_argument("--prefer-full", action="store_true",
                     help="use results/full/, else results/paper/, for every experiment whose results there are complete")
    fig.add_argument("--root", type=Path, default=RESULTS_ROOT)
    fig.add_argument("--figure-dir", type=Path, default=REPO_ROOT / "paper" / "figures")
    fig.add_argument("--table-dir", type=Path, default=REPO_ROOT / "paper" / "generated")
    fig.add_argument("--readme", type=Path, default=None,
                     help="also rewrite the numbers tagged <!--n:Name-->...<!--/n--> in this file (make figures: README.md)")
    fig.add_argument("--allow-incomplete", action="store_true",
                     help="draw what exists and skip experiments with missing, corrupt or stale results "
                          "(for development; the paper's build never uses it)")
    return parser.parse_args(argv)


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, e.g. 0/2, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"expected 0 <= K < N, got {text!r}")
    return k, n


def names_for(name: str) -> list[str]:
    return registry.available() if name == "all" else [registry.load(name).NAME]


def cmd_list() -> None:
    for name in registry.EXPERIMENT_MODULES:
        try:
            module = registry.load(name)
        except ImportError as error:  # a missing data set or dependency should not hide the others
            print(f"{name:22s} (cannot import: {error})")
            continue
        print(f"{name:22s} {module.TITLE}  [profiles: {', '.join(module.PROFILES)}]")


def result_stamps(folder: Path) -> dict[Path, int]:
    """Modification time of every result file in `folder` (empty if there is none)."""
    return {p: p.stat().st_mtime_ns for p in folder.glob("*.json")} if folder.is_dir() else {}


def run_in_shards(name: str, args: argparse.Namespace) -> None:
    """Passes of `args.jobs` shard processes (one thread each) until a pass writes no result file: a staged plan
    (E4's tuning) plans its next stage in the pass after the one that completed the last."""
    folder = args.root / args.profile / name
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for attempt in itertools.count(1):
        before = result_stamps(folder)
        command = [sys.executable, "-m", "experiments", "run", name, "--profile", args.profile, "--device", args.device,
                   "--root", str(args.root)] + (["--seeds", *map(str, args.seeds)] if args.seeds else [])
        children = [subprocess.Popen(command + ["--shard", f"{k}/{args.jobs}"], env=env) for k in range(args.jobs)]
        failed = [child.args[-1] for child in children if child.wait() != 0]
        if failed:
            raise SystemExit(f"error: {name} shard(s) {', '.join(failed)} failed (pass {attempt}); rerun to resume")
        if result_stamps(folder) == before:
            return


def cmd_run(args: argparse.Namespace) -> None:
    if args.jobs < 1 or (args.jobs > 1 and (args.shard is not None or args.force)):
        raise SystemExit(f"error: --jobs {args.jobs}: expected N >= 1, and not with --shard or --force")
    for name in names_for(args.name):
        module = registry.load(name)
        start = time.perf_counter()
        if args.jobs > 1:
            run_in_shards(name, args)
        runs = run_experiment(module, args.profile, seeds=args.seeds, device=args.device, force=args.force,
                              root=args.root, shard=args.shard)
        print(f"{name}: {len(runs)} runs complete in {args.root / args.profile / name}/ "
              f"({time.perf_counter() - start:.1f} s this call)", flush=True)


def cmd_figures(args: argparse.Namespace) -> None:
    if not (args.root / args.profile).is_dir():
        raise SystemExit(f"error: no {args.profile} results under {args.root} (no folder {args.root / args.profile}); "
                         f"run: python -m experiments run all --profile {args.profile} --root {args.root}")
    macros: list[str] = ["% generated by `python -m experiments figures`; do not edit"]
    used: list[tuple[str, str, int, float]] = []  # (experiment, profile, runs, hours) for the reproducibility note
    values: dict[str, str] = {}  # macro name -> value, for the README's tagged numbers
    modules, problems = [], []
    for name in registry.available():
        module = registry.load(name)
        profile = args.profile
        if args.prefer_full:  # the largest scale whose results are all present: full, then paper (issue 14)
            for candidate in ("full", "paper"):
                if candidate != args.profile and candidate in module.PROFILES and complete(module, candidate, args.root):
                    profile = candidate
                    break
        runs, found = scan_results(module, profile, args.root)
        if found and not args.allow_incomplete:
            command = f"python -m experiments run {name} --profile {profile} --root {args.root}"
            problems += [f"  {line}\n    regenerate with: {command}" for line in found]
        modules.append((name, module, profile, runs))
    if problems:
        # Nothing is written: a paper built from a silently smaller set of results would change its numbers.
        raise SystemExit("error: results are missing, corrupt or stale; nothing was written:\n" + "\n".join(problems))
    for name, module, profile, runs in modules:
        if not runs:
            print(f"{name}: no {profile} results; skipped (run: python -m experiments run {name} --profile {profile})")
            continue
        out = FigureOutput(profile=profile, figure_dir=args.figure_dir, table_dir=args.table_dir)
        if hasattr(module, "figures"):
            module.figures(runs, out)
        macros.append(f"\\newcommand{{\\{macro_name(name.split('_')[0], 'Profile')}}}{{{profile}}}")
        if hasattr(module, "numbers"):
            for key, value in module.numbers(runs).items():
                macro = macro_name(name.split('_')[0], key)
                values[macro] = format_number(value)
                macros.append(f"\\newcommand{{\\{macro}}}{{{values[macro]}}}")
        # Compute: the sum of the runs' own wall times (processes that shared the cores each count their own time).
        hours = sum(float(r.get("wall_time_s", 0.0)) for r in runs) / 3600
        macros.append(f"\\newcommand{{\\{macro_name(name.split('_')[0], 'RunHours')}}}{{{hours:.1f}}}")
        used.append((name, profile, len(runs), hours))
        print(f"{name}: figures from {len(runs)} {profile} runs")
    # The paper profile's compute (issue 14's budget: about 2.5 h on the 2-core CPU), as profile_summary states it.
    paper_hours = paper_profile_hours(used)
    if paper_hours:
        for key, value in (("PaperProfileRunHours", paper_hours), ("PaperProfileTwoCoreHours", paper_hours / 2)):
            values[macro_name(key)] = f"{value:.2f}"
            macros.append(f"\\newcommand{{\\{macro_name(key)}}}{{{value:.2f}}}")
    if args.readme is not None:  # checked before anything is written: a stale tag stops the build
        try:
            readme_text, changed = readme_numbers.sync(args.readme.read_text(encoding="utf-8"), values)
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: {args.readme}: {error}; nothing was written") from error
    atomic_write(args.table_dir / "numbers.tex", "\n".join(macros) + "\n")
    atomic_write(args.table_dir / "profile_summary.tex", profile_summary(used))
    if args.readme is not None and changed:
        atomic_write(args.readme, readme_text)
        print(f"{args.readme}: {len(changed)} number(s) updated: {', '.join(changed)}")


def cmd_manifest(args: argparse.Namespace) -> None:
    """One line per result file, "<sha256>  <path>", sorted; the file is rewritten only when its content changes,
    so that make reruns the figures exactly when a result was added, removed or changed."""
    folder = args.root / args.profile
    lines = [f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(folder)}"
             for path in sorted(folder.glob("*/*.json"))]
    text = "\n".join(lines) + "\n"
    target = folder / ".manifest"
    if not target.exists() or target.read_text() != text:
        atomic_write(target, text)
        print(f"{target}: {len(lines)} result files")


def paper_profile_hours(used: list[tuple[str, str, int, float]]) -> float:
    """Summed run time (hours) of the experiments drawn from the paper profile."""
    return sum(hours for _, profile, _, hours in used if profile == "paper")


def profile_summary(used: list[tuple[str, str, int, float]]) -> str:
    """One LaTeX sentence naming the profile, run count and run time (hours, summed over runs) of each experiment."""
    if not used:
        return "no experiment results were available when this paper was built.\n"
    parts = [f"\\texttt{{{name.split('_')[0].upper()}}} {profile} ({runs} runs, {hours:.1f} h)"
             for name, profile, runs, hours in used]
    paper = paper_profile_hours(used)
    total = (f" The paper profile's runs took {paper:.2f} h of run time in all, {paper / 2:.2f} h on two cores "
             f"(its runs are independent one-thread processes).") if paper else ""
    return "% generated by `python -m experiments figures`; do not edit\n" + "; ".join(parts) + "." + total + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        cmd_list()
    elif args.command == "run":
        cmd_run(args)
    elif args.command == "manifest":
        cmd_manifest(args)
    else:
        cmd_figures(args)


if __name__ == "__main__":
    main()

r"""E7's sensitivity to the one constant of the calibrated read-outs: the prior count N_0 of the pooled ratio phi.

Modes "innovation" and "fitted" read phi = r / R per tensor from the pooled lag-1 statistic of a sample of its
coordinates and pull it to 1 (the filter's own model) with N_0 = `noise_models.innovation.PRIOR_COUNT`
pseudo-samples against its effective count N = n_eff(steps) x (sampled coordinates) (D7):
phi = (N phi_measured + N_0) / (N + N_0). One N_0 serves two opposite cases:
- a tensor of ONE coordinate (the issue series) has N ~ t: its measured phi is noise, and a large N_0 keeps it at
  the filter's model (right there by construction);
- a tensor of thousands of coordinates whose true ratio is far from the filter's (E7's 10x and 100x cases) has
  N ~ 2000 t: a large N_0 holds phi at 1 for the first tens of steps, where it is wrong.
This run measures both at each N_0 of `prior_counts`, with the library's constant patched for the duration only
(`prior_count`): the issue series' share of `seed_count` seeds within the factor from `from_step` on (as E7's
issue run), and the worst seed-averaged 95% coverage over steps 2..`steps` (and 10..`steps`) of long runs of
`series` coordinates in `cases` (E7's long runs, shortened: phi's prior weight is below 1% after ~300 steps).

The alternative family `prior_coordinates`: C pseudo-coordinates at phi = 1 observed alongside the sample
(innovation.PRIOR_COORDINATES), a prior weight C / (C + n) that does not decay with time, so a one-coordinate tensor
keeps the filter's model while a tensor of 2000 coordinates is pulled by a fixed C / 2000. For scale, the issue run
also records what a read-out that estimates the ratio itself can reach on one coordinate (e7_oracles).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from kalman_optim.noise_models import innovation

#: Prior counts -> their names in macros (letters only).
COUNT_NAMES = {100: "OneHundred", 300: "ThreeHundred", 1000: "OneThousand", 3000: "ThreeThousand",
               10000: "TenThousand", 30000: "ThirtyThousand", 100000: "OneHundredThousand", 30: "Thirty",
               50: "Fifty", 150: "OneHundredFifty"}
#: The ratio-unknown oracles (e7_oracles) -> their names in macros.
ORACLE_NAMES = {"maximum likelihood": "Likelihood", "posterior mean": "PosteriorMean"}


@contextlib.contextmanager
def prior_count(count: float, coordinates: float = 0.0) -> Iterator[None]:
    """innovation.PRIOR_COUNT and PRIOR_COORDINATES set inside the block (the eager read-outs read them at call time)."""
    saved = innovation.PRIOR_COUNT, innovation.PRIOR_COORDINATES
    innovation.PRIOR_COUNT, innovation.PRIOR_COORDINATES = float(count), float(coordinates)
    try:
        yield
    finally:
        innovation.PRIOR_COUNT, innovation.PRIOR_COORDINATES = saved


def settings(sweep: dict) -> list[tuple[str, float, float]]:
    """(key, N_0, C) per prior of the sweep: the counts alone, then the pseudo-coordinate priors C with N_0 = 1 (one
    pseudo-sample, so phi = 1 before the lag statistic has data)."""
    return ([(f"{float(n):g}", float(n), 0.0) for n in sweep["prior_counts"]]
            + [(f"{float(c):g}c", 1.0, float(c)) for c in sweep.get("prior_coordinates", [])])


def measure(config: dict, device: torch.device, issue_series, long_run, cases: dict) -> dict:
    """Per prior count: the issue-series share within the factor and the worst early coverage per case and mode
    (`issue_series`, `long_run`, `cases`: E7's own measurement functions and case table)."""
    sweep = config["prior"]
    modes = list(sweep["modes"])
    issue = {k: config[k] for k in ("beta1", "beta2", "noise_beta")}
    issue.update(config["issue"], modes=modes, seed_count=int(sweep["seed_count"]), case="issue", seed=0)
    base = {k: v for k, v in config.items() if k not in ("prior", "issue", "case", "seed")}
    base.update(modes=modes, steps=int(sweep["steps"]), series=int(sweep["series"]))
    metrics: dict[str, Any] = dict(case="prior", prior_counts=[float(c) for c in sweep["prior_counts"]],
                                   prior_coordinates=[float(c) for c in sweep.get("prior_coordinates", [])])
    for key, count, coordinates in settings(sweep):
        with prior_count(count, coordinates):
            within = issue_series(issue, device)["metrics"]
            row: dict[str, Any] = {mode: dict(issue_fraction_within=within[mode]["fraction_within"],
                                              worst_from_two={}, worst_from_ten={}) for mode in modes}
            for case in sweep["cases"]:
                multiple, trend = cases[case]
                runs = [long_run(dict(base, case=case, ratio_multiple=multiple, trend=trend, seed=int(seed)), device)
                        for seed in sweep["seeds"]]
                steps = np.array(runs[0]["curves"]["step"])
                for mode in modes:
                    curve = np.mean([r["curves"][mode]["coverage"]["0.95"] for r in runs], axis=0)
                    row[mode]["worst_from_two"][case] = float(curve.min())
                    row[mode]["worst_from_ten"][case] = float(curve[steps >= 10].min())
        metrics[key] = row
    metrics["oracle_fraction_within"] = within["oracle"]["fraction_within"]
    metrics["ratio_oracle_fraction_within"] = {name: value["fraction_within"]
                                               for name, value in within["ratio_oracle"].items()}
    return dict(metrics=metrics, curves={})


def rows(run: dict) -> list[dict[str, Any]]:
    """One row per (prior, mode): the issue share and the worst coverage over the cases, from steps 2 and 10."""
    m, out = run["metrics"], []
    sweep = dict(prior_counts=m["prior_counts"], prior_coordinates=m.get("prior_coordinates", []))
    for key, count, coordinates in settings(sweep):
        for mode, row in m[key].items():
            out.append(dict(count=count, coordinates=coordinates, mode=mode, issue=row["issue_fraction_within"],
                            from_two=min(row["worst_from_two"].values()), from_ten=min(row["worst_from_ten"].values()),
                            worst_case=min(row["worst_from_two"], key=row["worst_from_two"].get)))
    return out


def numbers(run: dict | None) -> dict[str, float | int | str]:
    """The library's own count (PriorLibraryCount, also without a sweep), and from the sweep the macros
    Prior<Count><Mode>{IssueFraction,WorstFromTwo,WorstFromTen} and its seeds and length."""
    if run is None:
        return dict(PriorLibraryCount=int(innovation.PRIOR_COUNT))
    c = run["config"]["prior"]
    out: dict[str, float | int | str] = dict(PriorLibraryCount=int(innovation.PRIOR_COUNT),
                                             PriorSeeds=int(c["seed_count"]), PriorSteps=int(c["steps"]),
                                             PriorCaseSeeds=len(c["seeds"]),
                                             PriorOracleFraction=run["metrics"]["oracle_fraction_within"])
    unknown = run["metrics"].get("ratio_oracle_fraction_within", {})
    out.update({f"PriorRatioUnknown{ORACLE_NAMES[name]}Fraction": value for name, value in unknown.items()})
    for row in rows(run):
        prior = f"{COUNT_NAMES[int(row['coordinates'])]}Coordinates" if row["coordinates"] else COUNT_NAMES[int(row["count"])]
        key = f"Prior{prior}{''.join(p.capitalize() for p in row['mode'].split('-'))}"
        out.update({f"{key}IssueFraction": row["issue"], f"{key}WorstFromTwo": row["from_two"],
                    f"{key}WorstFromTen": row["from_ten"]})
    return out


def table(run: dict | None, out) -> None:
    """The sweep as a table (`out`: the experiment's FigureOutput); the library's own N_0 is marked."""
    if run is None:
        return
    c = run["config"]["prior"]

    def label(row: dict) -> str:
        if row["coordinates"]:
            return f"C = {row['coordinates']:g} pseudo-coordinates"
        library = row["count"] == innovation.PRIOR_COUNT and not innovation.PRIOR_COORDINATES
        return f"N_0 = {row['count']:g}" + (" (library)" if library else "")

    unknown = run["metrics"].get("ratio_oracle_fraction_within", {})
    body = [[label(row), row["mode"],
             f"{row['issue']:.2f}", f"{row['from_two']:.3f} ({row['worst_case']})", f"{row['from_ten']:.3f}"]
            for row in rows(run)]
    out.table("e7_prior_count", ["prior", "mode", f"issue series within {run['config']['issue']['within']:g}x",
                                 "worst 95% cov. from step 2 (case)", "from step 10"], body, align="llrrr",
              caption=f"E7 ({out.profile} profile): the read-outs' prior count N_0 (pseudo-samples pulling each "
                      f"tensor's phi to the filter's model). Issue series: share of {c['seed_count']} one-coordinate "
                      f"seeds within the factor from step {run['config']['issue']['from_step']} on (oracle with the noise ratio "
                      f"known: {run['metrics']['oracle_fraction_within']:.2f}; with the ratio estimated too, by "
                      + ", ".join(f"{name} {value:.2f}" for name, value in unknown.items())
                      + "). Pseudo-coordinate priors: N_0 = 1 plus C x the lag steps' effective count. Coverage: worst 95% coverage, averaged over "
                      f"{len(c['seeds'])} seed(s) of {c['series']} coordinates, over steps 2-{c['steps']} "
                      f"(and 10-{c['steps']}) in the cases {', '.join(c['cases'])}.")

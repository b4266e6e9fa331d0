"""`python -m experiments` list / run / figures, with the toy experiment registered in place of the real ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import registry
from experiments.__main__ import main, profile_summary
from tests.experiments import toy_experiment as toy

REPO = Path(__file__).resolve().parents[2]
MACRO_LINE = re.compile(r"\\newcommand\{\\KOR[A-Za-z]+\}\{[^{}\n]*(\{[^{}\n]*\}[^{}\n]*)*\}")


def test_list_prints_every_registered_experiment():
    done = subprocess.run([sys.executable, "-m", "experiments", "list"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(registry.EXPERIMENT_MODULES)
    for name, line in zip(registry.EXPERIMENT_MODULES, lines):
        assert line.startswith(name)
        # Every experiment has the smoke and full profiles; the CPU-sized paper profile (issue 14) is being added.
        assert ("[profiles: smoke, " in line and "full" in line) or "cannot import" in line


@pytest.fixture
def toy_registry(monkeypatch, tmp_path):
    """Only the toy experiment is registered (as experiments.toy_experiment); its executions are logged."""
    monkeypatch.setitem(sys.modules, "experiments.toy_experiment", toy)
    monkeypatch.setattr(registry, "EXPERIMENT_MODULES", ("toy_experiment",))
    monkeypatch.setenv("TOY_EXECUTION_LOG", str(tmp_path / "executions.log"))
    monkeypatch.delenv("TOY_BLOCK_RUN", raising=False)
    monkeypatch.delenv("TOY_FAIL_RUN", raising=False)
    return tmp_path / "executions.log"


def executions(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def run_files(root: Path, profile: str = "smoke") -> list[str]:
    return sorted(p.stem for p in (root / profile / toy.NAME).glob("*.json"))


def test_list_with_the_toy_registered(toy_registry, capsys):
    main(["list"])
    assert capsys.readouterr().out == f"{'toy_experiment':22s} {toy.TITLE}  [profiles: smoke, full, staged]\n"


def test_run_by_prefix_skips_completed_runs_and_forces_reruns(toy_registry, tmp_path, capsys):
    root = tmp_path / "results"
    main(["run", "toy", "--root", str(root), "--device", "cpu"])
    ids = [f"run{i}_seed0" for i in range(4)]
    assert run_files(root) == ids and executions(toy_registry) == ids
    out = capsys.readouterr().out
    assert out.startswith("toy_experiment: 4 runs complete in ")
    assert str(root / "smoke" / "toy_experiment") in out  # where the files are, not results/
    main(["run", "toy_experiment", "--root", str(root), "--device", "cpu"])
    assert executions(toy_registry) == ids
    main(["run", "toy", "--root", str(root), "--device", "cpu", "--force"])
    assert executions(toy_registry) == ids + ids


def test_shards_split_the_runs_and_a_final_call_completes_them(toy_registry, tmp_path):
    from experiments.runner import in_shard
    root = tmp_path / "results"
    ids = [f"run{i}_seed0" for i in range(4)]
    main(["run", "toy", "--root", str(root), "--device", "cpu", "--shard", "0/2"])
    first = executions(toy_registry)
    assert first == [i for i in ids if in_shard(i, (0, 2))]
    main(["run", "toy", "--root", str(root), "--device", "cpu", "--shard", "1/2"])
    second = executions(toy_registry)[len(first):]
    assert sorted(first + second) == ids and not set(first) & set(second)
    main(["run", "toy", "--root", str(root), "--device", "cpu"])  # nothing left: nothing runs again
    assert len(executions(toy_registry)) == 4 and run_files(root) == ids
    with pytest.raises(SystemExit):
        main(["run", "toy", "--root", str(root), "--shard", "2/2"])


def test_run_all_with_seeds_and_profile(toy_registry, tmp_path):
    root = tmp_path / "results"
    main(["run", "all", "--profile", "full", "--seeds", "3", "4", "--root", str(root), "--device", "cpu"])
    assert run_files(root, "full") == ["run0_seed3", "run0_seed4", "run1_seed3", "run1_seed4"]
    for path in (root / "full" / toy.NAME).glob("*.json"):
        result = json.loads(path.read_text())
        assert result["profile"] == "full" and result["seed"] in (3, 4)
        assert result["provenance"]["device"] == "cpu"


def test_run_rejects_unknown_experiments_profiles_and_devices(toy_registry, tmp_path):
    with pytest.raises(ValueError, match="Invalid experiment 'e9'"):
        main(["run", "e9", "--root", str(tmp_path)])
    with pytest.raises(ValueError, match="Invalid device"):
        main(["run", "toy", "--root", str(tmp_path), "--device", "gpu"])
    with pytest.raises(SystemExit):
        main(["run", "toy", "--profile", "staged", "--root", str(tmp_path)])  # not a CLI profile
    assert executions(toy_registry) == []


def macro_lines(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("% generated by `python -m experiments figures`")
    for line in lines[1:]:
        assert MACRO_LINE.fullmatch(line), line
    return dict(re.match(r"\\newcommand\{\\(\w+)\}\{(.*)\}$", line).groups() for line in lines[1:])


def test_figures_write_figures_tables_and_number_macros(toy_registry, tmp_path, capsys):
    root, figure_dir, table_dir = tmp_path / "results", tmp_path / "figures", tmp_path / "generated"
    main(["run", "toy", "--root", str(root), "--device", "cpu"])
    main(["figures", "--root", str(root), "--figure-dir", str(figure_dir), "--table-dir", str(table_dir)])
    assert "toy_experiment: figures from 4 smoke runs" in capsys.readouterr().out
    assert sorted(p.name for p in figure_dir.iterdir()) == ["toy_traces.pdf", "toy_traces.png"]
    assert sorted(p.name for p in table_dir.iterdir()) == ["numbers.tex", "profile_summary.tex", "toy_losses.md",
                                                            "toy_losses.tex"]
    macros = macro_lines(table_dir / "numbers.tex")
    assert set(macros) == {"KORToyProfile", "KORToyRunHours", "KORToyMeanLoss", "KORToyRunCount", "KORToyTopThreeLoss"}
    assert macros["KORToyProfile"] == "smoke" and macros["KORToyRunCount"] == "4"
    hours = sum(json.loads(p.read_text())["wall_time_s"] for p in (root / "smoke" / toy.NAME).glob("*.json")) / 3600
    assert macros["KORToyRunHours"] == f"{hours:.1f}"
    losses = [json.loads(p.read_text())["metrics"]["loss"] for p in (root / "smoke" / toy.NAME).glob("*.json")]
    assert float(macros["KORToyMeanLoss"]) == pytest.approx(sum(losses) / 4, rel=5e-3)
    assert (table_dir / "profile_summary.tex").read_text().endswith("\\texttt{TOY} smoke (4 runs, 0.0 h).\n")


def test_figures_prefer_full_results_only_when_they_are_complete(toy_registry, tmp_path, monkeypatch):
    root, table_dir = tmp_path / "results", tmp_path / "generated"
    figures = ["figures", "--root", str(root), "--figure-dir", str(tmp_path / "figures"), "--table-dir",
               str(table_dir), "--prefer-full"]
    main(["run", "toy", "--root", str(root), "--device", "cpu"])
    main(["run", "toy", "--profile", "full", "--seeds", "0", "--root", str(root), "--device", "cpu"])
    main(figures)  # full has seed 0 only: incomplete, so the smoke results are drawn
    assert macro_lines(table_dir / "numbers.tex")["KORToyProfile"] == "smoke"
    main(["run", "toy", "--profile", "full", "--root", str(root), "--device", "cpu"])
    main(figures)
    macros = macro_lines(table_dir / "numbers.tex")
    assert macros["KORToyProfile"] == "full" and macros["KORToyRunCount"] == "4"
    assert "full (4 runs, " in (table_dir / "profile_summary.tex").read_text()


def test_figures_prefer_complete_paper_results_when_full_ones_are_not(toy_registry, tmp_path, monkeypatch):
    monkeypatch.setitem(toy.PROFILES, "paper", {"runs": 3, "scale": 1.0, "seeds": [0]})
    root, table_dir = tmp_path / "results", tmp_path / "generated"
    figures = ["figures", "--root", str(root), "--figure-dir", str(tmp_path / "figures"), "--table-dir",
               str(table_dir), "--prefer-full"]
    main(["run", "toy", "--root", str(root), "--device", "cpu"])
    main(["run", "toy", "--profile", "full", "--seeds", "0", "--root", str(root), "--device", "cpu"])  # incomplete
    main(["run", "toy", "--profile", "paper", "--root", str(root), "--device", "cpu"])
    main(figures)
    macros = macro_lines(table_dir / "numbers.tex")
    assert macros["KORToyProfile"] == "paper" and macros["KORToyRunCount"] == "3"
    # The paper profile's compute (issue 14's budget), summed over its runs and halved for the two cores.
    hours = sum(json.loads(p.read_text())["wall_time_s"] for p in (root / "paper" / toy.NAME).glob("*.json")) / 3600
    assert macros["KORPaperProfileRunHours"] == f"{hours:.2f}"
    assert macros["KORPaperProfileTwoCoreHours"] == f"{hours / 2:.2f}"
    main(["run", "toy", "--profile", "full", "--root", str(root), "--device", "cpu"])
    main(figures)  # complete full results win over paper ones
    macros = macro_lines(table_dir / "numbers.tex")
    assert macros["KORToyProfile"] == "full" and "KORPaperProfileRunHours" not in macros


def test_figures_with_a_wrong_root_is_an_error_and_writes_nothing(toy_registry, tmp_path):
    table_dir = tmp_path / "generated"
    with pytest.raises(SystemExit, match=r"no smoke results under .*none.*run: python -m experiments run all"):
        main(["figures", "--root", str(tmp_path / "none"), "--figure-dir", str(tmp_path / "f"),
              "--table-dir", str(table_dir)])
    assert not table_dir.exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize("damage", ["delete", "truncate", "schema", "stale"])
def test_figures_refuse_missing_corrupt_invalid_or_stale_results(toy_registry, tmp_path, damage):
    """One damaged result file stops the build with its name and the command that regenerates it, and the
    previous numbers.tex stays as it was (no silently smaller table)."""
    root, table_dir = tmp_path / "results", tmp_path / "generated"
    figures = ["figures", "--root", str(root), "--figure-dir", str(tmp_path / "figures"), "--table-dir", str(table_dir)]
    main(["run", "toy", "--root", str(root), "--device", "cpu"])
    main(figures)
    before = (table_dir / "numbers.tex").read_text()
    victim = sorted((root / "smoke" / toy.NAME).glob("*.json"))[1]
    text = victim.read_text()
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_text(text[: len(text) // 2])
    elif damage == "schema":
        record = json.loads(text)
        del record["provenance"]
        victim.write_text(json.dumps(record))
    else:
        record = json.loads(text)
        record["config_hash"] = "0" * len(record["config_hash"])
        victim.write_text(json.dumps(record))
    expected = {"delete": "missing", "truncate": "corrupt", "schema": "invalid", "stale": "stale"}[damage]
    with pytest.raises(SystemExit, match=rf"{expected}: .*{victim.name}.*\n.*python -m experiments run toy_experiment"):
        main(figures)
    assert (table_dir / "numbers.tex").read_text() == before
    main(figures + ["--allow-incomplete"])  # the development escape hatch draws what is there
    assert "KORToyProfile" in (table_dir / "numbers.tex").read_text()


def test_profile_summary_names_each_experiment_profile_run_count_and_hours():
    text = profile_summary([("e1_synthetic", "full", 27, 0.04), ("e4_training", "smoke", 80, 12.25)])
    assert text.splitlines()[1] == r"\texttt{E1} full (27 runs, 0.0 h); \texttt{E4} smoke (80 runs, 12.2 h)."
    paper = profile_summary([("e2_gradient_noise", "paper", 17, 1.25), ("e4_training", "paper", 231, 3.5),
                             ("e7_misspecified", "full", 20, 0.1)])
    assert paper.splitlines()[1].endswith("The paper profile's runs took 4.75 h of run time in all, 2.38 h on two "
                                          "cores (its runs are independent one-thread processes).")


def test_manifest_changes_exactly_when_a_result_file_does(toy_registry, tmp_path):
    root = tmp_path / "results"
    main(["run", "toy", "--root", str(root), "--device", "cpu"])
    main(["manifest", "--root", str(root)])
    manifest = root / "smoke" / ".manifest"
    first, stamp = manifest.read_text(), manifest.stat().st_mtime_ns
    assert len(first.splitlines()) == 4
    main(["manifest", "--root", str(root)])
    assert manifest.stat().st_mtime_ns == stamp  # unchanged results: the file is not rewritten
    next((root / "smoke" / toy.NAME).glob("*.json")).unlink()
    main(["manifest", "--root", str(root)])
    assert len(manifest.read_text().splitlines()) == 3


def test_jobs_is_validated(toy_registry, tmp_path):
    for bad in (["--jobs", "0"], ["--jobs", "2", "--force"], ["--jobs", "2", "--shard", "0/2"]):
        with pytest.raises(SystemExit, match="--jobs"):
            main(["run", "toy", "--root", str(tmp_path), "--device", "cpu", *bad])
    assert not (tmp_path / "smoke").exists()


class InProcessShard:
    """Stands in for subprocess.Popen in `run --jobs`: runs the shard's command line through main() here (a real
    child would import a registry without the toy experiment) and records it."""

    commands: list[list[str]] = []

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        assert command[:3] == [sys.executable, "-m", "experiments"] and env["OMP_NUM_THREADS"] == "1"
        self.args = command
        InProcessShard.commands.append(command)
        try:
            main(command[3:])
            self.code = 0
        except Exception:  # noqa: BLE001 - a crashed child exits non-zero
            self.code = 1

    def wait(self) -> int:
        return self.code


def test_jobs_runs_shard_passes_until_one_writes_nothing(toy_registry, tmp_path, monkeypatch):
    import experiments.__main__ as cli

    real_popen = subprocess.Popen  # still used by everything else (e.g. provenance's git calls)

    def popen(command, **kwargs):
        if command[:3] == [sys.executable, "-m", "experiments"]:
            return InProcessShard(command, kwargs["env"])
        return real_popen(command, **kwargs)

    monkeypatch.setattr(cli.subprocess, "Popen", popen)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    InProcessShard.commands = []
    root = tmp_path / "results"
    main(["run", "toy", "--root", str(root), "--device", "cpu", "--jobs", "2"])
    ids = [f"run{i}_seed0" for i in range(4)]
    # Pass 1: two shards split the four runs; pass 2 finds nothing to do, so the passes stop; the final call in this
    # process runs nothing either.
    shards = [command[command.index("--shard") + 1] for command in InProcessShard.commands]
    assert shards == ["0/2", "1/2", "0/2", "1/2"]
    assert sorted(executions(toy_registry)) == ids and run_files(root) == ids
    # A shard that fails stops the call with its name, and a rerun resumes (only the failed run is left).
    (root / "smoke" / toy.NAME / "run2_seed0.json").unlink()
    monkeypatch.setenv("TOY_FAIL_RUN", "run2_seed0")
    with pytest.raises(SystemExit, match=r"shard\(s\) \d/2 failed \(pass 1\)"):
        main(["run", "toy", "--root", str(root), "--device", "cpu", "--jobs", "2"])
    monkeypatch.delenv("TOY_FAIL_RUN")
    main(["run", "toy", "--root", str(root), "--device", "cpu", "--jobs", "2"])
    assert run_files(root) == ids and executions(toy_registry).count("run2_seed0") == 3


def test_figures_rewrite_the_readme_numbers_it_tags_and_refuse_a_tag_without_a_macro(toy_registry, tmp_path, capsys):
    root, table_dir = tmp_path / "results", tmp_path / "generated"
    readme = tmp_path / "README.md"
    main(["run", "toy", "--root", str(root), "--device", "cpu"])
    readme.write_text("We ran <!--n:KORToyRunCount-->99<!--/n--> runs; loss <!--n:KORToyMeanLoss-->?<!--/n-->.\n")
    args = ["figures", "--root", str(root), "--figure-dir", str(tmp_path / "f"), "--table-dir", str(table_dir),
            "--readme", str(readme)]
    main(args)
    macros = macro_lines(table_dir / "numbers.tex")
    assert readme.read_text() == (f"We ran <!--n:KORToyRunCount-->4<!--/n--> runs; loss "
                                  f"<!--n:KORToyMeanLoss-->{macros['KORToyMeanLoss']}<!--/n-->.\n")
    assert "2 number(s) updated" in capsys.readouterr().out
    readme.write_text("<!--n:KORToyRenamed-->1<!--/n-->\n")
    (table_dir / "numbers.tex").unlink()
    with pytest.raises(SystemExit, match="KORToyRenamed"):
        main(args)
    assert readme.read_text() == "<!--n:KORToyRenamed-->1<!--/n-->\n" and not (table_dir / "numbers.tex").exists()


def test_readme_values_are_plain_text_or_an_error():
    from experiments.readme_numbers import plain, sync
    assert plain("2{,}000") == "2,000"
    with pytest.raises(ValueError, match="LaTeX"):
        plain("$\\times$")
    assert sync("<!--n:A-->x<!--/n--> and <!--n:A-->y<!--/n-->", {"A": "1"}) == ("<!--n:A-->1<!--/n--> and "
                                                                              "<!--n:A-->1<!--/n-->", ["A", "A"])

"""`lmforge compare`: presets (or a recipe's spec) trained on one budget and seeds, then one table, plots and a report.

spec -> plan (every run and seed, validated) -> train or reuse each, in its own process -> summarize -> report.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from lmforge.compare.report import write_report
from lmforge.compare.run_summary import RunSummary, summarize_run
from lmforge.compare.runner import CompareInterrupted, RunOutcome, train_planned
from lmforge.compare.spec import CompareSpec, load_spec, plan_runs, recipe_names, spec_from_presets
from lmforge.compare.table import RunGroup, markdown_table

__all__ = ["CompareInterrupted", "CompareResult", "CompareSpec", "load_spec", "recipe_names", "run_compare",
           "spec_from_presets", "summarize_run"]


@dataclass
class CompareResult:
    groups: list[RunGroup]
    outcomes: list[RunOutcome]
    table: str
    files: dict[str, Path]
    interrupted: str | None = None


def run_compare(spec: CompareSpec, out: Path, trust_code: bool = False, echo: bool = True) -> CompareResult:
    """Train (or reuse) every run of `spec` under `out/runs/`, then write the table, plots and report to `out`.

    A failing run is a row in the table, not the end of the comparison. Ctrl-C stops after the run in progress
    has saved; the report then covers the finished runs and the next call resumes the rest.
    """
    planned = plan_runs(spec)
    outcomes: list[RunOutcome] = []
    interrupted = None
    for i, run in enumerate(planned, start=1):
        if echo:
            print(f"[{i}/{len(planned)}] {run.name} (seed {run.seed}) -> {out / 'runs' / run.key}", file=sys.stderr, flush=True)
        try:
            outcome = train_planned(run, out / "runs", trust_code=trust_code, echo=echo)
        except CompareInterrupted as err:
            interrupted = str(err)
            break
        if echo and outcome.status != "trained":
            print(f"    {outcome.status}" + (f": {outcome.error}" if outcome.error else ""), file=sys.stderr, flush=True)
        outcomes.append(outcome)
    groups = _groups(spec, outcomes)
    files = write_report(spec, groups, out, note=interrupted)
    return CompareResult(groups, outcomes, markdown_table(groups), files, interrupted)


def _groups(spec: CompareSpec, outcomes: list[RunOutcome]) -> list[RunGroup]:
    groups = []
    for run in spec.runs:
        summaries: list[RunSummary] = []
        failures: list[str] = []
        for o in outcomes:
            if o.planned.name != run.name:
                continue
            if o.status == "failed":
                failures.append(f"seed {o.planned.seed}: {o.error}")
            else:
                summaries.append(summarize_run(o.run_dir))
        groups.append(RunGroup(run.name, summaries, failures))
    return groups

"""The comparison table: per run, mean ± std over seeds of each figure, and deltas against the first run."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from lmforge.compare.run_summary import RunSummary

# (key, column title, format) of each averaged figure, in table order
FIGURES = [
    ("val_loss", "val loss", "{:.4f}"),
    ("best_val_loss", "best val", "{:.4f}"),
    ("best_val_step", "best at step", "{:,.0f}"),
    ("val_bpb", "val bpb", "{:.4f}"),
    ("val_accuracy", "val acc", "{:.3f}"),
    ("tokens_per_sec", "tokens/s", "{:,.0f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("wall_seconds", "wall s", "{:.1f}"),
    ("peak_mem_gib", "peak GiB", "{:.2f}"),
]
DIFFERENCES = ("val_loss", "val_bpb", "val_bpc", "val_accuracy")  # deltas as differences; the speed figures as ratios
RATIOS = ("tokens_per_sec", "wall_seconds")


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample std over seeds; None with one seed
    n: int

    def format(self, fmt: str) -> str:
        if self.mean is None:
            return "-"
        text = fmt.format(self.mean)
        return text if self.std is None else f"{text} ± {fmt.format(self.std).lstrip('+')}"


def stat(values: list[float | None]) -> Stat:
    got = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not got:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(got), statistics.stdev(got) if len(got) > 1 else None, len(got))


@dataclass
class RunGroup:
    """One named run over its seeds."""

    name: str
    summaries: list[RunSummary]
    failures: list[str]

    def figure(self, key: str) -> Stat:
        return stat([getattr(s, key) for s in self.summaries])

    def first(self, key: str) -> Any:
        return next((getattr(s, key) for s in self.summaries if getattr(s, key) is not None), None)


def _val_key(groups: list[RunGroup]) -> str:
    """val_bpb where every run has it, else val_bpc (character tokenizers report both; labelled tasks neither)."""
    return "val_bpb" if all(g.first("val_bpb") is not None for g in groups if g.summaries) else "val_bpc"


def table_rows(groups: list[RunGroup]) -> list[dict[str, Any]]:
    """Plain numbers per run (for the JSON): means, stds and deltas against the first run."""
    base = groups[0]
    out = []
    for g in groups:
        row: dict[str, Any] = {"name": g.name, "seeds": len(g.summaries), "failed": g.failures,
                               "params": g.first("params"), "steps": g.first("steps"), "tokens": g.first("tokens"),
                               "flops": g.first("flops")}
        for key in [k for k, _, _ in FIGURES] + ["val_bpc"]:
            st = g.figure(key)
            row[key], row[f"{key}_std"] = st.mean, st.std
            ref = base.figure(key).mean
            if st.mean is not None and ref is not None:
                if key in DIFFERENCES:
                    row[f"{key}_delta"] = st.mean - ref
                elif key in RATIOS and ref:
                    row[f"{key}_ratio"] = st.mean / ref
        out.append(row)
    return out


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def markdown_table(groups: list[RunGroup]) -> str:
    """The table users read: one row per run, `mean ± std` over seeds, Δ against the first row."""
    val_key = _val_key(groups)
    figures = [(val_key, val_key.replace("_", " "), f) if k == "val_bpb" else (k, t, f) for k, t, f in FIGURES]
    head = ["run", "seeds", "params", "steps", "tokens", "FLOPs"]
    for key, title, _ in figures:
        head.append(title)
        if key in DIFFERENCES:
            head.append("Δ")
        if key in RATIOS:
            head.append("× first")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    base = groups[0]
    for g in groups:
        seeds = f"{len(g.summaries)}" + (f" ({len(g.failures)} failed)" if g.failures else "")
        cells = [g.name, seeds, f"{g.first('params'):,}" if g.first("params") else "-", _count(g.first("steps")),
                 _count(g.first("tokens")), _count(g.first("flops"))]
        for key, _, fmt in figures:
            st, ref = g.figure(key), base.figure(key).mean
            cells.append(st.format(fmt))
            if key in DIFFERENCES:
                cells.append("-" if g is base or st.mean is None or ref is None else f"{st.mean - ref:+.4f}")
            if key in RATIOS:
                cells.append("-" if g is base or st.mean is None or not ref else f"{st.mean / ref:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    failures = [f"- {g.name}: {msg}" for g in groups for msg in g.failures]
    if failures:
        lines += ["", "Failed runs:", *failures]
    return "\n".join(lines)

"""A comparison's outputs in its --out folder: table.md, compare.json, the PNG plots and one self-contained report.html."""
from __future__ import annotations

import base64
import html
import json
import platform
from pathlib import Path
from typing import Any

from lmforge.compare.plots import plot_terms, plot_val_curves
from lmforge.compare.spec import CompareSpec
from lmforge.compare.table import RunGroup, markdown_table, table_rows

VAL_PLOT, TERMS_PLOT = "val_loss.png", "loss_terms.png"


def _header(spec: CompareSpec) -> str:
    budget = spec.budget.describe() if spec.budget else "each preset's own budget"
    seeds = ", ".join(str(s) for s in spec.seeds)
    return f"{spec.name}: {budget} per run, seed{'s' if len(spec.seeds) > 1 else ''} {seeds}"


def write_report(spec: CompareSpec, groups: list[RunGroup], out: Path, note: str | None = None) -> dict[str, Path]:
    """Write everything; plots are skipped (and said so in the report) when matplotlib is missing."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(groups)
    header = _header(spec)
    written = {"table": out / "table.md", "json": out / "compare.json", "html": out / "report.html"}
    written["table"].write_text(f"{header}\n\n{table}\n" + (f"\n{note}\n" if note else ""))
    summary: dict[str, Any] = {
        "spec": spec.model_dump(), "note": note, "machine": platform.processor() or platform.machine(),
        "table": table_rows(groups),
        "runs": {g.name: [s.to_dict() for s in g.summaries] for g in groups},
    }
    written["json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plots: list[Path] = []
    plot_note = None
    ok = [g for g in groups if g.summaries]
    if ok:
        try:
            curves = {g.name: [(Path(s.run_dir), s.flops_per_token) for s in g.summaries] for g in ok}
            plots = [plot_val_curves(curves, out / VAL_PLOT),
                     plot_terms({g.name: Path(g.summaries[0].run_dir) for g in ok}, out / TERMS_PLOT)]
        except ImportError as err:
            plot_note = str(err)
    for p in plots:
        written[p.stem] = p
    written["html"].write_text(_html(spec, header, table, plots, note, plot_note))
    return written


def _md_table_html(table: str) -> str:
    """The markdown table as an HTML table (no markdown library needed)."""
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    other = [ln for ln in table.splitlines() if ln and not ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head, body = cells[0], cells[2:]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    out = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>" + rows + "</table>"
    return out + "".join(f"<p>{html.escape(ln)}</p>" for ln in other)


def _html(spec: CompareSpec, header: str, table: str, plots: list[Path], note: str | None, plot_note: str | None) -> str:
    images = "".join(
        f'<h2>{html.escape(p.stem.replace("_", " "))}</h2><img alt="{p.name}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in plots
    )
    parts = [f"<h1>{html.escape(header)}</h1>"]
    if spec.description:
        parts.append(f"<p>{html.escape(spec.description)}</p>")
    parts.append(_md_table_html(table))
    if spec.verdict:
        parts.append(f"<p><b>The recipe's verdict:</b> {html.escape(spec.verdict)}</p>")
    for extra in (note, plot_note):
        if extra:
            parts.append(f"<p><i>{html.escape(extra)}</i></p>")
    runs = "".join(f"<li><code>{html.escape(r.name)}</code>: {html.escape(r.preset)} "
                   f"{html.escape(json.dumps(r.overrides))}</li>" for r in spec.runs)
    parts.append(f"<h2>runs</h2><ul>{runs}</ul>{images}")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(spec.name)}</title><style>{style}</style>" \
           f"</head><body>{''.join(parts)}</body></html>\n"

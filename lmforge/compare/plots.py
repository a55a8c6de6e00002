"""PNG figures from metrics.jsonl: one run's curves (`lmforge plot`), and several runs side by side (`compare`).

matplotlib is an optional extra (`pip install 'lmforge[plots]'`); without it these raise ImportError with the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.compare.run_summary import train_rows, val_rows
from lmforge.training.metrics import read_metrics

NOT_TERMS = {"step", "tokens", "lr", "tokens_per_sec", "elapsed", "grad_norm", "skipped_steps", "mfu", "mem_gib", "stage",
             "lr_phase_multiplier", "eval_seconds"}
NOT_TERM_PREFIXES = ("data_skipped/", "weight/")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'lmforge[plots]'") from None
    return plt


def loss_terms(rows: list[dict[str, Any]]) -> list[str]:
    """The numeric keys of train rows that are the objective's terms (loss, ce, h_norm, alpha, ...), in first-seen order."""
    keys: dict[str, None] = {}
    for row in train_rows(rows):
        for key, value in row.items():
            if key not in NOT_TERMS and not key.startswith(NOT_TERM_PREFIXES) and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                keys.setdefault(key)
    return list(keys)


def plot_run(run_dir: Path, out: Path) -> Path:
    """Train and val loss, the LR, and every other logged term of one run, against the step."""
    plt = _pyplot()
    rows = read_metrics(run_dir)
    trains, vals = train_rows(rows), val_rows(rows)
    if not trains:
        raise ValueError(f"{run_dir}: metrics.jsonl has no training rows yet")
    terms = [t for t in loss_terms(rows) if t != "loss"]
    panels = 2 + len(terms)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.4 * panels + 0.6), sharex=True, squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in trains], [r["loss"] for r in trains], lw=1, label="train loss")
    if vals:
        ax.plot([r["step"] for r in vals], [r["val_loss"] for r in vals], "o-", ms=3, label="val loss")
    ax.set_ylabel("loss")
    ax.legend()
    axes[1][0].plot([r["step"] for r in trains], [r["lr"] for r in trains], color="k", lw=1)
    axes[1][0].set_ylabel("lr")
    for i, term in enumerate(terms, start=2):
        pts = [(r["step"], r[term]) for r in trains if isinstance(r.get(term), (int, float))]
        axes[i][0].plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        axes[i][0].set_ylabel(term)
    axes[-1][0].set_xlabel("step")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_val_curves(curves: dict[str, list[tuple[Path, float | None]]], out: Path) -> Path:
    """Val loss of each run (every seed a line) against tokens, wall time and FLOPs: `curves[name]` holds
    (run dir, FLOPs per token) per seed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, seeds) in enumerate(curves.items()):
        for j, (run_dir, per_token) in enumerate(seeds):
            vals = val_rows(read_metrics(run_dir))
            if not vals:
                continue
            losses = [r["val_loss"] for r in vals]
            label = name if j == 0 else None
            kw = {"color": colors[i % len(colors)], "lw": 1.2, "marker": "o", "ms": 2.5, "label": label}
            axes[0].plot([r["tokens"] for r in vals], losses, **kw)
            axes[1].plot([r["elapsed"] for r in vals], losses, **kw)
            if per_token:
                axes[2].plot([r["tokens"] * per_token for r in vals], losses, **kw)
    for ax, xlabel in zip(axes, ["tokens", "wall time (s)", "training FLOPs (the model's own count)"]):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_terms(runs: dict[str, Path], out: Path) -> Path:
    """Each logged loss term (one panel per term) of each run's first seed, against tokens."""
    plt = _pyplot()
    metrics = {name: read_metrics(d) for name, d in runs.items()}
    terms: dict[str, None] = {}
    for rows in metrics.values():
        for term in loss_terms(rows):
            terms.setdefault(term)
    names = list(terms) or ["loss"]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.4 * len(names) + 0.6), sharex=True, squeeze=False)
    for ax, term in zip((a[0] for a in axes), names):
        for name, rows in metrics.items():
            pts = [(r["tokens"], r[term]) for r in train_rows(rows) if isinstance(r.get(term), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=name)
        ax.set_ylabel(term)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    axes[-1][0].set_xlabel("tokens")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

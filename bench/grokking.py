"""Does Grokfast make grokking ~50x faster here? The paper's headline on x·y mod 97, on this CPU.

Setup, as the official code (ironjr/grokfast main.py) and the paper: equations
`x op y = c`, 50% train split, the loss and accuracy on the answer token only;
a 2-layer transformer, width 128, 4 heads (lmforge's `gpt`, see
`paper_model_config`); `torch.optim.Adam` (the code's default optimizer, so
weight decay is Adam's L2 term, on every parameter), lr 1e-3, betas (0.9, 0.98),
LR warm-up over the first 10 updates, batch 512 (the last batch of each
epoch is the remainder, 48), validation accuracy after every epoch (10 steps).

Runs (one seed, so one init and one split for all):
- baseline wd 0 and wd 0.005 (the second isolates weight decay's share);
- grokfast_ema  alpha 0.98, lamb 2, wd 0.005;
- grokfast_ma   window 100, lamb 5, wd 0.01.
The filters are lmforge's registered `grokfast_ema` / `grokfast_ma`, built from
their preset configs. A run stops `--after` steps past 95% val accuracy or at its
step cap: `--cap-filtered` for the filtered runs, and for the baselines the
largest cap (the same for both) that fits the time left of `--budget-s`, from the
measured time per step. A run that has not grokked is reported as "> cap".

Precision: 20 steps are timed in fp32 and in bf16 autocast (bf16 is ~1.2x faster
here), and after the four runs the EMA run is repeated in the other precision
(same init, data order and stopping rule, cap `--check-cap`). The runs use fp32:
in a first measurement bf16 moved EMA's 95% point from 1,750 steps (fp32) to
beyond 3,000 (0.93 val acc at 3,000), so bf16 is not a free speed-up for
grokking. `--precision measure` picks the faster precision instead.

Init: the model is re-initialized with PyTorch's module defaults, as the paper's
own decoder was (Embedding N(0, 1), Linear Kaiming-uniform). `--init lmforge`
keeps lmforge's GPT-2 init (N(0, 0.02)) and writes grokking_lmforge_init.json/.png:
with that small init the baseline generalizes without a long delay, so the
init is part of the phenomenon being reproduced.

usage: python bench/grokking.py [--budget-s 660] [--cap-filtered 4000] [--precision measure|fp32|bf16] [--init torch|lmforge]
Writes bench/results/grokking.json and bench/results/grokking.png.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import lmforge.components  # noqa: F401  fills GRAD_FILTERS
from lmforge.evaluation.grokking import ModularTask, answer_loss, evaluate, paper_model_config, torch_default_init
from lmforge.models.gpt import GPT
from lmforge.registry import GRAD_FILTERS
from lmforge.runtime import Runtime, setup_runtime

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.95
PAPER = {"baseline_wd0": 39890, "grokfast_ma": 790, "grokfast_ema": 910}  # official README, steps to 95% val acc
RUNS = [  # name, filter spec (a preset's grad_filters entry) or None, weight decay
    ("grokfast_ema", {"name": "grokfast_ema", "alpha": 0.98, "lamb": 2.0}, 0.005),
    ("grokfast_ma", {"name": "grokfast_ma", "window": 100, "lamb": 5.0}, 0.01),
    ("baseline_wd0", None, 0.0),
    ("baseline_wd0.005", None, 0.005),
]


def build_filter(spec: dict | None, model: torch.nn.Module):
    """The registered filter, its config validated exactly as a preset's `grad_filters` entry is."""
    if spec is None:
        return None
    cfg = GRAD_FILTERS.config_class(spec["name"])(**spec)
    return GRAD_FILTERS.get(spec["name"])(cfg, model)


def train_run(
    task: ModularTask, train_rows: torch.Tensor, val_rows: torch.Tensor, spec: dict | None, weight_decay: float,
    cap: int, rt: Runtime, seed: int, batch_size: int, after: int, init: str = "torch",
) -> dict[str, Any]:
    """The paper's loop: epochs over shuffled train rows, filter between backward and step, val after each epoch."""
    torch.manual_seed(seed)
    model = GPT(paper_model_config(task))
    if init == "torch":
        torch_default_init(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=weight_decay)
    base_lr = opt.param_groups[0]["lr"]
    grad_filter = build_filter(spec, model)
    hist: dict[str, list] = {"step": [], "val_acc": [], "val_loss": [], "train_acc": [], "train_loss": []}
    step_times: list[float] = []
    step, reached, t_run = 0, None, time.perf_counter()
    stop_at = cap
    while step < stop_at:
        order = train_rows[torch.randperm(len(train_rows))]
        loss_sum, correct = 0.0, 0
        for batch in order.split(batch_size):
            t0 = time.perf_counter()
            for group in opt.param_groups:  # the official LambdaLR: lr * min(1, update / 10)
                group["lr"] = base_lr * min(1.0, step / 10)
            with rt.autocast():
                loss, right = answer_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_filter is not None:
                grad_filter(model)
            opt.step()
            step_times.append(time.perf_counter() - t0)
            loss_sum += loss.item() * len(batch)
            correct += int(right)
            step += 1
        with rt.autocast():
            val = evaluate(model, val_rows)
        for key, value in (("step", step), ("val_acc", val["accuracy"]), ("val_loss", val["loss"]),
                           ("train_acc", correct / len(train_rows)), ("train_loss", loss_sum / len(train_rows))):
            hist[key].append(value)
        if reached is None and val["accuracy"] >= THRESHOLD:
            reached = step
            stop_at = min(cap, step + after)
    wall = time.perf_counter() - t_run
    return {
        "steps_to_95": reached, "steps_run": step, "cap": cap, "weight_decay": weight_decay, "filter": spec,
        "ms_per_step_median": 1000 * statistics.median(step_times[10:] or step_times),
        "wall_s": wall, "seconds_per_step_with_eval": wall / max(1, step),
        "final_val_acc": hist["val_acc"][-1], "final_train_acc": hist["train_acc"][-1], "history": hist,
    }


def time_steps(task: ModularTask, rows: torch.Tensor, rt: Runtime, steps: int = 20) -> float:
    """Median ms per training step (batch 512, EMA filter on) under this runtime's precision."""
    torch.manual_seed(0)
    model = GPT(paper_model_config(task))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    f = build_filter(RUNS[0][1], model)
    times = []
    for i in range(steps + 3):
        batch = rows[torch.randint(0, len(rows), (512,))]
        t0 = time.perf_counter()
        with rt.autocast():
            loss, _ = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        f(model)
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def fmt(steps: int | None, cap: int) -> str:
    return f"{steps:,}" if steps is not None else f"> {cap:,}"


def plot(results: dict[str, dict], path: Path, precision: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in results.items():
        h = r["history"]
        (line,) = ax.plot(h["step"], h["val_acc"], label=f"{name} val ({fmt(r['steps_to_95'], r['cap'])} steps)")
        ax.plot(h["step"], h["train_acc"], color=line.get_color(), alpha=0.35, linestyle="--")
    ax.axhline(THRESHOLD, color="gray", linewidth=0.8, linestyle=":")
    for i, (name, steps) in enumerate(PAPER.items()):  # staggered labels: MA 790 and EMA 910 are close
        ax.axvline(steps, color="black", linewidth=0.6, linestyle=":", alpha=0.5)
        ax.text(steps * 1.03, 0.55 + 0.12 * i, f"paper\n{name}\n{steps:,}", fontsize=7, va="bottom", ha="left", alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("optimization steps")
    ax.set_ylabel("accuracy on the answer token")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"x·y mod 97, 50% train split (dashed: train accuracy; {precision} on CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=660, help="wall-clock budget of the whole bench, seconds")
    ap.add_argument("--cap-filtered", type=int, default=4000, help="step cap of the Grokfast runs")
    ap.add_argument("--after", type=int, default=100, help="steps to keep training after 95%% val accuracy (for the plot)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "measure"], default="fp32",
                    help="measure = the faster here; fp32 by default because bf16 changed when EMA groks (see the docstring)")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip the fp32-vs-bf16 check")
    ap.add_argument("--check-cap", type=int, default=3000, help="step cap of the precision-check run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", choices=["torch", "lmforge"], default="torch",
                    help="PyTorch's module defaults, as the paper's code, or lmforge's GPT init (N(0, 0.02)), which writes grokking_lmforge_init.*")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    t_start = time.perf_counter()

    task = ModularTask(97)
    train_rows, val_rows = task.split(0.5, seed=args.seed)
    timing = {p: time_steps(task, train_rows, setup_runtime("cpu", p)) for p in ("fp32", "bf16")}
    precision = min(timing, key=timing.get) if args.precision == "measure" else args.precision
    rt = setup_runtime("cpu", precision)
    print(f"ms/step (batch 512, EMA filter): fp32 {timing['fp32']:.1f}, bf16 {timing['bf16']:.1f} -> {precision}")

    other = "bf16" if precision == "fp32" else "fp32"
    check_reserve = 0.0  # seconds kept for the precision check, once the EMA run has timed a step

    results: dict[str, dict] = {}
    for name, spec, wd in RUNS:
        if spec is not None:
            cap = args.cap_filtered
        else:  # the baselines share what is left, at the same cap, in whole epochs
            left = args.budget_s - (time.perf_counter() - t_start) - check_reserve
            per_step = statistics.mean(r["seconds_per_step_with_eval"] for r in results.values())
            runs_left = sum(1 for n, s, _ in RUNS if s is None and n not in results)
            cap = results.get("baseline_wd0", {}).get("cap") or max(10, int(left / runs_left / per_step) // 10 * 10)
        r = train_run(task, train_rows, val_rows, spec, wd, cap, rt, args.seed, 512, args.after, args.init)
        results[name] = r
        print(f"{name:18s} wd {wd:<6} steps to 95% val acc: {fmt(r['steps_to_95'], cap):>8}  "
              f"(ran {r['steps_run']}, {r['ms_per_step_median']:.1f} ms/step, {r['wall_s']:.0f} s, final val acc {r['final_val_acc']:.3f})")
        if name == RUNS[0][0] and args.check:  # the check's worst case: check_cap steps at the other precision's speed
            check_reserve = args.check_cap * r["seconds_per_step_with_eval"] * timing[other] / timing[precision]

    check = {}
    if args.check:  # the EMA run again in the other precision (same init, data order, stopping rule)
        name, spec, wd = RUNS[0]
        r = train_run(task, train_rows, val_rows, spec, wd, args.check_cap, setup_runtime("cpu", other), args.seed, 512,
                      args.after, args.init)
        main_run = results[name]
        check = {p: {"steps_to_95": x["steps_to_95"], "cap": x["cap"], "final_val_acc": x["final_val_acc"],
                     "ms_per_step_median": x["ms_per_step_median"], "history": x["history"]}
                 for p, x in ((precision, main_run), (other, r))}
        for p, c in check.items():
            print(f"precision check, {name} in {p}: steps to 95% val acc {fmt(c['steps_to_95'], c['cap'])}, "
                  f"final val acc {c['final_val_acc']:.3f}, {c['ms_per_step_median']:.1f} ms/step")

    base = results["baseline_wd0"]
    print(f"\n| run | weight decay | steps to 95% val acc, here | paper | speed-up vs baseline wd 0, here |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        ours = r["steps_to_95"]
        if base["steps_to_95"] is None:  # only a lower bound, and only when the baseline ran longer than this run needed
            speed = f"> {base['cap'] / ours:.1f}x" if ours and base["cap"] > ours else "-"
        else:
            speed = f"{base['steps_to_95'] / ours:.1f}x" if ours else "-"
        paper = PAPER.get(name)
        print(f"| {name} | {r['weight_decay']} | {fmt(ours, r['cap'])} | {f'{paper:,}' if paper else '(not reported)'} | {speed} |")

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "task": "x*y mod 97, x in [0,97), y in [1,97); 50% train split", "n_train": len(train_rows), "n_val": len(val_rows),
        "model": paper_model_config(task).model_dump(), "optimizer": "torch.optim.Adam, lr 1e-3, betas (0.9, 0.98), L2 weight decay",
        "batch_size": 512, "threshold": THRESHOLD, "seed": args.seed, "eval_every_steps": math.ceil(len(train_rows) / 512),
        "init": args.init, "precision": precision, "ms_per_step_timing": timing, "precision_check": check, "paper_steps_to_95": PAPER,
        "runs": results, "bench_wall_s": time.perf_counter() - t_start,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }
    stem = "grokking" if args.init == "torch" else "grokking_lmforge_init"
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    plot(results, out / f"{stem}.png", f"{precision}, {args.init} init")
    print(f"wrote {out / stem}.json and .png ({summary['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

"""Did a refactor change training? Every shipped preset for N steps at two commits, per-step losses compared bitwise.

Like torchtitan's `loss_compare`: the same presets, seeds and data at a reference commit and at the
working tree, on CPU, with `train.log_interval 1` so every step's loss is logged, plus the validation
loss at the last step. Losses are compared as exact float values (bitwise); any difference is listed.

Each commit's lmforge is imported from its own checkout: the reference one is a `git worktree` in a
temporary folder, run with PYTHONPATH pointing at it (the working directory stays this repo's root, so
the presets' relative data paths resolve the same way). Only `lmforge.train(preset, run_dir, overrides)`
and `<run_dir>/metrics.jsonl` are used, so the script works across refactors of everything else.

Shrinking: every preset runs `--steps` steps with evaluation and a save at the last one. Presets whose
data is not on this machine (the Hugging Face hub, files of the seed's own layout) train on local text
instead, and the two presets sized for a GPU get a smaller micro-batch (SHRINK below): the point is to
exercise each preset's model, objective, filters, swaps, schedule and stages, not its full size.

usage:
  python bench/loss_compare.py --ref HEAD~3                  # reference commit vs the working tree
  python bench/loss_compare.py --ref A --candidate B         # two commits
  python bench/loss_compare.py record --out losses.json      # just record this checkout
  python bench/loss_compare.py --ref-losses losses.json      # that recording vs the working tree
Writes bench/results/loss_compare.json; exits 1 if any preset's losses differ.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_TEXT = [{"type": "text", "path": "../shared/data/stories.txt"}]
SHRINK: dict[str, dict] = {  # preset -> extra overrides (data not on this machine, GPU-sized batches)
    "general_100m": {"data.sources": LOCAL_TEXT, "train.batch_size": 2, "data.tokenizer.vocab_size": 1024},
    "forge_vgt": {"data.sources": LOCAL_TEXT, "data.tokenizer.path": None, "train.batch_size": 2,
                  "objective.controller.warmup": 3},  # its 4000-step warm-up would leave 30 steps at alpha 0
}


def common_overrides(steps: int) -> dict:
    return {
        "train.max_steps": steps, "train.train_tokens": None, "train.log_interval": 1, "train.eval_interval": steps,
        "train.save_interval": steps, "train.milestone_interval": 0, "train.progress_bar": False,
        "train.device": "cpu", "train.early_stopping_patience": 0, "samples.max_new_tokens": 4, "samples.interval": 0,
    }


def record(presets: list[str], steps: int, config_dir: Path) -> dict[str, dict]:
    """Train each preset in this process's lmforge; per-step losses (and the last val loss) per preset."""
    import lmforge

    out: dict[str, dict] = {}
    for name in presets:
        overrides = {**common_overrides(steps), **SHRINK.get(name, {})}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            try:
                lmforge.train(str(config_dir / f"{name}.json"), run_dir=run_dir, overrides=overrides)
            except Exception as err:  # reported per preset; the others still run
                out[name] = {"error": f"{type(err).__name__}: {err}"}
                print(f"{name}: {out[name]['error']}", file=sys.stderr, flush=True)
                continue
            rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if "loss" in r]
        val = [r["val_loss"] for r in rows if "val_loss" in r]
        out[name] = {"losses": losses, "val_loss": val[-1] if val else None, "seconds": time.perf_counter() - t0}
        print(f"{name}: {len(losses)} steps, last loss {losses[-1]!r}, val {out[name]['val_loss']!r} "
              f"({out[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return out


def record_at(commit: str | None, presets: list[str] | None, steps: int, out: Path) -> dict[str, dict]:
    """Record at `commit` (a temporary git worktree) or, for None, at the working tree, in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        root = REPO
        if commit is not None:
            root = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(root), commit], check=True,
                           stdout=subprocess.DEVNULL)
        try:
            env = {**os.environ, "PYTHONPATH": str(root)}
            cmd = [sys.executable, str(Path(__file__).resolve()), "record", "--out", str(out), "--steps", str(steps),
                   "--config-dir", str(root / "configs")] + (["--presets", ",".join(presets)] if presets else [])
            subprocess.run(cmd, check=True, cwd=REPO, env=env)
        finally:
            if commit is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root)], check=False)
    return json.loads(out.read_text())["presets"]


def compare(ref: dict[str, dict], cand: dict[str, dict]) -> list[dict]:
    """One row per preset: equal (bitwise), the first step whose loss differs, or why it could not be compared."""
    rows = []
    for name in sorted(set(ref) | set(cand)):
        a, b = ref.get(name), cand.get(name)
        row = {"preset": name}
        if a is None:
            row["status"] = "new"  # a preset the reference commit does not have
        elif b is None:
            row["status"] = "removed"
        elif "error" in a or "error" in b:
            row["status"] = "error"
            row["reference_error"], row["candidate_error"] = a.get("error"), b.get("error")
        elif a["losses"] == b["losses"] and a["val_loss"] == b["val_loss"]:
            row["status"] = "equal"
        else:
            diff = next((i for i, (x, y) in enumerate(zip(a["losses"], b["losses"])) if x != y), None)
            row["status"] = "differs"
            row["first_step"] = None if diff is None else diff + 1
            row["max_abs_diff"] = max((abs(x - y) for x, y in zip(a["losses"], b["losses"])), default=None)
            row["val_loss"] = [a["val_loss"], b["val_loss"]]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", choices=["compare", "record"], default="compare")
    ap.add_argument("--ref", help="reference commit (compare mode)")
    ap.add_argument("--ref-losses", default=None, help="a file written by `record --out` at the reference commit, instead of --ref")
    ap.add_argument("--candidate", default=None, help="candidate commit; default: the working tree")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--presets", default=None, help="comma-separated preset names; default: every preset in configs/")
    ap.add_argument("--config-dir", default=str(REPO / "configs"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "loss_compare.json"))
    args = ap.parse_args()
    config_dir = Path(args.config_dir)
    presets = args.presets.split(",") if args.presets else None
    if args.mode == "record":
        names = presets or sorted(p.stem for p in config_dir.glob("*.json"))
        result = {"steps": args.steps, "presets": record(names, args.steps, config_dir)}
        Path(args.out).write_text(json.dumps(result, indent=1))
        return
    if not args.ref and not args.ref_losses:
        ap.error("compare needs --ref COMMIT or --ref-losses FILE")
    with tempfile.TemporaryDirectory() as tmp:
        if args.ref_losses:  # a recording made earlier (`record --out FILE` at the reference commit)
            ref = json.loads(Path(args.ref_losses).read_text())["presets"]
            args.ref = args.ref or args.ref_losses
        else:
            ref = record_at(args.ref, presets, args.steps, Path(tmp) / "ref.json")
        cand_all = record_at(args.candidate, presets, args.steps, Path(tmp) / "cand.json")
    rows = compare(ref, cand_all)
    print(f"\n| preset | {args.ref} vs {args.candidate or 'working tree'} ({args.steps} steps, CPU) |")
    print("|---|---|")
    for r in rows:
        detail = r["status"]
        if r["status"] == "differs":
            detail += f" from step {r['first_step']} (max |Δloss| {r['max_abs_diff']:.3g}, val {r['val_loss'][0]} -> {r['val_loss'][1]})"
        elif r["status"] == "error":
            detail += f": ref {r['reference_error']}; candidate {r['candidate_error']}"
        print(f"| {r['preset']} | {detail} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ref": args.ref, "candidate": args.candidate or "working tree", "steps": args.steps,
                               "rows": rows, "reference": ref, "candidate_losses": cand_all}, indent=1))
    print(f"wrote {out}")
    sys.exit(0 if all(r["status"] in ("equal", "new") for r in rows) else 1)


if __name__ == "__main__":
    main()

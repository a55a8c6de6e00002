"""Does the forge loss help? `lmforge compare --recipe forge`, plus the forge terms of each final model on val.

The training, the table and the plots are `lmforge compare`'s (configs/compare/forge.json: VGT + forge, VGT +
plain CE, a GPT of about the same size, and with --with-seed-peak the seed's controller 1 -> 30 -> 1). This
script adds what only the forge recipe needs: RMS(h) and 1 − cos(h, emb(target)) of every final model on the
same val batches (did the regularizers move h compared with the runs that never saw them?), and a plot of α and
each term over the forge run.

usage: python bench/forge_compare.py [--steps 300] [--seeds 1337] [--with-seed-peak] [--out-dir bench/results]
Writes forge_compare.json and forge_terms.png to --out-dir; compare's report goes to runs/compare/forge/
(finished runs there are reused).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lmforge.compare import load_spec, run_compare  # noqa: E402
from lmforge.compare.spec import Budget  # noqa: E402
from lmforge.data import build_val_batches  # noqa: E402
from lmforge.inference import load_run  # noqa: E402
from lmforge.objectives import compute_forge_loss  # noqa: E402
from lmforge.training.metrics import read_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED_PEAK_RUN = "vgt_forge_seed_peak"


@torch.no_grad()
def forge_terms_on_val(loaded) -> dict[str, float]:
    """RMS(h) and 1 − cos(h, emb(target)) of the final model on the val batches: did the regularizers move h
    compared with the runs that never saw them? (α = 0, so the loss is plain CE; only the terms are read.)"""
    p, model = loaded.preset, loaded.model
    seq = p.data.seq_length or p.model.block_size
    batches = build_val_batches(p.data, loaded.tokenizer, p.train.batch_size, seq, p.train.eval_batches)
    sums = {"val_h_norm": 0.0, "val_cos_loss": 0.0}
    for batch in batches:
        out = model(batch["input_ids"])
        _, m = compute_forge_loss(out.logits, batch["labels"], out.hidden_states, model.get_input_embeddings(), out.logits.size(-1), 0.0)
        sums["val_h_norm"] += m["h_norm"].item() / len(batches)
        sums["val_cos_loss"] += m["cos_loss"].item() / len(batches)
    return sums


def plot_terms(metrics_path: Path, out: Path, h_norm_weight: float, cos_weight: float) -> None:
    rows = [r for r in read_metrics(metrics_path.parent) if "loss" in r]
    steps = [r["step"] for r in rows]
    fig, (ax_a, ax_l, ax_r) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    ax_a.plot(steps, [r["alpha"] for r in rows], color="k")
    ax_a.set_ylabel("α (forge controller)")
    ax_l.plot(steps, [r["loss"] for r in rows], label="total loss", lw=1)
    ax_l.plot(steps, [r["ce"] for r in rows], label="cross-entropy", lw=1)
    ax_l.plot(steps, [r["alpha"] * h_norm_weight * r["h_norm"] for r in rows], label=f"α·{h_norm_weight}·RMS(h)", lw=1)
    ax_l.plot(steps, [r["alpha"] * cos_weight * r["cos_loss"] for r in rows], label=f"α·{cos_weight}·(1−cos)", lw=1)
    ax_l.set_ylabel("nats (train)")
    ax_l.legend()
    ax_r.plot(steps, [r["h_norm"] for r in rows], label="RMS(h)", lw=1)
    ax_r.plot(steps, [r["cos_loss"] for r in rows], label="1 − cos(h, emb(target))", lw=1)
    ax_r.set_ylabel("unweighted term")
    ax_r.set_xlabel("step")
    ax_r.legend()
    fig.suptitle("Forge-VGT on WikiText-2 (char): α and each loss term")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the spec's 300)")
    parser.add_argument("--seeds", default=None, help="comma-separated train.seed/data.seed (default: the spec's 1337)")
    parser.add_argument("--with-seed-peak", action="store_true", help="also train VGT + forge with the seed's controller (α 1 -> 30 -> 1)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    os.chdir(REPO)  # preset data paths are relative to the repo root

    spec = load_spec("forge")
    update = {"runs": [r for r in spec.runs if args.with_seed_peak or r.name != SEED_PEAK_RUN]}
    if args.steps:
        update["budget"] = Budget(kind="steps", value=args.steps)
    if args.seeds:
        update["seeds"] = [int(x) for x in args.seeds.split(",")]
    result = run_compare(spec.model_copy(update=update), Path("runs") / "compare" / "forge")
    terms = {}
    for outcome in result.outcomes:
        if outcome.status != "failed":
            terms[f"{outcome.planned.name}_s{outcome.planned.seed}"] = forge_terms_on_val(load_run(outcome.run_dir))
    forge_run = next(o.run_dir for o in result.outcomes if o.planned.name == "vgt_forge" and o.status != "failed")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_run(forge_run).preset.objective
    plot_terms(forge_run / "metrics.jsonl", args.out_dir / "forge_terms.png", cfg.h_norm_weight, cfg.cos_weight)
    compare = json.loads(result.files["json"].read_text())
    (args.out_dir / "forge_compare.json").write_text(json.dumps({**compare, "val_forge_terms": terms}, indent=2) + "\n")
    print(result.table)
    print(f"\n{'run':<28}{'RMS(h) on val':>15}{'1-cos on val':>14}")
    for name, t in terms.items():
        print(f"{name:<28}{t['val_h_norm']:>15.3f}{t['val_cos_loss']:>14.3f}")
    print(f"wrote {args.out_dir / 'forge_compare.json'}, {args.out_dir / 'forge_terms.png'} and {result.files['html']}")


if __name__ == "__main__":
    main()

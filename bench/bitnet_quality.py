"""What does BitNet b1.58 cost in quality, speed and size? `lmforge compare --recipe bitnet`, plus the packed export.

The training and the table are `lmforge compare`'s (configs/compare/bitnet.json: bitnet_shakespeare_cpu's GPT
trained fp32, no layer swap, nanoGPT's schedule, and with the bitlinear swap and the paper's two-stage schedule,
at two peak LRs each, 500 steps, same seed and data order). This script adds what only BitNet needs: the best
b1.58 run exported packed (`lmforge export --format ternary`), its size against fp16, and the largest |logit|
difference between the packed model and the fake-quantized one on a val batch.

usage: python bench/bitnet_quality.py [--steps 500] [--out-dir bench/results]
Writes bitnet_quality.json to --out-dir; compare's report goes to runs/compare/bitnet/ (finished runs are reused).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from lmforge.compare import load_spec, run_compare
from lmforge.compare.spec import Budget
from lmforge.data import build_val_batches
from lmforge.export.ternary_export import export_ternary, load_ternary
from lmforge.inference import load_run
from lmforge.training.checkpoint import unique_state_dict

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def packed_check(run_dir: Path, fp_run_dir: Path, out: Path) -> dict[str, Any]:
    """Export the b1.58 run packed, reload it, and compare its logits and val loss with the fake-quant model."""
    loaded = load_run(run_dir)
    sizes = export_ternary(loaded.model, loaded.preset, loaded.tokenizer, out)
    packed = load_ternary(out).model
    p = loaded.preset
    batch = build_val_batches(p.data, loaded.tokenizer, p.train.batch_size, p.data.seq_length or p.model.block_size, 1)[0]
    ref, got = loaded.model(batch["input_ids"]).logits, packed(batch["input_ids"]).logits
    fp_model = load_run(fp_run_dir).model
    fp_fp16 = 2 * sum(t.numel() for t in unique_state_dict(fp_model).values() if t.is_floating_point())
    return {**sizes, "max_abs_logit_diff_packed_vs_fake_quant": (ref - got).abs().max().item(),
            "fp_model_fp16_bytes": fp_fp16, "file_ratio_vs_fp_model_fp16": fp_fp16 / sizes["file_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the spec's 500)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    os.chdir(REPO)  # preset data paths are relative to the repo root

    spec = load_spec("bitnet")
    if args.steps:
        spec = spec.model_copy(update={"budget": Budget(kind="steps", value=args.steps)})
    out = Path("runs") / "compare" / "bitnet"  # relative: the JSON it writes names run dirs from the repo root
    result = run_compare(spec, out)
    groups = {g.name: g for g in result.groups if g.summaries}
    best_fp = min((n for n in groups if n.startswith("fp32")), key=lambda n: groups[n].summaries[0].val_loss)
    best = min((n for n in groups if n.startswith("b158")), key=lambda n: groups[n].summaries[0].val_loss)
    fp, bit = groups[best_fp].summaries[0], groups[best].summaries[0]
    size = packed_check(Path(bit.run_dir), Path(fp.run_dir), out / "b158_packed")
    summary: dict[str, Any] = {
        **json.loads(result.files["json"].read_text()),
        "best_fp32": best_fp, "best_b158": best,
        "val_loss_gap_nats": bit.val_loss - fp.val_loss, "val_loss_gap_relative": bit.val_loss / fp.val_loss - 1,
        "b158_tokens_per_sec_over_fp": bit.tokens_per_sec / fp.tokens_per_sec,
        "packed_export": size, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bitnet_quality.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(result.table)
    print(f"\nval loss gap {best} - {best_fp}: {summary['val_loss_gap_nats']:+.4f} nats "
          f"({100 * summary['val_loss_gap_relative']:+.1f}%); b1.58 speed: {summary['b158_tokens_per_sec_over_fp']:.2f}x fp32")
    print(f"packed export: ternary layers {size['ternary_params']:,} weights -> {size['ternary_packed_bytes']:,} bytes "
          f"vs {size['ternary_fp16_bytes']:,} fp16 ({size['ternary_ratio_vs_fp16']:.2f}x); whole file {size['file_bytes']:,} bytes "
          f"(rest {size['rest_params']:,} params in {size['rest_dtype']}) vs {size['model_fp16_bytes']:,} fp16 "
          f"({size['model_ratio_vs_fp16']:.2f}x; the fp32 run's model in fp16: {size['fp_model_fp16_bytes']:,} bytes, "
          f"{size['file_ratio_vs_fp_model_fp16']:.2f}x); max |logit diff| packed vs fake-quant "
          f"{size['max_abs_logit_diff_packed_vs_fake_quant']:.2e}")
    print(f"wrote {args.out_dir / 'bitnet_quality.json'}")


if __name__ == "__main__":
    main()

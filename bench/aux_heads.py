"""Do seed 002's auxiliary heads help? `lmforge compare --recipe aux_heads`, then value-head reranking at inference.

Training, the table and the plots are `lmforge compare`'s (configs/compare/aux_heads.json: plain CE, each head
alone, all four; equal training FLOPs, the heads' compute counted, two seeds; base preset
configs/aux_general_cpu.json, written in seed 002's key names). Then `generate --rerank`'s code on held-out text:
for each of --prompts prompts (the first --prompt-tokens tokens of val rows), the value run samples --candidates
continuations of --new-tokens tokens; three picks are scored by a larger reference run (trained here on the same
data, --ref-steps steps): the first sample (plain sampling), the one of lowest own NLL (`--rerank nll`) and the
one the value head expects to continue most easily (`--rerank value`); the best of the candidates under the
reference itself is the ceiling.

usage: python bench/aux_heads.py [--seeds 1,2] [--prompts 64] [--candidates 4] [--ref-steps 1500]
Writes bench/results/aux_heads.json; compare's report goes to runs/compare/aux_heads/ (finished runs are reused).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import lmforge
from lmforge.compare import load_spec, run_compare
from lmforge.data import build_val_batches
from lmforge.generation import SamplingConfig
from lmforge.generation.rerank import candidate_scores, rerank_generate
from lmforge.inference import load_run

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {"model.n_embd": 256, "model.n_layer": 6, "model.n_head": 8}


@torch.no_grad()
def reference_nll(model, prompt: list[int], continuation: list[int]) -> float:
    """Mean NLL per token of `continuation` after `prompt` under the reference model."""
    ids = torch.tensor([prompt + continuation])
    logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    return float(F.cross_entropy(logits, torch.tensor(continuation)))


def rerank_study(value_run: Path, reference_run: Path, n_prompts: int, prompt_tokens: int, new_tokens: int, k: int) -> dict:
    run, ref = load_run(value_run), load_run(reference_run)
    p = run.preset
    batches = build_val_batches(p.data, run.tokenizer, 16, p.data.seq_length or p.model.block_size, math.ceil(n_prompts / 16))
    prompts = [row[:prompt_tokens].tolist() for b in batches for row in b["input_ids"]][:n_prompts]
    text = run.tokenizer.decode(prompts[0])
    if ref.tokenizer.encode(text) != run.tokenizer.encode(text):  # both BPEs are trained on the same split: same ids
        raise SystemExit("the reference run's tokenizer differs from the value run's; their NLLs would not compare")
    sampling = SamplingConfig(temperature=1.0, top_k=50, seed=0)
    picks: dict[str, list[float]] = {"plain": [], "rerank_nll": [], "rerank_value": [], "best_of_k_under_reference": []}
    for prompt in prompts:
        result = rerank_generate(run.model, prompt, new_tokens, k, "value", sampling)
        own = candidate_scores(run.model, prompt, result.candidates, "nll")
        under_ref = [reference_nll(ref.model, prompt, c) if c else float("inf") for c in result.candidates]
        picks["plain"].append(under_ref[0])
        picks["rerank_nll"].append(under_ref[min(range(k), key=own.__getitem__)])
        picks["rerank_value"].append(under_ref[min(range(k), key=result.scores.__getitem__)])
        picks["best_of_k_under_reference"].append(min(under_ref))
    return {name: {"mean_ref_nll": statistics.fmean(v), "stderr": statistics.stdev(v) / math.sqrt(len(v))}
            for name, v in picks.items()} | {"prompts": len(prompts), "candidates": k, "new_tokens": new_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the spec's 1,2)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--ref-steps", type=int, default=1500, help="steps of the larger reference run (6 x 256)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    os.chdir(REPO)  # preset data paths are relative to the repo root

    spec = load_spec("aux_heads")
    if args.seeds:
        spec = spec.model_copy(update={"seeds": [int(s) for s in args.seeds.split(",")]})
    out = Path("runs") / "compare" / "aux_heads"
    result = run_compare(spec, out)
    if result.interrupted:  # Ctrl-C: what finished is reported; the same command resumes
        raise SystemExit(130)
    value_run = next(o.run_dir for o in result.outcomes if o.planned.name == "value" and o.status != "failed")
    reference_run = out / "reference_6x256"
    reference_run.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the value run's BPE (trained on its seed's draw of
        shutil.copy(value_run / name, reference_run / name)  # the text), so both models score the same ids
    lmforge.train("aux_general_cpu", run_dir=reference_run,
                  overrides={**REFERENCE, "train.max_steps": args.ref_steps, "train.progress_bar": False})
    study = rerank_study(value_run, reference_run, args.prompts, args.prompt_tokens, args.new_tokens, args.candidates)
    ref_val = load_run(reference_run)
    summary = json.loads(result.files["json"].read_text())
    summary["rerank"] = study | {"value_run": str(value_run), "reference_run": str(reference_run),
                                 "reference": REFERENCE | {"train.max_steps": args.ref_steps},
                                 "reference_params": sum(t.numel() for t in ref_val.model.parameters())}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "aux_heads.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(result.table)
    print(f"\nreranking {study['prompts']} val prompts, {args.candidates} candidates of {args.new_tokens} tokens; "
          "mean NLL per token under the 6 x 256 reference (lower is better):")
    for name in ("plain", "rerank_nll", "rerank_value", "best_of_k_under_reference"):
        print(f"  {name:<28}{study[name]['mean_ref_nll']:.4f} ± {study[name]['stderr']:.4f}")
    print(f"wrote {args.out_dir / 'aux_heads.json'} and {result.files['html']}")


if __name__ == "__main__":
    main()

"""StackWise part 2 measured through `lmforge train`: training modes at equal FLOPs, QLoRA vs full fine-tuning, QAT.

modes: `lmforge compare --recipe layerwise` (configs/compare/layerwise.json): shakespeare_char_cpu_best's model
       (4 x 128, untied head) on tiny shakespeare, every run given the same training-FLOP budget (lmforge counts a
       stage plan's shallow, frozen and cached stages at what they cost, lmforge/run_shape.py): end-to-end (cosine
       and WSD), layer-wise, block-wise (2 layers), fusion (2 layers, backbone trainable), zero- and one-layer
       progressive (WSD), MIDAS. Reports the final val loss (whole val split), steps, FLOPs, wall time.
qlora: pretrain shakespeare_char_cpu_best, then fine-tune it on the story books with NF4 + LoRA
       (configs/stackwise_qlora_cpu.json) and with a full fine-tune; val loss on the stories, trainable
       parameters, and the bytes of parameters + gradients + AdamW state.
qat:   shakespeare_char_cpu_best trained in fp32 and with each fake-quant swap (fp8 e4m3 per row, fp8 e5m2 per
       tensor, MXFP4, NVFP4): the val-loss gap; `--bf16` adds a bf16 autocast run (slow on CPUs without AMX).

usage: python bench/stackwise.py [--parts modes,qlora,qat] [--bf16] [--out bench/results/stackwise.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmforge.assembly import build_run_model  # noqa: E402
from lmforge.config import load_preset  # noqa: E402

QUIET = ["--train.progress_bar", "false", "--samples.max_new_tokens", "1", "--train.legacy_weights_file", "null",
         "--train.peak_flops", "1e12"]
QAT = {
    "fp32": [],
    "fp8_e4m3_row": ["--layer_swaps", '[{"name": "fp8", "format": "e4m3", "granularity": "row"}]'],
    "fp8_e5m2_tensor": ["--layer_swaps", '[{"name": "fp8", "format": "e5m2", "granularity": "tensor"}]'],
    "mxfp4": ["--layer_swaps", '[{"name": "fp4", "format": "mx"}]'],
    "nvfp4": ["--layer_swaps", '[{"name": "fp4", "format": "nvfp4"}]'],
}


def train(preset: str, run_dir: Path, overrides: list[str]) -> dict:
    """One `lmforge train` run; its final val row, steps and wall time."""
    cmd = [sys.executable, "-m", "lmforge", "train", preset, "--run-dir", str(run_dir), *QUIET, *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_loss" in r]
    result = json.loads((run_dir / "result.json").read_text())
    return {"val_loss": vals[-1]["val_loss"], "steps": result["steps"], "tokens": result["tokens"],
            "train_seconds": round(result["elapsed"], 1), "wall_seconds": round(wall, 1)}


def training_bytes(preset_path: str, overrides: dict | None = None) -> dict:
    """Parameters, gradients and AdamW moments in bytes (fp32), with frozen weights and quantized buffers counted once."""
    raw = json.loads(Path(preset_path).read_text())
    raw.update(overrides or {})
    raw["train"].pop("init_from", None)
    raw["model"]["vocab_size"] = 65
    preset = load_preset(raw)
    with torch.device("meta"):
        model = build_run_model(preset)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if b.dtype != torch.float32 or b.numel() > 1)
    return {"trainable_params": trainable, "bytes": trainable * 16 + frozen + buffers, "weights_bytes": trainable * 4 + frozen + buffers}


def part_modes(args, tmp: Path) -> list[dict]:
    """`lmforge compare --recipe layerwise` (configs/compare/layerwise.json: the runs and the FLOP budget)."""
    out = REPO / "runs" / "compare" / "layerwise"  # the compare default: a second call reuses the finished runs
    cmd = [sys.executable, "-m", "lmforge", "compare", "--recipe", "layerwise", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return [{"mode": "compare", "error": proc.stderr[-3000:]}]
    print(proc.stdout, flush=True)
    rows = []
    for name, seeds in json.loads((out / "compare.json").read_text())["runs"].items():
        s = seeds[0]
        rows.append({"mode": name, "val_loss": s.get("val_loss"), "best_val_loss": s.get("best_val_loss"),
                     "steps": s.get("steps"), "tokens": s.get("tokens"), "train_flops": s.get("flops"),
                     "train_seconds": s.get("wall_seconds"), "tokens_per_sec": s.get("tokens_per_sec")})
    return rows


def part_qlora(args, tmp: Path) -> list[dict]:
    pretrained = tmp / "pretrained"
    pre = train("configs/shakespeare_char_cpu_best.json", pretrained, ["--train.eval_interval", "100000", "--train.save_interval", "100000"])
    rows = [{"run": "pretrain (shakespeare)", **pre}]
    zero_shot = subprocess.run([sys.executable, "-m", "lmforge", "eval", "--run-dir", str(pretrained), "--data",
                                "configs/stackwise_qlora_cpu.json"], capture_output=True, text=True, cwd=REPO)
    if zero_shot.returncode == 0:
        evaluated = json.loads(next(pretrained.glob("eval_*.json")).read_text())
        rows.append({"run": "no fine-tune (stories val)", "val_loss": evaluated["val_loss"], "steps": 0})
    common = ["--train.init_from", str(pretrained), "--data.tokenizer.path", str(pretrained / "vocab.json"),
              "--train.eval_interval", "100000", "--train.save_interval", "100000"]
    runs = {"nf4_lora r8": [], "full fine-tune": ["--layer_swaps", "[]", "--train.lr", "0.001", "--train.weight_decay", "0.1"]}
    for name, overrides in runs.items():
        row = {"run": name, **train("configs/stackwise_qlora_cpu.json", tmp / name.replace(" ", "_"), [*common, *overrides])}
        row.update(training_bytes(str(REPO / "configs" / "stackwise_qlora_cpu.json"), {"layer_swaps": []} if overrides else None))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def part_qat(args, tmp: Path) -> list[dict]:
    runs = dict(QAT)
    if args.bf16:
        runs["bf16"] = ["--train.precision", "bf16"]
    rows = []
    for name, overrides in runs.items():
        row = {"format": name, **train("configs/shakespeare_char_cpu_best.json", tmp / name,
                                       [*overrides, "--train.eval_interval", "100000", "--train.save_interval", "100000"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["format"] == "fp32" and "val_loss" in r), None)
    for r in rows:
        if base and "val_loss" in r:
            r["gap_vs_fp32"] = round(r["val_loss"] - base["val_loss"], 4)
    return rows


def table(title: str, rows: list[dict], keys: list[str]) -> None:
    print(f"\n{title}")
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, r.get("error", "")[:60])) for k in keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="modes,qlora,qat")
    ap.add_argument("--bf16", action="store_true", help="qat: also a bf16 autocast run")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "stackwise.json"))
    args = ap.parse_args()
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts.split(","):
            rows = {"modes": part_modes, "qlora": part_qlora, "qat": part_qat}[part](args, Path(tmp))
            report[part] = rows
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
    if "modes" in report:
        table("training modes at equal FLOPs (configs/compare/layerwise.json)", report["modes"],
              ["mode", "val_loss", "steps", "train_flops", "train_seconds"])
    if "qlora" in report:
        table("fine-tuning on the story books", report["qlora"], ["run", "val_loss", "steps", "trainable_params", "bytes", "train_seconds"])
    if "qat" in report:
        table("quantization-aware training (shakespeare_char_cpu_best)", report["qat"], ["format", "val_loss", "gap_vs_fp32", "train_seconds"])
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

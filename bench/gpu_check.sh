#!/usr/bin/env bash
# The GPU checks CI cannot run, through `lmforge train` itself, in under 10 minutes on one or more CUDA GPUs:
#   1. bf16 vs fp32 losses of the same 40 steps (they must agree to < 0.05);
#   2. torch.compile: the wall time with compilation and the tokens/s it buys;
#   3. DDP and FSDP runs over NCCL (when 2+ GPUs are visible), the FSDP one resumed from its sharded checkpoint;
#   4. tokens/s and MFU (against the data-sheet peak) on nanoGPT's 10.65M shakespeare_char model.
# usage: bash bench/gpu_check.sh [OUT_DIR]    (writes OUT_DIR/gpu_check.json and the run dirs; default runs/gpu_check)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
TEXT=${LMFORGE_TEXT:-../shared/data/tinyshakespeare.txt}  # the presets' data path is relative to this repo's parent
if [ ! -f "$TEXT" ]; then echo "gpu_check: no $TEXT; set LMFORGE_TEXT to a copy of tiny shakespeare" >&2; exit 1; fi
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then echo "gpu_check: no CUDA device visible" >&2; exit 1; fi
$PY -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count(), 'torch', torch.__version__)"

COMMON=(--data.sources "[{\"type\": \"text\", \"path\": \"$TEXT\"}]"
        --train.log_interval 10 --train.eval_interval 1000000 --train.eval_batches 4 --train.save_interval 1000000
        --train.legacy_weights_file null --train.progress_bar false --samples.max_new_tokens 1)
train() {  # train RUN_NAME [overrides...]: one lmforge run of the 10.65M preset, its stderr kept beside it
  local name=$1; shift
  $PY -m lmforge train shakespeare_char_10m --run-dir "$OUT/$name" "${COMMON[@]}" "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "gpu_check: $name failed:"; tail -20 "$OUT/$name.log"; exit 1; }
}
torchrun_train() {
  local name=$1; shift
  $PY -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m lmforge train shakespeare_char_10m \
    --run-dir "$OUT/$name" "${COMMON[@]}" "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "gpu_check: $name failed:"; tail -20 "$OUT/$name.log"; exit 1; }
}

rm -rf "$OUT"/run_*
train run_fp32 --train.max_steps 40 --train.precision fp32 --model.dropout 0.0
train run_bf16 --train.max_steps 40 --train.precision bf16 --model.dropout 0.0
train run_eager --train.max_steps 300 --train.precision bf16
start=$(date +%s); train run_compiled --train.max_steps 300 --train.precision bf16 --train.compile true; compiled_wall=$(( $(date +%s) - start ))
if [ "$NGPU" -ge 2 ]; then
  torchrun_train run_ddp --train.max_steps 60 --train.precision bf16
  torchrun_train run_fsdp --train.max_steps 30 --train.precision bf16 --train.parallel fsdp --train.save_interval 30
  torchrun_train run_fsdp --train.max_steps 60 --train.precision bf16 --train.parallel fsdp
fi

$PY - "$OUT" "$NGPU" "$compiled_wall" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, ngpu, compiled_wall = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rows(name):
    path = out / name / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
def steady(name, key):
    vals = [r[key] for r in rows(name) if key in r][3:]
    return statistics.median(vals) if vals else None
fp32 = {r["step"]: r["loss"] for r in rows("run_fp32") if "loss" in r}
bf16 = {r["step"]: r["loss"] for r in rows("run_bf16") if "loss" in r}
report = {
    "gpus": ngpu,
    "bf16_vs_fp32_max_loss_gap": max(abs(fp32[s] - bf16[s]) for s in fp32),
    "eager_bf16": {"tokens_per_sec": steady("run_eager", "tokens_per_sec"), "mfu": steady("run_eager", "mfu")},
    "compiled_bf16": {"tokens_per_sec": steady("run_compiled", "tokens_per_sec"), "mfu": steady("run_compiled", "mfu"),
                      "wall_s_including_compile": compiled_wall},
}
if ngpu >= 2:
    report["ddp"] = {"tokens_per_sec": steady("run_ddp", "tokens_per_sec"), "mfu": steady("run_ddp", "mfu")}
    fsdp = rows("run_fsdp")
    report["fsdp"] = {"tokens_per_sec": steady("run_fsdp", "tokens_per_sec"), "mfu": steady("run_fsdp", "mfu"),
                      "steps": sorted({r["step"] for r in fsdp if "loss" in r})[-1:],
                      "resumed": "resumed from" in (out / "run_fsdp.log").read_text()}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
assert report["bf16_vs_fp32_max_loss_gap"] < 0.05, "bf16 and fp32 losses disagree"
EOF

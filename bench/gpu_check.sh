#!/usr/bin/env bash
# The GPU checks CI cannot run, through `lmforge train` itself, in under 10 minutes on one or more CUDA GPUs:
#   1. bf16 vs fp32 losses of the same 40 steps (they must agree to < 0.05);
#   2. torch.compile: the wall time with compilation and the tokens/s it buys;
#   3. FSDP over NCCL on every visible GPU (one process on a single GPU), resumed from its sharded DCP checkpoint;
#      DDP on 2+ GPUs (recorded as skipped on one);
#   4. tokens/s and MFU (against the data-sheet peak) on nanoGPT's 10.65M shakespeare_char model;
#   5. which kernels run: TF32 on, and the SDPA backend a bf16 causal attention call takes (flash expected);
#   6. the step guard's cost (bench/throughput.py --guard-cost) and the checkpoint stall, sync vs async
#      (bench/checkpoint_stall.py), where the guard's host sync and the background write matter.
# usage: bash bench/gpu_check.sh [OUT_DIR]    (writes OUT_DIR/gpu_check.json and the run dirs; default runs/gpu_check)
# Data: $LMFORGE_TEXT, else ../shared/data/tinyshakespeare.txt (this repo's layout), else shared/data/ inside the
# repo (where a copy of the working tree carries the shared folder).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
TEXT=${LMFORGE_TEXT:-}
for candidate in ../shared/data/tinyshakespeare.txt shared/data/tinyshakespeare.txt; do
  if [ -z "$TEXT" ] && [ -f "$candidate" ]; then TEXT=$candidate; fi
done
if [ -z "$TEXT" ] || [ ! -f "$TEXT" ]; then echo "gpu_check: no tiny shakespeare found; set LMFORGE_TEXT to a copy" >&2; exit 1; fi
export LMFORGE_TEXT=$(cd "$(dirname "$TEXT")" && pwd)/$(basename "$TEXT")  # the bench scripts read it too
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
if [ "$NGPU" -ge 2 ]; then torchrun_train run_ddp --train.max_steps 60 --train.precision bf16; fi
torchrun_train run_fsdp --train.max_steps 30 --train.precision bf16 --train.parallel fsdp --train.save_interval 30
torchrun_train run_fsdp --train.max_steps 60 --train.precision bf16 --train.parallel fsdp
$PY bench/throughput.py --guard-cost --sizes medium --repeats 2 --out "$OUT/step_guard_cost.json" > "$OUT/guard_cost.log" 2>&1 \
  || { echo "gpu_check: guard cost failed:"; tail -20 "$OUT/guard_cost.log"; exit 1; }
$PY bench/checkpoint_stall.py --saves 3 --out "$OUT/checkpoint_stall.json" > "$OUT/checkpoint_stall.log" 2>&1 \
  || { echo "gpu_check: checkpoint stall failed:"; tail -20 "$OUT/checkpoint_stall.log"; exit 1; }

$PY - "$OUT" "$NGPU" "$compiled_wall" <<'EOF'
import json, statistics, sys
from pathlib import Path
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from lmforge.runtime import setup_runtime
out, ngpu, compiled_wall = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
setup_runtime("cuda", "bf16")  # what a run sets: TF32 for fp32 matmuls
q = torch.randn(64, 6, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    F.scaled_dot_product_attention(q, q, q, is_causal=True, dropout_p=0.2).sum().backward()
    torch.cuda.synchronize()
attention_kernels = sorted({e.key for e in prof.key_averages() if "flash" in e.key.lower() or "attention" in e.key.lower()
                            or "fmha" in e.key.lower() or "efficient" in e.key.lower()})
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
    "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(),
    "sdpa_kernels_bf16_causal_dropout": attention_kernels,
    "flash_attention_ran": any("flash" in k.lower() for k in attention_kernels),
    "bf16_vs_fp32_max_loss_gap": max(abs(fp32[s] - bf16[s]) for s in fp32),
    "eager_bf16": {"tokens_per_sec": steady("run_eager", "tokens_per_sec"), "mfu": steady("run_eager", "mfu")},
    "compiled_bf16": {"tokens_per_sec": steady("run_compiled", "tokens_per_sec"), "mfu": steady("run_compiled", "mfu"),
                      "wall_s_including_compile": compiled_wall},
}
report["ddp"] = ({"tokens_per_sec": steady("run_ddp", "tokens_per_sec"), "mfu": steady("run_ddp", "mfu")} if ngpu >= 2
                 else "skipped (1 GPU)")
fsdp = rows("run_fsdp")
report["fsdp"] = {"processes": ngpu, "tokens_per_sec": steady("run_fsdp", "tokens_per_sec"), "mfu": steady("run_fsdp", "mfu"),
                  "last_step": max((r["step"] for r in fsdp if "loss" in r), default=None),
                  "resumed": "resumed from" in (out / "run_fsdp.log").read_text(),
                  "dcp_shards": sorted(p.name for p in (out / "run_fsdp" / "checkpoints" / "lm_current" / "shards").glob("*"))}
report["step_guard_cost"] = json.loads((out / "step_guard_cost.json").read_text())["rows"]
report["checkpoint_stall"] = json.loads((out / "checkpoint_stall.json").read_text())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
assert report["bf16_vs_fp32_max_loss_gap"] < 0.05, "bf16 and fp32 losses disagree"
assert report["fsdp"]["resumed"] and report["fsdp"]["last_step"] == 60, "the FSDP run did not resume to step 60"
EOF

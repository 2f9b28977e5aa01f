#!/usr/bin/env bash
# One command on the GPU machine: random-weight checkpoints of the SmolLM2-135M and Llama-3.2-1B shapes
# (../shared/bench/make_ckpt.py), then each workload with PyTorch + PEFT (../shared/bench/torch_lora_train.py,
# fp32 eager and sdpa) and with this library (bench/model_bench.ts, f32), in that order per workload, and
# bench/results/model_h200.json combining both sides' JSON lines with the machine and date.
#
# Run from the project root after `source .device/boot.sh` (which links .device/shared as ../shared; copy
# ../shared/bench/*.py into .device/shared/bench/ first). Writes into $OUT (default bench/results).
# BUDGET_S (default 420) stops starting new runs once that many seconds have passed, so a slow workload
# cannot eat the whole device call; every finished line is already on disk.
set -u
OUT="${OUT:-bench/results}"
BUDGET_S="${BUDGET_S:-420}"
CK="${CK:-/tmp/ckpt}"
mkdir -p "$OUT" "$CK"
LINES="$OUT/model_h200.jsonl"
: > "$LINES"
LOG="$OUT/model_h200.log"
start=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - start))); }

echo "== checkpoints ($SECONDS s)" | tee -a "$LOG"
timeout 150 python3 ../shared/bench/make_ckpt.py "$CK" smollm2-135m llama-3.2-1b --threads 16 >> "$LINES" 2>> "$LOG"

# name batch seq ours_steps ours_warmup
WORKLOADS=(
  "smollm2-135m 8 512 20 3"
  "smollm2-135m 1 64 20 3"
  "llama-3.2-1b 4 512 20 3"
  "smollm2-135m 1 2048 20 3"
)
for w in "${WORKLOADS[@]}"; do
  read -r name b t steps warm <<< "$w"
  if [ "$(left)" -lt 40 ]; then echo "== skip $name $b x $t: budget" | tee -a "$LOG"; continue; fi
  echo "== torch $name $b x $t ($SECONDS s)" | tee -a "$LOG"
  timeout "$(( $(left) < 120 ? $(left) : 120 ))" python3 ../shared/bench/torch_lora_train.py "$CK/$name" \
    --mode fp32 --attn eager,sdpa --batch "$b" --seq "$t" --steps 20 --warmup 3 --gen 0 >> "$LINES" 2>> "$LOG"
  if [ "$(left)" -lt 30 ]; then echo "== skip ours $name $b x $t: budget" | tee -a "$LOG"; continue; fi
  echo "== ours $name $b x $t ($SECONDS s)" | tee -a "$LOG"
  timeout "$(( $(left) < 200 ? $(left) : 200 ))" deno run -A bench/model_bench.ts --ckpt "$CK/$name" --batch "$b" \
    --seq "$t" --steps "$steps" --warmup "$warm" --log-every "$steps" --opt-reps 3 --profile >> "$LINES" 2>> "$LOG"
done
echo "== done ($SECONDS s)" | tee -a "$LOG"

python3 - "$LINES" "$OUT/model_h200.json" <<'PY'
import json, subprocess, sys, datetime, platform
lines = []
for l in open(sys.argv[1]):
    l = l.strip()
    if l.startswith("{"):
        try:
            lines.append(json.loads(l))
        except ValueError:
            pass
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:
        return f"unavailable: {e}"
workloads = {}
for r in lines:
    if r.get("kind") != "train":
        continue
    key = f"{r.get('model')} B{r.get('batch')} x T{r.get('seq')}"
    impl = r.get("impl") + ("" if r.get("impl") != "torch" else f" fp32 {r.get('attn')}")
    workloads.setdefault(key, {})[impl] = r
summary = []
for key, impls in workloads.items():
    row = {"workload": key}
    for impl, r in impls.items():
        row[impl] = {k: r.get(k) for k in ("ms_per_step", "tokens_per_s", "first_loss", "final_loss",
                                            "max_memory_allocated", "fwd_ms", "bwd_ms", "adamw_ms", "error")}
    ours, ref = impls.get("lora-webgpu"), impls.get("torch fp32 eager")
    if ours and ref and ours.get("ms_per_step") and ref.get("ms_per_step"):
        row["ours_over_torch_eager"] = round(ours["ms_per_step"] / ref["ms_per_step"], 2)
    summary.append(row)
doc = {
    "machine": {"gpu": sh("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader"),
                "cpu": sh("nproc") + " cores", "host": platform.platform(), "deno": sh("deno --version | head -1")},
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": "bash bench/h200_model.sh (see its header)",
    "summary": summary,
    "workloads": workloads,
    "checkpoints": [r for r in lines if r.get("kind") == "ckpt"],
}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
print(json.dumps(summary, indent=1))
PY

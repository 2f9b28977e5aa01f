#!/usr/bin/env bash
# Host-side measurements on the GPU machine: host microseconds per op (bench/op_overhead.ts) and a V8 CPU
# profile of the SmolLM2-135M-shaped 1 x 64-token LoRA step (after a plain run of the same workload) (bench/model_bench.ts), summarised by self
# time per function (bench/cpuprof_summary.ts). Run after `source .device/boot.sh`; writes into $OUT.
set -u
OUT="${OUT:-bench/results}"
CK="${CK:-/tmp/ckpt}"
mkdir -p "$OUT" "$CK" /tmp/prof
timeout 60 python3 ../shared/bench/make_ckpt.py "$CK" smollm2-135m --threads 16 > "$OUT/host_ckpt.jsonl" 2>&1
timeout 60 deno run -A bench/op_overhead.ts --json > "$OUT/op_overhead_h200.jsonl" 2>&1
timeout 60 python3 ../shared/bench/torch_lora_train.py "$CK/smollm2-135m" --mode fp32 --attn eager --batch 1 --seq 64 \
  --gen 0 > "$OUT/torch_b1t64.jsonl" 2> "$OUT/torch_b1t64.log"
timeout 90 deno run -A bench/model_bench.ts --ckpt "$CK/smollm2-135m" --batch 1 --seq 64 --steps 20 --warmup 3 \
  --log-every 5 --opt-reps 10 > "$OUT/model_b1t64_plain.jsonl" 2> "$OUT/model_b1t64_plain.log"
timeout 120 deno run -A --cpu-prof --cpu-prof-dir=/tmp/prof bench/model_bench.ts --ckpt "$CK/smollm2-135m" \
  --batch 1 --seq 64 --steps 20 --warmup 3 --log-every 5 --opt-reps 3 > "$OUT/host_model_b1t64.jsonl" 2> "$OUT/host_model.log"
deno run -A bench/cpuprof_summary.ts /tmp/prof/*.cpuprofile --top 45 > "$OUT/host_profile_b1t64.txt" 2>&1
cat "$OUT/op_overhead_h200.jsonl" "$OUT/torch_b1t64.jsonl" "$OUT/model_b1t64_plain.jsonl" "$OUT/host_profile_b1t64.txt"

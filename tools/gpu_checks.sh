#!/usr/bin/env bash
# The open issues' GPU checks, one device call each (a call may run 600 s at most):
#
#   tools/gpu_checks.sh gpt2        # issue 15: gpt2_small's step profiled, then beside nanoGPT (~6 min on an H100)
#   tools/gpu_checks.sh attention   # flash attention (pure JAX) beside cuDNN, XLA and the reference, bfloat16 and
#                                   # float32, T = 1k-16k (~2 min; docs/flash_attention.md)
#   tools/gpu_checks.sh translate   # issue 14: translate_multi30k_tiny as shipped (8,000 updates of token batches),
#                                   # seeds 0, 1, 2 side by side (~8 min; RESUME=1 finishes what a deadline stopped)
#
# Run from the device tool with carry [".whl", ".gpu_data", ".h4gpu"]: .whl/ holds the wheels the device lacks
# (ml_collections, sacremoses, tensorboardX), .gpu_data/ the data (multi30k/), .h4gpu/ the GPT-2 bench data
# (gpt2bench/, nanogpt/); tools/make_gpu_carry.sh NANOGPT remakes all three on a fresh checkout. Outputs go to $OUT
# (the device tool's folder; default runs/gpu_checks). GPT2_ARGS: extra flags for the profile (e.g. --only=grad,grad_bfloat16_logits);
# PROFILE_LIMIT: its time limit (s, default 360); BENCH_STEPS (default 8); TFJAX_ARGS: extra tfjax flags for the bench (e.g. --config.model.logits_dtype=bfloat16);
# SEEDS (default 0,1,2), DEADLINE (s, default 480), RESUME=1 and TRANSLATE_ARGS for the translator.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-runs/gpu_checks}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TFJAX_OFFLINE=1
T0=$(date +%s)
if ! python3 -c "import ml_collections, sacremoses, tensorboardX" 2>/dev/null; then
  SITE="$(mktemp -d)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi -L 2>/dev/null || true
case "${1:-}" in
  gpt2)
    timeout "${PROFILE_LIMIT:-360}" python3 tools/gpu_profile_gpt2.py --out="$OUT/gpt2_profile" ${GPT2_ARGS:-} \
      > "$OUT/profile.log" 2>&1
    echo "profile rc=$? at $(( $(date +%s) - T0 )) s" >> "$OUT/profile.log"
    grep -v "^[IW][0-9]" "$OUT/profile.log" | tail -60
    rm -f "$OUT"/gpt2_profile/trace/plugins/profile/*/*.xplane.pb  # large; the Perfetto JSON is kept
    tools/gpu_bench_gpt2.sh .h4gpu/gpt2bench .h4gpu/nanogpt "${BENCH_STEPS:-8}" "$OUT/gpu_gpt2.jsonl" \
      > "$OUT/bench.log" 2>&1
    echo "bench rc=$? at $(( $(date +%s) - T0 )) s"
    tail -6 "$OUT/bench.log"
    ;;
  attention)
    for dtype in bfloat16 float32; do
      impls=reference,xla,flash; [[ "$dtype" == bfloat16 ]] && impls=reference,cudnn,xla,flash
      timeout 240 python3 experiments/bench/attention.py --lengths=1024,4096,16384 --impls="$impls" --dtype="$dtype" \
        --batch=4 --heads=12 --head_dim=64 --rounds=10 --max_temp_gb=60 --out="$OUT/attention.jsonl" 2>&1 \
        | grep -v "^[IW][0-9]"
    done
    ;;
  translate)
    DEADLINE="${DEADLINE:-480}" PREFIX=runs/tiny_gpu_8k LOGS="$OUT/translate_logs" \
      tools/gpu_translate_seeds.sh .gpu_data/multi30k "${SEEDS:-0,1,2}" ${TRANSLATE_ARGS:-}
    for d in runs/tiny_gpu_8k_s*; do
      [[ -f "$d/results.json" ]] && cp "$d/results.json" "$OUT/$(basename "$d").results.json"
      [[ -f "$d/metrics.jsonl" ]] && cp "$d/metrics.jsonl" "$OUT/$(basename "$d").metrics.jsonl"
      [[ -d "$d/bleu" ]] && tar czf "$OUT/$(basename "$d").bleu.tgz" -C "$d" bleu  # the scored hypotheses
    done
    ;;
  *)
    echo "usage: tools/gpu_checks.sh gpt2|attention|translate" >&2; exit 2 ;;
esac
echo "done at $(( $(date +%s) - T0 )) s"

#!/usr/bin/env bash
# Several seeds of translate_multi30k_tiny side by side on one GPU, then the choice among them on validation (issue 14).
#
#   tools/gpu_translate_seeds.sh DATA SEEDS [--config.KEY=VALUE ...]      e.g.  .gpu_data/multi30k 1,2,3
#
# Runs tools/gpu_translate_tiny.sh once per seed (WORKDIR runs/tiny_gpu_s<SEED>, --config.seed=<SEED>, SKIP_CLI=1),
# all at once, each with an equal share of the GPU's memory (the 2.6M-parameter model leaves the GPU mostly idle: two
# runs side by side went at 220-300k tokens/s each against 321k alone on an H100). DEADLINE=S (seconds): runs still
# going then get SIGTERM, which checkpoints them; relaunch this command with RESUME=1 to finish them. Prints each
# finished seed's validation and test2016 BLEU (tokenised, of the average of its last 10 checkpoints) and marks the
# seed validation picks; the test figure to report is that seed's. PREFIX (default runs/tiny_gpu) names the workdirs
# PREFIX_s<SEED>: a variant's seeds (extra --config flags) beside the plain recipe's.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $# -ge 2 ]] || { echo "usage: tools/gpu_translate_seeds.sh DATA SEEDS [--config.KEY=VALUE ...]" >&2; exit 2; }
DATA="$1"; IFS=, read -r -a SEEDS <<< "$2"; shift 2
N=${#SEEDS[@]}
FRACTION=$(python3 -c "print(round(0.9 / $N, 3))")
PREFIX="${PREFIX:-runs/tiny_gpu}"
LOGS="${LOGS:-${PREFIX}_seeds_logs}"; mkdir -p "$LOGS"
start=$(date +%s)
for seed in "${SEEDS[@]}"; do
  XLA_PYTHON_CLIENT_MEM_FRACTION=$FRACTION SKIP_CLI=1 \
    tools/gpu_translate_tiny.sh "$DATA" "${PREFIX}_s$seed" --config.seed="$seed" "$@" > "$LOGS/s$seed.log" 2>&1 &
  sleep 2
done
RUNS="experiments/train.py --config=experiments/configs/translate_multi30k_tiny.py"  # the runs' command lines
if [[ -n "${DEADLINE:-}" ]]; then
  while pgrep -f "$RUNS" > /dev/null && (( $(date +%s) - start < DEADLINE )); do sleep 5; done
  pkill -TERM -f "$RUNS" \
    && echo "deadline ${DEADLINE} s: SIGTERM to the unfinished runs (relaunch with RESUME=1)"
fi
wait
echo "wall time: $(( $(date +%s) - start )) s"
python3 - "$PREFIX" "${SEEDS[@]}" <<'PYEOF'
import json, os, sys
rows = []
for seed in sys.argv[2:]:
  path = f"{sys.argv[1]}_s{seed}/results.json"
  if not os.path.exists(path):
    print(f"seed {seed}: unfinished (no {path})")
    continue
  r = json.load(open(path))
  if r.get("step") is None or "val_bleu_tok" not in r:
    print(f"seed {seed}: no BLEU in {path}")
    continue
  rows.append((r["val_bleu_tok"], seed, r))
if rows:
  best = max(rows)[1]
  print(f"{'seed':>5s} {'step':>6s} {'val BLEU':>9s} {'test2016':>9s}  test detail")
  for val, seed, r in sorted(rows, key=lambda x: int(x[1])):
    mark = "  <- validation's choice" if seed == best else ""
    print(f"{seed:>5s} {r['step']:>6d} {val:9.2f} {r['test_bleu_tok']:9.2f}  {r['test_bleu_tok_detail']}{mark}")
PYEOF

#!/usr/bin/env bash
# gpt2_small beside nanoGPT's own train.py on one GPU (issue 15): tokens/s and MFU at the same model and batch, one
# run after the other on the same machine.
#
#   tools/gpu_bench_gpt2.sh SHARDS NANOGPT [STEPS] [OUT]
#
# SHARDS: a tfjax shards directory of a 50,257-token vocabulary (GPT-2's size). NANOGPT: a copy of karpathy/nanoGPT
# (train.py, model.py, configurator.py, config/train_gpt2.py; it stays outside this project) whose data/gpt2bench/ holds
# the same tokens: train.bin and val.bin (copies of the shards' train_00000.bin and val_00000.bin, the same flat uint16
# format) and meta.pkl ({"vocab_size": 50257}); tools/make_gpt2_bench_data.py makes both. Both train GPT-2 124M (12 x 12
# x 768, context 1024, biases, tied embeddings, no dropout) for STEPS (default 15) optimizer steps of nanoGPT's
# train_gpt2 batch: 40 micro-batches of 12 x 1,024 tokens (491,520 tokens), bfloat16 compute; nanoGPT with compile=True
# (its default), tfjax as shipped (experiments/configs/gpt2_small.py with the batch set to nanoGPT's). Steady tokens/s:
# the median over the steps after the first two (nanoGPT's per-iteration "time" lines; tfjax's results.json
# tokens_per_s_median); MFU of both from tfjax's FLOPs per token and the device's data-sheet peak
# (tfjax.train.metrics.PEAK_FLOPS). Prints a table and appends one JSON line to OUT (default
# bench_results/gpu_gpt2.jsonl). Needs python3 with jax[cuda] (tfjax) and torch.
# TFJAX_ARGS / NANOGPT_ARGS: extra flags for either side (e.g. a smaller model to try the script on a CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $# -ge 2 ]] || { echo "usage: tools/gpu_bench_gpt2.sh SHARDS NANOGPT [STEPS] [OUT]" >&2; exit 2; }
SHARDS="$(cd "$1" && pwd)"; NANOGPT="$(cd "$2" && pwd)"; STEPS="${3:-15}"; OUT="${4:-bench_results/gpu_gpt2.jsonl}"
PY="${PYTHON:-python3}"
if [[ "$PY" == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi
LOGS="$(mktemp -d)"
export PYTHONUNBUFFERED=1
for f in train.py model.py configurator.py config/train_gpt2.py data/gpt2bench/train.bin data/gpt2bench/meta.pkl; do
  [[ -f "$NANOGPT/$f" ]] || { echo "error: $NANOGPT/$f is missing" >&2; exit 2; }
done
[[ -f "$SHARDS/meta.json" ]] || { echo "error: $SHARDS/meta.json is missing (not a shards directory)" >&2; exit 2; }

echo "== tfjax gpt2_small: $STEPS steps of 40 x 12 x 1024 tokens"
t0=$(date +%s)
"$PY" experiments/train.py --config=experiments/configs/gpt2_small.py --workdir="$LOGS/tfjax" \
  --config.data.dataset="shards:$SHARDS" --config.train.batch_size=480 --config.train.grad_accum_steps=40 \
  --config.train.num_steps="$STEPS" --config.train.log_every=1 --config.train.eval_every=0 \
  --config.train.eval_steps=1 --config.train.checkpoint_every=0 --config.sample.num_tokens=0 \
  --config.train.tensorboard=False ${TFJAX_ARGS:-} 2>&1 | tee "$LOGS/tfjax.log"
t1=$(date +%s)
echo "== nanoGPT train.py (compile=True): $STEPS iterations of the same batch"
(cd "$NANOGPT" && "$PY" train.py config/train_gpt2.py --wandb_log=False --dataset=gpt2bench --bias=True \
  --compile=True --max_iters="$STEPS" --eval_interval=100000 --eval_iters=1 --log_interval=1 \
  --always_save_checkpoint=False --out_dir="$LOGS/nanogpt_out" ${NANOGPT_ARGS:-}) 2>&1 | tee "$LOGS/nanogpt.log"
t2=$(date +%s)
"$PY" - "$LOGS" "$OUT" "$((t1 - t0))" "$((t2 - t1))" <<'PYEOF'
import json, re, statistics, sys, time
logs, out, wall_tfjax, wall_nanogpt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import jax
from tfjax.train.metrics import PEAK_FLOPS
kind = jax.devices()[0].device_kind
peak = next((p for name, p in PEAK_FLOPS.items() if name.lower() in kind.lower()), None)
r = json.load(open(f"{logs}/tfjax/results.json"))
log = open(f"{logs}/tfjax.log").read()
fpt = float(re.search(r"MFU reference: ([0-9.e+]+) FLOPs/token", log).group(1))
rates = [float(m.replace(",", "")) for m in re.findall(r"step \d+/\d+ \| .*?\| ([0-9,]+) tok/s", log)]
ours = statistics.median(rates[2:]) if len(rates) > 2 else r["tokens_per_s_median"]
nano = open(f"{logs}/nanogpt.log").read()
tokens = int(re.search(r"tokens per iteration will be: ([0-9,]+)", nano).group(1).replace(",", ""))
iters = [(int(i), float(ms)) for i, ms in re.findall(r"iter (\d+): loss [0-9.]+, time ([0-9.]+)ms", nano)]
theirs = statistics.median(tokens / (ms / 1000) for i, ms in iters if i >= 2)
rec = {"bench": "gpu_gpt2_small", "device": kind, "peak_flops": peak, "flops_per_token": fpt,
       "tokens_per_step": tokens, "steps": len(iters), "tfjax_tokens_per_s": ours, "nanogpt_tokens_per_s": theirs,
       "speedup": ours / theirs, "tfjax_mfu": ours * fpt / peak if peak else None,
       "nanogpt_mfu": theirs * fpt / peak if peak else None,
       "tfjax_compile_s": r.get("phase_seconds", {}).get("compile"),
       "tfjax_wall_s": wall_tfjax, "nanogpt_wall_s": wall_nanogpt, "tfjax_train_loss": r.get("train_loss"),
       "jax": jax.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
try:
  import torch
  rec["torch"] = torch.__version__
except ImportError:
  pass
print(f"\n{'':22s} {'tokens/s':>10s} {'MFU':>6s} {'wall s':>7s}")
print(f"{'tfjax gpt2_small':22s} {ours:10,.0f} {rec['tfjax_mfu'] or 0:6.1%} {wall_tfjax:7d}")
print(f"{'nanoGPT compile=True':22s} {theirs:10,.0f} {rec['nanogpt_mfu'] or 0:6.1%} {wall_nanogpt:7d}")
print(f"tfjax / nanoGPT: {rec['speedup']:.2f}x on {kind} (peak {peak or float('nan'):.3g} FLOP/s, "
      f"{fpt:.3g} FLOPs/token)")
import os
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "a") as f:
  f.write(json.dumps(rec) + "\n")
PYEOF

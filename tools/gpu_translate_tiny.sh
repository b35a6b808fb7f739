#!/usr/bin/env bash
# The full translate_multi30k_tiny recipe on one GPU (Wu et al. 2021's Transformer-Tiny on Multi30k en->de, issue 14):
# train 8,000 updates, average the last 10 checkpoints, translate test2016 with beam 5, print both BLEU scores.
#
#   tools/gpu_translate_tiny.sh DATA [WORKDIR] [--config.KEY=VALUE ...]
#
# DATA: a folder inside (or outside) the repo holding the Multi30k files as in ../shared/data/multi30k (the raw
# *.gz files and tok/*.lc.norm.tok.*.gz), e.g. .gpu_data/multi30k. WORKDIR: default runs/translate_multi30k_tiny_gpu
# (a fresh run each time: an existing one is moved aside). Runs without the launcher (no .venv, nothing fetched): a
# python3 with jax, flax, optax, orbax-checkpoint, tokenizers, sacrebleu, absl-py, ml_collections and sacremoses. Wheels
# in .whl/ (e.g. ml_collections-*.whl, sacremoses-*.whl) are installed into a fresh temporary folder when a package is
# missing. Several runs may go side by side on one GPU (e.g. seeds: WORKDIR and --config.seed=N each;
# XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 each).
# RESUME=1: an existing WORKDIR is resumed (e.g. a run stopped by SIGTERM, which checkpoints) instead of moved aside.
# SKIP_CLI=1: no second, command-line average and scoring after the run. Prints the results (results.json: test2016
# tokenised BLEU, sacreBLEU + signatures, of the averaged model) and the wall time; everything lands in WORKDIR
# (results.json, metrics.jsonl, bleu/*.json + hypotheses, averaged/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $# -ge 1 ]] || { echo "usage: tools/gpu_translate_tiny.sh DATA [WORKDIR] [--config.KEY=VALUE ...]" >&2; exit 2; }
DATA="$(cd "$1" && pwd)"; shift
WORKDIR="runs/translate_multi30k_tiny_gpu"
if [[ $# -ge 1 && "$1" != --* ]]; then WORKDIR="$1"; shift; fi
WORKDIR="$(mkdir -p "$(dirname "$WORKDIR")" && cd "$(dirname "$WORKDIR")" && pwd)/$(basename "$WORKDIR")"
PY="${PYTHON:-python3}"
for f in train.en.gz train.de.gz val.en.gz val.de.gz test_2016_flickr.en.gz test_2016_flickr.de.gz \
         tok/train.lc.norm.tok.en.gz tok/train.lc.norm.tok.de.gz tok/val.lc.norm.tok.en.gz tok/val.lc.norm.tok.de.gz \
         tok/test_2016_flickr.lc.norm.tok.en.gz tok/test_2016_flickr.lc.norm.tok.de.gz; do
  [[ -f "$DATA/$f" ]] || { echo "error: $DATA/$f is missing (DATA must hold the Multi30k files as ../shared/data/multi30k does)" >&2; exit 2; }
done
IMPORTS="import jax, flax, optax, orbax.checkpoint, tokenizers, sacrebleu, ml_collections, sacremoses"
# wheels only when a package is missing (so several runs can start side by side without racing on the install)
if ! "$PY" -c "$IMPORTS" 2>/dev/null && compgen -G "$ROOT/.whl/*.whl" > /dev/null; then
  SITE="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "$IMPORTS" || {
  echo "error: a package is missing (pip wheels needed beyond jax/flax/optax/orbax/tokenizers/sacrebleu:" \
       "ml_collections, sacremoses; put them in .whl/)" >&2; exit 2; }
# TFJAX_DATA_DIR is the folder that holds multi30k/
DATA_ROOT="$(mktemp -d)"
ln -s "$DATA" "$DATA_ROOT/multi30k"
export TFJAX_DATA_DIR="$DATA_ROOT" TFJAX_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ -e "$WORKDIR" && "${RESUME:-0}" != 1 ]]; then mv "$WORKDIR" "$WORKDIR.old.$(date +%s)"; fi

start=$(date +%s)
"$PY" experiments/train.py --config=experiments/configs/translate_multi30k_tiny.py --workdir="$WORKDIR" \
  --config.train.tensorboard=False "$@"
trained=$(date +%s)
# the CLI path beside the final report's own average: the averaged workdir, translated and scored from the command line
# (SKIP_CLI=1 leaves it out: the final report has already scored the same average)
if [[ "${SKIP_CLI:-0}" != 1 ]]; then
  "$PY" experiments/average.py "$WORKDIR" --last=10
  "$PY" experiments/translate.py "$WORKDIR/averaged" --bleu=test --beam_size=5
fi
end=$(date +%s)
"$PY" - "$WORKDIR" <<'EOF'
import json, os, sys
if not os.path.exists(f"{sys.argv[1]}/results.json"):
  sys.exit(f"no results.json in {sys.argv[1]}: the run stopped before its end (relaunch with RESUME=1 to finish it)")
r = json.load(open(f"{sys.argv[1]}/results.json"))
keys = ["num_params", "step", "best_eval_loss", "eval_loss", "eval_bleu", "averaged_steps", "val_bleu_tok", "val_bleu_lc",
        "test_bleu_tok", "test_bleu_tok_detail", "test_bleu_tok_signature", "test_bleu", "test_bleu_signature",
        "test_bleu_lc", "test_bleu_lc_signature", "wall_time_s", "tokens_per_s_median", "device_count"]
print(json.dumps({k: r.get(k) for k in keys}, indent=1))
EOF
echo "wall time: training run (incl. final report) $((trained - start)) s, average + CLI beam-5 BLEU $((end - trained)) s"
echo "workdir: $WORKDIR"

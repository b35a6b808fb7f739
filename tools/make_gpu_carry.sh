#!/usr/bin/env bash
# Remakes, on a fresh checkout, the three git-ignored folders that tools/gpu_checks.sh reads on the device machine
# (carry: [".whl", ".gpu_data", ".h4gpu"]), so that a session lent a GPU spends its device time on the checks:
#
#   tools/make_gpu_carry.sh NANOGPT       # NANOGPT: karpathy/nanoGPT as a folder or a git directory
#                                         # (the session's fetch tool gives one: /work/.mirror/karpathy+nanoGPT/repo)
#
# - .whl/: wheels of the pure-Python dependencies that the device's image lacks (ml_collections, sacremoses,
#   tensorboardX), at the versions in .venv, from this machine's package registry;
# - .gpu_data/multi30k/: a copy of $TFJAX_DATA_DIR/multi30k (default ../shared/data) for the translator's recipe;
# - .h4gpu/nanogpt/ (nanoGPT's files at the git directory's HEAD) and .h4gpu/gpt2bench/ (the same tokens for both
#   sides of the GPT-2 bench, tools/make_gpt2_bench_data.py).
# Runs in ~1 min on 2 CPU cores; prints what the carry weighs against the device tool's 64 MiB (the working tree counts
# too). Needs the project's environment (./launch.sh setup).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $# -eq 1 ]] || { echo "usage: tools/make_gpu_carry.sh NANOGPT (a karpathy/nanoGPT folder or git directory)" >&2; exit 2; }
SRC="$1"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "error: no $PY: run ./launch.sh setup first" >&2; exit 2; }
DATA="${TFJAX_DATA_DIR:-$ROOT/../shared/data}"
[[ -d "$DATA/multi30k" ]] || { echo "error: no $DATA/multi30k (set TFJAX_DATA_DIR to the data folder)" >&2; exit 2; }

rm -rf .whl && mkdir -p .whl
pins=()
for pkg in ml_collections sacremoses tensorboardX; do
  version="$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")"
  pins+=("$pkg==$version")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "${pins[@]}"
echo "[carry] .whl: $(ls .whl | tr '\n' ' ')"

rm -rf .gpu_data && mkdir -p .gpu_data
cp -r "$DATA/multi30k" .gpu_data/multi30k
echo "[carry] .gpu_data/multi30k from $DATA/multi30k"

rm -rf .h4gpu && mkdir -p .h4gpu/nanogpt
if [[ -f "$SRC/train.py" ]]; then
  cp -r "$SRC"/. .h4gpu/nanogpt/ && rm -rf .h4gpu/nanogpt/.git
elif git --git-dir="$SRC" rev-parse --verify -q HEAD >/dev/null; then
  git --git-dir="$SRC" archive HEAD | tar -x -C .h4gpu/nanogpt
  echo "[carry] nanoGPT at $(git --git-dir="$SRC" log -1 --format='%h %s' HEAD)"
else
  echo "error: $SRC is neither a nanoGPT folder (with train.py) nor a git directory" >&2; exit 2
fi
for f in train.py model.py configurator.py config/train_gpt2.py; do
  [[ -f ".h4gpu/nanogpt/$f" ]] || { echo "error: $SRC has no $f: not karpathy/nanoGPT" >&2; exit 2; }
done
rm -rf .h4gpu/nanogpt/assets  # README pictures: not needed, and they weigh
TFJAX_DATA_DIR="$DATA" "$PY" tools/make_gpt2_bench_data.py --out=.h4gpu/gpt2bench --nanogpt=.h4gpu/nanogpt

echo "[carry] sizes (the device tool takes 64 MiB with the working tree):"
du -sh .whl .gpu_data .h4gpu

#!/usr/bin/env bash
# tfjax launcher: every subcommand creates the environment (.venv/) on first use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

usage() {
  cat <<'USAGE'
Usage: ./launch.sh COMMAND [ARGS...]

  setup                                   create .venv/ and install tfjax (editable) with its test dependencies
  train CONFIG [--workdir=DIR] [--config.KEY=VALUE ...]
                                          train experiments/configs/CONFIG.py (default workdir: runs/CONFIG);
                                          relaunching the same command resumes from the workdir's checkpoints
  sample WORKDIR [--prompt=TEXT] [--num_tokens=N] [--temperature=T] [--top_k=K] [--top_p=P] [--best]
                                          generate text from a trained GPT workdir or a Hugging Face GPT-2 dir
  query WORKDIR|--vectors=FILE --neighbors=WORD | --analogy=a,b,c
                                          word2vec nearest neighbours and a - b + c queries
  fill-mask WORKDIR --text="the capital of [MASK] is paris" [--top_k=K] [--num_samples=N --temperature=T]
                                          BERT fill-in-the-blank
  translate WORKDIR --text="A dog runs." | --bleu=test | --file=IN [--out=OUT] [--beam_size=5] [--best]
                                          translate with a trained encoder-decoder (greedy or beam); --bleu
                                          scores tokenised BLEU and sacreBLEU, hypotheses written beside them
  average WORKDIR --last=K | --steps=S1,S2 [--out=DIR]
                                          average checkpoints' parameters into DIR (default WORKDIR/averaged),
                                          an inference workdir for translate / sample / export
  export WORKDIR [--out=DIR] [--step=N | --best]
                                          write a GPT / BERT / translator run as a Hugging Face directory
                                          (default WORKDIR/hf) that transformers loads; checked by reading it back
  prepare SOURCES... --tokenizer=char|bpe:V|HF_DIR --out=DIR [--val_fraction=F] [--text_field=text]
                                          tokenise .txt/.gz/.jsonl files (globs) once into memory-mapped token
                                          shards + meta.json (train: --config.data.dataset=shards:DIR);
                                          --verify=DIR checks every shard's length and sha256
  eval WORKDIR|HF_DIR [--data=SHARDS_DIR|TEXT_FILE|wikitext2|tinyshakespeare] [--split=val|test] [--stride=S]
       [--batch_size=B] [--out=FILE]      loss, perplexity and bits per byte over a whole split by sliding windows
                                          of the model's context (each token scored once; JSON beside the model);
                                          without --data, a workdir's own validation tokens
  bench [train|word2vec|nanogpt|ab|demo|bert_hf|prepare|allocator] [ARGS...]
                                          benchmarks (print a table, append JSON lines to bench_results/);
                                          nanogpt: the PyTorch reference for train (needs torch); ab: variants
                                          of the train step timed in alternating rounds in one process; demo:
                                          the README demo vs nanoGPT's whole CPU run, start to finish (--rounds=N);
                                          bert_hf: BERT beside Hugging Face's RoFormer/BertForMaskedLM, same batches;
                                          allocator: the train step under glibc / mimalloc / jemalloc
  plot WORKDIR... [--out=FILE]            loss curves of runs to a PNG
  explain NAME [WORKDIR|HF_DIR] [--out=DIR] [--text=...] [--layer=L --head=H --neurons=...]
                                          look inside a model: attention, heads, qk, mlp, logit_lens,
                                          temperature, embeddings, positions, superposition (PNG+JSON+HTML);
                                          cbow_to_attention and superposition run without a workdir
  sweep CONFIG --sweep KEY=V1,V2 [--sweep ...] [--parallel=N] [--sweepdir=DIR] [--config.KEY=VALUE ...]
                                          a grid of runs (or --random=N --range KEY=LO:HI:log), each in
                                          SWEEPDIR/<settings>; relaunching skips finished runs, resumes the rest;
                                          --optuna --trials=N --range KEY=LO:HI:log [--storage=URL] [--pruner=P]:
                                          an Optuna study shared by workers (SWEEPDIR/trial_<n>, bad runs pruned);
                                          --slurm [--slurm_args="..."] [--submit]: a SLURM job array of the runs
  report SWEEPDIR                         summary.md/.csv and curves.png of a sweep or Optuna study (finished or
                                          not; a study adds importance.png and history.png)
  multihost N CONFIG [--workdir=DIR] [--config.KEY=VALUE ...]
                                          N processes on this machine joined by jax.distributed (a cluster:
                                          TFJAX_DISTRIBUTED=1 experiments/train.py on every host, see README)
  test [PYTEST_ARGS...]                   run the test suite (TFJAX_SLOW_TESTS=1 adds the slow tests;
                                          files in parallel workers, TFJAX_TEST_WORKERS=1 for one process)
  --help                                  this message

Configs: ls experiments/configs/. Data is found through --config.data_dir, then $TFJAX_DATA_DIR, then
~/.cache/tfjax (downloaded with a checksum when online). On CPU, one XLA device per core is used
(TFJAX_CPU_DEVICES=1 keeps one). A faster malloc is preloaded: the system's jemalloc when it has one (apt install
libjemalloc2, or TFJAX_JEMALLOC=PATH), else mimalloc from the venv (pip wheel cmeel-mimalloc): XLA:CPU then reuses
each step's buffers instead of page-faulting them afresh (TFJAX_ALLOCATOR=jemalloc|mimalloc picks one,
TFJAX_ALLOCATOR=system keeps glibc's malloc; ./launch.sh bench allocator compares them).
USAGE
}

ensure_env() {
  local stamp="$VENV/.tfjax-installed"
  local want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [[ ! -x "$PY" ]]; then
    echo "[launch] creating $VENV" >&2
    python3 -m venv "$VENV"
  fi
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "[launch] installing tfjax and its dependencies into $VENV" >&2
    "$PY" -m pip install -q --upgrade pip >&2
    "$PY" -m pip install -q -e "$ROOT[dev]" >&2
    echo "$want" > "$stamp"
  fi
  fast_allocator
}

fast_allocator() {
  # XLA:CPU allocates each step's temporary buffers afresh; glibc serves them with mmap and unmaps them again, so every
  # step page-faults its whole working set (6/6/384 on 2 cores: 1.3M faults and 3.4 s of kernel time a step).
  # jemalloc and mimalloc keep freed pages for reuse (purging off): 7.8 -> 6.0 s a step (experiments/bench/allocator.py).
  # TFJAX_ALLOCATOR: auto (default: the system's jemalloc when it has one — apt install libjemalloc2, or TFJAX_JEMALLOC
  # names it — else mimalloc from the cmeel-mimalloc wheel in the venv, a pip dependency) | jemalloc | mimalloc |
  # system (glibc's malloc). Preloading must happen before python starts, hence here.
  local choice="${TFJAX_ALLOCATOR:-auto}" lib="" kind=""
  [[ "$choice" == "system" || "$(uname -s)" != "Linux" ]] && return 0
  case "$choice" in
    auto|jemalloc|mimalloc) ;;
    *) echo "[launch] TFJAX_ALLOCATOR=$choice is not auto, jemalloc, mimalloc or system; using glibc's malloc" >&2
       return 0 ;;
  esac
  if [[ "$choice" != "mimalloc" ]]; then
    lib="${TFJAX_JEMALLOC:-}"
    if [[ -z "$lib" ]]; then
      lib="$( (ldconfig -p 2>/dev/null || true) | awk '/libjemalloc\.so\.2 /{print $NF; exit}')"
    fi
    if [[ -z "$lib" ]]; then
      for cand in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
                  /usr/lib64/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2; do
        [[ -f "$cand" ]] && { lib="$cand"; break; }
      done
    fi
    [[ -n "${TFJAX_JEMALLOC:-}" && ! -f "$lib" ]] && echo "[launch] TFJAX_JEMALLOC=$lib is not a file" >&2
    [[ -n "$lib" && -f "$lib" ]] && kind=jemalloc || lib=""
  fi
  if [[ -z "$kind" && "$choice" != "jemalloc" ]]; then
    for cand in "$VENV"/lib/python3*/site-packages/cmeel.prefix/lib/libmimalloc.so; do
      [[ -f "$cand" ]] && { lib="$cand"; kind=mimalloc; break; }
    done
  fi
  if [[ -z "$kind" ]]; then
    [[ "$choice" == "auto" ]] || echo "[launch] TFJAX_ALLOCATOR=$choice: no lib$choice found (jemalloc: apt install" \
      "libjemalloc2; mimalloc: ./launch.sh setup installs the cmeel-mimalloc wheel); using glibc's malloc" >&2
    return 0
  fi
  case ":${LD_PRELOAD:-}:" in *":$lib:"*) ;; *) export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" ;; esac
  # keep freed pages (no decay / no purge): a step reuses them at once
  if [[ "$kind" == jemalloc ]]; then
    export MALLOC_CONF="${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}"
  else
    export MIMALLOC_PURGE_DELAY="${MIMALLOC_PURGE_DELAY:--1}"
  fi
}

default_data_dir() {
  # Use the shared data next to the checkout when the user has not chosen a data dir.
  if [[ -z "${TFJAX_DATA_DIR:-}" && -d "$ROOT/../shared/data" ]]; then
    export TFJAX_DATA_DIR="$(cd "$ROOT/../shared/data" && pwd)"
  fi
}

config_path() {
  local name="$1"
  if [[ -f "$name" ]]; then echo "$name"; return; fi
  if [[ -f "$ROOT/experiments/configs/$name.py" ]]; then echo "$ROOT/experiments/configs/$name.py"; return; fi
  echo "[launch] unknown config '$name'; available: $(cd "$ROOT/experiments/configs" && ls *.py | grep -v -e '^_' -e defaults | sed 's/\.py$//' | tr '\n' ' ')" >&2
  exit 2
}

cmd="${1:-}"
[[ -n "$cmd" ]] && shift
case "$cmd" in
  setup)
    ensure_env
    echo "[launch] environment ready: $VENV"
    ;;
  train)
    [[ $# -ge 1 ]] || { echo "usage: ./launch.sh train CONFIG [--workdir=DIR] [--config.KEY=VALUE ...]" >&2; exit 2; }
    name="$1"; shift
    cfg="$(config_path "$name")"
    ensure_env; default_data_dir
    args=("$@")
    if ! printf '%s\n' "${args[@]+"${args[@]}"}" | grep -q -e '^--workdir'; then
      args+=("--workdir=$ROOT/runs/$(basename "$name" .py)")
    fi
    exec "$PY" "$ROOT/experiments/train.py" --config="$cfg" "${args[@]}"
    ;;
  sample)
    ensure_env
    exec "$PY" "$ROOT/experiments/sample.py" "$@"
    ;;
  query)
    ensure_env
    exec "$PY" "$ROOT/experiments/word2vec_query.py" "$@"
    ;;
  fill-mask)
    ensure_env
    exec "$PY" "$ROOT/experiments/fill_mask.py" "$@"
    ;;
  translate)
    ensure_env; default_data_dir
    exec "$PY" "$ROOT/experiments/translate.py" "$@"
    ;;
  average)
    ensure_env
    exec "$PY" "$ROOT/experiments/average.py" "$@"
    ;;
  export)
    ensure_env
    exec "$PY" "$ROOT/experiments/export.py" "$@"
    ;;
  prepare)
    ensure_env; default_data_dir
    exec "$PY" "$ROOT/experiments/prepare.py" "$@"
    ;;
  eval)
    ensure_env; default_data_dir
    exec "$PY" "$ROOT/experiments/eval.py" "$@"
    ;;
  bench)
    ensure_env; default_data_dir
    what="${1:-train}"; [[ $# -ge 1 ]] && shift
    if [[ ! -f "$ROOT/experiments/bench/$what.py" || "$what" == _* ]]; then
      echo "[launch] unknown benchmark '$what'; available: $(cd "$ROOT/experiments/bench" && ls *.py | grep -v -e '^_' -e compare_nanogpt | sed 's/\.py$//' | tr '\n' ' ')" >&2
      exit 2
    fi
    exec "$PY" "$ROOT/experiments/bench/$what.py" "$@"
    ;;
  explain)
    ensure_env; default_data_dir
    exec "$PY" "$ROOT/experiments/explain.py" "$@"
    ;;
  plot)
    ensure_env
    exec "$PY" "$ROOT/experiments/plot.py" "$@"
    ;;
  sweep)
    [[ $# -ge 1 ]] || { echo "usage: ./launch.sh sweep CONFIG --sweep KEY=V1,V2 [--parallel=N] [--sweepdir=DIR] [--optuna --trials=N | --slurm] (--help: all flags)" >&2; exit 2; }
    name="$1"; shift
    cfg="$(config_path "$name")"
    ensure_env; default_data_dir
    args=("$@")
    if ! printf '%s\n' "${args[@]+"${args[@]}"}" | grep -q -e '^--sweepdir'; then
      args+=("--sweepdir=$ROOT/runs/sweep_$(basename "$name" .py)")
    fi
    exec "$PY" "$ROOT/experiments/sweep.py" "$cfg" "${args[@]}"
    ;;
  report)
    ensure_env
    exec "$PY" "$ROOT/experiments/report.py" "$@"
    ;;
  multihost)
    [[ $# -ge 2 ]] || { echo "usage: ./launch.sh multihost N CONFIG [--workdir=DIR] [--config.KEY=VALUE ...]" >&2; exit 2; }
    nproc="$1"; name="$2"; shift 2
    cfg="$(config_path "$name")"
    ensure_env; default_data_dir
    args=("$@")
    if ! printf '%s\n' "${args[@]+"${args[@]}"}" | grep -q -e '^--workdir'; then
      args+=("--workdir=$ROOT/runs/$(basename "$name" .py)")
    fi
    exec "$PY" "$ROOT/experiments/multihost.py" "$nproc" --config="$cfg" "${args[@]}"
    ;;
  test)
    ensure_env; default_data_dir
    cd "$ROOT"
    # test files run side by side in min(cores, 4) pytest-xdist workers (a file stays in one worker, so its module
    # fixtures are built once): much of a test is compiling, which uses one core. TFJAX_TEST_WORKERS=1, or -n/-p in
    # PYTEST_ARGS, chooses otherwise.
    workers="${TFJAX_TEST_WORKERS:-$(( $(nproc 2>/dev/null || echo 1) < 4 ? $(nproc 2>/dev/null || echo 1) : 4 ))}"
    parallel=()
    if [[ "$workers" != 1 ]] && ! printf '%s\n' "$@" | grep -q -E '^(-n|-p|--numprocesses|--dist)' && "$PY" -c "import xdist" 2>/dev/null; then
      parallel=(-n "$workers" --dist loadfile)
    fi
    exec "$PY" -m pytest -q "${parallel[@]+"${parallel[@]}"}" "$@"
    ;;
  -h|--help|help|"")
    usage
    ;;
  *)
    echo "[launch] unknown command '$cmd'" >&2
    usage >&2
    exit 2
    ;;
esac

"""``prepare`` beside nanoGPT's prepare.py pattern, and the input pipeline's host time per training step.

``./launch.sh bench prepare [--tokenizers=bpe:8192,char] [--scale=4] [--rounds=3] [--train_steps=3]``

1. Tokenising the shared text (WikiText-2 valid + test, Tiny Shakespeare, the Lee corpus, Multi30k's English and
   German training captions; ``--scale`` copies of it) into uint16 token files, two ways, each in its own process,
   in alternating rounds (median):

   * tfjax: ``tfjax.data.prepare.prepare`` (streaming, ``encode_batch_fast`` on all cores, shards + sha256 +
     meta.json);
   * nanoGPT's ``data/*/prepare.py`` pattern: read all the text into memory, tokenise it whole with the same
     tokenizer (``tokenizers``' ``encode`` for BPE; ``[stoi[c] for c in data]`` for characters), split 90/10,
     ``np.array(ids, dtype=np.uint16).tofile(...)``.

   The BPE is trained once by ``prepare`` (``bpe:V``, timed separately) and both then encode with that
   ``tokenizer.json``. Peak resident memory of each process from ``wait4``'s ``ru_maxrss``.
2. The LM task's host time per step at the 6/6/384 config (batch 64 x 256) reading the BPE shards: assembling the
   batch (``task.train_batch``) and putting it on the device, against the measured train step.

Prints a table and appends JSON lines to ``bench_results/prepare.jsonl``.
"""

import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments import runtime  # noqa: E402

runtime.configure_devices()

from absl import app, flags  # noqa: E402

flags.DEFINE_string("tokenizers", "bpe:8192,char", "Tokenizer specs to compare (bpe:V and/or char).")
flags.DEFINE_integer("scale", 4, "Copies of the shared corpus to tokenise (the corpus is ~7 MB).")
flags.DEFINE_integer("rounds", 3, "Alternating rounds of the two ways (the median is reported).")
flags.DEFINE_integer("batch_steps", 200, "Training batches assembled to time the host's work per step.")
flags.DEFINE_integer("train_steps", 3, "6/6/384 train steps timed for the ratio (0: skip the step).")
flags.DEFINE_string("out", "bench_results/prepare.jsonl", "JSON lines output.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = ("wikitext2/valid.txt", "wikitext2/test.txt", "tinyshakespeare/input.txt", "lee/lee_background.cor",
          "lee/lee.cor", "multi30k/train.en.gz", "multi30k/train.de.gz")

_TFJAX = r"""
import sys, time
from tfjax.data import prepare
t0 = time.perf_counter()
meta = prepare.prepare(sys.argv[3:], sys.argv[1], sys.argv[2], val_fraction=0.1, decode_errors="replace",
                       force=True, log=lambda m: None)
print(sum(s["tokens"] for s in meta["splits"].values()), time.perf_counter() - t0,
      open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""

# nanoGPT's data/shakespeare(_char)/prepare.py, with the same tokenizer and all the sources read into one string
_NANOGPT = r"""
import gzip, os, sys, time
import numpy as np
t0 = time.perf_counter()
spec, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
data = ""
for p in paths:
  with (gzip.open(p, "rt", encoding="utf-8", errors="replace") if p.endswith(".gz")
        else open(p, encoding="utf-8", errors="replace")) as f:
    data += f.read()
n = len(data)
train_data, val_data = data[:int(n * 0.9)], data[int(n * 0.9):]
if spec == "char":
  chars = sorted(list(set(data)))
  stoi = {ch: i for i, ch in enumerate(chars)}
  encode = lambda s: [stoi[c] for c in s]
else:
  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(spec)
  encode = lambda s: tok.encode(s, add_special_tokens=False).ids
train_ids, val_ids = encode(train_data), encode(val_data)
os.makedirs(out, exist_ok=True)
np.array(train_ids, dtype=np.uint16).tofile(os.path.join(out, "train.bin"))
np.array(val_ids, dtype=np.uint16).tofile(os.path.join(out, "val.bin"))
print(len(train_ids) + len(val_ids), time.perf_counter() - t0,
      open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""


def _run(script, args):
  """(tokens, seconds, peak RSS in MB) of ``python -c script args`` in a fresh process (the peak is the child's own
  VmHWM: wait4's ru_maxrss would include this parent's resident memory at the fork)."""
  res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  if res.returncode != 0:
    raise RuntimeError(f"benchmark process failed:\n{res.stderr[-3000:]}")
  tokens, seconds, hwm_kb = res.stdout.split()
  return int(tokens), float(seconds), int(hwm_kb) / 1024


def _corpus(tmp):
  data_dir = os.environ.get("TFJAX_DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")
  srcs = [os.path.join(data_dir, p) for p in CORPUS]
  missing = [p for p in srcs if not os.path.isfile(p)]
  if missing:
    raise app.UsageError(f"corpus files missing: {missing} (set TFJAX_DATA_DIR to the shared data)")
  paths = []
  for k in range(FLAGS.scale):
    for p in srcs:
      dst = os.path.join(tmp, "corpus", f"{k}_{os.path.basename(os.path.dirname(p))}_{os.path.basename(p)}")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      with open(p, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
      paths.append(dst)
  return paths


def compare_prepare(spec, paths, tmp):
  rows = {}
  if spec.startswith("bpe:"):
    t0 = time.perf_counter()
    _run(_TFJAX, [spec, os.path.join(tmp, "bpe"), *paths])
    rows["train_bpe_s"] = time.perf_counter() - t0
    tfjax_spec = base_spec = os.path.join(tmp, "bpe", "tokenizer.json")
  else:
    tfjax_spec, base_spec = "char", "char"
  times = {"tfjax": [], "nanogpt": []}
  stats = {}
  for _ in range(FLAGS.rounds):
    for name, script, s in (("tfjax", _TFJAX, tfjax_spec), ("nanogpt", _NANOGPT, base_spec)):
      tokens, seconds, rss = _run(script, [s, os.path.join(tmp, f"{name}_{spec.replace(':', '')}"), *paths])
      times[name].append(seconds)
      stats[name] = (tokens, max(rss, stats.get(name, (0, 0))[1]))
  for name in times:
    med = statistics.median(times[name])
    rows[name] = {"tokens": stats[name][0], "seconds": med, "tokens_per_s": stats[name][0] / med,
                  "peak_rss_mb": stats[name][1]}
  return rows


def host_time_per_step(shards_dir):
  import jax
  from experiments.configs import gpt_shakespeare
  from tfjax.tasks.lm import LMTask
  config = gpt_shakespeare.get_config()  # 6/6/384, context 256, batch 64
  config.data.dataset = f"shards:{shards_dir}"
  config.train.parallel = "none"
  task = LMTask(config, None)
  task.train_batch(0)
  t0 = time.perf_counter()
  for s in range(FLAGS.batch_steps):
    task.train_batch(s)
  batch_ms = (time.perf_counter() - t0) / FLAGS.batch_steps * 1e3
  batch = task.train_batch(0)
  t0 = time.perf_counter()
  for _ in range(20):
    jax.block_until_ready(jax.device_put(batch))
  put_ms = (time.perf_counter() - t0) / 20 * 1e3
  step_ms = None
  if FLAGS.train_steps:
    from tfjax.train.optimizer import make_optimizer
    from tfjax.train.step import init_state, make_train_step
    tx, schedule = make_optimizer(config.optimizer, 100)
    state = jax.jit(functools.partial(init_state, task, tx, 0))()
    step = jax.jit(make_train_step(task, tx, schedule), donate_argnums=0)
    state, m = step(state, task.train_batch(0))  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for s in range(1, FLAGS.train_steps + 1):
      state, m = step(state, task.train_batch(s))
      jax.block_until_ready(m)
    step_ms = (time.perf_counter() - t0) / FLAGS.train_steps * 1e3
  return {"batch_ms": batch_ms, "device_put_ms": put_ms, "step_ms": step_ms, "vocab_size": task.model_cfg.vocab_size}


def main(argv):
  del argv
  import jax
  results = []
  stamp = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
           "backend": jax.default_backend(), "scale": FLAGS.scale}
  with tempfile.TemporaryDirectory() as tmp:
    paths = _corpus(tmp)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"corpus: {len(paths)} files, {mb:.1f} MB on disk (gzip included), x{FLAGS.scale}")
    print(f"{'tokenizer':<12} {'way':<9} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} {'peak RSS MB':>12}")
    for spec in FLAGS.tokenizers.split(","):
      rows = compare_prepare(spec, paths, tmp)
      for name in ("tfjax", "nanogpt"):
        r = rows[name]
        print(f"{spec:<12} {name:<9} {r['tokens']:>12,} {r['seconds']:>8.2f} {r['tokens_per_s']:>12,.0f} "
              f"{r['peak_rss_mb']:>12.0f}")
      speedup = rows["tfjax"]["tokens_per_s"] / rows["nanogpt"]["tokens_per_s"]
      extra = f" (BPE training + first prepare: {rows['train_bpe_s']:.1f} s)" if "train_bpe_s" in rows else ""
      print(f"{spec:<12} tfjax / nanoGPT tokens/s: {speedup:.2f}x{extra}")
      results.append({**stamp, "bench": "prepare", "tokenizer": spec, "corpus_mb": mb, "rounds": FLAGS.rounds,
                      **{f"{k}_{f}": v for k in ("tfjax", "nanogpt") for f, v in rows[k].items()},
                      "speedup": speedup, "train_bpe_s": rows.get("train_bpe_s")})
    bpe = next((s for s in FLAGS.tokenizers.split(",") if s.startswith("bpe:")), None)
    shards_dir = os.path.join(tmp, f"tfjax_{bpe.replace(':', '')}") if bpe else None
    if shards_dir and os.path.isfile(os.path.join(shards_dir, "meta.json")):
      h = host_time_per_step(shards_dir)
      host = h["batch_ms"] + h["device_put_ms"]
      line = (f"6/6/384 batch 64x256 from {bpe} shards: batch assembly {h['batch_ms']:.3f} ms + device_put "
              f"{h['device_put_ms']:.3f} ms per step")
      if h["step_ms"]:
        line += f"; train step {h['step_ms']:.0f} ms -> host share {100 * host / h['step_ms']:.3f}%"
      print(line)
      results.append({**stamp, "bench": "host_time_per_step", "tokenizer": bpe, **h,
                      "host_fraction": host / h["step_ms"] if h["step_ms"] else None})
  os.makedirs(os.path.dirname(os.path.join(ROOT, FLAGS.out)), exist_ok=True)
  with open(os.path.join(ROOT, FLAGS.out), "a") as f:
    for r in results:
      f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  app.run(main)

"""Benchmark: tfjax word2vec against gensim on the same corpus with the same hyperparameters.

  python experiments/bench/word2vec.py [--epochs=5] [--seeds=1,2,3] [--archs=skipgram,cbow] [--workers=2]

Both train on the corpus of ``experiments/configs/word2vec_skipgram.py`` (tokenised by the one rule of
``tfjax.data.word2vec_data.tokenize_line``, one line = one sentence) with dim 100, window 5, 5 noise words,
min_count 5, sample 1e-3, alpha 0.025 -> 0.0001 (gensim's defaults; tfjax's CBOW config starts at alpha 0.05, see
``experiments/configs/word2vec_cbow.py``), and are evaluated by the same code (``tfjax.tasks.word2vec_eval``; it
reproduces gensim's ``evaluate_word_analogies``/``evaluate_word_pairs`` numbers).

Speed is "effective words" per second, as gensim counts them: centre words kept after min_count and frequent-word
subsampling, divided by the training time (gensim: ``Word2Vec.train``; tfjax: the training calls and the host's data
preparation, XLA compilation excluded and reported apart). Wall time is vocabulary + training (+ compilation) for both. "words/CPU-s" divides by the process's CPU time
instead (all threads): it is less disturbed by other work on the machine than words/s.
Needs gensim (``pip install gensim``; a benchmark dependency only). Appends one JSON line per run to
``bench_results/word2vec.jsonl``.
"""

import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo root
from experiments import runtime  # noqa: E402  (sets XLA flags before JAX starts)

runtime.configure_devices()

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 5, "Training epochs (both).")
flags.DEFINE_string("seeds", "1,2,3", "Comma-separated seeds; each is one run of each implementation.")
flags.DEFINE_string("archs", "skipgram,cbow", "Which architectures.")
flags.DEFINE_integer("workers", 2, "gensim worker threads.")
flags.DEFINE_string("data_dir", "", "Data dir (empty: $TFJAX_DATA_DIR).")
flags.DEFINE_string("out", "bench_results/word2vec.jsonl", "JSON lines output (appended).")
flags.DEFINE_multi_string("set", [], "tfjax config overrides, e.g. --set=train.noise_pool=16 (repeatable).")


def _load() -> float:
  return os.getloadavg()[0]


def run_gensim(sentences, arch, seed, config):
  from gensim.models import Word2Vec
  from tfjax.tasks import word2vec_eval as ev
  t0 = time.perf_counter()
  model = Word2Vec(vector_size=config.model.dim, window=config.data.window, min_count=config.data.min_count,
                   sample=config.data.sample, negative=config.model.negatives, hs=0, sg=int(arch == "skipgram"),
                   ns_exponent=config.model.ns_exponent, alpha=config.train.alpha, min_alpha=config.train.min_alpha,
                   workers=FLAGS.workers, seed=seed, epochs=FLAGS.epochs)
  model.build_vocab(sentences)
  t1, c1 = time.perf_counter(), time.process_time()
  effective, _ = model.train(sentences, total_examples=model.corpus_count, epochs=FLAGS.epochs)
  train_s, train_cpu_s = time.perf_counter() - t1, time.process_time() - c1
  wall_s = time.perf_counter() - t0
  return ev.WordVectors(list(model.wv.index_to_key), model.wv.vectors), {
      "words": int(effective), "train_s": train_s, "wall_s": wall_s, "compile_s": 0.0,
      "words_per_s": effective / train_s, "train_cpu_s": train_cpu_s, "workers": FLAGS.workers}


def tfjax_config(arch, overrides=True):
  """The experiment config of ``arch`` (its tuned training settings), with the benchmark's epochs and overrides."""
  from experiments.configs import word2vec_cbow, word2vec_skipgram
  config = (word2vec_skipgram if arch == "skipgram" else word2vec_cbow).get_config()
  config.data_dir = FLAGS.data_dir
  config.train.epochs = FLAGS.epochs
  for item in FLAGS.set if overrides else ():
    key, value = item.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(json.loads(value)) if not isinstance(node[leaf], str) else value
  return config


def run_tfjax(arch, seed):
  from tfjax.tasks import word2vec as task
  config = tfjax_config(arch)
  config.seed = seed
  t0 = time.perf_counter()
  corpus = task.load_corpus(config)
  wv, stats = task.train(config, None, corpus)
  stats = dict(stats, wall_s=time.perf_counter() - t0)
  return wv, stats


def main(argv):
  del argv
  import jax
  from tfjax.data import word2vec_data as wd
  from tfjax.tasks import word2vec as task
  try:
    import gensim
  except ImportError:
    print("gensim is not installed: pip install gensim (benchmark dependency only)", file=sys.stderr)
    return 1
  runtime.setup_logging()
  import logging
  logging.getLogger("tfjax").setLevel(logging.WARNING)
  config = tfjax_config("skipgram", overrides=False)  # the corpus, evaluation files and gensim's hyperparameters
  paths = [task.data_path(p, config.data_dir) for p in config.data.files]
  sentences = wd.read_sentences(paths)
  seeds = [int(s) for s in FLAGS.seeds.split(",")]
  machine = {"host": platform.node(), "cpus": os.cpu_count(), "jax_devices": jax.local_device_count(),
             "platform": jax.devices()[0].platform, "jax": jax.__version__, "gensim": gensim.__version__}
  print(f"corpus: {sum(map(len, sentences))} words in {len(sentences)} lines; {FLAGS.epochs} epochs; "
        f"seeds {seeds}; {machine['jax_devices']} JAX {machine['platform']} devices; gensim workers={FLAGS.workers}")
  rows = []
  for arch in FLAGS.archs.split(","):
    for seed in seeds:
      for impl in ("gensim", "tfjax"):
        load = _load()
        if impl == "gensim":
          wv, stats = run_gensim(sentences, arch, seed, config)
        else:
          wv, stats = run_tfjax(arch, seed)
        res = task.evaluate(wv, config)
        rec = {
            "time": datetime.datetime.now().isoformat(timespec="seconds"), "impl": impl, "arch": arch,
            "seed": seed, "epochs": FLAGS.epochs, "load_before": load, "load_after": _load(),
            "effective_words": stats["words"], "words_per_s": stats["words_per_s"], "train_s": stats["train_s"],
            "compile_s": stats["compile_s"], "wall_s": stats["wall_s"], "train_cpu_s": stats["train_cpu_s"],
            "words_per_cpu_s": stats["words"] / stats["train_cpu_s"],
            "analogy": res["analogy"]["accuracy"], "analogy_oov": res["analogy"]["oov"],
            "wordsim353": res["wordsim353"]["spearman"], "simlex999": res["simlex999"]["spearman"],
            "machine": machine, "overrides": FLAGS.set if impl == "tfjax" else [],
        }
        rows.append(rec)
        runtime.append_json_lines(FLAGS.out, [rec])
        print(f"  {arch:8s} seed {seed} {impl:6s}: {stats['words_per_s'] / 1e3:6.0f}k words/s "
              f"({rec['words_per_cpu_s'] / 1e3:.0f}k per CPU-s), train "
              f"{stats['train_s']:5.2f}s, wall {stats['wall_s']:5.2f}s, analogy {100 * rec['analogy']:.2f}%, "
              f"WS353 {rec['wordsim353']:.3f}, SL999 {rec['simlex999']:.3f} (load {load:.1f})", flush=True)
  print()
  print("Mean over seeds (words/s = effective words, i.e. after min_count and subsampling, per training second):")
  header = (f"| {'arch':8s} | {'impl':6s} | {'words/s':>9s} | {'words/CPU-s':>11s} | {'train s':>7s} | {'compile s':>9s} | {'wall s':>6s} | "
            f"{'analogy %':>9s} | {'WS-353':>13s} | {'SimLex-999':>13s} |")
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for arch in FLAGS.archs.split(","):
    for impl in ("gensim", "tfjax"):
      r = [x for x in rows if x["arch"] == arch and x["impl"] == impl]
      mean = lambda k: float(np.mean([x[k] for x in r]))
      std = lambda k: float(np.std([x[k] for x in r]))
      print(f"| {arch:8s} | {impl:6s} | {mean('words_per_s') / 1e3:8.0f}k | {mean('words_per_cpu_s') / 1e3:10.0f}k | "
            f"{mean('train_s'):7.2f} | "
            f"{mean('compile_s'):9.2f} | {mean('wall_s'):6.2f} | {100 * mean('analogy'):5.2f}±{100 * std('analogy'):.2f} | "
            f"{mean('wordsim353'):6.3f}±{std('wordsim353'):.3f} | {mean('simlex999'):6.3f}±{std('simlex999'):.3f} |")
  return 0


if __name__ == "__main__":
  app.run(main)

"""Translate sentences with a trained encoder-decoder (a workdir of a translation config, e.g. translate_multi30k).

    ./launch.sh translate runs/translate_multi30k --text="A dog runs through the snow." [--text=...]
    ./launch.sh translate runs/translate_multi30k --bleu=test      # sacreBLEU of the whole test2016 set

``--beam_size=4`` searches with 4 hypotheses; ``--temperature`` > 0 samples instead of greedy decoding; ``--step``
picks a checkpoint (default: the latest).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("text", [], "A sentence in the source language (repeat the flag for several).")
flags.DEFINE_enum("bleu", None, ["val", "test"], "Translate a whole Multi30k split and print its sacreBLEU.")
flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sample from softmax(logits / temperature).")
flags.DEFINE_integer("beam_size", 1, "> 1: beam search with this many hypotheses (ignores --temperature).")
flags.DEFINE_float("length_penalty", 0.6, "Beam search: GNMT length penalty exponent (0: raw log-probabilities).")
flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
flags.DEFINE_bool("best", False, "Load the parameters of the lowest evaluation loss (runs with train.keep_best).")
flags.DEFINE_string("data_dir", None, "Where Multi30k is (for --bleu; default: the run's, then $TFJAX_DATA_DIR).")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: translate.py WORKDIR (--text=SENTENCE ... | --bleu=val|test)")
  if not FLAGS.text and not FLAGS.bleu:
    raise app.UsageError("give --text=SENTENCE (repeatable) or --bleu=val|test")
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every restore step at INFO
  from tfjax.tasks import translate as tr
  from tfjax.train.checkpoint import CheckpointError
  try:
    model, params, tokenizer, config = tr.load_for_inference(argv[1], FLAGS.step, best=FLAGS.best)
  except (FileNotFoundError, ValueError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for src, out in zip(FLAGS.text, tr.translate_texts(model, params, tokenizer, FLAGS.text,
                                                     batch_size=max(len(FLAGS.text), 1),
                                                     temperature=FLAGS.temperature, beam_size=FLAGS.beam_size,
                                                     length_penalty=FLAGS.length_penalty)):
    print(f"{src}\n  -> {out}")
  if FLAGS.bleu:
    import sacrebleu
    data_dir = FLAGS.data_dir or config.get("data_dir") or None
    try:
      sources = tr.load_multi30k(FLAGS.bleu, config.data.source, data_dir)
      refs = tr.load_multi30k(FLAGS.bleu, config.data.target, data_dir)
    except FileNotFoundError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    hyps = tr.translate_texts(model, params, tokenizer, sources, temperature=FLAGS.temperature,
                              beam_size=FLAGS.beam_size, length_penalty=FLAGS.length_penalty)
    print(f"{FLAGS.bleu} ({len(hyps)} sentences): {sacrebleu.corpus_bleu(hyps, [refs])}")
  return 0


if __name__ == "__main__":
  app.run(main)

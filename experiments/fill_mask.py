"""Fill in the blanks with a trained BERT: the top-k tokens and probabilities for each [MASK] in a text, and with
``--num_samples`` the text with its blanks filled by sampling at ``--temperature`` (left to right, each blank given
those before it).

    ./launch.sh fill-mask runs/bert --text="the capital of [MASK] is paris" --top_k=5    # or --workdir=runs/bert
    ./launch.sh fill-mask runs/bert --text="he was born in [MASK] [MASK] ." --num_samples=4 --temperature=0.8

The workdir (the first argument or ``--workdir``) is a training workdir of an MLM config (latest checkpoint, or
``--step``), or any Hugging Face ``BertForMaskedLM`` or ``RoFormerForMaskedLM`` directory (config.json +
model.safetensors + tokenizer). ``--text`` may be repeated.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (MLM) or Hugging Face BERT directory (or give it as the "
                    "first argument).")
flags.DEFINE_multi_string("text", None, "Text with one or more [MASK] tokens (repeat the flag for several).")
flags.DEFINE_integer("top_k", 5, "How many candidates to print per [MASK].", lower_bound=1)
flags.DEFINE_integer("num_samples", 0, "Also print this many texts with the blanks filled by sampling.",
                     lower_bound=0)
flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: the argmax, blank by blank).", lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
flags.mark_flags_as_required(["text"])


def main(argv):
  paths = argv[1:] + ([FLAGS.workdir] if FLAGS.workdir else [])
  if len(paths) != 1:
    raise app.UsageError("usage: fill_mask.py WORKDIR --text=\"... [MASK] ...\" [--top_k=K] [--step=N] (one workdir: "
                         f"the first argument or --workdir; got {paths or 'none'})")
  from experiments import runtime
  runtime.quiet_logging()
  from tfjax.tasks import mlm
  try:
    model, params, tokenizer = mlm.load_for_inference(paths[0], FLAGS.step)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for text in FLAGS.text:
    try:
      predictions = mlm.fill_mask(model, params, tokenizer, text, FLAGS.top_k)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(text)
    for i, candidates in enumerate(predictions):
      label = f"  [MASK] {i + 1}:" if len(predictions) > 1 else "  [MASK]:"
      print(label + "  " + "  ".join(f"{token} {prob:.3g}" for token, prob in candidates))
    if FLAGS.num_samples:
      import jax
      print(f"  sampled at T={FLAGS.temperature:g}:")
      for filled in mlm.sample_fills(model, params, tokenizer, text, FLAGS.num_samples, jax.random.key(FLAGS.seed),
                                     FLAGS.temperature):
        print(f"    {filled}")
  return 0


if __name__ == "__main__":
  app.run(main)

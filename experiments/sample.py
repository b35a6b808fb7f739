"""Generate text from a trained workdir (or an imported Hugging Face GPT-2 directory).

``./launch.sh sample WORKDIR [--prompt=...] [--num_tokens=500] [--temperature=0.8] [--top_k=200] [--top_p=1.0]``
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("prompt", "\n", "Text to continue.")
flags.DEFINE_integer("num_tokens", 500, "Tokens to generate.", lower_bound=1)
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.", lower_bound=0.0)
flags.DEFINE_integer("top_k", 200, "Keep the k most likely tokens (0: all).", lower_bound=0)
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1: off).")
flags.DEFINE_integer("num_samples", 1, "Independent samples.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_bool("best", False, "The parameters with the lowest evaluation loss (runs with train.keep_best).")
flags.DEFINE_bool("no_cache", False, "Full forward pass per token instead of the KV cache.")
flags.register_validator("top_p", lambda p: 0.0 < p <= 1.0, "--top_p must be in (0, 1] (1: off)")
FLAGS = flags.FLAGS


def load(path):
  """(model, params, tokenizer) from a tfjax workdir or a Hugging Face GPT-2 directory."""
  from tfjax.tasks.lm import load_for_inference
  model, params, tokenizer, step = load_for_inference(path, FLAGS.step, best=FLAGS.best)
  if step is not None:
    print(f"# {path}: {'best, ' if FLAGS.best else ''}step {step}", file=sys.stderr)
  return model, params, tokenizer


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: sample.py WORKDIR [--prompt=...]")
  import jax
  from experiments import runtime
  from tfjax.generate import generate_text
  runtime.quiet_logging()
  from tfjax.train.checkpoint import CheckpointError
  from tfjax.hf.common import HFCheckpointError
  try:
    model, params, tokenizer = load(argv[1])
  except (FileNotFoundError, CheckpointError, HFCheckpointError, ValueError) as e:  # what a user can act on
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    texts = generate_text(model, params, tokenizer, FLAGS.prompt, FLAGS.num_tokens, jax.random.key(FLAGS.seed),
                          temperature=FLAGS.temperature, top_k=FLAGS.top_k or None,
                          top_p=FLAGS.top_p if FLAGS.top_p < 1.0 else None, num_samples=FLAGS.num_samples,
                          use_cache=not FLAGS.no_cache)
  except ValueError as e:  # a prompt the tokenizer cannot encode, a top_k above the vocabulary, ...
    print(f"error: {e}", file=sys.stderr)
    return 1
  for text in texts:
    print(text)
    print("-" * 40)


if __name__ == "__main__":
  app.run(main)

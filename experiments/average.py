"""Average the parameters of a run's last checkpoints (or chosen steps) into an inference workdir.

    ./launch.sh average runs/translate_multi30k_tiny --last=10            # -> runs/translate_multi30k_tiny/averaged
    ./launch.sh average WORKDIR --steps=7000,7500,8000 --out=/tmp/avg
    ./launch.sh translate runs/translate_multi30k_tiny/averaged --bleu=test --beam_size=5

See :mod:`tfjax.train.average`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("last", None, "Average the K newest complete checkpoints.")
flags.DEFINE_list("steps", None, "Average exactly these checkpoint steps (comma-separated).")
flags.DEFINE_string("out", None, "Where to write the averaged workdir (default: WORKDIR/averaged).")


def main(argv):
  if len(argv) != 2 or (FLAGS.last is None) == (FLAGS.steps is None):
    raise app.UsageError("usage: average.py WORKDIR (--last=K | --steps=S1,S2,...) [--out=DIR]")
  from experiments import runtime
  runtime.quiet_logging()
  from tfjax.train.average import average_checkpoints
  from tfjax.train.checkpoint import CheckpointError
  try:
    steps = [int(s) for s in FLAGS.steps] if FLAGS.steps is not None else None
  except ValueError:
    raise app.UsageError(f"--steps must be integers, got {FLAGS.steps}") from None
  try:
    out, chosen = average_checkpoints(argv[1], last=FLAGS.last, steps=steps, out=FLAGS.out)
  except (CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"averaged steps {chosen} of {os.path.abspath(argv[1])} into {out}")
  return 0


if __name__ == "__main__":
  app.run(main)

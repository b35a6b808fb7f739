"""Look inside a trained model: ``./launch.sh explain NAME [WORKDIR|HF_DIR] --out=DIR [--text=...] [...]``.

NAME is one of tfjax.explain.commands.COMMANDS (``./launch.sh explain --help`` lists them). Each writes PNGs, the
numbers behind them as JSON (and HTML where it helps) into ``--out`` and prints a short summary. Only the options
given are passed on; each command has its own defaults.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def _ints(s):
  return [int(x) for x in s.split(",") if x.strip()]


def _floats(s):
  return [float(x) for x in s.split(",") if x.strip()]


def _bool(s):
  if s.lower() not in ("true", "false", "1", "0", "yes", "no"):
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
  return s.lower() in ("true", "1", "yes")


def _words(s):
  return [x.strip() for x in s.split(",") if x.strip()]


def parser():
  from tfjax.explain.commands import COMMANDS
  p = argparse.ArgumentParser(
      prog="./launch.sh explain", argument_default=argparse.SUPPRESS,
      description="Look inside a trained model.",
      epilog="commands:\n" + "\n".join(f"  {n:<14s}{c.help}" for n, c in COMMANDS.items()),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", choices=sorted(COMMANDS), metavar="NAME", help="the command (see below)")
  p.add_argument("path", nargs="?", default=None, metavar="WORKDIR",
                 help="a tfjax workdir, a Hugging Face GPT-2/BERT directory, or a word2vec vectors file")
  p.add_argument("--out", default=None, help="output directory (default: WORKDIR/explain/NAME, or explain/NAME)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--best", action="store_true", default=False, help="the lowest-eval-loss parameters")
  g = p.add_argument_group("command options (passed on only when given)")
  g.add_argument("--text", help="the text to look at (the translator: the source sentence)")
  g.add_argument("--target", help="translator: the target sentence (default: the model's greedy translation)")
  g.add_argument("--position", type=int, help="attribution: the text position looked at (-1: the last)")
  g.add_argument("--indirect", type=_bool, help="attribution: also zero each head and see who stops writing (true)")
  g.add_argument("--layer", type=int, help="layer index (0-based)")
  g.add_argument("--head", type=int, help="head index (0-based)")
  g.add_argument("--neurons", type=_ints, help="comma-separated MLP neuron indices")
  g.add_argument("--top_k", type=int, help="how many items to list")
  g.add_argument("--max_batches", type=int, help="validation batches to read")
  g.add_argument("--max_distance", type=int, help="positions: the largest query-key offset shown")
  g.add_argument("--temperatures", type=_floats, help="comma-separated temperatures")
  g.add_argument("--num_samples", type=int, help="samples per temperature")
  g.add_argument("--num_tokens", type=int, help="tokens per sample")
  g.add_argument("--words", type=_words, help="comma-separated words/tokens (neighbours, cosine matrix)")
  g.add_argument("--analogy", action="append", help="a,b,c: a - b + c (repeatable)")
  g.add_argument("--group", action="append", dest="groups", help="NAME:w1,w2,... a group to project (repeatable)")
  g.add_argument("--steps", type=int, help="training steps (superposition, scaled_dot_product)")
  g.add_argument("--head_dims", type=_ints, help="scaled_dot_product: comma-separated head widths")
  g.add_argument("--seed", type=int, help="random seed")
  g.add_argument("--routes", choices=["direct", "all"], help="composition: the earlier head's direct write (direct) "
                 "or its effect through every route (all)")
  g.add_argument("--max_rows", type=int, help="composition: rows of the validation batch to read")
  g.add_argument("--over_checkpoints", action="store_true", help="induction, scaled_dot_product: also at every checkpoint of the workdir")
  g.add_argument("--quick", action="store_true", help="a quick, smaller run (superposition, scaled_dot_product)")
  return p


def split_config_overrides(argv):
  """``--config.KEY=VALUE`` arguments (for commands that train, e.g. cbow_to_attention) apart from the rest."""
  overrides, rest = [], []
  for a in argv:
    (overrides if a.startswith("--config.") else rest).append(a)
  bad = [a for a in overrides if "=" not in a]
  if bad:
    raise SystemExit(f"error: {bad[0]} needs a value: --config.KEY=VALUE")
  return [a[len("--config."):] for a in overrides], rest


def main(argv=None):
  overrides, argv = split_config_overrides(sys.argv[1:] if argv is None else list(argv))
  args = vars(parser().parse_args(argv))
  if overrides:
    args["config_overrides"] = overrides
  name, path, out, step, best = (args.pop(k) for k in ("name", "path", "out", "step", "best"))
  if out is None:
    out = os.path.join(path if path and os.path.isdir(path) else ".", "explain", name)
  import logging
  from experiments import runtime
  from tfjax.explain.commands import COMMANDS, run_command
  # self-contained (it trains, and shows its progress): no workdir is read
  trains = name in COMMANDS and (not COMMANDS[name].kinds or (path is None and COMMANDS[name].standalone is not None))
  runtime.quiet_logging(logging.INFO if trains else logging.WARNING)
  from tfjax.explain.subjects import SubjectError
  from tfjax.config import ConfigError
  from tfjax.train.checkpoint import CheckpointError
  start = time.perf_counter()
  try:
    result = run_command(name, path, out, step=step, best=best, **args)
  except (SubjectError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  summary = result.get("summary") if isinstance(result, dict) else None
  if summary:
    print(summary)
  print(f"[explain {name}] wrote {os.path.abspath(out)} in {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())

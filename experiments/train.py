"""Train an experiment: ``python experiments/train.py --config=experiments/configs/NAME.py --workdir=DIR
[--config.key=value ...]`` (or ``./launch.sh train NAME --workdir=DIR ...``). A relaunch resumes from DIR."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from experiments import runtime  # noqa: E402  (sets XLA flags before JAX starts)

runtime.configure_devices()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl's flag parsing, with an override of a config key that does not exist reported in one line (ml_collections
  raises a bare KeyError/AttributeError there, outside absl's own error handling)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(message))
      e = e.args[0]
    detail = " ".join(str(e.args[0] if e.args else e).split())
    missing = detail.split()[0].strip("'") if detail else ""
    flag = next((a for a in argv[1:] if a.startswith("--config.") and missing in a.partition("=")[0].split(".")),
                "a --config.KEY=VALUE flag")
    sys.stderr.write(f"error: {flag}: the config has no key {detail}\n")
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.setup_logging()
  runtime.enable_compilation_cache()
  runtime.maybe_initialize_distributed()
  results = runtime.run(FLAGS.config, FLAGS.workdir)
  return 0 if results is not None else 1


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

"""``./launch.sh plot WORKDIR... [--out=FILE] [--metric=loss]``: loss curves of one or more runs to a PNG."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("out", "loss.png", "Output PNG.")
flags.DEFINE_string("metric", "loss", "Metric to plot (its eval_ twin is drawn too).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("usage: plot.py WORKDIR... [--out=FILE]")
  from tfjax.runs.plots import plot_runs
  from tfjax.train.metrics import read_metrics
  for wd in argv[1:]:
    if not os.path.isfile(os.path.join(wd, "metrics.jsonl")):
      sys.exit(f"error: {wd} is not a run's workdir: it has no metrics.jsonl")
  keys = {FLAGS.metric, f"eval_{FLAGS.metric}"}
  if not any(keys & r.keys() for wd in argv[1:] for r in read_metrics(wd)):
    sys.exit(f"error: no {FLAGS.metric!r} (or eval_{FLAGS.metric}) in the metrics of {', '.join(argv[1:])}; "
             "--metric names a key of metrics.jsonl")
  print(plot_runs(argv[1:], FLAGS.out, FLAGS.metric))


if __name__ == "__main__":
  app.run(main)

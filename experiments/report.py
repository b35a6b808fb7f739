"""``./launch.sh report SWEEPDIR [--storage=URL]``: the summary table (``summary.md``, ``summary.csv``) and the loss
curves of all runs (``curves.png``, best highlighted) of a sweep directory, finished or not: a local or SLURM sweep
(``sweep.json``), any directory of workdirs, or an Optuna study (``study.json``: one row per trial, plus Optuna's
``importance.png`` and ``history.png``; ``--storage`` where the recorded URL hides a password)."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="./launch.sh report", description=__doc__)
  p.add_argument("sweepdir")
  p.add_argument("--storage", default=None, help="the Optuna study's storage URL (default: from study.json)")
  args = p.parse_args(argv)
  if not os.path.isdir(args.sweepdir):
    print(f"report: {args.sweepdir} is not a directory", file=sys.stderr)
    return 2
  from tfjax.runs import sweep
  try:
    if os.path.exists(os.path.join(args.sweepdir, "study.json")):
      from tfjax.runs import optuna_sweep
      optuna_sweep.report(args.sweepdir, args.storage)
    else:
      if args.storage:
        p.error(f"--storage is for Optuna studies; {args.sweepdir} has no study.json")
      if not os.path.exists(os.path.join(args.sweepdir, "sweep.json")) and not sweep.summarize(args.sweepdir):
        one_run = os.path.exists(os.path.join(args.sweepdir, "metrics.jsonl"))
        print(f"report: {args.sweepdir} holds no runs (no sweep.json, study.json or workdirs with metrics.jsonl)"
              + ("; it is one run's workdir: its results.json, or ./launch.sh plot WORKDIR" if one_run else ""),
              file=sys.stderr)
        return 2
      sweep.report(args.sweepdir)
  except sweep.SweepError as e:
    print(f"report: {e}", file=sys.stderr)
    return 2
  with open(os.path.join(args.sweepdir, "summary.md")) as f:
    print(f.read())
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""``./launch.sh sweep CONFIG --sweep KEY=V1,V2 [--sweep ...] [--random=N --range KEY=LO:HI[:log|lin|int] ...]
[--parallel=N] [--sweepdir=DIR] [--seed=S] [--config.KEY=VALUE ...]``: a grid (or random search) of training runs,
each in ``SWEEPDIR/<settings>``, then ``summary.md``, ``summary.csv`` and ``curves.png``. Relaunching the same
command skips finished runs and resumes the others."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("config", help="experiments/configs/NAME.py (or a path)")
  p.add_argument("--sweep", action="append", default=[], help="KEY=V1,V2,... (a grid axis; repeatable)")
  p.add_argument("--range", action="append", default=[], help="KEY=LOW:HIGH[:lin|log|int] (with --random)")
  p.add_argument("--random", type=int, default=0, help="random search: this many runs drawn from --range "
                 "(and from --sweep lists)")
  p.add_argument("--seed", type=int, default=0, help="seed of the random search")
  p.add_argument("--parallel", type=int, default=1, help="runs at a time (on GPUs each gets its own share of them)")
  p.add_argument("--gpus_per_run", type=int, default=0, help="GPUs per run with --parallel > 1 (0: an equal share "
                 "of the visible GPUs)")
  p.add_argument("--sweepdir", default=None, help="default: runs/sweep_<CONFIG>")
  p.add_argument("--dry_run", action="store_true", help="print the runs and exit")
  args, extra = p.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad} (fixed overrides must look like --config.KEY=VALUE)")

  from experiments import runtime
  from tfjax.train import sweep
  runtime.setup_logging()
  if args.range and not args.random:
    p.error("--range needs --random=N")
  try:
    axes = [sweep.parse_axis(s) for s in args.sweep]
    if args.random:
      settings = sweep.random_search([sweep.parse_range(r) for r in args.range], args.random, args.seed, axes)
    else:
      settings = sweep.grid(axes) if axes else [{}]
  except sweep.SweepError as e:
    p.error(str(e))
  name = os.path.splitext(os.path.basename(args.config))[0]
  sweepdir = args.sweepdir or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs",
                                           f"sweep_{name}")
  if args.dry_run:
    for s in settings:
      print(sweep.run_name(s), s)
    return 0
  try:
    rows = sweep.run_sweep(args.config, settings, sweepdir, args.parallel, extra, gpus_per_run=args.gpus_per_run)
  except sweep.SweepError as e:
    p.error(str(e))
  with open(os.path.join(sweepdir, "summary.md")) as f:
    print(f.read())
  print(f"summary: {sweepdir}/summary.md, summary.csv, curves.png")
  return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())

"""``./launch.sh sweep CONFIG [--sweep KEY=V1,V2 ...] [--range KEY=LO:HI[:log|lin|int] ...] [--config.KEY=VALUE ...]``
runs a sweep of training runs, each in its own workdir under SWEEPDIR, then writes ``summary.md``, ``summary.csv`` and
``curves.png``. Three modes:

  (default)  a grid of the --sweep axes (or --random=N draws from --range and --sweep), --parallel=N runs at a time
             on this machine, each in SWEEPDIR/<settings>; relaunching skips finished runs and resumes the others.
  --optuna   an Optuna study (TPE) of --trials=N runs over --range/--sweep, each in SWEEPDIR/trial_<n>, bad ones
             pruned at evaluations (--pruner); --parallel=N workers here, or the same command on several machines
             with one --storage=URL (default sqlite:///SWEEPDIR/study.db) share the study. Also: importance.png and
             history.png.
  --slurm    writes SWEEPDIR/sweep.sbatch, a SLURM job array whose task i runs the i-th run of the grid/random spec
             (resumable, requeued on preemption); --submit also submits it with sbatch.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("config", help="experiments/configs/NAME.py (or a path)")
  p.add_argument("--sweep", action="append", default=[], help="KEY=V1,V2,... (a grid axis, or a categorical "
                 "parameter with --optuna; repeatable)")
  p.add_argument("--range", action="append", default=[], help="KEY=LOW:HIGH[:lin|log|int] (with --random or "
                 "--optuna)")
  p.add_argument("--random", type=int, default=0, help="random search: this many runs drawn from --range "
                 "(and from --sweep lists)")
  p.add_argument("--seed", type=int, default=None, help="seed of the random search (default 0) or of Optuna's "
                 "sampler (default: random; worker i of --parallel uses SEED+i)")
  p.add_argument("--parallel", type=int, default=1, help="runs at a time (with --optuna: worker processes; on GPUs "
                 "each gets its own share of them)")
  p.add_argument("--gpus_per_run", type=int, default=0, help="GPUs per run with --parallel > 1 (0: an equal share "
                 "of the visible GPUs)")
  p.add_argument("--sweepdir", default=None, help="default: runs/sweep_<CONFIG>")
  p.add_argument("--dry_run", action="store_true", help="print the runs (or the search space) and exit")
  p.add_argument("--train_script", default=None, help="the entry point each run is launched with (default "
                 "experiments/train.py; another must take the same --config/--workdir flags)")
  o = p.add_argument_group("Optuna")
  o.add_argument("--optuna", action="store_true", help="an adaptive Optuna study instead of a grid")
  o.add_argument("--trials", type=int, default=0, help="trials of the study in all (across workers and relaunches)")
  o.add_argument("--storage", default=None, help="SQLAlchemy URL of the study (default sqlite:///SWEEPDIR/study.db; "
                 "e.g. postgresql://user@host/db to share it between machines)")
  o.add_argument("--study", default=None, help="study name (default: the sweep dir's name)")
  o.add_argument("--pruner", default="median", help="median[:STARTUP[:WARMUP]] | hyperband | asha | "
                 "threshold:UPPER | none")
  o.add_argument("--objective", default="best_eval_loss", help="the results.json key to minimise")
  o.add_argument("--heartbeat", type=int, default=60, help="seconds between a worker's heartbeats; a trial without "
                 "one for --grace seconds (default 2x) is its dead worker's: failed and re-queued")
  o.add_argument("--grace", type=int, default=0, help="see --heartbeat (0: twice the heartbeat)")
  o.add_argument("--max_retry", type=int, default=3, help="re-queues of a trial whose worker died")
  o.add_argument("--poll", type=float, default=1.0, help="seconds between reads of a trial's metrics.jsonl")
  s = p.add_argument_group("SLURM")
  s.add_argument("--slurm", action="store_true", help="write SWEEPDIR/sweep.sbatch, one array task per run")
  s.add_argument("--slurm_args", default="", help='more sbatch options, e.g. "--gpus-per-task=1 --time=2:00:00 '
                 '--partition=gpu"')
  s.add_argument("--submit", action="store_true", help="with --slurm: submit the script with sbatch")
  return p


def _check_modes(p: argparse.ArgumentParser, args) -> None:
  """The flags that do not go together, each a clear error (argparse's exit 2)."""
  if args.optuna and (args.random or args.slurm):
    p.error("--optuna runs its own search: drop --random / --slurm (start the same --optuna command on several "
            "machines, or in several SLURM jobs, with one --storage=URL instead)")
  if args.optuna and args.trials < 1:
    p.error("--optuna needs --trials=N (trials of the study in all)")
  if not args.optuna and (args.trials or args.storage or args.study):
    p.error("--trials / --storage / --study are for --optuna")
  if args.slurm and (args.parallel != 1 or args.gpus_per_run):
    p.error("--parallel / --gpus_per_run are for runs on this machine; with --slurm, give each array task its "
            "resources with --slurm_args (e.g. --gpus-per-task=1)")
  if args.submit and not args.slurm:
    p.error("--submit needs --slurm")
  if args.range and not (args.random or args.optuna):
    p.error("--range needs --random=N (or --optuna)")


def _parse_specs(p: argparse.ArgumentParser, args, extra: list[str]):
  """``(axes, ranges)`` of the --sweep/--range specs; every value and fixed override applied to the config before
  anything starts (with the default entry point), so an unknown key is one error here, not one per run."""
  from tfjax.runs import sweep
  try:
    axes = [sweep.parse_axis(a) for a in args.sweep]
    ranges = [sweep.parse_range(r) for r in args.range]
    if args.train_script is None:  # another entry point may take other keys
      sweep.check_overrides(args.config, [a[len("--config."):] for a in extra] +
                            [f"{k}={v}" for k, values in axes for v in values] +
                            [f"{k}={int(lo) if scale == 'int' else lo}" for k, lo, _, scale in ranges])
  except sweep.SweepError as e:
    p.error(str(e))
  return axes, ranges


def _print_summary(sweepdir: str, pictures: str) -> None:
  with open(os.path.join(sweepdir, "summary.md")) as f:
    print(f.read())
  print(f"summary: {sweepdir}/summary.md, summary.csv, {pictures}")


def _run_optuna(p: argparse.ArgumentParser, args, extra, axes, ranges, sweepdir: str) -> int:
  from tfjax.runs import optuna_sweep, sweep
  try:
    space = optuna_sweep.search_space(axes, ranges)
    optuna_sweep.make_pruner(args.pruner)
  except sweep.SweepError as e:
    p.error(str(e))
  if args.dry_run:
    for k, v in space.items():
      print(k, v)
    return 0
  try:
    rows = optuna_sweep.run_study(
        args.config, space, sweepdir, args.trials, parallel=args.parallel, gpus_per_run=args.gpus_per_run,
        study_name=args.study, storage_url=args.storage, extra_args=extra, objective=args.objective,
        pruner=args.pruner, seed=args.seed, heartbeat_s=args.heartbeat, grace_s=args.grace or None,
        max_retry=args.max_retry, poll_s=args.poll, train_script=args.train_script)
  except sweep.SweepError as e:
    p.error(str(e))
  _print_summary(sweepdir, "curves.png, history.png, importance.png")
  return 0 if any(r["state"] in ("COMPLETE", "PRUNED") for r in rows) else 1


def _write_slurm(args, extra, settings, sweepdir: str) -> int:
  from tfjax.runs import slurm, sweep
  try:
    script = slurm.write_script(args.config, settings, sweepdir, extra, args.slurm_args,
                                train_script=args.train_script)
    print(f"wrote {script}: a job array of {len(settings)} runs (tasks 0-{len(settings) - 1})")
    if args.submit:
      print(f"submitted: job {slurm.submit(script)}")
    else:
      print(f"submit with: sbatch {script}   (or rerun with --submit)")
  except sweep.SweepError as e:
    print(f"sweep: error: {e}", file=sys.stderr)
    return 2
  print(f"then: ./launch.sh report {sweepdir}")
  return 0


def main(argv=None) -> int:
  p = _parser()
  args, extra = p.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    p.error(f"unknown arguments {bad} (fixed overrides must look like --config.KEY=VALUE)")

  from experiments import runtime
  from tfjax.runs import sweep
  runtime.setup_logging()
  _check_modes(p, args)
  axes, ranges = _parse_specs(p, args, extra)
  name = os.path.splitext(os.path.basename(args.config))[0]
  sweepdir = os.path.abspath(args.sweepdir or os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", f"sweep_{name}"))
  if args.optuna:
    return _run_optuna(p, args, extra, axes, ranges, sweepdir)

  try:
    if args.random:
      settings = sweep.random_search(ranges, args.random, args.seed or 0, axes)
    else:
      settings = sweep.grid(axes) if axes else [{}]
  except sweep.SweepError as e:
    p.error(str(e))
  if args.dry_run:
    for s in settings:
      print(sweep.run_name(s), s)
    return 0
  if args.slurm:
    return _write_slurm(args, extra, settings, sweepdir)
  try:
    rows = sweep.run_sweep(args.config, settings, sweepdir, args.parallel, extra, gpus_per_run=args.gpus_per_run,
                           train_script=args.train_script)
  except sweep.SweepError as e:
    p.error(str(e))
  _print_summary(sweepdir, "curves.png")
  return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())

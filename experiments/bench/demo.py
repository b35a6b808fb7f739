"""The README demo against nanoGPT's own CPU run, start to finish, side by side: ``./launch.sh bench demo --rounds=3``.

Each round runs, one right after the other (the order swapped every other round, so neither always gets the
quieter minute), two whole programs as subprocesses, each timed from its spawn to its exit:

- **tfjax**: ``./launch.sh train gpt_shakespeare_tiny --workdir=<fresh>``, exactly what a new user types (the
  launcher, the interpreter, imports, data and tokenizer, init, compilation, 2,000 steps with an evaluation of 20
  validation batches every 250 steps and a checkpoint every 500, the 500-character sample, ``loss.png``).
- **nanoGPT**: its ``train.py`` at its README's CPU "baby" setting (4/4/128, context 64, batch 12, 2,000 iterations,
  eval every 250 with ``eval_iters=20`` on train and val, ``log_interval=1``, dropout 0, no compile), restated as a
  whole program in ``bench/nanogpt.py --mode=whole_run``; its ``prepare.py`` data (``meta.pkl`` and uint16
  ``train.bin`` / ``val.bin``) is written once before the rounds, as a user runs ``prepare.py`` once.

Per run: the wall time from spawn to exit; the time (since spawn) of the first evaluation line whose validation loss
is at most ``--target_loss`` (1.88, nanoGPT's final loss at this setting; "-" if never reached); steady tokens/s (the
median of the run's own per-interval rates: tfjax's logged ``tok/s``, nanoGPT's per-iteration times); the final
validation loss; and where the time went: ``startup`` (spawn to the training code: launcher, interpreter, imports,
data), then the programs' own phase timers (``setup``, ``compile``, ``eval``, ``train``, ``checkpoint``,
``final_report`` = the sample, ``plot``), and ``exit`` (what is left: tear-down). One JSON line per run and one
summary line go to ``bench_results/demo.jsonl``; each run's output is kept in the bench's folder.

The compilation cache: tfjax keeps compiled programs in a persistent cache (``experiments/runtime.py``), as a user's
second run does. ``--cache=bench`` (default) gives the rounds one fresh cache folder (and matmul-peak cache): round 1
runs cold, later rounds warm, and the summary shows both. ``--cache=cold`` gives every round a fresh one (a first run
every time); ``--cache=user`` uses the user's own ``~/.cache/tfjax``. Both programs inherit this process's
environment, except that by default (``--nanogpt_malloc=own``) nanoGPT's run loses the allocator ``launch.sh``
preloads (``LD_PRELOAD``, ``MALLOC_CONF``, ``MIMALLOC_*``): each program runs with the malloc its own user gets (tfjax:
jemalloc or the wheel's mimalloc through ``./launch.sh``; nanoGPT: ``python train.py``, glibc's).
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so that tests can import this module)."""
  flags.DEFINE_integer("rounds", 3, "Rounds; each runs both programs once, alternating which goes first.")
  flags.DEFINE_enum("cache", "bench", ["bench", "cold", "user"], "tfjax's compilation/peak cache: one fresh folder for "
                    "all rounds (round 1 cold), a fresh one every round, or the user's ~/.cache/tfjax.")
  flags.DEFINE_float("target_loss", 1.88, "Report the time at which validation loss first reaches this.")
  flags.DEFINE_enum("only", "both", ["both", "tfjax", "nanogpt"], "Run only one of the two (e.g. to profile tfjax).")
  flags.DEFINE_string("workdir", "", "Where runs, logs and the prepared data go (default: a new temporary folder).")
  flags.DEFINE_bool("keep", False, "Keep the runs' folders (logs are always kept in --workdir/logs).")
  flags.DEFINE_list("tfjax_args", [], "Extra arguments for the tfjax run (e.g. --config.train.num_steps=200).")
  flags.DEFINE_list("nanogpt_args", [], "Extra arguments for the nanoGPT run (e.g. --max_iters=200).")
  flags.DEFINE_string("out", "bench_results/demo.jsonl", "JSON lines output.")
  flags.DEFINE_enum("nanogpt_malloc", "own", ["own", "same"],
                    "own: nanoGPT runs with the allocator its user has (`python train.py`: none preloaded; "
                    "launch.sh's LD_PRELOAD and allocator settings removed); same: the bench's environment, "
                    "the allocator launch.sh preloads for tfjax.")

# tfjax: "HH:MM:SS step 250 | eval_loss 2.1912 | ..." and "HH:MM:SS step 50/2000 | loss ... | 8,046 tok/s | ..."
TFJAX_EVAL = re.compile(r"\bstep (\d+) \| eval_loss ([0-9.]+)")
TFJAX_RATE = re.compile(r"\bstep (\d+)/\d+ \|.*\| ([0-9,]+) tok/s")
# nanoGPT: "step 250: train loss 2.1, val loss 2.2" and "iter 12: loss 3.1, time 33.10ms"
NANOGPT_EVAL = re.compile(r"^step (\d+): train loss [0-9.]+, val loss ([0-9.]+)")
NANOGPT_ITER = re.compile(r"^iter (\d+): loss [0-9.]+, time ([0-9.]+)ms")


def run_timed(cmd: list[str], env: dict, log_path: str) -> tuple[float, list[tuple[float, str]], float, int]:
  """Runs ``cmd``; returns (wall seconds, [(seconds since spawn, line)], spawn time.time(), exit code)."""
  env = {**env, "PYTHONUNBUFFERED": "1"}
  spawn_unix = time.time()
  env["BENCH_SPAWN_UNIX"] = repr(spawn_unix)
  start = time.perf_counter()
  lines = []
  with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
      cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
    for line in proc.stdout:
      lines.append((time.perf_counter() - start, line.rstrip("\n")))
      log.write(line)
    code = proc.wait()
  return time.perf_counter() - start, lines, spawn_unix, code


def parse_tfjax(lines, wall: float, spawn_unix: float, workdir: str, target: float) -> dict:
  evals = [(t, int(m.group(1)), float(m.group(2))) for t, l in lines if (m := TFJAX_EVAL.search(l))]
  rates = [(int(m.group(1)), float(m.group(2).replace(",", ""))) for _, l in lines if (m := TFJAX_RATE.search(l))]
  rec = {"final_val_loss": evals[-1][2] if evals else None,
         "time_to_target_s": next((t for t, _, v in evals if v <= target), None),
         "steady_tokens_per_s": statistics.median([r for _, r in rates[1:]]) if len(rates) > 1 else None}
  try:
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
      results = json.load(f)
  except (OSError, ValueError):
    return rec
  phases = {"startup": results["started_unix"] - spawn_unix, **results.get("phase_seconds", {})}
  phases["exit"] = wall - phases["startup"] - results.get("run_seconds", 0.0)
  rec["phases"] = phases
  rec["final_val_loss"] = results.get("eval_loss", rec["final_val_loss"])
  return rec


def parse_nanogpt(lines, wall: float, target: float) -> dict:
  evals = [(t, int(m.group(1)), float(m.group(2))) for t, l in lines if (m := NANOGPT_EVAL.match(l))]
  iters = [float(m.group(2)) / 1e3 for _, l in lines if (m := NANOGPT_ITER.match(l))]
  result = next((json.loads(l[len("RESULT "):]) for _, l in reversed(lines) if l.startswith("RESULT ")), {})
  tokens = result.get("tokens_per_iter", 12 * 64)
  rec = {"final_val_loss": evals[-1][2] if evals else None,
         "time_to_target_s": next((t for t, _, v in evals if v <= target), None),
         # the first iterations warm up; iterations that include an evaluation are slow, and the median skips them
         "steady_tokens_per_s": tokens / statistics.median(iters[5:]) if len(iters) > 5 else None}
  if result:
    phases = {"startup": result["phases"].pop("imports"), **result["phases"]}
    phases["exit"] = wall - sum(phases.values())
    rec["phases"] = phases
  return rec


def fmt(x, spec="{:.1f}"):
  return "-" if x is None else spec.format(x)


def print_table(rows: list[dict]) -> None:
  phase_names = ["startup", "setup", "compile", "eval", "train", "checkpoint", "final_report", "plot", "exit"]
  head = f"{'round':>5} {'program':<8} {'wall s':>7} {'to ' + str(FLAGS.target_loss) + ' s':>9} {'tok/s':>7} " \
         f"{'val loss':>8}  " + " ".join(f"{p[:8]:>8}" for p in phase_names)
  print(head)
  for r in rows:
    ph = r.get("phases", {})
    print(f"{r['round']:>5} {r['program']:<8} {r['wall_s']:>7.1f} {fmt(r['time_to_target_s']):>9} "
          f"{fmt(r['steady_tokens_per_s'], '{:,.0f}'):>7} {fmt(r['final_val_loss'], '{:.4f}'):>8}  "
          + " ".join(f"{fmt(ph.get(p)):>8}" for p in phase_names))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.rounds < 1:
    raise app.UsageError("--rounds must be at least 1")
  if FLAGS.only != "tfjax":
    try:
      import torch  # noqa: F401  (only checked here; the nanoGPT run imports it itself)
    except ImportError:
      raise app.UsageError("the nanoGPT side needs PyTorch: .venv/bin/pip install torch==2.13.0 (the CPU wheel; "
                           "or --index-url https://download.pytorch.org/whl/cpu), or pass --only=tfjax") from None
  base = os.path.abspath(FLAGS.workdir) if FLAGS.workdir else tempfile.mkdtemp(prefix="tfjax_bench_demo_")
  os.makedirs(os.path.join(base, "logs"), exist_ok=True)
  py = sys.executable
  env = dict(os.environ)
  data = os.path.join(base, "shakespeare_char")
  if FLAGS.only != "tfjax":  # nanoGPT's prepare.py, once, outside the timed runs
    subprocess.run([py, os.path.join(ROOT, "experiments", "bench", "nanogpt.py"), "--mode=prepare",
                    f"--prepared_dir={data}"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
  shared_cache = os.path.join(base, "cache")
  rows = []
  stamp = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "ld_preload": os.environ.get("LD_PRELOAD", ""),
           "nanogpt_malloc": FLAGS.nanogpt_malloc,
           "cache": FLAGS.cache, "cpu_count": os.cpu_count(), "target_loss": FLAGS.target_loss}
  for rnd in range(1, FLAGS.rounds + 1):
    programs = ["tfjax", "nanogpt"] if rnd % 2 else ["nanogpt", "tfjax"]
    programs = [p for p in programs if FLAGS.only in ("both", p)]
    for prog in programs:
      rundir = os.path.join(base, f"round{rnd}", prog)
      shutil.rmtree(rundir, ignore_errors=True)
      log_path = os.path.join(base, "logs", f"round{rnd}_{prog}.log")
      run_env = dict(env)
      if prog == "tfjax":
        if FLAGS.cache != "user":
          cache = shared_cache if FLAGS.cache == "bench" else os.path.join(base, f"round{rnd}", "cache")
          run_env["XDG_CACHE_HOME"] = cache  # the compilation cache and the matmul peak live under it
          run_env.pop("TFJAX_COMPILATION_CACHE_DIR", None)
        cmd = [os.path.join(ROOT, "launch.sh"), "train", "gpt_shakespeare_tiny", f"--workdir={rundir}",
               *FLAGS.tfjax_args]
      else:
        if FLAGS.nanogpt_malloc == "own":
          for key in [k for k in run_env if k in ("LD_PRELOAD", "MALLOC_CONF") or k.startswith("MIMALLOC_")]:
            run_env.pop(key)
        cmd = [py, os.path.join(ROOT, "experiments", "bench", "nanogpt.py"), "--mode=whole_run", "--config=baby",
               f"--prepared_dir={data}", f"--out_dir={rundir}", "--out=", *FLAGS.nanogpt_args]
      print(f"[bench demo] round {rnd}: {prog} ...", flush=True)
      wall, lines, spawn_unix, code = run_timed(cmd, run_env, log_path)
      if code != 0:
        tail = "\n".join(l for _, l in lines[-15:])
        raise RuntimeError(f"{prog} exited with code {code} (log: {log_path}):\n{tail}")
      rec = (parse_tfjax(lines, wall, spawn_unix, rundir, FLAGS.target_loss) if prog == "tfjax"
             else parse_nanogpt(lines, wall, FLAGS.target_loss))
      rec = {"round": rnd, "program": prog, "wall_s": wall, **rec}
      rows.append(rec)
      print(f"[bench demo] round {rnd}: {prog} {wall:.1f} s", flush=True)
      if not FLAGS.keep:
        shutil.rmtree(rundir, ignore_errors=True)
  print_table(rows)
  summary = {"summary": True, "rounds": FLAGS.rounds}
  for prog in ("tfjax", "nanogpt"):
    mine = [r for r in rows if r["program"] == prog]
    if mine:
      summary[f"{prog}_wall_s"] = [round(r["wall_s"], 2) for r in mine]
      summary[f"{prog}_wall_s_median"] = statistics.median(r["wall_s"] for r in mine)
  if FLAGS.only == "both":
    # per-round ratio nanoGPT / tfjax: above 1, tfjax finished first (pairs seconds apart: load drift cancels)
    ratios = [n["wall_s"] / t["wall_s"] for t, n in zip([r for r in rows if r["program"] == "tfjax"],
                                                        [r for r in rows if r["program"] == "nanogpt"])]
    summary["speedup_per_round"] = [round(x, 3) for x in ratios]
    summary["speedup_median"] = statistics.median(ratios)
    print(f"tfjax vs nanoGPT start to finish: {summary['speedup_median']:.2f}x (per round: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; above 1: tfjax faster)")
  print(f"logs: {os.path.join(base, 'logs')}")
  if FLAGS.out:
    from experiments import runtime
    runtime.append_json_lines(FLAGS.out, [{**stamp, **r} for r in rows] + [{**stamp, **summary}])


if __name__ == "__main__":
  define_flags()
  app.run(main)

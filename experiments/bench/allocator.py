"""The training step under each malloc: glibc's, mimalloc from the pip wheel, and the system's jemalloc.

``./launch.sh bench allocator [--config=default] [--rounds=3] [--steps=4] [--allocators=glibc,mimalloc,jemalloc]``

XLA:CPU allocates every step's temporary buffers afresh. glibc serves large ones with ``mmap`` and unmaps them on
free, so each step page-faults its whole working set again; jemalloc and mimalloc keep freed pages for reuse (with
purging off: ``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``, ``MIMALLOC_PURGE_DELAY=-1``, as ``launch.sh`` sets
them). Each measurement is a fresh process (an allocator must be preloaded before Python starts) that compiles the
train step of ``--config`` exactly as ``bench ab`` does (``default``: the 6/6/384 GPT, ``baby``: the tiny one), runs
2 warm-up steps, then times ``--steps`` steps one by one and counts their minor page faults. The allocators take
turns, in reversed order every other round, so that a drifting machine affects them alike; printed per allocator:
the median step time, page faults per step, and the median over rounds of glibc's step time over its own.

``--which`` only prints the malloc library mapped into this process (what ``./launch.sh`` preloaded).
Results are appended as JSON lines to ``bench_results/allocator.jsonl``.
"""

import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments.bench import ab as bench_ab  # noqa: E402  (its --config, --rounds and --out flags are reused)
from experiments import runtime  # noqa: E402

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("steps", 4, "Timed steps per process (after 2 warm-up steps).")
flags.DEFINE_string("allocators", "glibc,mimalloc,jemalloc", "Which to compare (jemalloc is skipped when the "
                    "system has none: apt install libjemalloc2).")
flags.DEFINE_bool("which", False, "Print the malloc library mapped into this process and exit.")
flags.DEFINE_string("child", None, "(internal) measure in this process, labelled with this allocator name.")
FLAGS = flags.FLAGS
FLAGS.set_default("config", "default")
FLAGS.set_default("rounds", 3)
FLAGS.set_default("out", "bench_results/allocator.jsonl")

ALLOCATOR_ENV = ("LD_PRELOAD", "MALLOC_CONF", "MIMALLOC_PURGE_DELAY", "TFJAX_ALLOCATOR")


def find_mimalloc() -> str | None:
  """libmimalloc.so of the cmeel-mimalloc wheel in this interpreter's site-packages (where launch.sh finds it)."""
  for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
    hits = sorted(glob.glob(os.path.join(base, "cmeel.prefix", "lib", "libmimalloc.so*")), key=len)
    if hits:
      return os.path.realpath(hits[0])
  return None


def find_jemalloc() -> str | None:
  """The system's libjemalloc.so.2 (the paths launch.sh looks in)."""
  try:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
      if "libjemalloc.so.2 " in line:
        return line.rsplit(" ", 1)[-1]
  except OSError:
    pass
  for cand in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
               "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2"):
    if os.path.isfile(cand):
      return cand
  return None


def allocator_env(name: str) -> dict[str, str] | None:
  """The environment of a child process using allocator ``name``; None if it is not available here."""
  env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
  env["TFJAX_ALLOCATOR"] = "system"
  if name == "glibc":
    return env
  if name == "mimalloc":
    lib = find_mimalloc()
    if lib is None:
      return None
    return {**env, "LD_PRELOAD": lib, "MIMALLOC_PURGE_DELAY": "-1"}
  if name == "mimalloc_default":  # the wheel's library with mimalloc's own settings (purges after a delay)
    lib = find_mimalloc()
    return None if lib is None else {**env, "LD_PRELOAD": lib}
  if name == "jemalloc":
    lib = find_jemalloc()
    if lib is None:
      return None
    return {**env, "LD_PRELOAD": lib, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
  raise app.UsageError(f"--allocators: unknown allocator {name!r} (glibc, mimalloc, mimalloc_default, jemalloc)")


def mapped_malloc() -> str:
  """The preloaded malloc library mapped into this process, or 'glibc'."""
  with open("/proc/self/maps") as f:
    for line in f:
      if "jemalloc" in line or "mimalloc" in line or "tcmalloc" in line:
        return line.split()[-1]
  return "glibc"


def measure(name: str) -> dict:
  """In this process: compile the step, 2 warm-up steps, then ``--steps`` timed steps and their page faults."""
  import jax
  compiled, state, batches, tokens = bench_ab.build(FLAGS.config, [], {})
  for i in range(2):
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
  times = []
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for i in range(FLAGS.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
  return {"allocator": name, "library": mapped_malloc(), "step_s": statistics.median(times), "step_times": times,
          "faults_per_step": faults / FLAGS.steps, "tokens_per_step": tokens,
          "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(name: str, env: dict[str, str]) -> dict:
  args = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--config={FLAGS.config}",
          f"--steps={FLAGS.steps}"]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"the {name} measurement failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv):
  del argv
  if FLAGS.which:
    print(mapped_malloc())
    return
  if FLAGS.child:
    print("RESULT " + json.dumps(measure(FLAGS.child)), flush=True)
    return
  names = [n.strip() for n in FLAGS.allocators.split(",") if n.strip()]
  envs = {}
  for n in names:
    env = allocator_env(n)
    if env is None:
      print(f"[bench] {n}: not available here, skipped"
            + (" (apt install libjemalloc2)" if n == "jemalloc" else " (pip install cmeel-mimalloc)"), flush=True)
    else:
      envs[n] = env
  names = [n for n in names if n in envs]
  if "glibc" not in names:
    raise app.UsageError("--allocators must include glibc (the baseline of the ratios)")
  results = {n: [] for n in names}
  for r in range(FLAGS.rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
      res = run_child(n, envs[n])
      results[n].append(res)
      print(f"[bench] round {r + 1}/{FLAGS.rounds} {n:16s} {1e3 * res['step_s']:9.1f} ms/step "
            f"{res['faults_per_step']:12,.0f} faults/step  ({os.path.basename(res['library'])})", flush=True)
  import jax
  stamp = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": FLAGS.config, "rounds": FLAGS.rounds,
           "steps": FLAGS.steps, "cpu_count": os.cpu_count(), "jax": jax.__version__,
           "load_average": os.getloadavg()[0]}
  print(f"\n{FLAGS.config}: {FLAGS.rounds} rounds, {FLAGS.steps} timed steps per process, {os.cpu_count()} cores")
  print(f"{'allocator':18s} {'ms/step':>9s} {'faults/step':>12s} {'max RSS MB':>11s} {'vs glibc':>9s}  library")
  rows = []
  for n in names:
    steps = [x["step_s"] for x in results[n]]
    ratios = [g["step_s"] / x["step_s"] for g, x in zip(results["glibc"], results[n])]
    row = {"allocator": n, "library": results[n][0]["library"], "step_ms": 1e3 * statistics.median(steps),
           "step_ms_rounds": [1e3 * s for s in steps],
           "faults_per_step": statistics.median(x["faults_per_step"] for x in results[n]),
           "max_rss_mb": max(x["max_rss_mb"] for x in results[n]), "speedup_vs_glibc": statistics.median(ratios)}
    rows.append(row)
    print(f"{n:18s} {row['step_ms']:9.1f} {row['faults_per_step']:12,.0f} {row['max_rss_mb']:11,.0f} "
          f"{row['speedup_vs_glibc']:8.2f}x  {row['library']}")
  runtime.append_json_lines(FLAGS.out, [{**stamp, **row} for row in rows])


if __name__ == "__main__":
  app.run(main)

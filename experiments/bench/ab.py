"""Side-by-side A/B of training-step variants in one process: paired ratios that survive a drifting machine.

``./launch.sh bench ab --config=baby --variant=base: --variant=learned:model.positional=learned``

Each ``--variant=NAME:SETTINGS`` is the config (``--config``: a language-model or BERT config of experiments/configs;
``baby`` is gpt_shakespeare_tiny, ``default`` gpt_shakespeare) with comma-separated ``KEY=VALUE`` overrides, or
``@OPTION=VALUE`` XLA compiler options for that variant's compile only (e.g. ``@xla_cpu_multi_thread_eigen=False``).
The first variant is the baseline. All variants are built and compiled in the same process, on the same devices,
through the same train step as ``train.py`` (:func:`tfjax.train.loop.jit_train_step`, ``parallel=dp`` when there is
more than one device); then each round runs ``--steps_per_round`` steps of every variant in turn (the order reversed
every other round) and times them. Printed per variant: the median and p10 step time, tokens/s, the compiled
step's temporary memory (XLA's ``memory_analysis``: activations, logits, gradients in flight; not the state), and
against the baseline the median of the per-round ratios and the share of rounds it was faster. One JSON line per
variant is appended to ``bench_results/ab.jsonl``.

Why: on a shared 2-core VM absolute tokens/s drift by ±25% from one hour to the next, so two benchmark processes
run minutes apart cannot resolve a 5% change. Paired rounds seconds apart can.

Steps in flight are bounded by ``--steps_per_round`` (at most 20): XLA:CPU's all-reduce rendezvous times out and
aborts the process when ~100 data-parallel steps are queued without waiting (seen with jaxlib 0.10.2, 2 devices).
"""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments import runtime  # noqa: E402

runtime.configure_devices()

from absl import app, flags  # noqa: E402

flags.DEFINE_string("config", "baby", "A config in experiments/configs (a language-model or BERT one), or baby "
                    "(gpt_shakespeare_tiny) / default (gpt_shakespeare).")
flags.DEFINE_multi_string("variant", [], "NAME:KEY=VALUE,@XLA_OPTION=VALUE,... (repeatable; the first is the "
                          "baseline; 'NAME:' alone is the config unchanged).")
flags.DEFINE_integer("rounds", 30, "Timed rounds (each runs every variant once); the first 2 are warm-up.")
flags.DEFINE_integer("steps_per_round", 10, "Steps of one variant per round, queued without waiting (1-20).")
flags.DEFINE_string("out", "bench_results/ab.jsonl", "JSON lines output.")
FLAGS = flags.FLAGS

WARMUP_ROUNDS = 2
ALIASES = {"baby": "gpt_shakespeare_tiny", "default": "gpt_shakespeare"}


def parse_variant(spec: str) -> tuple[str, list[str], dict]:
  """``"name:a.b=1,@xla_opt=x"`` -> ``("name", ["a.b=1"], {"xla_opt": "x"})``."""
  from tfjax.config import parse_value
  name, sep, rest = spec.partition(":")
  if not sep or not name:
    raise app.UsageError(f"--variant wants NAME:SETTINGS (SETTINGS may be empty), got {spec!r}")
  overrides, options = [], {}
  for item in filter(None, (s.strip() for s in rest.split(","))):
    if "=" not in item:
      raise app.UsageError(f"--variant {name}: {item!r} is not KEY=VALUE or @XLA_OPTION=VALUE")
    if item.startswith("@"):
      key, _, value = item[1:].partition("=")
      options[key] = parse_value(value) if value else ""
    else:
      overrides.append(item)
  return name, overrides, options


def build(config_name: str, overrides: list[str], options: dict):
  """(compiled step, state, device batches, tokens per step, temporary MB of the compiled step) for one variant."""
  import functools
  import importlib
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from tfjax import config as config_lib
  from tfjax.train import parallel
  from tfjax.train.loop import jit_train_step, tokens_in
  from tfjax.train.optimizer import make_optimizer
  from tfjax.train.step import init_state

  name = ALIASES.get(config_name, config_name)
  if not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{name}.py")):
    raise app.UsageError(f"--config={config_name}: no experiments/configs/{name}.py")
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  config_lib.apply_overrides(config, overrides)
  if config.task == "word2vec":
    raise app.UsageError("bench ab times the transformer train step; for word2vec use ./launch.sh bench word2vec")
  task = runtime.make_task(config, tempfile.mkdtemp(prefix="tfjax_ab_"))
  mode = parallel.resolve_mode("auto")
  parallel.check_batch_divisible(config.train.batch_size, mode)
  mesh = parallel.make_mesh(mode)
  tx, schedule = make_optimizer(config.optimizer, config.train.num_steps)
  rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(parallel.DATA))
  state = jax.jit(functools.partial(init_state, task, tx, config.seed), out_shardings=rep)()
  step_fn = jit_train_step(task, tx, schedule, config.train, mode, mesh, rep, rows)
  batches = [parallel.global_batch(task.train_batch(s, 0, 1), rows) for s in range(8)]
  compiled = step_fn.lower(state, batches[0]).compile(compiler_options=options or None)
  return compiled, state, batches, tokens_in(batches[0]), temp_mb(compiled)


def temp_mb(compiled) -> float | None:
  """The compiled step's temporary buffers in MB (per device), when the backend reports them."""
  try:
    return compiled.memory_analysis().temp_size_in_bytes / 2**20
  except (AttributeError, NotImplementedError, RuntimeError):
    return None


def main(argv):
  del argv
  import jax
  if not 1 <= FLAGS.steps_per_round <= 20:
    raise app.UsageError("--steps_per_round must be 1-20 (more queued steps can stall XLA:CPU's all-reduce)")
  if FLAGS.rounds <= WARMUP_ROUNDS:
    raise app.UsageError(f"--rounds must be more than the {WARMUP_ROUNDS} warm-up rounds")
  specs = [parse_variant(v) for v in FLAGS.variant] or [("base", [], {})]
  names = [n for n, _, _ in specs]
  if len(set(names)) != len(names):
    raise app.UsageError(f"variant names must differ: {names}")
  variants = {}
  for name, overrides, options in specs:
    print(f"compiling {name}: {', '.join(overrides + [f'@{k}={v}' for k, v in options.items()]) or 'as configured'}",
          flush=True)
    try:
      variants[name] = list(build(FLAGS.config, overrides, options))
    except (ValueError, jax.errors.JaxRuntimeError) as e:  # ConfigError, or XLA rejecting a compiler option
      raise app.UsageError(f"--variant {name}: {e}") from e
  k = FLAGS.steps_per_round
  times = {n: [] for n in names}
  for r in range(FLAGS.rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      fn, state, batches, *_ = variants[name]
      t0 = time.perf_counter()
      for j in range(k):
        state, metrics = fn(state, batches[(r * k + j) % len(batches)])
      jax.block_until_ready((state, metrics))
      times[name].append((time.perf_counter() - t0) / k)
      variants[name][1] = state
  base = names[0]
  stamp = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "backend": jax.default_backend(),
           "device_count": jax.device_count(), "config": FLAGS.config, "rounds": FLAGS.rounds - WARMUP_ROUNDS,
           "steps_per_round": k, "xla_flags": os.environ.get("XLA_FLAGS", ""), "baseline": base}
  print(f"\n{FLAGS.config}: {FLAGS.rounds - WARMUP_ROUNDS} rounds of {k} steps per variant, {jax.device_count()} "
        f"device(s)")
  print(f"{'variant':24s} {'ms/step':>9s} {'p10':>9s} {'tokens/s':>10s} {'temp MB':>8s} {'speedup':>8s} "
        f"{'faster in':>10s}")
  rows = []
  for (name, overrides, options) in specs:
    ts = times[name][WARMUP_ROUNDS:]
    ratios = [b / x for b, x in zip(times[base][WARMUP_ROUNDS:], ts)]
    med = statistics.median(ts)
    row = {"variant": name, "overrides": overrides, "compiler_options": {k_: str(v) for k_, v in options.items()},
           "step_ms": 1e3 * med, "step_ms_p10": 1e3 * sorted(ts)[len(ts) // 10],
           "tokens_per_s": variants[name][3] / med, "temp_mb": variants[name][4], "speedup_median": statistics.median(ratios),
           "faster_share": sum(x > 1 for x in ratios) / len(ratios)}
    rows.append(row)
    vs = "  baseline" if name == base else f"{row['faster_share']:10.0%}"
    mb = "" if row["temp_mb"] is None else f"{row['temp_mb']:8,.0f}"
    print(f"{name:24s} {row['step_ms']:9.2f} {row['step_ms_p10']:9.2f} {row['tokens_per_s']:10,.0f} {mb:>8s} "
          f"{row['speedup_median']:7.3f}x {vs}")
  runtime.append_json_lines(FLAGS.out, [{**stamp, **row} for row in rows])


if __name__ == "__main__":
  app.run(main)

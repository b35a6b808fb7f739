"""Training throughput, MFU and KV-cache generation speed.

``./launch.sh bench train [--steps_baby=300] [--steps_default=30] [--only=baby,default,generate]``

Throughput is measured through the real training path (``tfjax.train.loop.train_and_evaluate``), as the median of the
tokens/s of 10-step intervals after the first (compilation) interval. MFU = tokens/s × FLOPs per token / peak, with
FLOPs per token = 6·N + 12·L·T·D (N: parameters except the position table; nanoGPT's / PaLM's formula) and, on CPU,
the peak measured as the FLOP/s of a 2048×2048 float32 matmul on this machine. Results are printed as a table and
appended as JSON lines to ``bench_results/train.jsonl``.
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

flags.DEFINE_integer("steps_baby", 300, "Training steps measured for the baby config.")
flags.DEFINE_integer("steps_default", 30, "Training steps measured for the 6/6/384 config (~10 s/step on 2 CPU cores).")
flags.DEFINE_integer("new_tokens", 256, "Tokens generated in the KV-cache benchmark.")
flags.DEFINE_string("only", "baby,default,generate", "Which parts to run.")
flags.DEFINE_string("out", "bench_results/train.jsonl", "JSON lines output.")
flags.DEFINE_multi_string("set", [], "A config override KEY=VALUE applied to the training configs measured, e.g. "
                          "--set=model.attention_block_size=0 (repeatable).")
FLAGS = flags.FLAGS


def apply_overrides(config, overrides):
  """``KEY=VALUE`` strings applied to ``config`` (:func:`tfjax.config.apply_overrides`), as a usage error if bad."""
  from tfjax import config as config_lib
  try:
    return config_lib.apply_overrides(config, overrides)
  except config_lib.ConfigError as e:
    raise app.UsageError(f"--set: {e}") from e


def measure_training(name, config, steps):
  import jax
  from tfjax.tasks.lm import LMTask
  from tfjax.train import metrics as metrics_lib
  from tfjax.train.loop import train_and_evaluate
  config.train.update(num_steps=steps, log_every=10, eval_every=0, eval_steps=1, checkpoint_every=0,
                      log_mfu=False, async_checkpoint=False)
  config.sample.num_tokens = 0
  with tempfile.TemporaryDirectory() as wd:
    task = LMTask(config, wd)
    t0 = time.perf_counter()
    train_and_evaluate(config, wd, task)
    wall = time.perf_counter() - t0
    recs = [r for r in metrics_lib.read_metrics(wd) if "tokens_per_s" in r]
    import flax.linen as nn
    params = nn.unbox(jax.eval_shape(task.init_params, jax.random.key(0)))
    flops_per_token = task.flops_per_token(params)
  rates = [r["tokens_per_s"] for r in recs[1:]]
  return {"config": name, "steps": steps, "tokens_per_s": statistics.median(rates),
          "tokens_per_s_p10": sorted(rates)[len(rates) // 10], "step_ms": 1e3 * statistics.median(
              [r["step_time_s"] for r in recs[1:]]), "flops_per_token": flops_per_token, "wall_s": wall,
          "devices": jax.device_count(), "parallel": config.train.parallel}


def measure_generation(new_tokens):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from experiments.configs import gpt_shakespeare
  from tfjax import config as config_lib
  from tfjax.generate import generate
  from tfjax.models.gpt import GPT
  import flax.linen as nn
  c = gpt_shakespeare.get_config()
  model = GPT(config_lib.transformer_config(c.model, 65))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  prompt = np.zeros((1, 1), np.int32)
  out = {}
  for use_cache in (True, False):
    generate(model, params, prompt, new_tokens, jax.random.key(0), use_cache=use_cache)  # compile
    t = time.perf_counter()
    generate(model, params, prompt, new_tokens, jax.random.key(1), use_cache=use_cache)
    out["cache" if use_cache else "no_cache"] = new_tokens / (time.perf_counter() - t)
  return {"config": "generate 6/6/384 ctx 256", "new_tokens": new_tokens, "cache_tokens_per_s": out["cache"],
          "no_cache_tokens_per_s": out["no_cache"], "speedup": out["cache"] / out["no_cache"]}


def main(argv):
  del argv
  parts = FLAGS.only.split(",")
  unknown = sorted(set(parts) - {"baby", "default", "generate"})
  if unknown:
    raise app.UsageError(f"--only: unknown parts {unknown}; choose from baby, default, generate")
  runtime.setup_logging()
  import jax
  from experiments.configs import gpt_shakespeare, gpt_shakespeare_tiny
  from tfjax.train.metrics import measure_matmul_peak
  peak = measure_matmul_peak(2048, 5) if jax.default_backend() == "cpu" else None
  from tfjax.train.metrics import device_peak_flops
  peak = peak or device_peak_flops()
  rows = []
  if "baby" in parts:
    rows.append(measure_training("baby 4/4/128 ctx64 b12",
                                 apply_overrides(gpt_shakespeare_tiny.get_config(), FLAGS.set), FLAGS.steps_baby))
  if "default" in parts:
    rows.append(measure_training("nanoGPT 6/6/384 ctx256 b64",
                                 apply_overrides(gpt_shakespeare.get_config(), FLAGS.set), FLAGS.steps_default))
  stamp = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "backend": jax.default_backend(),
           "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
           "peak_flops": peak, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "ld_preload": os.environ.get("LD_PRELOAD", ""),
           "overrides": FLAGS.set}
  print(f"\npeak (2048² float32 matmul on this machine): {peak / 1e9:.1f} GFLOP/s; devices: {jax.device_count()}")
  print(f"{'config':30s} {'tokens/s':>10s} {'p10':>9s} {'ms/step':>8s} {'MFU':>6s}")
  for r in rows:
    r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak if peak else None
    print(f"{r['config']:30s} {r['tokens_per_s']:10,.0f} {r['tokens_per_s_p10']:9,.0f} {r['step_ms']:8.1f} "
          f"{r['mfu']:6.1%}")
  if "generate" in parts:
    g = measure_generation(FLAGS.new_tokens)
    rows.append(g)
    print(f"generation ({g['new_tokens']} new tokens, 6/6/384): with KV cache {g['cache_tokens_per_s']:,.0f} tok/s, "
          f"without {g['no_cache_tokens_per_s']:,.0f} tok/s: {g['speedup']:.1f}x")
  runtime.append_json_lines(FLAGS.out, [{**stamp, **r} for r in rows])


if __name__ == "__main__":
  app.run(main)

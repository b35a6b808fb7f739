"""The attention pattern is [T, S]: memory and time of one causal attention, forward and backward, as the context grows.

``./launch.sh bench attention [--lengths=256,1024,4096 --impls=reference,xla,flash --batch=1 --heads=8
--head_dim=64 --rounds=5 --dtype=float32 --block=256]``

For every context length T and implementation (``reference``: the textbook path, which forms the pattern
``[B, H, T, T]``; ``xla``: :func:`jax.nn.dot_product_attention`; ``flash``: :mod:`tfjax.layers.flash_attention`,
no pattern), one jitted function computes the causal attention of random ``q, k, v [B, T, H, Dh]`` and the gradient
of ``Σ out · w`` with respect to all three. Reported:

- **temp MB**: the compiled program's temporary memory (XLA's ``memory_analysis``: everything it allocates besides
  inputs and outputs), which is where the pattern and its backward live;
- **ms**: the median over ``--rounds`` alternating rounds (each implementation once a round, order reversed every
  other round; one warm-up call first), and the ratio to the first implementation in the same rounds;
- **max |Δ|**: the largest difference of out and the gradients from the first implementation.

A length whose program would need more than ``--max_temp_gb`` of temporary memory is compiled (to read its memory)
but not run; an implementation that does not compile (cuDNN off a GPU, or refusing the inputs) is reported as failed. One JSON line per (length, implementation) is appended to ``--out``.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments import runtime  # noqa: E402

runtime.configure_devices()

from absl import app, flags  # noqa: E402

flags.DEFINE_list("lengths", ["256", "1024", "4096"], "Context lengths T (queries = keys).")
flags.DEFINE_list("impls", ["reference", "xla", "flash"], "Implementations; the first is the baseline.")
flags.DEFINE_integer("batch", 1, "Batch size B.")
flags.DEFINE_integer("heads", 8, "Heads H.")
flags.DEFINE_integer("head_dim", 64, "Head size Dh.")
flags.DEFINE_integer("block", 256, "flash: queries and keys per block.")
flags.DEFINE_integer("rounds", 5, "Timed rounds.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "q, k, v dtype.")
flags.DEFINE_float("max_temp_gb", 8.0, "Do not run a program that needs more temporary memory than this.")
flags.DEFINE_string("out", "bench_results/attention.jsonl", "JSON lines output.")
FLAGS = flags.FLAGS


def attention_and_grads(impl: str, mask, block: int):
  """``(q, k, v, w) -> (out, dq, dk, dv)`` for one implementation, jitted."""
  import jax
  from tfjax.layers.attention import dot_product_attention
  from tfjax.layers.flash_attention import flash_attention

  def attn(q, k, v):
    if impl == "flash":
      return flash_attention(q, k, v, mask, block_q=block, block_k=block)
    return dot_product_attention(q, k, v, mask, implementation=impl)

  def f(q, k, v, w):
    out, vjp = jax.vjp(attn, q, k, v)
    return (out, *vjp(w.astype(out.dtype)))

  return jax.jit(f)


def measure_length(t: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tfjax.layers.masks import causal_mask

  shape = (FLAGS.batch, t, FLAGS.heads, FLAGS.head_dim)
  keys = jax.random.split(jax.random.key(t), 4)
  q, k, v, w = (jax.random.normal(key, shape, FLAGS.dtype) for key in keys)
  mask = np.asarray(causal_mask(t))
  rows, compiled = [], {}
  for impl in FLAGS.impls:
    try:
      exe = attention_and_grads(impl, mask, FLAGS.block).lower(q, k, v, w).compile()
    except Exception as e:  # pylint: disable=broad-except  # e.g. cuDNN off a GPU, or refusing these inputs
      rows.append({"bench": "attention", "T": t, "impl": impl, "dtype": FLAGS.dtype, "temp_mb": None,
                   "pattern_mb": FLAGS.batch * FLAGS.heads * t * t * 4 / 2**20, "skipped": f"failed: {e}"[:200]})
      continue
    mem = exe.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    rows.append({"bench": "attention", "T": t, "impl": impl, "batch": FLAGS.batch, "heads": FLAGS.heads,
                 "head_dim": FLAGS.head_dim, "dtype": FLAGS.dtype, "block": FLAGS.block,
                 "temp_mb": None if temp is None else temp / 2**20,
                 "pattern_mb": FLAGS.batch * FLAGS.heads * t * t * 4 / 2**20,
                 "backend": jax.default_backend(), "device": jax.devices()[0].device_kind})
    if temp is None or temp <= FLAGS.max_temp_gb * 2**30:
      compiled[impl] = exe
  results = {impl: jax.block_until_ready(exe(q, k, v, w)) for impl, exe in compiled.items()}  # warm-up
  times = {impl: [] for impl in compiled}
  order = list(compiled)
  for r in range(FLAGS.rounds):
    for impl in (order if r % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(compiled[impl](q, k, v, w))
      times[impl].append(time.perf_counter() - start)
  base = FLAGS.impls[0]
  for row in rows:
    impl = row["impl"]
    if impl not in compiled:
      row.update(ms=None, ratio=None, max_abs_diff=None)
      row.setdefault("skipped", f"needs more than {FLAGS.max_temp_gb} GB")
      continue
    row["ms"] = statistics.median(times[impl]) * 1e3
    if base in compiled:
      row["ratio"] = statistics.median(a / b for a, b in zip(times[impl], times[base]))
      row["max_abs_diff"] = max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
                                for x, y in zip(results[impl], results[base]))
    else:
      row["ratio"] = row["max_abs_diff"] = None
  return rows


def fmt(x, spec):
  return "-" if x is None else format(x, spec)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    lengths = [int(t) for t in FLAGS.lengths]
  except ValueError as e:
    raise app.UsageError(f"--lengths wants integers, got {FLAGS.lengths}") from e
  unknown = [i for i in FLAGS.impls if i not in ("reference", "xla", "flash", "cudnn", "auto")]
  if unknown:
    raise app.UsageError(f"--impls: unknown {unknown}; choose from reference, xla, cudnn, auto, flash")
  import jax
  print(f"causal attention forward + backward, B={FLAGS.batch} H={FLAGS.heads} Dh={FLAGS.head_dim} {FLAGS.dtype}, "
        f"{jax.devices()[0].device_kind}; ratios against {FLAGS.impls[0]} in the same rounds")
  print(f"{'T':>6} {'impl':>10} {'pattern MB':>11} {'temp MB':>9} {'ms':>9} {'x base':>7} {'max |Δ|':>9}")
  all_rows = []
  for t in lengths:
    for row in measure_length(t):
      all_rows.append(row)
      print(f"{row['T']:>6} {row['impl']:>10} {row['pattern_mb']:>11.1f} {fmt(row['temp_mb'], '9.1f')} "
            f"{fmt(row['ms'], '9.1f')} {fmt(row['ratio'], '7.2f')} {fmt(row['max_abs_diff'], '9.1e')}"
            + (f"  ({row['skipped']})" if row.get("skipped") else ""), flush=True)
  runtime.append_json_lines(FLAGS.out, all_rows)
  print(f"[bench] {len(all_rows)} rows appended to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)

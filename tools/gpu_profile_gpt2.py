"""Where gpt2_small's training step spends its time on one device (issue 15): the step's pieces timed apart, then a
trace of the micro-step's kernels.

    python3 tools/gpu_profile_gpt2.py [--micro=12] [--accum=40] [--iters=10] [--out=DIR] [--model.KEY=VALUE ...]

Times, each jit-compiled on its own, with random token ids and GPT-2 small as ``experiments/configs/gpt2_small.py``
builds it (bfloat16 compute, float32 parameters):

- ``forward``: the loss of one micro-batch (``micro`` x 1,024 tokens);
- ``grad``: its loss and gradients, as the training step computes them (``LMTask.loss_fn``);
- ``grad_float32_unembed_backward``: the same with JAX's own backward rule for the float32-logits matmul (float32
  backward matmuls), i.e. without ``tfjax.layers.linear.dot_out``'s bfloat16 cotangent: the A/B of that change;
- ``grad_bfloat16_logits``: the same with ``model.logits_dtype=bfloat16``, the logits rounded to bfloat16 by the
  matmul and widened after (as PyTorch's autocast makes them; the loss still in float32): how much the passes over
  float32 logits cost;
- ``grad_fused_loss``: the same with ``model.loss_chunk_size=128``, the unembedding and the cross-entropy fused 128
  positions at a time, gradients in the forward pass (``tfjax.layers.unembed_loss``): no [tokens, V] logits, and
  ``grad_fused_loss_micro_x2`` the same on twice the micro-batch (per ``micro`` rows);
- ``grad_xla_attention``: the same with ``attention_impl="xla"`` instead of ``"auto"`` (cuDNN's fused kernel on GPUs);
- ``grad_no_accuracy``: the loss alone, without the accuracy's argmax over the logits;
- ``grad_micro_x2``: ``grad`` on twice the micro-batch (``2 micro`` x 1,024 tokens), per ``micro`` rows: whether
  half as many, larger micro-batches (the same ~0.5M-token step) fill the GPU better;
- ``train_step``: the whole optimizer step, ``accum`` micro-batches in a ``lax.scan`` plus AdamW, per micro-batch.

Then a ``jax.profiler`` trace of a few ``grad`` calls, summed per kernel from its Perfetto JSON: the top kernels and
the time per kind (matmuls, attention, fusions, ...) against the wall time. Prints the tables; writes
``timings.json``, ``kernels.json`` and the trace to ``--out``. On a CPU (to try it) use a small model, e.g.
``--model.num_layers=2 --model.emb_dim=64 --model.num_heads=2 --micro=2 --accum=2 --seq=128 --model.dtype=float32``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import time
import types
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402
import optax  # noqa: E402

from experiments.configs import gpt2_small  # noqa: E402
from tfjax import config as config_lib  # noqa: E402
from tfjax.layers import linear  # noqa: E402
from tfjax.models.gpt import GPT, flops_per_token, num_params  # noqa: E402
from tfjax.tasks.lm import LMTask  # noqa: E402
from tfjax.train.metrics import PEAK_FLOPS  # noqa: E402
from tfjax.train.optimizer import make_optimizer  # noqa: E402
from tfjax.train.step import init_state, make_train_step  # noqa: E402

KINDS = [("matmul", r"gemm|cutlass|sm90_xmma|nvjet|cublas|dot"), ("attention", r"fmha|flash|cudnn|attn"),
         ("reduce/softmax", r"reduce|softmax|argmax"), ("scatter/gather", r"scatter|gather|dynamic"),
         ("copy/transpose", r"copy|transpose|memcpy|memset"), ("fusion", r"fusion|loop_|input_")]


def make_task(config, vocab: int, **model_overrides):
  cfg = config_lib.transformer_config(config.model, vocab, **model_overrides)
  model = GPT(cfg)
  task = types.SimpleNamespace(model=model, model_cfg=cfg)
  task.loss_fn = lambda p, b, r, t: LMTask.loss_fn(task, p, b, r, t)
  task.init_params = lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"]
  return task


def loss_without_accuracy(task):
  def f(params, batch):
    logits = task.model.apply({"params": params}, batch["inputs"])
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]))
  return f


def jax_dot_rule(x, w, out_dtype, precision):
  """The float32-output matmul with JAX's own backward rule (float32 backward matmuls): what dot_out replaced."""
  return jnp.dot(x, w, preferred_element_type=out_dtype, precision=precision)


def traced_with(fn, matmul):
  """``fn`` traced with ``matmul`` in place of dot_out's float32-output matmul (an A/B in one process)."""
  def wrapped(*args):
    with mock.patch.object(linear, "_dot_rounded_cotangent", matmul):
      return fn(*args)
  return wrapped


def timed(fn, args, iters: int) -> tuple[float, float]:
  """(compile seconds, median seconds per call) of ``jax.jit(fn)(*args)``."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return compile_s, statistics.median(times)


def kernel_table(trace_dir: str) -> tuple[dict, float]:
  """Device time per kernel name summed from the Perfetto trace in ``trace_dir``, and the traced device span (s)."""
  files = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not files:
    return {}, 0.0
  with gzip.open(max(files, key=os.path.getmtime)) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device = {pid for pid, n in names.items() if re.search(r"/device:(GPU|TPU)", n)}
  threads = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e["pid"] in device}
  # kernels run on the device's streams; its "XLA Modules" / "XLA Ops" lines repeat the same time by HLO op
  streams = {k for k, n in threads.items() if "stream" in n.lower()} or set(threads)
  totals: dict[str, float] = collections.defaultdict(float)
  start, end = float("inf"), 0.0
  for e in events:
    if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in streams and "dur" in e:
      totals[e["name"]] += e["dur"] / 1e6
      start, end = min(start, e["ts"]), max(end, e["ts"] + e["dur"])
  return dict(totals), max(end - start, 0.0) / 1e6


def kind_of(name: str) -> str:
  return next((k for k, pattern in KINDS if re.search(pattern, name, re.I)), "other")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--micro", type=int, default=12)
  p.add_argument("--accum", type=int, default=40)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--vocab", type=int, default=50257)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--trace_iters", type=int, default=3)
  p.add_argument("--only", default="", help="comma-separated variants to time (default: all)")
  p.add_argument("--out", default="bench_results/gpt2_profile")
  args, rest = p.parse_known_args(argv)
  config = gpt2_small.get_config()
  config_lib.apply_overrides(config, [r[2:] if r.startswith("--") else r for r in rest])
  config.model.max_len = max(config.model.max_len, args.seq)
  os.makedirs(args.out, exist_ok=True)
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} x{jax.device_count()}  jax {jax.__version__}", flush=True)

  task = make_task(config, args.vocab)
  params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
  n = num_params(params)
  fpt = flops_per_token(task.model_cfg, n, args.seq)
  peak = next((v for k, v in PEAK_FLOPS.items() if k.lower() in dev.device_kind.lower()), None)
  ids = jax.random.randint(jax.random.key(1), (args.micro, args.seq + 1), 0, args.vocab)
  micro = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
  grad_fn = lambda t: jax.value_and_grad(lambda p, b: t.loss_fn(p, b, None, True)[0])  # noqa: E731

  doubled = {k: jnp.concatenate([v, v[::-1]]) for k, v in micro.items()}
  fused = make_task(config, args.vocab, loss_chunk_size=128)
  variants = {
      "forward": (lambda p, b: task.loss_fn(p, b, None, False)[0], (params, micro), 1),
      "grad": (grad_fn(task), (params, micro), 1),
      "grad_float32_unembed_backward": (traced_with(grad_fn(task), jax_dot_rule), (params, micro), 1),
      "grad_bfloat16_logits": (grad_fn(make_task(config, args.vocab, logits_dtype=jnp.bfloat16)),
                               (params, micro), 1),
      "grad_fused_loss": (grad_fn(fused), (params, micro), 1),
      "grad_fused_loss_micro_x2": (grad_fn(fused), (params, doubled), 2),
      "grad_xla_attention": (grad_fn(make_task(config, args.vocab, attention_impl="xla")), (params, micro), 1),
      "grad_no_accuracy": (jax.value_and_grad(loss_without_accuracy(task)), (params, micro), 1),
      "grad_micro_x2": (grad_fn(task), (params, doubled), 2),
  }
  tx, schedule = make_optimizer(config.optimizer, 1000)
  state = jax.jit(lambda: init_state(task, tx, 0))()
  big = jax.random.randint(jax.random.key(2), (args.micro * args.accum, args.seq + 1), 0, args.vocab)
  step = make_train_step(task, tx, schedule, args.accum)
  # the whole new state is returned: a step returning only its loss would let XLA drop the backward pass and AdamW
  variants["train_step"] = (step, (state, {"inputs": big[:, :-1], "targets": big[:, 1:]}), args.accum)
  only = set(filter(None, args.only.split(",")))
  rows = []
  print(f"GPT {n:,} parameters, {fpt:.3e} FLOPs/token, micro-batch {args.micro} x {args.seq}")
  print(f"{'variant':30s} {'compile s':>9s} {'ms/micro':>9s} {'tok/s':>11s} {'MFU':>6s}")
  for name, (fn, fargs, per) in variants.items():
    if only and name not in only:
      continue
    compile_s, sec = timed(fn, fargs, args.iters if per == 1 else max(2, args.iters // 4))
    ms = sec / per * 1e3
    tps = args.micro * args.seq / (ms / 1e3)
    mfu = tps * fpt / peak if peak and name != "forward" else None
    rows.append({"variant": name, "compile_s": compile_s, "ms_per_micro": ms, "tokens_per_s": tps, "mfu": mfu})
    print(f"{name:30s} {compile_s:9.1f} {ms:9.2f} {tps:11,.0f} {'' if mfu is None else f'{mfu:6.1%}'}", flush=True)
    with open(os.path.join(args.out, "timings.json"), "w") as f:  # after every row: a time limit loses no row
      json.dump({"device": dev.device_kind, "num_params": n, "flops_per_token": fpt, "micro": args.micro,
                 "seq": args.seq, "rows": rows}, f, indent=1)

  fn, fargs, _ = variants["grad"]
  compiled = jax.jit(fn).lower(*fargs).compile()
  jax.block_until_ready(compiled(*fargs))
  trace_dir = os.path.join(args.out, "trace")
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(args.trace_iters):
      jax.block_until_ready(compiled(*fargs))
  wall = time.perf_counter() - t0
  totals, span = kernel_table(trace_dir)
  if not totals:
    print("no device kernels in the trace (a CPU run traces no device streams)")
    return
  busy = sum(totals.values())
  kinds: dict[str, float] = collections.defaultdict(float)
  for k, v in totals.items():
    kinds[kind_of(k)] += v
  per = args.trace_iters
  print(f"\ntrace of {per} grad calls: wall {wall / per * 1e3:.2f} ms/call, device span {span / per * 1e3:.2f}, "
        f"kernels {busy / per * 1e3:.2f} ms/call (summed over streams)")
  for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f"  {k:16s} {v / per * 1e3:8.2f} ms  {v / busy:6.1%}")
  print("top kernels (ms per call):")
  top = sorted(totals.items(), key=lambda kv: -kv[1])[:40]
  for k, v in top:
    print(f"  {v / per * 1e3:8.3f}  {kind_of(k):14s} {k[:110]}")
  json.dump({"wall_per_call_s": wall / per, "span_per_call_s": span / per, "kinds": kinds,
             "top": [[k, v / per] for k, v in top]}, open(os.path.join(args.out, "kernels.json"), "w"), indent=1)


if __name__ == "__main__":
  main()

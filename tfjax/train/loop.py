"""``train_and_evaluate(config, workdir, task)``: the training loop shared by every model family.

Set-up in three steps (abstract shapes → shardings from logical axes → jitted init with ``out_shardings``), or a
restore of the latest checkpoint in ``workdir``; then jitted (or pmapped) steps with the state donated, metrics read
one step behind (no host sync on the step just dispatched), periodic evaluation and checkpoints, and a final report.
The workdir receives ``config.json``, ``run_info.json``, ``metrics.jsonl``, ``results.json``, ``loss.png`` and
``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from tfjax import config as config_lib
from tfjax.data import files
from tfjax.train import checkpoint as ckpt_lib
from tfjax.train import metrics as metrics_lib
from tfjax.train import parallel
from tfjax.train.optimizer import make_optimizer
from tfjax.train.step import TrainState, init_state, make_eval_step, make_train_step

log = logging.getLogger("tfjax")


class NonFiniteLossError(FloatingPointError):
  """The loss (or another metric) became NaN or Inf; the message names the step."""


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)


def run_info() -> dict[str, Any]:
  """What produced a run: git commit, library versions, devices."""
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  import flax as flax_mod
  import orbax.checkpoint as ocp
  return {
      "git_commit": commit, "python": sys.version.split()[0], "jax": jax.__version__, "flax": flax_mod.__version__,
      "optax": optax.__version__, "orbax": getattr(ocp, "__version__", "?"), "backend": jax.default_backend(),
      "device_kinds": sorted({d.device_kind for d in jax.devices()}), "device_count": jax.device_count(),
      "process_count": jax.process_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "ld_preload": os.environ.get("LD_PRELOAD", ""),  # e.g. jemalloc, which ./launch.sh uses on CPU when present
  }


class PhaseTimer:
  """Wall seconds spent in each named phase of a run (``with timer("eval"): ...`` adds to ``eval``), so a run can
  say where its time went: start-up, compilation, training steps, evaluation, checkpoints, the final report."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - start)

  def summary(self) -> str:
    return " | ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())


class _Preemption:
  """Sets a flag on SIGTERM so the loop can save a checkpoint and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def tokens_in(batch) -> int:
  """Tokens in a batch: the size of its ``inputs`` (or of its first array)."""
  if "inputs" in batch:
    return int(np.asarray(batch["inputs"]).size)
  return int(np.asarray(next(iter(batch.values()))).size)


def jit_train_step(task, tx, schedule, t, mode: str, mesh, state_sh, batch_sh):
  """The jitted train step for ``mode`` none / dp / fsdp (``t``: ``config.train``): dp runs per device under
  ``shard_map`` with one explicit flat psum; none / fsdp let XLA partition the step from the shardings. The state is
  donated."""
  train_step = make_train_step(task, tx, schedule, t.grad_accum_steps, skip_nonfinite=t.skip_nonfinite,
                               axis_name=parallel.DATA if mode == "dp" else None)
  if mode == "dp":
    train_step = parallel.data_parallel(train_step, mesh)
  return jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, NamedSharding(mesh, P())),
                 donate_argnums=0)


def memory_stats(compiled) -> dict[str, int]:
  """Bytes of the compiled step's arguments, outputs, temporaries and code (``compiled.memory_analysis()``)."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
           "generated_code_size_in_bytes")
  return {n: int(getattr(m, n)) for n in names if hasattr(m, n)}


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """``"10:15"`` -> steps 10 (inclusive) to 15 (exclusive) are traced; ``""`` -> no profiling."""
  if not spec:
    return None
  try:
    start, stop = (int(x) for x in str(spec).split(":"))
  except ValueError as e:
    raise config_lib.ConfigError(f"train.profile_steps must look like START:STOP, got {spec!r}") from e
  if not 0 <= start < stop:
    raise config_lib.ConfigError(f"train.profile_steps needs 0 <= START < STOP, got {spec!r}")
  return start, stop


def evaluate(task, eval_fn, params, put_batch) -> dict[str, float]:
  """Mean loss and metrics over the task's evaluation batches (all dispatched, then read back at once: one host
  sync per evaluation, not one per batch)."""
  loss_sum, weight, sums = 0.0, 0.0, {}
  pid, nproc = jax.process_index(), jax.process_count()
  outputs = [eval_fn(params, put_batch(batch)) for batch in task.eval_batches(pid, nproc)]
  for ls, w, ms in jax.device_get(outputs):
    loss_sum, weight = loss_sum + float(ls), weight + float(w)
    for k, v in ms.items():
      sums[k] = sums.get(k, 0.0) + float(v)
  if weight == 0:
    return {}
  out = {"eval_loss": loss_sum / weight}
  out.update({f"eval_{k}": v / weight for k, v in sums.items()})
  return out


def train_and_evaluate(config: Any, workdir: str, task: Any) -> dict[str, Any]:
  """Trains ``task`` as ``config`` says, resuming from ``workdir``; returns the final results (also in
  ``results.json``)."""
  entered_unix, entered = time.time(), time.perf_counter()
  timer = PhaseTimer()
  config_lib.validate_train_config(config)
  t = config.train
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  info = run_info() if is_main else {}
  if is_main:
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    _write_json(os.path.join(workdir, "run_info.json"), info)

  mode = parallel.resolve_mode(t.parallel)
  parallel.check_batch_divisible(t.batch_size, mode)
  mesh = parallel.make_mesh(mode if mode != "pmap" else "dp")
  log.info(parallel.describe(mesh, mode))
  tx, schedule = make_optimizer(config.optimizer, t.num_steps)
  if t.skip_nonfinite:
    log.info("skip_nonfinite: steps with a non-finite loss or gradient are skipped and counted")

  # 1. abstract state -> 2. shardings -> 3. jitted init (or restore)
  init_fn = functools.partial(init_state, task, tx, config.seed)
  boxed = jax.eval_shape(task.init_params, jax.random.key(0))
  rep = NamedSharding(mesh, P())
  param_sh = parallel.param_shardings(boxed, mesh, parallel.RULES.get(mode, ()))
  abstract = jax.eval_shape(init_fn)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, param_sh,
                                 transform_non_params=lambda _: rep)
  state_sh = TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)
  if mode == "pmap":  # pmap state lives replicated on every local device; build / restore it on one first
    single = NamedSharding(parallel.make_mesh("none"), P())
    state_sh = jax.tree.map(lambda _: single, abstract)

  manager = ckpt_lib.make_manager(workdir, t.max_to_keep, async_save=t.async_checkpoint)
  best_manager = ckpt_lib.make_best_manager(workdir, t.async_checkpoint) if t.get("keep_best", False) else None
  abstract_sh = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
  state, start_step = None, 0
  steps = ckpt_lib.complete_steps(manager)
  while steps and state is None:
    step = steps.pop()
    try:
      state, _ = ckpt_lib.restore(manager, step, abstract_sh)
      start_step = int(jax.device_get(state.step))
      log.info("resumed from the checkpoint at step %d in %s", start_step, workdir)
    except ckpt_lib.CheckpointError:
      if not (t.restore_fallback and steps):
        raise
      log.warning("checkpoint at step %d cannot be restored; trying step %d", step, steps[-1])
  if state is None:
    state = jax.jit(init_fn, out_shardings=state_sh)()
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  pid, nproc = jax.process_index(), jax.process_count()
  log.info("model: %s parameters", f"{n_params:,}")

  eval_step = make_eval_step(task)
  batch_sh = NamedSharding(mesh, P(parallel.DATA))
  put_batch = functools.partial(parallel.global_batch, sharding=batch_sh)
  if mode == "pmap":
    state = parallel.replicate_for_pmap(state)
    step_fn = jax.pmap(make_train_step(task, tx, schedule, t.grad_accum_steps, axis_name="batch",
                                       skip_nonfinite=t.skip_nonfinite), axis_name="batch", donate_argnums=0)
    put_train = parallel.pmap_batch
    eval_fn = jax.jit(eval_step, in_shardings=(rep, batch_sh))
    host_params = lambda s: parallel.unreplicate(s.params)  # noqa: E731
    host_state = parallel.unreplicate
  else:
    step_fn = jit_train_step(task, tx, schedule, t, mode, mesh, state_sh, batch_sh)
    put_train = put_batch
    eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh))
    host_params = lambda s: s.params  # noqa: E731
    host_state = lambda s: s  # noqa: E731

  # Compile ahead of time to log the step's memory (the same executable then runs every step).
  timer.add("setup", time.perf_counter() - entered)
  memory = {}
  compile_start = time.perf_counter()
  try:
    compiled = step_fn.lower(state, put_train(task.train_batch(start_step, pid, nproc))).compile()
    memory = memory_stats(compiled)
    if mode != "pmap" and getattr(task, "fixed_batch_shape", True):  # else jit compiles each batch shape it meets
      step_fn = compiled
  except Exception as e:  # pylint: disable=broad-except
    log.warning("could not compile the step ahead of time for memory_analysis: %s", e)
  timer.add("compile", time.perf_counter() - compile_start)
  if memory:
    log.info("compiled step memory per device: %s", ", ".join(
        f"{k.replace('_size_in_bytes', '')} {v / 2**20:.1f} MiB" for k, v in memory.items()))
    if is_main:
      _write_json(os.path.join(workdir, "run_info.json"), {**info, "step_memory_bytes": memory})
  profile = parse_profile_steps(t.get("profile_steps", ""))

  flops_per_token = task.flops_per_token(host_params(state)) if hasattr(task, "flops_per_token") else None
  with timer("mfu_peak"):  # measured once per machine and kept in the user cache dir (CPU)
    peak = metrics_lib.device_peak_flops(measure_cpu=t.log_mfu, cache_dir=files.cache_dir()) if t.log_mfu else None
  if flops_per_token and peak:
    log.info("MFU reference: %.3g FLOPs/token, peak %.3g FLOP/s (%s)", flops_per_token, peak,
             "measured matmul" if jax.default_backend() == "cpu" else "data sheet")

  with timer("setup"):
    writer = metrics_lib.MetricsWriter(workdir, start_step, tensorboard=t.get("tensorboard", True))
  best = {"eval_loss": float("inf")}
  for rec in metrics_lib.read_metrics(workdir):
    if "eval_loss" in rec and rec["eval_loss"] < best["eval_loss"]:
      best = {"eval_loss": rec["eval_loss"], "step": rec["step"]}
  rates, pending, window, skipped, tokens_since_log = [], None, [], 0, 0
  last_log_time, last_log_step = time.perf_counter(), start_step
  run_start = time.perf_counter()
  last_record: dict[str, Any] = {}

  saved = {"step": start_step}  # the last step saved (or restored): a SIGTERM right after a periodic save skips a
  # second save of the same step (orbax would raise StepAlreadyExistsError)

  def save(step: int, force: bool = False):
    if step == saved["step"]:
      return
    saved["step"] = step
    with timer("checkpoint"):  # the blocking part of the save (the write itself runs in orbax's background thread)
      ckpt_lib.save(manager, step, host_state(state), {"step": step, "config": config.to_json()}, force=force)

  def consume(step: int, metrics, tokens: int) -> None:
    """Host side of a finished step: NaN check, then logging on log steps."""
    nonlocal last_log_time, last_log_step, skipped, last_record, tokens_since_log
    m = jax.device_get(metrics)
    if mode == "pmap":
      m = jax.tree.map(lambda x: np.asarray(x)[0], m)
    skipped += int(m.get("skipped", 0))
    for k, v in m.items():
      if not np.all(np.isfinite(v)) and not (t.skip_nonfinite and k in ("loss", "grad_norm")):
        raise NonFiniteLossError(f"non-finite {k} = {float(v)} at step {step + 1}; the last good checkpoint is kept "
                                 f"in {workdir}/checkpoints. Lower the learning rate or enable "
                                 "--config.train.skip_nonfinite=True.")
    window.append(m)
    tokens_since_log += tokens
    done = step + 1
    if done % t.log_every == 0 or done == t.num_steps:
      now = time.perf_counter()
      dt = now - last_log_time
      tokens_per_s = tokens_since_log / dt
      if last_log_step > start_step:  # the first interval includes compilation
        rates.append(tokens_per_s)
      eta = (t.num_steps - done) * dt / max(done - last_log_step, 1)
      rec = {"step": done, **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
             "tokens_per_s": tokens_per_s, "step_time_s": dt / max(done - last_log_step, 1),
             "elapsed_s": now - run_start}
      rec.pop("targets", None)
      if flops_per_token and peak:
        rec["mfu"] = tokens_per_s * flops_per_token / peak
      if t.skip_nonfinite:
        rec["skipped_total"] = skipped
      writer.write(rec)
      last_record = rec
      mfu = f" | MFU {rec['mfu']:.1%}" if "mfu" in rec else ""
      log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s%s | ETA %s", done, t.num_steps, rec["loss"], rec["lr"],
               f"{tokens_per_s:,.0f}", mfu, metrics_lib.format_duration(eta))
      window.clear()
      last_log_time, last_log_step, tokens_since_log = now, done, 0

  if start_step == 0 and t.eval_every and t.num_steps > 0:  # the curve starts at the initial loss
    with timer("eval"):
      ev0 = evaluate(task, eval_fn, host_params(state), put_batch)
    if ev0:
      writer.write({"step": 0, **ev0})
      log.info("step 0 | %s", " | ".join(f"{k} {v:.4f}" for k, v in ev0.items()))
  loop_start = time.perf_counter()
  outside_steps = sum(timer.seconds.get(k, 0.0) for k in ("eval", "checkpoint"))
  with _Preemption() as preempt:
    step = start_step
    for step in range(start_step, t.num_steps):
      if profile and step == profile[0]:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      batch = task.train_batch(step, pid, nproc)
      state, metrics = step_fn(state, put_train(batch))
      # the previous step's metrics are read while this one runs: at most two steps in flight (on CPU, ~100 queued
      # data-parallel steps make XLA's all-reduce rendezvous time out)
      if pending is not None:
        consume(*pending)
      pending = (step, metrics, tokens_in(batch) * nproc)  # positions of the global batch
      done = step + 1
      if profile and done == profile[1] and profile[0] >= start_step:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        log.info("profile of steps %d-%d written to %s", profile[0], profile[1] - 1, os.path.join(workdir, "profile"))
      is_last = done == t.num_steps
      if (t.eval_every and done % t.eval_every == 0) or is_last:
        consume(*pending)
        pending = None
        with timer("eval"):
          ev = evaluate(task, eval_fn, host_params(state), put_batch)
          if ev and hasattr(task, "eval_report") and nproc == 1:  # e.g. the translator's BLEU (one process: its
            ev.update(task.eval_report(host_params(state)))        # decoding runs on this process's devices)
        if ev:
          writer.write({"step": done, **ev})
          log.info("step %d | %s", done, " | ".join(f"{k} {v:.4f}" for k, v in ev.items()))
          last_record.update(ev)
          if ev["eval_loss"] < best["eval_loss"]:
            best = {"eval_loss": ev["eval_loss"], "step": done}
            if best_manager is not None:
              with timer("checkpoint"):
                ckpt_lib.save_best(best_manager, done, host_params(state), {"step": done, **ev})
      if (t.checkpoint_every and done % t.checkpoint_every == 0) or is_last:
        if pending is not None:  # check this step's metrics first: a NaN step must not become the last checkpoint
          consume(*pending)
          pending = None
        save(done, force=is_last)
      stop = preempt.requested
      if nproc > 1:  # the save is collective: all processes agree (every log_every steps) on the step to stop at
        stop = done % t.log_every == 0 and bool(np.any(multihost_utils.process_allgather(np.int32(stop))))
      if stop:
        if pending is not None:
          consume(*pending)
          pending = None
        save(done, force=True)
        manager.wait_until_finished()
        if best_manager is not None:
          best_manager.wait_until_finished()
          best_manager.close()
        log.warning("SIGTERM: saved a checkpoint at step %d in %s; relaunch the same command to resume", done,
                    workdir)
        manager.close()
        writer.close()
        return {"preempted_at": done}
    if pending is not None:
      consume(*pending)
  # the steps' own time: the loop's, less the evaluations and checkpoint saves inside it
  timer.add("train", time.perf_counter() - loop_start
            - (sum(timer.seconds.get(k, 0.0) for k in ("eval", "checkpoint")) - outside_steps))

  params = host_params(state)
  final_step = int(jax.device_get(host_state(state).step))
  results: dict[str, Any] = {"step": final_step}
  if "eval_loss" not in last_record:
    with timer("eval"):
      ev = evaluate(task, eval_fn, params, put_batch)
    results.update(ev)
    if ev and ev["eval_loss"] < best["eval_loss"]:
      best = {"eval_loss": ev["eval_loss"], "step": final_step}
  else:
    results.update({k: v for k, v in last_record.items() if k.startswith("eval_")})
  results.update({
      "train_loss": last_record.get("loss"), "best_eval_loss": best.get("eval_loss"),
      "best_eval_step": best.get("step"),
      "tokens_per_s_median": statistics.median(rates) if rates else None,
      "wall_time_s": time.perf_counter() - run_start, "num_params": int(n_params),
      "parallel": mode, "device_count": jax.device_count(),
  })
  if best_manager is not None:
    with timer("checkpoint"):
      best_manager.wait_until_finished()
    results["best_checkpoint_step"] = (ckpt_lib.complete_steps(best_manager) or [None])[-1]
  if memory:
    results["step_memory_bytes"] = memory
  if flops_per_token and peak and rates:
    results["mfu_median"] = statistics.median(rates) * flops_per_token / peak
  if skipped:
    results["skipped_steps"] = skipped
  if nproc > 1:  # the report runs on process 0 alone: give it host copies of the (global) parameters
    params = multihost_utils.process_allgather(params, tiled=True)
  if is_main:  # the last checkpoint is written in the background meanwhile
    try:
      with timer("final_report"):
        results.update(task.final_report(params))
    except Exception as e:  # pylint: disable=broad-except
      log.warning("final report failed: %s", e)
    try:
      with timer("plot"):
        from tfjax.train import plots
        plots.plot_runs([workdir], os.path.join(workdir, "loss.png"))
    except Exception as e:  # pylint: disable=broad-except
      log.warning("could not draw loss.png: %s", e)
  with timer("checkpoint"):
    manager.wait_until_finished()
  manager.close()
  if best_manager is not None:
    best_manager.wait_until_finished()
    best_manager.close()
  writer.close()
  results["phase_seconds"] = dict(timer.seconds)
  results["started_unix"] = entered_unix  # with the launch time: the interpreter's start-up and imports
  results["run_seconds"] = time.perf_counter() - entered
  if is_main:
    _write_json(os.path.join(workdir, "results.json"), results)
  log.info("time: %s", timer.summary())
  if "sample" in results:
    log.info("sample:\n%s", results["sample"])
  log.info("results: %s", {k: v for k, v in results.items() if k != "sample"})
  return results

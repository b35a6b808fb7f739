"""``train_and_evaluate(config, workdir, task)``: the training loop shared by every model family, told in stages.

1. :func:`start_run`: check the config (and that the workdir holds no run of another task), pick the devices'
   layout and the optimizer.
2. :func:`create_or_restore_state`: abstract shapes → shardings from logical axes → jitted init with
   ``out_shardings``, or the latest restorable checkpoint in ``workdir`` (:class:`Checkpoints`); then
   :func:`record_run` writes ``config.json`` and ``run_info.json`` (a config that does not fit the checkpoint
   fails before it overwrites them).
3. :func:`make_steps`, :func:`compile_ahead`: the jitted (or pmapped) train step with the state donated, the eval
   step, and the compiled step's memory.
4. :func:`run_steps`: the step loop. A :class:`~tfjax.train.logger.MetricsLogger` reads each step's metrics one step
   behind (no host sync on the step just dispatched); evaluations and checkpoints when due; early stopping after
   ``train.patience`` evaluations without improvement; a SIGTERM saves and stops (all processes agree on the step in a
   multi-host run).
5. :func:`finish`: the final evaluation and report, ``results.json``, ``loss.png``.

The workdir receives ``config.json``, ``run_info.json``, ``metrics.jsonl``, ``results.json``, ``loss.png`` and
``checkpoints/`` (``best/`` with ``train.keep_best``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tfjax import config as config_lib
from tfjax.data import files
from tfjax.tasks.base import Task, check_task, optional
from tfjax.train import checkpoint as ckpt_lib
from tfjax.train import metrics as metrics_lib
from tfjax.train import parallel
from tfjax.train.logger import MetricsLogger, NonFiniteLossError, tokens_in  # noqa: F401  (the loop's names)
from tfjax.train.optimizer import make_optimizer
from tfjax.train.records import (PhaseTimer, Preemption, Profiler, memory_stats, parse_profile_steps,  # noqa: F401
                                 run_info, write_json)
from tfjax.train.step import TrainState, init_state, make_eval_step, make_train_step

log = logging.getLogger("tfjax")


@dataclasses.dataclass
class Run:
  """What every stage of one run reads: the config, the workdir, the device layout and the optimizer."""
  config: Any
  workdir: str  # absolute
  timer: PhaseTimer
  info: dict[str, Any]  # run_info.json
  mode: str  # none | pmap | dp | fsdp (train.parallel resolved)
  mesh: Mesh
  tx: optax.GradientTransformation
  schedule: optax.Schedule

  @property
  def t(self) -> Any:
    return self.config.train

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0


@dataclasses.dataclass
class Steps:
  """The run's device functions: the train step and how a host batch reaches it, the eval step, and host views of a
  state (under ``pmap`` the state is replicated on every local device)."""
  train: Callable  # (state, device batch) -> (state, metrics)
  put_train: Callable  # host batch -> device batch for ``train``
  eval: Callable  # (params, device batch) -> (loss_sum, weight, metric_sums)
  put_batch: Callable  # host batch -> device batch for ``eval``
  host_params: Callable  # state -> params
  host_state: Callable  # state -> TrainState
  memory: dict[str, int] = dataclasses.field(default_factory=dict)  # the compiled step's bytes per device


class Checkpoints:
  """The run's checkpoints: the latest states in ``WORKDIR/checkpoints`` and, with ``train.keep_best``, the
  parameters of the lowest evaluation loss in ``WORKDIR/best``. A step is saved once (a SIGTERM right after a periodic
  save does not save it again: orbax would raise StepAlreadyExistsError)."""

  def __init__(self, run: Run):
    t = run.t
    self.run = run
    self.manager = ckpt_lib.make_manager(run.workdir, t.max_to_keep, async_save=t.async_checkpoint)
    self.best = ckpt_lib.make_best_manager(run.workdir, t.async_checkpoint) if t.get("keep_best", False) else None
    self.saved_step: int | None = None

  def restore_latest(self, abstract: Any) -> TrainState | None:
    """The state of the latest checkpoint (earlier ones when it is unreadable and ``train.restore_fallback``), or
    None when there is none."""
    steps = ckpt_lib.complete_steps(self.manager)
    while steps:
      step = steps.pop()
      try:
        state, _ = ckpt_lib.restore(self.manager, step, abstract)
        log.info("resumed from the checkpoint at step %d in %s", int(jax.device_get(state.step)), self.run.workdir)
        return state
      except ckpt_lib.CheckpointError:
        if not (self.run.t.restore_fallback and steps):
          raise
        log.warning("checkpoint at step %d cannot be restored; trying step %d", step, steps[-1])
    return None

  def save(self, step: int, state: TrainState, force: bool = False) -> None:
    """Saves the (host view of the) state after ``step`` steps; the write itself runs in orbax's background thread."""
    if step == self.saved_step:
      return
    self.saved_step = step
    with self.run.timer("checkpoint"):
      ckpt_lib.save(self.manager, step, state, {"step": step, "config": self.run.config.to_json()}, force=force)

  def save_best(self, step: int, params: Any, ev: dict[str, float]) -> None:
    if self.best is not None:
      with self.run.timer("checkpoint"):
        ckpt_lib.save_best(self.best, step, params, {"step": step, **ev})

  def best_step(self) -> int | None:
    """The step of the best checkpoint, once written."""
    with self.run.timer("checkpoint"):
      self.best.wait_until_finished()
    return (ckpt_lib.complete_steps(self.best) or [None])[-1]

  def close(self) -> None:
    """Waits for the writes in flight, then closes the managers."""
    self.manager.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()
      self.best.close()
    self.manager.close()


# -- 1. the run --------------------------------------------------------------------------------------------------------
def start_run(config: Any, workdir: str, timer: PhaseTimer) -> Run:
  """Checks the config (and that ``workdir`` holds no run of another task), and picks the device layout and
  optimizer. ``config.json`` is written by :func:`record_run`, once the state is restored or created."""
  config_lib.validate_train_config(config)
  t = config.train
  workdir = os.path.abspath(workdir)
  check_workdir_task(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  info = run_info() if jax.process_index() == 0 else {}
  mode = parallel.resolve_mode(t.parallel)
  parallel.check_batch_divisible(t.batch_size, mode)
  mesh = parallel.make_mesh(mode if mode != "pmap" else "dp")
  log.info(parallel.describe(mesh, mode))
  tx, schedule = make_optimizer(config.optimizer, t.num_steps)
  if t.skip_nonfinite:
    log.info("skip_nonfinite: steps with a non-finite loss or gradient are skipped and counted")
  return Run(config, workdir, timer, info, mode, mesh, tx, schedule)


def check_workdir_task(config: Any, workdir: str) -> None:
  """Raises ConfigError when ``workdir`` is a file, or already holds a run of another task (its ``config.json``):
  nothing of it is read or overwritten."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f"--workdir={workdir} is a file, not a directory: give a new or a run's directory")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    task = json.load(f).get("task")
  if task is not None and task != config.get("task"):  # (a config.json without a task: not ours to judge)
    raise config_lib.ConfigError(f"{workdir} holds a {task!r} run; a {config.get('task')!r} config cannot resume "
                                 "it: use a new --workdir")


def record_run(run: Run) -> None:
  """Writes ``config.json`` and ``run_info.json`` (process 0): after the state was restored or created, so that a
  relaunch whose config does not fit the checkpoint (a CheckpointError) leaves the workdir's record as it was."""
  if jax.process_index() == 0:
    write_json(os.path.join(run.workdir, "config.json"), run.config.to_dict())
    write_json(os.path.join(run.workdir, "run_info.json"), run.info)


# -- 2. the state ------------------------------------------------------------------------------------------------------
def state_shardings(run: Run, task: Task) -> tuple[Any, Any, TrainState]:
  """``(abstract state, param shardings, state shardings)``: shapes without FLOPs, then shardings from the
  parameters' logical axes (``parallel.RULES`` of the mode); the optimizer state follows its parameters."""
  init_fn = functools.partial(init_state, task, run.tx, run.config.seed)
  boxed = jax.eval_shape(task.init_params, jax.random.key(0))
  rep = NamedSharding(run.mesh, P())
  param_sh = parallel.param_shardings(boxed, run.mesh, parallel.RULES.get(run.mode, ()))
  abstract = jax.eval_shape(init_fn)
  opt_sh = optax.tree_map_params(run.tx, lambda _, s: s, abstract.opt_state, param_sh,
                                 transform_non_params=lambda _: rep)
  state_sh = TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)
  if run.mode == "pmap":  # pmap state lives replicated on every local device; build / restore it on one first
    single = NamedSharding(parallel.make_mesh("none"), P())
    state_sh = jax.tree.map(lambda _: single, abstract)
  return abstract, param_sh, state_sh


def create_or_restore_state(run: Run, task: Task, checkpoints: Checkpoints
                            ) -> tuple[TrainState, int, Any, TrainState]:
  """``(state, start_step, param shardings, state shardings)``: the latest checkpoint's state, else a fresh one
  initialised by ``jax.jit(init, out_shardings=...)`` (each device computes only its shards)."""
  abstract, param_sh, state_sh = state_shardings(run, task)
  abstract_sh = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
  state = checkpoints.restore_latest(abstract_sh)
  start_step = 0 if state is None else int(jax.device_get(state.step))
  if state is None:
    state = jax.jit(functools.partial(init_state, task, run.tx, run.config.seed), out_shardings=state_sh)()
  checkpoints.saved_step = start_step
  log.info("model: %s parameters", f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")
  return state, start_step, param_sh, state_sh


# -- 3. the steps ------------------------------------------------------------------------------------------------------
def jit_train_step(task: Task, tx, schedule, t, mode: str, mesh, state_sh, batch_sh):
  """The jitted train step for ``mode`` none / dp / fsdp (``t``: ``config.train``): dp runs per device under
  ``shard_map`` with one explicit flat psum; none / fsdp let XLA partition the step from the shardings. The state is
  donated."""
  train_step = make_train_step(task, tx, schedule, t.grad_accum_steps, skip_nonfinite=t.skip_nonfinite,
                               axis_name=parallel.DATA if mode == "dp" else None)
  if mode == "dp":
    train_step = parallel.data_parallel(train_step, mesh)
  return jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, NamedSharding(mesh, P())),
                 donate_argnums=0)


def make_steps(run: Run, task: Task, state: TrainState, param_sh: Any, state_sh: TrainState
               ) -> tuple[TrainState, Steps]:
  """The train and eval steps of the run's mode (``pmap``: the state is replicated onto the local devices)."""
  t, mesh = run.t, run.mesh
  eval_step = make_eval_step(task)
  batch_sh = NamedSharding(mesh, P(parallel.DATA))
  put_batch = functools.partial(parallel.global_batch, sharding=batch_sh)
  if run.mode == "pmap":
    state = parallel.replicate_for_pmap(state)
    step_fn = jax.pmap(make_train_step(task, run.tx, run.schedule, t.grad_accum_steps, axis_name="batch",
                                       skip_nonfinite=t.skip_nonfinite), axis_name="batch", donate_argnums=0)
    eval_fn = jax.jit(eval_step, in_shardings=(NamedSharding(mesh, P()), batch_sh))
    return state, Steps(train=step_fn, put_train=parallel.pmap_batch, eval=eval_fn, put_batch=put_batch,
                        host_params=lambda s: parallel.unreplicate(s.params), host_state=parallel.unreplicate)
  step_fn = jit_train_step(task, run.tx, run.schedule, t, run.mode, mesh, state_sh, batch_sh)
  eval_fn = jax.jit(eval_step, in_shardings=(param_sh, batch_sh))
  return state, Steps(train=step_fn, put_train=put_batch, eval=eval_fn, put_batch=put_batch,
                      host_params=lambda s: s.params, host_state=lambda s: s)


def compile_ahead(run: Run, task: Task, steps: Steps, state: TrainState, start_step: int) -> Steps:
  """Compiles the train step ahead of time to log its memory; the same executable then runs every step (unless the
  task's batch shapes vary: ``fixed_batch_shape=False``, and jit compiles each shape it meets)."""
  try:
    batch = steps.put_train(task.train_batch(start_step, jax.process_index(), jax.process_count()))
    compiled = steps.train.lower(state, batch).compile()
    steps.memory = memory_stats(compiled)
    if run.mode != "pmap" and optional(task, "fixed_batch_shape"):
      steps.train = compiled
  except Exception as e:  # pylint: disable=broad-except
    log.warning("could not compile the step ahead of time for memory_analysis: %s", e)
  if steps.memory:
    log.info("compiled step memory per device: %s", ", ".join(
        f"{k.replace('_size_in_bytes', '')} {v / 2**20:.1f} MiB" for k, v in steps.memory.items()))
    if run.is_main:
      write_json(os.path.join(run.workdir, "run_info.json"), {**run.info, "step_memory_bytes": steps.memory})
  return steps


def mfu_reference(run: Run, task: Task, params: Any) -> tuple[float | None, float | None]:
  """``(FLOPs per token, peak FLOP/s)`` for the MFU in the logs (``train.log_mfu``); Nones when unknown."""
  flops_per_token = optional(task, "flops_per_token")(params)
  with run.timer("mfu_peak"):  # measured once per machine and kept in the user cache dir (CPU)
    peak = (metrics_lib.device_peak_flops(measure_cpu=run.t.log_mfu, cache_dir=files.cache_dir())
            if run.t.log_mfu else None)
  if flops_per_token and peak:
    log.info("MFU reference: %.3g FLOPs/token, peak %.3g FLOP/s (%s)", flops_per_token, peak,
             "measured matmul" if jax.default_backend() == "cpu" else "data sheet")
  return flops_per_token, peak


# -- 4. the step loop --------------------------------------------------------------------------------------------------
# Evaluation batches dispatched before their results are read back. Not all of them: on CPU, XLA's in-process
# collectives deadlock when dozens of multi-device programs are queued at once (the translator's 64 validation
# batches on 8 fake devices: 7 device threads waiting at an all-gather for the 8th, seen about one run in two while
# another process loaded the 2 cores); the training loop keeps at most two steps in flight for the same reason.
EVAL_BATCHES_IN_FLIGHT = 8


def evaluate(task: Task, eval_fn, params, put_batch) -> dict[str, float]:
  """Mean loss and metrics over the task's evaluation batches (dispatched :data:`EVAL_BATCHES_IN_FLIGHT` at a time,
  then read back together: one host sync per 8 batches, not one per batch)."""
  loss_sum, weight, sums = 0.0, 0.0, {}
  pid, nproc = jax.process_index(), jax.process_count()
  outputs = []

  def read_back():
    nonlocal loss_sum, weight
    for ls, w, ms in jax.device_get(outputs):
      loss_sum, weight = loss_sum + float(ls), weight + float(w)
      for k, v in ms.items():
        sums[k] = sums.get(k, 0.0) + float(v)
    outputs.clear()

  for batch in task.eval_batches(pid, nproc):
    outputs.append(eval_fn(params, put_batch(batch)))
    if len(outputs) == EVAL_BATCHES_IN_FLIGHT:
      read_back()
  read_back()
  if weight == 0:
    return {}
  out = {"eval_loss": loss_sum / weight}
  out.update({f"eval_{k}": v / weight for k, v in sums.items()})
  return out


def evaluate_and_record(run: Run, task: Task, steps: Steps, state: TrainState, done: int, logger: MetricsLogger,
                        checkpoints: Checkpoints) -> None:
  """An evaluation after ``done`` steps: written, and kept in ``best/`` when its loss is the lowest so far."""
  params = steps.host_params(state)
  with run.timer("eval"):
    ev = evaluate(task, steps.eval, params, steps.put_batch)
    if ev and jax.process_count() == 1:  # e.g. the translator's BLEU (one process: its decoding runs on this
      ev.update(optional(task, "eval_report")(params))  # process's devices)
  if ev and logger.write_eval(done, ev):
    checkpoints.save_best(done, params, ev)


def stop_requested(run: Run, preempt: Preemption, done: int) -> bool:
  """A SIGTERM arrived. Multi-process runs save collectively: every ``log_every`` steps all processes agree."""
  if jax.process_count() == 1:
    return preempt.requested
  return done % run.t.log_every == 0 and bool(np.any(multihost_utils.process_allgather(np.int32(preempt.requested))))


def out_of_patience(logger: MetricsLogger) -> bool:
  """Early stopping is due (``train.patience``), as process 0 counts it: only process 0 reads back ``metrics.jsonl``
  when a run resumes, so every process follows its decision."""
  stop = logger.out_of_patience()
  if jax.process_count() > 1:
    stop = bool(multihost_utils.broadcast_one_to_all(np.int32(stop)))
  return stop


def run_steps(run: Run, task: Task, steps: Steps, state: TrainState, start_step: int, logger: MetricsLogger,
              checkpoints: Checkpoints) -> tuple[TrainState, int | None]:
  """Steps ``start_step`` to ``train.num_steps``, or until early stopping (``train.patience``); returns the state
  and, after a SIGTERM, the step it stopped at (its checkpoint written, the checkpoints closed)."""
  t, timer = run.t, run.timer
  pid, nproc = jax.process_index(), jax.process_count()
  if t.get("patience", 0) and out_of_patience(logger):
    log.info("early stopping: the run already stopped at step %d (train.patience=%d); not training further",
             start_step, t.patience)
    return state, None
  profiler = Profiler(t.get("profile_steps", ""), run.workdir, start_step)
  if start_step == 0 and t.eval_every and t.num_steps > 0:  # the curve starts at the initial loss
    with timer("eval"):
      ev0 = evaluate(task, steps.eval, steps.host_params(state), steps.put_batch)
    if ev0:
      logger.write_eval(0, ev0, initial=True)
  loop_start, outside_steps = time.perf_counter(), timer.total("eval", "checkpoint")
  with Preemption() as preempt:
    for step in range(start_step, t.num_steps):
      profiler.before_step(step)
      batch = task.train_batch(step, pid, nproc)
      state, metrics = steps.train(state, steps.put_train(batch))
      logger.push(step, metrics, tokens_in(batch) * nproc)  # tokens of the global batch
      done = step + 1
      profiler.after_step(done, state)
      is_last = done == t.num_steps
      if (t.eval_every and done % t.eval_every == 0) or is_last:
        logger.flush()
        evaluate_and_record(run, task, steps, state, done, logger, checkpoints)
        if t.get("patience", 0) and not is_last and out_of_patience(logger):
          log.info("early stopping at step %d: %d evaluations without a lower %s than %.4f (train.patience)", done,
                   t.patience, logger.patience_metric, min(logger.patience_values))
          is_last = True
      if (t.checkpoint_every and done % t.checkpoint_every == 0) or is_last:
        logger.flush()  # check this step's metrics first: a NaN step must not become the last checkpoint
        checkpoints.save(done, steps.host_state(state), force=is_last)
      if stop_requested(run, preempt, done):
        logger.flush()
        checkpoints.save(done, steps.host_state(state), force=True)
        checkpoints.close()  # still under the SIGTERM handler: the other processes' signals may yet arrive
        return state, done
      if is_last:  # early stopping
        break
    logger.flush()
  # the steps' own time: the loop's, less the evaluations and checkpoint saves inside it
  timer.add("train", time.perf_counter() - loop_start - (timer.total("eval", "checkpoint") - outside_steps))
  return state, None


# -- 5. the end --------------------------------------------------------------------------------------------------------
def finish(run: Run, task: Task, steps: Steps, state: TrainState, logger: MetricsLogger, checkpoints: Checkpoints,
           flops_per_token: float | None, peak: float | None) -> dict[str, Any]:
  """The results: the last evaluation (one more if the last step had none), the training figures, the task's final
  report and ``loss.png`` (process 0), once the last checkpoint is written."""
  timer = run.timer
  params = steps.host_params(state)
  final_step = int(jax.device_get(steps.host_state(state).step))
  results: dict[str, Any] = {"step": final_step}
  if "eval_loss" not in logger.last_record:
    with timer("eval"):
      ev = evaluate(task, steps.eval, params, steps.put_batch)
    results.update(ev)
    if ev:
      logger.note_eval(final_step, ev)
  else:
    results.update({k: v for k, v in logger.last_record.items() if k.startswith("eval_")})
  results.update(logger.summary())
  results.update({"num_params": int(sum(x.size for x in jax.tree.leaves(params))), "parallel": run.mode,
                  "device_count": jax.device_count()})
  if checkpoints.best is not None:
    results["best_checkpoint_step"] = checkpoints.best_step()
  if run.t.get("patience", 0):
    results["stopped_early"] = final_step < run.t.num_steps
  if steps.memory:
    results["step_memory_bytes"] = steps.memory
  if flops_per_token and peak and logger.rates:
    results["mfu_median"] = results["tokens_per_s_median"] * flops_per_token / peak
  if logger.skipped:
    results["skipped_steps"] = logger.skipped
  if jax.process_count() > 1:  # the report runs on process 0 alone: give it host copies of the (global) parameters
    params = multihost_utils.process_allgather(params, tiled=True)
  if run.is_main:  # the last checkpoint is written in the background meanwhile
    final_reports(run, task, params, final_step, results)
  with timer("checkpoint"):
    checkpoints.close()
  logger.close()
  return results


def final_reports(run: Run, task: Task, params: Any, step: int, results: dict[str, Any]) -> None:
  """The task's final report (e.g. a sample, BLEU) of the parameters after ``step`` steps into ``results``, and
  ``loss.png``; a failure is logged, not raised (the run's checkpoints and metrics are already written)."""
  try:
    with run.timer("final_report"):
      report = optional(task, "final_report")
      takes_step = "step" in inspect.signature(report).parameters  # a one-argument report (older tasks) gets none
      results.update(report(params, step=step) if takes_step else report(params))
  except Exception as e:  # pylint: disable=broad-except
    log.warning("final report failed: %s", e)
  try:
    with run.timer("plot"):
      from tfjax.runs import plots  # pylint: disable=import-outside-toplevel
      plots.plot_runs([run.workdir], os.path.join(run.workdir, "loss.png"))
  except Exception as e:  # pylint: disable=broad-except
    log.warning("could not draw loss.png: %s", e)


# what only the launch that trained can measure
TRAINING_FIGURES = ("train_loss", "tokens_per_s_median", "mfu_median", "wall_time_s", "skipped_steps",
                    "phase_seconds", "started_unix", "run_seconds")


def keep_training_figures(path: str, results: dict[str, Any]) -> dict[str, Any]:
  """``results`` of a relaunch that trained no step (the run had finished, or stopped early), with the training
  figures of the ``results.json`` at ``path`` it replaces, if any: the evaluation and report are recomputed, the
  training's tokens/s and wall time are not lost."""
  if not os.path.exists(path):
    return results
  with open(path) as f:
    earlier = json.load(f)
  return {**results, **{k: earlier[k] for k in TRAINING_FIGURES if k in earlier}}


def train_and_evaluate(config: Any, workdir: str, task: Task) -> dict[str, Any]:
  """Trains ``task`` as ``config`` says, resuming from ``workdir``; returns the final results (also in
  ``results.json``), or ``{"preempted_at": step}`` after a SIGTERM."""
  entered_unix, entered = time.time(), time.perf_counter()
  check_task(task)
  timer = PhaseTimer()
  run = start_run(config, workdir, timer)
  checkpoints = Checkpoints(run)
  state, start_step, param_sh, state_sh = create_or_restore_state(run, task, checkpoints)
  record_run(run)
  state, steps = make_steps(run, task, state, param_sh, state_sh)
  timer.add("setup", time.perf_counter() - entered)
  with timer("compile"):
    steps = compile_ahead(run, task, steps, state, start_step)
  parse_profile_steps(run.t.get("profile_steps", ""))  # a bad spec fails before the first step
  flops_per_token, peak = mfu_reference(run, task, steps.host_params(state))
  with timer("setup"):
    logger = MetricsLogger(run.workdir, run.t, start_step, pmap=run.mode == "pmap", flops_per_token=flops_per_token,
                           peak_flops=peak)

  state, preempted_at = run_steps(run, task, steps, state, start_step, logger, checkpoints)
  if preempted_at is not None:
    logger.close()
    log.warning("SIGTERM: saved a checkpoint at step %d in %s; relaunch the same command to resume", preempted_at,
                run.workdir)
    return {"preempted_at": preempted_at}

  results = finish(run, task, steps, state, logger, checkpoints, flops_per_token, peak)
  results["phase_seconds"] = dict(timer.seconds)
  results["started_unix"] = entered_unix  # with the launch time: the interpreter's start-up and imports
  results["run_seconds"] = time.perf_counter() - entered
  if run.is_main:
    path = os.path.join(run.workdir, "results.json")
    if start_step == results["step"]:
      results = keep_training_figures(path, results)
    write_json(path, results)
  log.info("time: %s", timer.summary())
  if "sample" in results:
    log.info("sample:\n%s", results["sample"])
  log.info("results: %s", {k: v for k, v in results.items() if k != "sample"})
  return results

"""Adaptive sweeps with Optuna: a study whose trials are tfjax runs, shared by any number of workers.

Each trial is a separate process, a run of ``experiments/train.py`` in ``SWEEPDIR/trial_<n>`` launched like a local
sweep's runs (:func:`tfjax.runs.sweep.train_command`); the training loop knows nothing of Optuna. The worker follows
the run's ``metrics.jsonl`` as it is written and reports each evaluation's ``eval_loss`` (steps > 0) to the trial;
when the pruner says prune, it sends the run SIGTERM (the loop saves a checkpoint and exits cleanly) and writes
``{"pruned": true, ...}`` as the run's ``results.json``. A finished run's ``results.json[objective]`` (default
``best_eval_loss``) is the trial's value.

Several workers share one study through its storage: ``sqlite:///SWEEPDIR/study.db`` by default (one machine, or a
shared file system), or any SQLAlchemy URL such as ``postgresql://user@host/db`` (several machines). A worker
records a heartbeat for its trial while the run goes on (Optuna's ``RDBStorage`` heartbeat); a trial whose worker
died (no heartbeat for ``grace_s``) is marked FAIL by the next worker that looks, and re-queued with the same
parameters (Optuna's retry callback); the retry takes over the dead trial's workdir, so its run resumes from the last
checkpoint. A dead worker's trial is never counted as finished. With ``--trials=N`` the study, not each worker, gets
N trials: a worker stops when N are done or running, after waiting for the running ones (to take over any whose
worker dies).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import time
import warnings
from typing import Any

from tfjax.runs import sweep as sweep_lib

log = logging.getLogger("tfjax")

STUDY_META = "study.json"
PRUNERS = "median[:STARTUP[:WARMUP]], hyperband, asha, threshold:UPPER or none"


def _optuna():
  """Imports optuna (quietly: no per-trial INFO lines, no experimental-feature warnings)."""
  try:
    import optuna
  except ImportError as e:
    raise sweep_lib.SweepError("--optuna needs the optuna package: pip install optuna "
                               "(it is a dependency of tfjax: pip install -e .)") from e
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  # the worker records the heartbeats itself (it asks and tells instead of calling Study.optimize)
  warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def search_space(axes: list[tuple[str, list[Any]]] = (),
                 ranges: list[tuple[str, float, float, str]] = ()) -> dict[str, Any]:
  """Optuna distributions of config keys from the sweep spec (:func:`tfjax.runs.sweep.parse_axis` /
  :func:`~tfjax.runs.sweep.parse_range`): a ``--sweep KEY=V1,V2`` axis is categorical, ``--range KEY=LO:HI:log``
  a log-uniform float, ``lin`` a uniform float, ``int`` an integer in [LO, HI]."""
  optuna = _optuna()
  d = optuna.distributions
  space: dict[str, Any] = {}
  for key, values in axes:
    if key in space:
      raise sweep_lib.SweepError(f"{key} is swept twice")
    if len(set(values)) != len(values) or not values:
      raise sweep_lib.SweepError(f"--sweep {key} needs distinct values, got {values}")
    space[key] = d.CategoricalDistribution(values)
  for key, lo, hi, scale in ranges:
    if key in space:
      raise sweep_lib.SweepError(f"{key} is swept twice (in --sweep and --range, or twice in --range)")
    if scale == "int":
      if lo != int(lo) or hi != int(hi):
        raise sweep_lib.SweepError(f"--range {key}=...:int needs integer bounds, got {lo}, {hi}")
      space[key] = d.IntDistribution(int(lo), int(hi))
    else:
      space[key] = d.FloatDistribution(lo, hi, log=scale == "log")
  if not space:
    raise sweep_lib.SweepError("--optuna needs a search space: --range KEY=LO:HI[:log|lin|int] and/or "
                               "--sweep KEY=V1,V2,...")
  return space


def make_pruner(spec: str):
  """An Optuna pruner from ``spec``: ``median`` (MedianPruner: prune a trial whose loss at a step is worse than the
  median of earlier trials at that step; ``median:STARTUP:WARMUP`` sets n_startup_trials / n_warmup_steps),
  ``hyperband``, ``asha`` (successive halving), ``threshold:UPPER`` (prune once a loss exceeds UPPER, or is NaN),
  ``none``."""
  optuna = _optuna()
  name, *args = str(spec).split(":")
  try:
    if name == "median" and len(args) <= 2:
      kw = dict(zip(("n_startup_trials", "n_warmup_steps"), (int(a) for a in args)))
      return optuna.pruners.MedianPruner(**kw)
    if name == "hyperband" and not args:
      return optuna.pruners.HyperbandPruner()
    if name == "asha" and not args:
      return optuna.pruners.SuccessiveHalvingPruner()
    if name == "threshold" and len(args) == 1:
      return optuna.pruners.ThresholdPruner(upper=float(args[0]))
    if name == "none" and not args:
      return optuna.pruners.NopPruner()
  except ValueError as e:
    raise sweep_lib.SweepError(f"--pruner={spec}: {e}; expected {PRUNERS}") from e
  raise sweep_lib.SweepError(f"unknown --pruner={spec!r}; expected {PRUNERS}")


def default_storage(sweepdir: str) -> str:
  """``sqlite:///SWEEPDIR/study.db`` (absolute)."""
  return f"sqlite:///{os.path.join(os.path.abspath(sweepdir), 'study.db')}"


def _retry_callback_class():
  optuna = _optuna()
  return getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
      optuna.storages.RetryFailedTrialCallback  # optuna < 4.6


def open_storage(url: str, heartbeat_s: int = 60, grace_s: int | None = None, max_retry: int = 3):
  """Optuna's ``RDBStorage`` at ``url`` with heartbeats every ``heartbeat_s`` seconds: a RUNNING trial without one
  for ``grace_s`` (default 2 x heartbeat) is stale, marked FAIL and re-queued (at most ``max_retry`` times). SQLite
  waits up to 60 s for a lock held by another worker."""
  optuna = _optuna()
  if int(heartbeat_s) < 1 or (grace_s is not None and int(grace_s) <= int(heartbeat_s)):
    raise sweep_lib.SweepError(f"--heartbeat must be >= 1 s and --grace > --heartbeat, got {heartbeat_s}, {grace_s}")
  retry_cls = _retry_callback_class()
  callback = retry_cls(max_retry=max_retry)
  cb_kw = ({"heartbeat_stale_trial_callback": callback} if retry_cls.__name__.startswith("RetryHeartbeat")
           else {"failed_trial_callback": callback})
  sqlite = url.startswith("sqlite")
  storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {},
                                       heartbeat_interval=int(heartbeat_s),
                                       grace_period=int(grace_s) if grace_s else 2 * int(heartbeat_s), **cb_kw)
  if sqlite:
    _immediate_transactions(storage.engine)
  return storage


def _immediate_transactions(engine) -> None:
  """Makes every SQLite transaction of ``engine`` take the write lock when it begins (``BEGIN IMMEDIATE``).

  Optuna hands out a queued trial by reading that it is WAITING and then marking it RUNNING. On PostgreSQL or MySQL
  ``SELECT ... FOR UPDATE`` makes that one step; SQLite has no such lock, and Python's sqlite3 starts a transaction
  only at the write, so two workers could both read WAITING and both run the same trial in the same workdir (seen
  here: 3 of 60 queued trials handed out twice to 3 workers). With the lock taken at ``BEGIN``, a transaction's
  reads and writes happen as one step; the others wait for it (up to the 60 s timeout)."""
  from sqlalchemy import event

  @event.listens_for(engine, "connect")
  def _no_implicit_begin(dbapi_connection, connection_record):  # pylint: disable=unused-argument
    dbapi_connection.isolation_level = None  # sqlite3 emits no BEGIN of its own: the "begin" event below does

  @event.listens_for(engine, "begin")
  def _begin_immediate(connection):
    connection.exec_driver_sql("BEGIN IMMEDIATE")

  engine.dispose()  # connections opened before the listeners (creating the tables) are not reused


def _public_url(url: str) -> str:
  """The storage URL without its password (for ``study.json`` and logs)."""
  try:
    import sqlalchemy
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except Exception:  # pylint: disable=broad-except
    return url


def open_study(sweepdir: str, meta: dict[str, Any], storage_url: str | None = None, heartbeat_s: int = 60,
               grace_s: int | None = None, max_retry: int = 3, sampler=None, pruner=None):
  """Creates or joins the study ``meta["study"]`` (minimising) in ``storage_url`` (default
  :func:`default_storage`), and writes ``SWEEPDIR/study.json`` (``meta`` plus the storage URL without password).
  Refuses to join a study launched with another config, fixed overrides or search space. Several workers may call it
  at once (table creation on a fresh SQLite file is retried)."""
  optuna = _optuna()
  sweepdir = os.path.abspath(sweepdir)
  os.makedirs(sweepdir, exist_ok=True)
  url = storage_url or default_storage(sweepdir)
  meta = {**meta, "storage": _public_url(url)}
  for attempt in range(10):
    try:
      storage = open_storage(url, heartbeat_s, grace_s, max_retry)
      study = optuna.create_study(study_name=meta["study"], storage=storage, sampler=sampler, pruner=pruner,
                                  direction="minimize", load_if_exists=True)
      break
    except sweep_lib.SweepError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (two workers creating the same tables / study)
      if attempt == 9 or ("sqlite" not in url and "already exists" not in str(e).lower()):
        raise
      log.info("optuna: opening %s: %s; retrying", _public_url(url), str(e).splitlines()[0])
      time.sleep(0.5 + 0.5 * attempt)
  spec = {k: meta[k] for k in ("config", "extra_args", "space", "objective")}
  known = study.user_attrs.get("tfjax")
  if known is None:
    study.set_user_attr("tfjax", spec)
  elif known != spec:
    diff = {k: (known.get(k), spec[k]) for k in spec if known.get(k) != spec[k]}
    raise sweep_lib.SweepError(f"study {meta['study']!r} in {meta['storage']} was launched with other settings "
                               f"(stored vs now: {diff}); use another --study or --sweepdir")
  path = os.path.join(sweepdir, STUDY_META)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, path)
  return study


def space_spec(space: dict[str, Any]) -> dict[str, str]:
  """A JSON-able description of the search space (what ``study.json`` records)."""
  return {k: repr(v) for k, v in space.items()}


class _MetricsTail:
  """The records appended to ``WORKDIR/metrics.jsonl`` since the last call (complete lines only; a file rewritten
  by a resuming run is read again from its start)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.pos = 0
    self.inode = None

  def read(self) -> list[dict[str, Any]]:
    try:
      with open(self.path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_ino != self.inode or st.st_size < self.pos:  # replaced (os.replace) or cut: from the start
          self.pos, self.inode = 0, st.st_ino
        f.seek(self.pos)
        data = f.read()
    except FileNotFoundError:
      return []
    end = data.rfind(b"\n") + 1
    self.pos += end
    out = []
    for line in data[:end].splitlines():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
    return out


class _StopFlag:
  """SIGINT / SIGTERM set ``requested`` (the worker then stops its run, which saves a checkpoint, and re-queues the
  trial) instead of raising in the middle of a database call."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if not self.requested:
      log.warning("optuna worker: %s: stopping the current run (it saves a checkpoint) and re-queueing its trial",
                  signal.Signals(signum).name)
    self.requested = True

  def __exit__(self, *exc):
    for sig, prev in self._previous.items():
      signal.signal(sig, prev)


def _count_toward_budget(trials, optuna) -> tuple[int, int, int]:
  """(trials that count toward ``--trials``, RUNNING, WAITING). A trial failed because its worker died or was
  stopped is not counted (its re-queued copy is); one whose run failed by itself is."""
  s = optuna.trial.TrialState
  running = sum(t.state == s.RUNNING for t in trials)
  waiting = sum(t.state == s.WAITING for t in trials)
  counted = sum(t.state in (s.COMPLETE, s.PRUNED, s.RUNNING, s.WAITING) or
                (t.state == s.FAIL and t.user_attrs.get("outcome") == "error") for t in trials)
  return counted, running, waiting


def _frozen(study, number: int):
  return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _write_json(path: str, obj: dict[str, Any]) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)


def _tell(study, trial, **kw) -> None:
  try:
    study.tell(trial, **kw)
  except Exception as e:  # pylint: disable=broad-except  (another worker took it for dead and failed it)
    log.warning("optuna: trial %d: could not record its outcome (%s)", trial.number, e)


def _trial_workdir(study, trial, sweepdir: str) -> str:
  """``SWEEPDIR/trial_<n>``; a re-queued trial first takes over the workdir of the trial it retries, so that its run
  resumes from that checkpoint."""
  workdir = os.path.join(sweepdir, f"trial_{trial.number}")
  history = _retry_callback_class().retry_history(_frozen(study, trial.number))
  if history:
    previous = os.path.join(sweepdir, f"trial_{history[-1]}")
    if os.path.isdir(previous) and not os.path.exists(workdir):
      os.rename(previous, workdir)
      log.info("optuna: trial %d retries trial %d and resumes in its workdir (now %s)", trial.number, history[-1],
               workdir)
    trial.set_user_attr("retry_of", history[-1])
  return workdir


class _EvalReporter:
  """Reports each new evaluation of the run's ``metrics.jsonl`` to the trial and asks its pruner; on a prune, stops
  the run (SIGTERM: it saves a checkpoint). ``reported``: step -> eval_loss; ``pruned_at``: the step, or None."""

  def __init__(self, trial, workdir: str, proc):
    self.trial, self.proc = trial, proc
    self.tail = _MetricsTail(workdir)
    self.reported: dict[int, float] = {}
    self.pruned_at = None

  def follow(self) -> None:
    for rec in self.tail.read():
      step = int(rec.get("step", 0))
      if "eval_loss" not in rec or step <= 0 or step in self.reported or self.pruned_at is not None:
        continue  # step 0 is the untrained model: the same for every trial
      value = float(rec["eval_loss"])
      self.reported[step] = value
      self.trial.report(value if math.isfinite(value) else float("inf"), step)
      if self.trial.should_prune():
        self.pruned_at = step
        log.info("optuna: trial %d pruned at step %d (eval_loss %.4g)", self.trial.number, step, value)
        if self.proc is not None and self.proc.poll() is None:
          self.proc.send_signal(signal.SIGTERM)


def _wait_for_run(proc, reporter: _EvalReporter, storage, trial, poll_s: float, heartbeat_s: float,
                  stop: _StopFlag) -> None:
  """Until the run exits: the trial's heartbeat, its evaluations reported, and SIGTERM to the run once a stop is
  requested."""
  last_beat, terminated = 0.0, False
  while proc.poll() is None:
    now = time.time()
    if now - last_beat >= heartbeat_s / 2:
      storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access
      last_beat = now
    reporter.follow()
    if stop.requested and not terminated:
      proc.send_signal(signal.SIGTERM)
      terminated = True
    time.sleep(poll_s)


def _write_pruned_results(workdir: str, trial, reporter: _EvalReporter, t0: float, rc) -> None:
  """``results.json`` of a run stopped by the pruner: where, its loss there, its best, its last step."""
  from tfjax.train.metrics import read_metrics
  recs = read_metrics(workdir)
  evals = [r["eval_loss"] for r in recs if "eval_loss" in r]
  _write_json(os.path.join(workdir, "results.json"), {
      "pruned": True, "pruned_at_step": reporter.pruned_at, "trial": trial.number,
      "step": max((r["step"] for r in recs if "loss" in r), default=0),
      "eval_loss": reporter.reported[reporter.pruned_at], "best_eval_loss": min(evals) if evals else None,
      "wall_time_s": time.time() - t0, "exit_code": rc})


def _conclude(study, trial, workdir: str, objective: str, reporter: _EvalReporter, rc, stopped: bool,
              t0: float) -> str:
  """Tells the study how the trial's run ended: finished (its ``objective``), pruned, stopped from outside (failed
  and re-queued, to resume) or failed by itself. Returns the state name."""
  optuna = _optuna()
  results_path = os.path.join(workdir, "results.json")
  results = None
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
  if results is not None and not results.get("pruned"):  # the run finished (even if pruned as it ended)
    value = results.get(objective)
    if value is None or not math.isfinite(float(value)):
      log.error("optuna: trial %d: results.json has no finite %r; see %s", trial.number, objective, results_path)
      trial.set_user_attr("outcome", "error")
      _tell(study, trial, state=optuna.trial.TrialState.FAIL)
      return "FAIL"
    trial.set_user_attr("outcome", "complete")
    _tell(study, trial, values=float(value))
    log.info("optuna: trial %d done: %s = %.4g (%.0f s)", trial.number, objective, value, time.time() - t0)
    return "COMPLETE"
  if reporter.pruned_at is not None or (results or {}).get("pruned"):
    if results is None:
      _write_pruned_results(workdir, trial, reporter, t0, rc)
    trial.set_user_attr("outcome", "pruned")
    trial.set_user_attr("pruned_at_step", reporter.pruned_at)
    _tell(study, trial, state=optuna.trial.TrialState.PRUNED)
    return "PRUNED"
  if rc == 0 or stopped:  # stopped from outside (SIGTERM: a checkpoint is saved): run it again later
    trial.set_user_attr("outcome", "interrupted")
    _tell(study, trial, state=optuna.trial.TrialState.FAIL)
    _retry_callback_class()(max_retry=None)(study, _frozen(study, trial.number))
    log.warning("optuna: trial %d stopped before it finished; re-queued (the retry resumes from its checkpoint)",
                trial.number)
    return "FAIL"
  trial.set_user_attr("outcome", "error")
  trial.set_user_attr("exit_code", rc)
  _tell(study, trial, state=optuna.trial.TrialState.FAIL)
  log.error("optuna: trial %d failed (exit code %s); see %s", trial.number, rc, os.path.join(workdir, "train.log"))
  return "FAIL"


def run_trial(study, trial, config: str, sweepdir: str, extra_args: list[str], objective: str, env: dict[str, str],
              train_script: str | None, poll_s: float, heartbeat_s: float, stop: _StopFlag,
              die_with_parent: bool) -> str:
  """Runs ``trial`` as a tfjax run in ``SWEEPDIR/trial_<n>`` (a re-queued trial first takes over the workdir of the
  trial it retries, so the run resumes from its checkpoint), reporting evaluations, pruning, and telling the study
  the outcome. Returns the trial's final state name (``COMPLETE``, ``PRUNED`` or ``FAIL``)."""
  workdir = _trial_workdir(study, trial, sweepdir)
  trial.set_user_attr("workdir", workdir)
  trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
  settings = dict(trial.params)
  t0 = time.time()
  proc = None
  if not sweep_lib.is_finished(workdir):  # else its run ended but the worker died before telling the study
    cmd = sweep_lib.train_command(config, workdir, settings, extra_args, train_script)
    log.info("optuna: trial %d: %s", trial.number, sweep_lib.run_name(settings))
    proc, logf = sweep_lib.start_run(cmd, workdir, env, die_with_parent=die_with_parent)
  reporter = _EvalReporter(trial, workdir, proc)
  if proc is not None:
    _wait_for_run(proc, reporter, study._storage, trial, poll_s, heartbeat_s, stop)  # pylint: disable=protected-access
    logf.close()
  reporter.follow()
  rc = None if proc is None else proc.returncode
  return _conclude(study, trial, workdir, objective, reporter, rc, stop.requested, t0)


def run_worker(config: str, space: dict[str, Any], sweepdir: str, n_trials: int, study_name: str | None = None,
               storage_url: str | None = None, extra_args: list[str] = (), objective: str = "best_eval_loss",
               pruner: str = "median", seed: int | None = None, heartbeat_s: int = 60, grace_s: int | None = None,
               max_retry: int = 3, train_script: str | None = None, env: dict[str, str] | None = None,
               poll_s: float = 1.0, die_with_parent: bool = True) -> dict[str, int]:
  """One worker of the study: asks for trials (TPE, ``constant_liar`` so parallel workers spread out; re-queued
  trials first) and runs them one at a time (:func:`run_trial`) until the study holds ``n_trials`` counted trials
  and none is running. Returns how many trials this worker ended in each state. Call it from the main thread of a
  process without other threads (``die_with_parent`` forks); run it on several machines at once with one
  ``storage_url`` for a multi-machine study."""
  optuna = _optuna()
  if n_trials < 1:
    raise sweep_lib.SweepError(f"--trials must be >= 1, got {n_trials}")
  sweepdir = os.path.abspath(sweepdir)
  meta = {"study": study_name or os.path.basename(sweepdir), "config": os.path.abspath(config),
          "extra_args": list(extra_args), "space": space_spec(space), "objective": objective, "trials": n_trials,
          "pruner": pruner}
  study = open_study(sweepdir, meta, storage_url, heartbeat_s, grace_s, max_retry,
                     sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True), pruner=make_pruner(pruner))
  env = dict(os.environ if env is None else env)
  done = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
  waited = False
  with _StopFlag() as stop:
    while not stop.requested:
      optuna.storages.fail_stale_trials(study)  # trials of dead workers: FAIL, and re-queued
      counted, running, waiting = _count_toward_budget(study.get_trials(deepcopy=False), optuna)
      if not waiting and counted >= n_trials:
        if not running:
          break
        if not waited:
          log.info("optuna: %d trials asked for; waiting for the %d running on other workers", n_trials, running)
          waited = True
        time.sleep(min(heartbeat_s, 10 * poll_s))
        continue
      trial = study.ask(space)
      study._storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access
      state = run_trial(study, trial, config, sweepdir, list(extra_args), objective, env, train_script, poll_s,
                        heartbeat_s, stop, die_with_parent)
      done[state] += 1
  log.info("optuna worker: %s", ", ".join(f"{v} {k.lower()}" for k, v in done.items()))
  return done


def _worker_main(kwargs: dict[str, Any], log_level: int | None, slot: int) -> None:
  """A spawned worker process: the parent's tfjax log lines (to stdout, tagged ``[wSLOT]``), then :func:`run_worker`."""
  if log_level is not None:
    import sys
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [w{slot}] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(log_level)
    log.propagate = False
  run_worker(**kwargs)


def run_study(config: str, space: dict[str, Any], sweepdir: str, n_trials: int, parallel: int = 1,
              gpus_per_run: int = 0, env: dict[str, str] | None = None, **worker_kw) -> list[dict[str, Any]]:
  """``parallel`` workers (:func:`run_worker`) of one study on this machine, each in its own process with its own
  GPUs (:func:`tfjax.runs.sweep.gpu_groups`; on CPUs one XLA device per run), then :func:`report`. Returns the
  report's rows."""
  import multiprocessing
  base_env = dict(os.environ if env is None else env)
  if parallel <= 1:
    run_worker(config, space, sweepdir, n_trials, env=base_env, **worker_kw)
    return report(sweepdir)
  gpus = sweep_lib.visible_gpus(base_env)
  groups = sweep_lib.gpu_groups(gpus, parallel, gpus_per_run)
  if not gpus and "TFJAX_CPU_DEVICES" not in base_env:
    base_env["TFJAX_CPU_DEVICES"] = "1"
  ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or database connections
  procs = []
  for i in range(parallel):
    wenv = base_env if not groups else {**base_env, "CUDA_VISIBLE_DEVICES": ",".join(groups[i])}
    kw = {**worker_kw, "config": config, "space": space, "sweepdir": sweepdir, "n_trials": n_trials, "env": wenv}
    if kw.get("seed") is not None:
      kw["seed"] += i  # the same seed in every worker would propose the same first trials
    procs.append(ctx.Process(target=_worker_main, args=(kw, log.level if log.handlers else None, i),
                             name=f"optuna-worker-{i}"))
    procs[-1].start()
    if i == 0:
      time.sleep(1.0)  # let the first create the study
  for p in procs:
    while p.is_alive():
      try:
        p.join()
      except KeyboardInterrupt:  # the workers got the Ctrl-C too: they stop their runs and re-queue the trials
        pass
  return report(sweepdir)


def load_study(sweepdir: str, storage_url: str | None = None):
  """The study of ``SWEEPDIR/study.json`` (its storage, or ``storage_url`` where the recorded one hides a
  password)."""
  optuna = _optuna()
  path = os.path.join(os.path.abspath(sweepdir), STUDY_META)
  if not os.path.exists(path):
    raise sweep_lib.SweepError(f"{sweepdir} holds no Optuna study ({STUDY_META} missing)")
  with open(path) as f:
    meta = json.load(f)
  url = storage_url or meta["storage"]
  if "***" in url:
    raise sweep_lib.SweepError(f"the study's storage {url} needs its password: pass --storage=URL")
  return optuna.load_study(study_name=meta["study"], storage=url), meta


def study_rows(study, sweepdir: str) -> list[dict[str, Any]]:
  """One row per trial: ``run`` (``trial_<n>``), state, parameters, objective value, then what its workdir says
  (:func:`tfjax.runs.sweep.run_row`); a trial retried elsewhere names its retry. Completed trials first, best
  first."""
  trials = study.get_trials(deepcopy=False)
  retried_by = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
  rows = []
  for t in trials:
    row = {"run": f"trial_{t.number}", "state": t.state.name, **t.params, "value": t.value}
    wd = os.path.join(sweepdir, row["run"])
    if os.path.isdir(wd):
      row.update(sweep_lib.run_row(wd))
    if t.user_attrs.get("pruned_at_step") is not None:
      row["pruned_at_step"] = t.user_attrs["pruned_at_step"]
    if t.number in retried_by:
      row["note"] = f"{t.user_attrs.get('outcome', 'worker died')}; resumed as trial_{retried_by[t.number]}"
    elif t.user_attrs.get("outcome") == "error":
      row["note"] = f"run failed (exit code {t.user_attrs.get('exit_code')})"
    rows.append(row)
  rows.sort(key=lambda r: (r["state"] != "COMPLETE", r["value"] if r["value"] is not None else math.inf,
                           int(r["run"].split("_")[1])))
  return rows


def report(sweepdir: str, storage_url: str | None = None) -> list[dict[str, Any]]:
  """The study's ``summary.md`` / ``summary.csv`` / ``curves.png`` (as for local sweeps, one row per trial) and
  Optuna's ``importance.png`` (PED-ANOVA parameter importances) and ``history.png`` (optimisation history), drawn
  with ``optuna.visualization.matplotlib``; returns the rows."""
  optuna = _optuna()
  sweepdir = os.path.abspath(sweepdir)
  study, meta = load_study(sweepdir, storage_url)
  rows = study_rows(study, sweepdir)
  completed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
  best = next((r for r in rows if completed and r["run"] == f"trial_{study.best_trial.number}"), None)
  states = [r["state"] for r in rows]
  notes = [f"Study `{meta['study']}` in `{meta['storage']}`: objective `{meta['objective']}` (minimised), pruner "
           f"`{meta.get('pruner')}`; {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
           f"{states.count('FAIL')} failed, {states.count('RUNNING')} running."]

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from optuna.visualization import matplotlib as ovm
  evaluator = optuna.importance.PedAnovaImportanceEvaluator()  # no scikit-learn needed (fANOVA needs it)
  for name, draw in (("history.png", lambda: ovm.plot_optimization_history(study)),
                     ("importance.png", lambda: ovm.plot_param_importances(study, evaluator=evaluator))):
    try:
      with warnings.catch_warnings(), matplotlib.rc_context():  # optuna switches to the ggplot style: undo it
        warnings.simplefilter("ignore")  # too few trials: equal importances (said in the notes)
        ax = draw()
      ax.figure.set_size_inches(8, 5)
      ax.figure.tight_layout()
      ax.figure.savefig(os.path.join(sweepdir, name), dpi=100)
      plt.close(ax.figure)
    except Exception as e:  # pylint: disable=broad-except  (e.g. importances need 2 complete trials)
      notes.append(f"{name}: not drawn ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
      plt.close("all")
  if len(completed) >= 2 and len(study.best_trial.params) > 1:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
        notes.append("Parameter importance (PED-ANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()) +
                     "".join(f" ({w.message})" for w in caught))
      except Exception:  # pylint: disable=broad-except
        pass
  sweep_lib.write_summary(sweepdir, rows, f"Optuna study {meta['study']}", best, notes)
  return rows

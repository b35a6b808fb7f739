"""Hyperparameter sweeps: a grid or a random search of config overrides, each run a subprocess of
``experiments/train.py`` in its own workdir, ``parallel`` at a time; then a summary table and a plot of all runs.

A sweep directory holds one workdir per run, named after its settings (``num_layers=2,lr=0.001``), plus
``sweep.json`` (the runs and their settings), ``summary.md``, ``summary.csv`` and ``curves.png``. Launching the same
sweep again skips runs that finished (``results.json`` present) and resumes the others from their checkpoints (the
train entry point resumes by itself). Learning rate and weight decay are optimizer *state*
(``optax.inject_hyperparams`` in :mod:`tfjax.train.optimizer`), so runs that differ only in them share one code path.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from typing import Any

import numpy as np

from tfjax.config import ConfigError, apply_overrides, parse_value
from tfjax.train.metrics import read_metrics

log = logging.getLogger("tfjax")


class SweepError(ValueError):
  """A malformed ``--sweep``/``--range`` specification; the message shows the expected form."""


def parse_axis(spec: str) -> tuple[str, list[Any]]:
  """``"model.num_layers=2,4" -> ("model.num_layers", [2, 4])``."""
  key, sep, values = spec.partition("=")
  if not sep or not key.strip() or not values.strip():
    raise SweepError(f"--sweep wants KEY=V1,V2,... (e.g. optimizer.lr=1e-3,3e-4), got {spec!r}")
  return key.strip(), [parse_value(v) for v in values.split(",") if v.strip()]


def parse_range(spec: str) -> tuple[str, float, float, str]:
  """``"optimizer.lr=1e-4:3e-3:log" -> ("optimizer.lr", 1e-4, 3e-3, "log")``; scale ``lin`` (default), ``log`` or
  ``int`` (integers in [lo, hi])."""
  key, sep, rest = spec.partition("=")
  parts = rest.split(":")
  if not sep or len(parts) not in (2, 3):
    raise SweepError(f"--range wants KEY=LOW:HIGH[:lin|log|int] (e.g. optimizer.lr=1e-4:3e-3:log), got {spec!r}")
  scale = parts[2] if len(parts) == 3 else "lin"
  if scale not in ("lin", "log", "int"):
    raise SweepError(f"--range scale must be lin, log or int, got {scale!r} in {spec!r}")
  lo, hi = float(parts[0]), float(parts[1])
  if not lo < hi or (scale == "log" and lo <= 0):
    raise SweepError(f"--range needs LOW < HIGH (and LOW > 0 for log), got {spec!r}")
  return key.strip(), lo, hi, scale


def grid(axes: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
  """Every combination of the axes' values, the last axis varying fastest."""
  keys = [k for k, _ in axes]
  if len(set(keys)) != len(keys):
    raise SweepError(f"a key is swept twice: {keys}")
  return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def random_search(ranges: list[tuple[str, float, float, str]], count: int, seed: int = 0,
                  fixed: list[tuple[str, list[Any]]] = ()) -> list[dict[str, Any]]:
  """``count`` settings drawn from ``ranges`` (``fixed`` axes: a value drawn uniformly from the list)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    s = {}
    for key, values in fixed:
      s[key] = values[int(rng.integers(len(values)))]
    for key, lo, hi, scale in ranges:
      if scale == "log":
        s[key] = float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}")
      elif scale == "int":
        s[key] = int(rng.integers(int(lo), int(hi) + 1))
      else:
        s[key] = float(f"{rng.uniform(lo, hi):.3g}")
    out.append(s)
  return out


def run_name(settings: dict[str, Any]) -> str:
  """A directory name from the settings: the last part of each key (the full key where two would clash)."""
  short = [k.split(".")[-1] for k in settings]
  parts = []
  for key, name in zip(settings, short):
    name = name if short.count(name) == 1 else key
    parts.append(f"{name}={settings[key]}")
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts)) or "default"


def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "results.json"))


def visible_gpus(env: dict[str, str]) -> list[str]:
  """The GPUs the sweep may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else the indices ``nvidia-smi`` lists
  (none without it). Found without importing JAX: a JAX client in the sweep's own process would take ~75% of every
  GPU's memory before any run starts."""
  if "CUDA_VISIBLE_DEVICES" in env:
    return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def gpu_groups(gpus: list[str], parallel: int, gpus_per_run: int = 0) -> list[list[str]]:
  """Disjoint groups of ``gpus`` for runs that go ``parallel`` at a time (``gpus_per_run`` 0: an equal share; the
  remainder stays idle). No GPUs or one run at a time: ``[]`` (each run sees every device)."""
  if not gpus or parallel <= 1:
    return []
  per = gpus_per_run or len(gpus) // parallel
  if per < 1 or per * parallel > len(gpus):
    raise SweepError(f"--parallel={parallel} runs of {per or 1} GPU(s) each need {(per or 1) * parallel} GPUs; "
                     f"{len(gpus)} visible ({','.join(gpus)}). Lower --parallel or --gpus_per_run.")
  return [gpus[i * per:(i + 1) * per] for i in range(parallel)]


def default_train_script() -> str:
  """``experiments/train.py`` of this checkout: the entry point every sweep run is launched with."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments",
                      "train.py")


def check_overrides(config_path: str, overrides: list[str]) -> None:
  """Raises :class:`SweepError` naming the first ``KEY=VALUE`` of ``overrides`` that the config file's
  ``get_config()`` does not take (an unknown key, or a value of the wrong type): caught before any run starts,
  rather than once per run in its ``train.log``."""
  path, _, arg = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("_tfjax_sweep_config", path)
  if spec is None or not os.path.isfile(path):
    raise SweepError(f"config file {path!r} does not exist")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    try:
      apply_overrides(copy.deepcopy(config), [item])
    except ConfigError as e:
      raise SweepError(f"{e} (in {os.path.basename(path)})") from None


def train_command(config: str, workdir: str, settings: dict[str, Any], extra_args: list[str] = (),
                  train_script: str | None = None, python: str | None = None) -> list[str]:
  """The command line of one run: ``python experiments/train.py --config=CONFIG --workdir=WORKDIR`` with the fixed
  overrides ``extra_args`` and then the run's ``settings`` as ``--config.KEY=VALUE`` (so the settings win), paths
  absolute. Local sweeps, Optuna trials and SLURM array tasks all launch runs with it."""
  return [python or sys.executable, os.path.abspath(train_script or default_train_script()),
          f"--config={os.path.abspath(config)}",
          f"--workdir={workdir}", *extra_args, *(f"--config.{k}={v}" for k, v in settings.items())]


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
  """Linux: the child gets SIGTERM when the process that started it dies (even by SIGKILL), so a killed sweep
  worker never leaves an orphan run writing into a workdir that a retry takes over; SIGTERM makes the run save a
  checkpoint and exit. Elsewhere a no-op."""
  try:
    import ctypes
    import signal
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def start_run(cmd: list[str], workdir: str, env: dict[str, str], die_with_parent: bool = False
              ) -> tuple[subprocess.Popen, Any]:
  """Starts ``cmd`` in its own session (a Ctrl-C of the sweep does not reach it: the sweep sends SIGTERM), output
  appended to ``WORKDIR/train.log`` after a ``$ CMD`` line. Returns the process and the open log file (the caller
  closes it). ``die_with_parent``: see :func:`_die_with_parent` (use it only from a process without threads)."""
  os.makedirs(workdir, exist_ok=True)
  logf = open(os.path.join(workdir, "train.log"), "a")  # pylint: disable=consider-using-with
  logf.write(f"$ {' '.join(cmd)}\n")
  logf.flush()
  proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                          preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None)
  return proc, logf


def write_sweep_meta(config: str, settings: list[dict[str, Any]], sweepdir: str, extra_args: list[str] = ()
                     ) -> list[dict[str, Any]]:
  """Names the runs of ``settings`` (:func:`run_name`, each in ``SWEEPDIR/<name>``) and writes ``sweep.json`` (the
  config, fixed overrides and runs) atomically; returns the runs ``{"name", "workdir", "settings"}``."""
  sweepdir = os.path.abspath(sweepdir)
  os.makedirs(sweepdir, exist_ok=True)
  names = [run_name(s) for s in settings]
  if len(set(names)) != len(names):
    raise SweepError(f"two runs of the sweep have the same settings: {names}")
  runs = [{"name": n, "workdir": os.path.join(sweepdir, n), "settings": s} for n, s in zip(names, settings)]
  meta_path = os.path.join(sweepdir, "sweep.json")
  with open(meta_path + ".tmp", "w") as f:
    json.dump({"config": os.path.abspath(config), "extra_args": list(extra_args), "runs": runs}, f, indent=2)
  os.replace(meta_path + ".tmp", meta_path)
  return runs


def run_sweep(config: str, settings: list[dict[str, Any]], sweepdir: str, parallel: int = 1,
              extra_args: list[str] = (), train_script: str | None = None, env: dict[str, str] | None = None,
              poll_s: float = 0.2, gpus_per_run: int = 0) -> list[dict[str, Any]]:
  """Runs every setting (skipping finished ones) ``parallel`` at a time; returns one row per run (see
  :func:`summarize`) after writing the summary files. Each run's output goes to ``WORKDIR/train.log``.

  Devices: with GPUs (:func:`visible_gpus`) and ``parallel`` > 1, each run in flight gets its own group of GPUs
  (:func:`gpu_groups`, through ``CUDA_VISIBLE_DEVICES``); a finished run's group goes to the next. On a CPU-only
  machine runs in parallel get one XLA CPU device each (``TFJAX_CPU_DEVICES=1``) since they share the cores."""
  sweepdir = os.path.abspath(sweepdir)
  runs = write_sweep_meta(config, settings, sweepdir, extra_args)

  base_env = dict(os.environ if env is None else env)
  gpus = visible_gpus(base_env) if parallel > 1 else []
  free_groups = gpu_groups(gpus, parallel, gpus_per_run)
  for i, g in enumerate(free_groups):
    log.info("sweep: run slot %d gets GPU(s) %s", i, ",".join(g))
  if parallel > 1 and not gpus and "TFJAX_CPU_DEVICES" not in base_env:
    # runs share the cores: one XLA device per run (N devices per run would each want every core)
    base_env["TFJAX_CPU_DEVICES"] = "1"
  todo = [r for r in runs if not is_finished(r["workdir"])]
  for r in runs:
    if is_finished(r["workdir"]):
      log.info("sweep: %s finished already (results.json), skipped", r["name"])
  active: list[tuple[dict, subprocess.Popen, Any, float, list[str] | None]] = []  # run, process, log, start, GPUs
  failed = []
  try:
    while todo or active:
      while todo and len(active) < parallel:
        r = todo.pop(0)
        cmd = train_command(config, r["workdir"], r["settings"], extra_args, train_script)
        group = free_groups.pop(0) if free_groups else None
        run_env = base_env if group is None else {**base_env, "CUDA_VISIBLE_DEVICES": ",".join(group)}
        log.info("sweep: start %s%s", r["name"], f" on GPU(s) {','.join(group)}" if group else "")
        proc, logf = start_run(cmd, r["workdir"], run_env)  # Ctrl-C: we send SIGTERM
        active.append((r, proc, logf, time.time(), group))
      time.sleep(poll_s)
      still = []
      for r, proc, logf, t0, group in active:
        rc = proc.poll()
        if rc is None:
          still.append((r, proc, logf, t0, group))
          continue
        logf.close()
        if group is not None:
          free_groups.append(group)
        if rc == 0 and is_finished(r["workdir"]):
          log.info("sweep: %s done in %.0fs", r["name"], time.time() - t0)
        else:
          failed.append(r["name"])
          log.error("sweep: %s failed (exit code %s); see %s", r["name"], rc,
                    os.path.join(r["workdir"], "train.log"))
      active = still
  finally:  # interrupted: stop the children (they save on SIGTERM) and wait for them
    for _, proc, logf, _, _ in active:
      proc.terminate()
    for _, proc, logf, _, _ in active:
      try:
        proc.wait(timeout=120)
      except subprocess.TimeoutExpired:
        proc.kill()
      logf.close()
  rows = report(sweepdir)
  if failed:
    log.error("sweep: %d run(s) failed: %s", len(failed), ", ".join(failed))
  return rows


def run_row(workdir: str) -> dict[str, Any]:
  """What a run's workdir says about it: ``status`` (``done``, ``pruned``, ``running/stopped`` or ``not started``),
  final / best eval loss, steps, median tokens/s and wall time (from ``results.json``, else from ``metrics.jsonl``)."""
  res = {}
  if os.path.exists(os.path.join(workdir, "results.json")):
    with open(os.path.join(workdir, "results.json")) as f:
      res = json.load(f)
  recs = read_metrics(workdir)
  evals = [x["eval_loss"] for x in recs if "eval_loss" in x]
  train = [x for x in recs if "loss" in x]
  rates = [x["tokens_per_s"] for x in train[1:] if "tokens_per_s" in x]
  status = ("pruned" if res.get("pruned") else "done") if res else ("running/stopped" if recs else "not started")
  return {
      "status": status,
      "final_eval_loss": res.get("eval_loss", evals[-1] if evals else None),
      "best_eval_loss": res.get("best_eval_loss", min(evals) if evals else None),
      "steps": res.get("step", train[-1]["step"] if train else 0),
      "tokens_per_s": res.get("tokens_per_s_median") or (float(np.median(rates)) if rates else None),
      "wall_time_s": res.get("wall_time_s", train[-1].get("elapsed_s") if train else None),
  }


def summarize(sweepdir: str) -> list[dict[str, Any]]:
  """One row per run of the sweep: its settings, then :func:`run_row` of its workdir."""
  sweepdir = os.path.abspath(sweepdir)
  meta_path = os.path.join(sweepdir, "sweep.json")
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      runs = json.load(f)["runs"]
  else:  # any directory of workdirs
    runs = [{"name": n, "workdir": os.path.join(sweepdir, n), "settings": {}} for n in sorted(os.listdir(sweepdir))
            if os.path.exists(os.path.join(sweepdir, n, "metrics.jsonl"))]
  return [{"run": r["name"], **r["settings"], **run_row(os.path.join(sweepdir, r["name"]))} for r in runs]


def best_run(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
  scored = [r for r in rows if r.get("best_eval_loss") is not None and math.isfinite(r["best_eval_loss"])]
  return min(scored, key=lambda r: r["best_eval_loss"]) if scored else None


def _fmt(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
  return str(v)


def write_summary(sweepdir: str, rows: list[dict[str, Any]], title: str, best: dict[str, Any] | None,
                  notes: list[str] = ()) -> None:
  """``summary.csv`` and ``summary.md`` (a markdown table of ``rows``, the ``best`` row named, ``notes`` below) and
  ``curves.png`` (the loss curves of the rows' workdirs ``SWEEPDIR/<run>``, the best one thick) in ``sweepdir``."""
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with open(os.path.join(sweepdir, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
  lines = [f"# {title}", "", f"{len(rows)} runs; best (lowest eval loss): **{best['run'] if best else '-'}**", "",
           "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
  lines += ["", *notes] if notes else []
  with open(os.path.join(sweepdir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  workdirs = [os.path.join(sweepdir, r["run"]) for r in rows if os.path.exists(
      os.path.join(sweepdir, r["run"], "metrics.jsonl"))]
  if workdirs:
    from tfjax.runs import plots
    plots.plot_runs(workdirs, os.path.join(sweepdir, "curves.png"),
                    highlight=os.path.join(sweepdir, best["run"]) if best else None,
                    title=f"{title} (thick: best)")


def report(sweepdir: str) -> list[dict[str, Any]]:
  """Writes ``summary.md``, ``summary.csv`` and ``curves.png`` (best run highlighted) in ``sweepdir``; returns the
  rows, best eval loss first."""
  sweepdir = os.path.abspath(sweepdir)
  rows = summarize(sweepdir)
  rows.sort(key=lambda r: (r["best_eval_loss"] is None, r["best_eval_loss"] or 0.0))
  write_summary(sweepdir, rows, f"Sweep {os.path.basename(sweepdir)}", best_run(rows))
  return rows

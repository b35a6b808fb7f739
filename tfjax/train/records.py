"""What a run records about itself and the controls around its steps: ``run_info.json``, phase timings, the compiled
step's memory, ``train.profile_steps`` and the SIGTERM flag of a preempted run."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import optax

from tfjax import config as config_lib

log = logging.getLogger("tfjax")


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
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
  import flax as flax_mod  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
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

  def total(self, *names: str) -> float:
    return sum(self.seconds.get(name, 0.0) for name in names)

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - start)

  def summary(self) -> str:
    return " | ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())


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


class Profiler:
  """``train.profile_steps = "A:B"``: a ``jax.profiler`` trace of steps A..B-1 in ``WORKDIR/profile`` (not when the
  run resumes past A)."""

  def __init__(self, spec: str, workdir: str, start_step: int):
    self.steps = parse_profile_steps(spec)
    self.directory = os.path.join(workdir, "profile")
    self.start_step = start_step

  def before_step(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.directory)

  def after_step(self, done: int, state: Any) -> None:
    if self.steps and done == self.steps[1] and self.steps[0] >= self.start_step:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      log.info("profile of steps %d-%d written to %s", self.steps[0], self.steps[1] - 1, self.directory)


class Preemption:
  """Sets ``requested`` on SIGTERM so the loop can save a checkpoint and exit cleanly (a context manager: the previous
  handler is restored on exit; off the main thread, where signals cannot be caught, it does nothing)."""

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

"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), progress lines, and model FLOPs utilisation."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per device (bfloat16 unless noted), from vendor data sheets.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12, "T4": 65e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
    "TPU v3": 123e12, "TPU v2": 46e12,
}


def measure_matmul_peak(n: int = 1024, repeats: int = 10) -> float:
  """FLOP/s of a float32 ``n x n`` matmul on the default device (used as the peak on CPUs)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best


PEAK_CACHE_FILE = "matmul_peak.json"


def peak_cache_key() -> str:
  """What a measured CPU peak depends on: the device kind and count, the host's cores, the jax/jaxlib versions and
  ``XLA_FLAGS`` (e.g. a different thread count or YNNPACK setting)."""
  import hashlib
  import jaxlib
  dev = jax.devices()[0]
  flags = hashlib.sha256(os.environ.get("XLA_FLAGS", "").encode()).hexdigest()[:12]
  return (f"{dev.platform}|{dev.device_kind}|devices={jax.device_count()}|cores={os.cpu_count()}|"
          f"jax={jax.__version__}|jaxlib={jaxlib.__version__}|xla_flags={flags}")


def cached_matmul_peak(cache_dir: str | os.PathLike) -> float:
  """:func:`measure_matmul_peak`, measured once per :func:`peak_cache_key` and kept in ``cache_dir/matmul_peak.json``.

  A training run then spends no time on it, and the MFU of runs on one machine share one reference (a peak measured
  afresh each run moves with the machine's load). Delete the file to measure again; an unreadable file is measured
  over."""
  path = os.path.join(os.fspath(cache_dir), PEAK_CACHE_FILE)
  key = peak_cache_key()
  table: dict[str, Any] = {}
  try:
    with open(path, encoding="utf-8") as f:
      table = json.load(f)
    peak = float(table[key]["flops_per_s"])
    if math.isfinite(peak) and peak > 0:
      return peak
  except (OSError, ValueError, KeyError, TypeError):
    table = table if isinstance(table, dict) else {}
  peak = measure_matmul_peak()
  table[key] = {"flops_per_s": peak, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(table, f, indent=1)
    os.replace(tmp, path)  # atomic: concurrent runs never read half a file
  except OSError as e:
    logging.getLogger("tfjax").warning("could not cache the matmul peak in %s: %s", path, e)
  return peak


def device_peak_flops(measure_cpu: bool = True, cache_dir: str | os.PathLike | None = None) -> float | None:
  """Peak FLOP/s of all devices together: the data-sheet figure for known accelerators, a measured matmul on CPU
  (measured once and kept in ``cache_dir`` when given, see :func:`cached_matmul_peak`)."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    # fake CPU devices share the same cores: the machine's peak is one matmul using all of them
    if not measure_cpu:
      return None
    return cached_matmul_peak(cache_dir) if cache_dir is not None else measure_matmul_peak()
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in dev.device_kind.lower():
      return peak * jax.device_count()
  return None


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def to_python(x: Any) -> Any:
  if isinstance(x, (np.ndarray, jax.Array)):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return x


def _import_summary_writer():
  """``tensorboardX.SummaryWriter``, imported without PyTorch: tensorboardX's writer imports torch when it is
  installed (only to accept torch tensors), which costs a training run seconds of start-up for nothing. Scalars are
  all that is written here."""
  import sys
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # makes ``import torch`` raise ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


class TensorBoardWriter:
  """Scalars to TensorBoard event files in ``logdir`` (tensorboardX; no TensorFlow). ``purge_step`` hides the events
  a resumed run repeats. A no-op, with a warning, when tensorboardX is not installed."""

  def __init__(self, logdir: str, purge_step: int | None = None):
    try:
      SummaryWriter = _import_summary_writer()
    except ImportError:
      logging.getLogger("tfjax").warning("tensorboardX is not installed: no TensorBoard event files "
                                         "(pip install tensorboardX)")
      self._writer = None
      return
    self._writer = SummaryWriter(logdir, purge_step=purge_step or None, flush_secs=10)

  def write(self, record: dict[str, Any]) -> None:
    if self._writer is None:
      return
    step = int(record["step"])
    for k, v in record.items():
      v = to_python(v)
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
        self._writer.add_scalar(k, v, step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class MetricsWriter:
  """Appends one JSON object per logged step to ``workdir/metrics.jsonl`` (only on process 0), and with
  ``tensorboard`` the same scalars to TensorBoard event files in ``workdir``."""

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = False):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0
    self.tb = TensorBoardWriter(workdir, resume_step) if tensorboard and self.enabled else None
    if self.enabled and os.path.exists(self.path):
      # A resumed run repeats the steps after its checkpoint: drop their old lines so each step appears once.
      with open(self.path) as f:
        lines = [l for l in f if l.strip()]
      keep = []
      for line in lines:
        try:
          if json.loads(line).get("step", 0) <= resume_step:
            keep.append(line)
        except json.JSONDecodeError:  # a line cut by a kill
          pass
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, self.path)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({k: to_python(v) for k, v in record.items()}) + "\n")
    if self.tb is not None:
      self.tb.write(record)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  out = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          pass
  return out

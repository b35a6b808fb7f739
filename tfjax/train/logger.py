"""The host side of the training steps: :class:`MetricsLogger` reads each step's metrics one step behind (no host sync
on the step just dispatched), raises on NaN/Inf, and every ``train.log_every`` steps writes the window's mean metrics,
tokens/s, MFU and ETA to ``metrics.jsonl`` (and TensorBoard) and the log. It also keeps the best evaluation loss and
counts the evaluations since the best ``train.patience_metric`` (early stopping)."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import jax
import numpy as np

from tfjax import config as config_lib
from tfjax.train import metrics as metrics_lib

log = logging.getLogger("tfjax")


class NonFiniteLossError(FloatingPointError):
  """The loss (or another metric) became NaN or Inf; the message names the step."""


def evaluations_since_best(values: list[float]) -> int:
  """How many evaluations came after the first one that reached the lowest of ``values`` (in order): fairseq's
  ``--patience`` counter, where a tie is no improvement. 0 for no evaluations."""
  return len(values) - 1 - int(np.argmin(values)) if values else 0


def tokens_in(batch) -> int:
  """Tokens in a batch: the size of its ``inputs`` (or of its first array)."""
  if "inputs" in batch:
    return int(np.asarray(batch["inputs"]).size)
  return int(np.asarray(next(iter(batch.values()))).size)


class MetricsLogger:
  """Metrics of a run from ``start_step`` on, written to ``workdir``'s ``metrics.jsonl`` (``train.log_every``).

  :meth:`push` hands over a dispatched step's metrics (device arrays) and reads the previous step's; :meth:`flush`
  reads the last one (before an evaluation or a checkpoint, so a NaN step never becomes the last checkpoint).
  ``pmap``: the metrics carry a leading device axis (replicated values; the first is read).
  """

  def __init__(self, workdir: str, train_config: Any, start_step: int, pmap: bool = False,
               flops_per_token: float | None = None, peak_flops: float | None = None):
    self.workdir, self.t, self.pmap = workdir, train_config, pmap
    self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
    self.writer = metrics_lib.MetricsWriter(workdir, start_step, tensorboard=train_config.get("tensorboard", True))
    self.best: dict[str, Any] = {"eval_loss": float("inf")}  # the lowest eval loss so far, resumed runs included
    self.patience_metric = train_config.get("patience_metric", "eval_loss")
    self.patience_values: list[float] = []  # the patience metric of each evaluation after step 0, resumed runs included
    for rec in metrics_lib.read_metrics(workdir):
      if "eval_loss" in rec and rec["eval_loss"] < self.best["eval_loss"]:
        self.best = {"eval_loss": rec["eval_loss"], "step": rec["step"]}
      if rec.get("step", 0) > 0 and self.patience_metric in rec:
        self.patience_values.append(rec[self.patience_metric])
    self.start_step = start_step
    self.rates: list[float] = []  # tokens/s of each logged window after the first (which includes compilation)
    self.skipped = 0  # steps skipped by train.skip_nonfinite
    self.last_record: dict[str, Any] = {}
    self._pending: tuple[int, Any, int] | None = None
    self._window: list[dict[str, Any]] = []
    self._tokens = 0
    self.run_start = self._last_time = time.perf_counter()
    self._last_step = start_step

  @property
  def mfu_on(self) -> bool:
    return bool(self.flops_per_token and self.peak_flops)

  def push(self, step: int, metrics: Any, tokens: int) -> None:
    """Step ``step`` (0-based) was dispatched with ``tokens`` tokens of the global batch: read the previous step's
    metrics while this one runs (at most two steps in flight: on CPU, ~100 queued data-parallel steps make XLA's
    all-reduce rendezvous time out)."""
    self.flush()
    self._pending = (step, metrics, tokens)

  def flush(self) -> None:
    """Reads the metrics of the step pushed last, if not read yet."""
    if self._pending is not None:
      pending, self._pending = self._pending, None
      self._consume(*pending)

  def _consume(self, step: int, metrics: Any, tokens: int) -> None:
    m = jax.device_get(metrics)
    if self.pmap:
      m = jax.tree.map(lambda x: np.asarray(x)[0], m)
    self.skipped += int(m.get("skipped", 0))
    for k, v in m.items():
      if not np.all(np.isfinite(v)) and not (self.t.skip_nonfinite and k in ("loss", "grad_norm")):
        raise NonFiniteLossError(f"non-finite {k} = {float(v)} at step {step + 1}; the last good checkpoint is kept "
                                 f"in {self.workdir}/checkpoints. Lower the learning rate or enable "
                                 "--config.train.skip_nonfinite=True.")
    self._window.append(m)
    self._tokens += tokens
    done = step + 1
    if done % self.t.log_every == 0 or done == self.t.num_steps:
      self._log(done)

  def _log(self, done: int) -> None:
    now = time.perf_counter()
    dt = now - self._last_time
    steps = max(done - self._last_step, 1)
    tokens_per_s = self._tokens / dt
    if self._last_step > self.start_step:  # the first interval includes compilation
      self.rates.append(tokens_per_s)
    eta = (self.t.num_steps - done) * dt / steps
    rec = {"step": done, **{k: float(np.mean([w[k] for w in self._window])) for k in self._window[0]},
           "tokens_per_s": tokens_per_s, "step_time_s": dt / steps, "elapsed_s": now - self.run_start}
    rec.pop("targets", None)
    if self.mfu_on:
      rec["mfu"] = tokens_per_s * self.flops_per_token / self.peak_flops
    if self.t.skip_nonfinite:
      rec["skipped_total"] = self.skipped
    self.writer.write(rec)
    self.last_record = rec
    mfu = f" | MFU {rec['mfu']:.1%}" if "mfu" in rec else ""
    log.info("step %d/%d | loss %.4f | lr %.2e | %s tok/s%s | ETA %s", done, self.t.num_steps, rec["loss"], rec["lr"],
             f"{tokens_per_s:,.0f}", mfu, metrics_lib.format_duration(eta))
    self._window.clear()
    self._last_time, self._last_step, self._tokens = now, done, 0

  def write_eval(self, step: int, ev: dict[str, float], initial: bool = False) -> bool:
    """Writes an evaluation after ``step`` steps; True when its loss is the lowest so far. ``initial``: the loss
    before training, where the curve starts (not a candidate for the best)."""
    self.writer.write({"step": step, **ev})
    log.info("step %d | %s", step, " | ".join(f"{k} {v:.4f}" for k, v in ev.items()))
    if initial:
      return False
    self.last_record.update(ev)
    if self.t.get("patience", 0):
      if self.patience_metric not in ev:
        raise config_lib.ConfigError(f"config key 'train.patience_metric' names {self.patience_metric!r}, which the "
                                     f"evaluations do not report (they report {sorted(ev)}); the checkpoints in "
                                     f"{self.workdir} are kept")
      self.patience_values.append(ev[self.patience_metric])
    return self.note_eval(step, ev)

  def out_of_patience(self) -> bool:
    """Early stopping is due: ``train.patience`` evaluations in a row without a new lowest ``train.patience_metric``."""
    patience = self.t.get("patience", 0)
    return bool(patience) and evaluations_since_best(self.patience_values) >= patience

  def note_eval(self, step: int, ev: dict[str, float]) -> bool:
    """Keeps ``ev`` as the best if its loss is the lowest so far (True then)."""
    if ev["eval_loss"] < self.best["eval_loss"]:
      self.best = {"eval_loss": ev["eval_loss"], "step": step}
      return True
    return False

  def summary(self) -> dict[str, Any]:
    """The run's training figures for ``results.json``."""
    return {"train_loss": self.last_record.get("loss"), "best_eval_loss": self.best.get("eval_loss"),
            "best_eval_step": self.best.get("step"),
            "tokens_per_s_median": statistics.median(self.rates) if self.rates else None,
            "wall_time_s": time.perf_counter() - self.run_start}

  def close(self) -> None:
    self.writer.close()

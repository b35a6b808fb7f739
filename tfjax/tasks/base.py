"""The contract between a task (model + data + loss + evaluation) and the training loop.

The loop in :mod:`tfjax.train.loop` never imports a model: it sees only a :class:`Task`. Every model family (GPT, BERT,
encoder-decoder) binds itself to the loop by implementing these methods.

Losses are returned as *sums with a weight* (e.g. summed token cross-entropy and the number of target tokens), not as
means. The train step divides by the weight summed over the *global* batch, so the loss and its gradients are the same
whether the batch is on one device, split by ``pmap`` or sharded by ``jit``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol

import jax
import numpy as np

Batch = Mapping[str, np.ndarray]
Params = Any


class Task(Protocol):
  """What the training loop needs from an experiment."""

  def init_params(self, rng: jax.Array) -> Params:
    """Returns freshly initialised float32 parameters (called under ``jax.jit``/``jax.eval_shape``)."""

  def loss_fn(self, params: Params, batch: Batch, rng: jax.Array | None, train: bool
              ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns ``(loss_sum, weight, metric_sums)`` on a (local) batch.

    ``loss_sum`` is the summed loss over the batch's targets, ``weight`` the number of targets (both scalars);
    ``metric_sums`` are other sums normalised by the same weight (e.g. number of correct predictions).
    ``rng`` is the dropout key (``None`` when ``train`` is False). Must be pure and traceable.
    """

  def train_batch(self, step: int, shard: int = 0, num_shards: int = 1) -> Batch:
    """Rows ``shard::num_shards``-block ``shard`` of the global training batch at ``step``.

    The global batch is a pure function of (seed, step), so a resumed run sees the same data; with ``num_shards`` > 1
    (one per process in a multi-host run) each process builds only its contiguous block of ``batch_size //
    num_shards`` rows, and the blocks concatenated in order are the global batch.
    """

  def eval_batches(self, shard: int = 0, num_shards: int = 1) -> Iterable[Batch]:
    """Evaluation batches (this process's block of rows, as in :meth:`train_batch`), the same on every call."""

  def final_report(self, params: Params) -> dict[str, Any]:
    """Extra results for ``results.json`` at the end of training (e.g. generated samples). May return ``{}``."""

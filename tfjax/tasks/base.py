"""The contract between a task (model + data + loss + evaluation) and the training loop.

The loop in :mod:`tfjax.train.loop` never imports a model: it sees only a :class:`Task`. Every model family (GPT, BERT,
encoder-decoder, the word2vec ladder's context models) binds itself to the loop by implementing these methods.

Required: :meth:`Task.init_params`, :meth:`Task.loss_fn`, :meth:`Task.train_batch`, :meth:`Task.eval_batches`.
Optional (the loop uses :class:`TaskDefaults`' when a task lacks them; a task may inherit it):
``fixed_batch_shape``, :meth:`~TaskDefaults.flops_per_token`, :meth:`~TaskDefaults.eval_report`,
:meth:`~TaskDefaults.final_report`. :func:`check_task` names what a task lacks.

Losses are returned as *sums with a weight* (e.g. summed token cross-entropy and the number of target tokens), not as
means. The train step divides by the weight summed over the *global* batch, so the loss and its gradients are the same
whether the batch is on one device, split by ``pmap`` or sharded by ``jit``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import jax
import numpy as np

Batch = Mapping[str, np.ndarray]
Params = Any


@runtime_checkable
class Task(Protocol):
  """What the training loop needs from an experiment (the required part; see :class:`TaskDefaults` for the rest)."""

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
    num_shards`` rows, and the blocks concatenated in order are the global batch. Arrays ``[B_local, ...]``; the loop
    counts the tokens of a batch as the size of its ``inputs`` (else of its first array).
    """

  def eval_batches(self, shard: int = 0, num_shards: int = 1) -> Iterable[Batch]:
    """Evaluation batches (this process's block of rows, as in :meth:`train_batch`), the same on every call."""


class TaskDefaults:
  """The optional part of the protocol, with the defaults the loop uses when a task does not define them."""

  #: Every training batch has the same shapes: the loop runs the step it compiled ahead of time. False (e.g. the
  #: translator's length buckets): ``jax.jit`` compiles one step per batch shape it meets.
  fixed_batch_shape: bool = True

  def flops_per_token(self, params: Params) -> float | None:  # pylint: disable=unused-argument
    """Training FLOPs per token (forward + backward) for the MFU in the logs; None: no MFU."""
    return None

  def eval_report(self, params: Params) -> dict[str, float]:  # pylint: disable=unused-argument
    """Extra evaluation figures at each evaluation, beside the loss (e.g. the translator's BLEU); run on one process
    only, so single-process runs only."""
    return {}

  def final_report(self, params: Params, step: int | None = None) -> dict[str, Any]:  # pylint: disable=unused-argument
    """Extra results for ``results.json`` at the end of training (e.g. generated samples), on process 0 with host
    copies of the parameters. ``step``: the step those parameters are from (below ``train.num_steps`` when the run
    stopped early); the loop passes it to a ``final_report`` that takes it."""
    return {}


OPTIONAL = ("fixed_batch_shape", "flops_per_token", "eval_report", "final_report")


def optional(task: Any, name: str) -> Any:
  """``task``'s own ``name`` (one of :data:`OPTIONAL`), else :class:`TaskDefaults`' (bound to ``task``)."""
  if name not in OPTIONAL:
    raise AttributeError(f"{name!r} is not an optional Task member; those are {OPTIONAL}")
  if hasattr(task, name):
    return getattr(task, name)
  default = getattr(TaskDefaults, name)
  return default.__get__(task) if callable(default) else default


def check_task(task: Any) -> None:
  """Raises TypeError naming the required :class:`Task` methods ``task`` lacks."""
  missing = [name for name in ("init_params", "loss_fn", "train_batch", "eval_batches")
             if not callable(getattr(task, name, None))]
  if missing:
    raise TypeError(f"{type(task).__name__} is not a tfjax Task: it lacks {', '.join(missing)} "
                    "(see tfjax.tasks.base.Task)")

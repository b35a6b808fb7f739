"""Optimizers and learning-rate schedules from ``config.optimizer`` (optax throughout).

``chain(clip_by_global_norm, inject_hyperparams(adamw))``: the learning rate and weight decay live in the optimizer
state (``inject_hyperparams``), so runs of a sweep that differ only in them share one code path. Weight decay applies
to matrices and embeddings (``ndim >= 2``), not to biases and norm scales, as in nanoGPT.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax


def make_schedule(o: Any, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``o.lr`` over ``o.warmup_steps``, then cosine / linear decay to ``o.min_lr`` at
  ``o.decay_steps`` (None or 0: ``num_steps``), constant, or ``inverse_sqrt`` (:func:`inverse_sqrt_schedule`)."""
  decay_steps = o.decay_steps or num_steps
  if o.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)],
                                [o.warmup_steps]) if o.warmup_steps else optax.constant_schedule(o.lr)
  if o.schedule == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, o.warmup_steps),
         optax.linear_schedule(o.lr, o.min_lr, max(decay_steps - o.warmup_steps, 1))], [o.warmup_steps])
  if o.schedule == "inverse_sqrt":
    return inverse_sqrt_schedule(o.lr, o.warmup_steps)
  return optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(decay_steps, o.warmup_steps + 1),
                                            end_value=o.min_lr)


def inverse_sqrt_schedule(peak_lr: float, warmup_steps: int) -> optax.Schedule:
  """The Transformer's (and fairseq's ``inverse_sqrt``) schedule: linear warmup from 0 to ``peak_lr`` over
  ``warmup_steps``, then ``peak_lr * sqrt(warmup_steps / step)`` with no end. ``warmup_steps=0``: ``peak_lr /
  sqrt(max(step, 1))``."""
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  warmup = float(max(warmup_steps, 1))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay = peak_lr * jnp.sqrt(warmup / jnp.maximum(step, warmup))
    return jnp.where(step < warmup_steps, peak_lr * step / warmup, decay)

  return schedule


def decay_mask(params):
  """True for the leaves weight decay applies to: matrices and embeddings (``ndim >= 2``), not biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


# inject_hyperparams takes every callable argument for a schedule of the step count: the mask must be static, or it is
# called with the count (a scalar, ndim 0) and masks weight decay off everywhere (issue 20: no decay at all)
_with_mask = functools.partial(optax.inject_hyperparams, static_args=("mask",))


def make_optimizer(o: Any, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer described by ``config.optimizer`` and its learning-rate schedule."""
  schedule = make_schedule(o, num_steps)
  if o.name == "adamw":
    opt = _with_mask(optax.adamw)(learning_rate=schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                                  weight_decay=o.weight_decay, mask=decay_mask)
  elif o.name == "adam":
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=schedule, b1=o.b1, b2=o.b2, eps=o.eps)
  elif o.name == "lion":
    opt = _with_mask(optax.lion)(learning_rate=schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                                 mask=decay_mask)
  elif o.name == "adafactor":
    opt = optax.inject_hyperparams(optax.adafactor)(learning_rate=schedule)
  else:
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule, momentum=o.b1 or None)
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  return optax.chain(*parts, opt), schedule

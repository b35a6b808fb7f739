"""The train step and the eval step: one function each, used by every parallel mode.

The step computes summed losses and gradients over (micro-)batches and divides by the number of targets of the
*global* batch. Under ``jax.jit`` with sharded inputs the sums are global already; under ``pmap`` or ``shard_map``
(``axis_name`` given) they are summed across devices with one ``lax.psum``. Either way the update equals the
single-device one.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: step, params, optimizer state and the base RNG key data (uint32)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def init_state(task, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A fresh TrainState (params unboxed from their logical-axis metadata). Jit it with ``out_shardings``."""
  key = jax.random.key(seed)
  init_key, train_key = jax.random.split(key)
  params = nn.unbox(task.init_params(init_key))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(train_key))


def psum_flat(tree, axis_name: str):
  """``lax.psum`` of a whole pytree as one flat buffer: one cross-device reduction instead of one per leaf (on CPU
  each reduced buffer costs a rendezvous of the devices' threads; the step's ~50 gradient leaves cost ~7 ms)."""
  flat, unravel = ravel_pytree(tree)
  return unravel(jax.lax.psum(flat, axis_name))


def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def make_train_step(task, tx: optax.GradientTransformation, schedule: Callable, accum_steps: int = 1,
                    axis_name: str | None = None, skip_nonfinite: bool = False):
  """``train_step(state, batch) -> (state, metrics)``.

  ``accum_steps`` > 1 splits the batch into micro-batches (rows ``i::accum_steps``) whose gradients are summed in a
  ``lax.scan`` before one update: the same update as the whole batch at a fraction of the activation memory.
  With ``skip_nonfinite``, a step whose loss or gradients are not finite leaves params and optimizer state unchanged
  (``metrics['skipped'] = 1``).
  """

  def grads_of(params, micro, rng):
    def f(p):
      loss_sum, weight, sums = task.loss_fn(p, micro, rng, True)
      return loss_sum, (weight, sums)
    (loss_sum, (weight, sums)), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss_sum, weight, sums, grads

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    if accum_steps == 1:
      out = grads_of(state.params, batch, rng)
    else:
      micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, accum_steps, *x.shape[1:]), 0, 1), batch)
      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grads_of, state.params, first, rng))

      def body(acc, xs):
        i, mb = xs
        return _tree_add(acc, grads_of(state.params, mb, jax.random.fold_in(rng, i))), None

      out, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    loss_sum, weight, sums, grads = out
    if axis_name is not None:
      loss_sum, weight, sums, grads = psum_flat((loss_sum, weight, sums, grads), axis_name)
    grads = jax.tree.map(lambda g: g / weight, grads)
    loss = loss_sum / weight
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), "targets": weight,
               **{k: v / weight for k, v in sums.items()}}
    if skip_nonfinite:
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      params = jax.tree.map(lambda new, old: jnp.where(ok, new, old), params, state.params)
      opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), opt_state, state.opt_state)
      metrics["skipped"] = (~ok).astype(jnp.int32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(task):
  """``eval_step(params, batch) -> (loss_sum, weight, metric_sums)`` (sums; the caller divides)."""

  def eval_step(params, batch):
    return task.loss_fn(params, batch, None, False)

  return eval_step

"""The unembedding and its softmax cross-entropy fused, a chunk of positions at a time: the loss of a language model
without its ``[B, T, V]`` logits.

``unembed_cross_entropy(x [B, T, D], w [D, V], targets [B, T])`` is ``sum(weights · CE(softmax(x @ w + bias),
targets))`` and the (weighted) number of positions whose argmax is the target, exactly what the logits would give.
The logits are made ``chunk_size`` positions of every row at a time (``[B, chunk_size, V]``, float32), and each
chunk's gradients are computed at once, in the forward pass (the loss is a sum, so its gradient is the chunks'
gradients times one scalar): nothing of size ``V`` outlives its chunk, and no matmul is recomputed. What stays for
the backward pass is ``dx [B, T, D]``, ``dw [D, V]`` and the per-position losses. For GPT-2 small (V = 50,257) a
micro-batch of 32 × 1,024 tokens has 6.6 GB of float32 logits, and as much again of their cotangent; in chunks of
128 positions, 0.8 GB at a time.

Precision is the unfused unembedding's (:func:`tfjax.layers.linear.dot_out`): the matmuls take ``x``'s dtype (``w``
is cast to it), the logits are accumulated and kept in float32, the logits' cotangent ``softmax - onehot`` is
rounded to ``x``'s dtype before its two matmuls, and ``dw`` is accumulated in float32 over the chunks.

The price is ``dw``'s accumulation: every chunk adds a ``[D, V]`` float32 matrix, so chunks should hold hundreds of
tokens or more (on 2 CPU cores, 4 × 256 tokens against GPT-2's vocabulary: chunks of 32 positions cost 1.05x the
whole logits, of 8 positions 2x).

Chunks run in a ``lax.scan`` over the sequence axis, so a batch sharded over its rows stays sharded (every device
computes its own rows' chunks; ``dw``'s cross-device sum is XLA's to place).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tfjax.layers.linear import Precision


def unembed_cross_entropy(x: jnp.ndarray, w: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None,
                          bias: jnp.ndarray | None = None, *, chunk_size: int = 128,
                          precision: Precision = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(loss, correct)``: float32 scalars, the summed (weighted) cross-entropy of ``x @ w + bias`` against
  ``targets`` and the summed (weighted) count of positions whose argmax is the target.

  Args:
    x: the final residual stream (after the final norm) ``[B, T, D]``, in the compute dtype.
    w: the unembedding ``[D, V]`` (the tied embedding's transpose, ``table.T``), any dtype: cast to ``x.dtype``.
    targets: integer ids ``[B, T]`` in ``[0, V)``.
    weights: ``[B, T]`` per-position weights (e.g. 0 at padding); None: every position counts 1.
    bias: ``[V]`` or None.
    chunk_size: positions of every row whose logits exist at once (a last, shorter chunk takes the rest).
    precision: of the matmuls (see :func:`tfjax.layers.linear.dot_out`).

  Differentiable in ``x``, ``w``, ``bias`` and ``weights`` (reverse mode).
  """
  if x.ndim != 3 or targets.shape != x.shape[:2]:
    raise ValueError(f"unembed_cross_entropy: x must be [B, T, D] and targets [B, T]; got x {x.shape}, "
                     f"targets {targets.shape}")
  if w.ndim != 2 or w.shape[0] != x.shape[-1]:
    raise ValueError(f"unembed_cross_entropy: w must be [D, V] with D = {x.shape[-1]}; got {w.shape}")
  if chunk_size < 1:
    raise ValueError(f"unembed_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  elif weights.shape != targets.shape:
    raise ValueError(f"unembed_cross_entropy: weights must be [B, T] = {targets.shape}; got {weights.shape}")
  has_bias = bias is not None
  if not has_bias:
    bias = jnp.zeros((w.shape[1],), jnp.float32)
  loss, correct = _fused(x, w, bias, targets.astype(jnp.int32), weights.astype(jnp.float32), min(chunk_size, x.shape[1]),
                         precision, has_bias)
  return loss, jax.lax.stop_gradient(correct)


def _chunk(x_c, w_c, bias, t_c, wt_c, precision, has_bias):
  """One chunk ``x_c [B, C, D]``: its summed loss and correct count, per-position losses ``[B, C]``, and the
  gradients of the summed loss: ``dx_c [B, C, D]`` (x's dtype), ``dw [D, V]`` and ``db [V]`` (float32)."""
  b, c, d = x_c.shape
  flat = x_c.reshape(b * c, d)  # one 2-D matmul (see tfjax.layers.linear)
  logits = jnp.dot(flat, w_c, preferred_element_type=jnp.float32, precision=precision)
  if has_bias:
    logits = logits + bias.astype(jnp.float32)
  t, wt = t_c.reshape(-1), wt_c.reshape(-1)
  top = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.exp(logits - top)  # one exp of the logits, for the loss and for the softmax
  total = jnp.sum(e, axis=-1, keepdims=True)
  ce = (jnp.log(total) + top)[:, 0] - jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
  correct = jnp.sum(jnp.where(jnp.argmax(logits, axis=-1) == t, wt, 0.0))
  # d(sum wt·ce)/d logits = wt · (softmax - onehot), rounded to the compute dtype as dot_out's cotangent
  g = (e / total - jax.nn.one_hot(t, logits.shape[-1], dtype=jnp.float32)) * wt[:, None]
  g = g.astype(x_c.dtype)
  # contracting V with w [D, V] and N with flat [N, D] as they lie (no transposed copies; JAX's own backward rule)
  dx = jax.lax.dot_general(g, w_c, (((1,), (1,)), ((), ())), precision=precision).reshape(b, c, d)
  dw = jax.lax.dot_general(flat, g, (((0,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)
  db = jnp.sum(g, axis=0, dtype=jnp.float32)
  return jnp.sum(wt * ce), correct, ce.reshape(b, c), dx, dw, db


def _forward(x, w, bias, targets, weights, chunk_size, precision, has_bias):
  """The chunks in a scan over the sequence axis (and a last, shorter one): totals, per-position losses and grads."""
  w_c = w.astype(x.dtype)
  run = functools.partial(_chunk, w_c=w_c, bias=bias, precision=precision, has_bias=has_bias)
  b, t, d = x.shape
  n_full = t // chunk_size
  split = n_full * chunk_size

  def body(carry, xs):
    loss, correct, dw, db = carry
    x_c, t_c, wt_c = xs
    l_c, k_c, ce_c, dx_c, dw_c, db_c = run(x_c, t_c=t_c, wt_c=wt_c)
    return (loss + l_c, correct + k_c, dw + dw_c, db + db_c), (ce_c, dx_c)

  def chunks(a):  # [B, n_full * C, ...] -> [n_full, B, C, ...]
    a = a[:, :split].reshape(b, n_full, chunk_size, *a.shape[2:])
    return jnp.moveaxis(a, 1, 0)

  def unchunk(a):  # [n_full, B, C, ...] -> [B, n_full * C, ...]
    return jnp.moveaxis(a, 0, 1).reshape(b, split, *a.shape[3:])

  zero = jnp.zeros((), jnp.float32)
  carry = (zero, zero, jnp.zeros(w.shape, jnp.float32), jnp.zeros(bias.shape, jnp.float32))
  carry, (ce, dx) = jax.lax.scan(body, carry, (chunks(x), chunks(targets), chunks(weights)))
  ce, dx = unchunk(ce), unchunk(dx)
  if split < t:  # the rest of the positions, one shorter chunk
    l_c, k_c, ce_c, dx_c, dw_c, db_c = run(x[:, split:], t_c=targets[:, split:], wt_c=weights[:, split:])
    carry = (carry[0] + l_c, carry[1] + k_c, carry[2] + dw_c, carry[3] + db_c)
    ce, dx = jnp.concatenate([ce, ce_c], axis=1), jnp.concatenate([dx, dx_c], axis=1)
  loss, correct, dw, db = carry
  return loss, correct, ce, dx, dw, db


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _fused(x, w, bias, targets, weights, chunk_size, precision, has_bias):
  loss, correct, *_ = _forward(x, w, bias, targets, weights, chunk_size, precision, has_bias)
  return loss, correct


def _fused_fwd(x, w, bias, targets, weights, chunk_size, precision, has_bias):
  loss, correct, ce, dx, dw, db = _forward(x, w, bias, targets, weights, chunk_size, precision, has_bias)
  return (loss, correct), (ce, dx, dw.astype(w.dtype), db.astype(bias.dtype))


def _fused_bwd(chunk_size, precision, has_bias, residuals, cotangents):
  ce, dx, dw, db = residuals
  g, _ = cotangents  # the count of correct positions is not differentiable (stopped by the caller)
  # None: the integer targets have no cotangent
  return ((g * dx.astype(jnp.float32)).astype(dx.dtype), (g * dw).astype(dw.dtype), (g * db).astype(db.dtype),
          None, g * ce)


_fused.defvjp(_fused_fwd, _fused_bwd)

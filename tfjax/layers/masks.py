"""Attention masks as explicit boolean arrays.

Convention everywhere in tfjax: ``True`` means *the query may attend to this key*. Masks broadcast to
``[batch, heads, q_len, kv_len]`` (``mask_BxHxQxK``); leading axes of size 1 broadcast. Masks are always passed in
by the caller, never inferred from the data.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
  """numpy when every array is a numpy array (a mask known when tracing stays static), else jax.numpy."""
  return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def causal_mask(q_len: int, kv_len: int | None = None, offset=0) -> jnp.ndarray:
  """The causal mask ``[1, 1, q_len, kv_len]``: query ``i`` (at absolute position ``offset + i``) sees keys ``<= i``.

  With ``offset`` > 0 the queries are the last ``q_len`` positions of a longer sequence (as in decoding with a cache).
  """
  kv_len = q_len if kv_len is None else kv_len
  if q_len < 0 or kv_len < 0:
    raise ValueError(f"causal_mask: lengths must be >= 0, got q_len={q_len}, kv_len={kv_len}")
  return causal_mask_at(offset + jnp.arange(q_len)[None, :], kv_len)


def causal_mask_at(positions: jnp.ndarray, kv_len: int) -> jnp.ndarray:
  """The causal mask ``[B, 1, T, kv_len]`` for queries at absolute ``positions [B, T]``: key ``j`` is visible to a
  query at position ``p`` iff ``j <= p`` (keys are the positions ``0 .. kv_len-1``, e.g. the slots of a KV cache).

  Positions given as a numpy array (known when tracing, as in training) give a numpy mask, which attention can use to
  skip key blocks no query of a block may see (see :func:`tfjax.layers.attention.dot_product_attention`); if every
  row of such ``positions`` is the same, the mask is ``[1, 1, T, kv_len]``.
  """
  xp = _xp(positions)
  if xp is np and positions.shape[0] > 1 and (positions == positions[:1]).all():
    positions = positions[:1]
  return xp.arange(kv_len)[None, None, None, :] <= positions[:, None, :, None]


def padding_mask(q_valid: jnp.ndarray, kv_valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """The padding mask ``[B, 1, Q, K]`` from per-token validity ``q_valid [B, Q]`` and ``kv_valid [B, K]`` (bool).

  A pair (query, key) is allowed when both tokens are real (not padding). ``kv_valid`` defaults to ``q_valid``
  (self-attention). Rows of padding queries are fully masked; attention returns zeros there.
  """
  kv_valid = q_valid if kv_valid is None else kv_valid
  return _xp(q_valid, kv_valid).logical_and(q_valid[:, None, :, None], kv_valid[:, None, None, :])


def combine_masks(*masks: jnp.ndarray | None) -> jnp.ndarray | None:
  """Logical AND of the given masks (``None`` entries are ignored), broadcasting their shapes."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  xp = _xp(*masks)
  out = masks[0].astype(bool)
  for m in masks[1:]:
    out = xp.logical_and(out, m)
  return out


def check_mask(mask: jnp.ndarray, batch: int, heads: int, q_len: int, kv_len: int) -> None:
  """Raises a ValueError naming the mask when it cannot broadcast to ``[batch, heads, q_len, kv_len]``."""
  if mask.ndim != 4:
    raise ValueError(f"attention mask must have 4 axes [batch, heads, q_len, kv_len], got shape {mask.shape}")
  for size, want, name in zip(mask.shape, (batch, heads, q_len, kv_len), ("batch", "heads", "q_len", "kv_len")):
    if size not in (1, want):
      raise ValueError(f"attention mask of shape {mask.shape} does not broadcast to "
                       f"[batch={batch}, heads={heads}, q_len={q_len}, kv_len={kv_len}]: axis '{name}' is {size}")
  if mask.dtype != jnp.bool_:
    raise ValueError(f"attention mask must be boolean (True = may attend), got dtype {mask.dtype}")

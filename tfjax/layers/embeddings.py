"""Token embeddings, the unembedding to vocabulary logits, and positional encodings.

- :class:`TokenEmbedding`: lookup ``ids [B, T] -> x [B, T, D]`` and its transpose ``unembed(x) -> logits [B, T, V]``
  (the tied unembedding: logits are dot products with every token's embedding).
- :class:`Unembed`: a separate (untied) unembedding matrix ``[D, V]``.
- :class:`LearnedPositionalEmbedding`: a trained table ``[max_len, D]``.
- :func:`sinusoidal_positions`: the fixed sin/cos encoding of "Attention Is All You Need".
- :func:`apply_rope`: rotary position embedding, applied to queries and keys inside attention.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.layers.linear import Dense, Precision, dot_out

Dtype = Any


def check_token_ids(ids, vocab_size: int) -> None:
  """Raises ValueError when a token id is outside ``[0, vocab_size)`` (run on the host: inside ``jit`` an
  out-of-range lookup silently yields NaN or wraps around)."""
  ids = np.asarray(ids)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    raise ValueError(f"token id {int(bad.flat[0])} is out of range for a vocabulary of {vocab_size} "
                     f"(ids must be in [0, {vocab_size}); {bad.size} ids out of range)")


def embed_init(stddev: float = 0.02):
  return nn.initializers.normal(stddev=stddev)


def lookup(table: jnp.ndarray, ids: jnp.ndarray, dtype: Dtype) -> jnp.ndarray:
  """Rows ``table[ids]`` (``[V, D]``, ``[...]`` -> ``[..., D]``) in ``dtype``, gathered before the cast.

  Gathering from the table in its own dtype (float32) and casting the rows keeps the backward pass, a scatter-add of
  every position's gradient into its row, in float32: a bfloat16 scatter-add rounds each sum to 8 bits (4,096 adds of 1
  stop at 256) and on an H100 took 31 ms of a 40 ms 6/6/384 step (its atomics), against ~0.3 ms in float32.
  """
  return jnp.take(table, ids, axis=0).astype(dtype)


class TokenEmbedding(nn.Module):
  """Embedding lookup ``ids [B, T] (int) -> [B, T, D]``; :meth:`unembed` maps ``[B, T, D] -> logits [B, T, V]``.

  The table is ``embedding [V, D]`` in ``param_dtype``; lookups and the unembedding's matmul are computed in
  ``dtype``, its products accumulated and returned in ``logits_dtype`` (float32 by default). Looked-up rows
  are multiplied by ``scale`` (√D in "Attention Is All You Need", so that tokens are not drowned by sinusoidal
  positions of amplitude 1); the unembedding uses the table unscaled.
  """
  vocab_size: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  stddev: float = 0.02
  precision: Precision = None  # of the unembedding matmul
  scale: float = 1.0
  logits_dtype: Dtype = jnp.float32  # float32: never rounded; the compute dtype: rounded as autocast's logits

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(embed_init(self.stddev), ("vocab", "embed")),
        (self.vocab_size, self.features), self.param_dtype)

  def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
    if not isinstance(ids, jax.core.Tracer):
      check_token_ids(ids, self.vocab_size)
    rows = lookup(self.embedding, ids, self.dtype)
    return rows if self.scale == 1.0 else rows * jnp.asarray(self.scale, rows.dtype)

  def unembed(self, x: jnp.ndarray) -> jnp.ndarray:
    """Logits ``[..., V]`` (``logits_dtype``) of ``x [..., D]`` against every token's embedding (the tied
    unembedding)."""
    flat = x.reshape(-1, x.shape[-1]).astype(self.dtype)  # one 2-D matmul (see tfjax.layers.linear)
    # inputs in the compute dtype, products accumulated and returned in logits_dtype (float32: logits never rounded
    # to bf16); the backward matmuls run in the compute dtype (see dot_out)
    logits = dot_out(flat, jnp.asarray(self.embedding, self.dtype).T, self.logits_dtype, self.precision)
    return logits.reshape(*x.shape[:-1], self.vocab_size)


class Unembed(nn.Module):
  """Untied unembedding: ``x [..., D] -> logits [..., V]`` (``logits_dtype``) with its own matrix ``kernel [D, V]``."""
  vocab_size: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Precision = None
  logits_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return Dense(self.vocab_size, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                 axes=("embed", "vocab"), out_dtype=self.logits_dtype, precision=self.precision, name="kernel_dense")(x)


class LearnedPositionalEmbedding(nn.Module):
  """A trained position table ``embedding [max_len, D]``: ``positions [B, T] (int) -> [B, T, D]``."""
  max_len: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  stddev: float = 0.02

  @nn.compact
  def __call__(self, positions: jnp.ndarray) -> jnp.ndarray:
    table = self.param("embedding", nn.with_logical_partitioning(embed_init(self.stddev), (None, "embed")),
                       (self.max_len, self.features), self.param_dtype)
    return lookup(table, positions, self.dtype)


def sinusoidal_positions(positions: jnp.ndarray, features: int, max_timescale: float = 10_000.0,
                         dtype: Dtype = jnp.float32) -> jnp.ndarray:
  """Sinusoidal encoding ``[..., D]`` of integer ``positions [...]``, as in "Attention Is All You Need".

  ``PE[p, 2i] = sin(p / max_timescale^(2i/D))`` and ``PE[p, 2i+1] = cos(p / max_timescale^(2i/D))``.
  """
  if features % 2:
    raise ValueError(f"sinusoidal positions need an even width, got {features}")
  i = jnp.arange(features // 2, dtype=jnp.float32)
  inv_freq = max_timescale ** (-2.0 * i / features)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, features)
  return pe.astype(dtype)


def sinusoidal_table(num_positions: int, features: int, max_timescale: float = 10_000.0,
                     layout: str = "interleaved") -> np.ndarray:
  """The sinusoidal encodings of positions ``0 .. num_positions-1`` as a float32 table ``[num_positions, D]``,
  computed in float64 on the host. ``layout="interleaved"``: as :func:`sinusoidal_positions` (sin, cos pairs);
  ``"halves"``: the ``D/2`` sines then the ``D/2`` cosines of the same frequencies (Marian's layout, Hugging Face
  ``MarianSinusoidalPositionalEmbedding``)."""
  if features % 2:
    raise ValueError(f"sinusoidal positions need an even width, got {features}")
  if layout not in ("interleaved", "halves"):
    raise ValueError(f"layout must be 'interleaved' or 'halves', got {layout!r}")
  i = np.arange(features // 2, dtype=np.float64)
  angles = np.arange(num_positions, dtype=np.float64)[:, None] / np.power(max_timescale, 2.0 * i / features)
  if layout == "halves":
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
  else:
    table = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(num_positions, features)
  return table.astype(np.float32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, base: float = 10_000.0) -> jnp.ndarray:
  """Rotary position embedding of ``x [B, T, H, Dh]`` at integer ``positions [B, T]``.

  Channel pairs ``(j, j + Dh/2)`` are rotated by angle ``position * base^(-2j/Dh)``, so the dot product of a rotated
  query and key depends only on their offset. Computed in float32, returned in ``x.dtype``. When ``positions`` is a
  numpy array (static positions, as in training), the sin/cos tables are computed once on the host and enter the
  program as constants; otherwise XLA:CPU fuses sin/cos into the rotation and evaluates them once per head.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
  half = head_dim // 2
  inv_freq = (base ** (-np.arange(half, dtype=np.float64) * 2.0 / head_dim)).astype(np.float32)
  xp = np if isinstance(positions, np.ndarray) else jnp  # numpy: host-side constant tables
  if xp is np and positions.ndim == 2 and (positions == positions[:1]).all():
    positions = positions[:1]  # the same positions in every row: one [1, T] table
  angles = positions.astype(np.float32)[..., None, None] * inv_freq  # [B, T, 1, half]
  sin, cos = xp.sin(angles), xp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)

"""From word2vec's average to attention: four context models that predict a centre word from its window.

The first study note derives attention from CBOW. CBOW takes the *uniform average* of the context words' input
vectors, multiplies it by the output matrix (``unembed``) to get one logit per vocabulary word, and a softmax gives
the probability of the centre word. Each rung below changes only how the ``C = 2 * window`` context vectors
``e_BxCxD`` are combined into one hidden vector ``hidden_BxD``; the input table, the output table and the loss
(full softmax over the vocabulary) are the same for all of them (:class:`CentreWordModel`).

1. ``mean`` -- CBOW: ``hidden = sum_c w_c e_c`` with ``w_c = 1 / n`` over the ``n`` real context words.
2. ``position`` -- learned weights per context *position*: ``w = softmax_c(position_logits_c)`` over the real
   slots. Which words are there does not matter, only where they are. Written as attention: a constant query
   ``q = 1`` against one-number keys ``k_c = position_logits_c`` (scale 1).
3. ``content`` -- content weights: every context word gets a key ``k_c = W_k (e_c + p_c)`` (``p_c`` a learned
   position embedding), one *learned* query ``q`` asks, ``w = softmax_c(q . k_c / sqrt(D_k))``: one attention head
   with a single query. The values are the input vectors themselves, so the hidden vector is still a weighted
   average of them. With ``W_k = 0`` it is rung 2's per-position weights (``q . W_k p_c``); with all keys equal, rung 1.
4. ``self_attention`` -- the query made from the words themselves: the window ``x_c = e_c + p_c`` runs through one
   multi-head self-attention layer (:class:`tfjax.layers.attention.MultiHeadAttention`; every word's query, key
   and value are projections of itself), and CBOW's average of what the words gathered, ``h_c =
   attention(x)_c``, predicts the centre: ``hidden = W_o sum_j abar_j W_v x_j + b_o`` with ``abar_j`` the attention
   word ``j`` receives, averaged over the real queries. With the query projection at zero (queries equal to the
   bias) every word asks the same learned question: rung 3 with value/output maps.

Padding (window slots past a sentence's edge) is excluded by the explicit boolean ``mask_BxC`` (True = a real
context word) everywhere: the weights of every rung are non-negative, zero on padding, and sum to 1 over the real
context (rung 4: each real query's row of the attention pattern). A window with no real context word gets all-zero
weights and a zero hidden vector (its loss is masked out by the task).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfjax.layers import masks as masks_lib
from tfjax.layers.attention import MultiHeadAttention, attention_pattern
from tfjax.layers.linear import Dense, Precision
from tfjax.models import word2vec as w2v

MEAN = "mean"
POSITION = "position"
CONTENT = "content"
SELF_ATTENTION = "self_attention"
RUNGS = (MEAN, POSITION, CONTENT, SELF_ATTENTION)
RUNG_TITLES = {MEAN: "1. CBOW: uniform average", POSITION: "2. learned weight per position",
               CONTENT: "3. content weights: one learned query", SELF_ATTENTION: "4. self-attention over the window"}


@dataclasses.dataclass(frozen=True)
class ContextModelConfig:
  """A centre-word model: ``vocab_size`` words, ``dim``-wide vectors, ``window`` words each side (``C = 2 *
  window`` slots), the ``context`` rung (one of :data:`RUNGS`), the key width of rung 3 (``key_dim``, 0: ``dim``),
  the heads of rung 4 (``num_heads``, dividing ``dim``) and the matmul ``precision``."""
  vocab_size: int
  window: int
  dim: int = 100
  context: str = MEAN
  key_dim: int = 0
  num_heads: int = 1
  precision: Precision = None

  def __post_init__(self):
    if self.context not in RUNGS:
      raise ValueError(f"context must be one of {RUNGS}, got {self.context!r}")
    if self.vocab_size < 1 or self.dim < 1 or self.window < 1:
      raise ValueError(f"vocab_size, dim and window must be positive, got {self.vocab_size}, {self.dim}, "
                       f"{self.window}")
    if self.key_dim < 0:
      raise ValueError(f"key_dim must be >= 0 (0: dim), got {self.key_dim}")
    if self.num_heads < 1 or self.dim % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must be positive and divide dim={self.dim}")

  @property
  def num_slots(self) -> int:
    return 2 * self.window


def single_query_weights(query_BxK: jax.Array, keys_BxCxK: jax.Array, mask_BxC: jax.Array,
                         scale: float | None = None, precision: Precision = None) -> jax.Array:
  """One query per row attending over ``C`` keys: the attention pattern ``weights_BxC`` (softmax of ``q . k_c *
  scale`` over the slots where ``mask_BxC`` is True; zero elsewhere; an all-False row gives zeros). ``scale``
  defaults to ``1 / sqrt(K)``. This is :func:`tfjax.layers.attention.attention_pattern` with one head and one
  query position."""
  pattern_Bx1x1xC = attention_pattern(query_BxK[:, None, None, :], keys_BxCxK[:, :, None, :],
                                      mask_BxC[:, None, None, :], scale=scale, precision=precision)
  return pattern_Bx1x1xC[:, 0, 0, :]


def weighted_context(weights_BxC: jax.Array, vectors_BxCxD: jax.Array) -> jax.Array:
  """``hidden_BxD = sum_c weights_c * vectors_c``."""
  return jnp.einsum("bc,bcd->bd", weights_BxC.astype(vectors_BxCxD.dtype), vectors_BxCxD)


def _check_inputs(vectors_BxCxD: jax.Array, mask_BxC: jax.Array, num_slots: int) -> None:
  if vectors_BxCxD.ndim != 3 or mask_BxC.shape != vectors_BxCxD.shape[:2]:
    raise ValueError(f"want context vectors [B, C, D] and a mask [B, C]; got {vectors_BxCxD.shape} and "
                     f"{mask_BxC.shape}")
  if vectors_BxCxD.shape[1] != num_slots:
    raise ValueError(f"the model has {num_slots} context slots (2 * window), the batch has {vectors_BxCxD.shape[1]}")
  if mask_BxC.dtype != jnp.bool_:
    raise ValueError(f"mask_BxC must be boolean (True = a real context word), got dtype {mask_BxC.dtype}")


class MeanContext(nn.Module):
  """Rung 1 (CBOW): the uniform average of the real context vectors. No parameters."""

  @nn.compact
  def __call__(self, vectors_BxCxD: jax.Array, mask_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(hidden_BxD, weights_BxC)``: ``w2v.context_mean`` and its weights ``mask / n``."""
    mask = mask_BxC.astype(jnp.float32)
    weights_BxC = mask / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    return w2v.context_mean(vectors_BxCxD, mask_BxC), weights_BxC


class PositionWeightedContext(nn.Module):
  """Rung 2: one learned logit per context position (``position_logits [C]``, zero at init = CBOW); the weights are
  their softmax over the real slots, the same for every window whatever words fill it."""
  num_slots: int
  precision: Precision = None

  @nn.compact
  def __call__(self, vectors_BxCxD: jax.Array, mask_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(hidden_BxD, weights_BxC)``."""
    _check_inputs(vectors_BxCxD, mask_BxC, self.num_slots)
    position_logits_C = self.param("position_logits", nn.initializers.zeros, (self.num_slots,), jnp.float32)
    batch = vectors_BxCxD.shape[0]
    query_Bx1 = jnp.ones((batch, 1), jnp.float32)
    keys_BxCx1 = jnp.broadcast_to(position_logits_C[None, :, None], (batch, self.num_slots, 1))
    weights_BxC = single_query_weights(query_Bx1, keys_BxCx1, mask_BxC, scale=1.0, precision=self.precision)
    return weighted_context(weights_BxC, vectors_BxCxD), weights_BxC


class ContentWeightedContext(nn.Module):
  """Rung 3: keys ``W_k (e_c + p_c)`` (``key [D, K]``, ``position_embedding [C, D]``), one learned ``query [K]``
  (zero at init: uniform weights), softmax over the real slots; the values are the input vectors."""
  num_slots: int
  key_dim: int
  precision: Precision = None

  @nn.compact
  def __call__(self, vectors_BxCxD: jax.Array, mask_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(hidden_BxD, weights_BxC)``."""
    _check_inputs(vectors_BxCxD, mask_BxC, self.num_slots)
    dim = vectors_BxCxD.shape[-1]
    position_CxD = self.param("position_embedding", nn.initializers.zeros, (self.num_slots, dim), jnp.float32)
    keys_BxCxK = Dense(self.key_dim, use_bias=False, axes=("embed", "qkv"), precision=self.precision,
                       name="key")(vectors_BxCxD + position_CxD)
    query_K = self.param("query", nn.initializers.zeros, (self.key_dim,), jnp.float32)
    query_BxK = jnp.broadcast_to(query_K, (vectors_BxCxD.shape[0], self.key_dim))
    weights_BxC = single_query_weights(query_BxK, keys_BxCxK, mask_BxC, precision=self.precision)
    return weighted_context(weights_BxC, vectors_BxCxD), weights_BxC


class SelfAttentionContext(nn.Module):
  """Rung 4: self-attention over the window (``x_c = e_c + p_c``; padding masked as keys and as queries), and the
  average of its outputs ``h_c = attention(x)_c`` over the real slots. (A residual ``h_c = e_c + attention(x)_c``
  keeps a uniform CBOW term the model cannot re-weight: held-out 5.975 nats vs 5.915 without it, 1,000 steps of
  the ladder's config.)"""
  num_slots: int
  num_heads: int = 1
  precision: Precision = None

  @nn.compact
  def __call__(self, vectors_BxCxD: jax.Array, mask_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(hidden_BxD, attention_pattern_BxHxCxC)``: row ``i`` of the pattern is what context word ``i`` attends to
    (rows of padding slots are zero)."""
    _check_inputs(vectors_BxCxD, mask_BxC, self.num_slots)
    dim = vectors_BxCxD.shape[-1]
    position_CxD = self.param("position_embedding", nn.initializers.zeros, (self.num_slots, dim), jnp.float32)
    attention_mask_Bx1xCxC = masks_lib.padding_mask(mask_BxC)
    gathered_BxCxD, pattern_BxHxCxC = MultiHeadAttention(num_heads=self.num_heads, precision=self.precision,
                                                         name="attention")(
        vectors_BxCxD + position_CxD, attention_mask_Bx1xCxC, return_pattern=True)
    return w2v.context_mean(gathered_BxCxD, mask_BxC), pattern_BxHxCxC


def make_context_model(config: ContextModelConfig) -> nn.Module:
  """The context model of ``config.context``."""
  c = config
  if c.context == MEAN:
    return MeanContext()
  if c.context == POSITION:
    return PositionWeightedContext(c.num_slots, c.precision)
  if c.context == CONTENT:
    return ContentWeightedContext(c.num_slots, c.key_dim or c.dim, c.precision)
  return SelfAttentionContext(c.num_slots, c.num_heads, c.precision)


class CentreWordModel(w2v._Word2Vec):  # pylint: disable=protected-access
  """word2vec's two ``V x D`` tables (``input_embedding``: the word vectors one keeps; ``output_embedding``: the
  unembed) around one context model of :data:`RUNGS`; predicts the centre word with a full softmax."""
  config: ContextModelConfig

  def setup(self):
    super().setup()
    self.context = make_context_model(self.config)

  def __call__(self, context_BxC: jax.Array, mask_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logits_BxV, weights)``: ``weights`` is ``weights_BxC`` (rungs 1-3) or the attention pattern
    ``BxHxCxC`` (rung 4)."""
    hidden_BxD, weights = self.context(self.input_embedding[context_BxC], mask_BxC)
    return w2v.full_softmax_logits(hidden_BxD, self.output_embedding), weights

  def loss(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(summed cross-entropy, number of centres, number predicted right by the argmax)`` of a batch
    ``{"centre": B, "context": BxC, "mask": BxC, "weight": B}`` (``weight`` 0 for padding rows); a centre with no
    real context word counts for nothing."""
    logits_BxV, _ = self(batch["context"], batch["mask"])
    valid_B = (batch["weight"] > 0) & jnp.any(batch["mask"], axis=1)
    loss = w2v.full_softmax_loss(logits_BxV, batch["centre"][:, None], valid_B[:, None])
    correct = jnp.sum(((jnp.argmax(logits_BxV, axis=-1) == batch["centre"]) & valid_B).astype(jnp.float32))
    return loss, jnp.sum(valid_B.astype(jnp.float32)), correct

"""word2vec: continuous bag of words (CBOW) and skip-gram, with a full-softmax or a negative-sampling objective.

Both models own two float32 tables of shape ``V x D``: the *input* embeddings (the word vectors one keeps) and the
*output* embeddings (the matrix that maps a hidden vector to vocabulary logits).

* CBOW: average the input embeddings of the neighbours of a centre word, multiply by the output matrix to get one
  logit per vocabulary word, softmax: the probability of the centre word.
* Skip-gram: the reverse: the input embedding of the centre word gives logits, and a softmax over the vocabulary
  predicts each neighbour.

The full softmax costs ``O(V)`` per prediction and is fine for small vocabularies. Negative sampling replaces it by
logistic regression: the true word against ``K`` noise words drawn from the unigram distribution raised to 3/4
(``-log s(h.u_w) - sum_k log s(-h.u_k)``, with ``s`` the sigmoid).

For negative sampling the loss is written on *rows* already gathered from the tables (pure functions below), so a
trainer can take gradients with respect to those rows only and scatter-add them into the tables (a sparse SGD update)
instead of forming dense ``V x D`` gradients. Two layout choices make the work batched matrix products:

* "items" are grouped in rows of ``S``; the ``S`` items of a row share the same ``K`` noise words (as pWord2Vec shares
  them within a window), so scoring the noise words is a ``(S x D) @ (D x K)`` product per row;
* skip-gram pairs are scored in word2vec.c/gensim's orientation: the neighbour's input vector scores the centre word's
  output vector. The set of (centre, neighbour) pairs is the same, so the objective is the same up to which of the two
  words of a pair is called the input.

Noise words equal to the true word of an item are masked out, as word2vec.c does.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

SKIPGRAM = "skipgram"
CBOW_ARCH = "cbow"
NEGATIVE_SAMPLING = "negative_sampling"
FULL_SOFTMAX = "full_softmax"


@dataclasses.dataclass(frozen=True)
class Word2VecConfig:
  vocab_size: int
  dim: int = 100
  architecture: str = SKIPGRAM  # "skipgram" | "cbow"
  loss: str = NEGATIVE_SAMPLING  # "negative_sampling" | "full_softmax"
  negatives: int = 5

  def __post_init__(self):
    if self.architecture not in (SKIPGRAM, CBOW_ARCH):
      raise ValueError(f"architecture must be {SKIPGRAM!r} or {CBOW_ARCH!r}, got {self.architecture!r}")
    if self.loss not in (NEGATIVE_SAMPLING, FULL_SOFTMAX):
      raise ValueError(f"loss must be {NEGATIVE_SAMPLING!r} or {FULL_SOFTMAX!r}, got {self.loss!r}")
    if self.vocab_size < 1 or self.dim < 1:
      raise ValueError(f"vocab_size and dim must be positive, got {self.vocab_size}, {self.dim}")


def input_init(dim: int):
  """word2vec.c/gensim's initialisation of the input vectors: uniform in ``[-0.5/D, 0.5/D)``."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -0.5 / dim, 0.5 / dim)
  return init


# ---------------------------------------------------------------------------------------------------- pure functions


def context_mean(input_rows_BxCxD: jax.Array, mask_BxC: jax.Array) -> jax.Array:
  """CBOW hidden vector: the average of the valid neighbours' input vectors (``B x D``; zero if none is valid)."""
  mask = mask_BxC.astype(input_rows_BxCxD.dtype)
  total_BxD = jnp.einsum("bcd,bc->bd", input_rows_BxCxD, mask)
  return total_BxD / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)


def full_softmax_logits(hidden_BxD: jax.Array, output_VxD: jax.Array) -> jax.Array:
  """Logits over the vocabulary, ``B x V``."""
  return hidden_BxD @ output_VxD.T


def full_softmax_loss(logits_BxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Summed cross-entropy of ``T`` targets per row (masked), scalar. One softmax per row serves all its targets."""
  logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  logp_BxT = jnp.take_along_axis(logp_BxV, targets_BxT, axis=-1)
  return -jnp.sum(logp_BxT * mask_BxT.astype(logp_BxT.dtype))


def negative_sampling_loss(hidden_RxSxD: jax.Array, positive_RxSxD: jax.Array, noise_RxKxD: jax.Array,
                           mask_RxS: jax.Array, noise_weight_RxSxK: jax.Array | None = None) -> jax.Array:
  """Summed negative-sampling loss of ``R`` rows of ``S`` items sharing ``K`` noise words (scalar).

  Args:
    hidden_RxSxD: the input side of each item (skip-gram: a neighbour's input vector; CBOW: the neighbours' mean).
    positive_RxSxD: the output vector of each item's true word.
    noise_RxKxD: the output vectors of the row's noise words.
    mask_RxS: 1 for real items, 0 for padding.
    noise_weight_RxSxK: weight of each noise word for each item: 0 where it equals the item's true word (skipped),
      else 1, or ``K / P`` when a pool of ``P`` noise words stands in for ``K`` (an unbiased, lower-variance estimate
      of the same objective). ``None``: all 1.
  Returns:
    ``sum_items mask * (softplus(-h.u_true) + sum_k noise_weight * softplus(h.u_k))``.
  """
  mask = mask_RxS.astype(hidden_RxSxD.dtype)
  pos_RxS = jnp.sum(hidden_RxSxD * positive_RxSxD, axis=-1)
  neg_RxSxK = jnp.einsum("rsd,rkd->rsk", hidden_RxSxD, noise_RxKxD)
  neg_loss = jax.nn.softplus(neg_RxSxK)
  if noise_weight_RxSxK is not None:
    neg_loss = neg_loss * noise_weight_RxSxK.astype(neg_loss.dtype)
  return jnp.sum(mask * (jax.nn.softplus(-pos_RxS) + jnp.sum(neg_loss, axis=-1)))


# ---------------------------------------------------------------------------------------------------- modules


class _Word2Vec(nn.Module):
  config: Word2VecConfig

  def setup(self):
    cfg = self.config
    self.input_embedding = self.param("input_embedding", input_init(cfg.dim), (cfg.vocab_size, cfg.dim), jnp.float32)
    self.output_embedding = self.param("output_embedding", nn.initializers.zeros, (cfg.vocab_size, cfg.dim),
                                       jnp.float32)


class CBOW(_Word2Vec):
  """Predicts the centre word from the average of its neighbours' input vectors."""

  def __call__(self, context_BxC: jax.Array, mask_BxC: jax.Array) -> jax.Array:
    """Full-softmax logits of the centre word, ``B x V``."""
    hidden_BxD = context_mean(self.input_embedding[context_BxC], mask_BxC)
    return full_softmax_logits(hidden_BxD, self.output_embedding)

  def loss(self, batch: dict[str, jax.Array]) -> jax.Array:
    """Summed loss of a batch ``{"centre": B, "context": BxC, "mask": BxC}`` (+ ``"noise": BxK`` for negative
    sampling; then each centre is its own row, ``S = 1``)."""
    if self.config.loss == FULL_SOFTMAX:
      logits_BxV = self(batch["context"], batch["mask"])
      has_context = jnp.any(batch["mask"], axis=1, keepdims=True)
      return full_softmax_loss(logits_BxV, batch["centre"][:, None], has_context)
    hidden_BxD = context_mean(self.input_embedding[batch["context"]], batch["mask"])
    centre = batch["centre"]
    noise = batch["noise"]
    return negative_sampling_loss(
        hidden_BxD[:, None], self.output_embedding[centre][:, None], self.output_embedding[noise],
        jnp.any(batch["mask"], axis=1, keepdims=True), (noise != centre[:, None])[:, None, :])


class SkipGram(_Word2Vec):
  """Predicts each neighbour from the centre word's input vector."""

  def __call__(self, centre_B: jax.Array) -> jax.Array:
    """Full-softmax logits of the neighbours, ``B x V`` (one softmax serves all neighbours of a centre)."""
    return full_softmax_logits(self.input_embedding[centre_B], self.output_embedding)

  def loss(self, batch: dict[str, jax.Array]) -> jax.Array:
    """Summed loss of a batch ``{"centre": B, "context": BxC, "mask": BxC}`` (+ ``"noise": BxK`` for negative
    sampling: the ``C`` pairs of a centre form one row sharing its ``K`` noise words)."""
    if self.config.loss == FULL_SOFTMAX:
      return full_softmax_loss(self(batch["centre"]), batch["context"], batch["mask"])
    centre, context, noise = batch["centre"], batch["context"], batch["noise"]
    hidden_BxCxD = self.input_embedding[context]
    positive_BxCxD = jnp.broadcast_to(self.output_embedding[centre][:, None], hidden_BxCxD.shape)
    return negative_sampling_loss(hidden_BxCxD, positive_BxCxD, self.output_embedding[noise], batch["mask"],
                                  noise[:, None, :] != centre[:, None, None])


def make_model(config: Word2VecConfig) -> _Word2Vec:
  return CBOW(config) if config.architecture == CBOW_ARCH else SkipGram(config)

"""GPT: a decoder-only transformer language model.

``ids [B, T] -> logits [B, T, V]``:  token embedding (+ learned or sinusoidal positional encoding; or RoPE inside
attention) → dropout → ``num_layers`` causal pre-LN blocks → final norm → unembed (tied to the token embedding by
default). Logits are float32 whatever the compute dtype.

Decoding: call with ``decode=True`` and the absolute ``positions [B, T]`` of the new tokens; keys and values of
earlier tokens come from the ``cache`` collection (see :mod:`tfjax.generate`), so each new token costs one position.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax.layers import masks as masks_lib
from tfjax.layers.blocks import TransformerStack, make_norm, make_token_embedding, make_unembed
from tfjax.models.config import TransformerConfig
from tfjax.layers.dropout import Dropout
from tfjax.layers.embeddings import LearnedPositionalEmbedding, sinusoidal_positions
from tfjax.layers.unembed_loss import unembed_cross_entropy


class GPT(nn.Module):
  """Decoder-only language model. See the module docstring for the computation and shapes.

  Submodules (parameter names): ``embed``, ``pos_embed`` (learned positions), ``decoder`` (the
  :class:`~tfjax.layers.blocks.TransformerStack` ``block_0 .. block_{L-1}``), ``ln_final`` and, untied, ``unembed``.
  """
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.embed = make_token_embedding(cfg, name="embed")
    if cfg.positional == "learned":
      self.pos_embed = LearnedPositionalEmbedding(cfg.max_len, cfg.emb_dim, cfg.dtype, cfg.param_dtype,
                                                  name="pos_embed")
    self.dropout = Dropout(cfg.dropout_rate, name="Dropout_0")  # the name (and dropout bits) of the compact GPT
    self.decoder = TransformerStack(cfg, name="decoder")
    self.ln_final = make_norm(cfg, "ln_final")
    if not cfg.tie_embeddings:
      self.unembed_matrix = make_unembed(cfg, name="unembed")

  def __call__(self, ids: jnp.ndarray, *, positions: jnp.ndarray | None = None, mask: jnp.ndarray | None = None,
               deterministic: bool = True, decode: bool = False) -> jnp.ndarray:
    """Logits ``[B, T, V]`` (float32) for token ``ids [B, T]``.

    Args:
      ids: integer token ids in ``[0, vocab_size)``.
      positions: absolute positions ``[B, T]``; default ``0 .. T-1``. Required when ``decode``.
      mask: an extra boolean mask ``[B|1, 1, T, S]`` (e.g. padding), combined with the causal mask.
      deterministic: disables dropout when True.
      decode: use and update the KV cache (``S`` = the cache length ``max_len``).
    """
    return self.unembed(self.residual_stream(ids, positions=positions, mask=mask, deterministic=deterministic,
                                             decode=decode))

  def residual_stream(self, ids: jnp.ndarray, *, positions: jnp.ndarray | None = None,
                      mask: jnp.ndarray | None = None, deterministic: bool = True,
                      decode: bool = False) -> jnp.ndarray:
    """The residual stream ``[B, T, D]`` after the last block (before the final norm): :meth:`__call__` without
    :meth:`unembed`. Arguments as :meth:`__call__`."""
    cfg = self.cfg
    batch, length = ids.shape
    if length > cfg.max_len:
      raise ValueError(f"sequence of length {length} is longer than the context window max_len={cfg.max_len}")
    if positions is None:
      if decode and not self.is_initializing():
        raise ValueError("decode=True needs the absolute positions [B, T] of the new tokens")
      positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))  # static: see apply_rope

    x = self.embed(ids)
    if cfg.positional == "learned":
      x = x + self.pos_embed(positions)
    elif cfg.positional == "sinusoidal":
      x = x + sinusoidal_positions(positions, cfg.emb_dim, dtype=cfg.dtype)
    x = self.dropout(x, deterministic=deterministic)

    kv_len = cfg.max_len if decode else length
    causal = masks_lib.causal_mask_at(positions, kv_len)
    return self.decoder(x, masks_lib.combine_masks(causal, mask), positions, deterministic=deterministic,
                        decode=decode)

  def unembed(self, resid: jnp.ndarray) -> jnp.ndarray:
    """Logits ``[..., V]`` (float32) of a residual stream ``resid [..., D]``: the final norm ``ln_final``, then the
    unembedding (the transposed token embedding when tied). The model's last step, and the logit lens's map."""
    x = self.ln_final(resid)
    logits = self.embed.unembed(x) if self.cfg.tie_embeddings else self.unembed_matrix(x)
    return logits.astype(jnp.float32)

  def cross_entropy(self, ids: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None, *,
                    deterministic: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(loss, correct)`` of ``targets [B, T]`` after ``ids [B, T]``: the summed (``weights [B, T]``-weighted)
    cross-entropy of the logits :meth:`__call__` gives and the number of positions whose argmax is the target, both
    float32 scalars. With ``cfg.loss_chunk_size > 0`` the unembedding and the loss are fused, that many positions
    at a time (:func:`tfjax.layers.unembed_loss.unembed_cross_entropy`): the logits ``[B, T, V]`` never exist."""
    resid = self.residual_stream(ids, deterministic=deterministic)
    if self.cfg.loss_chunk_size == 0 or self.is_initializing():
      logits = self.unembed(resid)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
      if weights is not None:
        ce, hit = ce * weights, hit * weights
      return jnp.sum(ce), jnp.sum(hit)
    x = self.ln_final(resid).astype(self.cfg.dtype)
    if self.cfg.tie_embeddings:
      w, bias = jnp.asarray(self.embed.embedding).T, None
    else:
      dense = nn.unbox(self.unembed_matrix.variables["params"]["kernel_dense"])
      w, bias = dense["kernel"], dense.get("bias")
    return unembed_cross_entropy(x, w, targets, weights, bias, chunk_size=self.cfg.loss_chunk_size,
                                 precision=self.cfg.precision)


def init_cache(model: GPT, batch_size: int) -> dict:
  """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` tokens (the ``cache`` collection)."""
  cfg = model.cfg
  ids = jnp.zeros((batch_size, cfg.max_len), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, decode=True))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables["cache"])


def num_params(params, exclude_positional: bool = True) -> int:
  """Parameter count (by default without the positional table, as in nanoGPT's MFU estimate)."""
  total = sum(x.size for x in jax.tree.leaves(params))
  if exclude_positional and "pos_embed" in params:
    total -= sum(x.size for x in jax.tree.leaves(params["pos_embed"]))
  return total


def flops_per_token(cfg: TransformerConfig, n_params: int, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward): ``6·N + 12·L·T·D_attn``, as in PaLM appendix B / nanoGPT.

  ``N`` counts the parameters except the positional table (each is used in one multiply-add per token, three times
  for forward and backward); ``12·L·T·H·Dh`` counts the attention scores and the weighted sum of values.
  """
  head_dim = cfg.head_width
  return 6.0 * n_params + 12.0 * cfg.num_layers * seq_len * cfg.num_heads * head_dim


def gpt_config(**overrides) -> TransformerConfig:
  """A TransformerConfig with GPT defaults (pre-LN, causal, tied unembedding)."""
  return dataclasses.replace(TransformerConfig(vocab_size=overrides.pop("vocab_size")), **overrides)

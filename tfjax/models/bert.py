"""BERT: a bidirectional transformer encoder with a masked-language-model head (Devlin et al., 2019).

``input_ids [B, T] -> logits [B, T, V]`` (or ``[B, P, V]`` at ``masked_positions [B, P]``)::

    x = LayerNorm(tok_embed[ids] + pos_embed[positions] + type_embed[token_type_ids])     "ln_embed"
                                                             (no pos_embed with positional="rope")
    x = dropout(x)
    x = encoder(x, mask = padding_mask(attention_mask))     num_layers blocks, every token sees every real token
    (x = LayerNorm(x)                                        "ln_final", only when pre_ln=True)
    h = LayerNorm(act(Dense(x)))                             the MLM head's transform ("mlm_head")
    logits = h @ tok_embedᵀ + bias                           decoder tied to the token embedding (+ output bias)

Context flows both ways: there is no causal mask. Padding is never inferred from token ids: the caller passes
``attention_mask [B, T]`` (1/True = real token, 0/False = padding), from which the boolean mask ``[B, 1, T, T]`` of
:func:`tfjax.layers.masks.padding_mask` is built; outputs at real positions do not depend on what is at padded ones.

Positions: ``cfg.positional="learned"`` is BERT's table of absolute positions; ``"rope"`` rotates every query and
key by its position instead (RoFormer, Su et al. 2021; Hugging Face ``RoFormerForMaskedLM``), so attention scores
depend on the offset between tokens from the first step. On small data this is what makes BERT use context early
(docs/bert.md): a learned table starts as noise and a head must learn "the token next to me" position by position.

Post-LN (``cfg.pre_ln=False``) is the original BERT (and what Hugging Face ``BertForMaskedLM`` computes with
``activation="gelu"`` (exact erf) and ``norm_eps=1e-12``); pre-LN adds a final LayerNorm before the head.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from tfjax.layers import masks as masks_lib
from tfjax.layers.blocks import TransformerStack, make_norm, make_token_embedding, make_unembed
from tfjax.models.config import TransformerConfig
from tfjax.layers.dropout import Dropout
from tfjax.layers.embeddings import LearnedPositionalEmbedding, TokenEmbedding
from tfjax.layers.mlp import get_activation


class MLMHead(nn.Module):
  """BERT's masked-LM head: ``x [..., D] -> logits [..., V]``.

  ``transform`` = Dense(D) → activation → LayerNorm ("dense", "ln"), then the decoder: the transposed token embedding
  ``embed`` (tied) or its own ``unembed [D, V]``, plus an output ``bias [V]``.
  """
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x: jnp.ndarray, embed: TokenEmbedding | None) -> jnp.ndarray:
    cfg = self.cfg
    h = nn.Dense(cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision, name="dense",
                 kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
    h = get_activation(cfg.activation)(h)
    h = make_norm(cfg, "ln")(h)
    if embed is not None:
      logits = embed.unembed(h)
    else:
      logits = make_unembed(cfg, name="unembed")(h)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,),
                      cfg.param_dtype)
    return logits.astype(jnp.float32) + jnp.asarray(bias, jnp.float32)


class BERT(nn.Module):
  """Bidirectional encoder + masked-LM head. See the module docstring for the computation and shapes.

  Attributes:
    cfg: the transformer hyperparameters (``positional`` "learned" as BERT or "rope" as RoFormer; ``pre_ln=False``
      for the original BERT).
    type_vocab_size: number of token types (segments A/B); 2 in BERT.
  """
  cfg: TransformerConfig
  type_vocab_size: int = 2

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray | None = None,
               token_type_ids: jnp.ndarray | None = None, *, positions: jnp.ndarray | None = None,
               masked_positions: jnp.ndarray | None = None, deterministic: bool = True,
               return_hidden: bool = False) -> jnp.ndarray:
    """MLM logits (float32) for ``input_ids [B, T]``.

    Args:
      input_ids: integer token ids in ``[0, vocab_size)``.
      attention_mask: ``[B, T]`` bool or 0/1, True/1 for real tokens; None means no padding (all real).
      token_type_ids: ``[B, T]`` segment ids in ``[0, type_vocab_size)``; default all 0.
      positions: ``[B, T]`` position ids; default ``0 .. T-1``.
      masked_positions: optional ``[B, P]`` indices into ``T``: the head is applied only there (as BERT's
        ``max_predictions_per_seq``), returning ``[B, P, V]``. Saves the vocabulary projection at the other positions.
      deterministic: disables dropout when True (needs a ``dropout`` rng otherwise).
      return_hidden: return the encoder output ``[B, T, D]`` instead of logits.
    Returns:
      logits ``[B, T, V]`` (``[B, P, V]`` with ``masked_positions``), or hidden states ``[B, T, D]``.
    """
    cfg = self.cfg
    if cfg.positional not in ("learned", "rope"):
      raise ValueError(f"BERT takes learned or rope positions; got positional={cfg.positional!r}")
    batch, length = input_ids.shape
    if length > cfg.max_len:
      raise ValueError(f"sequence of length {length} is longer than max_len={cfg.max_len}")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if attention_mask is not None:
      if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {input_ids.shape}, "
                         f"got {attention_mask.shape}")
      mask = masks_lib.padding_mask(attention_mask.astype(bool))  # [B, 1, T, T]
    else:
      mask = None

    embed = make_token_embedding(cfg, name="embed")
    x = embed(input_ids)
    if cfg.positional == "learned":
      x = x + LearnedPositionalEmbedding(cfg.max_len, cfg.emb_dim, cfg.dtype, cfg.param_dtype, name="pos_embed")(
          positions)
    x = x + TokenEmbedding(self.type_vocab_size, cfg.emb_dim, cfg.dtype, cfg.param_dtype, name="type_embed")(
        token_type_ids)
    x = make_norm(cfg, "ln_embed")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = TransformerStack(cfg, name="encoder")(x, mask, positions, deterministic=deterministic)
    if cfg.pre_ln:
      x = make_norm(cfg, "ln_final")(x)
    if return_hidden:
      return x
    if masked_positions is not None:
      x = jnp.take_along_axis(x, masked_positions[..., None].astype(jnp.int32), axis=1)  # [B, P, D]
    logits = MLMHead(cfg, name="mlm_head")(x, embed if cfg.tie_embeddings else None)
    return logits.astype(jnp.float32)


def bert_config(**overrides) -> TransformerConfig:
  """A TransformerConfig with BERT defaults: post-LN, exact-erf GELU, LayerNorm eps 1e-12, tied decoder, learned
  positions (512), dropout 0.1, every weight initialised from N(0, 0.02) (``scale_residual_init=False``). Pass
  ``vocab_size`` and any other field to override."""
  defaults = dict(num_layers=12, num_heads=12, emb_dim=768, mlp_dim=3072, max_len=512, dropout_rate=0.1,
                  attention_dropout_rate=0.1, positional="learned", norm="layernorm", norm_eps=1e-12,
                  use_bias=True, pre_ln=False, activation="gelu", tie_embeddings=True, scale_residual_init=False,
                  attention_block_size=0)  # bidirectional: no causal query blocks
  defaults.update(overrides)
  return TransformerConfig(**defaults)

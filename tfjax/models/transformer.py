"""The encoder-decoder transformer ("Attention Is All You Need"): a translator from one sequence to another.

``src [B, S], src_valid [B, S], tgt [B, T] -> logits [B, T, V]``::

    memory = encode(src)  = norm(encoder(embed(src) + pos(src), mask = padding_mask(src_valid)))      [B, S, D]
    logits = decode(tgt)  = unembed(norm(decoder(embed(tgt) + pos(tgt),
                                                 self mask  = causal_mask,                     target sees its past
                                                 cross mask = padding_mask(all, src_valid),    every real source token
                                                 context    = memory)))                                  [B, T, V]

Options for imported Hugging Face models (:mod:`tfjax.hf`: Marian, BART), each off by default: ``cfg.embed_norm``
normalises ``embed + pos`` before each stack (BART's ``layernorm_embedding``, ``ln_embed_src``/``ln_embed_tgt``);
``cfg.final_norm=False`` drops ``ln_encoder``/``ln_decoder`` (post-LN stacks end with a norm already);
``cfg.logits_bias`` adds a learned ``logits_bias [V]`` (``final_logits_bias``); ``cfg.position_offset`` shifts the
rows of the learned position tables (BART: position p reads row p + 2); ``cfg.sinusoidal_layout="halves"`` puts all
sines before all cosines (Marian).

The encoder is bidirectional (BERT-like: no causal mask, only padding); the decoder is a GPT whose every block also
has a cross-attention sub-block: queries from the target, keys and values from the encoder's output. Source and
target share one vocabulary and one token embedding, which is also the unembedding (``tie_embeddings``), as in the
original model. Positions: ``cfg.positional`` (learned tables, one per side; sinusoidal; RoPE in the self-attention
of both stacks). Padding is never inferred from ids: ``src_valid`` (True = real token) is passed in. Target padding
needs no mask: it only follows the real tokens, which the causal mask already hides it from.

Decoding (:func:`tfjax.generate.translate`): ``encode`` once, then ``decode(..., decode=True)`` one target position
at a time with a KV cache (``cache`` collection, as in :class:`tfjax.models.gpt.GPT`): the decoder's self-attention
keys and values grow by one position a step, and each cross-attention keeps the source's keys and values, projected
on the first step (``memory``) and reused after it (``memory=None``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.layers import masks as masks_lib
from tfjax.layers.blocks import TransformerStack, make_norm, make_token_embedding, make_unembed
from tfjax.models.config import TransformerConfig
from tfjax.layers.dropout import Dropout
from tfjax.layers.embeddings import LearnedPositionalEmbedding, sinusoidal_positions, sinusoidal_table


class EncoderDecoder(nn.Module):
  """Encoder-decoder transformer. See the module docstring for the computation and shapes.

  Attributes:
    cfg: hyperparameters of both stacks (``max_len`` bounds the source and the target).
    num_encoder_layers: encoder depth (None: ``cfg.num_layers``, the decoder's).
  """
  cfg: TransformerConfig
  num_encoder_layers: int | None = None

  def setup(self):
    cfg = self.cfg
    self.embed = make_token_embedding(cfg, name="embed")
    if cfg.positional == "learned":
      rows = cfg.max_len + cfg.position_offset
      self.src_pos_embed = LearnedPositionalEmbedding(rows, cfg.emb_dim, cfg.dtype, cfg.param_dtype)
      self.tgt_pos_embed = LearnedPositionalEmbedding(rows, cfg.emb_dim, cfg.dtype, cfg.param_dtype)
    if cfg.embed_norm:
      self.ln_embed_src = make_norm(cfg, "ln_embed_src")
      self.ln_embed_tgt = make_norm(cfg, "ln_embed_tgt")
    enc_cfg = dataclasses.replace(cfg, num_layers=self.num_encoder_layers or cfg.num_layers, attention_block_size=0)
    self.encoder = TransformerStack(enc_cfg)
    self.decoder = TransformerStack(cfg, cross_attention=True)
    if cfg.final_norm:
      self.ln_encoder = make_norm(cfg, "ln_encoder")
      self.ln_decoder = make_norm(cfg, "ln_decoder")
    if not cfg.tie_embeddings:
      self.unembed_matrix = make_unembed(cfg, name="unembed")
    if cfg.logits_bias:
      self.logits_bias = self.param("logits_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                                    (cfg.vocab_size,), cfg.param_dtype)
    self.dropout = Dropout(cfg.dropout_rate)

  def _check_length(self, n: int, what: str):
    if n > self.cfg.max_len:
      raise ValueError(f"{what} of length {n} is longer than the context window max_len={self.cfg.max_len}")

  def _embed(self, ids, positions, table, norm, deterministic):
    cfg = self.cfg
    x = self.embed(ids)
    if cfg.positional == "learned":
      x = x + table(positions + cfg.position_offset if cfg.position_offset else positions)
    elif cfg.positional == "sinusoidal" and cfg.sinusoidal_layout == "halves":
      # a float64 table computed on the host (as Marian's), read at the positions
      x = x + jnp.take(jnp.asarray(sinusoidal_table(cfg.max_len, cfg.emb_dim, layout="halves")), positions,
                       axis=0).astype(cfg.dtype)
    elif cfg.positional == "sinusoidal":
      x = x + sinusoidal_positions(positions, cfg.emb_dim, dtype=cfg.dtype)
    if norm is not None:
      x = norm(x)
    return self.dropout(x, deterministic=deterministic)

  def encode(self, src: jnp.ndarray, src_valid: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    """The encoder's output ``memory [B, S, D]`` for source ids ``src [B, S]`` (``src_valid [B, S]``: real tokens)."""
    batch, length = src.shape
    self._check_length(length, "source")
    if src_valid.shape != src.shape:
      raise ValueError(f"src_valid must have the shape of src {src.shape}, got {src_valid.shape}")
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    x = self._embed(src, positions, getattr(self, "src_pos_embed", None), getattr(self, "ln_embed_src", None),
                    deterministic)
    mask = masks_lib.padding_mask(src_valid.astype(bool))  # [B, 1, S, S]
    x = self.encoder(x, mask, positions, deterministic=deterministic)
    return self.ln_encoder(x) if self.cfg.final_norm else x

  def decode(self, tgt: jnp.ndarray, memory: jnp.ndarray | None, src_valid: jnp.ndarray, *,
             positions: jnp.ndarray | None = None, deterministic: bool = True, decode: bool = False) -> jnp.ndarray:
    """Next-token logits ``[B, T, V]`` (float32) for target ids ``tgt [B, T]`` given the encoder's ``memory``.

    With ``decode=True`` the target's self-attention keys and values come from (and go to) the ``cache`` collection
    and ``positions [B, T]`` (the absolute target positions of ``tgt``) are required; ``memory`` may then be None
    after a first call with it (its keys and values are in the cache).
    """
    cfg = self.cfg
    batch, length = tgt.shape
    self._check_length(length, "target")
    if positions is None:
      if decode and not self.is_initializing():
        raise ValueError("decode=True needs the absolute positions [B, T] of the new target tokens")
      positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    x = self._embed(tgt, positions, getattr(self, "tgt_pos_embed", None), getattr(self, "ln_embed_tgt", None),
                    deterministic)
    causal = masks_lib.causal_mask_at(positions, cfg.max_len if decode else length)
    cross = masks_lib.padding_mask(jnp.ones((batch, length), bool), src_valid.astype(bool))  # [B, 1, T, S]
    x = self.decoder(x, causal, positions, context=memory, cross_mask=cross, deterministic=deterministic,
                     decode=decode)
    return self.unembed(x)

  def unembed(self, resid: jnp.ndarray) -> jnp.ndarray:
    """Logits ``[..., V]`` (float32) of a decoder residual stream ``resid [..., D]``: the final norm ``ln_decoder``
    (unless ``cfg.final_norm=False``), then the unembedding (the transposed token embedding when tied), plus
    ``logits_bias`` with ``cfg.logits_bias``. The decoder's last step, and the logit lens's map."""
    x = self.ln_decoder(resid) if self.cfg.final_norm else resid
    logits = (self.embed.unembed(x) if self.cfg.tie_embeddings else self.unembed_matrix(x)).astype(jnp.float32)
    if self.cfg.logits_bias:
      logits = logits + jnp.asarray(self.logits_bias, jnp.float32)
    return logits

  def __call__(self, src: jnp.ndarray, src_valid: jnp.ndarray, tgt: jnp.ndarray, *,
               deterministic: bool = True) -> jnp.ndarray:
    """Teacher-forced logits ``[B, T, V]``: ``decode(tgt, encode(src))``."""
    memory = self.encode(src, src_valid, deterministic=deterministic)
    return self.decode(tgt, memory, src_valid, deterministic=deterministic)


def init_cache(model: EncoderDecoder, batch_size: int, src_len: int) -> dict:
  """An empty decoder KV cache for ``batch_size`` targets of up to ``max_len`` tokens (the ``cache`` collection)."""
  cfg = model.cfg
  tgt = jnp.zeros((batch_size, cfg.max_len), jnp.int32)
  memory = jnp.zeros((batch_size, src_len, cfg.emb_dim), cfg.dtype)
  valid = jnp.ones((batch_size, src_len), bool)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), tgt, memory, valid, decode=True,
                                                method=EncoderDecoder.decode))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables["cache"])


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def flops_per_token(cfg: TransformerConfig, params, src_len: int, tgt_len: int,
                    num_encoder_layers: int | None = None) -> float:
  """Training FLOPs (forward + backward) per *target* position of a ``[B, S] -> [B, T]`` batch, as ``6·N·tokens +
  12·L·T·D_attn`` per stack (PaLM appendix B): the encoder's parameters work on the ``S`` source tokens, the
  decoder's and the unembedding on the ``T`` target tokens; attention counts encoder self-attention (S keys),
  decoder self-attention (T keys) and cross-attention (S keys)."""
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  attn_dim = cfg.num_heads * cfg.head_width
  enc_layers = num_encoder_layers or cfg.num_layers
  dense = 6.0 * (count(params["encoder"]) * src_len + (count(params["decoder"]) + cfg.vocab_size * cfg.emb_dim)
                 * tgt_len)
  attention = 12.0 * attn_dim * (enc_layers * src_len * src_len + cfg.num_layers * tgt_len * (tgt_len + src_len))
  return (dense + attention) / tgt_len

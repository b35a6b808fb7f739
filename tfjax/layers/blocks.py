"""The transformer block and the model configuration shared by every transformer in tfjax.

:class:`TransformerBlock` maps the residual stream ``x [B, T, D] -> [B, T, D]``:

pre-LN (GPT-2, default)::                      post-LN (original transformer, BERT)::

    x = x + attn(norm(x))                         x = norm(x + attn(x))
    x = x + cross_attn(norm(x), context)          x = norm(x + cross_attn(x, context))
    x = x + mlp(norm(x))                          x = norm(x + mlp(x))

The cross-attention sub-block exists only when ``cross_attention=True`` (decoder of an encoder-decoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfjax.layers import hooks
from tfjax.layers.attention import IMPLEMENTATIONS, MultiHeadAttention
from tfjax.layers.dropout import Dropout
from tfjax.layers.embeddings import TokenEmbedding, Unembed
from tfjax.layers.mlp import ACTIVATIONS, MLP

Dtype = Any
PRECISIONS = ("default", "high", "highest")
POSITIONALS = ("learned", "sinusoidal", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of a transformer stack. Derive variants with ``dataclasses.replace(cfg, ...)``."""
  vocab_size: int
  num_layers: int = 6
  num_heads: int = 6
  num_kv_heads: int | None = None  # None: = num_heads (MHA); fewer: GQA; 1: MQA
  emb_dim: int = 384
  mlp_dim: int | None = None  # None: 4 * emb_dim
  head_dim: int | None = None  # None: emb_dim // num_heads
  max_len: int = 256  # the context window
  dropout_rate: float = 0.0  # embeddings and residual branches
  attention_dropout_rate: float = 0.0  # on the attention pattern (uses the reference attention when training)
  # RoPE: with the baby GPT it reaches val loss 1.78 at 2000 steps where learned positions reach 1.88 (as nanoGPT).
  # The defaults are the shipped GPT's (experiments/configs/lm_defaults.py is built from them); BERT, GPT-2 and Marian
  # imports and bert_config() set their own.
  positional: str = "rope"  # learned | sinusoidal | rope | none
  embed_scale: bool = False  # token embeddings times sqrt(emb_dim), as in "Attention Is All You Need"
  embed_stddev: float = 0.02  # std of the token embedding's normal init (fairseq: emb_dim ** -0.5, with embed_scale)
  rope_base: float = 10_000.0
  norm: str = "layernorm"  # layernorm | rmsnorm
  norm_eps: float = 1e-5
  use_bias: bool = False  # Dense and LayerNorm biases
  pre_ln: bool = True
  # GPT-2's tanh GELU (cheaper than the exact erf GELU on CPUs)
  activation: str = "gelu_tanh"  # gelu | gelu_tanh | relu | silu | swiglu
  tie_embeddings: bool = True
  # output projections of the residual branches (attn "out", mlp "fc_out") drawn from N(0, 0.02/sqrt(2·num_layers)),
  # as GPT-2; False: N(0, 0.02) like every other weight, as BERT (Hugging Face BertForMaskedLM's _init_weights)
  scale_residual_init: bool = True
  attention_impl: str = "auto"  # auto | xla | cudnn | reference
  # >0: queries in blocks that skip keys a static (e.g. causal) mask hides (tfjax.layers.attention.
  # dot_product_attention); 0: one block. 6/6/384 on 2 CPU cores: 16.1 -> 14.7 s/step; contexts <= 64: no-op
  attention_block_size: int = 64
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32
  # float32 matmuls on GPUs/TPUs: None follows JAX's default (TF32 / bfloat16 passes, fast, and whatever
  # jax.default_matmul_precision sets); "high" | "highest" (full float32) fix it for every matmul of the model
  precision: str | None = None
  remat: str = "none"  # none | full | dots | dots_no_batch
  scan_layers: bool = False
  # -- encoder-decoder options for Hugging Face Marian/BART (tfjax.hf); the defaults are tfjax's own model --
  final_norm: bool = True  # EncoderDecoder: a norm after each stack (ln_encoder/ln_decoder); Marian/BART: False
  embed_norm: bool = False  # EncoderDecoder: LayerNorm of token + position embeddings (BART's layernorm_embedding)
  position_offset: int = 0  # learned positions: max_len + offset rows, position p reads row p + offset (BART: 2)
  sinusoidal_layout: str = "interleaved"  # sin/cos pairs (Vaswani et al.) | "halves": all sines, then cosines (Marian)
  logits_bias: bool = False  # EncoderDecoder: a learned bias [V] added to the logits (final_logits_bias)

  def __post_init__(self):
    checks = [
        (self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}"),
        (self.num_layers > 0, f"num_layers must be positive, got {self.num_layers}"),
        (self.num_heads > 0, f"num_heads must be positive, got {self.num_heads}"),
        (self.head_dim is not None or self.emb_dim % self.num_heads == 0,
         f"num_heads={self.num_heads} does not divide the width emb_dim={self.emb_dim}"),
        (self.num_heads % (self.num_kv_heads or self.num_heads) == 0,
         f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}"),
        (self.max_len > 0, f"max_len must be positive, got {self.max_len}"),
        (0.0 <= self.dropout_rate < 1.0, f"dropout_rate must be in [0, 1), got {self.dropout_rate}"),
        (0.0 <= self.attention_dropout_rate < 1.0,
         f"attention_dropout_rate must be in [0, 1), got {self.attention_dropout_rate}"),
        (self.positional in POSITIONALS, f"positional must be one of {POSITIONALS}, got {self.positional!r}"),
        (self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}"),
        (self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"),
        (self.attention_impl in IMPLEMENTATIONS,
         f"attention_impl must be one of {IMPLEMENTATIONS}, got {self.attention_impl!r}"),
        (self.precision is None or self.precision in PRECISIONS,
         f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
        (self.attention_block_size >= 0,
         f"attention_block_size must be >= 0 (0: no blocks), got {self.attention_block_size}"),
        (self.remat in REMAT_POLICIES, f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}"),
        (self.sinusoidal_layout in ("interleaved", "halves"),
         f"sinusoidal_layout must be 'interleaved' or 'halves', got {self.sinusoidal_layout!r}"),
        (self.position_offset >= 0, f"position_offset must be >= 0, got {self.position_offset}"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(msg)

  @property
  def hidden_dim(self) -> int:
    return self.mlp_dim or 4 * self.emb_dim


def make_norm(cfg: TransformerConfig, name: str) -> nn.Module:
  """The configured normalisation (flax's LayerNorm or RMSNorm), statistics in float32."""
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      name=name)


def make_token_embedding(cfg: TransformerConfig, name: str | None = None) -> TokenEmbedding:
  """The token embedding of ``cfg`` (its dtypes and matmul precision; rows times √D with ``embed_scale``)."""
  return TokenEmbedding(cfg.vocab_size, cfg.emb_dim, cfg.dtype, cfg.param_dtype, stddev=cfg.embed_stddev,
                        precision=cfg.precision, scale=cfg.emb_dim ** 0.5 if cfg.embed_scale else 1.0, name=name)


def make_unembed(cfg: TransformerConfig, name: str | None = None) -> Unembed:
  """The untied unembedding of ``cfg``: ``[..., D] -> logits [..., V]`` in float32."""
  return Unembed(cfg.vocab_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision, name=name)


class TransformerBlock(nn.Module):
  """One layer: self-attention, optional cross-attention, MLP; each a residual branch. ``[B, T, D] -> [B, T, D]``.

  Args (call): ``x [B, T, D]``; ``mask [B|1, 1, T, S]`` for self-attention; ``positions [B, T]`` (for RoPE; None:
  0..T-1); ``context [B, S', D]`` and ``cross_mask [B|1, 1, T, S']`` for cross-attention.

  Observation points (:func:`tfjax.layers.hooks.hook`), all ``[B, T, D]``: the residual stream ``resid_pre``,
  ``resid_mid`` (after self-attention), ``resid_mid_cross`` (after cross-attention) and ``resid_post``; and what each
  sublayer adds to it, ``attn_out``, ``cross_attn_out`` and ``mlp_out`` (post-LN: before the norm).
  """
  cfg: TransformerConfig
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x, mask=None, positions=None, context=None, cross_mask=None, deterministic: bool = True,
               decode: bool = False):
    cfg = self.cfg
    if positions is None and cfg.positional == "rope" and not decode:  # RoPE reads positions: a whole sequence's
      positions = jnp.arange(x.shape[1])[None, :]  # [1, T] (a cached decode step must say where it is)
    # Residual output projections scaled by 1/sqrt(2 * layers), as in GPT-2 (not in BERT: scale_residual_init=False).
    out_stddev = 0.02 / (2 * cfg.num_layers) ** 0.5 if cfg.scale_residual_init else 0.02
    attn = dict(num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                use_bias=cfg.use_bias, dropout_rate=cfg.attention_dropout_rate, implementation=cfg.attention_impl,
                block_size=cfg.attention_block_size,
                out_stddev=out_stddev, dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision)
    drop = Dropout(cfg.dropout_rate)

    def residual(x, branch, norm_name, out_name, resid_name):
      """The residual branch; ``out_name``: what it adds to the stream, ``resid_name``: the stream after it."""
      if cfg.pre_ln:
        x = x + hooks.hook(self, out_name, drop(branch(make_norm(cfg, norm_name)(x)), deterministic=deterministic))
      else:
        x = make_norm(cfg, norm_name)(x + hooks.hook(self, out_name, drop(branch(x), deterministic=deterministic)))
      return hooks.hook(self, resid_name, x)

    x = hooks.hook(self, "resid_pre", x)
    x = residual(x, lambda h: MultiHeadAttention(rope=cfg.positional == "rope", rope_base=cfg.rope_base,
                                                 name="attn", **attn)(
        h, mask, positions=positions, deterministic=deterministic, decode=decode), "ln_attn", "attn_out", "resid_mid")
    if self.cross_attention:
      x = residual(x, lambda h: MultiHeadAttention(name="cross_attn", cross_attention=True, **attn)(
          h, cross_mask, context=context, deterministic=deterministic, decode=decode), "ln_cross", "cross_attn_out",
                   "resid_mid_cross")
    mlp = MLP(cfg.hidden_dim, cfg.activation, cfg.use_bias, 0.0, out_stddev, cfg.dtype, cfg.param_dtype, cfg.precision,
              name="mlp")
    return residual(x, lambda h: mlp(h, deterministic=deterministic), "ln_mlp", "mlp_out", "resid_post")


_REMAT_POLICIES = {
    "full": None,
    "dots": "checkpoint_dots",
    "dots_no_batch": "checkpoint_dots_with_no_batch_dims",
}


class TransformerStack(nn.Module):
  """``num_layers`` blocks in sequence, optionally rematerialised (``cfg.remat``) and scanned (``cfg.scan_layers``)."""
  cfg: TransformerConfig
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x, mask=None, positions=None, context=None, cross_mask=None, deterministic: bool = True,
               decode: bool = False):
    cfg = self.cfg
    block_cls = TransformerBlock
    if cfg.remat != "none":
      policy = _REMAT_POLICIES[cfg.remat]
      block_cls = nn.remat(block_cls, policy=getattr(jax.checkpoint_policies, policy) if policy else None,
                           static_argnums=(6, 7))  # deterministic, decode (counting self)
    if cfg.scan_layers:
      class _Scanned(nn.Module):  # carry form (x, _) for nn.scan
        cfg: TransformerConfig
        cross_attention: bool

        @nn.compact
        def __call__(self, x, mask, positions, context, cross_mask, deterministic, decode):
          return block_cls(self.cfg, self.cross_attention, name="block")(
              x, mask, positions, context, cross_mask, deterministic, decode), None

      scanned = nn.scan(_Scanned, variable_axes={"params": 0, "cache": 0, hooks.INTERMEDIATES: 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast,) * 6, length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.cross_attention, name="layers")(
          x, mask, positions, context, cross_mask, deterministic, decode)
      return x
    for i in range(cfg.num_layers):
      x = block_cls(cfg, self.cross_attention, name=f"block_{i}")(
          x, mask, positions, context, cross_mask, deterministic, decode)
    return x

"""The configuration of every transformer in tfjax: :class:`TransformerConfig`, a frozen dataclass whose defaults are
the shipped GPT's (RoPE, no biases, tanh-GELU, causal query blocks of 64), so ``GPT(TransformerConfig(vocab_size=V))``
is the model ``./launch.sh train`` builds by default (see docs/library.md). BERT, the encoder-decoder and the
Hugging Face imports set the fields they differ in; derive variants with ``dataclasses.replace(cfg, ...)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from tfjax.layers.attention import IMPLEMENTATIONS
from tfjax.layers.linear import DENSE_INITS
from tfjax.layers.mlp import ACTIVATIONS

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
  attention_scale: float | None = None  # the scores q·k times this before the softmax; None: 1/√head_dim
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
  # "normal": the above; "fairseq": attention and MLP layers initialised as fairseq's transformer does (xavier-uniform
  # attention projections, query/key/value with gain 1/sqrt(2); PyTorch's default nn.Linear init in the MLP and for
  # the query/key/value biases): with embed_stddev=emb_dim ** -0.5 and embed_scale, fairseq's whole init
  dense_init: str = "normal"
  attention_impl: str = "auto"  # auto | xla | cudnn | reference | flash (no [T, S] pattern: long contexts)
  # >0: queries in blocks that skip keys a static (e.g. causal) mask hides (tfjax.layers.attention.
  # dot_product_attention); 0: one block. 6/6/384 on 2 CPU cores: 16.1 -> 14.7 s/step; contexts <= 64: no-op
  attention_block_size: int = 64
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32
  # the unembedding's output: float32 (default) accumulates the logits in float32 and never rounds them; the compute
  # dtype (bfloat16) rounds them as PyTorch's autocast does, halving the passes over [tokens, V] logits (losses still
  # run in float32: the model returns them widened)
  logits_dtype: Dtype = jnp.float32
  # GPT's training loss: 0 computes the logits [B, T, V] in one piece; > 0 fuses the unembedding with the softmax
  # cross-entropy, this many positions of every row at a time, each chunk's gradients computed in the forward pass
  # (tfjax.layers.unembed_loss): the same loss and gradients without the logits (GPT-2 small's 32 x 1024-token
  # micro-batch: 6.6 GB of float32 logits, 0.8 GB a 128-position chunk). Logits there are float32 (logits_dtype aside)
  loss_chunk_size: int = 0
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
        (self.attention_scale is None or self.attention_scale > 0,
         f"attention_scale must be positive (None: 1/sqrt(head_dim)), got {self.attention_scale}"),
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
        (self.dense_init in DENSE_INITS, f"dense_init must be one of {DENSE_INITS}, got {self.dense_init!r}"),
        (self.sinusoidal_layout in ("interleaved", "halves"),
         f"sinusoidal_layout must be 'interleaved' or 'halves', got {self.sinusoidal_layout!r}"),
        (self.position_offset >= 0, f"position_offset must be >= 0, got {self.position_offset}"),
        (self.loss_chunk_size >= 0, f"loss_chunk_size must be >= 0 (0: the whole logits), got {self.loss_chunk_size}"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(msg)

  @property
  def head_width(self) -> int:
    """``Dh``: each head's query/key/value width."""
    return self.head_dim or self.emb_dim // self.num_heads

  @property
  def score_scale(self) -> float:
    """What the scores ``q·k`` are multiplied by before the softmax: ``attention_scale``, by default ``1/√Dh``."""
    return self.head_width ** -0.5 if self.attention_scale is None else self.attention_scale

  @property
  def hidden_dim(self) -> int:
    return self.mlp_dim or 4 * self.emb_dim

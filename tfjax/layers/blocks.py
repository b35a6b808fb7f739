"""The transformer block and stack shared by every transformer in tfjax (configured by
:class:`tfjax.models.config.TransformerConfig`).

:class:`TransformerBlock` maps the residual stream ``x [B, T, D] -> [B, T, D]``:

pre-LN (GPT-2, default)::                      post-LN (original transformer, BERT)::

    x = x + attn(norm(x))                         x = norm(x + attn(x))
    x = x + cross_attn(norm(x), context)          x = norm(x + cross_attn(x, context))
    x = x + mlp(norm(x))                          x = norm(x + mlp(x))

The cross-attention sub-block exists only when ``cross_attention=True`` (decoder of an encoder-decoder).
:func:`unscan_params` / :func:`scan_params` convert the variables of a scanned stack (``scan_layers=True``) to
per-layer ones and back.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.layers import hooks
from tfjax.layers.attention import MultiHeadAttention
from tfjax.layers.dropout import Dropout
from tfjax.layers.embeddings import TokenEmbedding, Unembed
from tfjax.layers.mlp import MLP
from tfjax.models.config import TransformerConfig


def make_norm(cfg: TransformerConfig, name: str) -> nn.Module:
  """The configured normalisation (flax's LayerNorm or RMSNorm), statistics in float32."""
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      name=name)


def make_token_embedding(cfg: TransformerConfig, name: str | None = None) -> TokenEmbedding:
  """The token embedding of ``cfg`` (its dtypes and matmul precision; rows times √D with ``embed_scale``)."""
  return TokenEmbedding(cfg.vocab_size, cfg.emb_dim, cfg.dtype, cfg.param_dtype, stddev=cfg.embed_stddev,
                        precision=cfg.precision, scale=cfg.emb_dim ** 0.5 if cfg.embed_scale else 1.0,
                        logits_dtype=cfg.logits_dtype, name=name)


def make_unembed(cfg: TransformerConfig, name: str | None = None) -> Unembed:
  """The untied unembedding of ``cfg``: ``[..., D] -> logits [..., V]`` in ``cfg.logits_dtype``."""
  return Unembed(cfg.vocab_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision,
                 logits_dtype=cfg.logits_dtype, name=name)


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
                block_size=cfg.attention_block_size, scale=cfg.attention_scale,
                out_stddev=out_stddev, dtype=cfg.dtype, param_dtype=cfg.param_dtype, precision=cfg.precision,
                dense_init=cfg.dense_init)
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
              dense_init=cfg.dense_init, name="mlp")
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


_BLOCK = re.compile(r"^block_(\d+)$")


def _is_scanned_stack(value: Any) -> bool:
  return isinstance(value, Mapping) and set(value) == {"block"}


def unscan_params(tree: Mapping) -> dict:
  """A scanned stack's variables (``{stack}/layers/block/...``, each with a leading layer axis ``[L, ...]``:
  ``scan_layers=True``) as per-layer ones (``{stack}/block_{l}/...``), the tree the same model with
  ``scan_layers=False`` reads; everything else is kept. Works on any variable collection (params, the KV cache).
  Inverse: :func:`scan_params`."""
  out = {}
  for key, value in tree.items():
    if key == "layers" and _is_scanned_stack(value):
      stacked = value["block"]
      for l in range(jax.tree.leaves(stacked)[0].shape[0]):
        out[f"block_{l}"] = jax.tree.map(lambda x, l=l: x[l], stacked)
    elif isinstance(value, Mapping):
      out[key] = unscan_params(value)
    else:
      out[key] = value
  return out


def _stack(*xs):
  """Host (numpy) arrays stay on the host; anything else is stacked by jax."""
  return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)


def scan_params(tree: Mapping) -> dict:
  """Per-layer variables (``{stack}/block_0 .. block_{L-1}``) stacked into a scanned stack's
  (``{stack}/layers/block``, leading layer axis): the inverse of :func:`unscan_params`. numpy leaves give numpy
  leaves (host parameters stay on the host)."""
  blocks = {int(m.group(1)): value for key, value in tree.items() if (m := _BLOCK.match(str(key)))}
  if blocks and sorted(blocks) != list(range(len(blocks))):
    raise ValueError(f"layers {sorted(blocks)} are not block_0 .. block_{len(blocks) - 1}: cannot stack them")
  out = {key: scan_params(value) if isinstance(value, Mapping) else value
         for key, value in tree.items() if not _BLOCK.match(str(key))}
  if blocks:
    out["layers"] = {"block": jax.tree.map(_stack, *(blocks[l] for l in range(len(blocks))))}
  return out

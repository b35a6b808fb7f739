"""The logit lens: the model's own final norm and unembedding applied to the residual stream after each layer.

``logit_lens(...) [L + 1, B, T, V]``: entry 0 reads the residual stream after the embedding (``block_0/resid_pre``),
entry ``l`` after layer ``l - 1`` (``block_{l-1}/resid_post``); the last entry is the model's own logits. The map from
residual to logits is the model's: ``GPT.unembed`` (``ln_final`` then the unembedding), ``EncoderDecoder.unembed``
(the decoder's ``ln_decoder`` then the unembedding), and for BERT its MLM head (after ``ln_final`` when pre-LN).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfjax.explain.capture import ActivationCache, resolve_stack, run_with_cache
from tfjax.layers.blocks import make_norm, make_token_embedding
from tfjax.models.config import TransformerConfig
from tfjax.models.bert import BERT, MLMHead
from tfjax.models.transformer import EncoderDecoder


class BERTUnembed(nn.Module):
  """BERT's map from its encoder's residual stream ``[..., D]`` to MLM logits ``[..., V]``: ``ln_final`` (pre-LN
  only) and the MLM head, made of BERT's own modules and names, applied to a BERT's ``params``."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, resid: jnp.ndarray) -> jnp.ndarray:
    cfg = self.cfg
    x = make_norm(cfg, "ln_final")(resid) if cfg.pre_ln else resid
    embed = make_token_embedding(cfg, name="embed") if cfg.tie_embeddings else None
    return MLMHead(cfg, name="mlm_head")(x, embed).astype(jnp.float32)


def unembed_residual(model: nn.Module, variables: dict, resid: jax.Array) -> jax.Array:
  """Logits ``[..., V]`` of residual-stream vectors ``resid [..., D]`` through the model's own final norm and
  unembedding (GPT, the encoder-decoder's decoder, BERT's MLM head)."""
  params = variables["params"]
  if isinstance(model, BERT):
    head = {k: params[k] for k in ("ln_final", "embed", "mlm_head") if k in params}
    return BERTUnembed(model.cfg).apply({"params": head}, resid)
  resolve_stack(model)  # a supported model
  return model.apply({"params": params}, resid, method="unembed")


def logit_lens(model: nn.Module, variables: dict, cache_or_inputs: Any, *, method: Any = None,
               **kwargs) -> jax.Array:
  """The logit lens ``[L + 1, B, T, V]`` (float32): the final norm and unembedding applied to the residual stream
  after the embedding and after each of the ``L`` layers (the last entry equals the model's logits).

  Args:
    model: a GPT, BERT or EncoderDecoder (its decoder; the encoder has no unembedding).
    variables: ``{"params": ...}``.
    cache_or_inputs: an :class:`ActivationCache` holding ``block_0/resid_pre`` and every ``block_{l}/resid_post`` of
      the unembedded stack, or the model's inputs (an array, or a tuple of positional inputs, e.g. ``(src,
      src_valid, tgt)``), run with :func:`run_with_cache` (``method``, ``kwargs`` passed on).
  """
  stack = "decoder" if isinstance(model, EncoderDecoder) else resolve_stack(model).name
  if isinstance(cache_or_inputs, ActivationCache):
    cache = cache_or_inputs
  else:
    inputs = cache_or_inputs if isinstance(cache_or_inputs, tuple) else (cache_or_inputs,)
    names = [f"{stack}/block_0/resid_pre", f"{stack}/block_*/resid_post"]
    _, cache = run_with_cache(model, variables, *inputs, names=names, method=method, **kwargs)
  layout = resolve_stack(model, stack)
  resid = cache.accumulated_resid(stack)
  if resid.shape[0] != layout.num_layers + 1:
    raise ValueError(f"the cache holds resid_post of {resid.shape[0] - 1} layers of {stack!r}; the model has "
                     f"{layout.num_layers}")
  return unembed_residual(model, variables, resid)


def lens_kl(lens_logits: jax.Array) -> jax.Array:
  """``KL(final ‖ layer l)`` (nats) per layer and token, ``[L + 1, ...]``, of logit-lens logits ``[L + 1, ..., V]``:
  how far each layer's next-token guess is from the model's final distribution (0 for the last entry)."""
  logp = jax.nn.log_softmax(lens_logits.astype(jnp.float32), axis=-1)
  final = logp[-1]
  return jnp.sum(jnp.exp(final) * (final - logp), axis=-1)

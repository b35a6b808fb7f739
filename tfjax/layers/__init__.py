"""Layers shared by every transformer in tfjax (imported on first use: ``import tfjax.layers`` imports no JAX).

- :mod:`~tfjax.layers.attention`: :func:`dot_product_attention` ``q [B, T, H, Dh], k/v [B, S, K, Dh] -> [B, T, H,
  Dh]`` (reference, XLA, cuDNN, flash; causal query blocks) and :class:`MultiHeadAttention` ``x [B, T, D] -> [B, T,
  D]`` (self / cross, grouped-query, RoPE, KV cache).
- :mod:`~tfjax.layers.flash_attention`: :func:`flash_attention`, the same attention block by block with an online
  softmax, never forming the ``[B, H, T, S]`` pattern (forward or backward).
- :mod:`~tfjax.layers.blocks`: :class:`TransformerConfig`, :class:`TransformerBlock`, :class:`TransformerStack`
  ``[B, T, D] -> [B, T, D]``; :func:`unscan_params` / :func:`scan_params` (scanned layers <-> one tree a layer).
- :mod:`~tfjax.layers.embeddings`: :class:`TokenEmbedding` ``ids [B, T] -> [B, T, D]``, :class:`Unembed`,
  :class:`LearnedPositionalEmbedding`, :func:`sinusoidal_positions`, :func:`apply_rope`.
- :mod:`~tfjax.layers.mlp` (:class:`MLP`), :mod:`~tfjax.layers.linear` (:class:`Dense` with logical axes),
  :mod:`~tfjax.layers.dropout` (:class:`Dropout`), :mod:`~tfjax.layers.masks` (``[B, 1, T, S]`` boolean masks),
  :mod:`~tfjax.layers.hooks` (the observation points of :mod:`tfjax.explain`).
"""

from tfjax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "dot_product_attention": "tfjax.layers.attention:dot_product_attention",
    "reference_attention": "tfjax.layers.attention:reference_attention",
    "flash_attention": "tfjax.layers.flash_attention:flash_attention",
    "MultiHeadAttention": "tfjax.layers.attention:MultiHeadAttention",
    "TransformerConfig": "tfjax.models.config:TransformerConfig",
    "TransformerBlock": "tfjax.layers.blocks:TransformerBlock",
    "TransformerStack": "tfjax.layers.blocks:TransformerStack",
    "make_norm": "tfjax.layers.blocks:make_norm",
    "scan_params": "tfjax.layers.blocks:scan_params",
    "unscan_params": "tfjax.layers.blocks:unscan_params",
    "Dropout": "tfjax.layers.dropout:Dropout",
    "TokenEmbedding": "tfjax.layers.embeddings:TokenEmbedding",
    "Unembed": "tfjax.layers.embeddings:Unembed",
    "LearnedPositionalEmbedding": "tfjax.layers.embeddings:LearnedPositionalEmbedding",
    "sinusoidal_positions": "tfjax.layers.embeddings:sinusoidal_positions",
    "apply_rope": "tfjax.layers.embeddings:apply_rope",
    "Dense": "tfjax.layers.linear:Dense",
    "MLP": "tfjax.layers.mlp:MLP",
    "causal_mask": "tfjax.layers.masks:causal_mask",
    "padding_mask": "tfjax.layers.masks:padding_mask",
    "combine_masks": "tfjax.layers.masks:combine_masks",
})

"""Scaled dot-product attention (reference and fast) and multi-head self-/cross-attention with a KV cache.

Shapes: queries ``q [B, T, H, Dh]``; keys and values ``k, v [B, S, K, Dh]`` with ``K`` key/value heads dividing ``H``
(``K == H``: multi-head; ``1 < K < H``: grouped-query; ``K == 1``: multi-query attention); mask
``[B|1, H|1, T, S]`` boolean, ``True`` = may attend (see :mod:`tfjax.layers.masks`).

The reference path is the textbook computation, step by step::

    scores  = q · kᵀ / √Dh                      [B, H, T, S]
    scores  = where(mask, scores, -inf)          (masked before the softmax)
    pattern = softmax(scores, axis=-1)           the attention pattern: each row sums to 1
    out     = pattern · v                        [B, T, H, Dh]

The fast path calls :func:`jax.nn.dot_product_attention` (XLA, or cuDNN flash attention on GPUs where it applies);
``implementation="auto"`` takes it on GPUs, flash on CPUs for long contexts, and the reference elsewhere. ``"flash"``
(:mod:`tfjax.layers.flash_attention`) computes the same attention block by block without ever forming the pattern,
so its memory grows with the context, not its square, on any backend. All return zeros for a fully masked query row,
never NaN.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.layers import hooks
from tfjax.layers import masks as masks_lib
from tfjax.layers.dropout import dropout
from tfjax.layers.embeddings import apply_rope
from tfjax.layers.linear import DENSE_INITS, Dense, Precision, torch_linear_init, xavier_init

Dtype = Any
Implementation = Literal["reference", "xla", "cudnn", "flash", "auto"]
IMPLEMENTATIONS = ("reference", "xla", "cudnn", "flash", "auto")


def _repeat_kv(x: jnp.ndarray, num_heads: int) -> jnp.ndarray:
  """``[B, S, K, Dh] -> [B, S, H, Dh]`` by repeating each key/value head ``H // K`` times (GQA/MQA)."""
  kv_heads = x.shape[2]
  if num_heads % kv_heads:
    raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={kv_heads}")
  return x if kv_heads == num_heads else jnp.repeat(x, num_heads // kv_heads, axis=2)


def check_qkv(q, k, v=None, mask=None) -> None:
  """Raises a ValueError naming the array when ``q [B, T, H, Dh]``, ``k [B, S, K, Dh]``, ``v [B, S, K, Dv]`` or the
  mask (:func:`tfjax.layers.masks.check_mask`) do not fit together (jax's own errors name an einsum label)."""
  arrays = [("q", q, "[B, T, H, Dh]"), ("k", k, "[B, S, K, Dh]")]
  if v is not None:
    arrays.append(("v", v, "[B, S, K, Dv]"))
  for name, x, axes in arrays:
    if x.ndim != 4:
      raise ValueError(f"attention: {name} must have 4 axes {axes}, got shape {x.shape}")
  if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
    raise ValueError(f"attention: k {k.shape} does not fit q {q.shape}: both need the batch B and the head size Dh")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"attention: q's {q.shape[2]} heads are not a multiple of k's {k.shape[2]} key/value heads")
  if v is not None and v.shape[:3] != k.shape[:3]:
    raise ValueError(f"attention: v {v.shape} does not fit k {k.shape}: both are [B, S, K, ...]")
  if mask is not None:
    masks_lib.check_mask(mask, q.shape[0], q.shape[2], q.shape[1], k.shape[1])


def attention_scores(q: jnp.ndarray, k: jnp.ndarray, mask: jnp.ndarray | None = None,
                     scale: float | None = None, precision: Precision = None) -> jnp.ndarray:
  """The scaled scores ``q·kᵀ/√Dh`` ``[B, H, T, S]`` in float32, masked entries set to -inf (before the softmax).

  ``q [B, T, H, Dh]``, ``k [B, S, K, Dh]`` (each key/value head serves ``H // K`` query heads), ``mask [B|1, H|1, T,
  S]`` boolean (True = may attend).
  """
  check_qkv(q, k, mask=mask)
  num_heads, head_dim = q.shape[2], q.shape[3]
  k = _repeat_kv(k, num_heads)
  scale = head_dim ** -0.5 if scale is None else scale
  scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32, precision=precision) * scale
  return scores if mask is None else jnp.where(mask, scores, -jnp.inf)


def masked_softmax(scores: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """The attention pattern ``[B, H, T, S]`` from masked ``scores [B, H, T, S]``: softmax over keys, 0 at masked keys;
  a row whose keys are all masked gets all zeros instead of NaN."""
  if mask is None:
    return jax.nn.softmax(scores, axis=-1)
  if isinstance(mask, np.ndarray) and mask.any(axis=-1).all():
    # a mask known when tracing (e.g. causal) with no fully masked row: the plain softmax is exact and saves XLA
    # several elementwise passes over [B, H, T, S] (forward and backward)
    return jax.nn.softmax(scores, axis=-1)
  any_valid = jnp.any(mask, axis=-1, keepdims=True)
  row_max = jnp.max(jnp.where(any_valid, scores, 0.0), axis=-1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  exp = jnp.where(mask, jnp.exp(scores - row_max), 0.0)
  denom = jnp.sum(exp, axis=-1, keepdims=True)
  return exp / jnp.where(denom > 0, denom, 1.0)


def attention_pattern(q: jnp.ndarray, k: jnp.ndarray, mask: jnp.ndarray | None = None,
                      scale: float | None = None, precision: Precision = None) -> jnp.ndarray:
  """The attention pattern ``[B, H, T, S]``: softmax over keys of the masked, scaled scores ``q·kᵀ/√Dh``.

  Scores and softmax are computed in float32. Masked entries are set to -inf before the softmax; a row whose keys are
  all masked gets an all-zero pattern instead of NaN.
  """
  return masked_softmax(attention_scores(q, k, mask, scale, precision), mask)


def attend(pattern: jnp.ndarray, v: jnp.ndarray, *, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None, precision: Precision = None, dtype: Dtype | None = None):
  """The weighted sum of values ``pattern · v``: ``[B, H, T, S] x [B, S, K, Dh] -> [B, T, H, Dh]`` (in ``dtype``,
  default ``v``'s), with dropout on the pattern when ``dropout_rate > 0`` and a ``dropout_rng`` is given."""
  if v.ndim != 4 or v.shape[0] != pattern.shape[0] or v.shape[1] != pattern.shape[3]:
    raise ValueError(f"attention: v {v.shape} does not fit the pattern {pattern.shape}: v is [B, S, K, Dv] for a "
                     "pattern [B, H, T, S]")
  weights = pattern
  if dropout_rate > 0.0 and dropout_rng is not None:
    weights = dropout(weights, dropout_rate, dropout_rng)
  v = _repeat_kv(v, pattern.shape[1])
  out = jnp.einsum("bhts,bshd->bthd", weights.astype(v.dtype), v, precision=precision)
  return out.astype(dtype or v.dtype)


def reference_attention(q, k, v, mask=None, *, scale=None, dropout_rate: float = 0.0,
                        dropout_rng: jax.Array | None = None, return_pattern: bool = False,
                        precision: Precision = None):
  """Textbook attention ``[B, T, H, Dh]`` (and the attention pattern ``[B, H, T, S]`` if ``return_pattern``).

  Dropout, when ``dropout_rate > 0`` and a ``dropout_rng`` is given, is applied to the attention pattern.
  ``precision`` is that of both matmuls (scores and the weighted sum of values).
  """
  pattern = attention_pattern(q, k, mask, scale, precision)
  out = attend(pattern, v, dropout_rate=dropout_rate, dropout_rng=dropout_rng, precision=precision, dtype=q.dtype)
  return (out, pattern) if return_pattern else out


def query_blocks(mask, q_len: int, kv_len: int, block_size: int) -> list[tuple[int, int, int, int]] | None:
  """Static block structure of attention under a mask known when tracing (a numpy array).

  Splits the queries into blocks of ``block_size`` and returns, for each, ``(q0, q1, k0, k1)``: the smallest key
  range ``[k0, k1)`` holding every key a query of ``[q0, q1)`` may attend to (in any batch row or head); ``k0 == k1``
  when the whole block is masked. Returns None when there is nothing to skip: no block size, a traced mask, or every
  block seeing every key. Under a causal mask with ``T = S = 256`` and blocks of 64, the blocks see 64, 128, 192 and
  256 keys: 62.5% of the scores of the full ``T x S`` product.
  """
  if block_size <= 0 or not isinstance(mask, np.ndarray) or q_len <= block_size:
    return None
  visible = np.broadcast_to(mask.any(axis=(0, 1)), (q_len, kv_len))  # [T, S]: some row or head may attend
  blocks = []
  for q0 in range(0, q_len, block_size):
    q1 = min(q0 + block_size, q_len)
    keys = np.flatnonzero(visible[q0:q1].any(axis=0))
    k0, k1 = (int(keys[0]), int(keys[-1]) + 1) if keys.size else (0, 0)
    blocks.append((q0, q1, k0, k1))
  if all((k0, k1) == (0, kv_len) for _, _, k0, k1 in blocks):
    return None
  return blocks


def flash_pays_off(q_len: int, kv_len: int) -> bool:
  """Whether ``"auto"`` takes the flash path off GPUs: on CPUs, when the pattern is larger than one of its blocks
  (256 x 256). There it skips the hidden half of a causal pattern and keeps its blocks in cache: the 6/6/384 GPT's
  training step at context 1024 is 1.36x faster than the reference's, in half the temporary memory (``./launch.sh
  bench ab``), and equal at 256. TPUs keep the reference (not measured)."""
  from tfjax.layers.flash_attention import DEFAULT_BLOCK  # pylint: disable=import-outside-toplevel
  return jax.default_backend() == "cpu" and q_len * kv_len > DEFAULT_BLOCK ** 2


def dot_product_attention(q, k, v, mask=None, *, implementation: Implementation = "auto", scale=None,
                          dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None, block_size: int = 0,
                          precision: Precision = None):
  """Attention ``[B, T, H, Dh]`` by the chosen implementation.

  ``"reference"`` is :func:`reference_attention`; ``"xla"``/``"cudnn"`` call :func:`jax.nn.dot_product_attention`
  with that implementation; ``"flash"`` is :func:`tfjax.layers.flash_attention.flash_attention` (blocks of queries
  and keys with an online softmax: no ``[B, H, T, S]`` array in either pass; masked blocks skipped). ``"auto"`` is
  :func:`jax.nn.dot_product_attention` letting JAX choose on GPUs (cuDNN flash attention when it applies), flash on
  CPUs for patterns larger than one block (:func:`flash_pays_off`), and the reference elsewhere: on CPU the
  reference's einsums train the baby GPT
  4-9% faster than ``jax.nn``'s XLA path (6 of 6 alternating pairs of ``bench train --only=baby`` with
  ``--set=model.attention_impl=reference`` or ``=xla``), and on TPUs both are the same XLA einsums. Attention dropout
  (``dropout_rate > 0`` with a key) is available in the reference and flash paths; the others then take the
  reference.

  ``block_size > 0`` with a mask known when tracing (a numpy array, e.g. the causal mask of
  :func:`tfjax.layers.masks.causal_mask_at` for static positions), on the reference path: the queries are processed
  in blocks of ``block_size``, each against only the keys its rows may see (:func:`query_blocks`), so a causal mask
  costs about half the scores. The result is the same up to float rounding (the skipped keys have zero weight);
  attention dropout then draws its bits per block (``fold_in(dropout_rng, block)``).

  The fused paths (``"xla"``, ``"cudnn"``, ``"auto"`` on GPUs) make one call instead: a numpy mask that is exactly
  the causal mask (:func:`is_static_causal`) becomes ``is_causal=True``, which lets cuDNN's flash attention skip the
  masked half itself. ``"auto"`` on a GPU asks for cuDNN for half-precision attention with no mask array (none, or
  causal) and takes XLA otherwise, or where cuDNN refuses the inputs (e.g. a head size it does not support).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")
  check_qkv(q, k, v, mask)
  if implementation == "auto" and jax.default_backend() != "gpu":
    implementation = "flash" if flash_pays_off(q.shape[1], k.shape[1]) else "reference"
  if dropout_rate > 0.0 and dropout_rng is not None and implementation != "flash":
    implementation = "reference"  # the fused paths have no attention dropout
  if implementation == "flash":
    from tfjax.layers.flash_attention import flash_attention  # pylint: disable=import-outside-toplevel
    return flash_attention(q, k, v, mask, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                           precision=precision)
  if implementation != "reference":
    return fused_attention(q, k, v, mask, implementation=implementation, scale=scale, precision=precision)
  blocks = query_blocks(mask, q.shape[1], k.shape[1], block_size)
  if blocks is not None:
    outs = []
    for i, (q0, q1, k0, k1) in enumerate(blocks):
      if k0 == k1:  # every query of the block is fully masked: zeros
        outs.append(jnp.zeros((q.shape[0], q1 - q0) + q.shape[2:], q.dtype))
        continue
      block_mask = mask[:, :, q0:q1, k0:k1] if mask.shape[2] > 1 else mask[:, :, :, k0:k1]
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
      outs.append(dot_product_attention(
          q[:, q0:q1], k[:, k0:k1], v[:, k0:k1], None if block_mask.all() else block_mask,
          implementation=implementation, scale=scale, dropout_rate=dropout_rate, dropout_rng=rng,
          precision=precision))
    return jnp.concatenate(outs, axis=1)
  return reference_attention(q, k, v, mask, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                             precision=precision)


def is_static_causal(mask) -> bool:
  """Whether ``mask`` is known when tracing (a numpy array) and is exactly the causal mask of square attention:
  ``[B|1, H|1, T, T]`` with key ``j`` visible to query ``i`` iff ``j <= i``, in every batch row and head."""
  if not isinstance(mask, np.ndarray) or mask.shape[-1] != mask.shape[-2]:
    return False
  t = mask.shape[-1]
  return bool((mask == np.tril(np.ones((t, t), bool))).all())


def fused_attention(q, k, v, mask=None, *, implementation: Implementation = "auto", scale=None,
                    precision: Precision = None):
  """:func:`jax.nn.dot_product_attention` by ``implementation`` (``"xla"``, ``"cudnn"``, or ``"auto"``: see
  :func:`dot_product_attention`), with a static causal mask passed as ``is_causal``; zeros for fully masked rows."""
  is_causal = is_static_causal(mask)
  call_mask = None if is_causal else mask
  # jax.nn.dot_product_attention takes no precision argument: its XLA einsums follow the default matmul precision
  with (contextlib.nullcontext() if precision is None else
        jax.default_matmul_precision(precision if isinstance(precision, str) else precision.name.lower())):
    attend = functools.partial(jax.nn.dot_product_attention, q, k, v, mask=call_mask, scale=scale,
                               is_causal=is_causal)
    if implementation == "auto":
      out = None
      if call_mask is None and q.dtype in (jnp.bfloat16, jnp.float16):  # cuDNN's flash attention: half precision
        try:
          out = attend(implementation="cudnn")
        except (ValueError, NotImplementedError, RuntimeError, TypeError):  # cuDNN refuses these inputs (traced)
          out = None
      if out is None:
        out = attend(implementation="xla")
    else:
      out = attend(implementation=implementation)
  if mask is not None and not is_causal:  # jax returns the mean of the values for a fully masked row; tfjax: zeros
    any_valid = jnp.any(mask, axis=-1)  # [B|1, H|1, T]
    out = out * jnp.swapaxes(any_valid, 1, 2)[..., None].astype(out.dtype)
  return out


def fairseq_projection_inits(fan_in: int, fan_out: int, gain: float, bias: str) -> dict:
  """``Dense`` initialisers of one projection as fairseq's ``MultiheadAttention`` makes it: the kernel xavier-uniform
  with ``gain``; the bias PyTorch's default (``bias="torch"``, queries, keys, values) or zeros (``"zeros"``, out)."""
  inits = {"kernel_init": xavier_init(fan_in, fan_out, gain)}
  if bias == "torch":
    inits["bias_init"] = torch_linear_init(fan_in)
  return inits


class MultiHeadAttention(nn.Module):
  """Multi-head attention: ``x [B, T, D]`` (queries) attending to ``context [B, S, D]`` (keys/values) -> ``[B, T, D]``.

  Self-attention when ``context`` is None (one fused ``qkv`` projection ``[D, (H + 2K)·Dh]``); cross-attention
  otherwise (``query [D, H·Dh]`` on ``x`` and ``key_value [D, 2K·Dh]`` on ``context``). ``out [H·Dh, D]`` maps the
  heads back to the width.

  With ``decode=True``, self-attention writes its keys and values into a ``cache`` collection
  (``cached_key``/``cached_value [B, max_len, K, Dh]`` and ``cache_index``) and the queries attend to the whole cache:
  the mask must then have ``max_len`` keys. Initialise the cache by calling the module once with ``decode=True`` on
  an input of shape ``[B, max_len]`` under ``init``. Cross-attention (``cross_attention=True``) with ``decode=True``
  keeps the context's keys and values (``cached_context_kv [B, S, 2K·Dh]``): a call with ``context`` projects and
  stores them, a later call with ``context=None`` reuses them, so a decoder step does not re-project the source.

  Observation points (:func:`tfjax.layers.hooks.hook`): ``q``, ``k``, ``v``, ``scores``, ``pattern`` and ``z`` (each
  head's output before ``out``). When ``scores`` or ``pattern`` is recorded or intervened on (or ``return_pattern``),
  the attention is computed by the reference path, which forms the pattern; otherwise by ``implementation``.
  """
  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  use_bias: bool = True
  dropout_rate: float = 0.0
  implementation: Implementation = "auto"
  block_size: int = 0  # queries per block under a static mask (see dot_product_attention); 0: one block
  scale: float | None = None  # the scores q·k times this before the softmax; None: 1/√Dh
  rope: bool = False
  rope_base: float = 10_000.0
  out_stddev: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  cross_attention: bool = False  # keys/values from ``context`` (also when ``context`` is given without it)
  precision: Precision = None  # of every matmul: projections, scores, weighted values
  # "normal": kernels N(0, 0.02) (``out``: N(0, out_stddev)), biases 0; "fairseq": as fairseq's MultiheadAttention,
  # query/key/value kernels xavier-uniform with gain 1/sqrt(2) each (also inside the fused ``qkv``), biases PyTorch's
  # default; ``out`` xavier-uniform, bias 0
  dense_init: str = "normal"

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, context: jnp.ndarray | None = None,
               positions: jnp.ndarray | None = None, deterministic: bool = True, decode: bool = False,
               return_pattern: bool = False):
    width = x.shape[-1]
    heads, kv_heads, head_dim = self._head_sizes(width)
    q_init, kv_init, out_init = self._projection_inits(width, heads * head_dim, kv_heads * head_dim)
    cross = self.cross_attention or context is not None
    if cross:
      q, k, v = self._cross_projections(x, context, decode, heads * head_dim, kv_heads * head_dim, q_init, kv_init)
    else:
      qkv = self._dense((heads + 2 * kv_heads) * head_dim, "qkv", ("embed", "qkv"), **q_init)(x)
      q, k, v = jnp.split(qkv, [heads * head_dim, (heads + kv_heads) * head_dim], axis=-1)
    q = q.reshape(*q.shape[:2], heads, head_dim)
    k = k.reshape(*k.shape[:2], kv_heads, head_dim)
    v = v.reshape(*v.shape[:2], kv_heads, head_dim)

    if self.rope:
      if positions is None:
        raise ValueError("rope=True needs the token positions [B, T]")
      q = apply_rope(q, positions, self.rope_base)
      if not cross:
        k = apply_rope(k, positions, self.rope_base)

    q, k, v = (hooks.hook(self, name, a) for name, a in (("q", q), ("k", k), ("v", v)))
    if decode and not cross:
      k, v = self._update_cache(k, v)

    out, pattern = self._attend_heads(q, k, v, mask, deterministic, return_pattern)
    out = hooks.hook(self, "z", out)
    out = out.reshape(*out.shape[:2], heads * head_dim)
    out = self._dense(width, "out", ("qkv", "embed"), stddev=self.out_stddev, **out_init)(out)
    return (out, pattern) if return_pattern else out

  def _head_sizes(self, width: int) -> tuple[int, int, int]:
    """``(H, K, Dh)``: query heads, key/value heads, head width; a clear error when they do not fit ``width``."""
    heads = self.num_heads
    kv_heads = self.num_kv_heads or heads
    if heads % kv_heads:
      raise ValueError(f"num_heads={heads} must be a multiple of num_kv_heads={kv_heads}")
    if self.head_dim is None and width % heads:
      raise ValueError(f"num_heads={heads} does not divide the width {width}; choose heads dividing it "
                       "or set head_dim explicitly")
    return heads, kv_heads, self.head_dim or width // heads

  def _projection_inits(self, width: int, q_width: int, kv_width: int) -> tuple[dict, dict, dict]:
    """``Dense`` initialisers of the query, key/value and out projections (``{}``: the ``"normal"`` ones). fairseq:
    each projection initialised as its own ``[D, width]`` one (a fused kernel's parts alike)."""
    if self.dense_init not in DENSE_INITS:
      raise ValueError(f"dense_init must be one of {DENSE_INITS}, got {self.dense_init!r}")
    if self.dense_init != "fairseq":
      return {}, {}, {}
    return (fairseq_projection_inits(width, q_width, 2 ** -0.5, "torch"),
            fairseq_projection_inits(width, kv_width, 2 ** -0.5, "torch"),
            fairseq_projection_inits(q_width, width, 1.0, "zeros"))

  def _dense(self, features: int, name: str, axes: tuple[str, str], stddev: float = 0.02, **inits) -> Dense:
    return Dense(features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, stddev=stddev,
                 axes=axes, precision=self.precision, name=name, **inits)

  def _cross_projections(self, x, context, decode: bool, q_width: int, kv_width: int, q_init: dict, kv_init: dict):
    """Cross-attention's ``q [B, T, H·Dh]`` from ``x`` and ``k, v [B, S, K·Dh]`` from ``context`` (or, decoding, from
    the context's cached projection)."""
    q = self._dense(q_width, "query", ("embed", "qkv"), **q_init)(x)
    kv = None if context is None else self._dense(2 * kv_width, "key_value", ("embed", "qkv"), **kv_init)(context)
    if decode:
      kv = self._context_cache(kv)
    elif kv is None:
      raise ValueError("cross-attention needs a context [B, S, D] (context=None only when decoding with a cache "
                       "that an earlier call with the context filled)")
    k, v = jnp.split(kv, 2, axis=-1)
    return q, k, v

  def _attend_heads(self, q, k, v, mask, deterministic: bool, return_pattern: bool):
    """Every head's output ``[B, T, H, Dh]`` and the pattern ``[B, H, T, S]`` (None unless formed). When the pattern
    is asked for (returned, recorded or changed), the reference path forms it explicitly; otherwise
    ``implementation`` computes the attention (and the ``scores``/``pattern`` hooks are told they were skipped)."""
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    heads = q.shape[2]
    if not (return_pattern or hooks.wants(self, "scores") or hooks.wants(self, "pattern")):
      for name in ("scores", "pattern"):
        hooks.skip(self, name, (q.shape[0], heads, q.shape[1], k.shape[1]))
      out = dot_product_attention(q, k, v, mask, implementation=self.implementation, scale=self.scale,
                                  dropout_rate=self.dropout_rate, dropout_rng=dropout_rng,
                                  block_size=self.block_size, precision=self.precision)
      return out, None
    scores = hooks.hook(self, "scores", attention_scores(q, k, mask, self.scale, precision=self.precision))
    pattern = hooks.hook(self, "pattern", masked_softmax(scores, mask))
    out = attend(pattern, v, dropout_rate=self.dropout_rate, dropout_rng=dropout_rng, precision=self.precision,
                 dtype=q.dtype)
    return out, pattern

  def _context_cache(self, kv):
    """Cross-attention while decoding: stores the context's projected ``kv [B, S, 2K·Dh]`` when given, else returns
    the stored one."""
    has = self.has_variable("cache", "cached_context_kv")
    if kv is None:
      if not has:
        raise ValueError("decoding cross-attention with context=None needs the cache filled by a call with the "
                         "context first")
      return self.get_variable("cache", "cached_context_kv")
    if not self.is_initializing():  # an empty cache (from init) has no context yet: the first real call brings it
      self.put_variable("cache", "cached_context_kv", kv)
    return kv

  def _update_cache(self, k, v):
    """Writes ``k, v [B, T, K, Dh]`` at ``cache_index`` and returns the whole cache ``[B, max_len, K, Dh]``."""
    is_initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
    if not is_initialized:  # the init call only creates the (max_len-long) cache
      return k, v
    index = cache_index.value
    k_all = jax.lax.dynamic_update_slice(cached_key.value, k.astype(cached_key.value.dtype), (0, index, 0, 0))
    v_all = jax.lax.dynamic_update_slice(cached_value.value, v.astype(cached_value.value.dtype), (0, index, 0, 0))
    cached_key.value, cached_value.value = k_all, v_all
    cache_index.value = index + k.shape[1]
    return k_all, v_all

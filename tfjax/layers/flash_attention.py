"""Attention that never forms the attention pattern: FlashAttention's online softmax, in pure JAX.

The reference attention (:func:`tfjax.layers.attention.reference_attention`) forms the whole pattern ``[B, H, T, S]``
and keeps it for the backward pass: memory grows with the square of the context. Here the queries are taken in
blocks of ``block_q`` and, for each, the keys and values in blocks of ``block_k``; each query row keeps only its
running maximum score ``m``, the running sum of ``exp(score - m)`` ``l`` and the running weighted sum of values,
rescaled by ``exp(m_old - m_new)`` whenever a larger score arrives (Milakov & Gimelshein 2018; Dao et al. 2022)::

    for each key block j:   s = q_i · k_jᵀ · scale            [B, H, block_q, block_k], masked to -inf
                            m' = max(m, max_j s);  p = exp(s - m')
                            l  = l · exp(m - m') + Σ_j p;  acc = acc · exp(m - m') + p · v_j
    out_i = acc / l;  lse_i = m + log l                        (the log of the softmax's denominator)

The backward pass is FlashAttention-2's: from ``out`` and ``lse`` (kept: ``[B, T, H, Dh]`` and ``[B, H, T]``) it
recomputes each block's ``p = exp(s - lse)`` and accumulates ``dq``, ``dk``, ``dv`` block by block, so neither pass
holds more than one ``[B, H, block_q, block_k]`` block of scores. A block that the mask hides entirely (under a
causal mask: every block above the diagonal) is skipped, in both passes. The result equals the reference up to float
rounding; a query row whose keys are all masked gets zeros, as there.

Shapes: ``q [B, T, H, Dh]``, ``k [B, S, K, Dh]``, ``v [B, S, K, Dv]`` (``K`` key/value heads dividing ``H``), ``mask
[B|1, H|1, T|1, S]`` boolean, True = may attend. Scores and the softmax are float32; ``p`` meets ``v`` in ``v``'s
dtype, as in the reference.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.layers.attention import _repeat_kv, check_qkv
from tfjax.layers.dropout import keep_mask

Precision = Any

DEFAULT_BLOCK = 256  # queries and keys per block (see benchmarks: ``./launch.sh bench attention``)


def _blocks_visible(mask, t_pad: int, s_pad: int, block_q: int, block_k: int, t: int, s: int):
  """``[nq, nk]`` bool: whether any query of block i may attend to any key of block j (in some row or head). A mask
  known when tracing (numpy) gives a numpy table, so hidden blocks are skipped at no cost; a traced one, a traced
  table."""
  nq, nk = t_pad // block_q, s_pad // block_k
  if mask is None:
    return np.ones((nq, nk), bool)
  xp = np if isinstance(mask, np.ndarray) else jnp
  m = mask.any(axis=(0, 1))  # [T|1, S]
  m = xp.broadcast_to(m, (t, s))
  m = xp.pad(m, ((0, t_pad - t), (0, s_pad - s)))
  return m.reshape(nq, block_q, nk, block_k).any(axis=(1, 3))


def _pad_axis(x, axis: int, size: int):
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _block_mask(mask, i, j, block_q: int, block_k: int):
  """The mask's ``[B|1, H|1, block_q|1, block_k]`` block (i, j); its query axis stays 1 when it is broadcast."""
  bq = 1 if mask.shape[2] == 1 else block_q
  qi = 0 if mask.shape[2] == 1 else i * block_q
  return jax.lax.dynamic_slice(mask, (0, 0, qi, j * block_k), (mask.shape[0], mask.shape[1], bq, block_k))


def _scores(q_i, k_j, mask_ij, scale: float, precision):
  s = jnp.einsum("bqhd,bkhd->bhqk", q_i, k_j, preferred_element_type=jnp.float32, precision=precision) * scale
  return s if mask_ij is None else jnp.where(mask_ij, s, -jnp.inf)


def block_keep_mask(rng, i, j, num_key_blocks: int, rate: float, shape: tuple[int, ...]):
  """Attention dropout's keep mask ``[B, H, block_q, block_k]`` of block (i, j): drawn from ``rng`` folded in with
  the block's index ``i * num_key_blocks + j``, so the backward pass draws the same bits again."""
  return keep_mask(jax.random.fold_in(rng, i * num_key_blocks + j), rate, shape)


def _block_keep(rng, i, j, nk: int, rate: float, shape: tuple[int, ...]):
  """Block (i, j)'s keep mask, or None without dropout."""
  return None if rng is None or rate == 0.0 else block_keep_mask(rng, i, j, nk, rate, shape)


def _dropped(x, keep, rate: float):
  """``x`` with the kept entries scaled by 1 / (1 - rate) and the others zeroed; ``x`` itself when ``keep`` is None."""
  return x if keep is None else jnp.where(keep, x * (1.0 / (1.0 - rate)), 0.0)


def _forward(q, k, v, mask, visible, rng, *, scale: float, block_q: int, block_k: int, precision, rate: float):
  """``out [B, Tp, H, Dv]`` and ``lse [B, H, Tp]`` on padded inputs (Tp, Sp multiples of the blocks). Dropout acts on
  the normalised pattern, so the running sum ``l`` takes the undropped ``p`` and the values the dropped one."""
  b, t_pad, h, _ = q.shape
  s_pad, dv = k.shape[1], v.shape[3]
  nq, nk = t_pad // block_q, s_pad // block_k

  def query_block(i):
    q_i = jax.lax.dynamic_slice_in_dim(q, i * block_q, block_q, axis=1)

    def key_block(carry, j):
      m, l, acc = carry

      def update(carry):
        m, l, acc = carry
        k_j = jax.lax.dynamic_slice_in_dim(k, j * block_k, block_k, axis=1)
        v_j = jax.lax.dynamic_slice_in_dim(v, j * block_k, block_k, axis=1)
        s = _scores(q_i, k_j, None if mask is None else _block_mask(mask, i, j, block_q, block_k), scale, precision)
        m_new = jnp.maximum(m, s.max(axis=-1))  # [B, H, block_q]
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with no visible key yet: -inf
        p = jnp.exp(s - m_safe[..., None])
        correction = jnp.exp(m - m_safe)  # exp(-inf) = 0 before the first visible key
        l = l * correction + p.sum(axis=-1)
        keep = _block_keep(rng, i, j, nk, rate, p.shape)
        pv = jnp.einsum("bhqk,bkhd->bqhd", _dropped(p, keep, rate).astype(v.dtype), v_j,
                        preferred_element_type=jnp.float32, precision=precision)
        acc = acc * jnp.swapaxes(correction, 1, 2)[..., None] + pv
        return m_new, l, acc

      carry = jax.lax.cond(visible[i, j], update, lambda c: c, carry)
      return carry, None

    init = (jnp.full((b, h, block_q), -jnp.inf, jnp.float32), jnp.zeros((b, h, block_q), jnp.float32),
            jnp.zeros((b, block_q, h, dv), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nk))
    l_safe = jnp.where(l > 0, l, 1.0)
    out = acc / jnp.swapaxes(l_safe, 1, 2)[..., None]
    lse = jnp.where(l > 0, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(l_safe), 0.0)
    return out.astype(q.dtype), lse

  out, lse = jax.lax.map(query_block, jnp.arange(nq))  # [nq, B, block_q, H, Dv], [nq, B, H, block_q]
  out = jnp.moveaxis(out, 0, 1).reshape(b, t_pad, h, dv)
  lse = jnp.moveaxis(lse, 0, 2).reshape(b, h, t_pad)
  return out, lse


def _backward(q, k, v, mask, visible, rng, out, lse, dout, *, scale: float, block_q: int, block_k: int, precision,
              rate: float):
  """FlashAttention-2's backward: over key blocks (each gives its dk, dv), and within each over query blocks
  (accumulating dq). With dropout, ``rowsum(dout · out)`` is still the softmax's backward term: ``out`` is the
  dropped pattern times the values."""
  s_pad = k.shape[1]
  nq, nk = q.shape[1] // block_q, s_pad // block_k
  # D_i = Σ_d dout · out: the softmax's backward term, one number per query row  [B, H, Tp]
  delta = jnp.einsum("bqhd,bqhd->bhq", dout.astype(jnp.float32), out.astype(jnp.float32))

  def key_block(dq, j):
    k_j = jax.lax.dynamic_slice_in_dim(k, j * block_k, block_k, axis=1)
    v_j = jax.lax.dynamic_slice_in_dim(v, j * block_k, block_k, axis=1)

    def query_block(carry, i):
      def update(carry):
        dq, dk_j, dv_j = carry
        q_i = jax.lax.dynamic_slice_in_dim(q, i * block_q, block_q, axis=1)
        do_i = jax.lax.dynamic_slice_in_dim(dout, i * block_q, block_q, axis=1)
        lse_i = jax.lax.dynamic_slice_in_dim(lse, i * block_q, block_q, axis=2)
        delta_i = jax.lax.dynamic_slice_in_dim(delta, i * block_q, block_q, axis=2)
        s = _scores(q_i, k_j, None if mask is None else _block_mask(mask, i, j, block_q, block_k), scale, precision)
        p = jnp.exp(s - lse_i[..., None])  # the pattern's block; 0 where masked
        keep = _block_keep(rng, i, j, nk, rate, p.shape)  # the forward's bits, drawn once for both uses
        dv_j = dv_j + jnp.einsum("bhqk,bqhd->bkhd", _dropped(p, keep, rate).astype(dout.dtype), do_i,
                                 preferred_element_type=jnp.float32, precision=precision)
        dp = jnp.einsum("bqhd,bkhd->bhqk", do_i, v_j, preferred_element_type=jnp.float32, precision=precision)
        dp = _dropped(dp, keep, rate)  # the gradient reaches the pattern through the kept entries only
        ds = p * (dp - delta_i[..., None]) * scale  # d(scores before scaling)
        dq_i = jnp.einsum("bhqk,bkhd->bqhd", ds.astype(k.dtype), k_j, preferred_element_type=jnp.float32,
                          precision=precision)
        dq = jax.lax.dynamic_update_slice_in_dim(
            dq, jax.lax.dynamic_slice_in_dim(dq, i * block_q, block_q, axis=1) + dq_i, i * block_q, axis=1)
        dk_j = dk_j + jnp.einsum("bhqk,bqhd->bkhd", ds.astype(q.dtype), q_i, preferred_element_type=jnp.float32,
                                 precision=precision)
        return dq, dk_j, dv_j

      return jax.lax.cond(visible[i, j], update, lambda c: c, carry), None

    init = (dq, jnp.zeros(k_j.shape, jnp.float32), jnp.zeros(v_j.shape, jnp.float32))
    (dq, dk_j, dv_j), _ = jax.lax.scan(query_block, init, jnp.arange(nq))
    return dq, (dk_j, dv_j)

  dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(nk))
  b, _, h, d = k.shape
  dk = jnp.moveaxis(dk, 0, 1).reshape(b, s_pad, h, d)
  dv = jnp.moveaxis(dv, 0, 1).reshape(b, s_pad, h, v.shape[3])
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _flash(q, k, v, mask, visible, rng, scale, block_q, block_k, precision, rate):
  return _forward(q, k, v, mask, visible, rng, scale=scale, block_q=block_q, block_k=block_k, precision=precision,
                  rate=rate)[0]


def _flash_fwd(q, k, v, mask, visible, rng, scale, block_q, block_k, precision, rate):
  out, lse = _forward(q, k, v, mask, visible, rng, scale=scale, block_q=block_q, block_k=block_k,
                      precision=precision, rate=rate)
  return out, (q, k, v, mask, visible, rng, out, lse)


def _flash_bwd(scale, block_q, block_k, precision, rate, residuals, dout):
  q, k, v, mask, visible, rng, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, mask, visible, rng, out, lse, dout, scale=scale, block_q=block_q, block_k=block_k,
                         precision=precision, rate=rate)
  return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, mask=None, *, scale: float | None = None, block_q: int = DEFAULT_BLOCK,
                    block_k: int = DEFAULT_BLOCK, dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                    precision: Precision = None):
  """Attention ``[B, T, H, Dv]`` of ``q [B, T, H, Dh]`` over ``k [B, S, K, Dh]``, ``v [B, S, K, Dv]`` under ``mask
  [B|1, H|1, T|1, S]`` (boolean, True = may attend; None: every key), computed block by block without forming the
  ``[B, H, T, S]`` attention pattern, forward or backward (see the module docstring). ``scale`` defaults to
  ``1/√Dh``. Blocks are cut to the lengths when those are shorter; other lengths are padded up to a multiple of the
  block (the padding is masked and cut off again). Attention dropout (``dropout_rate > 0`` with a ``dropout_rng``)
  zeroes entries of the normalised pattern, block by block (:func:`block_keep_mask`); its bits differ from the
  reference path's, which draws the whole pattern's at once."""
  check_qkv(q, k, v, mask)
  if block_q <= 0 or block_k <= 0:
    raise ValueError(f"flash_attention: block_q and block_k must be positive, got {block_q} and {block_k}")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"flash_attention: dropout_rate must be in [0, 1), got {dropout_rate}")
  rng = dropout_rng if dropout_rate > 0.0 else None
  if rng is not None and not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  b, t, h, dh = q.shape
  s = k.shape[1]
  scale = dh ** -0.5 if scale is None else float(scale)
  block_q, block_k = min(block_q, t), min(block_k, s)
  t_pad, s_pad = -(-t // block_q) * block_q, -(-s // block_k) * block_k
  if s_pad != s and mask is None:  # the padded keys must stay hidden
    mask = np.ones((1, 1, 1, s), bool)
  visible = _blocks_visible(mask, t_pad, s_pad, block_q, block_k, t, s)
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    if mask.shape[2] != 1:
      mask = _pad_axis(mask, 2, t_pad)
    mask = _pad_axis(mask, 3, s_pad)
  k, v = _repeat_kv(k, h), _repeat_kv(v, h)  # its autodiff sums each shared head's gradients
  q, k, v = _pad_axis(q, 1, t_pad), _pad_axis(k, 1, s_pad), _pad_axis(v, 1, s_pad)
  out = _flash(q, k, v, mask, jnp.asarray(visible), rng, scale, block_q, block_k, precision, float(dropout_rate))
  return out[:, :t]

"""Layers against independent references: naive attention, formulas, causality, caches."""

import dataclasses
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfjax.layers import attention, masks
from tfjax.layers.blocks import TransformerStack
from tfjax.models.config import TransformerConfig
from tfjax.layers.embeddings import TokenEmbedding, apply_rope, sinusoidal_positions
from tfjax.models.gpt import GPT

B, T, S, H, DH = 2, 7, 9, 4, 8


def _qkv(kv_heads=H, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k1, (B, T, H, DH)), jax.random.normal(k2, (B, S, kv_heads, DH)),
          jax.random.normal(k3, (B, S, kv_heads, DH)))


def naive_attention(q, k, v, mask):
  """Loop-free numpy attention written independently of the library (float64)."""
  q, k, v, mask = (np.asarray(a, np.float64) if a is not None else None for a in (q, k, v, mask))
  rep = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  mask = np.broadcast_to(mask, scores.shape).astype(bool)
  scores = np.where(mask, scores, -np.inf)
  out = np.zeros(q.shape[:3] + v.shape[3:])
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      for t in range(q.shape[1]):
        row = scores[b, h, t]
        if np.isfinite(row).any():
          p = np.exp(row - row[np.isfinite(row)].max())
          p /= p.sum()
          out[b, t, h] = p @ v[b, :, h]
  return out


def _random_mask(seed=1):
  m = jax.random.bernoulli(jax.random.key(seed), 0.7, (B, 1, T, S))
  return m.at[0, 0, 2].set(False)  # one fully masked row


@pytest.mark.parametrize("impl", ["reference", "xla", "flash"])
@pytest.mark.parametrize("kv_heads", [H, 2, 1])
def test_attention_matches_naive(impl, kv_heads):
  q, k, v = _qkv(kv_heads)
  mask = _random_mask()
  out = attention.dot_product_attention(q, k, v, mask, implementation=impl)
  np.testing.assert_allclose(out, naive_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_reference_and_fast_agree_with_causal_mask():
  q, k, v = _qkv()
  k, v = k[:, :T], v[:, :T]
  mask = masks.causal_mask(T)
  ref = attention.dot_product_attention(q, k, v, mask, implementation="reference")
  fast = attention.dot_product_attention(q, k, v, mask, implementation="xla")
  np.testing.assert_allclose(ref, fast, atol=1e-5)


def test_attention_pattern_rows():
  q, k, _ = _qkv()
  mask = _random_mask()
  pattern = np.asarray(attention.attention_pattern(q, k, mask))
  full = np.broadcast_to(np.asarray(mask), pattern.shape)
  assert np.all(pattern[~full] == 0.0), "masked keys must get zero weight"
  sums = pattern.sum(-1)
  has_key = full.any(-1)
  np.testing.assert_allclose(sums[has_key], 1.0, atol=1e-6)
  assert np.all(sums[~has_key] == 0.0)


@pytest.mark.parametrize("impl", ["reference", "xla", "flash"])
def test_fully_masked_rows_are_zero_not_nan(impl):
  q, k, v = _qkv()
  mask = jnp.zeros((B, 1, T, S), bool)
  out = attention.dot_product_attention(q, k, v, mask, implementation=impl)
  assert np.all(np.asarray(out) == 0.0)
  grads = jax.grad(lambda q: attention.dot_product_attention(q, k, v, mask, implementation=impl).sum())(q)
  assert np.all(np.isfinite(grads))


def test_bad_mask_shape_is_named():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="attention mask"):
    attention.dot_product_attention(q, k, v, jnp.ones((B, 1, T, S + 1), bool))
  with pytest.raises(ValueError, match="boolean"):
    attention.dot_product_attention(q, k, v, jnp.ones((B, 1, T, S), jnp.float32))
  # the pure functions of the notes check too (jax's own error names an einsum label or a broadcast)
  with pytest.raises(ValueError, match="attention mask of shape .* axis 'kv_len'"):
    attention.attention_pattern(q, k, jnp.ones((B, 1, T, S + 1), bool))
  with pytest.raises(ValueError, match="k .* does not fit q .* head size Dh"):
    attention.attention_pattern(q, k[..., :-1])
  with pytest.raises(ValueError, match="v .* does not fit the pattern"):
    attention.reference_attention(q, k, v[:, :-1])
  with pytest.raises(ValueError, match="q must have 4 axes"):
    attention.dot_product_attention(q[0], k, v)
  with pytest.raises(ValueError, match="lengths must be >= 0"):
    masks.causal_mask(-1)


def test_masks():
  np.testing.assert_array_equal(masks.causal_mask(3)[0, 0], np.tril(np.ones((3, 3), bool)))
  np.testing.assert_array_equal(masks.causal_mask(2, 4, offset=2)[0, 0],
                                [[True, True, True, False], [True, True, True, True]])
  valid = jnp.array([[True, True, False]])
  pm = masks.padding_mask(valid)
  np.testing.assert_array_equal(pm[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
  both = masks.combine_masks(masks.causal_mask(3), pm)
  np.testing.assert_array_equal(both[0, 0], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])


def test_sinusoidal_formula():
  d, pos = 16, np.arange(50)
  pe = np.asarray(sinusoidal_positions(jnp.asarray(pos), d))
  for p in (0, 1, 17, 49):
    for i in range(d // 2):
      angle = p / 10000 ** (2 * i / d)
      assert pe[p, 2 * i] == pytest.approx(np.sin(angle), abs=1e-5)
      assert pe[p, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-5)


def test_rope_scores_depend_only_on_offset():
  kq, kk = jax.random.split(jax.random.key(3))
  q = jax.random.normal(kq, (1, 1, 1, DH))
  k = jax.random.normal(kk, (1, 1, 1, DH))

  def score(pq, pk):
    rq = apply_rope(q, jnp.array([[pq]]))
    rk = apply_rope(k, jnp.array([[pk]]))
    return float(jnp.sum(rq * rk))

  for offset in (0, 3, 11):
    s = [score(p + offset, p) for p in (0, 5, 40, 123)]
    np.testing.assert_allclose(s, s[0], rtol=1e-4, atol=1e-4)
  assert abs(score(3, 0) - score(0, 0)) > 1e-3, "rotation must change the score"
  assert float(jnp.linalg.norm(apply_rope(q, jnp.array([[7]])))) == pytest.approx(float(jnp.linalg.norm(q)), 1e-5)


def test_gqa_with_all_kv_heads_equals_mha():
  x = jax.random.normal(jax.random.key(0), (B, T, 32))
  mha = attention.MultiHeadAttention(num_heads=4)
  gqa = attention.MultiHeadAttention(num_heads=4, num_kv_heads=4)
  params = mha.init(jax.random.key(1), x)
  np.testing.assert_array_equal(mha.apply(params, x), gqa.apply(params, x))


def test_gqa_equals_mha_with_repeated_kv_weights():
  width, heads, kv = 32, 4, 2
  dh = width // heads
  x = jax.random.normal(jax.random.key(0), (B, T, width))
  gqa = attention.MultiHeadAttention(num_heads=heads, num_kv_heads=kv)
  p = nn.unbox(gqa.init(jax.random.key(1), x))["params"]
  w, bias = p["qkv"]["kernel"], p["qkv"]["bias"]
  def expand(a):  # [.., (H + 2K)·Dh] -> [.., 3H·Dh] with each kv head repeated H/K times
    qpart, kpart, vpart = jnp.split(a, [heads * dh, (heads + kv) * dh], axis=-1)
    rep = lambda z: jnp.repeat(z.reshape(*z.shape[:-1], kv, dh), heads // kv, axis=-2).reshape(*z.shape[:-1], -1)
    return jnp.concatenate([qpart, rep(kpart), rep(vpart)], axis=-1)
  mha_params = {"qkv": {"kernel": expand(w), "bias": expand(bias)}, "out": p["out"]}
  mha = attention.MultiHeadAttention(num_heads=heads)
  mask = masks.causal_mask(T)
  np.testing.assert_allclose(gqa.apply({"params": p}, x, mask), mha.apply({"params": mha_params}, x, mask),
                             atol=1e-5)


def test_cross_attention_ignores_masked_context():
  x = jax.random.normal(jax.random.key(0), (B, T, 32))
  ctx = jax.random.normal(jax.random.key(1), (B, S, 32))
  mha = attention.MultiHeadAttention(num_heads=4)
  params = mha.init(jax.random.key(2), x, context=ctx)
  valid = jnp.arange(S)[None, :] < jnp.array([[5], [9]])
  cmask = masks.padding_mask(jnp.ones((B, T), bool), valid)
  out = mha.apply(params, x, cmask, context=ctx)
  ctx2 = ctx.at[0, 5:].set(100.0)  # change only masked context positions of sequence 0
  np.testing.assert_allclose(out, mha.apply(params, x, cmask, context=ctx2), atol=1e-6)
  assert out.shape == (B, T, 32)
  _, pattern = mha.apply(params, x, cmask, context=ctx, return_pattern=True)
  assert pattern.shape == (B, 4, T, S)
  assert float(jnp.abs(pattern[0, :, :, 5:]).max()) == 0.0


def test_heads_must_divide_width():
  with pytest.raises(ValueError, match="does not divide"):
    TransformerConfig(vocab_size=10, num_heads=5, emb_dim=32)
  with pytest.raises(ValueError, match="does not divide"):
    attention.MultiHeadAttention(num_heads=5).init(jax.random.key(0), jnp.ones((1, 3, 32)))
  with pytest.raises(ValueError, match="num_kv_heads"):
    TransformerConfig(vocab_size=10, num_heads=4, num_kv_heads=3, emb_dim=32)


CFG = TransformerConfig(vocab_size=50, num_layers=2, num_heads=4, emb_dim=32, max_len=16)


@pytest.mark.parametrize("positional", ["learned", "rope", "sinusoidal"])
def test_changing_a_later_token_changes_no_earlier_logit(positional):
  model = GPT(dataclasses.replace(CFG, positional=positional))
  ids = jax.random.randint(jax.random.key(0), (2, 12), 0, 50)
  params = model.init(jax.random.key(1), ids)
  base = model.apply(params, ids)
  changed = model.apply(params, ids.at[:, 8].set((ids[:, 8] + 1) % 50))
  np.testing.assert_array_equal(base[:, :8], changed[:, :8])
  assert float(jnp.abs(base[:, 8:] - changed[:, 8:]).max()) > 1e-4


def test_gradients_to_later_positions_are_zero():
  stack = TransformerStack(CFG)
  x = jax.random.normal(jax.random.key(0), (1, 10, 32))
  mask = masks.causal_mask(10)
  params = stack.init(jax.random.key(1), x, mask)
  grad_at = jax.jit(jax.grad(lambda x, t: stack.apply(params, x, mask)[0, t].sum()))  # one program for every t
  for t in (0, 4, 9):
    g = grad_at(x, t)
    assert float(jnp.abs(g[0, t + 1:]).max(initial=0.0)) == 0.0
    assert float(jnp.abs(g[0, :t + 1]).max()) > 0.0


def test_sequence_longer_than_context_window():
  model = GPT(CFG)
  with pytest.raises(ValueError, match="context window"):
    model.init(jax.random.key(0), jnp.zeros((1, 17), jnp.int32))


def test_token_ids_out_of_range():
  model = GPT(CFG)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  for bad in (50, -1):
    with pytest.raises(ValueError, match="out of range"):
      model.apply(params, jnp.array([[1, 2, bad, 3]]))


@pytest.mark.parametrize("positional", ["learned", "rope"])
@pytest.mark.parametrize("kv_heads", [0, 2])
def test_kv_cache_decode_equals_full_forward(positional, kv_heads):
  cfg = dataclasses.replace(CFG, positional=positional, num_kv_heads=kv_heads or None)
  model = GPT(cfg)
  ids = jax.random.randint(jax.random.key(0), (2, 16), 0, 50)
  params = model.init(jax.random.key(1), ids)["params"]
  full = model.apply({"params": params}, ids)
  from tfjax.models.gpt import init_cache
  cache = init_cache(model, 2)
  # prefill 5 tokens, then one at a time
  logits, v = model.apply({"params": params, "cache": cache}, ids[:, :5], positions=jnp.tile(jnp.arange(5), (2, 1)),
                          decode=True, mutable=["cache"])
  outs = [logits]
  cache = v["cache"]
  for t in range(5, 16):
    logits, v = model.apply({"params": params, "cache": cache}, ids[:, t:t + 1], positions=jnp.full((2, 1), t),
                            decode=True, mutable=["cache"])
    cache = v["cache"]
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5, rtol=1e-5)


# --- dropout ---------------------------------------------------------------------------------------------------------

def test_random_bits_equal_jax_random_bits():
  from tfjax.layers.dropout import random_bits
  for seed, shape in ((0, (7,)), (3, (4, 5, 6)), (123, (2, 3, 64, 64))):
    key = jax.random.key(seed)
    np.testing.assert_array_equal(np.asarray(jax.jit(random_bits, static_argnums=1)(key, shape)),
                                  np.asarray(jax.random.bits(key, shape, jnp.uint32)))
  raw = jax.random.key_data(jax.random.key(5))  # raw uint32[2] keys work too
  np.testing.assert_array_equal(np.asarray(random_bits(raw, (9,))),
                                np.asarray(jax.random.bits(jax.random.key(5), (9,), jnp.uint32)))


def test_dropout_keeps_expected_fraction_and_scales():
  from tfjax.layers.dropout import Dropout, dropout
  x = jnp.ones((200, 500))
  for rate in (0.1, 0.5, 0.9):
    y = np.asarray(dropout(x, rate, jax.random.key(1)))
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / x.size)
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - rate), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.02  # unbiased
  np.testing.assert_array_equal(np.asarray(dropout(x, 1.0, jax.random.key(0))), 0.0)
  np.testing.assert_array_equal(np.asarray(dropout(x, 0.3, jax.random.key(0), deterministic=True)), 1.0)
  a, b = dropout(x, 0.5, jax.random.key(2)), dropout(x, 0.5, jax.random.key(3))
  assert 0.4 < float(jnp.mean((a != 0) == (b != 0))) < 0.6  # independent masks for different keys
  m = Dropout(0.5)
  y = m.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(4)})
  assert set(np.unique(np.asarray(y))) == {0.0, 2.0}
  np.testing.assert_array_equal(np.asarray(y), np.asarray(m.apply({}, x, False, rngs={"dropout": jax.random.key(4)})))
  np.testing.assert_array_equal(np.asarray(m.apply({}, x, deterministic=True)), 1.0)
  with pytest.raises(ValueError, match="dropout rate"):
    dropout(x, 1.5, jax.random.key(0))


def test_rope_static_positions_equal_traced_positions():
  x = jax.random.normal(jax.random.key(0), (3, 16, 2, 8))
  pos = np.broadcast_to(np.arange(16, dtype=np.int32), (3, 16))
  static = apply_rope(x, pos)
  traced = jax.jit(apply_rope)(x, jnp.asarray(pos))
  np.testing.assert_allclose(np.asarray(static), np.asarray(traced), atol=1e-6)
  shifted = np.arange(48, dtype=np.int32).reshape(3, 16)  # different rows
  np.testing.assert_allclose(np.asarray(apply_rope(x, shifted)),
                             np.asarray(jax.jit(apply_rope)(x, jnp.asarray(shifted))),
                             atol=1e-5)


def test_query_blocks_of_a_causal_mask():
  mask = masks.causal_mask_at(np.broadcast_to(np.arange(8, dtype=np.int32), (2, 8)), 8)
  assert isinstance(mask, np.ndarray) and mask.shape == (1, 1, 8, 8)  # static positions: static mask
  assert attention.query_blocks(mask, 8, 8, 3) == [(0, 3, 0, 3), (3, 6, 0, 6), (6, 8, 0, 8)]
  assert attention.query_blocks(np.ones((1, 1, 8, 8), bool), 8, 8, 3) is None  # nothing to skip
  assert attention.query_blocks(jnp.asarray(mask), 8, 8, 3) is None  # a traced/device mask: no blocks


def test_static_mask_softmax_equals_traced_mask_path():
  """A numpy mask with no fully masked row takes a plain softmax; it equals the general (traced-mask) path and the
  naive float64 attention, values and gradients."""
  q, k, v = _qkv()
  k, v = k[:, :T], v[:, :T]
  mask = masks.causal_mask_at(np.broadcast_to(np.arange(T), (B, T)), T)
  assert isinstance(mask, np.ndarray) and mask.any(axis=-1).all()

  def loss(q, k, v, m):
    o = attention.reference_attention(q, k, v, m)
    return jnp.sum(o * jnp.cos(o))
  np.testing.assert_allclose(attention.reference_attention(q, k, v, mask), naive_attention(q, k, v, mask), atol=1e-5)
  traced = jax.jit(lambda q, k, v, m: (attention.attention_pattern(q, k, m), jax.grad(loss, (0, 1, 2))(q, k, v, m)))
  pattern, grads = traced(q, k, v, jnp.asarray(mask))
  np.testing.assert_allclose(attention.attention_pattern(q, k, mask), pattern, atol=1e-6)
  for g, w in zip(jax.grad(loss, (0, 1, 2))(q, k, v, mask), grads):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_static_causal_mask_becomes_is_causal_on_the_fused_path():
  """A numpy causal mask goes to jax.nn as ``is_causal`` (cuDNN's flash path on GPUs): same values and gradients as
  the naive computation; masks that are not exactly causal keep the mask array."""
  q, k, v = _qkv()
  k, v = k[:, :T], v[:, :T]
  mask = masks.causal_mask_at(np.broadcast_to(np.arange(T), (B, T)), T)
  assert attention.is_static_causal(mask)
  assert not attention.is_static_causal(jnp.asarray(mask))  # traced: not known when tracing
  assert not attention.is_static_causal(masks.causal_mask_at(np.arange(T)[None] + 1, T + 1))  # a cache offset
  padded = mask & (np.arange(T)[None, None, None, :] < T - 2)  # causal, the last two keys hidden
  assert not attention.is_static_causal(padded)
  calls = []
  real = jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    calls.append((kwargs["mask"] is None, kwargs["is_causal"]))
    return real(*args, **kwargs)
  with mock.patch.object(jax.nn, "dot_product_attention", spy):
    out = attention.dot_product_attention(q, k, v, mask, implementation="xla", block_size=3)
    padded_out = attention.dot_product_attention(q, k, v, padded, implementation="xla")
  assert calls == [(True, True), (False, False)]
  np.testing.assert_allclose(out, naive_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(padded_out, naive_attention(q, k, v, padded), atol=1e-5, rtol=1e-5)
  loss = lambda impl: lambda q: jnp.sum(jnp.cos(attention.dot_product_attention(q, k, v, mask, implementation=impl)))
  np.testing.assert_allclose(jax.grad(loss("xla"))(q), jax.grad(loss("reference"))(q), atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs an NVIDIA GPU")
def test_auto_takes_cudnn_flash_attention_on_gpu_for_bfloat16_causal():
  """On a GPU, ``"auto"`` runs bfloat16 causal attention as cuDNN's fused kernel, forward and backward, and agrees
  with the reference (float32 inputs and padded masks take XLA)."""
  shape = (2, 128, 4, 64)
  q, k, v = (jax.random.normal(jax.random.key(i), shape, jnp.bfloat16) for i in range(3))
  mask = masks.causal_mask_at(np.broadcast_to(np.arange(128), (2, 128)), 128)
  loss = lambda impl: lambda q, k, v: jnp.sum(
      attention.dot_product_attention(q, k, v, mask, implementation=impl).astype(jnp.float32) ** 2)
  hlo = jax.jit(jax.grad(loss("auto"))).lower(q, k, v).compile().as_text()
  assert "cudnn" in hlo.lower() and "fmha" in hlo.lower(), "auto did not take cuDNN's fused attention"
  ref = attention.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask, implementation="reference")
  out = attention.dot_product_attention(q, k, v, mask, implementation="auto")
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2, rtol=3e-2)
  g = jax.grad(loss("auto"))(q, k, v)
  g_ref = jax.grad(loss("reference"))(*(x.astype(jnp.float32) for x in (q, k, v)))
  np.testing.assert_allclose(np.asarray(g, np.float32), g_ref, atol=0.25, rtol=5e-2)


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("block_size", [2, 3, 5])
def test_blocked_attention_equals_naive_and_unblocked(impl, block_size):
  """Query blocks that skip hidden keys give the naive result, values and gradients, under causal + padding masks."""
  q, k, v = _qkv()
  k, v = k[:, :T], v[:, :T]
  valid = np.ones((B, T), bool)
  valid[1, 5:] = False  # right padding in row 1: its last queries see nothing
  mask = masks.combine_masks(masks.causal_mask_at(np.broadcast_to(np.arange(T), (B, T)), T),
                             masks.padding_mask(valid))
  mask[0, 0, 6, :] = False  # a fully masked query row
  assert isinstance(mask, np.ndarray) and attention.query_blocks(mask, T, T, block_size) is not None
  out = attention.dot_product_attention(q, k, v, mask, implementation=impl, block_size=block_size)
  np.testing.assert_allclose(out, naive_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)

  def loss(q, k, v, bs):
    o = attention.dot_product_attention(q, k, v, mask, implementation=impl, block_size=bs)
    return jnp.sum(o * jnp.cos(o))
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, block_size)
  want = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, 0)
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_blocked_attention_with_dropout_keeps_the_rate_and_the_causal_structure():
  q, k, v = _qkv()
  k, v = k[:, :T], v[:, :T]
  mask = masks.causal_mask_at(np.broadcast_to(np.arange(T), (B, T)), T)
  f = lambda q: attention.dot_product_attention(q, k, v, mask, dropout_rate=0.5, dropout_rng=jax.random.key(3),
                                                block_size=3)
  out = f(q)
  assert out.shape == q.shape and np.all(np.isfinite(out))
  # causality survives blocking: an earlier query's gradient ignores later queries' keys (checked through k)
  g = jax.grad(lambda k: attention.dot_product_attention(q[:, :2], k, v, mask[:, :, :2], dropout_rate=0.5,
                                                         dropout_rng=jax.random.key(3), block_size=1).sum())(k)
  assert np.all(np.asarray(g)[:, 2:] == 0.0)


def test_embed_scale_multiplies_the_lookup_by_sqrt_width_not_the_unembedding():
  from tfjax.models.config import TransformerConfig
  from tfjax.models.gpt import GPT
  ids = jnp.array([[1, 2, 3]], jnp.int32)
  plain = TokenEmbedding(10, 16)
  params = plain.init(jax.random.key(0), ids)
  scaled = TokenEmbedding(10, 16, scale=4.0)
  np.testing.assert_allclose(scaled.apply(params, ids), 4.0 * plain.apply(params, ids), rtol=1e-6)
  x = jax.random.normal(jax.random.key(1), (1, 3, 16))
  np.testing.assert_array_equal(scaled.apply(params, x, method="unembed"), plain.apply(params, x, method="unembed"))
  # in the GPT: the same parameters give different logits, and scaling by sqrt(16) is what embed_scale does
  cfg = TransformerConfig(vocab_size=10, num_layers=1, num_heads=2, emb_dim=16, max_len=8, positional="sinusoidal")
  p = GPT(cfg).init(jax.random.key(0), ids)["params"]
  a = GPT(cfg).apply({"params": p}, ids)
  b = GPT(dataclasses.replace(cfg, embed_scale=True)).apply({"params": p}, ids)
  assert not np.allclose(a, b)


def _dot_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
  """The operand dtypes of every dot_general in a (closed) jaxpr, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found += _dot_operand_dtypes(inner)
  return found


def test_dot_out_returns_float32_and_runs_its_backward_in_the_input_dtype():
  """bfloat16 inputs, float32 logits: the forward equals jnp.dot's float32 accumulation, and both backward matmuls
  take bfloat16 operands (JAX's own rule would run them in float32), with gradients as the float32 computation's."""
  from tfjax.layers.linear import Dense, dot_out
  x = jax.random.normal(jax.random.key(0), (24, 32), jnp.float32)
  w = jax.random.normal(jax.random.key(1), (32, 40), jnp.float32) * 0.2
  c = jax.random.normal(jax.random.key(2), (24, 40), jnp.float32)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  out = dot_out(xb, wb, jnp.float32)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, jnp.dot(xb, wb, preferred_element_type=jnp.float32))

  loss = lambda fn: (lambda a, b: jnp.sum(fn(a, b) * c))  # noqa: E731
  fast = loss(lambda a, b: dot_out(a, b, jnp.float32))
  plain = loss(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  gx, gw = jax.grad(fast, argnums=(0, 1))(xb, wb)
  assert gx.dtype == gw.dtype == jnp.bfloat16
  rx, rw = jax.grad(loss(jnp.dot), argnums=(0, 1))(xb.astype(jnp.float32), wb.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(gx, np.float32), rx, rtol=3e-2, atol=3e-2 * float(jnp.abs(rx).max()))
  np.testing.assert_allclose(np.asarray(gw, np.float32), rw, rtol=3e-2, atol=3e-2 * float(jnp.abs(rw).max()))

  grad_dots = _dot_operand_dtypes(jax.make_jaxpr(jax.grad(fast, argnums=(0, 1)))(xb, wb).jaxpr)
  assert len(grad_dots) == 3 and all(d == ("bfloat16", "bfloat16") for d in grad_dots), grad_dots
  plain_dots = _dot_operand_dtypes(jax.make_jaxpr(jax.grad(plain, argnums=(0, 1)))(xb, wb).jaxpr)
  assert any("float32" in d for d in plain_dots), plain_dots  # what dot_out avoids
  # float32 inputs: plain jnp.dot, the same gradients
  np.testing.assert_array_equal(jax.grad(loss(lambda a, b: dot_out(a, b, jnp.float32)))(x, w),
                                jax.grad(loss(jnp.dot))(x, w))
  # the layers that make float32 logits use it: Dense(out_dtype=float32) and the tied unembedding
  dense = Dense(40, dtype=jnp.bfloat16, out_dtype=jnp.float32)
  params = dense.init(jax.random.key(3), x)
  dots = _dot_operand_dtypes(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(dense.apply(p, x) * c)))(params).jaxpr)
  assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), dots
  emb = TokenEmbedding(40, 32, dtype=jnp.bfloat16)
  params = emb.init(jax.random.key(4), jnp.zeros((1, 2), jnp.int32))
  dots = _dot_operand_dtypes(jax.make_jaxpr(jax.grad(
      lambda p: jnp.sum(emb.apply(p, x, method="unembed") * c)))(params).jaxpr)
  assert dots and all(d == ("bfloat16", "bfloat16") for d in dots), dots


def test_dot_out_forward_mode_and_one_sided_gradients():
  """jax.jvp works through dot_out (its rule is a JVP), agrees with float32, and differentiating one operand only
  adds one matmul of the inputs' dtype."""
  from tfjax.layers.linear import dot_out
  x = jax.random.normal(jax.random.key(0), (8, 16)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (16, 12)).astype(jnp.bfloat16)
  dx = jax.random.normal(jax.random.key(2), (8, 16)).astype(jnp.bfloat16)
  out, tangent = jax.jvp(lambda a: dot_out(a, w, jnp.float32), (x,), (dx,))
  assert out.dtype == tangent.dtype == jnp.float32
  ref = jnp.dot(dx.astype(jnp.float32), w.astype(jnp.float32))
  np.testing.assert_allclose(tangent, ref, rtol=2e-2, atol=2e-2 * float(jnp.abs(ref).max()))
  only_w = jax.make_jaxpr(jax.grad(lambda b: jnp.sum(dot_out(x, b, jnp.float32))))(w).jaxpr
  assert _dot_operand_dtypes(only_w) == [("bfloat16", "bfloat16")] * 2  # the forward and one backward matmul


def test_fairseq_dense_init_gives_each_projection_fairseqs_uniform_bounds():
  """``dense_init="fairseq"`` as fairseq's transformer initialises itself (its MultiheadAttention.reset_parameters;
  nn.Linear's own init for fc1/fc2): each kernel and bias U(±bound) with the bound fairseq's layer of that shape gets,
  the fused ``qkv`` kernel's query, key and value parts each as their own [D, D] projection."""
  from tfjax.models.transformer import EncoderDecoder
  d, f = 128, 256
  cfg = TransformerConfig(vocab_size=50, num_layers=1, num_heads=4, emb_dim=d, mlp_dim=f, max_len=8, pre_ln=False,
                          use_bias=True, positional="sinusoidal", activation="relu", dense_init="fairseq")
  ids = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(EncoderDecoder(cfg).init(jax.random.key(0), ids, ids > 0, ids)["params"])
  xavier = lambda fan_in, fan_out, gain=1.0: gain * np.sqrt(6 / (fan_in + fan_out))  # noqa: E731
  qkv_bound, torch_bias = xavier(d, d, 2 ** -0.5), 1 / np.sqrt(d)
  dec = params["decoder"]["block_0"]
  expected = {  # name: (array, the bound of U(-bound, bound)); zeros where fairseq sets them to 0
      "qkv/kernel": (dec["attn"]["qkv"]["kernel"], qkv_bound),
      "qkv/bias": (dec["attn"]["qkv"]["bias"], torch_bias),
      "out/kernel": (dec["attn"]["out"]["kernel"], xavier(d, d)),
      "cross query/kernel": (dec["cross_attn"]["query"]["kernel"], qkv_bound),
      "cross key_value/kernel": (dec["cross_attn"]["key_value"]["kernel"], qkv_bound),
      "cross key_value/bias": (dec["cross_attn"]["key_value"]["bias"], torch_bias),
      "fc_in/kernel": (dec["mlp"]["fc_in"]["kernel"], 1 / np.sqrt(d)),
      "fc_in/bias": (dec["mlp"]["fc_in"]["bias"], 1 / np.sqrt(d)),
      "fc_out/kernel": (dec["mlp"]["fc_out"]["kernel"], 1 / np.sqrt(f)),
      "fc_out/bias": (dec["mlp"]["fc_out"]["bias"], 1 / np.sqrt(f)),
  }
  for name, (w, bound) in expected.items():
    w = np.asarray(w)
    parts = np.split(w, 3, axis=-1) if name == "qkv/kernel" else [w]
    for part in parts:  # U(-b, b): every value within b, the largest near it, std b / sqrt(3)
      assert np.abs(part).max() <= bound, name
      assert np.abs(part).max() > (0.9 if part.size < 1000 else 0.99) * bound, name
      np.testing.assert_allclose(part.std(), bound / np.sqrt(3), rtol=0.05 if part.size > 1000 else 0.2, err_msg=name)
  np.testing.assert_array_equal(np.asarray(dec["attn"]["out"]["bias"]), 0.0)  # fairseq zeroes out_proj's bias
  # the default init is unchanged: N(0, 0.02) kernels, zero biases
  normal = nn.unbox(EncoderDecoder(dataclasses.replace(cfg, dense_init="normal")).init(
      jax.random.key(0), ids, ids > 0, ids)["params"])["decoder"]["block_0"]
  np.testing.assert_allclose(np.asarray(normal["attn"]["qkv"]["kernel"]).std(), 0.02, rtol=0.05)
  np.testing.assert_array_equal(np.asarray(normal["mlp"]["fc_in"]["bias"]), 0.0)
  with pytest.raises(ValueError, match="dense_init"):
    dataclasses.replace(cfg, dense_init="xavier")


def test_attention_scale_multiplies_the_scores_on_every_path():
  """``TransformerConfig.attention_scale`` replaces 1/√Dh: a GPT with it equals the scores recomputed by hand from its
  captured queries and keys, on the fused path and on the path that forms the pattern; None is 1/√Dh; Hugging Face
  export names it as something it cannot represent; a scale <= 0 is an error."""
  from tfjax.explain import run_with_cache
  from tfjax.hf.common import attention_problems
  cfg = TransformerConfig(vocab_size=11, num_layers=1, num_heads=2, emb_dim=16, max_len=8, attention_scale=0.9)
  model, ids = GPT(cfg), jnp.asarray([[1, 2, 3, 4, 5, 6]])
  params = nn.unbox(model.init(jax.random.key(0), ids)["params"])
  params = jax.tree.map(lambda x: x * 8.0, params)  # large scores: a wrong scale would show
  fused = model.apply({"params": params}, ids)
  logits, cache = run_with_cache(model, {"params": params}, ids, names=["attn/q", "attn/k", "attn/pattern"])
  np.testing.assert_allclose(fused, logits, rtol=2e-5, atol=2e-5)
  q, k = cache["q", 0], cache["k", 0]
  scores = np.einsum("bthd,bshd->bhts", q, k) * 0.9
  scores = np.where(np.tril(np.ones((6, 6), bool)), scores, -np.inf)
  want = np.exp(scores - scores.max(-1, keepdims=True))
  np.testing.assert_allclose(cache["pattern", 0], want / want.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
  default = GPT(dataclasses.replace(cfg, attention_scale=None)).apply({"params": params}, ids)
  np.testing.assert_allclose(GPT(dataclasses.replace(cfg, attention_scale=8 ** -0.5)).apply({"params": params}, ids),
                             default, rtol=1e-6)
  assert not np.allclose(default, fused, atol=1e-3)
  assert cfg.score_scale == 0.9 and dataclasses.replace(cfg, attention_scale=None).score_scale == 8 ** -0.5
  assert any("attention_scale=0.9" in p for p in attention_problems(cfg))
  assert not any("attention_scale" in p for p in attention_problems(dataclasses.replace(cfg, attention_scale=None)))
  with pytest.raises(ValueError, match="attention_scale must be positive"):
    dataclasses.replace(cfg, attention_scale=0.0)

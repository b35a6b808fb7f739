"""Flash attention (blocks and an online softmax, no [T, S] pattern) against the textbook attention and a naive one:
values and gradients under every kind of mask, blocks that do not divide the lengths, shared key/value heads, hidden
blocks skipped, memory that does not grow with the square of the context, and a GPT trained with it."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_layers import naive_attention
from tfjax.layers import masks
from tfjax.layers.attention import reference_attention
from tfjax.layers.flash_attention import flash_attention
from tfjax.models.config import TransformerConfig
from tfjax.models.gpt import GPT


def _qkv(b=2, t=13, s=11, h=4, kv=4, dh=8, dv=None, seed=0, dtype=jnp.float32):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(k1, (b, t, h, dh), dtype), jax.random.normal(k2, (b, s, kv, dh), dtype),
          jax.random.normal(k3, (b, s, kv, dv or dh), dtype), jax.random.normal(k4, (b, t, h, dv or dh), jnp.float32))


def _masks(b, t, s):
  rng = np.random.default_rng(3)
  random = rng.random((b, 1, t, s)) < 0.4
  random[0, 0, 2] = False  # a fully masked query row
  valid = np.ones((b, s), bool)
  valid[1, s - 4:] = False  # row 1's last 4 keys are padding
  return {
      "none": None,
      "causal": masks.causal_mask(t, s),  # numpy: hidden blocks known when tracing
      "padding (traced)": jnp.asarray(masks.padding_mask(np.ones((b, t), bool), valid)),
      "random per head": np.repeat(random, 4, axis=1),
      "random (traced)": jnp.asarray(random),
  }


def _grads(fn, q, k, v, w):
  return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding (traced)", "random per head", "random (traced)"])
@pytest.mark.parametrize("blocks", [(4, 4), (5, 3), (64, 64)])
def test_values_and_gradients_equal_the_reference(mask_kind, blocks):
  """Blocks that divide nothing (13 queries, 11 keys), blocks larger than the lengths, 4 query heads over 2 key/value
  heads, value heads of another size; the output against a naive float64 attention, the gradients of q, k, v against
  the reference attention's."""
  q, k, v, w = _qkv(t=13, s=13 if mask_kind == "causal" else 11, kv=2, dv=6)
  mask = _masks(2, q.shape[1], k.shape[1])[mask_kind]
  flash = jax.jit(lambda q, k, v: flash_attention(q, k, v, mask, block_q=blocks[0], block_k=blocks[1]))
  np.testing.assert_allclose(flash(q, k, v), naive_attention(q, k, v, np.ones((1, 1, 1, 1), bool) if mask is None
                                                             else mask), atol=2e-6, rtol=2e-6)
  want = _grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
  for got, ref in zip(jax.jit(lambda q, k, v: _grads(flash, q, k, v, w))(q, k, v), want):
    np.testing.assert_allclose(got, ref, atol=5e-6, rtol=5e-6)


def test_a_fully_masked_row_is_zero_with_zero_gradients():
  q, k, v, w = _qkv()
  mask = np.ones((2, 1, 13, 11), bool)
  mask[1, 0, 5] = False
  out = flash_attention(q, k, v, mask, block_q=4, block_k=4)
  assert np.all(np.asarray(out[1, 5]) == 0.0)
  dq, dk, dv = _grads(lambda q, k, v: flash_attention(q, k, v, mask, block_q=4, block_k=4), q, k, v, w)
  assert np.all(np.isfinite(dq)) and np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))
  assert np.all(np.asarray(dq[1, 5]) == 0.0)


def test_hidden_blocks_are_never_read():
  """Keys and values of a block that the causal mask hides from a query block are skipped: NaNs planted there (which
  the reference's zero weights still turn into NaN, 0 * NaN) do not reach the earlier queries, forward or backward."""
  q, k, v, w = _qkv(t=16, s=16, h=2, kv=2)
  mask = masks.causal_mask(16)
  k_nan, v_nan = k.at[:, 8:].set(jnp.nan), v.at[:, 8:].set(jnp.nan)
  out = flash_attention(q, k_nan, v_nan, mask, block_q=8, block_k=8)
  np.testing.assert_allclose(out[:, :8], reference_attention(q, k, v, mask)[:, :8], atol=2e-6)
  assert np.all(np.isnan(np.asarray(reference_attention(q, k_nan, v_nan, mask)[:, :8])))
  dq = _grads(lambda q, k, v: flash_attention(q, k, v, mask, block_q=8, block_k=8), q, k_nan, v_nan,
              w.at[:, 8:].set(0.0))[0]
  assert np.all(np.isfinite(np.asarray(dq[:, :8])))


def test_memory_grows_with_the_context_not_its_square():
  """The compiled forward + backward at T = 2048: the reference's temporary memory holds the pattern (and its
  gradient), flash's holds a few blocks: less than a tenth of one [B, H, T, T] float32 pattern."""
  t, h = 2048, 2
  q, k, v, w = _qkv(b=1, t=t, s=t, h=h, kv=h, dh=16)
  mask = masks.causal_mask(t)

  def temp_bytes(fn):
    f = jax.jit(lambda q, k, v, w: _grads(fn, q, k, v, w))
    return f.lower(q, k, v, w).compile().memory_analysis().temp_size_in_bytes

  pattern = h * t * t * 4
  ref = temp_bytes(lambda q, k, v: reference_attention(q, k, v, mask))
  flash = temp_bytes(lambda q, k, v: flash_attention(q, k, v, mask, block_q=256, block_k=256))
  assert ref >= pattern, (ref, pattern)
  assert flash < pattern / 10, (flash, pattern)


def test_bfloat16_inputs_stay_close_to_float32():
  q, k, v, _ = _qkv(dtype=jnp.bfloat16)
  mask = _masks(2, 13, 11)["random (traced)"]
  got = flash_attention(q, k, v, mask, block_q=4, block_k=4)
  assert got.dtype == jnp.bfloat16
  want = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2, rtol=3e-2)


def test_a_gpt_with_flash_attention_trains_as_with_the_reference():
  """``model.attention_impl="flash"``: the same logits and parameter gradients as the model that forms the pattern."""
  cfg = TransformerConfig(vocab_size=17, num_layers=2, num_heads=2, emb_dim=16, max_len=24, attention_impl="reference")
  ids = jax.random.randint(jax.random.key(1), (2, 24), 0, 17)
  params = nn.unbox(GPT(cfg).init(jax.random.key(0), ids)["params"])

  def loss(params, impl):
    logits = GPT(dataclasses.replace(cfg, attention_impl=impl)).apply({"params": params}, ids)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (want, want_g), (got, got_g) = value_and_grad(params, "reference"), value_and_grad(params, "flash")
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g, r in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-5)


def test_bad_blocks_and_shapes_are_named():
  q, k, v, _ = _qkv()
  with pytest.raises(ValueError, match="block_q and block_k must be positive"):
    flash_attention(q, k, v, block_q=0)
  with pytest.raises(ValueError, match="attention mask"):
    flash_attention(q, k, v, np.ones((2, 1, 13, 12), bool))
  with pytest.raises(ValueError, match="attention: k"):
    flash_attention(q, k[..., :4], v)


def test_cached_decoding_with_flash_attention_equals_the_reference_models():
  """The KV cache's traced mask (one query row against the cache) through the flash path: the greedy tokens equal
  those of the model that forms the pattern."""
  from tfjax.generate import generate
  cfg = TransformerConfig(vocab_size=17, num_layers=1, num_heads=2, emb_dim=16, max_len=16, attention_impl="reference")
  prompt = np.asarray([[3, 1, 4, 1, 5]], np.int32)
  params = nn.unbox(GPT(cfg).init(jax.random.key(0), prompt)["params"])
  want = generate(GPT(cfg), params, prompt, 8, jax.random.key(2), temperature=0.0)
  flash = GPT(dataclasses.replace(cfg, attention_impl="flash"))
  np.testing.assert_array_equal(generate(flash, params, prompt, 8, jax.random.key(2), temperature=0.0), want)


def test_attention_dropout_equals_the_pattern_dropped_by_the_same_bits():
  """With dropout, flash equals ``dropout(pattern) · v`` of the reference pattern, dropped by the keep masks of
  :func:`block_keep_mask` laid out block by block, in its values and its gradients (so the backward pass draws the
  forward's bits again); a different key drops other entries; without a key there is no dropout."""
  from tfjax.layers.attention import attention_pattern
  from tfjax.layers.flash_attention import block_keep_mask
  q, k, v, w = _qkv(t=13, s=11, kv=2)
  mask, rate, rng, (bq, bk) = _masks(2, 13, 11)["random (traced)"], 0.3, jax.random.key(7), (4, 4)
  nq, nk = 4, 3  # 13 queries -> 16, 11 keys -> 12
  keep = jnp.concatenate([jnp.concatenate([block_keep_mask(rng, i, j, nk, rate, (2, 4, bq, bk)) for j in range(nk)],
                                          axis=3) for i in range(nq)], axis=2)[:, :, :13, :11]

  def by_hand(q, k, v):
    pattern = attention_pattern(q, k, mask)
    dropped = jnp.where(keep, pattern / (1 - rate), 0.0)
    return jnp.einsum("bhts,bshd->bthd", dropped, jnp.repeat(v, 2, axis=2))

  def flash(q, k, v, key=rng):
    return flash_attention(q, k, v, mask, block_q=bq, block_k=bk, dropout_rate=rate, dropout_rng=key)

  np.testing.assert_allclose(flash(q, k, v), by_hand(q, k, v), atol=2e-6, rtol=2e-6)
  for got, want in zip(jax.jit(lambda q, k, v: _grads(flash, q, k, v, w))(q, k, v), _grads(by_hand, q, k, v, w)):
    np.testing.assert_allclose(got, want, atol=5e-6, rtol=5e-6)
  assert not np.allclose(flash(q, k, v, jax.random.key(8)), flash(q, k, v), atol=1e-3)
  np.testing.assert_allclose(flash_attention(q, k, v, mask, block_q=bq, block_k=bk, dropout_rate=rate),
                             reference_attention(q, k, v, mask), atol=2e-6)
  with pytest.raises(ValueError, match="dropout_rate must be in"):
    flash_attention(q, k, v, dropout_rate=1.0, dropout_rng=rng)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's choice")
def test_auto_takes_flash_on_cpu_once_the_pattern_outgrows_one_block():
  from tfjax.layers.attention import dot_product_attention, flash_pays_off
  assert not flash_pays_off(256, 256) and flash_pays_off(257, 256) and not flash_pays_off(1, 4096)

  def uses_flash(t):
    q, k, v, _ = _qkv(b=1, t=t, s=t, h=1, kv=1, dh=4)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, masks.causal_mask(t)))(q, k, v))
    return "custom_vjp_call" in jaxpr
  assert uses_flash(512) and not uses_flash(64)

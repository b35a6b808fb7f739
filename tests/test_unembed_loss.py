"""The fused unembedding + cross-entropy (tfjax.layers.unembed_loss) against the logits computed whole and scored by
optax: the same loss, argmax count and gradients for every chunking, weights and bias; bfloat16 compute as close to
float32 as the unfused bfloat16 path; no intermediate of the size of the logits; a GPT's loss and gradients either
way. (Training with it under fsdp against one unfused device: tests/test_parallel.py.)"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_lm_config
from tfjax.layers.linear import dot_out
from tfjax.layers.unembed_loss import unembed_cross_entropy
from tfjax.models.config import TransformerConfig
from tfjax.models.gpt import GPT

B, T, D, V = 3, 10, 8, 37


@pytest.fixture(scope="module")
def data():
  k = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(k[0], (B, T, D))
  w = jax.random.normal(k[1], (D, V)) * 0.5
  bias = jax.random.normal(k[2], (V,))
  targets = jax.random.randint(k[3], (B, T), 0, V)
  weights = jax.random.uniform(k[4], (B, T))
  return x, w, bias, targets, weights


def logits_loss(x, w, bias, targets, weights):
  """The reference: all the logits at once, optax's cross-entropy."""
  logits = jnp.einsum("btd,dv->btv", x, w) + bias
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(ce * weights), jnp.sum((jnp.argmax(logits, -1) == targets) * weights)


@pytest.mark.parametrize("chunk_size", [3, 4, 10])  # 3, 4: a shorter last chunk; 10: one chunk
def test_loss_count_and_gradients_equal_the_whole_logits(data, chunk_size):
  x, w, bias, targets, weights = data
  fused = lambda x, w, b, wt: unembed_cross_entropy(x, w, targets, wt, b, chunk_size=chunk_size)  # noqa: E731
  ref = lambda x, w, b, wt: logits_loss(x, w, b, targets, wt)  # noqa: E731
  (loss, hits), (ref_loss, ref_hits) = jax.jit(fused)(*data[:3], weights), ref(*data[:3], weights)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert float(hits) == pytest.approx(float(ref_hits), abs=1e-5)
  grads = jax.jit(jax.grad(lambda *a: fused(*a)[0], argnums=(0, 1, 2, 3)))(x, w, bias, weights)
  ref_grads = jax.grad(lambda *a: ref(*a)[0], argnums=(0, 1, 2, 3))(x, w, bias, weights)
  for name, got, want in zip(("x", "w", "bias", "weights"), grads, ref_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_without_weights_or_bias_every_position_counts_once(data):
  x, w, _, targets, _ = data
  loss, hits = unembed_cross_entropy(x, w, targets, chunk_size=4)
  ref_loss, ref_hits = logits_loss(x, w, jnp.zeros(V), targets, jnp.ones((B, T)))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert float(hits) == float(ref_hits)
  # the loss is a sum: scaling it scales every gradient (the cotangent is applied in the backward pass)
  g1 = jax.jit(jax.grad(lambda x: unembed_cross_entropy(x, w, targets, chunk_size=4)[0]))(x)
  g3 = jax.jit(jax.grad(lambda x: 3.0 * unembed_cross_entropy(x, w, targets, chunk_size=4)[0] / 7.0))(x)
  np.testing.assert_allclose(g3, g1 * 3.0 / 7.0, rtol=1e-6)


def test_bfloat16_compute_is_as_close_to_float32_as_the_unfused_bfloat16_path(data):
  """bfloat16 activations, float32 w: the fused path rounds as dot_out does (float32 logits, bfloat16 cotangent),
  so its distance from the float32 loss and gradients is that of the unfused bfloat16 unembedding."""
  x, w, _, targets, _ = data
  xb = x.astype(jnp.bfloat16)

  def unfused(x, w):
    logits = dot_out(x.reshape(-1, D), w.astype(x.dtype), jnp.float32).reshape(B, T, V)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

  exact_loss, exact = jax.value_and_grad(unfused, argnums=(0, 1))(x, w)
  fused_loss, fused = jax.value_and_grad(lambda x, w: unembed_cross_entropy(x, w, targets, chunk_size=4)[0],
                                         argnums=(0, 1))(xb, w)
  plain_loss, plain = jax.value_and_grad(unfused, argnums=(0, 1))(xb, w)
  assert fused[0].dtype == jnp.bfloat16 and fused[1].dtype == jnp.float32  # each cotangent in its primal's dtype
  np.testing.assert_allclose(fused_loss, plain_loss, rtol=1e-5)  # the same float32 logits of bfloat16 inputs
  for got, ref, want in zip(fused, plain, exact):
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)))
    ref_err = float(jnp.max(jnp.abs(ref.astype(jnp.float32) - want)))
    assert 0 < err <= 1.5 * ref_err + 1e-6, (err, ref_err)


def _largest_vocab_intermediate(fn, *args) -> int:
  """The most elements of any value in ``fn``'s jaxpr (sub-jaxprs included) whose last axis is the vocabulary."""
  biggest = 0

  def walk(jaxpr):
    nonlocal biggest
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        shape = getattr(var.aval, "shape", ())
        if shape and shape[-1] == V:
          biggest = max(biggest, int(np.prod(shape)))
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (tuple, list)) else [param]):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return biggest


def test_no_value_the_size_of_the_logits_exists_in_the_forward_or_backward_pass(data):
  x, w, bias, targets, weights = data
  grad_fused = jax.grad(lambda x, w: unembed_cross_entropy(x, w, targets, weights, bias, chunk_size=4)[0],
                        argnums=(0, 1))
  grad_whole = jax.grad(lambda x, w: logits_loss(x, w, bias, targets, weights)[0], argnums=(0, 1))
  assert _largest_vocab_intermediate(grad_whole, x, w) == B * T * V  # the check sees the logits where they are
  assert _largest_vocab_intermediate(grad_fused, x, w) == B * 4 * V  # one chunk of positions at a time


def test_bad_shapes_are_clear_errors(data):
  x, w, _, targets, _ = data
  with pytest.raises(ValueError, match=r"x must be \[B, T, D\]"):
    unembed_cross_entropy(x[0], w, targets)
  with pytest.raises(ValueError, match=r"w must be \[D, V\]"):
    unembed_cross_entropy(x, w.T, targets)
  with pytest.raises(ValueError, match="weights must be"):
    unembed_cross_entropy(x, w, targets, weights=jnp.ones((B, T + 1)))
  with pytest.raises(ValueError, match="chunk_size"):
    unembed_cross_entropy(x, w, targets, chunk_size=0)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt_cross_entropy_fused_equals_its_logits(tied):
  cfg = TransformerConfig(vocab_size=V, num_layers=2, num_heads=2, emb_dim=16, max_len=12, tie_embeddings=tied)
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, V)
  targets = jnp.roll(ids, -1, axis=1)
  params = nn.unbox(jax.jit(GPT(cfg).init)(jax.random.key(0), ids)["params"])
  logits = jax.jit(GPT(cfg).apply)({"params": params}, ids)
  ref_loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

  def loss(p, chunk):
    model = GPT(dataclasses.replace(cfg, loss_chunk_size=chunk))
    return model.apply({"params": p}, ids, targets, method=GPT.cross_entropy)[0]

  (whole, g_whole), (fused, g_fused) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, c) for c in (0, 5))
  np.testing.assert_allclose(whole, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(fused, ref_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_whole), jax.tree.leaves(g_fused)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_loss_chunk_size_is_a_gpt_key_and_an_error_elsewhere():
  from experiments.configs import bert_wikitext2, translate_multi30k
  from tfjax import config as config_lib
  from tfjax.tasks import mlm, translate
  with pytest.raises(config_lib.ConfigError, match="loss_chunk_size must be >= 0"):
    config_lib.transformer_config(tiny_lm_config(**{"model.loss_chunk_size": -1}).model, V)
  for name, module, build in (("BERT", bert_wikitext2, mlm.build_model),
                              ("the translator", translate_multi30k, translate.make_model)):
    config = module.get_config()
    config.model.loss_chunk_size = 64
    with pytest.raises(config_lib.ConfigError, match=f"is for GPT language models; {name} computes"):
      build(config, 100)

"""Sampling: temperature, top-k, top-p, greedy; cached generation equals full forward passes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfjax.generate import generate, sample_logits
from tfjax.models.config import TransformerConfig
from tfjax.models.gpt import GPT

LOGITS = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))


def _draws(n=4000, **kw):
  keys = jax.random.split(jax.random.key(0), n)
  return np.asarray(jax.vmap(lambda k: sample_logits(LOGITS, k, **kw)[0])(keys))


def test_greedy_is_argmax():
  assert int(sample_logits(LOGITS, jax.random.key(0), temperature=0.0)[0]) == 0
  with pytest.raises(TypeError, match="the logits come first"):  # jax.random's order (key first) by mistake
    sample_logits(jax.random.key(0), LOGITS, temperature=0.0)


def test_temperature_one_matches_softmax():
  freq = np.bincount(_draws(), minlength=4) / 4000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_low_temperature_sharpens():
  freq = np.bincount(_draws(temperature=0.25), minlength=4) / 4000
  p = np.array([0.5, 0.3, 0.15, 0.05]) ** 4
  np.testing.assert_allclose(freq, p / p.sum(), atol=0.03)


def test_top_k_and_top_p_restrict_support():
  assert set(_draws(top_k=2)) == {0, 1}
  assert set(_draws(top_p=0.7)) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
  assert set(_draws(top_p=0.5)) == {0}
  freq = np.bincount(_draws(top_k=2), minlength=4) / 4000
  np.testing.assert_allclose(freq[:2], [0.5 / 0.8, 0.3 / 0.8], atol=0.03)


def test_bad_sampling_arguments():
  with pytest.raises(ValueError, match="temperature"):
    sample_logits(LOGITS, jax.random.key(0), temperature=-1.0)
  with pytest.raises(ValueError, match="top_p"):
    sample_logits(LOGITS, jax.random.key(0), top_p=1.5)


@pytest.fixture(scope="module")
def model_and_params():
  model = GPT(TransformerConfig(vocab_size=40, num_layers=2, num_heads=4, emb_dim=32, max_len=24))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  # sharpen the random model so that greedy decoding is not a constant sequence
  params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
  return model, params


def test_greedy_with_cache_equals_full_forward(model_and_params):
  model, params = model_and_params
  prompt = np.array([[1, 2, 3], [7, 8, 9]])
  cached = generate(model, params, prompt, 20, jax.random.key(1), temperature=0.0)
  # independent reference: argmax of a plain full forward pass, one token at a time
  forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids))  # one shape: [B, max_len], right-padded
  tokens = prompt
  for _ in range(20):
    n = tokens.shape[1]
    padded = np.zeros((2, model.cfg.max_len), np.int32)
    padded[:, :n] = tokens
    logits = forward(params, jnp.asarray(padded))
    tokens = np.concatenate([tokens, np.asarray(jnp.argmax(logits[:, n - 1], -1))[:, None]], axis=1)
  np.testing.assert_array_equal(cached, tokens)
  assert len(set(cached[0, 3:].tolist())) > 2, "degenerate test: greedy output is constant"


def test_sampling_with_and_without_cache_agree(model_and_params):
  model, params = model_and_params
  prompt = np.array([[5, 6]])
  kw = dict(temperature=0.9, top_k=10, top_p=0.95)
  a = generate(model, params, prompt, 15, jax.random.key(3), **kw)
  b = generate(model, params, prompt, 15, jax.random.key(3), use_cache=False, **kw)
  np.testing.assert_array_equal(a, b)


def test_generation_beyond_context_window(model_and_params):
  model, params = model_and_params
  out = generate(model, params, np.array([[1, 2]]), 60, jax.random.key(0), temperature=1.0)
  assert out.shape == (1, 62)
  assert out.min() >= 0 and out.max() < 40


def test_prompt_with_bad_token():
  model, params = GPT(TransformerConfig(vocab_size=40, num_layers=1, num_heads=2, emb_dim=16, max_len=8)), None
  with pytest.raises(ValueError, match="out of range"):
    generate(model, params, np.array([[1, 40]]), 3, jax.random.key(0))

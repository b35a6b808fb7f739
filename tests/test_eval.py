"""Sliding-window evaluation (tfjax.tasks.lm_eval, experiments/eval.py) against direct computations: each token's
negative log-likelihood from its own forward pass over exactly the context the recipe promises it."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from tfjax.data.tokenizers import CharTokenizer
from tfjax.models.gpt import GPT, gpt_config
from tfjax.tasks import lm_eval

HF_GPT2 = ROOT / "tests" / "fixtures" / "hf_gpt2"
TEXT = "Thé quick brown fox jumps över the lazy dog; then it naps. " * 3  # 2-byte characters too


@pytest.fixture(scope="module")
def tiny():
  """A random tiny GPT (context 8) and a character tokenizer of TEXT."""
  tok = CharTokenizer.from_text(TEXT)
  model = GPT(gpt_config(vocab_size=tok.vocab_size, num_layers=2, num_heads=2, emb_dim=16, max_len=8,
                         positional="learned", use_bias=True))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  # scale the logits up so that the loss depends strongly on the context (a random init is nearly uniform)
  params = jax.tree.map(lambda x: x * 4.0, params)
  return model, params, tok


def direct_nats(model, params, tokens, context, stride):
  """Each target j scored alone: one forward pass over tokens[start(j) : j], its last logit, where start(j) is the
  start of the first window reaching j, k = max(0, ceil((j - C) / S)) * S."""
  total = 0.0
  for j in range(1, len(tokens)):
    start = max(0, -(-(j - context) // stride)) * stride
    ctx = jnp.asarray(tokens[start:j], jnp.int32)[None]
    assert 1 <= ctx.shape[1] <= context and ctx.shape[1] >= min(j, context - stride + 1)
    logp = jax.nn.log_softmax(model.apply({"params": params}, ctx)[0, -1])
    total -= float(logp[int(tokens[j])])
  return total


def test_text_shorter_than_context_every_token_with_its_whole_left_context(tiny):
  model, params, tok = tiny
  tokens = tok.encode(TEXT[:7])  # 7 tokens, context 8: one window
  want = 0.0
  for j in range(1, len(tokens)):  # the full left context t_0 .. t_{j-1}
    logp = jax.nn.log_softmax(model.apply({"params": params}, jnp.asarray(tokens[:j])[None])[0, -1])
    want -= float(logp[tokens[j]])
  for stride in (1, 3, 8):
    r = lm_eval.evaluate(model, params, tokens, stride=stride, batch_size=2)
    assert r.scored_tokens == 6 and r.num_windows == 1
    np.testing.assert_allclose(r.nats, want, rtol=1e-5)
    np.testing.assert_allclose(r.loss, want / 6, rtol=1e-5)


@pytest.mark.parametrize("stride,batch_size", [(1, 4), (3, 1), (3, 5), (5, 2), (8, 3)])
def test_sliding_windows_equal_direct_computation(tiny, stride, batch_size):
  model, params, tok = tiny
  tokens = tok.encode(TEXT[:45])
  r = lm_eval.evaluate(model, params, tokens, stride=stride, batch_size=batch_size)
  assert r.scored_tokens == 44
  assert r.num_windows == 1 + math.ceil((44 - 8) / stride)
  np.testing.assert_allclose(r.nats, direct_nats(model, params, tokens, 8, stride), rtol=1e-5)


def test_stride_one_is_full_context_and_longer_context_helps_on_repeated_text(tiny):
  model, params, tok = tiny
  tokens = tok.encode(TEXT[:40])
  # stride 1: every target j > C has exactly the previous C tokens
  want = 0.0
  for j in range(1, len(tokens)):
    ctx = tokens[max(0, j - 8):j]
    want -= float(jax.nn.log_softmax(model.apply({"params": params}, jnp.asarray(ctx)[None])[0, -1])[tokens[j]])
  np.testing.assert_allclose(lm_eval.evaluate(model, params, tokens, stride=1).nats, want, rtol=1e-5)
  # disjoint windows (stride = C) = the model run over consecutive chunks of C inputs
  chunks = 0.0
  for b in range(0, len(tokens) - 1, 8):
    inp, tgt = tokens[b:b + 8][:len(tokens) - 1 - b], tokens[b + 1:b + 9]
    logp = jax.nn.log_softmax(model.apply({"params": params}, jnp.asarray(inp)[None])[0], axis=-1)
    chunks -= float(jnp.sum(jnp.take_along_axis(logp, jnp.asarray(tgt)[:, None], axis=-1)))
  np.testing.assert_allclose(lm_eval.evaluate(model, params, tokens, stride=8).nats, chunks, rtol=1e-5)
  # a shorter context is a different (not equal) computation
  short = lm_eval.evaluate(model, params, tokens, stride=1, context=4).nats
  assert abs(short - want) > 1e-3


def test_compiles_once_for_any_length(tiny):
  model, params, tok = tiny
  lm_eval._batch_nats.clear_cache()
  for n in (5, 30, 61):
    lm_eval.evaluate(model, params, tok.encode(TEXT[:n]), stride=4, batch_size=3)
  assert lm_eval._batch_nats._cache_size() == 1


def test_bits_per_byte_counts_the_utf8_bytes_of_the_scored_text(tiny):
  model, params, tok = tiny
  text = TEXT[:30]
  tokens = tok.encode(text)
  nbytes = lm_eval.count_bytes(tok, tokens[1:])
  assert nbytes == len(text[1:].encode("utf-8")) > len(text) - 1  # 'é' and 'ö' are 2 bytes
  r = lm_eval.evaluate(model, params, tokens, num_bytes=nbytes)
  np.testing.assert_allclose(r.bits_per_byte, r.nats / math.log(2) / len(text[1:].encode("utf-8")))
  np.testing.assert_allclose(r.perplexity, math.exp(r.nats / 29))


def test_byte_level_bpe_byte_counts():
  from tfjax import hf
  tok = hf.load_tokenizer(HF_GPT2)
  text = "Zürich — 3 naïve cafés.\n\nThe end."
  ids = tok.encode(text)
  assert lm_eval.count_bytes(tok, ids) == len(text.encode("utf-8"))
  assert lm_eval.count_bytes(tok, [tok.eos_id] + ids) == len(text.encode("utf-8"))  # special tokens spell nothing
  assert lm_eval.count_bytes(tok, ids, chunk=3) == len(text.encode("utf-8"))


def test_errors(tiny):
  model, params, tok = tiny
  with pytest.raises(ValueError, match="at least 2"):
    lm_eval.evaluate(model, params, tok.encode("T"))
  with pytest.raises(ValueError, match="stride must be in"):
    lm_eval.evaluate(model, params, tok.encode(TEXT), stride=9)
  with pytest.raises(ValueError, match="longer than the model's context"):
    lm_eval.evaluate(model, params, tok.encode(TEXT), context=9)
  with pytest.raises(ValueError, match="outside the model's vocabulary"):
    lm_eval.evaluate(model, params, np.array([1, 2, tok.vocab_size]))

"""``explain positions`` (tfjax.explain.positions): the position vectors are what the model adds to its token rows;
attention by distance against a naive loop and against ``explain attention``'s head summary; the position probe
against a direct ridge fit in numpy, and on streams that do and do not hold the position; every kind of model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hf_bert_with_vocab
from test_explain import FIXTURES, tiny_gpt_subject, tiny_translator_subject
from tfjax.explain import attention as attention_lib
from tfjax.explain import commands
from tfjax.explain import positions as pos
from tfjax.explain.attention import jit_run_with_cache
from tfjax.explain.subjects import Subject


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_position_vectors_are_what_the_model_adds_to_the_token_rows(positional):
  subject = tiny_gpt_subject(positional=positional)
  p = pos.position_vectors(subject)["decoder"]
  ids = jnp.asarray(np.arange(16)[None] % 9)
  _, cache = jit_run_with_cache(subject.model, subject.params, ids, names=("block_0/resid_pre",))
  added = np.asarray(cache["resid_pre", 0])[0] - np.asarray(subject.params["embed"]["embedding"])[np.asarray(ids[0])]
  np.testing.assert_allclose(p[:16], added, atol=1e-6)
  assert pos.position_vectors(tiny_gpt_subject(positional="rope")) == {}


@pytest.mark.parametrize("overrides", [dict(positional="learned", position_offset=2),
                                       dict(positional="sinusoidal", sinusoidal_layout="halves")])
def test_a_translators_position_vectors_one_per_side(overrides):
  from flax import linen as nn
  from tfjax.models.config import TransformerConfig
  from tfjax.models.transformer import EncoderDecoder
  base = tiny_translator_subject()
  model = EncoderDecoder(TransformerConfig(**{**dict(vocab_size=base.cfg.vocab_size, num_layers=1, num_heads=2,
                                                     emb_dim=16, max_len=16), **overrides}))
  src, tgt = jnp.asarray([[3, 4, 5, 6, 7]]), jnp.asarray([[1, 8, 9]])
  params = nn.unbox(model.init(jax.random.key(2), src, jnp.ones(src.shape, bool), tgt)["params"])
  subject = Subject("translator", "t", model, params, base.tokenizer)
  vectors = pos.position_vectors(subject)
  _, cache = jit_run_with_cache(model, params, src, jnp.ones(src.shape, bool), tgt, names=("block_0/resid_pre",))
  table = np.asarray(params["embed"]["embedding"])
  for stack, ids in (("encoder", src), ("decoder", tgt)):
    added = np.asarray(cache["resid_pre", 0, stack])[0] - table[np.asarray(ids[0])]
    np.testing.assert_allclose(vectors[stack][:ids.shape[1]], added, atol=1e-5)
  assert vectors["encoder"].shape == (16, 16)


def test_vector_statistics_on_known_tables():
  table = pos.vector_statistics(np.tile(np.eye(4), (1, 1)))  # four orthogonal positions
  np.testing.assert_allclose(table["cos_by_offset"], [1, 0, 0, 0], atol=1e-12)
  t = np.arange(64)
  line = pos.vector_statistics(np.stack([t, np.ones(64)], -1).astype(float))  # one direction carries t
  assert line["explained"][0] == pytest.approx(1.0)
  np.testing.assert_allclose(np.abs(line["components"][:, 0]), np.abs(t - t.mean()), atol=1e-9)


def _naive_profile(p, valid, max_distance):
  """Mean weight on key t - k over the valid (query, key) pairs, by a Python loop."""
  num_layers, b, h, t, _ = p.shape
  out = np.zeros((num_layers, h, 2 * max_distance + 1))
  for i, k in enumerate(range(-max_distance, max_distance + 1)):
    total, count = np.zeros((num_layers, h)), 0
    for r in range(b):
      for q in range(t):
        s = q - k
        if 0 <= s < t and valid[r, q] and valid[r, s]:
          total += p[:, r, :, q, s]
          count += 1
    out[:, :, i] = total / max(count, 1)
  return out


@pytest.mark.parametrize("causal", [False, True])
def test_attention_by_distance_against_a_naive_loop(causal):
  rng = np.random.default_rng(0)
  p = rng.random((2, 3, 2, 7, 7)).astype(np.float32)
  valid = np.ones((3, 7), bool)
  valid[1, 5:] = False
  terms = jax.device_get(pos._distance_terms(jnp.asarray(p), jnp.asarray(valid), causal, 3))
  np.testing.assert_allclose(terms["sums"] / np.maximum(terms["counts"], 1), _naive_profile(p, valid, 3), rtol=1e-5)
  dist = np.abs(np.arange(7)[:, None] - np.arange(7)[None])
  expect = np.einsum("lbhts,ts,bt->lh", p, dist, valid.astype(float)) / valid.sum()
  np.testing.assert_allclose(terms["distance"] / terms["queries"], expect, rtol=1e-5)
  vis = valid[:, :, None] & valid[:, None, :] & (np.tril(np.ones((7, 7), bool)) if causal else True)
  uniform = [(dist[q] * vis[r, q]).sum() / vis[r, q].sum() for r in range(3) for q in range(7) if valid[r, q]]
  assert terms["uniform"] / terms["queries"] == pytest.approx(np.mean(uniform), rel=1e-6)


def test_the_previous_token_column_is_explain_attentions_previous_token_score():
  subject = tiny_gpt_subject()
  text = "abcdefgh abcdefg"
  stacks = pos.collect(subject, text=text, max_distance=3)["decoder"]
  ids = subject.text_ids(text)[None, :-1]  # eval_batches' inputs
  _, cache = jit_run_with_cache(subject.model, subject.params, jnp.asarray(ids), names=("attn/pattern",))
  for layer in range(2):
    summary = attention_lib.head_summary(cache["pattern", layer], jnp.ones(ids.shape, bool))
    zero = 3
    np.testing.assert_allclose(stacks["profile"][layer, :, zero + 1], summary["previous_token"], rtol=1e-5)
    np.testing.assert_allclose(stacks["profile"][layer, :, zero], summary["diagonal"], rtol=1e-5)
  assert np.all(stacks["profile"][:, :, :3] == 0)  # causal: no weight on later keys


def _direct_ridge_r2(x_fit, y_fit, x_test, y_test, ridge):
  a = np.concatenate([x_fit, np.ones((len(x_fit), 1))], 1)
  lam = ridge * np.trace(x_fit.T @ x_fit) / x_fit.shape[1]
  pen = np.eye(a.shape[1])
  pen[-1, -1] = 0
  w = np.linalg.solve(a.T @ a + lam * pen, a.T @ y_fit)
  pred = np.concatenate([x_test, np.ones((len(x_test), 1))], 1) @ w
  return 1 - np.sum((y_test - pred) ** 2) / np.sum((y_test - y_test.mean()) ** 2)


def test_probe_against_a_direct_ridge_fit_and_on_streams_with_and_without_the_position():
  rng = np.random.default_rng(1)
  b, t, d = 6, 20, 5
  positions = np.broadcast_to(np.arange(t, dtype=float), (b, t))
  noise = rng.normal(size=(b, t, d))
  holds = noise.copy()
  holds[..., 0] += 2.0 * positions  # one direction carries t
  resid = np.stack([noise, holds])  # [2 points, B, T, D]
  valid = np.ones((b, t), bool)
  valid[0, 15:] = False
  fit = np.broadcast_to((np.arange(b) % 2 == 0)[:, None], (b, t))
  terms = jax.device_get({"fit": pos._probe_terms(jnp.asarray(resid, jnp.float32), jnp.asarray(valid & fit)),
                          "test": pos._probe_terms(jnp.asarray(resid, jnp.float32), jnp.asarray(valid & ~fit))})
  probe = pos.probe_from_statistics(terms["fit"], terms["test"], ridge=1e-2)
  for point in range(2):
    x, m_fit, m_test = resid[point], valid & fit, valid & ~fit
    expect = _direct_ridge_r2(x[m_fit], positions[m_fit], x[m_test], positions[m_test], 1e-2)
    assert probe["r2"][point] == pytest.approx(expect, abs=1e-4)
  assert probe["r2"][0] < 0.1 and probe["r2"][1] > 0.95  # noise holds no position; the stream with t does


def _random_rows(monkeypatch, rows=64):
  """The subjects' validation batches: ``rows`` random texts of 15 characters (test subjects have no data)."""
  ids = np.random.default_rng(3).integers(0, 9, size=(rows, 16)).astype(np.int32)
  monkeypatch.setattr(pos.data_lib, "eval_batches",
                      lambda subject, *a, **k: [{"inputs": ids[:32, :-1]}, {"inputs": ids[32:, :-1]}])


def test_rope_holds_no_position_at_the_input_learned_positions_do(monkeypatch):
  """A RoPE GPT adds nothing to its token rows: the probe at the embedding is no better than the mean; learned
  positions (random, untrained) are read from it; the probe is fitted and scored on alternate rows."""
  _random_rows(monkeypatch)
  rope = pos.collect(tiny_gpt_subject(positional="rope", emb_dim=64), max_distance=2)["decoder"]
  # 15 random position rows and 9 token rows in 64 dimensions: nearly orthogonal, so t is linear in the input
  learned = pos.collect(tiny_gpt_subject(positional="learned", emb_dim=64), max_distance=2)["decoder"]
  assert rope["positions_fitted"] == rope["positions_scored"] == 32 * 15
  assert rope["probe"]["r2"][0] < 0.1 < 0.95 < learned["probe"]["r2"][0]
  assert learned["probe"]["rmse"][0] < 1.0  # to within a position of 15


def test_command_on_every_kind_of_model(tmp_path):
  gpt = commands.run_command("positions", str(FIXTURES / "hf_gpt2"), str(tmp_path / "gpt2"))
  assert (tmp_path / "gpt2" / "positions.png").exists() and (tmp_path / "gpt2" / "positions.json").exists()
  assert "decoder linear probe" in gpt["summary"] and gpt["stacks"]["decoder"]["profile"].shape[-1] == 33
  bert = commands.run_command("positions", hf_bert_with_vocab(tmp_path), str(tmp_path / "bert"), max_distance=4)
  assert not bert["stacks"]["encoder"]["causal"] and bert["stacks"]["encoder"]["profile"][:, :, :4].sum() > 0
  out = pos.run(tiny_translator_subject(), str(tmp_path / "tr"), text="a dog runs", target="ein hund rennt")
  assert set(out["stacks"]) == {"encoder", "decoder"} and out["vectors"] == {}  # RoPE: no vectors
  with pytest.raises(commands.SubjectError, match="max_distance must be at least 2"):
    pos.run(tiny_gpt_subject(), str(tmp_path / "x"), max_distance=1)
  one = pos.run(tiny_gpt_subject(), str(tmp_path / "one"), text="abcdefgh")  # one row: no probe, the rest
  assert one["stacks"]["decoder"]["probe"] is None and "none on a single text" in one["summary"]


def test_cli_passes_max_distance_and_checks_it(tmp_path, capsys):
  from experiments import explain as cli
  hf = str(FIXTURES / "hf_gpt2")
  assert cli.main(["positions", hf, f"--out={tmp_path}", "--max_distance=3"]) == 0
  assert "linear probe" in capsys.readouterr().out
  assert len(json.loads((tmp_path / "positions.json").read_text())["stacks"]["decoder"]["offsets"]) == 7
  assert cli.main(["positions", hf, f"--out={tmp_path}", "--max_distance=1"]) == 1
  assert "--max_distance must be at least 2" in capsys.readouterr().err

"""``explain scaled_dot_product``: the measures against direct computations, the random-score argument, the recall
head against hand-computed attention, and the trained-model numbers against q and k recomputed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hf_bert_with_vocab
from test_explain import tiny_gpt_subject, tiny_translator_subject
from tfjax.explain import commands
from tfjax.explain import scaled_dot_product as sdp
from tfjax.explain.capture import run_with_cache
from tfjax.explain.subjects import Subject, SubjectError, load_subject


def _reference_measures(row: np.ndarray) -> tuple[float, float, float]:
  """Entropy share, largest weight and the Frobenius norm of the explicit matrix diag(p) - p pᵀ, of one row of
  visible scores, in float64 numpy."""
  z = np.asarray(row, np.float64)
  p = np.exp(z - z.max())
  p /= p.sum()
  entropy = -np.sum(p * np.log(np.where(p > 0, p, 1.0)))
  return entropy / np.log(len(row)), p.max(), np.linalg.norm(np.diag(p) - np.outer(p, p))


def test_pattern_statistics_against_softmax_and_its_jacobian():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(4, 7)).astype(np.float32) * np.array([[0.1], [1.0], [5.0], [30.0]], np.float32)
  visible = rng.random((4, 7)) < 0.7
  visible[:, :2] = True
  scores_masked = np.where(visible, scores, 123.0)  # what a masked entry holds must not matter
  got = {k: np.asarray(v) for k, v in sdp.pattern_statistics(jnp.asarray(scores_masked), jnp.asarray(visible)).items()}
  for i in range(4):
    ratio, top, jac = _reference_measures(scores[i][visible[i]])
    np.testing.assert_allclose(got["entropy_ratio"][i], ratio, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["max_weight"][i], top, rtol=1e-5)
    np.testing.assert_allclose(got["jacobian_norm"][i], jac, rtol=1e-4, atol=1e-6)
    assert got["num_visible"][i] == visible[i].sum()
    jac_by_autodiff = jax.jacobian(jax.nn.softmax)(jnp.asarray(scores[i][visible[i]]))
    np.testing.assert_allclose(got["jacobian_norm"][i], np.linalg.norm(np.asarray(jac_by_autodiff)), rtol=1e-4,
                               atol=1e-6)
  variance = np.asarray(sdp.row_variance(jnp.asarray(scores_masked), jnp.asarray(visible)))
  np.testing.assert_allclose(variance, [np.var(scores[i][visible[i]]) for i in range(4)], rtol=1e-5)
  # the bounds: uniform -> ratio 1 and sqrt(1/n - 1/n^2); one-hot -> 0; two keys half and half -> 1/2
  edge = sdp.pattern_statistics(jnp.array([[0.0] * 4, [0.0, -1e4, -1e4, -1e4], [0.0, 0.0, -1e4, -1e4]]),
                                jnp.ones((3, 4), bool))
  np.testing.assert_allclose(np.asarray(edge["entropy_ratio"])[:2], [1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(edge["jacobian_norm"]), [np.sqrt(1 / 4 - 1 / 16), 0.0, 0.5], atol=1e-6)
  # a row with one visible key and one with none: zeros, no NaN
  few = sdp.pattern_statistics(jnp.ones((2, 3)), jnp.array([[True, False, False], [False] * 3]))
  for v in few.values():
    assert np.all(np.isfinite(np.asarray(v)))
  np.testing.assert_array_equal(np.asarray(few["entropy_ratio"]), [0.0, 0.0])


def test_random_scores_spread_as_sqrt_head_dim_and_saturate_unscaled():
  """The argument itself: unit-variance q, k give q·k a spread of √Dh; at 1/√Dh the pattern looks the same at every
  width, unscaled it goes one-hot as Dh grows and its Jacobian shrinks."""
  stats = sdp.random_score_statistics(jax.random.key(0), (4, 64, 1024), num_keys=32, num_rows=512)
  np.testing.assert_allclose(stats["spread"], np.sqrt(np.array([4, 64, 1024]) * 31 / 32), rtol=0.04)
  scaled, unscaled = stats["scales"]["1/sqrt(Dh)"], stats["scales"]["1"]
  assert np.ptp(scaled["entropy_ratio"]) < 0.03 and np.ptp(scaled["max_weight"]) < 0.03
  assert np.all(np.diff(unscaled["entropy_ratio"]) < 0) and unscaled["entropy_ratio"][-1] < 0.1
  assert np.all(np.diff(unscaled["max_weight"]) > 0) and unscaled["max_weight"][-1] > 0.85
  assert unscaled["jacobian_norm"][-1] < 0.6 * scaled["jacobian_norm"][-1]
  assert np.all(np.asarray(stats["scales"]["1/Dh"]["entropy_ratio"][1:]) > 0.99)  # nearly uniform


def test_recall_head_attends_as_computed_by_hand():
  """The query's pattern over the pairs is softmax(q·k * scale) from the qkv kernel and the embeddings; ``unit``
  init gives q and k components of variance ~1, ``small`` of variance ~D * 0.02^2."""
  width, dh, n = 32, 16, 6
  model = sdp.RecallHead(num_symbols=20, width=width, head_dim=dh, scale=0.3)
  batch = sdp.recall_batch(jax.random.key(1), 256, n, 20)
  assert np.all(np.asarray(batch["pairs"])[np.arange(256), np.asarray(batch["which"]), 0] == np.asarray(batch["query"]))
  for init, variance in (("unit", 1.0), ("small", width * 0.02 ** 2)):
    params = sdp.init_recall(model, jax.random.key(2), init, n)
    _, pattern = model.apply({"params": params}, batch["pairs"], batch["query"])
    kernel = np.asarray(params["attn"]["qkv"]["kernel"])
    e_key, e_val = np.asarray(params["key_embed"]), np.asarray(params["value_embed"])
    pairs, query = np.asarray(batch["pairs"]), np.asarray(batch["query"])
    x_pairs = (e_key[pairs[..., 0]] + e_val[pairs[..., 1]]) / np.sqrt(2)
    q = e_key[query] @ kernel[:, :dh]
    k = x_pairs @ kernel[:, dh:2 * dh]
    s = np.einsum("bd,bnd->bn", q, k) * 0.3
    want = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(pattern), want / want.sum(-1, keepdims=True), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.var(q), variance, rtol=0.15)
    np.testing.assert_allclose(np.var(k), variance, rtol=0.15)
  with pytest.raises(ValueError, match="init must be one of"):
    sdp.init_recall(model, jax.random.key(2), "xavier", n)


def test_recall_learns_faster_scaled_at_unit_init_and_runs_side_by_side_are_each_their_own():
  """At unit-variance q, k and Dh = 128, the scaled head learns recall in 60 steps and the unscaled one (scores
  spread ~11, a saturated softmax) barely starts; the seeds and (scale, init) pairs run under vmap each give the run
  made alone."""
  kw = dict(steps=60, batch_size=32)
  scaled, unscaled = sdp.train_recall(128, [128 ** -0.5, 1.0], ["unit", "unit"], seeds=(0, 1), **kw)
  assert scaled["loss"].shape == (2, 61) and scaled["steps"] == list(range(61))
  np.testing.assert_allclose(unscaled["score_spread_at_init"], np.sqrt(128), rtol=0.3)
  np.testing.assert_allclose(scaled["score_spread_at_init"], 1.0, rtol=0.3)
  assert np.mean(scaled["loss"]) < np.mean(unscaled["loss"]) - 0.5
  assert np.mean(scaled["key_weight"][:, -1]) > 0.5 > np.mean(unscaled["key_weight"][:, -1])
  (alone,) = sdp.train_recall(128, [128 ** -0.5], ["unit"], seeds=(1,), **kw)
  np.testing.assert_allclose(alone["loss"][0, :20], scaled["loss"][1, :20], rtol=1e-3)
  assert not np.allclose(scaled["loss"][0], scaled["loss"][1])
  assert sdp.steps_to([0, 10, 20], [0.1, 0.95, 0.99], 0.9) == 10 and sdp.steps_to([0], [0.1], 0.9) is None
  with pytest.raises(ValueError, match="pair up"):
    sdp.train_recall(8, [1.0], ["unit", "small"], steps=1)


def _by_hand(subject: Subject, text: str, multiplier: float) -> dict[str, np.ndarray]:
  """Per layer x head of a causal GPT on one text, from its captured q and k: the raw scores' spread, and the measures
  at
  the model's scale times ``multiplier``, over the query rows with at least two keys (reference computations)."""
  ids = jnp.asarray(subject.text_ids(text))[None, :-1]  # the inputs of next-token prediction, as collect reads them
  _, cache = run_with_cache(subject.model, {"params": subject.params}, ids, names=["attn/q", "attn/k"])
  q, k = np.asarray(cache.stack("attn/q")), np.asarray(cache.stack("attn/k"))  # [L, 1, T, H, Dh]
  num_layers, _, t, heads, _ = q.shape
  out = {m: np.zeros((num_layers, heads)) for m in ("spread", "entropy_ratio", "max_weight", "jacobian_norm")}
  for l in range(num_layers):
    for h in range(heads):
      rows = []
      for i in range(1, t):
        raw = k[l, 0, :i + 1, h] @ q[l, 0, i, h]
        rows.append((np.var(raw),) + _reference_measures(raw * subject.cfg.score_scale * multiplier))
      for name, v in zip(out, np.mean(rows, 0)):
        out[name][l, h] = v
  out["spread"] = np.sqrt(out["spread"])  # the root of the rows' mean variance
  return out


def test_collect_on_a_gpt_matches_q_and_k_recomputed_by_hand():
  subject = tiny_gpt_subject()
  subject = Subject("gpt", subject.path, subject.model, jax.tree.map(lambda a: a * 4.0, subject.params),
                    subject.tokenizer)  # weights x4: scores far from 0, so a wrong scale or mask would show
  text = "abc cab bad had"
  found = sdp.collect(subject, text=text)
  assert list(found["attentions"]) == ["decoder/attn"] and found["head_dim"] == 8
  mults = found["multipliers"]
  assert mults[found["trained_index"]] == 1.0
  np.testing.assert_allclose(mults[found["unscaled_index"]], np.sqrt(8))
  a = found["attentions"]["decoder/attn"]
  for index in (found["trained_index"], found["unscaled_index"], 0):
    want = _by_hand(subject, text, mults[index])
    np.testing.assert_allclose(a["spread"], want["spread"], rtol=1e-4)
    np.testing.assert_allclose(a["scaled_spread"], want["spread"] * subject.cfg.score_scale, rtol=1e-4)
    for m in sdp.MEASURES:
      np.testing.assert_allclose(a[m][..., index], want[m], rtol=2e-4, atol=1e-6, err_msg=m)
  assert a["predicted_spread"].shape == a["spread"].shape == (2, 2)


def test_collect_on_a_translator_and_a_bert_ignores_padding(tmp_path):
  found = sdp.collect(tiny_translator_subject(), text="a dog runs")
  assert sorted(found["attentions"]) == ["decoder/attn", "decoder/cross_attn", "encoder/attn"]
  for a in found["attentions"].values():
    assert a["entropy_ratio"].shape == (2, 2, len(found["multipliers"]))
    assert np.all(np.isfinite(a["jacobian_norm"])) and np.all(a["rows"] > 0)
  # a BERT row padded with 4 [PAD]s gives the same numbers as the row alone
  subject = load_subject(hf_bert_with_vocab(tmp_path))
  ids = subject.text_ids("the capital of france is paris .")
  def batch(pad):
    inputs = np.concatenate([ids, np.zeros(pad, ids.dtype)])[None]
    return {"inputs": jnp.asarray(inputs), "attention_mask": jnp.asarray(inputs != 0, jnp.int32),
            "token_type_ids": jnp.zeros_like(jnp.asarray(inputs))}
  mults = (0.5, 1.0, 8.0)
  alone, padded = (jax.device_get(sdp._chunk_terms(subject.model, "bert", subject.params, batch(p), mults,
                                                   subject.cfg.score_scale)) for p in (0, 4))
  for name in ("rows", "variance", "q_mean_square", "k_mean_square", *sdp.MEASURES):
    np.testing.assert_allclose(padded["encoder/attn"][name], alone["encoder/attn"][name], rtol=1e-4, atol=1e-6)


def test_the_command_with_and_without_a_workdir(tmp_path):
  out = commands.run_command("scaled_dot_product", None, str(tmp_path / "alone"), head_dims=[64], steps=8,
                             quick=True)
  assert (tmp_path / "alone" / "scaled_dot_product.png").exists() and len(out["recall"]) == 3 * 2
  assert "recall (8 steps, 1 seeds)" in out["summary"] and "Dh    64" in out["summary"]
  with pytest.raises(SubjectError, match="--head_dims"):
    commands.run_command("scaled_dot_product", None, str(tmp_path / "bad"), head_dims=[0])
  result = commands.resolve(commands.COMMANDS["scaled_dot_product"])(tiny_gpt_subject(), str(tmp_path / "gpt"),
                                                                     text="abc cab")
  assert (tmp_path / "gpt" / "scaled_dot_product.json").exists() and "decoder/attn" in result["summary"]


def test_over_checkpoints_measures_every_checkpoint_and_the_last_is_the_commands_own(tmp_path):
  from conftest import tiny_lm_config
  from tfjax.tasks.lm import LMTask
  from tfjax.train.loop import train_and_evaluate
  config = tiny_lm_config(**{"train.num_steps": 4, "train.checkpoint_every": 2, "train.eval_every": 4,
                             "train.max_to_keep": 5})
  train_and_evaluate(config, str(tmp_path / "wd"), LMTask(config, str(tmp_path / "wd")))
  subject = load_subject(str(tmp_path / "wd"))
  out = sdp.run(subject, str(tmp_path / "out"), max_batches=1, over_checkpoints=True)
  dev = out["development"]
  assert dev["steps"].tolist() == [2, 4] and (tmp_path / "out" / "scaled_dot_product_steps.png").exists()
  a, last = dev["attentions"]["decoder/attn"], out["attentions"]["decoder/attn"]
  np.testing.assert_allclose(a["scaled_spread"][-1], last["scaled_spread"].mean(-1), rtol=1e-6)
  np.testing.assert_allclose(a["jacobian_norm"][-1], last["jacobian_norm"][..., out["trained_index"]].mean(-1),
                             rtol=1e-6)
  peaks = np.asarray(out["multipliers"])[np.argmax(last["jacobian_norm"], -1)]
  np.testing.assert_array_equal(out["peak_multiplier"]["decoder/attn"], peaks)
  np.testing.assert_allclose(a["peak_multiplier"][-1], np.median(peaks, -1))
  assert "over 2 checkpoints (steps 2, 4)" in out["summary"]
  with pytest.raises(SubjectError, match="not a tfjax workdir"):
    sdp.run(tiny_gpt_subject(), str(tmp_path / "x"), text="abc", over_checkpoints=True)

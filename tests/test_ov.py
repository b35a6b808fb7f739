"""The OV circuit (tfjax.explain.ov): the circuit against float64 matrices built by hand from the raw parameters (read
norm and final norm folded in, grouped values, an untied unembedding); the copying score against the eigenvalues of
the whole [N, N] circuit, and +1 / -1 on heads built to copy or to suppress; chunked ranks against a sort; the
value vectors and the in-context numbers against a loop over the captured activations; the command's files and
errors."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_composition import _with_random_norm_scales
from test_explain import tiny_gpt_subject, tiny_translator_subject
from tfjax.explain import ov
from tfjax.explain.capture import run_with_cache
from tfjax.explain.subjects import Subject, SubjectError


def _layer_norm_linear(scale, d, rms):
  return np.diag(scale) if rms else (np.eye(d) - np.ones((d, d)) / d) @ np.diag(scale)


def _circuit_by_hand(subject, params, layer, head, ids):
  """``[N, V]`` in float64 straight from the parameter tree."""
  cfg = subject.cfg
  rms = cfg.norm == "rmsnorm"
  heads, kv = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
  dh, d = cfg.emb_dim // heads, cfg.emb_dim
  block = params["decoder"][f"block_{layer}"]
  table = np.asarray(params["embed"]["embedding"], np.float64)
  w = np.asarray(block["attn"]["qkv"]["kernel"], np.float64)
  g = head // (heads // kv)
  w_v = w[:, (heads + kv + g) * dh:(heads + kv + g + 1) * dh]
  w_o = np.asarray(block["attn"]["out"]["kernel"], np.float64)[head * dh:(head + 1) * dh]
  read = _layer_norm_linear(np.asarray(block["ln_attn"]["scale"], np.float64), d, rms)
  u = table.T if cfg.tie_embeddings else np.asarray(params["unembed"]["kernel_dense"]["kernel"], np.float64)
  u = u - u.mean(axis=1, keepdims=True)
  final = _layer_norm_linear(np.asarray(params["ln_final"]["scale"], np.float64), d, rms)
  return table[ids] @ read @ w_v @ w_o @ final @ u


@pytest.mark.parametrize("overrides", [dict(), dict(norm="rmsnorm", num_heads=4, num_kv_heads=2, use_bias=True,
                                                     tie_embeddings=False)], ids=["layernorm", "rmsnorm_gqa_untied"])
def test_the_circuit_equals_the_matrices_by_hand_in_float64(overrides):
  subject = tiny_gpt_subject(**overrides)
  params = _with_random_norm_scales(subject.params)
  ids = np.arange(subject.cfg.vocab_size)
  for layer in range(subject.cfg.num_layers):
    for head in range(subject.cfg.num_heads):
      got = np.asarray(ov.ov_circuit(subject.model, params, layer, head, ids))
      np.testing.assert_allclose(got, _circuit_by_hand(subject, params, layer, head, ids), rtol=1e-4, atol=1e-6)


def test_copying_score_is_the_eigenvalues_of_the_whole_circuit_and_ranks_are_a_sort():
  rng = np.random.default_rng(0)
  values, write = rng.normal(size=(37, 5)), rng.normal(size=(5, 37))
  lam = np.linalg.eigvals(values @ write)  # [37, 37]: 5 nonzero eigenvalues
  want = lam.real.sum() / np.abs(lam).sum()
  assert float(ov.copying_score(jnp.asarray(values, jnp.float32), jnp.asarray(write, jnp.float32))) == \
      pytest.approx(want, rel=1e-4)
  wide = rng.normal(size=(5, 50))
  ids = rng.integers(0, 50, 37)
  got = np.asarray(ov.self_ranks(jnp.asarray(values, jnp.float32), jnp.asarray(wide, jnp.float32), jnp.asarray(ids),
                                 chunk=8))  # 37 rows in chunks of 8: the padded last chunk
  full = values @ wide
  np.testing.assert_array_equal(got, [(full[i] > full[i, t]).sum() for i, t in enumerate(ids)])


def _built_head(sign):
  """One head of width 16 whose value and output matrices are ``±I``, unit-norm embeddings, every norm's scale 1: its
  circuit is ``± E (E - mean E)ᵀ``, whose eigenvalues are those of ``±`` a covariance (copying score ±1) and whose
  rows peak (or bottom out) at the token itself."""
  subject = tiny_gpt_subject(num_layers=1, num_heads=1, norm="rmsnorm")
  d, v = subject.cfg.emb_dim, subject.cfg.vocab_size
  rng = np.random.default_rng(1)
  table = rng.normal(size=(v, d))
  table /= np.linalg.norm(table, axis=1, keepdims=True)
  params = jax.tree.map(lambda x: x, subject.params)
  block = params["decoder"]["block_0"]
  qkv = np.asarray(block["attn"]["qkv"]["kernel"]).copy()
  qkv[:, 2 * d:] = np.eye(d)
  block["attn"]["qkv"]["kernel"] = jnp.asarray(qkv)
  block["attn"]["out"]["kernel"] = jnp.asarray(sign * np.eye(d), jnp.float32)
  params["embed"]["embedding"] = jnp.asarray(table, jnp.float32)
  return Subject("gpt", "built", subject.model, params, subject.tokenizer)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["copies", "suppresses"])
def test_a_head_built_to_copy_scores_one_and_one_built_to_suppress_minus_one(sign):
  subject = _built_head(sign)
  ids = np.arange(subject.cfg.vocab_size)
  values = ov.embedding_values(subject.model, subject.params, ids)[0, 0]
  write = ov.write_readout(subject.model, subject.params, 0)[0]
  assert float(ov.copying_score(values, write[:, ids])) == pytest.approx(sign, abs=1e-5)
  ranks = np.asarray(ov.self_ranks(values, write, jnp.asarray(ids)))
  np.testing.assert_array_equal(ranks, 0 if sign > 0 else len(ids) - 1)


def _batches(subject, rows=3, length=12, seed=0):
  rng = np.random.default_rng(seed)
  return [{"inputs": rng.integers(0, subject.cfg.vocab_size, (rows, length)),
           "targets": rng.integers(0, subject.cfg.vocab_size, (rows, length))} for _ in range(2)]


def test_value_vectors_and_in_context_numbers_against_a_loop_over_captured_activations():
  subject = tiny_gpt_subject(num_heads=4, num_kv_heads=2, norm="rmsnorm")
  model, params = subject.model, _with_random_norm_scales(subject.params)
  batches = _batches(subject)
  got = ov.measure(model, params, "gpt", batches)
  cfg = subject.cfg
  dh = cfg.emb_dim // cfg.num_heads
  caches = [run_with_cache(model, {"params": params}, jnp.asarray(b["inputs"]))[1] for b in batches]
  ids = np.concatenate([b["inputs"].reshape(-1) for b in batches])
  counts = np.bincount(ids, minlength=cfg.vocab_size)
  assert got["queries"] == ids.size
  np.testing.assert_array_equal(got["counts"], np.sort(counts[counts > 0])[::-1])
  assert all(counts[t] == c for t, c in zip(got["tokens"], got["counts"]))
  final_scale = np.asarray(params["ln_final"]["scale"], np.float64)
  table = np.asarray(params["embed"]["embedding"], np.float64)
  u = (table - table.mean(0)).T * final_scale[:, None]  # tied; RMSNorm: no centring over D
  top1 = np.zeros((cfg.num_layers, cfg.num_heads))
  raised = np.zeros_like(top1)
  copies = [[collections.Counter() for _ in range(cfg.num_heads)] for _ in range(cfg.num_layers)]
  for l in range(cfg.num_layers):
    v = np.concatenate([np.asarray(c["v", l], np.float64).reshape(-1, 2, dh) for c in caches])  # [N, K, Dh]
    w_o = np.asarray(params["decoder"][f"block_{l}"]["attn"]["out"]["kernel"], np.float64)
    for h in range(cfg.num_heads):
      want = np.stack([v[ids == t, h // 2].mean(0) for t in got["tokens"]])
      np.testing.assert_allclose(got["values"][l, h], want, rtol=1e-5, atol=1e-6)
      for b, c in zip(batches, caches):
        final = np.asarray(c["resid_post", cfg.num_layers - 1], np.float64)
        inv = 1.0 / np.sqrt(np.mean(final ** 2, -1) + cfg.norm_eps)
        z = np.asarray(c["z", l], np.float64)[:, :, h]
        logits = (z @ w_o[h * dh:(h + 1) * dh] @ u) * inv[..., None]  # [B, T, V]
        key = np.argmax(np.asarray(c["pattern", l])[:, h], axis=-1)
        attended = np.take_along_axis(b["inputs"], key, axis=1)
        own = np.take_along_axis(logits, attended[..., None], -1)
        first = (logits > own).sum(-1) == 0
        top1[l, h] += np.sum(first)
        copies[l][h].update(attended[first].tolist())
        raised[l, h] += np.sum(own > 0)
  np.testing.assert_allclose(got["context_top1"], top1 / ids.size)
  np.testing.assert_allclose(got["context_raises"], raised / ids.size)
  for l in range(cfg.num_layers):
    for h in range(cfg.num_heads):
      want = copies[l][h].most_common()
      got_copies = got["context_copies"][l][h]
      assert [n for _, n in got_copies] == [n for _, n in want[:5]]
      assert all(copies[l][h][t] == n for t, n in got_copies)


def test_every_layers_write_computed_again_when_they_would_not_fit_gives_the_same_numbers(monkeypatch):
  subject = tiny_gpt_subject()
  batches = _batches(subject)
  kept = ov.measure(subject.model, subject.params, "gpt", batches)
  monkeypatch.setattr(ov.data_lib, "OUTPUT_BYTES", 1)
  again = ov.measure(subject.model, subject.params, "gpt", batches)
  for key in ("copying_embed", "copying_values", "self_top1_values", "context_top1", "values"):
    np.testing.assert_array_equal(kept[key], again[key])
  with pytest.raises(ValueError, match=r"no head \(2, 0\): the decoder has layers 0..1"):
    ov.ov_circuit(subject.model, subject.params, 2, 0, [1, 2])
  with pytest.raises(ValueError, match="give values_NxDh"):
    ov.ov_circuit(tiny_translator_subject().model, tiny_translator_subject().params, 0, 0, [1], sublayer="cross_attn")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_layer_0s_value_vectors_are_the_bare_embeddings_over_the_norms_sigma(norm):
  """RoPE puts no position into the stream and the model has no biases: the value vector layer 0 computes for token
  ``a`` is the embedding view's divided by the read norm's ``σ`` of ``E_a``, whatever the context."""
  subject = tiny_gpt_subject(norm=norm)
  params = _with_random_norm_scales(subject.params)
  got = ov.measure(subject.model, params, "gpt", _batches(subject))
  embed = np.asarray(ov.embedding_values(subject.model, params, got["tokens"]))[0]  # [H, N, Dh]
  rows = np.asarray(params["embed"]["embedding"], np.float64)[got["tokens"]]
  second = np.mean(rows ** 2, -1) if norm == "rmsnorm" else np.var(rows, -1)
  sigma = np.sqrt(second + subject.cfg.norm_eps)
  np.testing.assert_allclose(got["values"][0], embed / sigma[None, :, None], rtol=2e-4, atol=1e-6)
  assert got["copying_values"][0] == pytest.approx(got["copying_embed"][0], abs=0.2)


def test_command_files_chosen_head_and_errors(tmp_path):
  subject = tiny_gpt_subject()
  out = ov.run(subject, str(tmp_path), text="abc cab bad fed", layer=1, head=0, top_k=3)
  for name in ("ov_copying.png", "ov_self_top1.png", "ov_context_top1.png", "ov_tokens.png",
               "ov_promoted.png", "ov.json"):
    assert (tmp_path / name).exists(), name
  assert (out["layer"], out["head"]) == (1, 0) and out["chance"] == pytest.approx(1 / 9)
  assert out["text_tokens"] == subject.labels(np.array(list(dict.fromkeys(subject.text_ids("abc cab bad fe")))))
  assert np.asarray(out["text_circuit"]).shape == (len(out["text_tokens"]),) * 2
  assert len(out["promoted"]) == 4 and all(len(p["promotes"]) == 3 for p in out["promoted"])
  assert "L1 H0: reads" in out["summary"]
  assert sum(n for _, n in out["copies"]) <= out["context_top1"][1, 0] * out["queries"]
  layer, head = ov._choose_head(out, None, None)  # the default: the head that copies most in context
  assert out["context_top1"][layer, head] == out["context_top1"].max()
  assert ov._choose_head(out, 0, None)[0] == 0 and ov._choose_head(out, None, 1)[1] == 1
  for kwargs, match in ((dict(layer=2), "layer"), (dict(head=5), "head"), (dict(top_k=0), "at least one")):
    with pytest.raises(SubjectError, match=match):
      ov.run(subject, str(tmp_path), text="abc", **kwargs)
  with pytest.raises(SubjectError, match="pre-LN"):
    ov.run(tiny_gpt_subject(pre_ln=False), str(tmp_path), text="abc")
  translated = ov.run(tiny_translator_subject(), str(tmp_path / "translator"), text="a dog runs")
  assert translated["context_top1"].shape == (2, 2) and (tmp_path / "translator" / "ov.json").exists()


def test_cross_attention_values_context_and_dictionary_against_captured_activations(tmp_path):
  """A translator's cross-attention heads read source tokens: their mean value vectors per source token, the
  in-context ranks of the most-attended source token (LayerNorm: the final norm centres over D), and the command's
  dictionary, the sum of every cross head's circuit, all from the captured activations by hand."""
  from tfjax.tasks.translate import PAD_ID
  subject = tiny_translator_subject()
  model, params, cfg = subject.model, subject.params, subject.cfg
  rng = np.random.default_rng(3)
  src = rng.integers(3, cfg.vocab_size, (3, 7))
  src[0, 5:] = PAD_ID
  tgt = rng.integers(3, cfg.vocab_size, (3, 6))
  weights = np.ones((3, 6), np.float32)
  weights[1, 4:] = 0.0
  batch = {"src": src, "inputs": tgt, "targets": tgt, "weights": weights}
  got = ov.measure(model, params, "translator", [batch], sublayer="cross_attn")
  assert np.isnan(got["copying_embed"]).all() and np.isfinite(got["copying_values"]).all()
  cache = run_with_cache(model, {"params": params}, jnp.asarray(src), jnp.asarray(src != PAD_ID),
                         jnp.asarray(tgt))[1]
  real_src, real_q = src != PAD_ID, weights > 0
  dh = cfg.emb_dim // cfg.num_heads
  table = np.asarray(params["embed"]["embedding"], np.float64)
  u = (table - table.mean(0)).T * np.asarray(params["ln_decoder"]["scale"], np.float64)[:, None]
  u = u - u.mean(0, keepdims=True)
  final = np.asarray(cache["decoder/block_1/resid_post"], np.float64)
  inv = 1.0 / np.sqrt(final.var(-1) + cfg.norm_eps)
  assert got["queries"] == real_q.sum()
  for l in range(cfg.num_layers):
    v = np.asarray(cache[f"decoder/block_{l}/cross_attn/v"], np.float64)
    w_o = np.asarray(params["decoder"][f"block_{l}"]["cross_attn"]["out"]["kernel"], np.float64)
    pattern = np.asarray(cache[f"decoder/block_{l}/cross_attn/pattern"])
    z = np.asarray(cache[f"decoder/block_{l}/cross_attn/z"], np.float64)
    for h in range(cfg.num_heads):
      want = np.stack([v[real_src & (src == t)][:, h].mean(0) for t in got["tokens"]])
      np.testing.assert_allclose(got["values"][l, h], want, rtol=1e-5, atol=1e-6)
      logits = (z[:, :, h] @ w_o[h * dh:(h + 1) * dh] @ u) * inv[..., None]
      attended = np.take_along_axis(src, np.argmax(np.where(real_src[:, None], pattern[:, h], -1), -1), 1)
      own = np.take_along_axis(logits, attended[..., None], -1)[..., 0]
      top1 = np.sum(((logits > own[..., None]).sum(-1) == 0) & real_q)
      assert got["context_top1"][l, h] == pytest.approx(top1 / real_q.sum())
      assert got["context_raises"][l, h] == pytest.approx(np.sum((own > 0) & real_q) / real_q.sum())
  out = ov.run(subject, str(tmp_path), text="a dog runs", top_k=4)
  assert (tmp_path / "ov_cross_dictionary.png").exists() and (tmp_path / "ov_cross_copying.png").exists() and out["cross"]["context_top1"].shape == (2, 2)
  assert "cross-attention reading a source token promotes" in out["summary"]
  text_batch = ov.data_lib.eval_batches(subject, 1, text="a dog runs")[0]
  text = ov.measure(model, params, "translator", [text_batch], sublayer="cross_attn")
  first = next(d for d in out["dictionary"])
  row = [subject.token_label(int(t)) for t in text["tokens"]].index(first["reads"])
  total = sum(np.asarray(ov.ov_circuit(model, params, l, h, text["tokens"][row:row + 1],
                                       text["values"][l, h][row:row + 1], sublayer="cross_attn"))[0]
              for l in range(cfg.num_layers) for h in range(cfg.num_heads)) * text["final_inv"]
  best = np.argsort(-total)[:4]
  assert [t for t, _ in first["promotes"]] == [subject.token_label(int(b)) for b in best]
  with pytest.raises(ValueError, match="no cross-attention"):
    ov.measure(tiny_gpt_subject().model, tiny_gpt_subject().params, "gpt", _batches(tiny_gpt_subject()),
               sublayer="cross_attn")


def test_a_scanned_stack_gives_the_same_numbers():
  import dataclasses
  from tfjax.layers.blocks import scan_params
  subject = tiny_gpt_subject()
  scanned = subject.model.clone(cfg=dataclasses.replace(subject.cfg, scan_layers=True))
  batches = _batches(subject)
  got = ov.measure(scanned, scan_params(subject.params), "gpt", batches)
  want = ov.measure(subject.model, subject.params, "gpt", batches)
  for key in ("copying_embed", "copying_values", "self_top1_embed", "context_top1", "context_raises", "values"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ov.ov_circuit(scanned, scan_params(subject.params), 1, 1, [0, 3]),
                             ov.ov_circuit(subject.model, subject.params, 1, 1, [0, 3]), rtol=1e-5, atol=1e-6)

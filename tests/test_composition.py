"""Head composition (tfjax.explain.composition): the weight scores against full [D, D] matrices in float64 (with the
read norms' scales and centring folded in, grouped keys/values), zero where a receiver ignores what a sender writes;
the path ablation against keys, queries and values computed by hand from the clean stream without the sender; the
induction command's circuit view."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from test_explain import tiny_gpt_subject
from tfjax.explain import composition as comp
from tfjax.explain.capture import run_with_cache
from tfjax.explain.interventions import intervention, interventions_from_paths, run_with_interventions
from tfjax.layers.blocks import make_norm
from tfjax.layers.embeddings import apply_rope


def _with_random_norm_scales(params, seed=0):
  """``params`` with every norm's scale drawn in [0.5, 1.5] (a fresh init has all ones: folding them would go
  untested)."""
  rng = np.random.default_rng(seed)

  def fix(path, x):
    return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype) if path[-1].key == "scale" else x
  return jax.tree_util.tree_map_with_path(fix, params)


def _naive_scores(cfg, params, num_layers, heads, kv, dh):
  def norm(block, d):
    if not cfg.pre_ln:
      return np.eye(d)
    n = np.diag(np.asarray(block["ln_attn"]["scale"], np.float64))
    return (np.eye(d) - np.ones((d, d)) / d) @ n if cfg.norm != "rmsnorm" else n

  def mats(l, h):
    block = params["decoder"][f"block_{l}"]
    w = np.asarray(block["attn"]["qkv"]["kernel"], np.float64)
    d = w.shape[0]
    w = norm(block, d) @ w
    g = h // (heads // kv)
    wq = w[:, h * dh:(h + 1) * dh]
    wk = w[:, (heads + g) * dh:(heads + g + 1) * dh]
    wv = w[:, (heads + kv + g) * dh:(heads + kv + g + 1) * dh]
    wo = np.asarray(block["attn"]["out"]["kernel"], np.float64)[h * dh:(h + 1) * dh]
    return wq @ wk.T, wv @ wo

  fro = np.linalg.norm
  out = {w: np.full((num_layers, heads, num_layers, heads), np.nan) for w in comp.WAYS}
  for l in range(num_layers):
    for h in range(heads):
      _, ov_s = mats(l, h)
      for l2 in range(l + 1, num_layers):
        for h2 in range(heads):
          qk, ov_r = mats(l2, h2)
          for way, right in (("q", qk), ("k", qk.T), ("v", ov_r)):
            out[way][l, h, l2, h2] = fro(ov_s @ right) / (fro(ov_s) * fro(right))
  return out


@pytest.mark.parametrize("overrides", [dict(num_layers=3), dict(num_layers=3, norm="rmsnorm", num_heads=4,
                                                                     num_kv_heads=2, use_bias=True)],
                         ids=["layernorm", "rmsnorm_gqa"])
def test_scores_equal_full_matrices_in_float64(overrides):
  subject = tiny_gpt_subject(**overrides)
  cfg = subject.cfg
  params = _with_random_norm_scales(subject.params)
  got = comp.composition_scores(subject.model, params)
  heads, kv = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
  want = _naive_scores(cfg, params, cfg.num_layers, heads, kv, cfg.emb_dim // heads)
  for way in comp.WAYS:
    assert got[way].shape == (cfg.num_layers, heads, cfg.num_layers, heads)
    np.testing.assert_array_equal(np.isnan(got[way]), np.isnan(want[way]))
    np.testing.assert_allclose(got[way], want[way], rtol=2e-4, equal_nan=True)
  assert 0.0 < comp.random_baseline(cfg.emb_dim, cfg.emb_dim // heads) < 1.0


def test_a_receiver_that_ignores_what_the_sender_writes_scores_zero():
  subject = tiny_gpt_subject(norm="rmsnorm")  # no centring: the norm keeps the stream's coordinates apart
  params = jax.tree.map(lambda x: x, subject.params)
  d, dh = subject.cfg.emb_dim, subject.cfg.emb_dim // subject.cfg.num_heads
  out = np.array(params["decoder"]["block_0"]["attn"]["out"]["kernel"])
  out[:dh, d // 2:] = 0.0  # head 0 of layer 0 writes only into the first half of the stream
  qkv = np.array(params["decoder"]["block_1"]["attn"]["qkv"]["kernel"])
  qkv[:d // 2, 2 * dh:3 * dh] = 0.0  # head 0 of layer 1: its keys read only the second half
  params["decoder"]["block_0"]["attn"]["out"]["kernel"] = jnp.asarray(out)
  params["decoder"]["block_1"]["attn"]["qkv"]["kernel"] = jnp.asarray(qkv)
  s = comp.composition_scores(subject.model, params)
  assert s["k"][0, 0, 1, 0] == pytest.approx(0.0, abs=1e-6)
  assert s["q"][0, 0, 1, 0] > 0.05 and s["v"][0, 0, 1, 0] > 0.05 and s["k"][0, 1, 1, 0] > 0.05


def _second_half_loss(logits, ids, start):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])[:, start:])


def _input_by_hand(subject, params, ids, sender, receiver_head, way):
  """``(clean, patched)`` layer-1 ``attn/{way}`` ``[B, T, H, Dh]``: receiver ``receiver_head`` reading the clean
  stream before layer 1 without what layer-0 head ``sender`` (or its MLP) wrote, through its norm, its columns of
  ``qkv`` (and bias) and RoPE."""
  cfg, model = subject.cfg, subject.model
  heads, dh = cfg.num_heads, cfg.emb_dim // cfg.num_heads
  names = ["decoder/block_1/resid_pre", "decoder/block_0/attn/z", "decoder/block_0/mlp_out",
           f"decoder/block_1/attn/{way}"]
  _, cache = run_with_cache(model, {"params": params}, ids, names=names)
  out_k = params["decoder"]["block_0"]["attn"]["out"]["kernel"].reshape(heads, dh, -1)
  written = (cache["decoder/block_0/mlp_out"] if sender == comp.MLP else
             cache["decoder/block_0/attn/z"][:, :, sender] @ out_k[sender])
  block = params["decoder"]["block_1"]
  x = make_norm(cfg, "ln_attn").apply({"params": block["ln_attn"]}, cache["decoder/block_1/resid_pre"] - written)
  col = {"q": 0, "k": heads, "v": 2 * heads}[way] + receiver_head
  a = x @ block["attn"]["qkv"]["kernel"][:, col * dh:(col + 1) * dh]
  if "bias" in block["attn"]["qkv"]:
    a = a + block["attn"]["qkv"]["bias"][col * dh:(col + 1) * dh]
  a = a[:, :, None, :]
  if way != "v" and cfg.positional == "rope":
    a = apply_rope(a, np.broadcast_to(np.arange(ids.shape[1]), ids.shape), cfg.rope_base)
  clean = cache[f"decoder/block_1/attn/{way}"]
  return clean, clean.at[:, :, receiver_head].set(a[:, :, 0])


def _by_hand(subject, params, ids, sender, receiver_head, way):
  """The loss of a clean run with :func:`_input_by_hand`'s receiver input patched in."""
  _, value = _input_by_hand(subject, params, ids, sender, receiver_head, way)
  mask = np.zeros((1, 1, subject.cfg.num_heads, 1), bool)
  mask[0, 0, receiver_head, 0] = True
  tree = interventions_from_paths({f"decoder/block_1/attn/{way}": intervention(mask, value)})
  logits = run_with_interventions(subject.model, {"params": params}, tree, ids)
  return float(_second_half_loss(logits, ids, 3))


@pytest.mark.parametrize("overrides", [dict(), dict(positional="learned", use_bias=True)], ids=["rope", "learned_bias"])
def test_path_ablation_equals_the_receivers_input_computed_by_hand(overrides):
  subject = tiny_gpt_subject(**overrides)
  params = _with_random_norm_scales(subject.params, seed=1)
  # layer 0's heads writing 8x larger, layer 1's reading 8x sharper: the effects (~1e-5 nats at init) become ~1e-3
  for layer, name in ((0, "out"), (1, "qkv")):
    attn = params["decoder"][f"block_{layer}"]["attn"]
    attn[name]["kernel"] = 8.0 * attn[name]["kernel"]
  ids = jnp.asarray(np.random.default_rng(0).integers(0, subject.cfg.vocab_size, (3, 8)), jnp.int32)
  metric = comp.loss_metric(functools.partial(_second_half_loss, start=3))
  run = functools.partial(comp.path_ablation, subject.model, receivers=[(1, 0), (1, 1)])
  got = run({"params": params}, ids, metric)
  assert got["senders"] == [(0, 0), (0, 1), (0, "mlp")] and got["receivers"] == [(1, 0), (1, 1)]
  base = float(_second_half_loss(subject.model.apply({"params": params}, ids), ids, 3))
  np.testing.assert_allclose(got["base"]["loss"], [base, base], rtol=1e-6)
  change = got["change"]["loss"]
  for way in comp.WAYS:
    assert change[way].shape == (3, 2)
    for s, (_, sender) in enumerate(got["senders"]):
      for r in range(2):
        assert change[way][s, r] == pytest.approx(_by_hand(subject, params, ids, sender, r, way) - base, abs=3e-6), \
            (way, sender, r)
  assert min(np.abs(change[w]).max() for w in comp.WAYS) > 5e-4  # the random heads do read each other every way
  # all routes: the sender's own block's MLP reacts too, so they differ; without MLPs (both layers' writes zero) the
  # only route from layer 0 to layer 1 is the direct one
  every = run({"params": params}, ids, metric, routes="all")["change"]["loss"]
  assert max(np.abs(every[w] - change[w]).max() for w in comp.WAYS) > 1e-5
  no_mlp = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if any(getattr(k, "key", None) == "fc_out" for k in p) else x, params)
  direct = run({"params": no_mlp}, ids, metric)["change"]["loss"]
  every = run({"params": no_mlp}, ids, metric, routes="all")["change"]["loss"]
  for w in comp.WAYS:
    np.testing.assert_allclose(every[w], direct[w], atol=2e-6)
    np.testing.assert_array_equal(direct[w][2], 0.0)  # a zero MLP: nothing to leave out


def test_path_ablation_skips_pairs_not_in_order_and_names_bad_heads():
  subject = tiny_gpt_subject(num_layers=3)
  ids = jnp.zeros((1, 6), jnp.int32)
  loss_fn = comp.loss_metric(functools.partial(_second_half_loss, start=2))
  got = comp.path_ablation(subject.model, {"params": subject.params}, ids, loss_fn, receivers=[(1, 1), (2, 0)],
                           senders=[(0, 0), (1, 0)])["change"]["loss"]
  assert np.isfinite(got["v"][0]).all() and np.isnan(got["v"][1, 0]) and np.isfinite(got["v"][1, 1])
  with pytest.raises(ValueError, match="out of range: layers 0..2, heads 0..1"):
    comp.path_ablation(subject.model, {"params": subject.params}, ids, loss_fn, receivers=[(3, 0)])
  with pytest.raises(ValueError, match="choose 'direct' or 'all'"):
    comp.path_ablation(subject.model, {"params": subject.params}, ids, loss_fn, receivers=[(1, 0)], routes="some")
  bert = tiny_gpt_subject(pre_ln=False)
  with pytest.raises(ValueError, match="needs pre-LN"):
    comp.path_ablation(bert.model, {"params": bert.params}, ids, loss_fn, receivers=[(1, 0)])


def test_induction_command_reports_which_earlier_heads_each_induction_head_reads(tmp_path, monkeypatch):
  from tfjax.explain import induction as ind
  out = ind.run(tiny_gpt_subject(), str(tmp_path / "none"), num_tokens=5, num_samples=3, top_k=2)
  assert "paths" not in out and "no induction head above layer 0 to trace" in out["summary"]  # random heads: uniform
  monkeypatch.setattr(ind, "CIRCUIT_MIN_RATIO", 0.0)  # trace them anyway
  out = ind.run(tiny_gpt_subject(), str(tmp_path), num_tokens=5, num_samples=3, top_k=2)
  paths = out["paths"]
  assert sorted(tuple(r) for r in paths["receivers"]) == [(1, 0), (1, 1)]  # the strongest first
  assert [tuple(x) for x in paths["senders"]] == [(0, 0), (0, 1), (0, "mlp")]
  for routes in ("paths", "paths_direct"):
    for key in ("loss", "induction"):
      assert out[routes]["change"][key]["k"].shape == (3, 2) and np.isfinite(out[routes]["change"][key]["k"]).all()
    np.testing.assert_array_equal(out[routes]["change"]["induction"]["v"], 0.0)  # values never move the pattern
  (l, h), base = paths["receivers"][0], paths["base"]["induction"][0]
  assert base == pytest.approx(out["induction"][l, h], rel=1e-5)  # the receiver's own score, as measured above
  assert paths["base"]["loss"][0] == pytest.approx(out["second_copy_loss"], rel=1e-5)
  assert out["composition"]["k"].shape == (2, 2, 2, 2) and 0 < out["composition_random"] < 1
  assert "needs L0 H" in out["summary"] and "without L0 MLP in its" in out["summary"]
  assert "-composition of the weights" in out["summary"]
  assert (tmp_path / "induction_paths.png").exists()


def test_a_scanned_stack_gives_the_same_scores_and_paths():
  from tfjax.layers.blocks import scan_params
  subject = tiny_gpt_subject()
  scanned = subject.model.clone(cfg=dataclasses.replace(subject.cfg, scan_layers=True))
  scanned_params = scan_params(subject.params)
  ids = jnp.asarray(np.random.default_rng(1).integers(0, subject.cfg.vocab_size, (2, 6)), jnp.int32)
  metric = comp.loss_metric(functools.partial(_second_half_loss, start=2))
  for way, score in comp.composition_scores(scanned, scanned_params).items():
    np.testing.assert_allclose(score, comp.composition_scores(subject.model, subject.params)[way], rtol=1e-6)
  got = comp.path_ablation(scanned, {"params": scanned_params}, ids, metric, receivers=[(1, 0)])
  want = comp.path_ablation(subject.model, {"params": subject.params}, ids, metric, receivers=[(1, 0)])
  for way in comp.WAYS:
    np.testing.assert_allclose(got["change"]["loss"][way], want["change"]["loss"][way], atol=1e-6)


def test_composition_command_moves_against_patterns_by_hand_and_its_files(tmp_path):
  from tfjax.layers.attention import attention_pattern
  from tfjax.layers.masks import causal_mask
  subject = tiny_gpt_subject()
  out = comp.run(subject, str(tmp_path), text="abc cab bad fed")
  for name in ("composition_queries.png", "composition_keys.png", "composition_values.png",
               "composition_weights_k.png", "composition.json"):
    assert (tmp_path / name).exists(), name
  assert out["senders"] == [(0, 0), (0, 1), (0, "mlp")] and out["receivers"] == [(1, 0), (1, 1)]
  ids = jnp.asarray(subject.text_ids("abc cab bad fed")[None, :-1])
  t = ids.shape[1]
  for s_i, (_, sender) in enumerate(out["senders"]):
    for r in range(2):
      q_clean, q = _input_by_hand(subject, subject.params, ids, sender, r, "q")
      k_clean, k = _input_by_hand(subject, subject.params, ids, sender, r, "k")
      clean = attention_pattern(q_clean, k_clean, causal_mask(t))[:, r]
      for way, pattern in (("q", attention_pattern(q, k_clean, causal_mask(t))[:, r]),
                           ("k", attention_pattern(q_clean, k, causal_mask(t))[:, r])):
        want = 0.5 * float(jnp.mean(jnp.sum(jnp.abs(pattern - clean), -1)))
        assert out["moved"][way][s_i, r] == pytest.approx(want, abs=2e-6), (way, sender, r)
  assert np.all((out["moved"]["k"] >= 0) & (out["moved"]["k"] <= 1)) and out["moved"]["v"].min() > 0
  assert np.isnan(out["weights"]["k"][2]).all() and np.isfinite(out["weights"]["k"][:2]).all()  # MLPs: no OV
  assert "keys: L1 H" in out["summary"] and "MLPs L0 MLP" in out["summary"]


def test_composition_command_picks_receivers_and_names_bad_ones(tmp_path):
  from tfjax.explain.subjects import SubjectError
  subject = tiny_gpt_subject(num_layers=3)
  out = comp.run(subject, str(tmp_path), text="abc cab", layer=2, head=1)
  assert out["receivers"] == [(2, 1)] and len(out["senders"]) == 6 and out["moved"]["k"].shape == (6, 1)
  for kwargs, match in ((dict(layer=0), "layers 1..2"), (dict(head=2), "heads are 0..1"),
                        (dict(routes="some"), "choose direct or all")):
    with pytest.raises(SubjectError, match=match):
      comp.run(subject, str(tmp_path), text="abc", **kwargs)
  with pytest.raises(SubjectError, match="two layers or more"):
    comp.run(tiny_gpt_subject(num_layers=1), str(tmp_path), text="abc")


def test_grouped_keys_and_values_are_patched_for_every_query_head_that_shares_them():
  subject = tiny_gpt_subject(num_heads=4, num_kv_heads=2)
  ids = jnp.asarray(np.random.default_rng(2).integers(0, subject.cfg.vocab_size, (2, 8)), jnp.int32)
  metric = comp.loss_metric(functools.partial(_second_half_loss, start=2))
  got = comp.path_ablation(subject.model, {"params": subject.params}, ids, metric,
                           receivers=[(1, 0), (1, 1), (1, 2), (1, 3)])["change"]["loss"]
  for way in ("k", "v"):  # query heads 0, 1 read key/value head 0; heads 2, 3 head 1: the same patched run
    np.testing.assert_array_equal(got[way][:, 0], got[way][:, 1])
    np.testing.assert_array_equal(got[way][:, 2], got[way][:, 3])
    assert np.abs(got[way][:, 0] - got[way][:, 2]).max() > 0
  assert np.abs(got["q"][:, 0] - got["q"][:, 1]).max() > 0  # queries are each head's own

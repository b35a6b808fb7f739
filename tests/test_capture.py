"""The capture / intervention / logit-lens API (tfjax.explain) against independent numpy references."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tfjax import explain
from tfjax.layers import hooks
from tfjax.layers.blocks import scan_params, unscan_params
from tfjax.models.config import TransformerConfig
from tfjax.models.bert import BERT, bert_config
from tfjax.models.gpt import GPT, gpt_config
from tfjax.models.transformer import EncoderDecoder

V, T = 50, 8


def _random_params(model, *inputs, **kw):
  """Every weight from N(0, 0.3) (norm scales 1 + N(0, 0.3)), drawn on the host: unlike the 0.02 init, attention
  patterns are far from uniform and every intervention shows in the logits."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *inputs, **kw))["params"])
  rng = np.random.default_rng(0)

  def draw(path, x):
    base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return jnp.asarray(base + 0.3 * rng.standard_normal(x.shape), jnp.float32)

  return {"params": jax.tree_util.tree_map_with_path(draw, shapes)}


def _ids(seed=0, shape=(2, T)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, shape), jnp.int32)


@functools.lru_cache(maxsize=None)
def _gpt(positional="learned", num_kv_heads=None, **kw):
  cfg = gpt_config(vocab_size=V, num_layers=2, num_heads=4, num_kv_heads=num_kv_heads, emb_dim=32, max_len=16,
                   positional=positional, **{"use_bias": True, **kw})  # biases: the references read them
  model = GPT(cfg)
  return model, _random_params(model, _ids())


def _bert():
  cfg = bert_config(vocab_size=V, num_layers=2, num_heads=2, emb_dim=16, mlp_dim=32, max_len=16, dropout_rate=0.0,
                    attention_dropout_rate=0.0)
  model = BERT(cfg)
  return model, _random_params(model, _ids())


def _encdec():
  cfg = TransformerConfig(vocab_size=V, num_layers=2, num_heads=4, emb_dim=32, max_len=12, tie_embeddings=False)
  model = EncoderDecoder(cfg, num_encoder_layers=3)
  src = np.asarray(_ids(1, (2, 9)))
  valid = np.ones((2, 9), bool)
  valid[1, 5:] = False
  return model, _random_params(model, src, valid, src[:, :4]), src, valid, np.asarray(_ids(2, (2, 6)))


# -- independent numpy references ------------------------------------------------------------------------------------
def _np_pattern(q, k, mask):
  """softmax over keys of q·kᵀ/√Dh with masked entries excluded; q [B,T,H,Dh], k [B,S,K,Dh], mask [B,T,S] bool."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  e = np.where(mask[:, None], np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
  return e / np.maximum(e.sum(-1, keepdims=True), 1e-300)  # a fully masked row (a padding query): zeros


def _np_layernorm(x, p, eps):
  x = np.asarray(x, np.float64)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _check_patterns(cache, path_prefix, num_layers, mask, sublayer="attn"):
  for layer in range(num_layers):
    base = f"{path_prefix}/block_{layer}/{sublayer}"
    q, k, v, pattern, z = (np.asarray(cache[f"{base}/{n}"]) for n in ("q", "k", "v", "pattern", "z"))
    np.testing.assert_allclose(pattern, _np_pattern(q, k, mask), atol=1e-5, rtol=1e-5)
    has_keys = np.broadcast_to(mask.any(-1)[:, None], pattern.shape[:-1])
    np.testing.assert_allclose(pattern.sum(-1), np.where(has_keys, 1.0, 0.0), atol=1e-5)
    assert np.all(pattern[~np.broadcast_to(mask[:, None], pattern.shape)] == 0.0)
    # each head's output is its pattern times the values
    v = np.repeat(v, q.shape[2] // v.shape[2], axis=2)
    np.testing.assert_allclose(z, np.einsum("bhts,bshd->bthd", pattern, v), atol=1e-4, rtol=1e-4)


# -- capture ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positional,num_kv_heads", [("learned", None), ("rope", 2)], ids=["learned", "rope_gqa"])
def test_gpt_pattern_is_causal_softmax_of_captured_qk(positional, num_kv_heads):
  model, variables = _gpt(positional, num_kv_heads)
  ids = _ids()
  run = jax.jit(functools.partial(explain.run_with_cache, model, names=["attn/*"]))
  logits, cache = run(variables, ids)
  assert set(cache.names()) == {f"decoder/block_{l}/attn/{n}" for l in range(2)
                                for n in ("q", "k", "v", "scores", "pattern", "z")}
  assert cache["pattern", 1].shape == (2, 4, T, T) and cache["k", 0].shape == (2, T, num_kv_heads or 4, 8)
  causal = np.broadcast_to(np.tril(np.ones((T, T), bool)), (2, T, T))
  _check_patterns(cache, "decoder", 2, causal)
  assert np.all(np.triu(np.asarray(cache["pattern", 0]), 1) == 0.0)  # the empty causal half
  assert np.all(np.isneginf(np.asarray(cache["scores", 0])[..., ~causal[0]]))
  # capturing does not change the output (the fast path, used otherwise, computes the same attention)
  np.testing.assert_allclose(logits, jax.jit(model.apply)(variables, ids), atol=1e-5, rtol=1e-5)


def test_gpt_cache_access_stack_and_names():
  model, variables = _gpt()
  ids = _ids()
  logits, cache = jax.jit(functools.partial(explain.run_with_cache, model))(variables, ids)
  assert len(cache.names()) == 2 * (6 + 6) and cache.stacks() == ["decoder"] and cache.num_layers() == 2
  assert cache.stack("resid_post").shape == (2, 2, T, 32) and cache.stack("mlp/hidden").shape == (2, 2, T, 128)
  np.testing.assert_array_equal(cache["resid_post", 1], cache["decoder/block_1/resid_post"])
  np.testing.assert_array_equal(cache.accumulated_resid()[0], cache["resid_pre", 0])
  # the residual stream adds each sublayer's output
  for l in range(2):
    np.testing.assert_allclose(cache["resid_mid", l], cache["resid_pre", l] + cache["attn_out", l], atol=1e-5)
    np.testing.assert_allclose(cache["resid_post", l], cache["resid_mid", l] + cache["mlp_out", l], atol=1e-5)
  np.testing.assert_array_equal(cache["resid_pre", 1], cache["resid_post", 0])
  # block_0's input is the embedding: token row + position row
  p = variables["params"]
  emb = np.asarray(p["embed"]["embedding"])[np.asarray(ids)] + np.asarray(p["pos_embed"]["embedding"])[:T]
  np.testing.assert_allclose(cache["resid_pre", 0], emb, atol=1e-6)
  # the returned cache is a pytree: it goes through jit and tree maps
  assert len(jax.tree.leaves(cache)) == len(cache)


def test_bert_pattern_is_zero_on_padding_keys():
  model, variables = _bert()
  ids = _ids()
  valid = np.ones((2, T), bool)
  valid[1, 5:] = False
  logits, cache = jax.jit(functools.partial(explain.run_with_cache, model, names="attn/*"))(variables, ids, valid)
  _check_patterns(cache, "encoder", 2, valid[:, :, None] & valid[:, None, :])  # padding queries attend nowhere
  assert np.all(np.asarray(cache["pattern", 1])[1, :, :, 5:] == 0.0)
  np.testing.assert_allclose(logits, jax.jit(model.apply)(variables, ids, valid), atol=1e-5, rtol=1e-5)


def test_encoder_decoder_cross_attention_pattern_excludes_source_padding():
  model, variables, src, valid, tgt = _encdec()
  run = jax.jit(functools.partial(explain.run_with_cache, model, names=["attn/*", "cross_attn/*"]))
  logits, cache = run(variables, src, valid, tgt)
  assert cache.stacks() == ["decoder", "encoder"]
  assert cache.num_layers("encoder") == 3 and cache.num_layers("decoder") == 2
  _check_patterns(cache, "encoder", 3, valid[:, :, None] & valid[:, None, :])
  _check_patterns(cache, "decoder", 2, np.broadcast_to(np.tril(np.ones((6, 6), bool)), (2, 6, 6)))
  _check_patterns(cache, "decoder", 2, np.broadcast_to(valid[:, None, :], (2, 6, 9)), sublayer="cross_attn")
  cross = np.asarray(cache["cross_attn/pattern", 1])
  assert cross.shape == (2, 4, 6, 9) and np.all(cross[1, :, :, 5:] == 0.0)
  assert cache.stack("cross_attn/pattern").shape == (2, 2, 4, 6, 9)
  with pytest.raises(ValueError, match="ambiguous"):
    cache["pattern", 0]  # encoder and decoder self-attention, decoder cross-attention
  np.testing.assert_array_equal(cache["attn/pattern", 2], cache["encoder/block_2/attn/pattern"])
  np.testing.assert_allclose(logits, jax.jit(model.apply)(variables, src, valid, tgt), atol=1e-5, rtol=1e-5)


def test_scanned_and_rematerialised_stacks_capture_and_intervene_per_layer():
  model, variables = _gpt()
  ids = _ids()
  _, ref = jax.jit(functools.partial(explain.run_with_cache, model, names="resid_post"))(variables, ids)
  remat = GPT(dataclasses.replace(model.cfg, remat="full"))
  _, cache = jax.jit(functools.partial(explain.run_with_cache, remat, names="resid_post"))(variables, ids)
  np.testing.assert_allclose(cache.stack("resid_post"), ref.stack("resid_post"), atol=1e-5)
  scanned = GPT(dataclasses.replace(model.cfg, scan_layers=True))
  p = scan_params(variables["params"])
  _, cache = jax.jit(functools.partial(explain.run_with_cache, scanned, names="resid_post"))({"params": p}, ids)
  assert cache.names() == ref.names()
  np.testing.assert_allclose(cache.stack("resid_post"), ref.stack("resid_post"), atol=1e-5)
  # interventions name layers: a scanned stack runs as its per-layer twin, with the same effect
  tree = explain.ablate_heads(model, [(0, 0), (1, 1)])
  want = explain.run_with_interventions(model, variables, tree, ids)
  assert np.abs(want - model.apply(variables, ids)).max() > 1e-3
  np.testing.assert_allclose(explain.run_with_interventions(scanned, {"params": p}, tree, ids), want, atol=1e-5)
  _, cache = explain.run_with_cache(scanned, {"params": p, "interventions": tree}, ids, names="attn/z")
  np.testing.assert_array_equal(cache["z", 1][..., 1, :], 0.0)
  assert np.abs(np.asarray(cache["z", 1][..., 0, :])).max() > 0


def test_scan_params_and_unscan_params_are_inverse_and_give_the_same_model():
  """``unscan_params`` of a scanned encoder-decoder's own init is the per-layer model's tree; both models give the
  same logits from it; ``scan_params`` gives the scanned tree back."""
  cfg = TransformerConfig(vocab_size=13, num_layers=2, num_heads=2, emb_dim=8, max_len=8, scan_layers=True)
  scanned = EncoderDecoder(cfg, num_encoder_layers=3)
  src, tgt = jnp.arange(12).reshape(2, 6) % 13, jnp.ones((2, 5), jnp.int32)
  valid = jnp.ones((2, 6), bool)
  p_scan = nn.unbox(scanned.init(jax.random.key(0), src, valid, tgt)["params"])
  plain = EncoderDecoder(dataclasses.replace(cfg, scan_layers=False), num_encoder_layers=3)
  p_plain = unscan_params(p_scan)
  assert jax.tree.structure(p_plain) == jax.tree.structure(
      nn.unbox(plain.init(jax.random.key(0), src, valid, tgt)["params"]))
  assert sorted(p_plain["encoder"]) == ["block_0", "block_1", "block_2"]
  np.testing.assert_allclose(plain.apply({"params": p_plain}, src, valid, tgt),
                             scanned.apply({"params": p_scan}, src, valid, tgt), atol=1e-5)
  back = scan_params(p_plain)
  assert jax.tree.structure(back) == jax.tree.structure(p_scan)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p_scan)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="not block_0 .. block_1"):
    scan_params({"decoder": {"block_0": {"w": 1.0}, "block_2": {"w": 2.0}}})


# -- the logit lens --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt", "bert_post_ln", "bert_pre_ln", "encdec"])
def test_logit_lens_last_layer_is_the_models_logits(kind):
  if kind == "gpt":
    model, variables = _gpt()
    inputs = (_ids(),)
  elif kind.startswith("bert"):
    model, _ = _bert()
    model = BERT(dataclasses.replace(model.cfg, pre_ln=kind == "bert_pre_ln"))
    variables = _random_params(model, _ids())
    inputs = (_ids(), np.arange(T)[None] < np.array([[T], [5]]))
  else:
    model, variables, src, valid, tgt = _encdec()
    inputs = (src, valid, tgt)
  lens = jax.jit(lambda v, *x: explain.logit_lens(model, v, x))(variables, *inputs)
  logits = jax.jit(model.apply)(variables, *inputs)
  assert lens.shape == (model.cfg.num_layers + 1,) + logits.shape and lens.dtype == jnp.float32
  np.testing.assert_allclose(lens[-1], logits, atol=1e-4, rtol=1e-4)
  kl = explain.lens_kl(lens)
  assert kl.shape == lens.shape[:-1] and float(jnp.max(jnp.abs(kl[-1]))) < 1e-5 and float(jnp.min(kl)) > -1e-5
  assert float(jnp.mean(kl[0])) > 1e-3  # the embedding alone guesses differently
  if kind == "gpt":  # entry 0: final LayerNorm and the tied unembedding of the embedding, by hand
    p = variables["params"]
    x = np.asarray(p["embed"]["embedding"])[np.asarray(inputs[0])] + np.asarray(p["pos_embed"]["embedding"])[:T]
    ref = _np_layernorm(x, p["ln_final"], model.cfg.norm_eps) @ np.asarray(p["embed"]["embedding"]).T
    np.testing.assert_allclose(lens[0], ref, atol=1e-4, rtol=1e-4)


# -- interventions ---------------------------------------------------------------------------------------------------
def _with(params, path, fn):
  """A copy of params with the leaf at 'a/b/c' replaced by fn(leaf)."""
  out = jax.tree.map(lambda x: x, params)
  *parents, last = path.split("/")
  node = out
  for k in parents:
    node = node[k]
  node[last] = fn(node[last])
  return out


def test_ablating_heads_equals_zeroing_their_output_projection():
  model, variables = _gpt()
  ids = _ids()
  run = jax.jit(functools.partial(explain.run_with_interventions, model))
  apply = jax.jit(model.apply)
  p = variables["params"]
  # every head of every layer: as if each out kernel were zero (its bias stays)
  zeroed = p
  for l in range(2):
    zeroed = _with(zeroed, f"decoder/block_{l}/attn/out/kernel", jnp.zeros_like)
  np.testing.assert_allclose(run(variables, explain.ablate_heads(model, "all"), ids),
                             apply({"params": zeroed}, ids), atol=1e-5)
  # the attention sublayers' whole output at zero: as if kernel and bias were zero
  both = zeroed
  for l in range(2):
    both = _with(both, f"decoder/block_{l}/attn/out/bias", jnp.zeros_like)
  attn_out_zero = explain.interventions_from_paths(
      {f"decoder/block_{l}/attn_out": explain.intervention(True, 0.0) for l in range(2)})
  np.testing.assert_allclose(run(variables, attn_out_zero, ids), apply({"params": both}, ids), atol=1e-5)
  # one head (layer 1, head 2): its rows of the out kernel [H·Dh, D]
  one = _with(p, "decoder/block_1/attn/out/kernel", lambda k: k.at[16:24].set(0.0))
  ablated = run(variables, explain.ablate_heads(model, {1: [2]}), ids)
  np.testing.assert_allclose(ablated, apply({"params": one}, ids), atol=1e-5)
  assert float(jnp.max(jnp.abs(ablated - apply(variables, ids)))) > 1e-2


def test_mean_ablation_puts_the_reference_mean_in_place():
  model, variables = _gpt()
  ids, ref_ids = _ids(0), _ids(5, (4, T))
  _, ref = jax.jit(functools.partial(explain.run_with_cache, model, names="attn/z"))(variables, ref_ids)
  tree = explain.ablate_heads(model, [(0, 1), (1, 3)], mode="mean", reference=ref)
  run = jax.jit(functools.partial(explain.run_with_cache, model, names="attn/z"))
  _, cache = run({**variables, "interventions": tree}, ids)
  _, clean = run(variables, ids)
  for layer, head in ((0, 1), (1, 3)):
    mean = np.asarray(ref["z", layer])[:, :, head].mean(axis=(0, 1))
    np.testing.assert_allclose(np.asarray(cache["z", layer])[:, :, head], np.broadcast_to(mean, (2, T, 8)), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(cache["z", 0])[:, :, 0], np.asarray(clean["z", 0])[:, :, 0])


def test_ablating_a_neuron_equals_zeroing_its_fc_out_row():
  model, variables = _gpt()
  ids = _ids()
  tree = explain.ablate_neurons(model, [(0, 7), (1, 100)])
  ablated = jax.jit(functools.partial(explain.run_with_interventions, model))(variables, tree, ids)
  p = _with(variables["params"], "decoder/block_0/mlp/fc_out/kernel", lambda k: k.at[7].set(0.0))
  p = _with(p, "decoder/block_1/mlp/fc_out/kernel", lambda k: k.at[100].set(0.0))
  np.testing.assert_allclose(ablated, jax.jit(model.apply)({"params": p}, ids), atol=1e-5)


def test_patching():
  model, variables = _gpt()
  clean, corrupt = _ids(0), _ids(9)
  capture = jax.jit(functools.partial(explain.run_with_cache, model, names=["resid_post", "attn/z"]))
  run = jax.jit(functools.partial(explain.run_with_interventions, model))
  clean_logits, clean_cache = capture(variables, clean)
  corrupt_logits, corrupt_cache = capture(variables, corrupt)
  # a run's own activations: nothing changes
  np.testing.assert_allclose(run(variables, explain.patch(clean_cache, ["resid_post", "attn/z"]), clean),
                             clean_logits, atol=1e-5)
  # the other run's last residual stream at position 5 gives its logits there, and nothing else changes
  patched = run(variables, explain.patch(corrupt_cache, "block_1/resid_post", positions=5), clean)
  np.testing.assert_allclose(patched[:, 5], corrupt_logits[:, 5], atol=1e-4)
  np.testing.assert_allclose(np.delete(np.asarray(patched), 5, axis=1), np.delete(np.asarray(clean_logits), 5, axis=1),
                             atol=1e-5)
  # the first layer's whole residual stream: every later computation follows the other run
  np.testing.assert_allclose(run(variables, explain.patch(corrupt_cache, "block_0/resid_post"), clean),
                             corrupt_logits, atol=1e-4)
  # one layer's heads at the last position: the logits change there only (causal), and only from there on
  patched = run(variables, explain.patch(corrupt_cache, "block_1/attn/z", positions=[-1]), clean)
  assert float(jnp.max(jnp.abs(patched[:, -1] - clean_logits[:, -1]))) > 1e-2
  np.testing.assert_allclose(patched[:, :-1], clean_logits[:, :-1], atol=1e-5)


def test_losses_against_numpy():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
  targets = jnp.array([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]])
  x = np.asarray(logits, np.float64)
  lp = x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
  ce = -np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(explain.token_loss(logits, targets), ce.mean(), rtol=1e-5)
  w = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  np.testing.assert_allclose(explain.token_loss(logits, targets, w), ce[w].mean(), rtol=1e-5)
  diff = explain.logit_difference(logits, jnp.array([3, 4]), 0, position=2)
  np.testing.assert_allclose(diff, np.asarray(logits)[[0, 1], 2, [3, 4]] - np.asarray(logits)[:, 2, 0])


# -- the training step is unchanged ----------------------------------------------------------------------------------
def _train_jaxprs(monkeypatch):
  """Jaxprs of each model's loss and its gradient (training: dropout on), with the real hooks and with an identity."""
  gpt, gv = _gpt(dropout_rate=0.1)
  bert, bv = _bert()
  bert = BERT(dataclasses.replace(bert.cfg, dropout_rate=0.1, attention_dropout_rate=0.1))
  encdec, ev, src, valid, tgt = _encdec()
  ids = _ids()

  def ce(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  rngs = {"dropout": jax.random.key(1)}
  losses = {
      "gpt": (lambda p: ce(gpt.apply({"params": p}, ids, deterministic=False, rngs=rngs), ids), gv),
      "bert": (lambda p: ce(bert.apply({"params": p}, ids, ids > 3, deterministic=False, rngs=rngs), ids), bv),
      "encdec": (lambda p: ce(encdec.apply({"params": p}, src, valid, tgt), tgt), ev),
  }

  def jaxprs():
    return {k: str(jax.make_jaxpr(jax.value_and_grad(f))(v["params"])) for k, (f, v) in losses.items()}

  real = jaxprs()
  with monkeypatch.context() as m:
    m.setattr(hooks, "hook", lambda module, name, x: x)
    identity = jaxprs()
  return real, identity, losses


def test_hooks_cost_nothing_in_the_training_step(monkeypatch):
  real, identity, losses = _train_jaxprs(monkeypatch)
  for kind in real:
    assert real[kind] == identity[kind], kind
  # the comparison can fail: recording an activation changes the traced program
  f, v = losses["gpt"]
  gpt = GPT(_gpt(dropout_rate=0.1)[0].cfg)
  rngs = {"dropout": jax.random.key(1)}
  recorded = lambda p: optax.softmax_cross_entropy_with_integer_labels(explain.run_with_cache(  # noqa: E731
      gpt, {"params": p}, _ids(), names="pattern", deterministic=False, rngs=rngs)[0], _ids()).mean()
  assert str(jax.make_jaxpr(jax.value_and_grad(recorded))(v["params"])) != real["gpt"]
  assert str(jax.make_jaxpr(jax.value_and_grad(f))(v["params"])) == real["gpt"]


# -- errors ----------------------------------------------------------------------------------------------------------
def test_errors_name_the_valid_range():
  model, variables = _gpt()
  ids = _ids()
  with pytest.raises(ValueError, match=r"'nope' matches no activation.*block_\{0\.\.1\}/attn/pattern"):
    explain.run_with_cache(model, variables, ids, names=["resid_post", "nope"])
  with pytest.raises(ValueError, match=r"layer 2 is out of range.*0\.\.1"):
    explain.ablate_heads(model, [(2, 0)])
  with pytest.raises(ValueError, match=r"head 4 .*out of range.*0\.\.3"):
    explain.ablate_heads(model, {0: [4]})
  with pytest.raises(ValueError, match=r"neuron 128 .*0\.\.127"):
    explain.ablate_neurons(model, [(0, 128)])
  with pytest.raises(ValueError, match="cross_attn"):
    explain.ablate_heads(model, "all", sublayer="cross_attn")
  with pytest.raises(ValueError, match="no stack 'encoder'"):
    explain.ablate_heads(model, "all", stack="encoder")
  with pytest.raises(ValueError, match="mode="):
    explain.ablate_heads(model, "all", mode="mean")
  bad_path = explain.interventions_from_paths({"decoder/block_7/attn/z": explain.intervention(True, 0.0)})
  with pytest.raises(ValueError, match=r"decoder/block_7/attn/z.*no such activation.*block_\{0\.\.1\}"):
    explain.run_with_interventions(model, variables, bad_path, ids)
  bad_shape = explain.interventions_from_paths(
      {"decoder/block_0/attn/z": explain.intervention(np.ones((3, 1, 1, 1), bool), 0.0)})
  with pytest.raises(ValueError, match=r"mask at 'decoder/block_0/attn/z' has shape \(3, 1, 1, 1\)"):
    explain.run_with_interventions(model, variables, bad_shape, ids)
  with pytest.raises(ValueError, match="boolean"):
    explain.intervention(np.ones(3), 0.0)
  _, cache = explain.run_with_cache(model, variables, ids, names="resid_post")
  with pytest.raises(ValueError, match=r"no activation 'resid_post' at layer 5.*layers 0\.\.1"):
    cache["resid_post", 5]
  with pytest.raises(ValueError, match="matches nothing in the cache"):
    explain.patch(cache, "attn/z")
  with pytest.raises(ValueError, match=r"positions 8 out of range for 8 tokens"):
    explain.patch(cache, "resid_post", positions=8)
  with pytest.raises(ValueError, match="GPT, BERT and EncoderDecoder"):
    explain.model_stacks(nn.Dense(3))

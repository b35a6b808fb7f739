"""Direct logit attribution (tfjax.explain.attribution): the components add up to the stream the model computes and
their attributions to the logits it computes (GPTs with every kind of position, norm, bias, tied or not, grouped
heads; a translator's decoder with cross-attention); each head's component against a naive attention from its own
queries, keys and values; chunked validation sums against one call; clear errors for what does not decompose."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hf_bert_with_vocab
from test_explain import FIXTURES, tiny_gpt_subject, tiny_translator_subject
from tfjax.explain import attribution as attr_lib
from tfjax.explain import commands
from tfjax.explain import data as data_lib
from tfjax.explain.attention import jit_run_with_cache
from tfjax.explain.subjects import Subject, SubjectError

GPTS = [dict(), dict(positional="learned", use_bias=True), dict(positional="sinusoidal", norm="rmsnorm"),
        dict(tie_embeddings=False, num_heads=4, num_kv_heads=2, use_bias=True, positional="learned")]


def _learned_translator() -> Subject:
  """The tiny translator's vocabulary in an encoder-decoder with learned positions (BART's offset 2) and biases."""
  from tfjax.models.config import TransformerConfig
  from tfjax.models.transformer import EncoderDecoder
  base = tiny_translator_subject()
  model = EncoderDecoder(TransformerConfig(vocab_size=base.cfg.vocab_size, num_layers=2, num_heads=2, emb_dim=16,
                                           max_len=16, positional="learned", position_offset=2, use_bias=True))
  src = jnp.asarray([[3, 4, 5, 6, 7]])
  params = nn.unbox(model.init(jax.random.key(2), src, jnp.ones(src.shape, bool), src)["params"])
  return Subject("translator", "t", model, params, base.tokenizer)


def _batch(subject, text):
  return jax.tree.map(jnp.asarray, data_lib.eval_batches(subject, 1, text, None)[0])


def _decomposed(subject, text):
  unembed = attr_lib.unembedding(subject.model, subject.params)
  positions = attr_lib.position_table(subject.model, subject.params)
  batch = _batch(subject, text)
  components, resid, logits = attr_lib._decompose(subject.model, subject.kind, subject.params, batch, positions)
  return unembed, batch, components, resid, logits


def _centred(logits, tokens):
  return np.asarray(jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0] - jnp.mean(logits, -1))


@pytest.mark.parametrize("overrides", GPTS + ["translator", "translator_learned"],
                         ids=["rope", "learned_bias", "sinusoidal_rms", "untied_gqa", "translator", "translator_learned"])
def test_components_add_up_to_the_stream_and_attributions_to_the_logits(overrides):
  subject = ({"translator": tiny_translator_subject, "translator_learned": _learned_translator}[overrides]()
             if isinstance(overrides, str) else tiny_gpt_subject(**overrides))
  text = "a dog runs" if subject.kind == "translator" else "abc cab bad fed"
  unembed, batch, components, resid, logits = _decomposed(subject, text)
  names = attr_lib.component_names(subject.model)
  assert components.shape[0] == len(names) and names[-1] == "biases"
  np.testing.assert_allclose(components.sum(0), resid, atol=1e-5)
  targets = batch["targets"]
  got = attr_lib.attribute(unembed, components, resid, *attr_lib.token_directions(unembed, targets))
  np.testing.assert_allclose(got.sum(0), _centred(logits, targets), atol=1e-5)
  other = jnp.zeros_like(targets) + 3  # a logit difference is the difference of the directions
  u_y, b_y = attr_lib.token_directions(unembed, targets)
  u_o, b_o = attr_lib.token_directions(unembed, other)
  diff = attr_lib.attribute(unembed, components, resid, u_y - u_o, b_y - b_o).sum(0)
  want = (jnp.take_along_axis(logits, targets[..., None], -1) - jnp.take_along_axis(logits, other[..., None], -1))
  np.testing.assert_allclose(diff, want[..., 0], atol=1e-5)
  assert float(jnp.abs(got[:-1]).max()) > 1e-4  # not all in the biases


def test_each_heads_component_equals_a_naive_attention_through_its_rows_of_out():
  subject = tiny_gpt_subject(**GPTS[3])  # 4 query heads over 2 key/value heads, learned positions, biases
  model, params = subject.model, subject.params
  ids = jnp.asarray(subject.text_ids("abc cab bad fed")[None])
  _, cache = jit_run_with_cache(model, params, ids, names=tuple(attr_lib.capture_names(model)) + ("attn/q", "attn/k",
                                                                                                  "attn/v"))
  components, _ = attr_lib.residual_components(model, params, cache, attr_lib.position_table(model, params))
  names = attr_lib.component_names(model)
  t, heads, kv = ids.shape[1], model.cfg.num_heads, model.cfg.num_kv_heads
  for layer in range(model.cfg.num_layers):
    q, k, v = (np.asarray(cache[n, layer], np.float64)[0] for n in ("q", "k", "v"))  # [T, H|K, Dh]
    out = np.asarray(params["decoder"][f"block_{layer}"]["attn"]["out"]["kernel"], np.float64)
    dh = q.shape[-1]
    for h in range(heads):
      kh = h // (heads // kv)
      scores = q[:, h] @ k[:, kh].T / np.sqrt(dh)
      scores[np.triu(np.ones((t, t), bool), 1)] = -np.inf
      p = np.exp(scores - scores.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      want = (p @ v[:, kh]) @ out[h * dh:(h + 1) * dh]
      np.testing.assert_allclose(components[names.index(f"L{layer} H{h}"), 0], want, atol=2e-5)
  bias = sum(np.asarray(params["decoder"][f"block_{l}"]["attn"]["out"]["bias"]) for l in range(2))
  np.testing.assert_allclose(components[-1, 0], np.broadcast_to(bias, components.shape[2:]), atol=1e-6)


def test_validation_means_in_chunks_equal_one_call_and_add_up_to_the_mean_logit(monkeypatch):
  subject = tiny_gpt_subject(positional="learned")
  ids = np.random.default_rng(0).integers(0, 9, size=(12, 16)).astype(np.int32)
  batches = [{"inputs": ids[:7, :-1], "targets": ids[:7, 1:]}, {"inputs": ids[7:, :-1], "targets": ids[7:, 1:]}]
  monkeypatch.setattr(attr_lib.data_lib, "eval_batches", lambda *a, **k: batches)
  unembed = attr_lib.unembedding(subject.model, subject.params)
  positions = attr_lib.position_table(subject.model, subject.params)
  whole = attr_lib._validation(subject, unembed, positions, 2)
  row = len(whole["names"]) * 15 * 16 * 4
  chunked = attr_lib._validation(subject, unembed, positions, 2, budget=2 * row)  # chunks of 2 rows
  np.testing.assert_allclose(chunked["mean"], whole["mean"], rtol=1e-5, atol=1e-7)
  assert whole["tokens"] == 12 * 15
  logits = subject.model.apply({"params": subject.params}, jnp.asarray(ids[:, :-1]))
  want = _centred(logits, jnp.asarray(ids[:, 1:])).mean()
  assert whole["mean"].sum() == pytest.approx(want, abs=1e-5)
  assert whole["mean_centred_logit"] == pytest.approx(want, abs=1e-5)


def test_zeroing_a_head_its_own_write_goes_and_the_total_is_the_ablated_models_logit(monkeypatch):
  """``indirect``: with head (l, h) zeroed, that head's component writes nothing (its row's own entry is minus its
  mean), and the row's total is the change of the correct token's centred logit that ``explain.ablate_heads`` (an
  independent way to zero a head) gives."""
  from tfjax import explain
  tiny = tiny_gpt_subject(positional="learned")
  params = jax.tree.map(lambda a: a * 10.0, tiny.params)  # N(0, 0.2) weights: heads that change what follows them
  subject = Subject("gpt", "tiny-gpt-x10", tiny.model, params, tiny.tokenizer)
  ids = np.random.default_rng(1).integers(0, 9, size=(6, 16)).astype(np.int32)
  monkeypatch.setattr(attr_lib.data_lib, "eval_batches", lambda *a, **k: [{"inputs": ids[:, :-1],
                                                                           "targets": ids[:, 1:]}])
  model, variables = subject.model, {"params": subject.params}
  unembed = attr_lib.unembedding(model, subject.params)
  sources = attr_lib.head_sources(model)
  assert [label for label, _ in sources] == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]
  val = attr_lib._validation(subject, unembed, attr_lib.position_table(model, subject.params), 1, sources=sources)
  names = val["names"]
  x, y = jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:])
  base = _centred(model.apply(variables, x), y).mean()
  for i, (layer, head) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
    own = names.index(f"L{layer} H{head}")
    assert val["indirect"][i, own] == pytest.approx(-val["mean"][own], abs=1e-6)
    ablated = explain.run_with_interventions(model, variables, explain.ablate_heads(model, [(layer, head)]), x)
    assert val["indirect"][i].sum() == pytest.approx(_centred(ablated, y).mean() - base, rel=1e-4, abs=1e-5)
    others = np.delete(val["indirect"][i], own)
    if layer == 0:  # a layer-0 head is read by what comes after it
      assert np.abs(others).max() > 0.05


def test_command_on_a_gpt_and_a_translator_and_the_cli(tmp_path, capsys):
  from experiments import explain as cli
  hf = str(FIXTURES / "hf_gpt2")
  out = commands.run_command("attribution", hf, str(tmp_path / "gpt2"), text="hello world", position=2)
  assert out["text"]["position"] == 2 and "runner-up" in out["summary"]
  assert (tmp_path / "gpt2" / "attribution_text.png").exists() and (tmp_path / "gpt2" / "attribution_position.png")
  np.testing.assert_allclose(out["text"]["difference_attribution"].sum(), out["text"]["logit_difference"], atol=1e-4)
  np.testing.assert_allclose(out["text"]["attribution"].sum(0), out["text"]["centred_logit"], atol=1e-4)
  tr = attr_lib.run(tiny_translator_subject(), str(tmp_path / "tr"), text="a dog runs", target="ein hund rennt")
  assert "L1 X0" in tr["components"] and tr["text"]["attribution"].shape[1] == len(tr["text"]["targets"])
  assert cli.main(["attribution", hf, f"--out={tmp_path / 'cli'}", "--text=hello world", "--position=-2",
                   "--indirect=false"]) == 0
  assert "attribution: the last stream as" in capsys.readouterr().out
  saved = json.loads((tmp_path / "cli" / "attribution.json").read_text())
  assert saved["text"]["position"] == len(saved["text"]["inputs"]) - 2


def test_clear_errors(tmp_path):
  with pytest.raises(SubjectError, match="works on a GPT .decoder. or an encoder-decoder translator"):
    commands.run_command("attribution", hf_bert_with_vocab(tmp_path), str(tmp_path / "bert"))
  post = tiny_gpt_subject(pre_ln=False)
  with pytest.raises(SubjectError, match="needs a pre-LN model"):
    attr_lib.run(post, str(tmp_path / "post"))
  with pytest.raises(SubjectError, match="position 40 is outside the text's 9 predicted positions"):
    attr_lib.run(tiny_gpt_subject(), str(tmp_path / "x"), text="abc cab ba", position=40)
  from tfjax.models.bert import BERT
  with pytest.raises(ValueError, match="MLM head is nonlinear"):
    attr_lib.check_decomposable(BERT(tiny_gpt_subject().cfg))


def test_the_library_entry_point_is_the_commands_decomposition():
  from tfjax import explain
  subject = tiny_gpt_subject(positional="learned", use_bias=True)
  variables = {"params": subject.params}
  ids = jnp.asarray(subject.text_ids("abc cab bad fed")[None])
  names, _ = explain.logit_attribution(subject.model, variables, ids[:, :-1], tokens=ids[:, 1:])
  got = jax.jit(lambda v, x, y: explain.logit_attribution(subject.model, v, x, tokens=y)[1])(variables, ids[:, :-1],
                                                                                           ids[:, 1:])
  unembed, batch, components, resid, _ = _decomposed(subject, "abc cab bad fed")
  want = attr_lib.attribute(unembed, components, resid, *attr_lib.token_directions(unembed, batch["targets"]))
  assert names == attr_lib.component_names(subject.model)
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_the_position_table_is_explain_positions_vectors(positional):
  from tfjax.explain.positions import position_vectors
  subject = tiny_gpt_subject(positional=positional)
  np.testing.assert_allclose(attr_lib.position_table(subject.model, subject.params),
                             position_vectors(subject)["decoder"], atol=1e-6)


@pytest.mark.parametrize("overrides", [dict(use_bias=True, positional="learned"), dict(norm="rmsnorm")],
                         ids=["layernorm_bias", "rmsnorm"])
def test_mlp_neurons_add_up_to_the_mlps_component(overrides, monkeypatch):
  subject = tiny_gpt_subject(**overrides)
  model, params = subject.model, subject.params
  unembed, batch, components, resid, _ = _decomposed(subject, "abc cab bad fed")
  u, ub = attr_lib.token_directions(unembed, batch["targets"])
  whole = attr_lib.attribute(unembed, components, resid, u, ub)
  names = attr_lib.component_names(model)
  _, cache = jit_run_with_cache(model, params, batch["inputs"], names=("mlp/hidden",))
  for layer in range(model.cfg.num_layers):
    fc_out = params["decoder"][f"block_{layer}"]["mlp"]["fc_out"]
    neurons = attr_lib.neuron_attribution(unembed, cache["mlp/hidden", layer], fc_out, resid, u)
    bias = fc_out.get("bias")
    rest = 0.0 if bias is None else attr_lib.attribute(
        unembed, jnp.broadcast_to(jnp.asarray(bias), resid.shape)[None], resid, u, jnp.zeros_like(ub))[0]
    if unembed.bias is not None and bias is not None:  # attribute() adds the norm's bias to its last row: undo it
      rest = rest - jnp.einsum("d,btd->bt", unembed.bias, u)
    np.testing.assert_allclose(neurons.sum(-1) + rest, whole[names.index(f"L{layer} MLP")], atol=1e-5)
  # the command's per-neuron means over validation rows are these, averaged
  ids = np.random.default_rng(2).integers(0, 9, size=(5, 16)).astype(np.int32)
  monkeypatch.setattr(attr_lib.data_lib, "eval_batches", lambda *a, **k: [{"inputs": ids[:, :-1],
                                                                           "targets": ids[:, 1:]}])
  val = attr_lib._validation(subject, unembed, attr_lib.position_table(model, params), 1)
  assert val["neurons"].shape == (2, model.cfg.hidden_dim)
  if not model.cfg.use_bias:  # no fc_out bias: the neurons are the whole MLP
    np.testing.assert_allclose(val["neurons"].sum(-1), [val["mean"][names.index(f"L{l} MLP")] for l in range(2)],
                               rtol=1e-4, atol=1e-7)
  assert attr_lib.neurons_for_share(np.array([3.0, 1.0, -1.0, 1.0])) == 1  # 3 of the total 4 is over half
  assert attr_lib.neurons_for_share(np.array([1.0, 1.0, 1.0, 1.0])) == 2
  assert attr_lib.neurons_for_share(np.array([-1.0, 0.5])) is None

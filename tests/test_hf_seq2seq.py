"""Hugging Face encoder-decoders (Marian, BART): logits parity with transformers (reference logits, tokenizer ids and
greedy generations stored in tests/fixtures/hf_{marian,bart}.npz by tools/make_hf_fixtures.py), export -> import
round trips, transformers loading tfjax's export (when torch is installed), and clear errors for what tfjax cannot
represent."""

import dataclasses
import functools
import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tfjax import hf
from tfjax.layers.embeddings import sinusoidal_table
from tfjax.models.transformer import EncoderDecoder

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
NAMES = ("marian", "bart")


def _apply(model, params, src, src_valid, tgt):
  # eager, not jitted: the tiny models' ops are compiled once and shared by every variant below (a jit per variant
  # costs ~4 s of compilation each)
  return model.apply({"params": params}, src, src_valid, tgt)


def _logits(model, params, ref):
  return np.asarray(_apply(model, params, ref["input_ids"], ref["attention_mask"].astype(bool),
                           ref["decoder_input_ids"]))


@functools.lru_cache(maxsize=None)
def _loaded(name):
  return hf.load(FIXTURES / f"hf_{name}")


def _ref(name):
  return np.load(FIXTURES / f"hf_{name}.npz")


def _copy(name, tmp_path, edit_config=None, edit_tensors=None):
  d = tmp_path / name
  shutil.copytree(FIXTURES / f"hf_{name}", d)
  if edit_config:
    config = json.loads((d / "config.json").read_text())
    edit_config(config)
    (d / "config.json").write_text(json.dumps(config))
  if edit_tensors:
    tensors = load_file(d / "model.safetensors")
    edit_tensors(tensors)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  return d


def test_fixtures_are_small_and_perturbed():
  for name in NAMES:
    files = [f for f in (FIXTURES / f"hf_{name}").iterdir()] + [FIXTURES / f"hf_{name}.npz"]
    assert sum(f.stat().st_size for f in files) < 120_000
    for key, w in load_file(FIXTURES / f"hf_{name}" / "model.safetensors").items():
      assert not np.allclose(w, 1.0) and not np.allclose(w, 0.0), key  # nothing at its default value


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers_with_padding_in_encoder_and_decoder(name):
  model, params = _loaded(name)
  ref = _ref(name)
  assert isinstance(model, EncoderDecoder)
  cfg = model.cfg
  assert (cfg.pre_ln, cfg.final_norm, cfg.logits_bias, cfg.norm_eps, cfg.tie_embeddings) == (
      False, False, True, 1e-5, True)
  if name == "marian":  # swish, sqrt(D) embeddings, sines then cosines, 2 encoder layers / 1 decoder layer
    assert (cfg.activation, cfg.embed_scale, cfg.positional, cfg.sinusoidal_layout, cfg.embed_norm) == (
        "silu", True, "sinusoidal", "halves", False)
    assert (model.num_encoder_layers, cfg.num_layers) == (2, 1)
  else:  # exact GELU, learned positions read at p + 2, layernorm_embedding, 1 encoder layer / 2 decoder layers
    assert (cfg.activation, cfg.embed_scale, cfg.positional, cfg.position_offset, cfg.embed_norm) == (
        "gelu", False, "learned", 2, True)
    assert (model.num_encoder_layers, cfg.num_layers) == (1, 2)
  enc_real, dec_real = ref["attention_mask"].astype(bool), ref["decoder_attention_mask"].astype(bool)
  assert not enc_real.all() and not dec_real.all()  # padding on both sides
  logits = _logits(model, params, ref)
  assert logits.shape == ref["logits"].shape and logits.dtype == np.float32
  np.testing.assert_allclose(logits[dec_real], ref["logits"][dec_real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,change", [("marian", dict(sinusoidal_layout="interleaved")),
                                         ("marian", dict(embed_scale=False)),
                                         ("bart", dict(activation="gelu_tanh")),
                                         ("bart", dict(logits_bias=False))])
def test_each_option_matters_for_parity(name, change):
  """Guards the parity test: the model without one of the options does not pass it."""
  model, params = _loaded(name)
  ref = _ref(name)
  wrong = EncoderDecoder(dataclasses.replace(model.cfg, **change), model.num_encoder_layers)
  if not wrong.cfg.logits_bias:
    params = {k: v for k, v in params.items() if k != "logits_bias"}
  real = ref["decoder_attention_mask"].astype(bool)
  assert np.abs(_logits(wrong, params, ref)[real] - ref["logits"][real]).max() > 2e-5  # twice the tolerance


def test_marian_positions_are_sines_then_cosines():
  table = sinusoidal_table(4, 6, layout="halves")
  angles = np.arange(4)[:, None] / 10_000 ** (np.arange(3) * 2 / 6)
  np.testing.assert_allclose(table, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-7)
  np.testing.assert_allclose(sinusoidal_table(4, 6)[:, 1::2], np.cos(angles), atol=1e-7)  # interleaved


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_matches_transformers(name):
  ref = _ref(name)
  tok = hf.load_tokenizer(FIXTURES / f"hf_{name}")
  for text, ids in zip(ref["texts"], ref["text_ids"]):
    assert tok.encode(str(text)) == [i for i in ids.tolist() if i >= 0], str(text)
  for ids, text in zip(ref["decode_ids"], ref["decoded"]):
    assert tok.decode(ids.tolist()) == str(text)
  assert tok.vocab_size == _loaded(name)[0].cfg.vocab_size


def test_bart_tokenizer_from_vocab_and_merges(tmp_path):
  for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    shutil.copy(FIXTURES / "hf_bart" / f, tmp_path / f)
  ref, tok = _ref("bart"), hf.load_tokenizer(tmp_path)
  for text, ids in zip(ref["texts"], ref["text_ids"]):
    assert tok.encode(str(text)) == [i for i in ids.tolist() if i >= 0]  # <s> ... </s> as BartTokenizer
  assert tok.eos_id == 2


@pytest.mark.parametrize("name", NAMES)
def test_greedy_translation_equals_transformers_generate(name):
  model, params = _loaded(name)
  ref = _ref(name)
  d = FIXTURES / f"hf_{name}"
  tok, ids = hf.load_tokenizer(d), hf.generation_ids(d)
  assert ids.decoder_start == int(ref["generate_ids"][0, 0])
  sources = [str(s) for s in ref["generate_sources"]]
  out = hf.translate_texts(model, params, tok, sources, ids, batch_size=2)
  for got, expected in zip(out, ref["generate_ids"]):  # transformers' 8 new tokens (no end of sentence among them)
    assert ids.eos not in expected[1:].tolist()
    assert got.startswith(tok.decode(expected[1:].tolist()))
  assert out[0] != out[1]  # the translation depends on the source


def test_translate_empty_and_overlong_lines(caplog):
  model, params = _loaded("marian")
  d = FIXTURES / "hf_marian"
  tok, ids = hf.load_tokenizer(d), hf.generation_ids(d)
  long_line = " ".join(["the children play outside in the park"] * 4)
  assert len(tok.encode(long_line)) > model.cfg.max_len
  lines = ["a dog runs in the snow .", "", "  ", long_line]
  with caplog.at_level(logging.WARNING, logger="tfjax"):
    out = hf.translate_texts(model, params, tok, lines, ids, batch_size=2)
  assert out[1] == out[2] == "" and all(isinstance(o, str) for o in out)
  assert "1 of 4 sources are longer than the context window (32 tokens), the first is line 4" in caplog.text
  cut = tok.encode(long_line)[:model.cfg.max_len - 1]
  assert out[3] == hf.translate_texts(model, params, tok, [tok.decode(cut)], ids, batch_size=2)[0]
  assert out[0] == hf.translate_texts(model, params, tok, lines[:1], ids, batch_size=2)[0]
  with pytest.raises(ValueError, match="the first is line 4"):
    hf.translate_texts(model, params, tok, lines, ids, too_long="error")
  assert hf.translate_texts(model, params, tok, ["", ""], ids, batch_size=2) == ["", ""]


def test_banned_tokens_are_never_generated():
  """bad_words_ids of one token (opus-mt bans <pad>): its logit is -inf, so greedy decoding takes the runner-up."""
  model, params = _loaded("marian")
  ref, ids = _ref("marian"), hf.generation_ids(FIXTURES / "hf_marian")
  src = [[i for i in ref["text_ids"][0].tolist() if i >= 0]]
  (out,) = hf.translate_ids(model, params, src, ids, batch_size=2)
  banned = dataclasses.replace(ids, banned=(out[0],))
  (again,) = hf.translate_ids(model, params, src, banned, batch_size=2)
  assert out[0] not in again
  logits = np.asarray(_apply(model, params, np.asarray(src), np.ones((1, len(src[0])), bool),
                             np.asarray([[ids.decoder_start]])))[0, 0]
  assert again[0] == np.argsort(logits)[-2]  # the second most likely first token


@pytest.mark.parametrize("name", NAMES)
def test_export_import_round_trip(name, tmp_path):
  model, params = _loaded(name)
  src = FIXTURES / f"hf_{name}"
  hf.save(model, params, tmp_path, tokenizer_from=src)
  original, written = load_file(src / "model.safetensors"), load_file(tmp_path / "model.safetensors")
  assert sorted(written) == sorted(original)  # same tensor names (tied embeddings stored once) ...
  for k in original:  # ... and values, bit for bit
    np.testing.assert_array_equal(written[k], original[k], err_msg=k)
  before, after = (json.loads((d / "config.json").read_text()) for d in (src, tmp_path))
  for key in ("model_type", "architectures", "d_model", "encoder_layers", "decoder_layers", "vocab_size",
              "activation_function", "scale_embedding", "max_position_embeddings", "pad_token_id", "eos_token_id",
              "decoder_start_token_id", "tie_word_embeddings"):
    assert after[key] == before[key], key
  model2, params2 = hf.load(tmp_path)
  assert model2 == model
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  assert hf.load_tokenizer(tmp_path).encode("a dog") == hf.load_tokenizer(src).encode("a dog")


def test_untied_lm_head(tmp_path):
  rng = np.random.default_rng(0)
  lm_head = rng.standard_normal((_loaded("bart")[0].cfg.vocab_size, 16)).astype(np.float32)
  d = _copy("bart", tmp_path, lambda c: c.update(tie_word_embeddings=False),
            lambda t: t.update({"lm_head.weight": lm_head}))
  model, params = hf.load(d)
  assert not model.cfg.tie_embeddings
  np.testing.assert_array_equal(params["unembed"]["kernel_dense"]["kernel"], lm_head.T)
  hf.save(model, params, tmp_path / "out")
  np.testing.assert_array_equal(load_file(tmp_path / "out" / "model.safetensors")["lm_head.weight"], lm_head)
  (d / "model.safetensors").write_bytes((FIXTURES / "hf_bart" / "model.safetensors").read_bytes())
  with pytest.raises(hf.HFCheckpointError, match="missing tensor 'lm_head.weight'.*untied"):
    hf.load(d)


@pytest.mark.parametrize("name,edit,match", [
    ("marian", lambda c: c.update(normalize_before=True), "normalize_before=True is not supported"),
    ("bart", lambda c: c.update(add_final_layer_norm=True), "add_final_layer_norm=True is not supported"),
    ("bart", lambda c: c.update(model_type="mbart"), "unsupported model_type 'mbart'"),
    ("marian", lambda c: c.update(share_encoder_decoder_embeddings=False), "share_encoder_decoder_embeddings"),
    ("marian", lambda c: c.update(decoder_ffn_dim=8), "encoder_ffn_dim=24 differs from decoder_ffn_dim=8"),
    ("bart", lambda c: c.update(activation_function="quick_gelu"), "activation_function='quick_gelu'"),
])
def test_unsupported_options_are_named(tmp_path, name, edit, match):
  with pytest.raises(hf.HFCheckpointError, match=match):
    hf.load(_copy(name, tmp_path, edit_config=edit))


def test_tensor_problems_are_named(tmp_path):
  def add_final_norm(t):  # an mBART-style norm after the encoder, which BART does not have
    t["model.encoder.layer_norm.weight"] = np.ones(16, np.float32)
  with pytest.raises(hf.HFCheckpointError, match="'model.encoder.layer_norm.weight'"):
    hf.load(_copy("bart", tmp_path / "a", edit_tensors=add_final_norm))

  def trained_positions(t):
    t["model.encoder.embed_positions.weight"] = sinusoidal_table(32, 16, layout="interleaved")
  with pytest.raises(hf.HFCheckpointError, match="'model.encoder.embed_positions.weight' is not Marian's"):
    hf.load(_copy("marian", tmp_path / "b", edit_tensors=trained_positions))

  def positions_stored(t):  # older checkpoints store the (correct) tables: accepted
    t["model.encoder.embed_positions.weight"] = sinusoidal_table(32, 16, layout="halves")
    t["model.decoder.embed_positions.weight"] = sinusoidal_table(32, 16, layout="halves")
    t["model.encoder.embed_tokens.weight"] = t["model.decoder.embed_tokens.weight"] = t.pop("model.shared.weight")
  model, params = hf.load(_copy("marian", tmp_path / "c", edit_tensors=positions_stored))
  np.testing.assert_array_equal(params["embed"]["embedding"], _loaded("marian")[1]["embed"]["embedding"])

  with pytest.raises(hf.HFCheckpointError, match="missing tensor 'model.decoder.layers.1.fc2.bias'"):
    hf.load(_copy("bart", tmp_path / "d", edit_tensors=lambda t: t.pop("model.decoder.layers.1.fc2.bias")))
  with pytest.raises(hf.HFCheckpointError, match=r"'model.decoder.embed_positions.weight' has shape \(33, 16\)"):
    hf.load(_copy("bart", tmp_path / "e", edit_tensors=lambda t: t.update(
        {"model.decoder.embed_positions.weight": t["model.decoder.embed_positions.weight"][:-1]})))


def test_export_refuses_tfjax_own_encoder_decoder(tmp_path):
  from tfjax.models.config import TransformerConfig
  model = EncoderDecoder(TransformerConfig(vocab_size=30, num_layers=1, num_heads=2, emb_dim=8, max_len=8,
                                           positional="sinusoidal", pre_ln=False))
  ids = np.ones((1, 4), np.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids > 0, ids))["params"]
  with pytest.raises(hf.HFCheckpointError, match="final_norm=True.*|.*sinusoidal_layout='interleaved'"):
    hf.save(model, params, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_transformers_loads_the_export_with_the_same_logits(name, tmp_path):
  """With torch + transformers installed (dev): tfjax's export, loaded by transformers, gives the stored logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model, params = _loaded(name)
  hf.save(model, params, tmp_path)
  cls = {"marian": transformers.MarianMTModel, "bart": transformers.BartForConditionalGeneration}[name]
  pt = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
  ref = _ref(name)
  with torch.no_grad():
    logits = pt(**{k: torch.tensor(ref[k].astype(np.int64)) for k in (
        "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}).logits.numpy()
  real = ref["decoder_attention_mask"].astype(bool)
  np.testing.assert_allclose(logits[real], ref["logits"][real], atol=1e-5, rtol=0)

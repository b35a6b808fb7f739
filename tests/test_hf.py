"""Hugging Face interop: logits parity with the PyTorch models (reference logits stored in tests/fixtures/*.npz by
tools/make_hf_fixtures.py), export -> import round trips, and clear errors for bad checkpoint directories."""

import functools
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tfjax import hf
from tfjax.layers.masks import padding_mask
from tfjax.models.bert import BERT
from tfjax.models.gpt import GPT

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GPT2_DIR, BERT_DIR, ROFORMER_DIR = FIXTURES / "hf_gpt2", FIXTURES / "hf_bert", FIXTURES / "hf_roformer"


@functools.partial(jax.jit, static_argnums=0)
def _gpt2_apply(model, params, ids, real):
  return model.apply({"params": params}, ids, mask=padding_mask(real))


@functools.partial(jax.jit, static_argnums=0)
def _bert_apply(model, params, ids, attention_mask, token_type_ids):
  return model.apply({"params": params}, ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def _gpt2_logits(model, params, ref):
  return np.asarray(_gpt2_apply(model, params, ref["input_ids"], ref["attention_mask"].astype(bool)))


def _bert_logits(model, params, ref):
  return np.asarray(_bert_apply(model, params, ref["input_ids"], ref["attention_mask"], ref["token_type_ids"]))


def _random_params(model, ids):
  """Parameters of ``model`` drawn on the host (nothing to compile)."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids))["params"])
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def gpt2():
  return hf.load(GPT2_DIR), np.load(FIXTURES / "hf_gpt2.npz")


@pytest.fixture(scope="module")
def bert():
  return hf.load(BERT_DIR), np.load(FIXTURES / "hf_bert.npz")


@pytest.fixture(scope="module")
def roformer():
  return hf.load(ROFORMER_DIR), np.load(FIXTURES / "hf_roformer.npz")


def test_fixtures_are_small_and_perturbed():
  total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
  assert total < 520_000  # all five fixtures (GPT-2, BERT, RoFormer, Marian, BART)
  for d in (GPT2_DIR, BERT_DIR, ROFORMER_DIR):
    for name, w in load_file(d / "model.safetensors").items():  # nothing at its default value (1 or 0)
      if name != "roformer.encoder.embed_positions.weight":  # fixed sinusoids (sin 0 = 0 in row 0)
        assert not np.allclose(w, 1.0) and not np.allclose(w, 0.0), name


def test_gpt2_logits_match_transformers(gpt2):
  (model, params), ref = gpt2
  assert isinstance(model, GPT)
  cfg = model.cfg
  assert (cfg.pre_ln, cfg.activation, cfg.norm_eps, cfg.tie_embeddings) == (True, "gelu_tanh", 1e-5, True)
  logits = _gpt2_logits(model, params, ref)
  real = ref["attention_mask"].astype(bool)
  assert logits.shape == ref["logits"].shape and logits.dtype == np.float32
  np.testing.assert_allclose(logits[real], ref["logits"][real], atol=1e-5, rtol=0)


def test_bert_logits_match_transformers(bert):
  (model, params), ref = bert
  assert isinstance(model, BERT)
  cfg = model.cfg
  assert (cfg.pre_ln, cfg.activation, cfg.norm_eps, cfg.hidden_dim) == (False, "gelu", 1e-12, 48)
  logits = _bert_logits(model, params, ref)
  real = ref["attention_mask"].astype(bool)
  assert not real.all()  # the reference inputs have padding
  np.testing.assert_allclose(logits[real], ref["logits"][real], atol=1e-5, rtol=0)


def test_exact_gelu_matters_for_parity(bert):
  """Guards the parity test itself: the tanh-approximate GELU would not pass it."""
  import dataclasses
  (model, params), ref = bert
  wrong = BERT(dataclasses.replace(model.cfg, activation="gelu_tanh"), model.type_vocab_size)
  real = ref["attention_mask"].astype(bool)
  err = np.abs(_bert_logits(wrong, params, ref)[real] - ref["logits"][real]).max()
  assert err > 1e-4


def test_roformer_logits_match_transformers(roformer):
  """RoFormerForMaskedLM = BERT with rotary positions: imported as a tfjax BERT with ``positional="rope"``."""
  (model, params), ref = roformer
  assert isinstance(model, BERT)
  cfg = model.cfg
  assert (cfg.positional, cfg.pre_ln, cfg.activation, cfg.norm_eps) == ("rope", False, "gelu", 1e-12)
  assert "pos_embed" not in params
  logits = _bert_logits(model, params, ref)
  real = ref["attention_mask"].astype(bool)
  assert not real.all()
  np.testing.assert_allclose(logits[real], ref["logits"][real], atol=1e-5, rtol=0)


def test_rotary_pair_order_matters_for_parity(roformer):
  """Guards the RoFormer parity test: RoFormer rotates channels (2i, 2i+1), tfjax (i, i + Dh/2); importing the query
  and key columns without the permutation gives other logits."""
  from tfjax.hf import rotary_pairs_permutation
  np.testing.assert_array_equal(rotary_pairs_permutation(2, 4), [0, 2, 1, 3, 4, 6, 5, 7])
  (model, params), ref = roformer
  perm = rotary_pairs_permutation(model.cfg.num_heads, model.cfg.emb_dim // model.cfg.num_heads)
  d = model.cfg.emb_dim
  unpermuted = jax.tree.map(np.array, params)  # writable copies
  for block in unpermuted["encoder"].values():
    k = block["attn"]["qkv"]["kernel"]
    k[:, :2 * d] = np.concatenate([k[:, :d][:, perm], k[:, d:2 * d][:, perm]], axis=1)  # HF's column order
  real = ref["attention_mask"].astype(bool)
  err = np.abs(_bert_logits(model, unpermuted, ref)[real] - ref["logits"][real]).max()
  assert err > 1e-3


def test_roformer_options_tfjax_cannot_represent(tmp_path):
  for key, value, match in [("rotary_value", True, "rotary_value"), ("embedding_size", 16, "embedding_size")]:
    d = tmp_path / key
    shutil.copytree(ROFORMER_DIR, d)
    config = json.loads((d / "config.json").read_text())
    config[key] = value
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf.HFCheckpointError, match=match):
      hf.load(d)


def test_rotary_bert_export_refuses_what_roformer_cannot_express(tmp_path, roformer):
  import dataclasses
  (model, params), _ = roformer
  for change, match in [({"rope_base": 500.0}, "rope_base"), ({"pre_ln": True}, "pre_ln")]:
    with pytest.raises(hf.HFCheckpointError, match=match):
      hf.save(BERT(dataclasses.replace(model.cfg, **change), model.type_vocab_size), params, tmp_path / "x")


@pytest.mark.parametrize("name", ["gpt2", "bert", "roformer"])
def test_export_import_round_trip(name, tmp_path, gpt2, bert, roformer):
  (model, params), ref = {"gpt2": gpt2, "bert": bert, "roformer": roformer}[name]
  src = FIXTURES / f"hf_{name}"
  hf.save(model, params, tmp_path)
  assert hf.is_hf_dir(tmp_path)
  original, written = load_file(src / "model.safetensors"), load_file(tmp_path / "model.safetensors")
  assert sorted(written) == sorted(original)  # same tensor names (tied embedding stored once) ...
  for k in original:  # ... and values, bit for bit
    np.testing.assert_array_equal(written[k], original[k], err_msg=k)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model_type"] == name and config["architectures"] == [hf.SUPPORTED[name]]
  model2, params2 = hf.load(tmp_path)
  assert model2 == model
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_untied_gpt2_round_trip(tmp_path):
  from tfjax.models.gpt import gpt_config
  model = GPT(gpt_config(vocab_size=40, num_layers=1, num_heads=2, emb_dim=8, max_len=16, use_bias=True,
                         tie_embeddings=False, activation="gelu_tanh", positional="learned"))
  ids = jnp.arange(12).reshape(2, 6) % 40
  params = _random_params(model, ids)
  hf.save(model, params, tmp_path)
  written = load_file(tmp_path / "model.safetensors")
  np.testing.assert_array_equal(written["lm_head.weight"], params["unembed"]["kernel_dense"]["kernel"].T)
  model2, params2 = hf.load(tmp_path)
  assert not model2.cfg.tie_embeddings
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_export_refuses_what_hf_cannot_express(tmp_path):
  from tfjax.models.gpt import gpt_config
  model = GPT(gpt_config(vocab_size=40, num_layers=1, num_heads=2, emb_dim=8, max_len=16, positional="rope"))
  params = _random_params(model, jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(hf.HFCheckpointError, match="positional='rope'"):
    hf.save(model, params, tmp_path)


def _copy(src, tmp_path):
  dst = tmp_path / "ckpt"
  shutil.copytree(src, dst)
  return dst


def test_missing_config(tmp_path):
  d = _copy(BERT_DIR, tmp_path)
  (d / "config.json").unlink()
  assert not hf.is_hf_dir(d)
  with pytest.raises(hf.HFCheckpointError, match="no config.json"):
    hf.load(d)


def test_missing_weights(tmp_path):
  d = _copy(BERT_DIR, tmp_path)
  (d / "model.safetensors").unlink()
  with pytest.raises(hf.HFCheckpointError, match="no model.safetensors"):
    hf.load(d)


def test_unsupported_model_type(tmp_path):
  d = _copy(BERT_DIR, tmp_path)
  config = json.loads((d / "config.json").read_text())
  config.update(model_type="t5", architectures=["T5ForConditionalGeneration"])
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf.HFCheckpointError, match="unsupported model_type 't5'"):
    hf.load(d)


def test_unsupported_option(tmp_path):
  d = _copy(BERT_DIR, tmp_path)
  config = json.loads((d / "config.json").read_text())
  config["position_embedding_type"] = "relative_key"
  (d / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf.HFCheckpointError, match="position_embedding_type"):
    hf.load(d)


@pytest.mark.parametrize("src,key", [(BERT_DIR, "bert.encoder.layer.1.attention.self.value.weight"),
                                     (GPT2_DIR, "transformer.h.0.mlp.c_fc.bias")])
def test_missing_tensor_is_named(tmp_path, src, key):
  d = _copy(src, tmp_path)
  tensors = load_file(d / "model.safetensors")
  del tensors[key]
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf.HFCheckpointError, match=f"missing tensor '{key}'"):
    hf.load(d)


def test_a_bert_without_its_masked_lm_head_says_so(tmp_path):
  d = _copy(BERT_DIR, tmp_path)
  tensors = {k: v for k, v in load_file(d / "model.safetensors").items() if not k.startswith("cls.")}
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf.HFCheckpointError, match=r"missing tensor 'cls\..*' \(and \d+ more\) .*a checkpoint of the "
                     "bare encoder lacks it"):
    hf.load(d)


@pytest.mark.parametrize("src,key", [(BERT_DIR, "bert.encoder.layer.0.intermediate.dense.weight"),
                                     (GPT2_DIR, "transformer.wpe.weight")])
def test_wrong_shape_is_named(tmp_path, src, key):
  d = _copy(src, tmp_path)
  tensors = load_file(d / "model.safetensors")
  tensors[key] = tensors[key][:-1]
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(hf.HFCheckpointError, match=rf"tensor '{key}' has shape \(\d+, \d+\), expected"):
    hf.load(d)


def test_legacy_names_and_unprefixed_gpt2(tmp_path):
  """The original 'gpt2' checkpoint has no 'transformer.' prefix; old BERT checkpoints use gamma/beta."""
  d = _copy(GPT2_DIR, tmp_path)
  tensors = load_file(d / "model.safetensors")
  tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  tensors["h.0.attn.bias"] = np.zeros((1, 1, 32, 32), np.float32)  # a buffer old checkpoints carry
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  (model, params), ref = hf.load(d), np.load(FIXTURES / "hf_gpt2.npz")
  real = ref["attention_mask"].astype(bool)
  np.testing.assert_allclose(_gpt2_logits(model, params, ref)[real], ref["logits"][real], atol=1e-5, rtol=0)

  d = tmp_path / "bert"
  shutil.copytree(BERT_DIR, d)
  tensors = load_file(d / "model.safetensors")
  tensors = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in tensors.items()}
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  (model, params), ref = hf.load(d), np.load(FIXTURES / "hf_bert.npz")
  real = ref["attention_mask"].astype(bool)
  np.testing.assert_allclose(_bert_logits(model, params, ref)[real], ref["logits"][real], atol=1e-5, rtol=0)


def test_gpt2_tokenizer(tmp_path):
  ref = np.load(FIXTURES / "hf_gpt2.npz")
  text = str(ref["text"])
  tok = hf.load_tokenizer(GPT2_DIR)
  ids = tok.encode(text)
  assert ids == ref["text_ids"].tolist()  # what transformers' GPT2TokenizerFast gives
  assert tok.decode(ids, skip_special_tokens=False) == text
  assert tok.eos_id == tok.token_to_id("<|endoftext|>")
  # the vocab.json + merges.txt form of the same tokenizer gives the same ids
  d = tmp_path / "tok"
  d.mkdir()
  for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    shutil.copy(GPT2_DIR / f, d / f)
  tok2 = hf.load_tokenizer(d)
  assert tok2.encode(text) == ids and tok2.eos_id == tok.eos_id


def test_generate_from_imported_gpt2(gpt2):
  from tfjax.generate import generate, generate_text
  (model, params), _ = gpt2
  tok = hf.load_tokenizer(GPT2_DIR)
  prompt = np.asarray([tok.encode("hello world")], np.int32)
  out = generate(model, params, prompt, 5, jax.random.key(0), temperature=0.0)
  full = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, jnp.asarray(out[:, :-1])))
  # greedy: every generated token is the argmax of the full forward pass at the previous position
  np.testing.assert_array_equal(out[0, prompt.shape[1]:], full[0, prompt.shape[1] - 1:].argmax(-1))
  [text] = generate_text(model, params, tok, "hello world", 5, jax.random.key(0), temperature=0.0)
  assert text == tok.decode(out[0]) and text.startswith("hello world")


def test_export_cli_writes_a_trained_workdir_that_loads_back(tmp_path):
  """``./launch.sh export WORKDIR``: a GPT run GPT-2 can express (learned positions, biases; trained with scanned
  layers) becomes a GPT2LMHeadModel directory whose logits equal the workdir's; a word2vec run is a one-line error.
  (What GPT-2 cannot express: ``test_export_refuses_what_hf_cannot_express``.)"""
  import subprocess
  import sys
  from conftest import tiny_lm_config
  from tfjax.tasks.lm import LMTask, load_for_inference
  from tfjax.train.loop import train_and_evaluate
  root = pathlib.Path(__file__).parent.parent

  def export(*args):
    return subprocess.run([sys.executable, str(root / "experiments" / "export.py"), *map(str, args)], cwd=root,
                          capture_output=True, text=True, timeout=300)

  config = tiny_lm_config(**{"model.positional": "learned", "model.use_bias": True, "model.scan_layers": True,
                             "train.num_steps": 3, "train.eval_every": 0, "train.checkpoint_every": 0})
  run = tmp_path / "run"
  train_and_evaluate(config, str(run), LMTask(config, str(run)))
  proc = export(run)
  assert proc.returncode == 0, proc.stderr
  assert "GPT2LMHeadModel" in proc.stdout and "character-level" in proc.stdout, proc.stdout
  assert json.loads((run / "hf" / "config.json").read_text())["model_type"] == "gpt2"
  model, params, _, _ = load_for_inference(str(run))
  back, back_params = hf.load(run / "hf")
  ids = jnp.asarray([[1, 5, 2, 7, 3]])
  np.testing.assert_allclose(back.apply({"params": back_params}, ids), model.apply({"params": params}, ids),
                             atol=1e-5)
  (tmp_path / "w2v").mkdir()
  (tmp_path / "w2v" / "config.json").write_text(json.dumps({"task": "word2vec"}))
  proc = export(tmp_path / "w2v")
  assert proc.returncode == 1 and "holds a 'word2vec' run" in proc.stderr, proc.stderr

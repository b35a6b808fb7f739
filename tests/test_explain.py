"""`explain` commands: the numbers behind the pictures, checked against independent computations.

Models are tiny (random init, made here) or the tiny Hugging Face fixtures; each command writes into tmp_path.
"""

import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfjax.data.tokenizers import CharTokenizer
from tfjax.explain import attention as attention_lib
from tfjax.explain import commands
from tfjax.explain import temperature as temperature_lib
from tfjax.explain.subjects import Subject, SubjectError, load_subject
from tfjax.generate import generate
from tfjax.layers.blocks import TransformerConfig

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_CACHE = {}


def tiny_gpt_subject(**overrides) -> Subject:
  """A random 2-layer, 2-head GPT over a 9-character alphabet (context 16)."""
  key = ("gpt", tuple(sorted(overrides.items())))
  if key not in _CACHE:
    from tfjax.models.gpt import GPT
    tok = CharTokenizer("abcdefgh ")
    cfg = TransformerConfig(**{**dict(vocab_size=tok.vocab_size, num_layers=2, num_heads=2, emb_dim=16, max_len=16),
                               **overrides})
    model = GPT(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    _CACHE[key] = Subject("gpt", "tiny-gpt", model, params, tok)
  return _CACHE[key]


def tiny_translator_subject() -> Subject:
  """A random 2 + 2-layer encoder-decoder with a BPE vocabulary trained on a few sentences."""
  if "translator" not in _CACHE:
    from tfjax.data import wordpiece
    from tfjax.models.transformer import EncoderDecoder
    tok = wordpiece.train_bpe(["a dog runs", "ein hund rennt", "a cat sleeps", "eine katze schläft"] * 4, 60,
                              min_frequency=1)
    cfg = TransformerConfig(vocab_size=tok.vocab_size, num_layers=2, num_heads=2, emb_dim=16, max_len=16)
    model = EncoderDecoder(cfg)
    z = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.key(1), z, jnp.ones((1, 4), bool), z)["params"]
    _CACHE["translator"] = Subject("translator", "tiny-translator", model, params, tok)
  return _CACHE["translator"]


def hf_bert_with_vocab(tmp_path) -> str:
  """The tiny HF BERT fixture plus a WordPiece vocab.txt of its 100 ids (the fixture ships no tokenizer)."""
  d = tmp_path / "hf_bert"
  shutil.copytree(FIXTURES / "hf_bert", d)
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c in "abcdefghijklmnopqrstuvwxyz"] + \
          ["the", "capital", "of", "is", "paris", "france", "rome", "italy", ",", "."]
  words += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
  words += [f"w{i}" for i in range(100 - len(words))]
  (d / "vocab.txt").write_text("\n".join(words) + "\n")
  return str(d)


# ---------------------------------------------------------------------------------------------------- attention


def test_head_summary_against_numpy():
  rng = np.random.default_rng(0)
  p = rng.random((2, 3, 5, 6)).astype(np.float32)
  p /= p.sum(-1, keepdims=True)
  valid = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
  got = {k: np.asarray(v) for k, v in attention_lib.head_summary(jnp.asarray(p), jnp.asarray(valid)).items()}
  for h in range(3):
    ent, prev, first, diag = [], [], [], []
    for b in range(2):
      for t in range(5):
        if not valid[b, t]:
          continue
        row = p[b, h, t]
        ent.append(-(row * np.log(row)).sum())
        first.append(row[0])
        diag.append(row[t])
        if t >= 1:
          prev.append(row[t - 1])
    np.testing.assert_allclose(got["entropy"][h], np.mean(ent), rtol=1e-5)
    np.testing.assert_allclose(got["previous_token"][h], np.mean(prev), rtol=1e-5)
    np.testing.assert_allclose(got["first_token"][h], np.mean(first), rtol=1e-5)
    np.testing.assert_allclose(got["diagonal"][h], np.mean(diag), rtol=1e-5)


def test_attention_gpt_patterns_are_causal_rows_of_one(tmp_path):
  subject = tiny_gpt_subject()
  result = attention_lib.run(subject, str(tmp_path), text="bad cafe")
  (view,) = result["views"]
  p = view["pattern"]  # [L, H, T, T]
  assert p.shape == (2, 2, 8, 8)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
  assert np.all(p[..., np.triu_indices(8, 1)[0], np.triu_indices(8, 1)[1]] == 0)
  for name in ("attention_self.png", "attention_heads_self.png", "attention.json", "attention_explorer.html"):
    assert (tmp_path / name).stat().st_size > 0
  saved = json.loads((tmp_path / "attention.json").read_text())
  np.testing.assert_allclose(np.array(saved["views"][0]["pattern"]), p, atol=1e-7)
  assert saved["views"][0]["query_tokens"] == list("bad␣cafe")


def test_attention_bert_padding_gets_no_weight(tmp_path):
  subject = load_subject(hf_bert_with_vocab(tmp_path))
  assert subject.kind == "bert"
  result = attention_lib.run(subject, str(tmp_path / "out"), text="the capital of france is paris .")
  (view,) = result["views"]
  p, real = view["pattern"], np.array(view["key_valid"])
  assert not real.all() and real[0]  # padded like a batch
  assert np.all(p[..., ~real] == 0) and np.all(p[:, :, ~real] == 0)  # padding keys get nothing, pad rows are empty
  assert np.all(p[:, :, real][..., real] > 0)
  np.testing.assert_allclose(p[:, :, real].sum(-1), 1.0, rtol=1e-5)
  assert view["query_tokens"][0] == "[CLS]"


def test_attention_translator_cross_attention_excludes_source_padding(tmp_path):
  subject = tiny_translator_subject()
  result = attention_lib.run(subject, str(tmp_path), text="a dog runs", target="ein hund")
  names = [v["name"] for v in result["views"]]
  assert [n.split()[0] for n in names] == ["encoder", "decoder", "cross-attention"]
  cross = result["views"][2]
  src_real = np.array(cross["key_valid"])
  assert cross["pattern"].shape[2:] == (len(cross["query_tokens"]), len(cross["key_tokens"]))
  assert np.all(cross["pattern"][..., ~src_real] == 0)
  np.testing.assert_allclose(cross["pattern"].sum(-1), 1.0, rtol=1e-5)
  assert (tmp_path / "attention_cross.png").exists()


# ---------------------------------------------------------------------------------------------------- temperature


def test_temperature_distributions_against_numpy():
  logits = np.array([2.0, 1.0, 0.5, -1.0, 2.0 - 1e-3], np.float32)
  temps = np.array([0.0, 0.5, 1.0, 3.0], np.float32)
  got = np.asarray(temperature_lib.temperature_distributions(jnp.asarray(logits), jnp.asarray(temps)))
  np.testing.assert_array_equal(got[0], np.eye(5)[0])  # T = 0: the argmax
  for i, t in enumerate(temps[1:], 1):
    e = np.exp((logits - logits.max()) / t)
    np.testing.assert_allclose(got[i], e / e.sum(), rtol=1e-5)
  ent = np.asarray(temperature_lib.entropy(jnp.asarray(got)))
  assert ent[0] == 0 and np.all(np.diff(ent) > 0)  # entropy grows with T
  assert temperature_lib.distinct_n(np.array([[1, 2, 1, 2]]), 2) == 2 / 3
  assert temperature_lib.distinct_n(np.array([[1, 2, 3]]), 1) == 1.0


def test_temperature_to_zero_sampling_equals_greedy():
  subject = tiny_gpt_subject()
  prompt = np.repeat(subject.encode("bad")[None], 3, axis=0)
  greedy = generate(subject.model, subject.params, prompt, 10, jax.random.key(0), temperature=0.0)
  for t in (1e-4,):
    cold = generate(subject.model, subject.params, prompt, 10, jax.random.key(7), temperature=t)
    np.testing.assert_array_equal(cold, greedy)
  hot = generate(subject.model, subject.params, prompt, 10, jax.random.key(7), temperature=5.0)
  assert not np.array_equal(hot, greedy)  # the test can fail: real sampling differs from greedy


def test_temperature_command_on_hf_gpt2(tmp_path):
  result = commands.run_command("temperature", str(FIXTURES / "hf_gpt2"), str(tmp_path), text="hello world",
                                temperatures=[0.0, 1.0, 2.0], num_samples=2, num_tokens=6)
  assert result["probs_top"].shape[0] == 3
  assert result["probs_top"][0][0] == 1.0
  d = result["samples"]["distinct_1"]
  assert d[0] <= d[2] + 1e-9  # greedy repeats at least as much as T = 2 (2 samples of the same greedy text)
  for name in ("temperature_distribution.png", "temperature_entropy.png", "temperature.json"):
    assert (tmp_path / name).exists()


# ---------------------------------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path):
  gpt = str(FIXTURES / "hf_gpt2")
  with pytest.raises(SubjectError, match="unknown explain command"):
    commands.run_command("attn", gpt, str(tmp_path))
  with pytest.raises(SubjectError, match="longer than the model's context window"):
    commands.run_command("attention", gpt, str(tmp_path), text="hello world " * 40)
  with pytest.raises(SubjectError, match="takes no --neurons"):
    commands.run_command("attention", gpt, str(tmp_path), neurons=[1])
  with pytest.raises(SubjectError, match="works on a GPT"):
    commands.run_command("temperature", hf_bert_with_vocab(tmp_path), str(tmp_path))
  with pytest.raises(SubjectError, match="needs a workdir"):
    commands.run_command("attention", None, str(tmp_path))
  with pytest.raises(SubjectError, match="does not exist"):
    commands.run_command("attention", str(tmp_path / "nope"), str(tmp_path))
  subject = tiny_gpt_subject()
  with pytest.raises(SubjectError, match="head 5 does not exist"):
    subject.check_head(5)
  with pytest.raises(SubjectError, match="layer 2 does not exist"):
    subject.check_layer(2)


def test_wrong_kind_of_workdir(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"task": "lm"}))
  wd = tmp_path / "w2v"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps({"task": "word2vec"}))
  (wd / "vectors.txt").write_text("2 3\nking 1 0 0\nqueen 0 1 0\n")
  with pytest.raises(SubjectError, match="works on a GPT .*holds a word2vec"):
    commands.run_command("attention", str(wd), str(tmp_path / "out"))


def test_cli_prints_summary_and_errors(tmp_path, capsys):
  from experiments import explain as cli
  assert cli.main(["attention", str(FIXTURES / "hf_gpt2"), f"--out={tmp_path}", "--text=hello"]) == 0
  assert "explorer:" in capsys.readouterr().out
  assert cli.main(["attention", str(FIXTURES / "hf_gpt2"), f"--out={tmp_path}", "--layer=1"]) == 1
  assert "takes no --layer" in capsys.readouterr().err

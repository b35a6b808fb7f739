"""`explain` commands: the numbers behind the pictures, checked against independent computations.

Models are tiny (random init, made here) or the tiny Hugging Face fixtures; each command writes into tmp_path.
"""

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import hf_bert_with_vocab
from tfjax.data.tokenizers import CharTokenizer
from tfjax.explain import attention as attention_lib
from tfjax.explain import commands
from tfjax.explain import temperature as temperature_lib
from tfjax.explain.subjects import Subject, SubjectError, load_subject
from tfjax.generate import generate
from tfjax.models.config import TransformerConfig

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
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    _CACHE[key] = Subject("gpt", "tiny-gpt", model, params, tok)
  return _CACHE[key]


def tiny_translator_subject() -> Subject:
  """A random 2 + 2-layer encoder-decoder with a BPE vocabulary trained on a few sentences."""
  if "translator" not in _CACHE:
    from tfjax.data import tokenizers
    from tfjax.models.transformer import EncoderDecoder
    tok = tokenizers.train_bpe(["a dog runs", "ein hund rennt", "a cat sleeps", "eine katze schläft"] * 4, 60,
                              min_frequency=1)
    cfg = TransformerConfig(vocab_size=tok.vocab_size, num_layers=2, num_heads=2, emb_dim=16, max_len=16)
    model = EncoderDecoder(cfg)
    z = jnp.zeros((1, 4), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(1), z, jnp.ones((1, 4), bool), z)["params"])
    _CACHE["translator"] = Subject("translator", "tiny-translator", model, params, tok)
  return _CACHE["translator"]


# ---------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("kind", ["bert", pytest.param("gpt", marks=pytest.mark.slow),
                                  pytest.param("translator", marks=pytest.mark.slow)])
def test_every_command_runs_on_every_kind_of_model_it_accepts(kind, tmp_path):
  """Each ``explain`` command that names a kind of model in :data:`commands.COMMANDS` runs on a small model of that
  kind and writes its files (logit_lens on BERT once died where the GPT's ran: a guard against such gaps). BERT runs
  by default (~15 s; temperature at two temperatures, its own tests cover the rest); the GPT (22 s) and the
  translator (17 s), whose commands each have their own tests, when slow tests run."""
  subject = {"gpt": tiny_gpt_subject, "translator": tiny_translator_subject,
             "bert": lambda: load_subject(hf_bert_with_vocab(tmp_path))}[kind]()
  text = {"gpt": "abc cab bad", "bert": "the capital of france is paris .", "translator": "a dog runs"}[kind]
  names = [n for n, c in commands.COMMANDS.items() if kind in c.kinds]
  assert {"attention", "heads", "qk", "mlp", "logit_lens", "embeddings"} <= set(names)
  cheap = {"temperature": {"temperatures": [0.0, 1.0], "num_samples": 2}}  # it compiles one sampler per T
  for name in names:
    fn = commands.resolve(commands.COMMANDS[name])
    out = tmp_path / name
    options = {**({"text": text} if "text" in commands.accepted_options(fn) else {}), **cheap.get(name, {})}
    result = fn(subject, str(out), **options)
    assert result["summary"] and any(out.glob("*.png")), name


def test_head_summary_against_numpy():
  rng = np.random.default_rng(0)
  p = rng.random((2, 3, 5, 6)).astype(np.float32)
  p /= p.sum(-1, keepdims=True)
  valid = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
  got = {k: np.asarray(v) for k, v in attention_lib.head_summary(jnp.asarray(p), jnp.asarray(valid)).items()}
  for h in range(3):
    ent, prev, nxt, first, diag = [], [], [], [], []
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
        if t + 1 < 6:
          nxt.append(row[t + 1])
    np.testing.assert_allclose(got["entropy"][h], np.mean(ent), rtol=1e-5)
    np.testing.assert_allclose(got["previous_token"][h], np.mean(prev), rtol=1e-5)
    np.testing.assert_allclose(got["next_token"][h], np.mean(nxt), rtol=1e-5)
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


def test_temperature_on_a_translator_reads_the_first_target_token_and_samples_translations(tmp_path):
  """For a translator the prompt is the source: the distribution is the first target token's (the decoder's logits
  after its begin token, recomputed here), and T = 0 samples are the greedy translation, cut at the end token."""
  from tfjax.explain import temperature as temperature_lib
  from tfjax.generate import translate
  from tfjax.tasks.translate import BOS_ID, EOS_ID
  subject = tiny_translator_subject()
  result = temperature_lib.run(subject, str(tmp_path), text="a dog runs", temperatures=[0.0, 1.0], num_samples=2,
                               num_tokens=6)
  src = subject.encode("a dog runs", source=True)[None]
  logits = subject.model.apply({"params": subject.params}, jnp.asarray(src), jnp.asarray(src != 0),
                               jnp.full((1, 1), BOS_ID, jnp.int32))[0, -1]
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(result["probs_top"][1], probs[result["top_token_ids"]], rtol=1e-5)
  greedy = translate(subject.model, subject.params, src, src != 0, 6, bos_id=BOS_ID, eos_id=EOS_ID)[0]
  end = np.flatnonzero(greedy == EOS_ID)
  want = subject.tokenizer.decode(greedy[:end[0]] if end.size else greedy)
  assert result["sample_text"]["0.0"] == [want, want]


def test_temperature_on_a_bert_reads_its_first_blank_and_fills_the_blanks(tmp_path):
  """A BERT's distribution is its first [MASK]'s over the tokens a blank can take (recomputed from a full forward
  pass, the special tokens left out); T = 0 fills the blanks with the argmax of those left to right, each given those
  before; distinct-n only up to the number of blanks; a text without
  [MASK] has its last 3 tokens blanked; --num_tokens beside [MASK]s, or more than the text has, is an error."""
  subject = load_subject(hf_bert_with_vocab(tmp_path))
  tok, text = subject.tokenizer, "the capital of [MASK] is [MASK] ."
  result = temperature_lib.run(subject, str(tmp_path / "t"), text=text, temperatures=[0.0, 1.0], num_samples=3)
  ids = subject.encode(text)
  blanks = ids == tok.token_to_id("[MASK]")
  assert blanks.sum() == 2

  def logits_at(row, position):
    return subject.model.apply({"params": subject.params}, jnp.asarray(row[None]),
                               attention_mask=jnp.ones((1, row.size), jnp.int32))[0, position]

  words = ~np.isin(np.arange(subject.model.cfg.vocab_size), tok.special_ids())
  first = int(np.flatnonzero(blanks)[0])
  logits = np.asarray(logits_at(ids, first), np.float64)
  probs = np.where(words, np.exp(logits - logits[words].max()), 0.0)
  probs /= probs.sum()
  np.testing.assert_allclose(result["probs_top"][1], probs[result["top_token_ids"]], rtol=1e-5)
  greedy = ids.copy()
  for position in np.flatnonzero(blanks):
    greedy[position] = int(np.argmax(np.where(words, logits_at(greedy, position), -np.inf)))
  assert result["sample_text"]["0.0"] == [tok.decode(greedy)] * 3
  assert result["sample_blanks"]["0.0"] == [tok.decode(greedy[blanks])] * 3
  assert set(result["samples"]) == {"unigram_entropy", "distinct_1", "distinct_2"}
  assert "[MASK] is [MASK]" in result["prompt"] and "[CLS]" not in result["prompt"]
  blanked = temperature_lib.run(subject, str(tmp_path / "b"), text="the capital of france is paris .",
                                temperatures=[0.0], num_samples=1)
  assert blanked["prompt"].endswith("[MASK] [MASK] [MASK]") and blanked["prompt"].startswith("the capital of")
  with pytest.raises(SubjectError, match="drop --num_tokens"):
    temperature_lib.run(subject, str(tmp_path / "e"), text=text, num_tokens=2)
  with pytest.raises(SubjectError, match="tokens to blank"):
    temperature_lib.run(subject, str(tmp_path / "e"), text="the capital", num_tokens=5)


def test_heads_and_mlp_on_a_translators_text_score_its_own_translation_or_the_given_target(tmp_path):
  """A text given to a translator is its source; the target side is ``--target`` or the model's greedy translation
  (it was the source text again, read as if it were German)."""
  from tfjax.explain import data as data_lib, heads as heads_lib, mlp as mlp_lib
  from tfjax.tasks.translate import translate_texts
  subject = tiny_translator_subject()
  [batch] = data_lib.eval_batches(subject, text="a dog runs")
  own = translate_texts(subject.model, subject.params, subject.tokenizer, ["a dog runs"], batch_size=1)[0]
  want = subject.encode(own or ".", model_form=True)
  np.testing.assert_array_equal(batch["src"][0], subject.encode("a dog runs", source=True))
  np.testing.assert_array_equal(np.concatenate([batch["inputs"][0], batch["targets"][0, -1:]]), want)
  assert not np.array_equal(want, subject.encode("a dog runs"))  # the test tells the two targets apart
  [given] = data_lib.eval_batches(subject, text="a dog runs", target="ein hund rennt")
  np.testing.assert_array_equal(given["targets"][0], subject.encode("ein hund rennt")[1:])
  result = heads_lib.run(subject, str(tmp_path / "heads"), text="a dog runs", target="ein hund rennt")
  args, _ = data_lib.model_inputs("translator", given)
  logits = subject.model.apply({"params": subject.params}, *map(jnp.asarray, args))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(given["targets"]))
  np.testing.assert_allclose(result["base_loss"], float(jnp.mean(ce)), rtol=1e-5)
  mlp_lib.run(subject, str(tmp_path / "mlp"), text="a dog runs", target="ein hund rennt", neurons=[0])
  with pytest.raises(SubjectError, match="translator's target sentence; this is a gpt"):
    data_lib.eval_batches(tiny_gpt_subject(), text="abc", target="abc")


def test_a_translator_trained_on_tokenised_text_reads_running_text_as_it_was_trained():
  """The published recipe trains on lowercased, Moses-tokenised captions (``data.text=tok``): explain puts a text
  into that form, as ./launch.sh translate does (it fed the model cased, untokenised text), but not the model's own
  output (``model_form``)."""
  import ml_collections
  base = tiny_translator_subject()
  config = ml_collections.ConfigDict({"task": "translate", "data": {"text": "tok", "source": "en", "target": "de"}})
  subject = Subject("translator", "tok-run", base.model, base.params, base.tokenizer, config)
  tok = base.tokenizer
  np.testing.assert_array_equal(subject.encode("A Dog runs.", source=True), base.encode("a dog runs .", source=True))
  assert subject.model_text("Ein Hund, der rennt.") == "ein hund , der rennt ."
  np.testing.assert_array_equal(subject.encode("a dog", model_form=True), base.encode("a dog"))
  assert tok.encode("A Dog runs.") != tok.encode("a dog runs .")  # the test can tell the two forms apart


# ---------------------------------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path):
  gpt = str(FIXTURES / "hf_gpt2")
  with pytest.raises(SubjectError, match="unknown explain command"):
    commands.run_command("attn", gpt, str(tmp_path))
  with pytest.raises(SubjectError, match="longer than the model's context window"):
    commands.run_command("attention", gpt, str(tmp_path), text="hello world " * 40)
  with pytest.raises(SubjectError, match="takes no --neurons"):
    commands.run_command("attention", gpt, str(tmp_path), neurons=[1])
  with pytest.raises(SubjectError, match="works on a GPT .*holds a BERT"):
    commands.run_command("ov", hf_bert_with_vocab(tmp_path), str(tmp_path))
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
  with pytest.raises(SubjectError, match="works on a GPT .*holds word2vec vectors"):
    commands.run_command("attention", str(wd), str(tmp_path / "out"))


def test_cli_prints_summary_and_errors(tmp_path, capsys):
  from experiments import explain as cli
  assert cli.main(["attention", str(FIXTURES / "hf_gpt2"), f"--out={tmp_path}", "--text=hello"]) == 0
  assert "explorer:" in capsys.readouterr().out
  assert cli.main(["attention", str(FIXTURES / "hf_gpt2"), f"--out={tmp_path}", "--layer=1"]) == 1
  assert "takes no --layer" in capsys.readouterr().err
  # --config.KEY=VALUE reaches a command that trains (and is checked there: an unknown key is named)
  assert cli.main(["cbow_to_attention", f"--out={tmp_path}", "--config.model.no_such_key=3"]) == 1
  assert "no_such_key" in capsys.readouterr().err
  assert cli.main(["attention", str(FIXTURES / "hf_gpt2"), f"--out={tmp_path}", "--config.seed=1"]) == 1
  assert "takes no --config" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- heads, qk, mlp, lens


def test_heads_loss_increase_equals_zeroing_the_heads_out_rows(tmp_path):
  from tfjax.explain import heads as heads_lib
  from tfjax.explain.interventions import token_loss
  subject = tiny_gpt_subject()
  result = heads_lib.run(subject, str(tmp_path), text="abc cab bad fed")
  delta = result["attentions"]["decoder/attn"]
  ids = subject.encode("abc cab bad fed")
  dh = 16 // 2

  def loss(params):
    logits = subject.model.apply({"params": params}, jnp.asarray(ids[None, :-1]))
    return float(token_loss(logits, jnp.asarray(ids[None, 1:])))

  base = loss(subject.params)
  assert abs(result["base_loss"] - base) < 1e-5
  for layer, head in ((0, 1), (1, 0)):
    params = jax.tree.map(lambda x: x, subject.params)
    kernel = params["decoder"][f"block_{layer}"]["attn"]["out"]["kernel"]
    params["decoder"][f"block_{layer}"]["attn"]["out"]["kernel"] = kernel.at[head * dh:(head + 1) * dh].set(0.0)
    np.testing.assert_allclose(delta[layer, head], loss(params) - base, atol=1e-5)
  assert np.any(np.abs(delta) > 1e-4)
  assert (tmp_path / "heads_decoder_attn.png").exists()


def test_heads_scores_a_padded_batch_in_chunks_as_one_call():
  """A translator's validation batch (512 sentences) is scored in chunks of rows whose logits fit a budget (one call
  peaked at 4.8 GB); the chunks' summed loss over their summed token count is the whole batch's loss, also when the
  chunks hold different numbers of real tokens (where a mean of the chunks' means would differ)."""
  from tfjax.explain import heads as heads_lib
  from tfjax.explain.interventions import token_loss
  from tfjax.tasks.translate import PAD_ID
  subject = tiny_translator_subject()
  rng = np.random.default_rng(0)
  src, tgt = rng.integers(4, subject.tokenizer.vocab_size, (2, 5, 9))
  lengths = np.array([9, 2, 3, 8, 4])
  tgt = np.where(np.arange(9) < lengths[:, None], tgt, PAD_ID)
  src[3:, 6:] = PAD_ID
  batch = {"src": src, "inputs": tgt[:, :-1], "targets": tgt[:, 1:], "weights": (tgt[:, 1:] != PAD_ID) * 1.0}
  model, params = subject.model, subject.params
  row_bytes = 8 * subject.tokenizer.vocab_size * 4  # [1, T, V] float32 logits
  chunks = heads_lib._chunked(model, "translator", params, batch, budget=2 * row_bytes)
  assert [len(c["src"]) for c in chunks] == [2, 2, 1]
  assert len(heads_lib._chunked(model, "translator", params, batch)) == 1
  logits = model.apply({"params": params}, jnp.asarray(src), jnp.asarray(src != PAD_ID), jnp.asarray(tgt[:, :-1]))
  whole = float(token_loss(logits, jnp.asarray(tgt[:, 1:]), jnp.asarray(batch["weights"])))
  np.testing.assert_allclose(heads_lib._mean_loss(model, "translator", params, None, [chunks]), whole, rtol=1e-5)
  means = [float(heads_lib._loss_terms(model, "translator", params, None, c)[0] /
                 heads_lib._loss_terms(model, "translator", params, None, c)[1]) for c in chunks]
  assert abs(np.mean(means) - whole) > 1e-3  # the test can tell the two ways of adding up apart


def test_a_model_trained_with_scanned_layers_is_explained_layer_by_layer(tmp_path):
  """A run with ``scan_layers=True`` keeps each weight stacked over layers; explain holds it as its per-layer twin,
  so heads (interventions), qk and mlp (a layer's weights) give the numbers of the same model unscanned."""
  from tfjax.explain import heads as heads_lib, mlp as mlp_lib, qk as qk_lib
  from tfjax.layers.blocks import scan_params
  from tfjax.models.gpt import GPT
  plain = tiny_gpt_subject()
  model = GPT(dataclasses.replace(plain.cfg, scan_layers=True))
  scanned = Subject("gpt", "tiny-gpt-scanned", model, scan_params(plain.params), plain.tokenizer)
  assert not scanned.cfg.scan_layers and sorted(scanned.params["decoder"]) == ["block_0", "block_1"]
  text = "abc cab bad fed"
  for lib, kwargs in ((heads_lib, {}), (qk_lib, {"layer": 1, "head": 0}), (mlp_lib, {"layer": 1, "neurons": [2]})):
    want = lib.run(plain, str(tmp_path / "plain"), text=text, **kwargs)
    got = lib.run(scanned, str(tmp_path / "scanned"), text=text, **kwargs)
    assert got["summary"] == want["summary"]


def test_qk_embedding_scores_equal_layer0_scores_without_positions(tmp_path):
  from tfjax.explain import qk as qk_lib
  from tfjax.explain.capture import run_with_cache
  subject = tiny_gpt_subject(positional="none")
  ids = subject.encode("abcab")
  _, cache = run_with_cache(subject.model, {"params": subject.params}, jnp.asarray(ids[None]),
                            names=["block_0/attn/scores"])
  scores = np.asarray(cache["scores", 0])[0, 1]  # head 1, [T, T], -inf above the diagonal
  got = qk_lib.embedding_qk(subject, 0, 1, ids)
  causal = np.tril(np.ones((5, 5), bool))
  np.testing.assert_allclose(got[causal], scores[causal], rtol=1e-4, atol=1e-5)
  result = qk_lib.run(subject, str(tmp_path), layer=0, head=1, text="abcab")
  assert result["tokens"] == ["a", "b", "c"] and (tmp_path / "qk_tokens.png").exists()
  with pytest.raises(SubjectError, match="head 2 does not exist"):
    qk_lib.run(subject, str(tmp_path), layer=0, head=2, text="abcab")


def test_mlp_contexts_and_promoted_tokens_against_numpy(tmp_path):
  from tfjax.explain import mlp as mlp_lib
  from tfjax.explain.capture import run_with_cache
  subject = tiny_gpt_subject()
  text = "abc cab bad fed"
  result = mlp_lib.run(subject, str(tmp_path), layer=1, neurons=[3, 7], top_k=3, text=text)
  ids = subject.encode(text)
  _, cache = run_with_cache(subject.model, {"params": subject.params}, jnp.asarray(ids[None, :-1]),
                            names=["block_1/mlp/hidden"])
  hidden = np.asarray(cache["hidden", 1])[0]  # [T, F]
  w_u = np.asarray(subject.params["embed"]["embedding"]).T
  w_out = np.asarray(subject.params["decoder"]["block_1"]["mlp"]["fc_out"]["kernel"])
  for n in (3, 7):
    r = result["neurons"][n]
    np.testing.assert_allclose([c["activation"] for c in r["top_contexts"]], np.sort(hidden[:, n])[::-1][:3],
                               rtol=1e-5)
    direct = w_out[n] @ w_u
    assert [p[0] for p in r["promoted"]] == subject.labels(np.argsort(-direct)[:3])
  with pytest.raises(SubjectError, match="neurons \\[999\\] do not exist"):
    mlp_lib.run(subject, str(tmp_path), layer=1, neurons=[999], text=text)
  with pytest.raises(SubjectError, match="layer 5 does not exist"):
    mlp_lib.run(subject, str(tmp_path), layer=5, text=text)


def test_logit_lens_command_last_layer_is_the_model(tmp_path):
  from tfjax.explain import logit_lens_command as lens_lib
  subject = tiny_gpt_subject()
  result = lens_lib.run(subject, str(tmp_path), text="abc cab", top_k=2)
  logits = subject.model.apply({"params": subject.params}, jnp.asarray(subject.encode("abc cab")[None]))[0]
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(result["top_probs"][-1][:, 0], probs.max(-1), rtol=1e-5)
  assert result["mean_kl"][-1] < 1e-6 and np.all(np.asarray(result["mean_kl"][:-1]) > 0)
  assert len(result["layers"]) == 3 and (tmp_path / "logit_lens.png").exists()


def test_logit_lens_command_on_a_bert_reads_every_position(tmp_path):
  """BERT's lens goes through its MLM head at every position (the command died with KeyError 'masked_positions':
  a text has no masked positions); its last row is the model's own prediction at each token."""
  from tfjax.explain import logit_lens_command as lens_lib
  subject = load_subject(hf_bert_with_vocab(tmp_path))
  text = "the capital of france is paris ."
  result = lens_lib.run(subject, str(tmp_path / "out"), text=text, top_k=2)
  ids = jnp.asarray(subject.encode(text)[None])
  logits = subject.model.apply({"params": subject.params}, ids, jnp.ones_like(ids), jnp.zeros_like(ids))[0]
  np.testing.assert_allclose(result["top_probs"][-1][:, 0], np.asarray(jax.nn.softmax(logits)).max(-1), rtol=1e-5)
  assert len(result["tokens"]) == ids.shape[1] and result["mean_kl"][-1] < 1e-6


def test_logit_lens_kl_in_row_chunks_equals_one_call():
  """A validation batch is split into rows whose lens fits the budget (a translator's 512-row batch made a lens of
  many GB and was killed for memory); the summed KL is that of one call."""
  from tfjax.explain import logit_lens_command as lens_lib
  from tfjax.explain import data as data_lib
  subject = tiny_gpt_subject()
  ids = np.random.default_rng(0).integers(0, 9, (7, 13))
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
  per_row = 3 * 12 * subject.tokenizer.vocab_size * 4  # [L + 1, 1, T, V] float32
  chunks = list(lens_lib._lens_chunks(subject.model, "gpt", subject.params, batch, budget=2 * per_row))
  assert [len(c["inputs"]) for c in chunks] == [2, 2, 2, 1]
  assert len(list(lens_lib._lens_chunks(subject.model, "gpt", subject.params, batch))) == 1

  def kl(b):
    s, n = lens_lib._mean_kl(subject.model, "gpt", subject.params, jax.tree.map(jnp.asarray, b),
                             jnp.asarray(data_lib.token_weights("gpt", b)))
    return np.asarray(s), float(n)
  whole, parts = kl(batch), [kl(c) for c in chunks]
  np.testing.assert_allclose(sum(p[0] for p in parts), whole[0], rtol=1e-4, atol=1e-6)  # float32 sums
  assert sum(p[1] for p in parts) == whole[1] == 7 * 12


def test_embeddings_on_word2vec_vectors(tmp_path):
  vec = tmp_path / "vectors.txt"
  rng = np.random.default_rng(0)
  words = ["king", "queen", "man", "woman", "paris", "france", "rome", "italy"]
  table = rng.normal(size=(8, 5)).astype(np.float32)
  table[1] = table[0] - table[2] + table[3] + 0.01  # queen = king - man + woman
  vec.write_text("8 5\n" + "\n".join(w + " " + " ".join(f"{x:.6f}" for x in row) for w, row in zip(words, table)))
  result = commands.run_command("embeddings", str(vec), str(tmp_path / "out"), analogy=["king,man,woman"],
                                groups=["royals:king,queen,man,woman", "places:paris,france,rome,italy"])
  assert result["analogies"]["king,man,woman"][0][0] == "queen"
  unit = table / np.linalg.norm(table, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(result["cosine"]), unit @ unit.T, atol=1e-5)
  with pytest.raises(SubjectError, match="not in the vocabulary"):
    commands.run_command("embeddings", str(vec), str(tmp_path / "out"), words=["zebra"])

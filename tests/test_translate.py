"""The encoder-decoder translator: decoding with the KV cache against full forward passes, source padding, the
decoder's causality, length errors, the BPE tokenizer, and a short real training run on Multi30k with its BLEU."""

import collections
import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfjax.generate import translate
from tfjax.models.config import TransformerConfig
from tfjax.models.transformer import EncoderDecoder, init_cache

BOS, EOS = 2, 3


def _model(positional="learned", tie_embeddings=False, **kw):
  # untied: with a tied random embedding, greedy decoding at init repeats one token
  cfg = TransformerConfig(vocab_size=40, num_layers=2, num_heads=4, emb_dim=32, max_len=12, positional=positional,
                          tie_embeddings=tie_embeddings, **kw)
  model = EncoderDecoder(cfg, num_encoder_layers=3)
  rng = np.random.RandomState(0)
  src = rng.randint(4, 40, (3, 9)).astype(np.int32)
  valid = np.ones((3, 9), bool)
  valid[1, 5:] = False
  valid[2, 7:] = False
  src[~valid] = 0
  params = model.init(jax.random.key(1), src, valid, src[:, :4])["params"]
  # larger weights than at init, so that greedy decoding does not repeat one token
  params = jax.tree.map(lambda p: p * 4.0 if p.ndim == 2 else p, params)
  return model, params, src, valid


def _greedy_by_full_forward(model, params, src, valid, n, eos):
  """Reference: at every step, the whole target so far through the teacher-forced forward pass (no cache). The target
  sits in a buffer of n + 1 positions (one compiled program), read at the last real one: the decoder is causal, so the
  positions after it do not change it (tested by test_decoder_is_causal_and_encoder_sees_both_ways)."""
  full = jax.jit(lambda tgt: model.apply({"params": params}, src, valid, tgt))
  tgt = np.zeros((src.shape[0], n + 1), np.int32)
  tgt[:, 0] = BOS
  done = np.zeros(src.shape[0], bool)
  for t in range(n):
    nxt = np.asarray(jnp.argmax(full(tgt)[:, t], -1)).astype(np.int32)
    nxt = np.where(done, 0, nxt)
    done |= nxt == eos
    tgt[:, t + 1] = nxt
  return tgt[:, 1:]


@pytest.mark.parametrize("positional,tie", [("learned", False), ("sinusoidal", False), ("rope", True)])
def test_cached_greedy_translation_equals_full_forward(positional, tie):
  model, params, src, valid = _model(positional, tie_embeddings=tie)
  fast = translate(model, params, src, valid, 10, bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(fast, _greedy_by_full_forward(model, params, src, valid, 10, EOS))
  if not tie:
    assert len(np.unique(fast)) > 3  # a real sequence, not one token repeated
  # a token that occurs mid-sequence as the end token: it is kept, and the rest of that row is padding
  eos = int(fast[0, 3]) if not tie else EOS
  fast = translate(model, params, src, valid, 10, bos_id=BOS, eos_id=eos)
  np.testing.assert_array_equal(fast, _greedy_by_full_forward(model, params, src, valid, 10, eos))
  if not tie:
    first = int(np.argmax(fast[0] == eos))
    assert first <= 3 and (fast[0, first + 1:] == 0).all()


def _assert_cached_decoding_equals_teacher_forcing(model, params, src, valid):
  """Decoding a random target one token at a time through the KV cache gives the teacher-forced logits."""
  tgt = np.random.RandomState(3).randint(4, 40, (3, 8)).astype(np.int32)
  full = model.apply({"params": params}, src, valid, tgt)
  memory = model.apply({"params": params}, src, valid, method=EncoderDecoder.encode)
  cache = init_cache(model, 3, src.shape[1])
  for t in range(tgt.shape[1]):
    logits, v = model.apply({"params": params, "cache": cache}, tgt[:, t:t + 1], memory, valid,
                            positions=np.full((3, 1), t), decode=True, mutable=["cache"],
                            method=EncoderDecoder.decode)
    cache = v["cache"]
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=2e-5, rtol=1e-5)


def test_cached_decoder_logits_equal_teacher_forced_logits():
  model, params, src, valid = _model("rope")
  _assert_cached_decoding_equals_teacher_forcing(model, params, src, valid)


@pytest.mark.parametrize("positional,options", [
    # Hugging Face BART's options (tfjax.hf): positions read at p + 2, embedding norm, post-LN without final norms,
    # a logits bias; Marian's: sines then cosines on sqrt(D)-scaled embeddings
    ("learned", dict(position_offset=2, embed_norm=True, final_norm=False, logits_bias=True, pre_ln=False)),
    ("sinusoidal", dict(sinusoidal_layout="halves", embed_scale=True, final_norm=False, logits_bias=True,
                        pre_ln=False))])
def test_cached_decoding_with_the_hugging_face_encoder_decoder_options(positional, options):
  model, params, src, valid = _model(positional, **options)
  assert "ln_encoder" not in params and "ln_decoder" not in params  # final_norm=False
  assert ("ln_embed_src" in params) == ("ln_embed_tgt" in params) == options.get("embed_norm", False)
  assert params["logits_bias"].value.shape == (40,)
  params = {**params, "logits_bias": 0.1 * jax.random.normal(jax.random.key(2), (40,))}
  _assert_cached_decoding_equals_teacher_forcing(model, params, src, valid)
  fast = translate(model, params, src, valid, 10, bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(fast, _greedy_by_full_forward(model, params, src, valid, 10, EOS))


def test_cross_attention_cache_needs_the_source_first():
  model, params, src, valid = _model("rope")
  cache = init_cache(model, 3, src.shape[1])
  step = dict(positions=np.zeros((3, 1), np.int32), decode=True, mutable=["cache"], method=EncoderDecoder.decode)
  with pytest.raises(ValueError, match="needs the cache filled by a call with the context first"):
    model.apply({"params": params, "cache": cache}, src[:, :1], None, valid, **step)
  memory = model.apply({"params": params}, src, valid, method=EncoderDecoder.encode)
  first, v = model.apply({"params": params, "cache": cache}, src[:, :1], memory, valid, **step)
  # the next step without the memory uses the source's cached keys/values: same logits as passing it again
  step["positions"] = np.ones((3, 1), np.int32)
  a, _ = model.apply({"params": params, "cache": v["cache"]}, src[:, 1:2], None, valid, **step)
  b, _ = model.apply({"params": params, "cache": v["cache"]}, src[:, 1:2], memory, valid, **step)
  np.testing.assert_array_equal(a, b)


def test_padded_source_tokens_change_nothing():
  model, params, src, valid = _model()
  other = src.copy()
  other[~valid] = 7  # different ids where the source is padding
  tgt = src[:, :5]
  np.testing.assert_allclose(model.apply({"params": params}, src, valid, tgt),
                             model.apply({"params": params}, other, valid, tgt), atol=1e-6)
  changed = src.copy()
  changed[1, 2] = (changed[1, 2] + 1) % 36 + 4  # a real source token: the translation of row 1 only changes
  a = model.apply({"params": params}, src, valid, tgt)
  b = model.apply({"params": params}, changed, valid, tgt)
  assert not np.allclose(a[1], b[1]) and np.allclose(a[0], b[0]) and np.allclose(a[2], b[2])


def test_decoder_is_causal_and_encoder_sees_both_ways():
  model, params, src, valid = _model()
  tgt = np.random.RandomState(4).randint(4, 40, (3, 8)).astype(np.int32)
  later = tgt.copy()
  later[:, 5] = (later[:, 5] + 1) % 36 + 4
  a = model.apply({"params": params}, src, valid, tgt)
  b = model.apply({"params": params}, src, valid, later)
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)  # positions before 5 do not see token 5
  assert not np.allclose(a[:, 5:], b[:, 5:])
  # the encoder is bidirectional: the last source token changes the memory at the first position
  last = src.copy()
  last[0, 8] = (last[0, 8] + 1) % 36 + 4
  m1 = model.apply({"params": params}, src, valid, method=EncoderDecoder.encode)
  m2 = model.apply({"params": params}, last, valid, method=EncoderDecoder.encode)
  assert not np.allclose(m1[0, 0], m2[0, 0])


def test_lengths_and_ids_are_checked():
  model, params, src, valid = _model()
  long = np.ones((1, 13), np.int32)
  with pytest.raises(ValueError, match="source of length 13 is longer than the context window max_len=12"):
    model.apply({"params": params}, long, np.ones_like(long, bool), long[:, :3])
  with pytest.raises(ValueError, match="target of length 13 is longer"):
    model.apply({"params": params}, long[:, :5], np.ones((1, 5), bool), long)
  with pytest.raises(ValueError, match="max_new_tokens must be in"):
    translate(model, params, src, valid, 13, bos_id=BOS, eos_id=EOS)
  with pytest.raises(ValueError, match="out of range"):
    translate(model, params, src + 100, valid, 4, bos_id=BOS, eos_id=EOS)


def test_bpe_tokenizer_is_lossless():
  from tfjax.data.tokenizers import SEQ2SEQ_SPECIAL_TOKENS, train_bpe
  lines = ["Zwei junge weiße Männer sind im Freien.", "Two young, White males are outside near many bushes."] * 50
  tok = train_bpe(lines, vocab_size=200)
  assert [tok.token_to_id(t) for t in SEQ2SEQ_SPECIAL_TOKENS] == [0, 1, 2, 3] and tok.eos_id == 3
  for text in lines[:2] + ["Zwei Männer, junge Männer, sind im Freien near bushes."]:  # unseen words too
    assert tok.decode(tok.encode(text)) == text
  assert 1 in tok.encode("Gras")  # a character never seen in training ("G") is [UNK]


def _subword_nmt_segment(word, ranks):
  """subword-nmt's apply_bpe on one word, written out: characters, the last one marked ``</w>``; then, while any
  adjacent pair is a learned merge, every occurrence of the earliest-learned one is joined."""
  symbols = list(word[:-1]) + [word[-1] + "</w>"]
  while len(symbols) > 1:
    pairs = [(ranks[p], p) for p in zip(symbols, symbols[1:]) if p in ranks]
    if not pairs:
      break
    first = min(pairs)[1]
    out, i = [], 0
    while i < len(symbols):
      if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == first:
        out.append(symbols[i] + symbols[i + 1])
        i += 2
      else:
        out.append(symbols[i])
        i += 1
    symbols = out
  return symbols


def test_subword_nmt_style_bpe_marks_word_ends_and_segments_as_subword_nmt():
  import json
  from tfjax.data.tokenizers import SEQ2SEQ_SPECIAL_TOKENS, train_bpe
  lines = ["zwei junge weiße männer sind im freien .", "two young , white males are outside near many bushes .",
           "ein mann in einem blauen hemd steht auf einer leiter und putzt ein fenster ."] * 30
  tok = train_bpe(lines, vocab_size=150, style="subword_nmt")
  assert [tok.token_to_id(t) for t in SEQ2SEQ_SPECIAL_TOKENS] == [0, 1, 2, 3] and tok.eos_id == 3
  merges = json.loads(tok.tokenizer.to_str())["model"]["merges"]
  ranks = {tuple(m.split(" ") if isinstance(m, str) else m): r for r, m in enumerate(merges)}
  for text in lines[:3] + ["zwei männer stehen near bushes , im blauen freien ."]:  # unseen words too
    pieces = [tok.id_to_token(i) for i in tok.encode(text)]
    assert pieces == [p for w in text.split() for p in _subword_nmt_segment(w, ranks)]
    assert sum(p.endswith("</w>") for p in pieces) == len(text.split())  # one word end a word
    assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode("zwei  junge ")) == "zwei junge"  # whitespace is where words split, not a token
  with pytest.raises(ValueError, match="BPE style"):
    train_bpe(lines, vocab_size=150, style="wordpiece")
  from experiments.configs import translate_multi30k
  from tfjax.config import ConfigError
  from tfjax.tasks.translate import TranslationTask
  c = translate_multi30k.get_config()
  c.data.bpe = "wordpiece"
  with pytest.raises(ConfigError, match="data.bpe"):
    TranslationTask(c)


def test_translator_trains_on_multi30k_and_reports_bleu(tmp_path):
  """A short real run: the loss falls, and results.json has the test BLEU (sacreBLEU) and example translations."""
  from experiments import runtime
  from experiments.configs import translate_multi30k
  c = translate_multi30k.get_config()
  c.data.vocab_size = 1000
  c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=24, dropout_rate=0.0)
  c.train.update(batch_size=16, num_steps=40, log_every=10, eval_every=20, checkpoint_every=0, parallel="none",
                 log_mfu=False, async_checkpoint=False, tensorboard=False)
  c.optimizer.update(warmup_steps=5, lr=3e-3)
  c.eval.bleu_sentences = 20
  c.eval.val_bleu_sentences = 10
  c.data.length_buckets = "12,16"  # three batch shapes: the loop compiles each
  res = runtime.run(c, str(tmp_path))
  assert res is not None
  recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [r["loss"] for r in recs if "loss" in r]
  assert losses[-1] < losses[0] - 0.5
  bleu = {r["step"]: r["eval_bleu"] for r in recs if "eval_bleu" in r}  # at each evaluation after step 0
  assert sorted(bleu) == [20, 40] and all(0.0 <= b <= 100.0 for b in bleu.values())
  assert res["eval_loss"] < np.log(1000) - 0.5 and 0.0 <= res["test_bleu"] <= 100.0
  assert res["test_bleu_detail"].startswith("BLEU = ") and "tok:13a" in res["test_bleu_signature"]
  assert 0.0 <= res["test_bleu_tok"] <= 100.0 and "tok:none" in res["test_bleu_tok_signature"]
  ex = res["examples"][0]
  assert ex["source"].startswith("A man in an orange hat") and ex["translation"] and "[EOS]" not in ex["translation"]
  assert (tmp_path / "tokenizer.json").exists()

  # the checkpoint restored for inference (no data files needed) translates as the trained params did
  from tfjax.tasks import translate as tr
  model, params, tokenizer, _ = tr.load_for_inference(str(tmp_path))
  again = tr.translate_texts(model, params, tokenizer, [e["source"] for e in res["examples"]])
  assert again == [e["translation"] for e in res["examples"]]
  beams = tr.translate_texts(model, params, tokenizer, [e["source"] for e in res["examples"]], beam_size=3)
  assert len(beams) == 3 and all(isinstance(b, str) and "[PAD]" not in b for b in beams)
  # ./launch.sh translate: --bleu writes the scores and the hypotheses (one line per test sentence, each form scored)
  # beside them; --file translates a file (an empty line stays empty, an over-long line is cut, not a crash)
  from conftest import ROOT
  (tmp_path / "in.en").write_text("A dog runs through the snow.\n\n" + "A man in an orange hat " * 20 + "\nTwo men.\n")
  out = subprocess.run([str(ROOT / "launch.sh"), "translate", str(tmp_path), "--bleu=test", "--beam_size=2",
                        f"--file={tmp_path / 'in.en'}", f"--out={tmp_path / 'out.de'}", "--text=",
                        "--text=" + "A man in an orange hat " * 20], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "\n  -> \n" in out.stdout  # --text="": an empty translation
  assert "1 of 2 sources are longer than the context window" in out.stderr  # the long --text: cut, with a warning
  assert "tokenised BLEU" in out.stdout and "sacreBLEU (detokenised, cased)" in out.stdout
  report = json.loads((tmp_path / "bleu" / "test.latest.beam2.json").read_text())
  for form, name in (("tok", "test.latest.beam2.hyp.tok.de"), ("detok", "test.latest.beam2.hyp.de")):
    assert report["hypotheses"][form] == str(tmp_path / "bleu" / name)
    assert len((tmp_path / "bleu" / name).read_text().split("\n")) == 1000 + 1  # 1,000 lines and a final newline
  from tfjax.tasks.translate import tokenised_bleu, load_multi30k
  hyps = (tmp_path / "bleu" / "test.latest.beam2.hyp.tok.de").read_text().split("\n")[:-1]
  assert tokenised_bleu(hyps, load_multi30k("test", "de", None, "tok"))[0].score == pytest.approx(
      report["test_bleu_tok"])  # the file holds what was scored
  # another length penalty gets its own files beside the first ones: comparing penalties overwrites nothing
  lp1 = subprocess.run([str(ROOT / "launch.sh"), "translate", str(tmp_path), "--bleu=test", "--beam_size=2",
                        "--length_penalty=1"], capture_output=True, text=True, timeout=600)
  assert lp1.returncode == 0, lp1.stderr[-3000:]
  assert "test.latest.beam2_lp1.hyp.tok.de" in lp1.stdout
  assert 0.0 <= json.loads((tmp_path / "bleu" / "test.latest.beam2_lp1.json").read_text())["test_bleu_tok"] <= 100.0
  assert json.loads((tmp_path / "bleu" / "test.latest.beam2.json").read_text()) == report
  lines = (tmp_path / "out.de").read_text().split("\n")
  assert len(lines) == 5 and lines[1] == "" and lines[-1] == ""  # 4 lines, the empty one kept empty
  assert [lines[0], lines[3]] == tr.translate_texts(model, params, tokenizer, ["A dog runs through the snow.",
                                                                               "Two men."], beam_size=2)
  assert "1 of 4 sources are longer than the context window" in out.stderr
  (tmp_path / "lm").mkdir()
  (tmp_path / "lm" / "config.json").write_text(json.dumps({"task": "lm"}))
  with pytest.raises(ValueError, match="task='lm', not a translation config"):
    tr.load_for_inference(str(tmp_path / "lm"))


def test_translate_cli_with_a_hugging_face_marian_dir(tmp_path):
  """./launch.sh translate HF_DIR: --text and --file with the directory's own tokenizer (beam search here); an empty
  line gives an empty line, an over-long one is cut with a warning; flags that need a tfjax workdir are errors."""
  from conftest import ROOT
  from tfjax import hf
  d = ROOT / "tests" / "fixtures" / "hf_marian"
  long_line = "the children play outside in the park " * 6
  (tmp_path / "in.en").write_text(f"a dog runs in the snow .\n\n{long_line}\ntwo men are playing football\n")
  out = subprocess.run([str(ROOT / "launch.sh"), "translate", str(d), "--text=a dog runs in the snow .", "--text=",
                        f"--text={long_line}", f"--file={tmp_path / 'in.en'}", f"--out={tmp_path / 'out.de'}",
                        "--beam_size=2", "--batch_size=4"], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  model, params = hf.load(d)
  tok, ids = hf.load_tokenizer(d), hf.generation_ids(d)
  lines = (tmp_path / "in.en").read_text().split("\n")[:-1]
  expected = hf.translate_texts(model, params, tok, lines, ids, beam_size=2, batch_size=4)  # as transformers: n ** 1.0
  assert expected[1] == "" and expected[0] and expected[0] != expected[3]
  assert (tmp_path / "out.de").read_text() == "".join(h + "\n" for h in expected)  # one line per line, in order
  text = [expected[0], "", expected[2]]  # --text gives the same translations as the file's lines
  assert out.stdout == "".join(f"{src}\n  -> {hyp}\n" for src, hyp in zip(
      ["a dog runs in the snow .", "", long_line], text))
  assert "1 of 3 sources are longer than the context window (32 tokens), the first is line 3" in out.stderr
  assert "1 of 4 sources are longer than the context window (32 tokens), the first is line 3" in out.stderr
  for flag, what in (("--bleu=test", "--bleu"), ("--best", "--best")):
    bad = subprocess.run([str(ROOT / "launch.sh"), "translate", str(d), "--text=a dog", flag], capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 1 and f"error: {what} needs a tfjax translation workdir" in bad.stderr
  for flag in ("--beam_size=0", "--temperature=-1", "--batch_size=0"):  # refused by the flag, before any loading
    bad = subprocess.run([str(ROOT / "launch.sh"), "translate", str(d), "--text=a dog", flag], capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 1 and f"flag {flag}" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
  gpt2 = subprocess.run([str(ROOT / "launch.sh"), "translate", str(ROOT / "tests" / "fixtures" / "hf_gpt2"),
                         "--text=a dog"], capture_output=True, text=True, timeout=600)
  assert gpt2.returncode == 1 and "not an encoder-decoder (Marian or BART)" in gpt2.stderr


def test_translator_sharded_equals_single_device():
  """dp and fsdp on 8 fake CPU devices (a subprocess) give the one-device losses (without dropout: under dp each
  device draws its own dropout masks, folded in from its index, so the masks differ from one device's)."""
  from conftest import run_parallel_worker
  res = run_parallel_worker("--translate", "none,dp,fsdp")
  assert len(res["none"]["loss"]) == 4
  for mode in ("dp", "fsdp"):
    np.testing.assert_allclose(res[mode]["loss"], res["none"]["loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res[mode]["eval_loss"], res["none"]["eval_loss"], rtol=1e-5, atol=1e-5)


def test_beam_search_of_width_one_is_greedy_and_wide_beams_are_exhaustive():
  from tfjax.generate import beam_translate
  model, params, src, valid = _model("rope")
  greedy = translate(model, params, src, valid, 6, bos_id=BOS, eos_id=EOS)
  ids, _ = beam_translate(model, params, src, valid, 6, beam_size=1, bos_id=BOS, eos_id=EOS, length_penalty=0.0)
  np.testing.assert_array_equal(ids, greedy)
  # with vocab 40 and 2 new tokens, 1600 beams hold every sequence: the result is the most probable one
  eos = int(greedy[0, 0])  # an end token that the model likes, so that finished hypotheses compete
  ids, score = beam_translate(model, params, src, valid, 2, beam_size=1600, bos_id=BOS, eos_id=eos,
                              length_penalty=0.0)
  full = jax.jit(lambda s, v, t: jax.nn.log_softmax(model.apply({"params": params}, s, v, t)))
  logp1 = np.asarray(full(src, valid, np.full((3, 1), BOS, np.int32))[:, 0])  # [B, V]
  firsts = np.stack([np.full(40, BOS), np.arange(40)], 1).astype(np.int32)  # [40, 2]: every first token
  best, all_seqs = [], []
  for b in range(3):
    logp2 = np.asarray(full(np.repeat(src[b:b + 1], 40, 0), np.repeat(valid[b:b + 1], 40, 0), firsts)[:, 1])
    seqs = []
    for a in range(40):
      if a == eos:
        seqs.append((float(logp1[b, a]), [a, 0]))
        continue
      c = int(np.argmax(logp2[a]))
      seqs.append((float(logp1[b, a] + logp2[a, c]), [a, c]))
    best.append(max(seqs))
    all_seqs.append(seqs)
  np.testing.assert_allclose(score, [s for s, _ in best], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ids, [seq for _, seq in best])
  # ranked by fairseq's mean log-probability per token, the one-token [eos] competes with the two-token sequences
  ids, score = beam_translate(model, params, src, valid, 2, beam_size=1600, bos_id=BOS, eos_id=eos,
                              length_penalty=1.0, length_norm="fairseq")
  for b in range(3):  # [eos] has 1 token; the others have 2 (ended by eos, or cut at the limit)
    want = max(all_seqs[b], key=lambda x: x[0] / (1 if x[1][0] == eos else 2))
    assert float(score[b]) == pytest.approx(want[0], rel=1e-5, abs=1e-5) and list(ids[b]) == want[1]


def test_length_normalised_scores():
  from tfjax.generate import length_normalised
  scores, lengths = jnp.array([-6.0, -6.0]), jnp.array([1, 10])
  np.testing.assert_allclose(length_normalised(scores, lengths, 0.6), -6.0 / (((5 + np.array([1, 10])) / 6) ** 0.6),
                             rtol=1e-6)
  np.testing.assert_allclose(length_normalised(scores, lengths, 1.0, "fairseq"), [-6.0, -0.6], rtol=1e-6)
  np.testing.assert_allclose(length_normalised(scores, lengths, 0.0, "fairseq"), scores)
  with pytest.raises(ValueError, match="length_norm must be one of"):
    length_normalised(scores, lengths, 1.0, "marian")


def test_length_buckets_draw_every_pair_alike_and_pad_to_the_bucket():
  """Each batch is one bucket's pairs padded to that bucket (nothing cut), a pure function of the step, split the same
  across processes; buckets are drawn in proportion to their sizes, so every pair is drawn with the same probability."""
  from experiments.configs import translate_multi30k
  from tfjax.config import ConfigError
  from tfjax.tasks.translate import TranslationTask
  c = translate_multi30k.get_config()
  c.data.vocab_size = 1000
  c.data.length_buckets = "12,16,24"
  c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=32)
  c.train.batch_size = 8
  task = TranslationTask(c)
  lengths, rows = task.buckets
  assert lengths == [12, 16, 24, 32] and sum(len(r) for r in rows) == len(task.pairs["train"][0])
  src, tgt = task.pairs["train"]
  counts = np.zeros(len(lengths))
  for step in range(1500):
    batch = task.train_batch(step)
    width = batch["src"].shape[1]
    b = lengths.index(width)
    counts[b] += 1
    assert all(a.shape == (8, width) for a in batch.values())
    if step < 50:
      for name in batch:
        np.testing.assert_array_equal(batch[name], task.train_batch(step)[name])
        halves = [task.train_batch(step, i, 2)[name] for i in range(2)]
        np.testing.assert_array_equal(np.concatenate(halves), batch[name])
    # every pair whole: as many real source tokens and target weights as the pair has, and too long for a shorter bucket
    n_src, n_tgt = (batch["src"] != 0).sum(1), batch["weights"].sum(1).astype(int)
    need = np.maximum(n_src, n_tgt)
    assert (need <= width).all() and (b == 0 or (need > lengths[b - 1]).all())
    assert {len(s) for s in src}.issuperset(n_src) and {len(t) + 1 for t in tgt}.issuperset(n_tgt)
  share = np.array([len(r) for r in rows]) / len(src)
  np.testing.assert_allclose(counts / counts.sum(), share, atol=0.04)
  for bad in ("12,x", "1,16", "12,64"):
    c.data.length_buckets = bad
    with pytest.raises(ConfigError, match="length_buckets"):
      task._make_buckets(bad)


def test_token_batches_see_every_pair_once_an_epoch_within_the_token_budget():
  """data.max_tokens (fairseq's --max-tokens): an epoch's batches hold every training pair exactly once, each batch
  one bucket's pairs within the budget (a multiple of data.batch_multiple rows, padded with empty rows), a pure
  function of the step, split the same across processes; the next epoch is shuffled anew."""
  from experiments.configs import translate_multi30k
  from tfjax.config import ConfigError
  from tfjax.tasks.translate import TranslationTask
  c = translate_multi30k.get_config()
  c.data.vocab_size = 1000
  c.data.length_buckets = "12,16,24"
  c.data.max_tokens = 1024
  c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=32)
  task = TranslationTask(c)
  (lengths, rows), sizes = task.buckets, task.bucket_batch_sizes
  assert lengths == [12, 16, 24, 32] and sizes == [80, 64, 40, 32]  # 1024 // width, down to a multiple of 8
  n = task.batches_per_epoch
  assert n == sum(-(-len(r) // s) for r, s in zip(rows, sizes))
  src, tgt = task.pairs["train"]
  pairs = collections.Counter(tuple(s) + (-1,) + tuple(t) for s, t in zip(src, tgt))  # Multi30k repeats some pairs
  fresh = TranslationTask(c)
  epochs = []
  for epoch in range(2):
    seen, widths = collections.Counter(), []
    for step in range(epoch * n, (epoch + 1) * n):
      batch = task.train_batch(step)
      width = batch["src"].shape[1]
      b = lengths.index(width)
      assert batch["src"].shape == (sizes[b], width) and sizes[b] * width <= 1024
      real = batch["weights"].sum(1) > 0
      assert real[:real.sum()].all()  # the empty rows (a bucket's last, short batch) come last
      n_src, n_tgt = (batch["src"][real] != 0).sum(1), batch["weights"][real].sum(1).astype(int)
      need = np.maximum(n_src, n_tgt)
      assert (need <= width).all() and (b == 0 or (need > lengths[b - 1]).all())
      seen.update(tuple(s[:k]) + (-1,) + tuple(t[:m - 1]) for s, t, k, m in
                  zip(batch["src"][real], batch["targets"][real], n_src, n_tgt))
      widths.append(width)
      if step % 7 == 0:  # a pure function of the step, split the same across processes
        again = fresh.train_batch(step)
        halves = [task.train_batch(step, i, 2) for i in range(2)]
        for name in batch:
          np.testing.assert_array_equal(again[name], batch[name])
          np.testing.assert_array_equal(np.concatenate([h[name] for h in halves]), batch[name])
    assert seen == pairs  # every pair exactly once
    assert len(set(widths)) == len(lengths)  # the buckets interleave through the epoch
    epochs.append([task.train_batch(step)["src"][0].tolist() for step in range(epoch * n, (epoch + 1) * n)])
  assert epochs[0] != epochs[1]
  bad_values = [("max_tokens", 100, "fewer than 8 pairs"), ("max_tokens", -1, "max_tokens"),
                ("batch_multiple", 0, "batch_multiple"), ("length_buckets", "", "needs data.length_buckets")]
  for key, value, match in bad_values:
    bad = c.copy_and_resolve_references()
    bad.data[key] = value
    with pytest.raises(ConfigError, match=match):
      TranslationTask(bad)


def test_inverse_sqrt_schedule_warms_up_then_decays_as_one_over_sqrt_step():
  """fairseq's inverse_sqrt: lr = peak·step/warmup, then peak·sqrt(warmup/step); through the optimizer config too."""
  import ml_collections
  from tfjax.config import ConfigError, validate_train_config
  from tfjax.train.optimizer import inverse_sqrt_schedule, make_optimizer
  from experiments.configs import translate_multi30k
  peak, warmup = 0.005, 2000
  sched = inverse_sqrt_schedule(peak, warmup)
  for step, want in [(0, 0.0), (500, peak / 4), (1999, peak * 1999 / 2000), (2000, peak), (8000, peak / 2),
                     (18000, peak / 3), (200000, peak / 10)]:
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")
  no_warmup = inverse_sqrt_schedule(1.0, 0)
  np.testing.assert_allclose([float(no_warmup(s)) for s in (0, 1, 4, 100)], [1.0, 1.0, 0.5, 0.1], rtol=1e-6)
  with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
    inverse_sqrt_schedule(1.0, -1)
  # the config's optimizer uses it: update n (0-based) is made with schedule(n)
  c = translate_multi30k.get_config()
  c.optimizer.update(schedule="inverse_sqrt", lr=peak, warmup_steps=4, grad_clip=0.0)
  validate_train_config(c)
  tx, schedule = make_optimizer(c.optimizer, 100)
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  lrs = []
  for _ in range(16):  # the state holds the learning rate of the update just made (chain(inject_hyperparams(adamw)))
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    lrs.append(float(state[-1].hyperparams["learning_rate"]))
  np.testing.assert_allclose(lrs, [peak * min(s / 4, np.sqrt(4 / max(s, 4))) for s in range(16)], rtol=1e-6)
  bad = ml_collections.ConfigDict(c.to_dict())
  bad.optimizer.schedule = "inverse_square"
  with pytest.raises(ConfigError, match="optimizer.schedule"):
    validate_train_config(bad)


def _multi_bleu(hyps, refs, max_n=4):
  """Reference: corpus BLEU as multi-bleu.perl computes it on whitespace-tokenised text (clipped n-gram counts summed
  over the corpus, geometric mean of the 4 precisions, brevity penalty exp(1 - r/c) when c < r)."""
  from collections import Counter
  match, total = np.zeros(max_n), np.zeros(max_n)
  hyp_len = ref_len = 0
  for h, r in zip(hyps, refs):
    h, r = h.split(), r.split()
    hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
    for n in range(1, max_n + 1):
      hc = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
      rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
      match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
      total[n - 1] += max(len(h) - n + 1, 0)
  bp = 1.0 if hyp_len > ref_len else np.exp(1 - ref_len / hyp_len)
  return 100 * bp * np.exp(np.mean(np.log(match / total))), 100 * match / total, bp


def test_tokenised_bleu_scores_the_reference_as_100_and_agrees_with_multi_bleu_and_sacrebleu():
  import sacrebleu
  from tfjax.tasks import translate as tr
  refs = tr.load_multi30k("test", "de", None, "tok")
  assert len(refs) == 1000 and refs[0] == "ein mann mit einem orangefarbenen hut , der etwas anstarrt ."
  score, signature = tr.tokenised_bleu(refs, refs)
  assert score.score == pytest.approx(100.0) and score.ref_len == 12103  # the paper's reflen
  assert "tok:none" in signature and "case:mixed" in signature
  # a small case with real errors: a word dropped, words changed, a sentence cut short (brevity penalty < 1)
  hyps = ["ein mann mit einem roten hut , der etwas anstarrt .", refs[1].replace("läuft", "rennt"),
          " ".join(refs[2].split()[:5]), refs[3], "leute reparieren ein dach ."]
  score, _ = tr.tokenised_bleu(hyps, refs[:5])
  want, precisions, bp = _multi_bleu(hyps, refs[:5])
  assert 20 < want < 90 and bp < 1.0
  assert score.score == pytest.approx(want, abs=1e-9)
  np.testing.assert_allclose(score.precisions, precisions, atol=1e-9)
  assert score.score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs[:5]], tokenize="none").score, abs=1e-9)
  with pytest.raises(ValueError, match="5 hypotheses for 4 references"):
    tr.tokenised_bleu(hyps, refs[:4])


def test_score_bleu_gives_both_scores_for_either_text_form():
  """The references in either form score 100 on the metric of that form; sacremoses' tokenisation of the raw test set
  reproduces the dataset's own tokenised file, and its detokenisation loses only the case."""
  from tfjax.tasks import translate as tr
  raw = tr.load_multi30k("test", "de", None, "raw")[:200]
  tok = tr.load_multi30k("test", "de", None, "tok")[:200]
  scores, forms = tr.score_bleu(raw, "test", "de", None, "raw", limit=200)
  assert scores["test_bleu"] == pytest.approx(100.0) and scores["test_bleu_tok"] == pytest.approx(100.0)
  assert forms["tok"] == tok and "tok:13a" in scores["test_bleu_signature"] and "test_bleu_lc" not in scores
  scores, forms = tr.score_bleu(tok, "test", "de", None, "tok", limit=200)
  assert scores["test_bleu_tok"] == pytest.approx(100.0) and "tok:none" in scores["test_bleu_tok_signature"]
  assert scores["test_bleu_lc"] > 99.5 and scores["test_bleu"] < 40  # a lowercased model cannot get the case right
  assert "case:lc" in scores["test_bleu_lc_signature"] and forms["tok"] == tok
  assert scores["test_bleu_tok_detail"].startswith("BLEU = 100.00")


def test_translating_empty_and_overlong_lines(caplog):
  """An empty line translates to "" (the model is not run on it); a line longer than the context window is cut to it
  with a warning naming it, or, with too_long="error", a ValueError naming it. Line order is kept."""
  import logging
  from tfjax.data.tokenizers import train_bpe
  from tfjax.tasks.translate import translate_texts
  tok = train_bpe(["a dog runs", "ein hund rennt", "two dogs run in the snow", "zwei hunde"] * 5, vocab_size=60)
  cfg = TransformerConfig(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, emb_dim=16, max_len=8,
                          positional="sinusoidal")
  model = EncoderDecoder(cfg)
  ids = np.ones((1, 8), np.int32)
  params = model.init(jax.random.key(0), ids, ids > 0, ids)["params"]
  long_line = " ".join(["a dog runs"] * 6)
  assert len(tok.encode(long_line)) > 7
  lines = ["a dog runs", "", "   ", long_line, "zwei hunde"]
  with caplog.at_level(logging.WARNING, logger="tfjax"):
    out = translate_texts(model, params, tok, lines, batch_size=2)
  assert len(out) == 5 and out[1] == "" and out[2] == "" and all(isinstance(o, str) for o in out)
  assert "1 of 5 sources are longer than the context window (7 tokens + [EOS]), the first is line 4" in caplog.text
  cut = " ".join(tok.decode(tok.encode(long_line)[:7]).split())
  assert out[3] == translate_texts(model, params, tok, [cut], batch_size=2)[0]  # the cut source's translation
  assert out[0] == translate_texts(model, params, tok, ["a dog runs"], batch_size=3)[0]  # batching changes nothing
  with pytest.raises(ValueError, match="the first is line 4"):
    translate_texts(model, params, tok, lines, too_long="error")
  assert translate_texts(model, params, tok, ["", ""]) == ["", ""]


def test_smoothed_cross_entropy_equals_optax_with_smoothed_one_hot_labels():
  import optax
  from tfjax.tasks.translate import smoothed_cross_entropy
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
  for eps in (0.0, 0.1, 0.3):
    want = optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(targets, 11), eps))
    np.testing.assert_allclose(smoothed_cross_entropy(logits, targets, eps), want, rtol=1e-5, atol=1e-6)


def test_evaluation_reports_the_smoothed_loss_fairseq_validates_on():
  """With label smoothing, an evaluation also reports the training objective on validation (``eval_smoothed_loss``,
  what fairseq's --patience watches) beside the plain cross-entropy: checked against optax's smoothed one-hot labels
  over the whole validation set."""
  import optax
  from experiments.configs import translate_multi30k
  from tfjax.tasks.translate import PAD_ID, TranslationTask
  from tfjax.train.loop import evaluate
  from tfjax.train.step import make_eval_step
  c = translate_multi30k.get_config()
  c.data.vocab_size = 1000
  c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=24)
  c.train.update(batch_size=256, label_smoothing=0.2)
  task = TranslationTask(c)
  params = task.init_params(jax.random.key(0))
  ev = evaluate(task, jax.jit(make_eval_step(task)), params, lambda b: b)
  smoothed = plain = weight = 0.0
  for batch in task.eval_batches():
    logits = task.model.apply({"params": params}, batch["src"], batch["src"] != PAD_ID, batch["inputs"])
    labels = jax.nn.one_hot(batch["targets"], logits.shape[-1])
    w = batch["weights"]
    smoothed += float(jnp.sum(optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, 0.2)) * w))
    plain += float(jnp.sum(optax.softmax_cross_entropy(logits, labels) * w))
    weight += float(jnp.sum(w))
  np.testing.assert_allclose(ev["eval_smoothed_loss"], smoothed / weight, rtol=1e-4)
  np.testing.assert_allclose(ev["eval_loss"], plain / weight, rtol=1e-4)
  c.train.label_smoothing = 0.0  # nothing to report apart from the plain loss
  task = TranslationTask(c)
  assert "eval_smoothed_loss" not in evaluate(task, jax.jit(make_eval_step(task)), params, lambda b: b)

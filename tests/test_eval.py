"""Sliding-window evaluation (tfjax.tasks.lm_eval, experiments/eval.py) against direct computations: each token's
negative log-likelihood from its own forward pass over exactly the context the recipe promises it."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from tfjax.data.tokenizers import CharTokenizer
from tfjax.models.gpt import GPT, gpt_config
from tfjax.tasks import lm_eval

HF_GPT2 = ROOT / "tests" / "fixtures" / "hf_gpt2"
TEXT = "Thé quick brown fox jumps över the lazy dog; then it naps. " * 3  # 2-byte characters too


@pytest.fixture(scope="module")
def tiny():
  """A random tiny GPT (context 8) and a character tokenizer of TEXT."""
  tok = CharTokenizer.from_text(TEXT)
  model = GPT(gpt_config(vocab_size=tok.vocab_size, num_layers=2, num_heads=2, emb_dim=16, max_len=8,
                         positional="learned", use_bias=True))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  # scale the logits up so that the loss depends strongly on the context (a random init is nearly uniform)
  params = jax.tree.map(lambda x: x * 4.0, params)
  return model, params, tok


def last_logprobs(model, params, contexts):
  """log-softmax of the logits after each context (a list of token lists of length 1..C): all in one forward pass
  over the contexts right-padded to C (a causal model's logits at a position ignore the positions after it)."""
  c = model.cfg.max_len
  padded = np.zeros((len(contexts), c), np.int32)
  for i, ctx in enumerate(contexts):
    assert 1 <= len(ctx) <= c
    padded[i, :len(ctx)] = ctx
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, padded)
  last = np.asarray(logits, np.float64)[np.arange(len(contexts)), [len(ctx) - 1 for ctx in contexts]]
  last -= last.max(axis=-1, keepdims=True)
  return last - np.log(np.exp(last).sum(axis=-1, keepdims=True))


def direct_nats(model, params, tokens, context, stride):
  """Each target j scored alone after tokens[start(j) : j], where start(j) is the start of the first window reaching
  j: k = max(0, ceil((j - C) / S)) * S."""
  tokens = np.asarray(tokens)
  contexts = []
  for j in range(1, len(tokens)):
    start = max(0, -(-(j - context) // stride)) * stride
    contexts.append(tokens[start:j])
    assert len(contexts[-1]) >= min(j, context - stride + 1)
  logp = last_logprobs(model, params, contexts)
  return -float(np.sum(logp[np.arange(len(contexts)), tokens[1:]], dtype=np.float64))


def test_text_shorter_than_context_every_token_with_its_whole_left_context(tiny):
  model, params, tok = tiny
  tokens = tok.encode(TEXT[:5])  # 5 tokens, context 8: one window
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  want = 0.0
  for j in range(1, len(tokens)):  # the full left context t_0 .. t_{j-1}, unpadded: a forward pass per length
    logp = jax.nn.log_softmax(apply(params, jnp.asarray(tokens[:j])[None])[0, -1])
    want -= float(logp[tokens[j]])
  for stride in (1, 3, 8):
    r = lm_eval.evaluate(model, params, tokens, stride=stride, batch_size=2)
    assert r.scored_tokens == 4 and r.num_windows == 1
    np.testing.assert_allclose(r.nats, want, rtol=1e-5)
    np.testing.assert_allclose(r.loss, want / 4, rtol=1e-5)
  np.testing.assert_allclose(direct_nats(model, params, tokens, 8, 8), want, rtol=1e-5)  # the padded reference


@pytest.mark.parametrize("stride,batch_size", [(1, 4), (3, 1), (3, 5), (5, 2), (8, 3)])
def test_sliding_windows_equal_direct_computation(tiny, stride, batch_size):
  model, params, tok = tiny
  tokens = tok.encode(TEXT[:45])
  r = lm_eval.evaluate(model, params, tokens, stride=stride, batch_size=batch_size)
  assert r.scored_tokens == 44
  assert r.num_windows == 1 + math.ceil((44 - 8) / stride)
  np.testing.assert_allclose(r.nats, direct_nats(model, params, tokens, 8, stride), rtol=1e-5)


def test_stride_one_is_full_context_and_longer_context_helps_on_repeated_text(tiny):
  model, params, tok = tiny
  tokens = tok.encode(TEXT[:40])
  # stride 1: every target j > C has exactly the previous C tokens
  logp = last_logprobs(model, params, [tokens[max(0, j - 8):j] for j in range(1, len(tokens))])
  want = -float(np.sum(logp[np.arange(len(tokens) - 1), tokens[1:]]))
  np.testing.assert_allclose(lm_eval.evaluate(model, params, tokens, stride=1).nats, want, rtol=1e-5)
  # disjoint windows (stride = C) = the model run over consecutive chunks of C inputs
  chunks = 0.0
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  for b in range(0, len(tokens) - 1, 8):
    inp, tgt = tokens[b:b + 8][:len(tokens) - 1 - b], tokens[b + 1:b + 9]
    logp = jax.nn.log_softmax(apply(params, jnp.asarray(inp)[None])[0], axis=-1)
    chunks -= float(jnp.sum(jnp.take_along_axis(logp, jnp.asarray(tgt)[:, None], axis=-1)))
  np.testing.assert_allclose(lm_eval.evaluate(model, params, tokens, stride=8).nats, chunks, rtol=1e-5)
  # a shorter context is a different (not equal) computation
  short = lm_eval.evaluate(model, params, tokens, stride=1, context=4).nats
  assert abs(short - want) > 1e-3


def test_compiles_once_for_any_length(tiny):
  model, params, tok = tiny
  lm_eval._batch_nats.clear_cache()
  for n in (5, 30, 61):
    lm_eval.evaluate(model, params, tok.encode(TEXT[:n]), stride=4, batch_size=3)
  assert lm_eval._batch_nats._cache_size() == 1


def test_bits_per_byte_counts_the_utf8_bytes_of_the_scored_text(tiny):
  model, params, tok = tiny
  text = TEXT[:30]
  tokens = tok.encode(text)
  nbytes = lm_eval.count_bytes(tok, tokens[1:])
  assert nbytes == len(text[1:].encode("utf-8")) > len(text) - 1  # 'é' and 'ö' are 2 bytes
  r = lm_eval.evaluate(model, params, tokens, num_bytes=nbytes)
  np.testing.assert_allclose(r.bits_per_byte, r.nats / math.log(2) / len(text[1:].encode("utf-8")))
  np.testing.assert_allclose(r.perplexity, math.exp(r.nats / 29))


def test_byte_level_bpe_byte_counts():
  from tfjax import hf
  tok = hf.load_tokenizer(HF_GPT2)
  text = "Zürich — 3 naïve cafés.\n\nThe end."
  ids = tok.encode(text)
  assert lm_eval.count_bytes(tok, ids) == len(text.encode("utf-8"))
  assert lm_eval.count_bytes(tok, [tok.eos_id] + ids) == len(text.encode("utf-8"))  # special tokens spell nothing
  assert lm_eval.count_bytes(tok, ids, chunk=3) == len(text.encode("utf-8"))


def test_errors(tiny):
  model, params, tok = tiny
  with pytest.raises(ValueError, match="at least 2"):
    lm_eval.evaluate(model, params, tok.encode("T"))
  with pytest.raises(ValueError, match="stride must be in"):
    lm_eval.evaluate(model, params, tok.encode(TEXT), stride=9)
  with pytest.raises(ValueError, match="longer than the model's context"):
    lm_eval.evaluate(model, params, tok.encode(TEXT), context=9)
  with pytest.raises(ValueError, match="outside the model's vocabulary"):
    lm_eval.evaluate(model, params, np.array([1, 2, tok.vocab_size]))


# --------------------------------------------------------------------------------------------------------------------
# experiments/eval.py: models, data and errors


def run_eval(*args):
  env = dict(os.environ, TFJAX_CPU_DEVICES="1")
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "eval.py"), *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc


@pytest.fixture(scope="module")
def bpe_shards_and_model(tmp_path_factory):
  """Shards of a text prepared with a byte-level BPE, and a random GPT-2 directory with that tokenizer."""
  from tfjax import hf
  from tfjax.data import prepare
  tmp = tmp_path_factory.mktemp("bpe")
  src = tmp / "corpus.txt"
  src.write_text(("Zürich's naïve cafés open at 7 — or so they say.\nThe fox jumps over the lazy dog.\n" * 30)
                 + "".join(f"line {i}: the dog's {i * 7} bones.\n" for i in range(40)))
  prepare.prepare([str(src)], "bpe:300", tmp / "shards", val_fraction=0.1, shard_tokens=60, log=lambda m: None)
  model = GPT(gpt_config(vocab_size=300, num_layers=1, num_heads=2, emb_dim=16, max_len=16, positional="learned",
                         use_bias=True))
  params = model.init(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x * 3.0, params)
  hf.save(model, params, tmp / "hf", tokenizer_file=tmp / "shards" / "tokenizer.json")
  return tmp / "shards", tmp / "hf"


def test_cli_hf_dir_on_shards_equals_direct_computation(bpe_shards_and_model, tmp_path):
  from tfjax import hf
  from tfjax.data import shards
  shards_dir, hf_dir = bpe_shards_and_model
  val = shards.TokenShards(shards_dir, "val")
  assert val.num_shards > 1 and 40 < len(val) < 300  # windows cross shard boundaries
  proc = run_eval(hf_dir, f"--data={shards_dir}", "--split=val", "--stride=5", "--batch_size=3",
                  f"--out={tmp_path / 'e.json'}")
  assert proc.returncode == 0, proc.stderr
  got = json.loads((tmp_path / "e.json").read_text())
  assert "perplexity" in proc.stdout and "bits/byte" in proc.stdout
  model, params = hf.load(hf_dir)
  tokens = val.read(0, len(val))
  want = direct_nats(model, params, tokens, 16, 5)
  np.testing.assert_allclose(got["nats"], want, rtol=1e-5)
  assert got["scored_tokens"] == len(val) - 1 and got["stride"] == 5 and got["context"] == 16
  tok = hf.load_tokenizer(hf_dir)
  first = len(tok.decode(tokens[:1]).encode("utf-8"))
  # prepare counted the split's text bytes independently
  assert got["bytes"] == val.meta["splits"]["val"]["bytes"] - first
  np.testing.assert_allclose(got["bits_per_byte"], want / math.log(2) / got["bytes"], rtol=1e-5)
  np.testing.assert_allclose(got["perplexity"], math.exp(want / (len(val) - 1)), rtol=1e-5)


def test_hf_gpt2_against_transformers_on_wikitext2():
  """The imported fixture scored by eval equals PyTorch's GPT2LMHeadModel on the same windows of WikiText-2."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from experiments import eval as eval_cli
  model, params, tok, _ = eval_cli.load_model(str(HF_GPT2))
  tokens, num_bytes, desc = eval_cli.load_data("wikitext2", "test", tok)
  assert "test.txt" in desc and len(tokens) > 100_000
  with open(os.path.join(os.environ["TFJAX_DATA_DIR"], "wikitext2", "test.txt"), encoding="utf-8") as f:
    text = f.read()
  assert num_bytes == len(text.encode("utf-8")) - len(tok.decode(tokens[:1]).encode("utf-8"))
  head = tokens[:150]
  r = lm_eval.evaluate(model, params, head, stride=12, batch_size=4)
  pt = transformers.GPT2LMHeadModel.from_pretrained(str(HF_GPT2)).eval()
  want = 0.0
  with torch.no_grad():
    for j in range(1, len(head)):
      start = max(0, -(-(j - 32) // 12)) * 12
      logits = pt(torch.tensor(head[start:j], dtype=torch.long)[None]).logits[0, -1]
      want -= float(torch.log_softmax(logits.double(), -1)[int(head[j])])
  np.testing.assert_allclose(r.nats, want, rtol=1e-4)


def test_cli_workdir_char_model_on_its_validation_split(tmp_path):
  from conftest import tiny_lm_config
  from experiments import eval as eval_cli
  from tfjax.tasks.lm import LMTask
  from tfjax.train.loop import train_and_evaluate
  config = tiny_lm_config(**{"train.num_steps": 2, "train.eval_every": 0, "train.checkpoint_every": 0})
  wd = tmp_path / "run"
  task = LMTask(config, str(wd))
  train_and_evaluate(config, str(wd), task)
  proc = run_eval(wd, "--data=tinyshakespeare", "--batch_size=64")
  assert proc.returncode == 0, proc.stderr
  assert "checkpoint_manager" not in proc.stderr, proc.stderr[:2000]  # orbax's restore logs are not the user's
  got = json.loads((wd / "eval_tinyshakespeare_val.json").read_text())
  assert got["tokens"] == len(task.val_data)  # the run's own held-out tokens
  model, params, tok, info = eval_cli.load_model(str(wd))
  assert info["step"] == 2
  r = lm_eval.evaluate(model, params, np.asarray(task.val_data), batch_size=5)
  np.testing.assert_allclose(got["nats"], r.nats, rtol=1e-5)
  # a character model cannot score text with characters it never saw
  with pytest.raises(eval_cli.EvalError, match="character-level"):
    eval_cli.load_data("wikitext2", "test", tok)
  with pytest.raises(eval_cli.EvalError, match="no 'test' split"):
    eval_cli.load_data("tinyshakespeare", "test", tok)


def test_cli_without_data_scores_the_runs_own_held_out_text(tmp_path):
  """``eval WORKDIR`` without --data: a run trained on a text file is scored on that file's held-out last
  ``val_fraction`` of tokens, the task's own validation tokens (not the whole file, which it trained on)."""
  from conftest import tiny_lm_config
  from experiments import eval as eval_cli
  from tfjax.tasks.lm import LMTask
  from tfjax.train.loop import train_and_evaluate
  text = tmp_path / "corpus.txt"
  text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
  config = tiny_lm_config(**{"data.dataset": str(text), "data.val_fraction": 0.25, "train.num_steps": 2,
                             "train.eval_every": 0, "train.checkpoint_every": 0})
  wd = tmp_path / "run"
  task = LMTask(config, str(wd))
  train_and_evaluate(config, str(wd), task)
  proc = run_eval(wd, "--batch_size=64")
  assert proc.returncode == 0, proc.stderr
  got = json.loads((wd / "eval_corpus_val.json").read_text())
  assert got["tokens"] == len(task.val_data) == len(text.read_text()) // 4  # characters
  model, params, _, _ = eval_cli.load_model(str(wd))
  r = lm_eval.evaluate(model, params, np.asarray(task.val_data), batch_size=5)
  np.testing.assert_allclose(got["nats"], r.nats, rtol=1e-5)
  proc = run_eval(wd, "--split=test")
  assert proc.returncode == 1 and "no 'test' split" in proc.stderr, proc.stderr
  proc = run_eval(HF_GPT2)
  assert proc.returncode == 1 and "is not a tfjax run: say what to score with --data" in proc.stderr, proc.stderr


def test_cli_errors(bpe_shards_and_model, tmp_path):
  from experiments import eval as eval_cli
  shards_dir, hf_dir = bpe_shards_and_model
  with pytest.raises(eval_cli.EvalError, match="does not exist"):
    eval_cli.load_model(str(tmp_path / "nope"))
  tok = eval_cli.load_model(str(HF_GPT2))[2]
  with pytest.raises(eval_cli.EvalError, match="not a shards directory, not a file"):
    eval_cli.load_data("wikitext-103", "test", tok)
  with pytest.raises(eval_cli.EvalError, match="without meta.json"):
    eval_cli.load_data(str(tmp_path), "val", tok)
  with pytest.raises(eval_cli.EvalError, match="not with the model's tokenizer"):
    eval_cli.load_data(str(shards_dir), "val", tok)  # the fixture's own BPE is another vocabulary
  with pytest.raises(eval_cli.EvalError, match="no split 'test'"):
    eval_cli.load_data(str(shards_dir), "test", eval_cli.load_model(str(hf_dir))[2])
  with pytest.raises(eval_cli.EvalError, match="applies to text inputs"):
    eval_cli.load_data(str(shards_dir), "val", eval_cli.load_model(str(hf_dir))[2], prepend_eos=True)
  (tmp_path / "one.txt").write_text("a")
  with pytest.raises(eval_cli.EvalError, match="at least 2"):
    eval_cli.load_data(str(tmp_path / "one.txt"), "val", tok)
  proc = run_eval(hf_dir, f"--data={shards_dir}", "--stride=17")
  assert proc.returncode == 1 and "stride must be in [1, context=16]" in proc.stderr


def test_prepend_eos_scores_every_token_of_the_text(tmp_path):
  from experiments import eval as eval_cli
  tok = eval_cli.load_model(str(HF_GPT2))[2]
  text = "Zürich's cafés open at 7.\nThe fox jumps."
  (tmp_path / "t.txt").write_text(text, encoding="utf-8")
  plain, plain_bytes, _ = eval_cli.load_data(str(tmp_path / "t.txt"), "val", tok)
  tokens, num_bytes, _ = eval_cli.load_data(str(tmp_path / "t.txt"), "val", tok, prepend_eos=True)
  assert tokens[0] == tok.eos_id and list(tokens[1:]) == list(plain) == tok.encode(text)
  assert num_bytes == len(text.encode("utf-8")) > plain_bytes  # now the first token is scored too
  with pytest.raises(eval_cli.EvalError, match="no end-of-text token"):
    eval_cli.load_data(str(tmp_path / "t.txt"), "val", CharTokenizer.from_text(text), prepend_eos=True)

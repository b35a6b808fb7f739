"""word2vec: model maths against numpy, data formulas, the sparse SGD step, training, evaluation, save/load, resume."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import word2vec_skipgram
from tfjax.tasks import word2vec_eval as ev
from tfjax.data import word2vec_data as wd
from tfjax.models import word2vec as w2v
from tfjax.tasks import word2vec as task
from tfjax.train import checkpoint as ckpt

PAIRS = [("king", "queen"), ("man", "woman"), ("prince", "princess"), ("boy", "girl"), ("uncle", "aunt"),
         ("father", "mother")]


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _params(v=7, d=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"input_embedding": jnp.asarray(rng.normal(size=(v, d)), jnp.float32),
          "output_embedding": jnp.asarray(rng.normal(size=(v, d)), jnp.float32)}


# ---------------------------------------------------------------------------------------------------- model


def test_cbow_forward_is_average_matmul_softmax():
  params = _params()
  model = w2v.CBOW(w2v.Word2VecConfig(vocab_size=7, dim=4, architecture="cbow", loss="full_softmax"))
  context = np.array([[1, 2, 3, 0], [4, 5, 0, 0]], np.int32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  probs = jax.nn.softmax(model.apply({"params": params}, context, mask))
  w_in, w_out = np.asarray(params["input_embedding"]), np.asarray(params["output_embedding"])
  hidden = np.stack([w_in[[1, 2, 3]].mean(0), w_in[[4, 5]].mean(0)])  # average of the neighbours only
  np.testing.assert_allclose(probs, _softmax(hidden @ w_out.T), rtol=1e-5, atol=1e-6)
  # the loss is the cross-entropy of the centre word under that softmax
  loss = model.apply({"params": params}, {"centre": np.array([6, 0]), "context": context, "mask": mask},
                     method="loss")
  np.testing.assert_allclose(loss, -np.log(_softmax(hidden @ w_out.T)[[0, 1], [6, 0]]).sum(), rtol=1e-5)


def test_skipgram_full_softmax_loss_matches_numpy():
  params = _params()
  model = w2v.SkipGram(w2v.Word2VecConfig(vocab_size=7, dim=4, loss="full_softmax"))
  batch = {"centre": np.array([3, 1]), "context": np.array([[1, 2], [0, 6]]), "mask": np.array([[1, 1], [1, 0]])}
  loss = model.apply({"params": params}, batch, method="loss")
  p = _softmax(np.asarray(params["input_embedding"])[[3, 1]] @ np.asarray(params["output_embedding"]).T)
  np.testing.assert_allclose(loss, -(np.log(p[0, 1]) + np.log(p[0, 2]) + np.log(p[1, 0])), rtol=1e-5)


def test_negative_sampling_loss_matches_formula():
  rng = np.random.default_rng(1)
  h, pos, noise = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
  mask = np.array([[1, 1, 0], [1, 0, 1]], bool)
  weight = rng.integers(0, 2, size=(2, 3, 5)).astype(np.float32)
  got = w2v.negative_sampling_loss(h, pos, noise, mask, weight)
  log_sig = lambda x: -np.log1p(np.exp(-x))
  want = 0.0
  for r in range(2):
    for s in range(3):
      if mask[r, s]:
        want -= log_sig(h[r, s] @ pos[r, s])
        want -= sum(weight[r, s, k] * log_sig(-(h[r, s] @ noise[r, k])) for k in range(5))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sparse_sgd_step_equals_dense_sgd_on_the_module_loss():
  """The trainer's gather/scatter-add step is plain SGD on the skip-gram module's negative-sampling loss."""
  v, d, lr = 9, 4, 0.1
  params = _params(v, d, seed=2)
  batch = {"centre": np.array([1, 4, 1]), "context": np.array([[2, 3, 1], [5, 5, 0], [8, 2, 7]]),
           "mask": np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1]], bool), "noise": np.array([[6, 1], [4, 7], [0, 3]])}
  model = w2v.SkipGram(w2v.Word2VecConfig(vocab_size=v, dim=d, negatives=2))
  grads = jax.grad(lambda p: model.apply({"params": p}, batch, method="loss"))(params)
  want = jax.tree.map(lambda p, g: p - lr * g, params, grads)
  micro = {"input": batch["context"], "target": np.repeat(batch["centre"][:, None], 3, 1), "noise": batch["noise"],
           "mask": batch["mask"]}
  (w_in, w_out), _ = task._ns_skipgram_micro_step(
      (params["input_embedding"], params["output_embedding"]), micro, lr, negatives=2)
  np.testing.assert_allclose(w_in, want["input_embedding"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(w_out, want["output_embedding"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(w_out, params["output_embedding"])  # the step did something


def _cbow_positions_batch(ids, ctx_mask, noise, window, v, rows, row_size, block_index=0):
  """Micro-step ``block_index`` of ``rows x row_size`` consecutive centres in the position layout of
  ``task.epoch_data`` (``window_ids`` over the block extended by ``window``; padding past the corpus end)."""
  block = rows * row_size
  num_blocks = -(-len(ids) // block)
  pad = num_blocks * block - len(ids)
  sl = slice(block_index * block, (block_index + 1) * block)
  padded = lambda x: np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])[sl]
  return {"window_ids": wd.extended_blocks(ids, block, num_blocks, window, v)[block_index],
          "context_mask": padded(ctx_mask).reshape(rows, row_size, -1),
          "target": padded(ids).reshape(rows, row_size),
          "mask": padded(np.ones(len(ids), bool)).reshape(rows, row_size), "noise": noise}


def test_cbow_sparse_sgd_step_equals_dense_sgd_on_the_module_loss():
  """CBOW's position-based step (rows gathered once per corpus position, one scatter-add) is plain SGD on the CBOW
  module's loss; the default (word2vec.c/gensim) update gives each neighbour the full hidden gradient instead of its
  share."""
  v, d, lr, window = 9, 4, 0.1, 2
  params = _params(v, d, seed=3)
  # sentences [2 3 2 7 1] [4 5 6] [8]: a repeated neighbour (2); 5 only has neighbours of 2 neighbours each; 8 is a
  # one-word sentence (no context, never a neighbour); slots across sentence ends hold real positions: ignored
  corpus = wd.EncodedCorpus(np.array([2, 3, 2, 7, 1, 4, 5, 6, 8], np.int32),
                            np.array([0, 0, 0, 0, 0, 1, 1, 1, 2], np.int32))
  context, mask = wd.windows(corpus, window, np.random.default_rng(0), dynamic=False)
  noise = np.random.default_rng(1).integers(0, v, (len(corpus), 2)).astype(np.int32)
  batch = {"centre": corpus.ids, "context": context, "mask": mask, "noise": noise}
  model = w2v.CBOW(w2v.Word2VecConfig(vocab_size=v, dim=d, architecture="cbow", negatives=2))
  grads = jax.grad(lambda p: model.apply({"params": p}, batch, method="loss"))(params)
  want = jax.tree.map(lambda p, g: p - lr * g, params, grads)
  # one row per centre (S = 1), as the module's loss lays them out
  micro = _cbow_positions_batch(corpus.ids, mask, noise, window, v, rows=len(corpus), row_size=1)
  tables = (params["input_embedding"], params["output_embedding"])
  (w_in, w_out), (_, count) = task._ns_cbow_micro_step(tables, micro, lr, negatives=2, exact_mean_grad=True)
  np.testing.assert_allclose(w_in, want["input_embedding"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(w_out, want["output_embedding"], rtol=1e-5, atol=1e-6)
  assert int(count) == 8
  (w_in_full, _), _ = task._ns_cbow_micro_step(tables, micro, lr, negatives=2)
  delta_exact = np.asarray(w_in) - np.asarray(params["input_embedding"])
  delta_full = np.asarray(w_in_full) - np.asarray(params["input_embedding"])
  assert np.abs(delta_exact[5]).max() > 0
  np.testing.assert_allclose(delta_full[5], 2 * delta_exact[5], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(delta_full[[0, 8]], 0.0)  # 0 is not in the corpus, 8 is nobody's neighbour


def _gather_scatter_cbow_step(tables, batch, lr, negatives, exact_mean_grad=False):
  """The former CBOW step: every context slot gathered and scatter-added (masked slots sent out of range)."""
  w_in, w_out = tables
  ctx, ctx_mask, target, noise, mask = (batch[k] for k in ("context", "context_mask", "target", "noise", "mask"))
  r, s, c = ctx.shape
  v, d = w_in.shape
  ctx = jnp.where(ctx_mask, ctx, v)
  n_ctx = jnp.sum(ctx_mask, axis=-1).astype(w_in.dtype)
  inv = 1.0 / jnp.maximum(n_ctx, 1.0)
  hidden = w_in.at[ctx].get(mode="fill", fill_value=0).sum(axis=2) * inv[..., None]
  item_mask = mask & (n_ctx > 0)
  _, (g_hidden, g_target, g_noise) = jax.value_and_grad(w2v.negative_sampling_loss, argnums=(0, 1, 2))(
      hidden, w_out[target], w_out[noise], item_mask, task._noise_weight(noise, target, negatives))
  g_in = -lr * g_hidden * (inv[..., None] if exact_mean_grad else 1.0)
  w_in = w_in.at[ctx.reshape(-1)].add(jnp.broadcast_to(g_in[:, :, None], (r, s, c, d)).reshape(-1, d), mode="drop")
  out_ids = jnp.concatenate([target.reshape(-1), noise.reshape(-1)])
  w_out = w_out.at[out_ids].add(-lr * jnp.concatenate([g_target.reshape(-1, d), g_noise.reshape(-1, d)]))
  return w_in, w_out


@pytest.mark.parametrize("exact_mean_grad", [False, True])
def test_cbow_position_step_equals_gather_scatter_step(exact_mean_grad):
  """On a random corpus with dynamic windows, rows of 8 centres sharing a pool of 3 noise words, a block in the
  middle and the last (padded) block: the position-based step equals gathering and scatter-adding every slot."""
  v, d, lr, window, rows, row_size = 40, 6, 0.2, 5, 4, 8
  rng = np.random.default_rng(7)
  n = 150
  corpus = wd.EncodedCorpus(rng.integers(0, v, n).astype(np.int32), np.cumsum(rng.random(n) < 0.1).astype(np.int32))
  context, mask = wd.windows(corpus, window, rng)
  params = _params(v, d, seed=4)
  tables = (params["input_embedding"], params["output_embedding"])
  block = rows * row_size
  for b in (1, -(-n // block) - 1):
    noise = rng.integers(0, v, (rows, 3)).astype(np.int32)
    micro = _cbow_positions_batch(corpus.ids, mask, noise, window, v, rows, row_size, block_index=b)
    ctx = np.concatenate([context, np.zeros((block, 2 * window), np.int32)])[b * block:(b + 1) * block]
    old = dict(micro, context=ctx.reshape(rows, row_size, -1))
    got = task._ns_cbow_micro_step(tables, micro, lr, negatives=5, exact_mean_grad=exact_mean_grad)[0]
    want = _gather_scatter_cbow_step(tables, old, lr, negatives=5, exact_mean_grad=exact_mean_grad)
    for g, w, t in zip(got, want, tables):
      assert np.abs(np.asarray(w) - np.asarray(t)).max() > 1e-3  # the step did something
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- data


def test_tokenizer():
  assert wd.tokenize_line(' The "U.S." isn\'t <unk> , 1.5 @-@ km (Paris). ') == ["the", "u.s", "isn't", "1.5", "km",
                                                                                   "paris"]


def test_keep_probabilities_formula():
  counts = np.array([5000, 400, 30, 2])
  sample = 1e-2
  t = sample * counts.sum()  # 54.32
  got = wd.keep_probabilities(counts, sample)
  np.testing.assert_allclose(got[0], (np.sqrt(5000 / t) + 1) * t / 5000)
  np.testing.assert_allclose(got[1], (np.sqrt(400 / t) + 1) * t / 400)
  assert got[2] == got[3] == 1.0  # rare words are always kept
  assert np.all(wd.keep_probabilities(counts, 0.0) == 1.0)
  # the empirical keep rate follows it
  corpus = wd.EncodedCorpus(np.zeros(200_000, np.int32), np.zeros(200_000, np.int32))
  kept = wd.subsample(corpus, got, np.random.default_rng(0))
  assert abs(len(kept) / 200_000 - got[0]) < 0.005


def test_keep_probabilities_match_gensim():
  gensim_w2v = pytest.importorskip("gensim.models.word2vec")
  sentences = [["a"] * 300 + ["b"] * 40 + ["c"] * 7 + ["d"] * 2]
  model = gensim_w2v.Word2Vec(min_count=1, sample=1e-2, vector_size=4)
  model.build_vocab(sentences)
  vocab = wd.build_vocab(sentences, 1)
  got = wd.keep_probabilities(vocab.counts, 1e-2)
  want = [model.wv.get_vecattr(w, "sample_int") / (2**32 - 1) for w in vocab.words]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_noise_distribution_formula_and_sampling():
  counts = np.array([1000, 100, 10, 1])
  p = wd.noise_distribution(counts, 0.75)
  np.testing.assert_allclose(p, counts**0.75 / (counts**0.75).sum())
  draws = wd.sample_noise(np.cumsum(p), (400_000,), np.random.default_rng(0))
  freq = np.bincount(draws, minlength=4) / len(draws)
  np.testing.assert_allclose(freq, p, atol=3e-3)
  assert not np.allclose(p, counts / counts.sum(), atol=1e-2)  # differs from the plain unigram distribution


def test_windows_respect_sentences_and_reach():
  corpus = wd.EncodedCorpus(np.arange(7, dtype=np.int32), np.array([0, 0, 0, 0, 1, 1, 2], np.int32))
  ctx, mask = wd.windows(corpus, 2, np.random.default_rng(0), dynamic=False)
  # offsets -2, -1, 1, 2
  assert mask[0].tolist() == [False, False, True, True] and ctx[0, 2:].tolist() == [1, 2]
  assert mask[3].tolist() == [True, True, False, False]  # token 4 is in the next sentence
  assert mask[4].tolist() == [False, False, True, False] and ctx[4, 2] == 5
  assert not mask[6].any()  # a one-word sentence has no context
  big = wd.EncodedCorpus(np.arange(10000, dtype=np.int32) % 50, np.zeros(10000, np.int32))
  _, mask = wd.windows(big, 5, np.random.default_rng(0), dynamic=True)
  reach = mask[:, 5:].sum(1)[10:-10]  # right-side reach, away from the ends
  assert reach.min() == 1 and reach.max() == 5 and abs(reach.mean() - 3.0) < 0.1  # uniform in [1, 5]


def test_empty_corpus_and_min_count_errors(tmp_path):
  with pytest.raises(wd.CorpusError, match="empty"):
    wd.build_vocab([[]])
  with pytest.raises(wd.CorpusError, match="min_count=5"):
    wd.build_vocab([["a", "b", "a"]], min_count=5)
  empty = tmp_path / "empty.txt"
  empty.write_text("\n , ; \n")
  config = _config([str(empty)])
  with pytest.raises(wd.CorpusError, match="empty"):
    task.train(config)


# ---------------------------------------------------------------------------------------------------- evaluation


def test_oov_words_give_clear_errors():
  wv = ev.WordVectors(["a", "b", "c"], np.eye(3))
  with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
    wv.neighbors("zebra")
  with pytest.raises(KeyError, match="zebra"):
    wv.analogy("a", "zebra", "c")
  with pytest.raises(KeyError, match="zebra"):
    wd.build_vocab([["a"]], 1).ids(["a", "zebra"])


def test_spearman_with_ties():
  assert ev.rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
  x, y = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
  # by hand: ranks y = [1, 2, 3.5, 5, 3.5]; Pearson of the ranks
  rx, ry = np.array([1, 2, 3, 4, 5.0]), np.array([1, 2, 3.5, 5, 3.5])
  want = np.corrcoef(rx, ry)[0, 1]
  assert abs(ev.spearman(x, y) - want) < 1e-12
  assert ev.spearman(x, [-v for v in x]) == pytest.approx(-1.0)
  scipy_stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 10, 50), rng.normal(size=50)
  assert ev.spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0], abs=1e-12)


def _write_questions(path, pairs):
  lines = [": family"]
  for a in pairs:
    for b in pairs:
      if a != b:
        lines.append(f"{a[0]} {a[1]} {b[0]} {b[1]}")
        lines.append(f"{a[1]} {a[0]} {b[1]} {b[0]}")
  lines += [": gram-missing", "king queen zebra horse"]
  path.write_text("\n".join(lines) + "\n")
  return path


def test_analogy_evaluation_matches_gensim(tmp_path):
  gensim_kv = pytest.importorskip("gensim.models.keyedvectors")
  words = [w for p in PAIRS for w in p] + [f"x{i}" for i in range(20)]
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(len(words), 5)).astype(np.float32)
  questions = _write_questions(tmp_path / "q.txt", PAIRS)
  ours = ev.evaluate_analogies(ev.WordVectors(words, vectors), questions)
  kv = gensim_kv.KeyedVectors(5)
  kv.add_vectors(words, vectors)
  score, sections = kv.evaluate_word_analogies(str(questions))
  assert ours["accuracy"] == pytest.approx(score)
  assert ours["correct"] == len(sections[-1]["correct"]) and ours["oov"] == 1


def test_save_load_round_trip_text_and_binary(tmp_path):
  rng = np.random.default_rng(0)
  wv = ev.WordVectors(["the", "café", "u.s", "x"], rng.normal(size=(4, 6)).astype(np.float32))
  for binary in (False, True):
    path = tmp_path / ("v.bin" if binary else "v.txt")
    ev.save_word2vec(wv, path, binary=binary)
    back = ev.load_word2vec(path)  # format guessed from the bytes
    assert back.words == wv.words
    np.testing.assert_allclose(back.vectors, wv.vectors, rtol=0 if binary else 1e-5, atol=0 if binary else 1e-6)
  with pytest.raises(ValueError, match="whitespace"):
    ev.save_word2vec(ev.WordVectors(["a b"], np.zeros((1, 2))), tmp_path / "bad.txt")


def test_load_of_a_file_cut_short_or_in_another_format_names_the_file(tmp_path):
  wv = ev.WordVectors(["the", "cat", "sat"], np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32))
  for binary in (False, True):
    path = tmp_path / ("v.bin" if binary else "v.txt")
    ev.save_word2vec(wv, path, binary=binary)
    data = path.read_bytes()
    cut = tmp_path / ("cut.bin" if binary else "cut.txt")
    cut.write_bytes(data[:len(data) - 10])
    said = "the file ends inside word 3 of the 3" if binary else "line 4 has 5 numbers, expected 6"
    with pytest.raises(ValueError, match=f"{cut}: {said}"):
      ev.load_word2vec(cut)
  other = tmp_path / "config.json"
  other.write_text('{"model": 1}\n')
  with pytest.raises(ValueError, match=f"{other}: not a word2vec file"):
    ev.load_word2vec(other)
  nan_word = tmp_path / "words.txt"
  nan_word.write_text("2 2\nthe 0.5 1\ncat 0.5 zero\n")
  with pytest.raises(ValueError, match="line 3 has a value that is not a number"):
    ev.load_word2vec(nan_word)



def test_query_cli_neighbours_analogy_and_one_line_errors(tmp_path):
  import subprocess
  import sys
  from conftest import ROOT
  vecs = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.2], [0, 0, 1]], np.float32)
  path = tmp_path / "v.bin"
  ev.save_word2vec(ev.WordVectors(["king", "queen", "man", "woman", "apple"], vecs), path, binary=True)

  def query(*args):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "word2vec_query.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)
  out = query(path, "--neighbors=King", "--top_k=1", "--analogy=king,man,woman")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[:2] == ["nearest to 'King':", "  queen                +0.9939"], lines
  assert lines[2] == "king - man + woman:" and lines[3].split()[0] == "queen", lines
  (tmp_path / "cut.bin").write_bytes(path.read_bytes()[:-7])
  for args, said in (((tmp_path / "cut.bin", "--neighbors=king"), "cut.bin: the file ends inside word 5 of the 5"),
                     ((path, "--neighbors=pear"), "'pear' is not in the vocabulary"),
                     ((path, "--analogy=king,man"), "three comma-separated words"),
                     ((path, "--neighbors=king", "--top_k=0"), "not a positive integer"),
                     (("--vectors", tmp_path, "--neighbors=king"), "is a directory")):
    out = query(*args)
    assert out.returncode == 1 and said in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)

def test_gensim_reads_our_files(tmp_path):
  gensim_kv = pytest.importorskip("gensim.models.keyedvectors")
  rng = np.random.default_rng(0)
  wv = ev.WordVectors(["the", "café", "u.s", "x"], rng.normal(size=(4, 6)).astype(np.float32))
  for binary in (False, True):
    path = tmp_path / ("v.bin" if binary else "v.txt")
    ev.save_word2vec(wv, path, binary=binary)
    kv = gensim_kv.KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert list(kv.index_to_key) == wv.words
    np.testing.assert_allclose(kv.vectors, wv.vectors, rtol=1e-5, atol=1e-6)


def test_pca_plot_writes_png(tmp_path):
  wv = ev.WordVectors(["a", "b", "c"], np.random.default_rng(0).normal(size=(3, 5)))
  assert ev.plot_pca(wv, ["a", "c", "zebra"], tmp_path / "p.png") == ["a", "c"]
  assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------------- training


def _synthetic_corpus(path, n_sentences=3000, seed=0):
  """Each pair word appears with words of its role (royal, common, ...) and of its gender, so that the vectors are
  additive: king - man + woman lands near queen."""
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(n_sentences):
    role = rng.integers(len(PAIRS))
    gender = rng.integers(2)
    ctx = [f"role{role}_{j}" for j in rng.integers(0, 3, 2)] + [f"gender{gender}_{j}" for j in rng.integers(0, 3, 2)]
    rng.shuffle(ctx)
    lines.append(" ".join(ctx[:2] + [PAIRS[role][gender]] + ctx[2:]))
  path.write_text("\n".join(lines) + "\n")
  return path


def _config(files, arch="skipgram", loss="negative_sampling", epochs=8, seed=0):
  c = word2vec_skipgram.get_config()
  c.data.files = tuple(files)
  c.data.min_count = 1
  c.data.sample = 0.0
  c.data.window = 2
  c.model.update(architecture=arch, loss=loss, dim=16)
  c.train.update(epochs=epochs, row_size=4, rows_per_step=8, steps_per_call=8, log_every_s=0.0, alpha=0.05)
  c.seed = seed
  return c


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  d = tmp_path_factory.mktemp("w2v")
  return _synthetic_corpus(d / "corpus.txt"), _write_questions(d / "questions.txt", PAIRS)


@pytest.mark.parametrize("arch,loss", [("skipgram", "negative_sampling"), ("cbow", "negative_sampling"),
                                       ("skipgram", "full_softmax"), ("cbow", "full_softmax")])
def test_training_recovers_a_synthetic_analogy(synthetic, arch, loss):
  corpus_path, questions = synthetic
  config = _config([str(corpus_path)], arch, loss)
  wv, stats = task.train(config)
  result = ev.evaluate_analogies(wv, questions)
  assert result["total"] == 60 and result["oov"] == 1
  assert result["accuracy"] >= 0.8, result
  untrained = ev.WordVectors(wv.words, np.asarray(task.init_params(task._model_config(config, len(wv)), 0)
                                                  ["input_embedding"]))
  assert ev.evaluate_analogies(untrained, questions)["accuracy"] < 0.3


def test_cbow_epoch_layout_reads_each_neighbour_at_its_position(synthetic):
  """epoch_data's CBOW layout: window_ids[W + k + o_j] of a micro-step's block is the neighbour in slot j of its
  centre k (wd.windows' context, drawn from the same rng), and V outside the corpus."""
  corpus_path, _ = synthetic
  config = _config([str(corpus_path)], "cbow")
  corpus = task.load_corpus(config)
  data = task.epoch_data(corpus, config, epoch=1, num_devices=2)
  w, block, v = config.data.window, config.train.rows_per_step * config.train.row_size, len(corpus.vocab)
  ids = data.arrays["window_ids"].reshape(-1, block + 2 * w)
  ctx_mask = data.arrays["context_mask"].reshape(-1, block, 2 * w)
  rng = np.random.default_rng([config.seed, 1])  # epoch_data's draws: subsampling, then windows
  kept = wd.subsample(corpus.encoded, corpus.keep_prob, rng)
  context, mask = wd.windows(kept, w, rng, config.data.dynamic_window)
  n = len(kept)
  np.testing.assert_array_equal(ctx_mask.reshape(-1, 2 * w)[:n], mask)
  for j, o in enumerate(wd.window_offsets(w)):
    at_offset = ids[:, w + o:w + o + block].reshape(-1)[:n]  # the word at position q + o of every centre q
    np.testing.assert_array_equal(np.where(mask[:, j], at_offset, 0), context[:, j])
  np.testing.assert_array_equal(ids[:, w:w + block].reshape(-1)[:n], kept.ids)
  position = np.arange(len(ids))[:, None] * block - w + np.arange(block + 2 * w)  # of every window_ids entry
  outside = (position < 0) | (position >= n)
  assert outside.sum() > 2 * w and (ids[outside] == v).all() and (ids[~outside] < v).all()


def test_loss_falls_and_same_seed_gives_identical_vectors(synthetic, tmp_path):
  corpus_path, _ = synthetic
  config = _config([str(corpus_path)], epochs=3)
  wv1, _ = task.train(config, str(tmp_path / "run"))
  losses = [json.loads(l)["loss"] for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert len(losses) >= 3 and losses[-1] < 0.8 * losses[0]
  wv2, _ = task.train(config)
  np.testing.assert_array_equal(wv1.vectors, wv2.vectors)
  config.seed = 1
  wv3, _ = task.train(config)
  assert not np.allclose(wv1.vectors, wv3.vectors)


def test_resume_from_an_epoch_checkpoint_and_rereport(synthetic, tmp_path):
  corpus_path, questions = synthetic
  config = _config([str(corpus_path)], "cbow", epochs=3)
  config.eval.analogies = str(questions)
  config.eval.wordsim353 = config.eval.simlex999 = str(_pairs_file(tmp_path))
  config.eval.plot_words = tuple(w for p in PAIRS for w in p)
  workdir = tmp_path / "wd"
  results = task.train_and_evaluate(config, str(workdir))
  for name in ("vectors.txt", "vectors.bin", "results.json", "config.json", "metrics.jsonl", "pca.png"):
    assert (workdir / name).exists(), name
  full = ev.load_word2vec(workdir / "vectors.bin")
  # as if killed during epoch 3: only the epoch-2 checkpoint is left
  shutil.rmtree(workdir / "checkpoints" / "3")
  os.remove(workdir / "results.json")
  resumed = task.train_and_evaluate(config, str(workdir))
  np.testing.assert_array_equal(ev.load_word2vec(workdir / "vectors.bin").vectors, full.vectors)
  assert resumed["train"]["words"] < results["train"]["words"]  # one epoch trained, not three
  steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")]
  assert steps == sorted(set(steps))  # no step logged twice
  again = task.train_and_evaluate(config, str(workdir))  # finished: re-reports without training
  assert again["analogy"] == resumed["analogy"]
  record = (workdir / "config.json").read_bytes()
  for key, value, said in (("model.dim", 32, "does not fit"), ("data.window", 3, "different corpus/config")):
    other = _config([str(corpus_path)], "cbow", epochs=3)
    other.update_from_flattened_dict({key: value})
    with pytest.raises(ckpt.CheckpointError, match=said):
      task.train_and_evaluate(other, str(workdir))
    assert (workdir / "config.json").read_bytes() == record  # the refused config did not overwrite the run's record


def _pairs_file(tmp_path):
  p = tmp_path / "pairs.tsv"
  p.write_text("# comment\nking\tqueen\t8\nman\twoman\t7\nking\tgirl\t2\nboy\tzebra\t3\n")
  return p


_TWO_DEVICE_SCRIPT = """
import sys
import numpy as np
import jax
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
import test_word2vec as t
from tfjax.tasks import word2vec_eval as ev
from tfjax.tasks import word2vec as task
from tfjax.train import checkpoint as ckpt
assert jax.local_device_count() == 2, jax.local_devices()
config = t._config([{corpus!r}])
wv1, stats = task.train(config)
wv2, _ = task.train(config)
assert stats["devices"] == 2
assert np.array_equal(wv1.vectors, wv2.vectors), "2-device training is not deterministic"
print("ACCURACY", ev.evaluate_analogies(wv1, {questions!r})["accuracy"])
"""


def test_two_devices_train_deterministically_and_recover_the_analogy(synthetic):
  """The shard_map path (each device trains on its share, updates summed once per call) on 2 fake CPU devices."""
  import subprocess
  import sys
  corpus_path, questions = synthetic
  here = os.path.dirname(os.path.abspath(__file__))
  script = _TWO_DEVICE_SCRIPT.format(repo=os.path.dirname(here), tests=here, corpus=str(corpus_path),
                                     questions=str(questions))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  accuracy = float(out.stdout.split("ACCURACY")[1])
  assert accuracy >= 0.8

"""word2vec skip-gram with negative sampling on the ~0.6M-word mix of WikiText-2 (valid + test), the Lee corpus and
Tiny Shakespeare; gensim's defaults (dim 100, window 5, 5 noise words, min_count 5, sample 1e-3, 5 epochs).

Training settings chosen by measurement (3 seeds; experiments/bench/word2vec.py): rows of 32 pairs share a pool of 8
noise words (each weighted 5/8) and the learning rate starts at 0.03. With 5 shared noise words and alpha 0.025
(gensim's): analogy 1.42%, WS-353 0.144; alpha 0.03 + pool 8: 1.58%, 0.212 (gensim, 2 runs: 1.7-1.9%, 0.19-0.21)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "word2vec"
  c.seed = 1
  c.data_dir = ""  # empty: $TFJAX_DATA_DIR, then ~/.cache/tfjax (downloaded with checksum when online)

  c.data = ml_collections.ConfigDict()
  # relative to the data dir; one line = one sentence (see tfjax.data.word2vec_data for the tokenisation)
  c.data.files = ("wikitext2/valid.txt", "wikitext2/test.txt", "lee/lee_background.cor", "tinyshakespeare/input.txt")
  c.data.min_count = 5
  c.data.sample = 1e-3  # frequent-word subsampling threshold (gensim's formula); 0 disables
  c.data.window = 5  # maximum reach; each centre's reach is uniform in [1, window] when dynamic
  c.data.dynamic_window = True

  c.model = ml_collections.ConfigDict()
  c.model.architecture = "skipgram"  # skipgram | cbow
  c.model.loss = "negative_sampling"  # negative_sampling | full_softmax
  c.model.dim = 100
  c.model.negatives = 5  # noise words per item (negative sampling)
  c.model.ns_exponent = 0.75  # noise distribution: unigram ** ns_exponent
  # CBOW: False gives each neighbour the hidden vector's full gradient (word2vec.c, gensim); True divides it by the
  # number of neighbours (the exact gradient of the average)
  c.model.cbow_exact_mean_grad = False

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 5
  c.train.alpha = 0.03  # initial learning rate, decayed linearly to min_alpha over all epochs (gensim: 0.025)
  c.train.min_alpha = 0.0001
  c.train.row_size = 32  # items (pairs / centres) sharing the same noise words
  c.train.noise_pool = 8  # noise words drawn per row, each weighted negatives / noise_pool; 0: = model.negatives
  c.train.rows_per_step = 32  # rows per SGD micro-step per device
  c.train.steps_per_call = 64  # micro-steps per jitted call (lax.scan); devices sync once per call
  c.train.num_devices = 0  # 0: all local devices
  c.train.log_every_s = 2.0

  c.eval = ml_collections.ConfigDict()
  c.eval.analogies = "word2vec_eval/questions-words.txt"
  c.eval.wordsim353 = "word2vec_eval/wordsim353.tsv"
  c.eval.simlex999 = "word2vec_eval/simlex999.txt"
  c.eval.restrict_vocab = 300000  # analogies: only the most frequent words are candidates (as gensim)
  c.eval.neighbor_words = ("king", "france", "love", "war", "money", "good")
  c.eval.plot_words = ("france", "paris", "germany", "berlin", "italy", "rome", "spain", "madrid", "england",
                       "london", "russia", "moscow", "japan", "tokyo", "china", "beijing")
  return c

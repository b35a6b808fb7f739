"""word2vec CBOW with negative sampling: the skip-gram experiment's corpus and settings with architecture=cbow.

Two training settings differ from skip-gram, chosen by measurement (3 seeds, see experiments/bench_word2vec.py): the
devices sync every 16 micro-steps instead of 64 (CBOW's summed neighbour updates suffer more from stale copies), and
the learning rate starts at 0.04 (0.025, gensim's default, under-trains with batched updates; 0.1 diverges).
"""

from experiments.configs import word2vec_skipgram


def get_config():
  c = word2vec_skipgram.get_config()
  c.model.architecture = "cbow"
  c.train.steps_per_call = 16
  c.train.alpha = 0.04
  return c

"""word2vec CBOW with negative sampling: the skip-gram experiment's corpus and settings with architecture=cbow."""

from experiments.configs import word2vec_skipgram


def get_config():
  c = word2vec_skipgram.get_config()
  c.model.architecture = "cbow"
  return c

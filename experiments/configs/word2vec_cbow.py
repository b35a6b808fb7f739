"""word2vec CBOW with negative sampling: the skip-gram experiment's corpus and settings with architecture=cbow.

Two training settings differ from skip-gram, chosen by measurement (3 seeds each, analogy accuracy and WordSim-353):
the devices sync every 16 micro-steps instead of 64 (CBOW's summed neighbour updates suffer more from stale copies:
analogy 0.52% -> 0.84%), and the learning rate starts at 0.05 (0.0125 and 0.025 under-train with batched updates,
0.1 diverges). With the 8-word noise pool of the skip-gram config, over seeds 1-3: alpha 0.04: analogy 1.18%, WS-353
0.053; alpha 0.05: 1.15%, 0.111 (gensim, 4 runs of 3 seeds: 1.11-1.20%, 0.04-0.10).
"""

from experiments.configs import word2vec_skipgram


def get_config():
  c = word2vec_skipgram.get_config()
  c.model.architecture = "cbow"
  c.train.steps_per_call = 16
  c.train.alpha = 0.05
  return c

"""word2vec CBOW with negative sampling: the skip-gram experiment's corpus and settings with architecture=cbow.

Two training settings differ from skip-gram, chosen by measurement (3 seeds each, analogy accuracy and WS-353):

* the learning rate starts at 0.05 (0.0125 and 0.025 under-train with batched updates, 0.1 diverges). With the 8-word
  noise pool of the skip-gram config, over seeds 1-3: alpha 0.04: analogy 1.18%, WS-353 0.053; alpha 0.05: 1.15%,
  0.111 (gensim, 4 runs of 3 seeds: 1.11-1.20%, 0.04-0.10).
* the devices sync every 32 micro-steps instead of 64 (CBOW's summed neighbour updates suffer more from stale copies).
  Since the input table is read by corpus position (tfjax.tasks.word2vec), a micro-step is cheap enough that the
  sync (an all-reduce of both tables) is a large share of the time, so the period was measured again, seeds 1-3,
  alpha 0.05 (words/s on the 2-core CPU, one sweep): every 16: 1.15%, WS-353 0.111, 1.56-1.75M words/s; every 32:
  1.19%, 0.123, 1.95-2.25M; every 64: 0.79%, 0.080, 2.0M. At 32: alpha 0.04: 1.09%, 0.067; alpha 0.06: 1.03%, 0.151;
  noise pool 16: 1.50%, 0.088 at 0.85x the speed; 64 rows per micro-step: 0.76%, 0.093; 16 rows and sync every 64:
  1.05%, 0.114; rows of 64 centres (16 per micro-step): 0.87%, 0.129 at 1.15x; rows of 16 (64 per micro-step):
  1.13%, 0.073. So the skip-gram config's rows (32 x 32) and noise pool (8) are kept.
"""

from experiments.configs import word2vec_skipgram


def get_config():
  c = word2vec_skipgram.get_config()
  c.model.architecture = "cbow"
  c.train.steps_per_call = 32
  c.train.alpha = 0.05
  return c

"""The CBOW-to-attention ladder's default config (``./launch.sh explain cbow_to_attention``; the experiment file
``experiments/configs/cbow_to_attention.py`` is this config). In the library because the explain command trains the
ladder from it, and the library never imports ``experiments``.

From word2vec's average to attention (``./launch.sh explain cbow_to_attention``): the four context models of
tfjax.models.context_models trained on the same corpus, seed, batches, optimizer and budget, differing only in
``model.context`` (and, for rung 4, ``model.num_heads``).

Corpus: WikiText-2 (valid + test) and the Lee background corpus (~0.5M words; word2vec's tokenisation), one line in
20 held out. No frequent-word subsampling and a fixed window, so that position ``c`` of the window is the same
neighbour for every centre (rung 2 learns a weight per position) and the held-out loss is the plain centre-word
cross-entropy of running text. Every rung is trained with the same full softmax over the vocabulary and Adam.
"""

import ml_collections

from tfjax.models import context_models


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "centre_word"
  c.seed = 1
  c.data_dir = ""  # empty: $TFJAX_DATA_DIR, then ~/.cache/tfjax (downloaded with checksum when online)

  c.data = ml_collections.ConfigDict()
  c.data.files = ("wikitext2/valid.txt", "wikitext2/test.txt", "lee/lee_background.cor")
  c.data.min_count = 5
  c.data.window = 4  # words each side: C = 8 context slots
  c.data.dynamic_window = False
  c.data.heldout_every = 20  # one line in 20 is held out (the held-out centre-word loss)

  c.model = ml_collections.ConfigDict()
  c.model.context = "mean"  # the rung trained by a single run; the ladder sets it per rung
  c.model.dim = 100
  c.model.key_dim = 0  # rung 3's key width (0: dim)
  c.model.num_heads = 1  # rung 4's heads (the ladder also trains ladder.self_attention_heads)
  c.model.precision = "default"  # default | high | highest (float32 matmuls on GPUs/TPUs)

  c.ladder = ml_collections.ConfigDict()
  c.ladder.rungs = context_models.RUNGS
  c.ladder.self_attention_heads = (4,)  # rung 4 is trained once per head count, e.g. (1, 4)
  c.ladder.example_sentences = (
      "the president of the united states said on monday that the government would act",
      "the river flows through the city and into the sea near the old harbour",
      "he played for the club in the first season before he joined the national team",
  )
  c.ladder.example_centres = ("united", "city", "club")  # the word of each sentence whose window is drawn

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.lr = 3e-2  # 300 steps of CBOW: 3e-3 -> held-out 6.81 nats, top-1 8.6% ("the"); 3e-2 -> 6.73, 10.1%
  c.optimizer.min_lr = 3e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = 0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 512
  c.train.eval_batch_size = 1024
  c.train.num_steps = 1000  # ~1.3 passes over the training centres; ~4 min a rung on the 2-core CPU
  c.train.grad_accum_steps = 1
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 0  # only at the end
  c.train.max_to_keep = 1
  c.train.keep_best = False
  c.train.parallel = "auto"
  c.train.skip_nonfinite = False
  c.train.restore_fallback = False
  c.train.async_checkpoint = False
  c.train.log_mfu = False
  c.train.tensorboard = False
  c.train.profile_steps = ""

  c.eval = ml_collections.ConfigDict()
  c.eval.analogies = "word2vec_eval/questions-words.txt"
  c.eval.wordsim353 = "word2vec_eval/wordsim353.tsv"
  c.eval.simlex999 = "word2vec_eval/simlex999.txt"
  c.eval.restrict_vocab = 300000
  c.eval.neighbor_words = ("king", "france", "war", "money", "good", "river")
  c.eval.plot_words = ()
  return c

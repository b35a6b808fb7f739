"""A small BERT pretrained with masked-LM on WikiText-2 (valid split), evaluated on WikiText-2 test.

Post-LN as the original BERT (exact GELU, LayerNorm eps 1e-12, tied decoder), 4 layers, width 128, 4 heads,
sequences of 64 WordPiece tokens (vocabulary of 8192 trained on the training text), batch 32, 1000 steps, no
dropout. Reports masked-token loss and accuracy (``eval_loss``, ``eval_accuracy``) on the test text.

Measured on a shared 2-core CPU (17 min, other jobs running; ~2,400 tokens/s): eval loss 6.44, masked-token
accuracy 12.4%, against 6.86 / 6.0% for the unigram baseline (always "the"). That is the early, mostly-unigram stage
of MLM training; context use takes far more steps than a CPU budget of minutes allows (width 256 / length 128 for 400
steps: 6.50 / 11.3% in 25 min; pre-LN at lr 3e-3 was worse at 500 steps: 6.75 / 9.2%).

    python experiments/train.py --config=experiments/configs/bert_wikitext2.py --workdir=runs/bert
    python experiments/fill_mask.py --workdir=runs/bert --text="the capital of [MASK] is paris"
"""

import ml_collections

from experiments.configs import lm_defaults


def get_config():
  c = lm_defaults.get_config()
  c.task = "mlm"
  c.seed = 0

  c.data.dataset = "wikitext2_valid"  # training text: a known name (tfjax.tasks.mlm.DATASETS) or a file path
  c.data.eval_dataset = "wikitext2_test"
  c.data.val_fraction = 0.0  # unused: evaluation has its own text
  c.data.seq_len = 64  # 0: model.max_len
  c.data.vocab_size = 8192  # WordPiece vocabulary trained on the training text
  c.data.min_frequency = 2
  c.data.lowercase = True
  c.data.clean_wikitext = True  # "a @-@ b" -> "a-b", "<unk>" -> "[UNK]"
  c.data.mask_prob = 0.15  # fraction of real, non-special tokens chosen per sequence
  c.data.mask_token_prob = 0.8  # of the chosen: replaced by [MASK] ...
  c.data.random_token_prob = 0.1  # ... by a random token (the rest stay unchanged)
  c.data.max_predictions = 0  # 0: ceil(mask_prob * seq_len)

  c.model.update(num_layers=4, num_heads=4, emb_dim=128, mlp_dim=512, max_len=64, dropout_rate=0.0,
                 attention_dropout_rate=0.0, positional="learned", norm="layernorm", norm_eps=1e-12, use_bias=True,
                 pre_ln=False, activation="gelu", tie_embeddings=True,
                 scale_residual_init=False,  # BERT's N(0, 0.02) for every weight (GPT-2's 1/sqrt(2L): issue 20)
                 attention_block_size=0)  # bidirectional: no causal blocks to skip (and HF exports carry none)
  c.model.type_vocab_size = 2

  c.optimizer.update(lr=2e-3, min_lr=1e-4, warmup_steps=100, b2=0.98, weight_decay=0.01)

  c.train.update(batch_size=32, num_steps=1000, eval_every=250, eval_steps=0, checkpoint_every=500, log_every=50)

  c.sample.num_tokens = 0  # no text generation for an encoder
  c.fill_mask = ml_collections.ConfigDict()
  c.fill_mask.top_k = 5
  c.fill_mask.texts = ("the capital of [MASK] is paris.", "he was born in [MASK].",
                       "the game was released in [MASK] 2011.")
  return c

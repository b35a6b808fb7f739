"""A small BERT pretrained with masked-LM on WikiText-2 (valid split), evaluated on WikiText-2 test.

The original post-LN BERT (exact GELU, LayerNorm eps 1e-12, tied decoder, every weight N(0, 0.02)) with rotary
positions (RoFormer) instead of its learned position table; 4 layers, width 128, 4 heads, sequences of 64 WordPiece
tokens (vocabulary of 8192 trained on the training text), batch 32, 3000 steps, no dropout. Reports masked-token loss
and accuracy (``eval_loss``, ``eval_accuracy``) on the test text, the accuracy at the [MASK] positions alone
(``eval_by_replacement``) beside count models of the training text (``mask_baselines``), fill-mask answers, and
exports a Hugging Face ``RoFormerForMaskedLM`` to ``workdir/hf``.

On 2 quiet CPU cores: 6 min 33 s start to finish, test loss 4.69 / accuracy 30.3%, 24.5% at the [MASK] positions
(count models: unigram 6.1%, both neighbours 19.7%); "the game was released in [MASK] 2011." -> february, the,
november, july, june. With BERT's learned table (``--config.model.positional=learned``, exported as
``BertForMaskedLM``) the same recipe stays at the unigram guess at [MASK] (6.4% after 3000 steps), and Hugging
Face's BertForMaskedLM follows the same curve step for step: issue 20, docs/bert.md.

    ./launch.sh train bert_wikitext2 --workdir=runs/bert
    ./launch.sh fill-mask runs/bert --text="the game was released in [MASK] 2011."
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import lm_defaults


def get_config():
  c = lm_defaults.get_config()
  c.task = "mlm"
  c.seed = 0

  c.data.dataset = "wikitext2_valid"  # training text: a known name (tfjax.tasks.mlm.DATASETS) or a file path
  c.data.eval_dataset = "wikitext2_test"
  c.data.val_fraction = 0.0  # unused: evaluation has its own text
  c.data.seq_len = 64  # None: model.max_len
  c.data.vocab_size = 8192  # WordPiece vocabulary trained on the training text
  # a tokenizer.json to use instead (e.g. an earlier run's): WordPiece training is not deterministic (tokenizers#1794)
  c.data.tokenizer_file = config_dict.placeholder(str)
  c.data.min_frequency = 2
  c.data.lowercase = True
  c.data.clean_wikitext = True  # "a @-@ b" -> "a-b", "<unk>" -> "[UNK]"
  c.data.mask_prob = 0.15  # fraction of real, non-special tokens chosen per sequence
  c.data.mask_token_prob = 0.8  # of the chosen: replaced by [MASK] ...
  c.data.random_token_prob = 0.1  # ... by a random token (the rest stay unchanged)
  c.data.max_predictions = config_dict.placeholder(int)  # None: ceil(mask_prob * seq_len)

  c.model.update(num_layers=4, num_heads=4, emb_dim=128, mlp_dim=512, max_len=64, dropout_rate=0.0,
                 attention_dropout_rate=0.0,
                 positional="rope",  # RoFormer's rotary positions; "learned": BERT's table (no context use here)
                 norm="layernorm", norm_eps=1e-12, use_bias=True,
                 pre_ln=False, activation="gelu", tie_embeddings=True,
                 scale_residual_init=False,  # BERT's N(0, 0.02) for every weight (GPT-2's 1/sqrt(2L): issue 20)
                 attention_block_size=0)  # bidirectional: no causal blocks to skip (and HF exports carry none)
  c.model.type_vocab_size = 2

  c.optimizer.update(lr=2e-3, min_lr=1e-4, warmup_steps=100, b2=0.98, weight_decay=0.01)

  c.train.update(batch_size=32, num_steps=3000, eval_every=500, eval_steps=0, checkpoint_every=1000, log_every=50)

  c.sample.num_tokens = 0  # no text generation for an encoder
  c.fill_mask = ml_collections.ConfigDict()
  c.fill_mask.top_k = 5
  c.fill_mask.texts = ("the capital of [MASK] is paris.", "he was born in [MASK].",
                       "the game was released in [MASK] 2011.")
  return c

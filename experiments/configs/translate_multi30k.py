"""An encoder-decoder transformer translating Multi30k captions from English to German ("Attention Is All You Need"
at a CPU-friendly size): 3 + 3 layers, width 256, 4 heads, ReLU MLP 1024, label smoothing 0.1, dropout 0.1, a joint
BPE vocabulary of 8,000, tied embeddings. Blocks are pre-LN (the paper's are post-LN; pre-LN trains stably without
its long warmup). Positions: RoPE in both stacks' self-attention. The paper's sinusoids (``model.positional=
sinusoidal``) are added to token embeddings initialised at std 0.02, so at first they drown the tokens unless
``model.embed_scale=True`` multiplies the embeddings by sqrt(D) as the paper does: 500 steps reached validation loss
5.46 with unscaled sinusoids. Evaluation: validation cross-entropy; at the end, greedy BLEU (sacreBLEU) on test2016."""

import ml_collections
from ml_collections import config_dict

from experiments.configs import lm_defaults


def get_config():
  c = lm_defaults.get_config()
  c.task = "translate"
  c.data = ml_collections.ConfigDict()
  c.data.source = "en"  # en | de | fr
  c.data.target = "de"
  c.data.text = "raw"  # raw: the cased captions | tok: their lowercased Moses-tokenised form (multi30k/tok/)
  c.data.vocab_size = 8000  # joint BPE vocabulary of both languages
  # sentencepiece: words start with ▁ (lossless) | subword_nmt: words end with </w> (subword-nmt's, as fairseq's recipes)
  c.data.bpe = "sentencepiece"
  # "16,24,32": batches of pairs of similar length, padded to their bucket (the context window is the last bucket)
  c.data.length_buckets = ""
  # > 0: fairseq's --max-tokens: each epoch (every pair once, shuffled) cut into batches of one bucket's pairs,
  # max_tokens // width of them (down to a multiple of batch_multiple); train.batch_size is then eval's batch only
  c.data.max_tokens = 0
  c.data.batch_multiple = 8  # fairseq's --required-batch-size-multiple (also rounded to devices x grad_accum_steps)
  c.model.update(num_layers=3, num_heads=4, emb_dim=256, mlp_dim=1024, max_len=40, dropout_rate=0.1,
                 positional="rope", activation="relu", attention_block_size=0)
  c.model.num_encoder_layers = config_dict.placeholder(int)  # None: as many as the decoder (num_layers)
  c.optimizer.update(lr=1e-3, min_lr=1e-4, warmup_steps=400, weight_decay=0.01, b2=0.98)
  c.train.update(batch_size=128, num_steps=3000, eval_every=500, checkpoint_every=500, log_every=50)
  c.train.label_smoothing = 0.1
  c.eval = ml_collections.ConfigDict()
  c.eval.bleu_sentences = -1  # test2016 sentences translated for BLEU at the end (-1: all 1,000; 0: none)
  c.eval.val_bleu_sentences = -1  # validation sentences for eval_bleu at each evaluation (-1: all 1,014; 0: none)
  c.eval.beam_size = 1  # 1: greedy; 4: beam search (test2016 BLEU 35.10 -> 36.80 for the shipped run, 3x the time)
  c.eval.length_penalty = 0.6  # beam search: GNMT length penalty exponent
  c.eval.length_norm = "gnmt"  # hypotheses ranked by log-prob / ((5 + length) / 6) ** length_penalty
  c.eval.average_last = 0  # > 1: final BLEU of the final parameters averaged with the checkpoints before them
  c.eval.report_val = False  # also the final BLEU scores of the validation set
  del c.sample
  return c

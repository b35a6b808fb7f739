"""gpt2_small's CPU twin: the GPT-2 architecture family (learned positions, tanh GELU, biases, LayerNorm eps 1e-5,
pre-LN, tied unembedding) and recipe (AdamW, warmup then cosine, weight decay 0.1, clipping at 1.0) shrunk to train
in a few minutes on a 2-core CPU: 4 layers, 4 heads, width 256, context 128, batch 16 x 128 tokens, float32, 600
steps. Data: WikiText-2's validation split + Tiny Shakespeare + the Lee corpus + Multi30k's English captions (the
shared text), as shards of a 4,096-token byte-level BPE trained on them; WikiText-2's test split stays out, for a
held-out test perplexity::

    ./launch.sh prepare ../shared/data/wikitext2/valid.txt ../shared/data/tinyshakespeare/input.txt \\
        ../shared/data/lee/lee_background.cor ../shared/data/multi30k/train.en.gz \\
        --tokenizer=bpe:4096 --val_fraction=0.05 --out=data/shards/shared_bpe4k
    ./launch.sh train gpt2_small_cpu
    ./launch.sh eval runs/gpt2_small_cpu --data=data/shards/shared_bpe4k        # the shards' validation split
    ./launch.sh eval runs/gpt2_small_cpu --data=wikitext2 --split=test --stride=64

(~4.2M parameters; lr 1e-3 and b2 0.99 rather than 6e-4 / 0.95: a small model on small batches, as nanoGPT's CPU
configs.) See docs/corpora.md.
"""

import os

from experiments.configs import lm_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config():
  c = lm_defaults.get_config()
  c.data.dataset = "shards:" + os.path.join(ROOT, "data", "shards", "shared_bpe4k")
  c.model.update(num_layers=4, num_heads=4, emb_dim=256, max_len=128, positional="learned", use_bias=True,
                 activation="gelu_tanh", norm="layernorm", norm_eps=1e-5, pre_ln=True, tie_embeddings=True,
                 dropout_rate=0.0, attention_dropout_rate=0.0, dtype="float32", param_dtype="float32")
  c.optimizer.update(name="adamw", lr=1e-3, min_lr=1e-4, schedule="cosine", warmup_steps=60, b1=0.9, b2=0.99,
                     eps=1e-8, weight_decay=0.1, grad_clip=1.0)
  c.train.update(batch_size=16, grad_accum_steps=1, num_steps=600, eval_every=100, eval_steps=10,
                 checkpoint_every=100, log_every=20, keep_best=True)
  c.sample.update(prompt="\n", num_tokens=200)
  return c

"""GPT-2 small (124M) as nanoGPT's ``config/train_gpt2.py``: the accelerator run.

Architecture: GPT-2's (12 layers, 12 heads, width 768, context 1024, learned positions, tanh GELU, biases in every
Dense and LayerNorm, LayerNorm eps 1e-5, pre-LN, tied unembedding, no dropout), 124,439,808 parameters with GPT-2's
vocabulary of 50,257 tokens (nanoGPT pads it to 50,304 for speed; here the vocabulary is the tokenizer's).
Optimisation: AdamW (b1 0.9, b2 0.95, eps 1e-8), lr 6e-4 warmed up over 2,000 steps then cosine to 6e-5 at step
600,000, weight decay 0.1 (matrices and embeddings only), gradient clipping at 1.0. Batch: 512 sequences of 1,024
tokens = 524,288 tokens (~0.5M, nanoGPT's 491,520 = 12 x 1,024 x 40 micro-steps) as 16 micro-batches of 32
(``train.grad_accum_steps``; on N devices each holds 32 / N rows of a micro-batch; a micro-batch's float32 logits
are 6.6 GB). Compute in bfloat16 (``model.dtype``; parameters, optimizer state, logits and the loss stay float32),
as nanoGPT's autocast. Evaluation every 1,000 steps on 5 batches of 512 validation windows (2,560 sequences;
nanoGPT: 200 x 12 = 2,400), run in the training step's micro-batches; the best parameters are kept
(``./launch.sh eval runs/gpt2_small --best``).

Data: token shards made with the GPT-2 tokenizer (a local Hugging Face ``gpt2`` directory), e.g. OpenWebText::

    ./launch.sh prepare 'openwebtext/*.jsonl.gz' --tokenizer=PATH/TO/gpt2 --out=data/shards/openwebtext_gpt2 \\
        --val_fraction=0.0005
    ./launch.sh train gpt2_small
    ./launch.sh eval runs/gpt2_small --data=wikitext2 --split=test --stride=512

600,000 steps is nanoGPT's full run (~300B tokens); ``--config.train.num_steps=19073
--config.optimizer.decay_steps=19073 --config.optimizer.warmup_steps=715`` is one pass over 10B tokens (llm.c's /
build-nanogpt's GPT-2 reproduction). On a CPU use ``--config.model.dtype=float32`` (bfloat16 is emulated there), or
the ``gpt2_small_cpu`` twin. See docs/corpora.md.
"""

import os

from experiments.configs import lm_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config():
  c = lm_defaults.get_config()
  c.data.dataset = "shards:" + os.path.join(ROOT, "data", "shards", "openwebtext_gpt2")
  c.model.update(num_layers=12, num_heads=12, emb_dim=768, max_len=1024, positional="learned", use_bias=True,
                 activation="gelu_tanh", norm="layernorm", norm_eps=1e-5, pre_ln=True, tie_embeddings=True,
                 dropout_rate=0.0, attention_dropout_rate=0.0, dtype="bfloat16", param_dtype="float32")
  c.optimizer.update(name="adamw", lr=6e-4, min_lr=6e-5, schedule="cosine", warmup_steps=2000, decay_steps=600_000,
                     b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
  c.train.update(batch_size=512, grad_accum_steps=16, num_steps=600_000, eval_every=1000, eval_steps=5,
                 checkpoint_every=1000, log_every=10, keep_best=True)
  c.sample.update(prompt="\n", num_tokens=200)
  return c

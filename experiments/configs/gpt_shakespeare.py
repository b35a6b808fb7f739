"""GPT on Tiny Shakespeare (characters) at nanoGPT's shakespeare_char settings: 6 layers, 6 heads, width 384,
context 256, batch 64, dropout 0.2, AdamW lr 1e-3 → 1e-4 (cosine over 5000 steps, 100 warmup), beta2 0.99."""

from experiments.configs import lm_defaults


def get_config():
  c = lm_defaults.get_config()
  c.model.update(num_layers=6, num_heads=6, emb_dim=384, max_len=256, dropout_rate=0.2, attention_dropout_rate=0.2)
  # it overfits after ~1,500 steps (val loss 1.47 -> 1.72 by step 5000 on an H100): keep the best parameters too, as
  # nanoGPT's shakespeare_char config does (it saves only when the val loss improves)
  c.train.update(batch_size=64, num_steps=5000, eval_every=250, eval_steps=200, checkpoint_every=250, keep_best=True)
  return c

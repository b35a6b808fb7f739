"""The "baby" GPT on Tiny Shakespeare (nanoGPT's CPU example): 4 layers, 4 heads, width 128, context 64, batch 12,
no dropout, 2000 steps. Trains in a few minutes on a laptop CPU."""

from experiments.configs import lm_defaults


def get_config():
  c = lm_defaults.get_config()
  c.model.update(num_layers=4, num_heads=4, emb_dim=128, max_len=64, dropout_rate=0.0)
  c.train.update(batch_size=12, num_steps=2000, eval_every=250, eval_steps=20, checkpoint_every=500, log_every=50)
  return c

"""A GPT that must copy: the demo's width (4 heads, 128, context 64) at 2 layers, on ``repeats`` (random letters,
each line written twice; :mod:`tfjax.data.synthetic`), batch 32, 600 steps, every checkpoint kept (one each 50 steps) to watch the
induction heads form (``./launch.sh explain induction WORKDIR --step=S``). About 40 s on 2 CPU cores."""

from experiments.configs import gpt_shakespeare_tiny


def get_config():
  c = gpt_shakespeare_tiny.get_config()
  c.data.dataset = "repeats"
  c.model.num_layers = 2
  c.train.update(batch_size=32, num_steps=600, eval_every=50, checkpoint_every=50, max_to_keep=12)
  return c

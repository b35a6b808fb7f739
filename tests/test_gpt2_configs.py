"""The gpt2_small config is GPT-2 small (124M) with nanoGPT's train_gpt2 recipe; gpt2_small_cpu builds on shards.
Shapes only (jax.eval_shape): nothing is trained."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from experiments.configs import gpt2_small, gpt2_small_cpu
from tfjax import config as config_lib
from tfjax.models.gpt import GPT, num_params
from tfjax.train.optimizer import make_schedule


def gpt2_param_count(vocab, layers, width, context):
  """GPT2LMHeadModel's parameters (tied head) from its tensor shapes: wte, wpe, per layer ln_1, c_attn, c_proj, ln_2,
  c_fc, mlp c_proj (weights and biases), and ln_f."""
  per_layer = 2 * width + (width * 3 * width + 3 * width) + (width * width + width) + 2 * width \
      + (width * 4 * width + 4 * width) + (4 * width * width + width)
  return vocab * width + context * width + layers * per_layer + 2 * width


def abstract_params(config, vocab):
  model = GPT(config_lib.transformer_config(config.model, vocab))
  ids = jnp.zeros((1, config.model.max_len), jnp.int32)
  return model, nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), ids)["params"]))


def test_gpt2_small_is_gpt2_124m_with_nanogpt_recipe():
  c = gpt2_small.get_config()
  config_lib.validate_train_config(c)
  model, params = abstract_params(c, 50257)
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  assert total == gpt2_param_count(50257, 12, 768, 1024) == 124_439_808
  assert num_params(params) == 124_439_808 - 1024 * 768  # MFU's N: without the position table
  cfg = model.cfg
  assert (cfg.positional, cfg.activation, cfg.use_bias, cfg.norm_eps, cfg.tie_embeddings) == \
      ("learned", "gelu_tanh", True, 1e-5, True)
  assert cfg.dtype == jnp.bfloat16 and cfg.param_dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  # ~0.5M tokens per step through gradient accumulation, micro-batches of 32 sequences
  assert c.train.batch_size * c.model.max_len == 2**19 and c.train.batch_size // c.train.grad_accum_steps == 32
  sched = make_schedule(c.optimizer, c.train.num_steps)
  assert float(sched(0)) == 0.0
  assert float(sched(2000)) == pytest.approx(6e-4)
  assert float(sched(600_000)) == pytest.approx(6e-5)
  assert (c.optimizer.b2, c.optimizer.weight_decay, c.optimizer.grad_clip) == (0.95, 0.1, 1.0)
  assert c.data.dataset.startswith("shards:")


def test_gpt2_small_cpu_builds_on_shards(tmp_path):
  from tfjax.data import prepare
  from tfjax.tasks.lm import LMTask
  src = tmp_path / "text.txt"
  src.write_text("".join(f"The {i}th fox jumps over {i % 7} lazy dogs.\n" for i in range(600)))
  prepare.prepare([str(src)], "bpe:300", tmp_path / "shards", val_fraction=0.2, log=lambda m: None)
  c = gpt2_small_cpu.get_config()
  config_lib.validate_train_config(c)
  c.data.dataset = f"shards:{tmp_path / 'shards'}"
  task = LMTask(c, str(tmp_path / "run"))
  assert task.model_cfg.vocab_size == 300 and task.seq_len == 128
  _, params = abstract_params(c, 4096)  # the documented 4,096-token BPE
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  assert total == gpt2_param_count(4096, 4, 256, 128)
  assert 4.0e6 < total < 4.4e6
  batch = task.train_batch(0)
  assert batch["inputs"].shape == (16, 128)

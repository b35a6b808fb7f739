"""One source of model defaults: the model ``./launch.sh train`` builds from the shipped config files is the model
``GPT(gpt_config(...))`` / ``TransformerConfig(...)`` builds in Python.

The config files are read the way the launcher reads them (``experiments/train.py``: ml_collections'
``DEFINE_config_file`` with ``--config.KEY=VALUE`` flags), and the model is built through the task registry the
launcher uses, so a default that an experiment file or the config translation changed would show here.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from tfjax import config as config_lib
from tfjax.models.config import TransformerConfig
from tfjax.models.gpt import GPT, gpt_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def launcher_config(name: str, *overrides: str):
  """``experiments/configs/NAME.py`` with ``--config.KEY=VALUE`` flags, parsed as ``experiments/train.py`` does."""
  fv = flags.FlagValues()
  argv = ["train.py", f"--config={ROOT / 'experiments' / 'configs' / name}.py", *overrides]
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def test_shipped_defaults_are_the_dataclass_defaults():
  config = launcher_config("lm_defaults")
  assert config_lib.transformer_config(config.model, 65) == TransformerConfig(vocab_size=65) == gpt_config(
      vocab_size=65)
  # the shipped GPT: RoPE, no biases, tanh GELU, causal query blocks of 64 (not GPT-2's learned positions and biases)
  cfg = TransformerConfig(vocab_size=65)
  assert (cfg.positional, cfg.use_bias, cfg.activation, cfg.attention_block_size) == ("rope", False, "gelu_tanh", 64)


def test_every_field_is_a_config_key_with_its_default():
  model = config_lib.model_config()
  fields = {f.name: f.default for f in TransformerConfig.__dataclass_fields__.values() if f.name != "vocab_size"}
  assert set(model.keys()) == set(fields)
  for name, default in fields.items():
    if name in config_lib.DTYPE_KEYS:
      assert config_lib.get_dtype(model[name]) == default
    else:
      assert model[name] == default, name


def test_full_size_default_models_have_the_same_parameters():
  """The default 6/6/384 GPT, abstractly (no FLOPs): the launcher's task and the Python model agree leaf by leaf."""
  from tfjax.tasks import make_task
  task = make_task(launcher_config("lm_defaults", "--config.train.num_steps=1"), None)
  python = GPT(gpt_config(vocab_size=task.tokenizer.vocab_size))
  a = jax.eval_shape(task.init_params, jax.random.key(0))
  b = jax.eval_shape(lambda k: python.init(k, jnp.zeros((1, 256), jnp.int32))["params"], jax.random.key(0))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), a) == jax.tree.map(lambda x: (x.shape, x.dtype), b)
  assert sum(x.size for x in jax.tree.leaves(a)) > 10_000_000  # the 6/6/384 model, not a small one


def test_launcher_model_equals_python_model():
  """Same parameter tree and same logits for the same init key, with command-line overrides of the size."""
  from tfjax.tasks import make_task
  sizes = dict(num_layers=2, num_heads=4, emb_dim=32, max_len=96)  # > 64: the causal query blocks are used
  config = launcher_config("gpt_shakespeare_tiny", *(f"--config.model.{k}={v}" for k, v in sizes.items()))
  task = make_task(config, None)
  vocab = task.tokenizer.vocab_size
  key = jax.random.key(3)
  launched = task.init_params(key)
  model = GPT(gpt_config(vocab_size=vocab, **sizes))
  params = model.init(key, jnp.zeros((1, 96), jnp.int32))["params"]
  assert jax.tree.structure(launched) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(launched), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ids = jnp.asarray(task.train_batch(0)["inputs"][:2])
  np.testing.assert_array_equal(np.asarray(task.model.apply({"params": launched}, ids)),
                                np.asarray(model.apply({"params": params}, ids)))
  # and a model that differs in one default is told apart (the comparison can fail)
  other = GPT(gpt_config(vocab_size=vocab, positional="learned", **sizes))
  assert jax.tree.structure(other.init(key, ids)["params"]) != jax.tree.structure(params)


def test_none_defaults_take_command_line_values():
  config = launcher_config("lm_defaults", "--config.model.mlp_dim=512", "--config.model.num_kv_heads=2",
                           "--config.model.precision=highest", "--config.optimizer.decay_steps=300")
  assert config.model.mlp_dim == 512 and isinstance(config.model.mlp_dim, int)
  cfg = config_lib.transformer_config(config.model, 65)
  assert (cfg.hidden_dim, cfg.num_kv_heads, cfg.precision) == (512, 2, "highest")
  unset = config_lib.transformer_config(launcher_config("lm_defaults").model, 65)
  assert (unset.mlp_dim, unset.hidden_dim, unset.head_dim, unset.precision) == (None, 4 * 384, None, None)
  with pytest.raises(flags.IllegalFlagValueError):
    launcher_config("lm_defaults", "--config.model.mlp_dim=wide")
  # the in-process override path (sweeps, explain) parses the same way
  c = config_lib.apply_overrides(launcher_config("lm_defaults"), ["model.head_dim=32"])
  assert config_lib.transformer_config(c.model, 65).head_dim == 32


def test_config_json_of_older_runs_still_reads():
  """config.json files written before the defaults came from the dataclass hold 0 / "default" for "unset"."""
  import ml_collections
  old = json.loads(launcher_config("lm_defaults").to_json())
  old["model"].update(mlp_dim=0, head_dim=0, num_kv_heads=0, precision="default")
  cfg = config_lib.transformer_config(ml_collections.ConfigDict(old)["model"], 65)
  assert cfg == TransformerConfig(vocab_size=65)


def test_families_keep_their_own_architecture():
  """BERT, the translators and imported checkpoints set their fields explicitly: the GPT defaults do not leak."""
  bert = config_lib.transformer_config(launcher_config("bert_wikitext2").model, 100)
  assert (bert.positional, bert.use_bias, bert.activation, bert.pre_ln, bert.attention_block_size) == (
      "rope", True, "gelu", False, 0)  # RoFormer's rotary positions (issue 20), BERT's everything else
  tiny = config_lib.transformer_config(launcher_config("translate_multi30k_tiny").model, 100)
  assert (tiny.positional, tiny.use_bias, tiny.activation, tiny.pre_ln) == ("sinusoidal", True, "relu", False)
  from tfjax.models.bert import bert_config
  assert (bert_config(vocab_size=10).positional, bert_config(vocab_size=10).use_bias) == ("learned", True)

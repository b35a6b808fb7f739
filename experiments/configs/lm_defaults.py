"""Defaults shared by the language-model configs (every key an experiment may override on the command line)."""

import ml_collections
from ml_collections import config_dict

from tfjax import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lm"
  c.seed = 1337
  c.data_dir = ""  # empty: $TFJAX_DATA_DIR, then ~/.cache/tfjax (downloaded with checksum when online)

  c.data = ml_collections.ConfigDict()
  # a known name or a path to a text file (characters), or token shards: shards:DIR / a dir with meta.json written by
  # ./launch.sh prepare (tfjax.data.shards; memory-mapped, its own tokenizer and validation split)
  c.data.dataset = "tinyshakespeare"
  c.data.val_fraction = 0.1  # text datasets only (shards hold their own validation split)
  # a Hugging Face GPT-2 dir or a tfjax LM workdir to start from: its architecture replaces model's architecture keys,
  # its weights the initialisation, its tokenizer the data's (see tfjax.tasks.lm)
  c.init_from = ""
  c.data.seq_len = config_dict.placeholder(int)  # None: the context window model.max_len

  # The model, optimizer and loop defaults are the library's (tfjax.config): the model's keys and defaults are those of
  # the TransformerConfig dataclass, so GPT(gpt_config(vocab_size=V)) in Python is the model trained here. Override
  # any key here or on the command line (--config.model.mlp_dim=512); None means "derived" (mlp_dim: 4 * emb_dim,
  # head_dim: emb_dim // num_heads, num_kv_heads: num_heads, precision: JAX's default).
  c.model = config_lib.model_config()
  c.optimizer = config_lib.optimizer_config()
  c.train = config_lib.train_config()

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "\n"
  c.sample.num_tokens = 500
  c.sample.temperature = 0.8
  c.sample.top_k = 200
  c.sample.top_p = 1.0
  return c

"""Causal language modelling: a GPT on a text, predicting each next token.

Data: the text is tokenised (character level), split into the first ``1 - val_fraction`` for training and the rest
for validation. The training batch at step ``s`` is ``batch_size`` windows of ``seq_len + 1`` tokens at offsets drawn
by ``numpy.random.default_rng([seed, s])``: a pure function of (seed, step), so a resumed run sees exactly the same
batches. Inputs are the first ``seq_len`` tokens of each window, targets the last ``seq_len`` (shifted by one).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax import config as config_lib
from tfjax.data import files
from tfjax.data.tokenizers import CharTokenizer
from tfjax.generate import generate
from tfjax.models.gpt import GPT, flops_per_token, num_params

DATASETS = {"tinyshakespeare": files.TINY_SHAKESPEARE}


def load_text(dataset: str, data_dir: str | None) -> str:
  """The text of a known dataset name, or of a file path."""
  spec = DATASETS.get(dataset, dataset)
  path = files.find_data_file(spec, data_dir or None)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if not text:
    raise ValueError(f"data file {path} is empty")
  return text


class LMTask:
  """A GPT trained on next-token prediction. Implements :class:`tfjax.tasks.base.Task`."""

  def __init__(self, config: Any, workdir: str | None = None):
    self.config = config
    text = load_text(config.data.dataset, config.data_dir)
    tok_path = os.path.join(workdir, "tokenizer.json") if workdir else None
    if tok_path and os.path.exists(tok_path):  # a resumed run keeps its vocabulary
      self.tokenizer = CharTokenizer.load(tok_path)
    else:
      self.tokenizer = CharTokenizer.from_text(text)
      if tok_path and jax.process_index() == 0:  # one writer in a multi-process run
        os.makedirs(workdir, exist_ok=True)
        self.tokenizer.save(tok_path)
    data = self.tokenizer.encode(text)
    n_train = int(len(data) * (1.0 - config.data.val_fraction))
    self.train_data, self.val_data = data[:n_train], data[n_train:]
    self.seq_len = config.model.max_len if not config.data.get("seq_len") else config.data.seq_len
    self.model_cfg = config_lib.transformer_config(config.model, self.tokenizer.vocab_size)
    if self.seq_len > self.model_cfg.max_len:
      raise config_lib.ConfigError(f"data.seq_len={self.seq_len} is longer than the context window "
                                   f"model.max_len={self.model_cfg.max_len}")
    for name, split in (("training", self.train_data), ("validation", self.val_data)):
      if len(split) <= self.seq_len + 1:
        raise ValueError(f"the {name} split has {len(split)} tokens, fewer than seq_len + 1 = {self.seq_len + 1}")
    self.model = GPT(self.model_cfg)
    self.batch_size = config.train.batch_size
    self.seed = config.seed

  # -- Task protocol -------------------------------------------------------------------------------------------------
  def init_params(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.seq_len), jnp.int32))["params"]

  def loss_fn(self, params, batch, rng, train):
    logits = self.model.apply({"params": params}, batch["inputs"], deterministic=not train,
                              rngs={"dropout": rng} if train and rng is not None else None)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    # float32 sums: under data parallelism XLA can then merge every cross-device reduction of the step into one.
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32))
    return jnp.sum(ce), jnp.asarray(ce.size, jnp.float32), {"accuracy": correct}

  def _windows(self, data: np.ndarray, offsets: np.ndarray) -> dict[str, np.ndarray]:
    idx = offsets[:, None] + np.arange(self.seq_len + 1)[None, :]
    tokens = data[idx]
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

  def _offsets(self, data, key, shard, num_shards):
    if self.batch_size % num_shards:
      raise ValueError(f"batch_size={self.batch_size} does not divide into {num_shards} processes")
    rng = np.random.default_rng(key)
    offsets = rng.integers(0, len(data) - self.seq_len - 1, size=self.batch_size)
    per = self.batch_size // num_shards
    return offsets[shard * per:(shard + 1) * per]

  def train_batch(self, step, shard=0, num_shards=1):
    return self._windows(self.train_data, self._offsets(self.train_data, [self.seed, step], shard, num_shards))

  def eval_batches(self, shard=0, num_shards=1):
    for i in range(self.config.train.eval_steps):
      yield self._windows(self.val_data, self._offsets(self.val_data, [self.seed, 2**31 - 1, i], shard, num_shards))

  def flops_per_token(self, params) -> float:
    return flops_per_token(self.model_cfg, num_params(params), self.seq_len)

  def final_report(self, params) -> dict[str, Any]:
    s = self.config.sample
    if s.num_tokens <= 0:
      return {}
    text = sample_text(self, params, s.prompt, s.num_tokens, s.temperature, s.top_k, s.top_p, self.seed)
    return {"sample": text}


def sample_text(task: LMTask, params, prompt: str, num_tokens: int, temperature: float, top_k: int = 0,
                top_p: float = 1.0, seed: int = 0) -> str:
  """Generates ``num_tokens`` characters after ``prompt`` (top_k=0 / top_p=1 disable those filters)."""
  ids = task.tokenizer.encode(prompt or "\n")[None, :]
  out = generate(task.model, params, ids, num_tokens, jax.random.key(seed), temperature=temperature,
                 top_k=top_k or None, top_p=top_p if top_p < 1.0 else None)
  return task.tokenizer.decode(out[0])

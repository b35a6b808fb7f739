"""Causal language modelling: a GPT on a text or a tokenised corpus, predicting each next token.

Data (``config.data.dataset``), one of

* a text: a known name (``tinyshakespeare``; ``repeats``, random strings written twice, generated:
  :mod:`tfjax.data.synthetic`) or a path to a text file, read into memory and tokenised by characters
  (or by the tokenizer of ``init_from``), split into the first ``1 - val_fraction`` of its tokens for training and
  the rest for validation;
* token shards: ``shards:DIR`` or a directory with ``meta.json`` written by ``./launch.sh prepare``
  (:mod:`tfjax.data.shards`). Its ``train`` / ``val`` splits are read through ``np.memmap``: a batch reads only its
  own windows, nothing loads a shard, and memory does not grow with the corpus. The tokenizer is the shards' own.

The training batch at step ``s`` is ``batch_size`` windows of ``seq_len + 1`` tokens at offsets drawn by
``numpy.random.default_rng([seed, s])`` uniformly in ``[0, N - seq_len - 1)`` (``N``: tokens in the split; a window
may span documents, their end-of-text separators included, and shard files): a pure function of (seed, step), so a
resumed run sees exactly the same batches. With several processes each one draws the same global offsets and reads
only its contiguous block of ``batch_size // num_processes`` rows. Inputs are the first ``seq_len`` tokens of each
window, targets the last ``seq_len`` (shifted by one). Both data kinds give the same batches for the same tokens.

``config.init_from`` (a Hugging Face GPT-2 directory or a tfjax LM workdir) starts from that model: its architecture
replaces ``config.model``'s architecture keys (so the workdir's ``config.json`` describes the model trained), its
parameters are what :meth:`LMTask.init_params` returns, and its tokenizer is the task's; the data must use the same
tokenizer (a text is tokenised with it; shards must have been prepared with it).

The tokenizer is saved as ``WORKDIR/tokenizer.json`` (a character tokenizer, or a Hugging Face ``tokenizers`` file;
:func:`tfjax.data.tokenizers.load_tokenizer` reads either).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfjax import config as config_lib
from tfjax.data import files, shards
from tfjax.data.tokenizers import CharTokenizer, load_tokenizer
from tfjax.generate import generate_text
from tfjax.models.gpt import GPT, flops_per_token, num_params

DATASETS = {"tinyshakespeare": files.TINY_SHAKESPEARE}

# config.model keys that stay the experiment's with init_from (how to compute, not what): every other field of the
# TransformerConfig (the architecture: layers, widths, positions, norms, activation, ...) is taken from init_from
RUNTIME_KEYS = ("dropout_rate", "attention_dropout_rate", "attention_impl", "attention_block_size", "dtype",
                "param_dtype", "logits_dtype", "loss_chunk_size", "precision", "remat", "scan_layers")


class InitFromError(ValueError):
  """``config.init_from`` cannot be used (not a GPT, or its tokenizer differs from the data's); says why."""


def load_text(dataset: str, data_dir: str | None) -> str:
  """The text of a known dataset name, a synthetic one (:data:`tfjax.data.synthetic.SYNTHETIC`: ``repeats``), or
  of a file path."""
  from tfjax.data.synthetic import SYNTHETIC
  if dataset in SYNTHETIC:
    return SYNTHETIC[dataset]()
  spec = DATASETS.get(dataset, dataset)
  path = files.find_data_file(spec, data_dir or None)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if not text:
    raise config_lib.ConfigError(f"data file {path} is empty")
  return text


@dataclasses.dataclass
class Imported:
  """A model to start from: its config, float32 host parameters (one tree a layer, ``block_{l}``, whether or not it
  was trained with ``scan_layers``: :func:`tfjax.layers.blocks.unscan_params`) and tokenizer."""
  source: str
  model_cfg: Any
  params: Any
  tokenizer: Any
  tokenizer_file: pathlib.Path | None


def load_init_from(path: str) -> Imported:
  """The GPT of a Hugging Face GPT-2 directory or of a tfjax LM workdir (latest checkpoint)."""
  from tfjax import hf
  p = pathlib.Path(path).expanduser()
  if hf.is_hf_dir(p):
    model, params = hf.load(p)
    if not isinstance(model, GPT):
      raise InitFromError(f"init_from={path}: holds a {type(model).__name__}; the LM task fine-tunes GPT-2 models")
    tok_file = p / "tokenizer.json" if (p / "tokenizer.json").is_file() else None
    return Imported(str(p), model.cfg, jax.device_get(params), hf.load_tokenizer(p), tok_file)
  if (p / "config.json").is_file() and (p / "tokenizer.json").is_file():
    from tfjax.layers.blocks import unscan_params
    from tfjax.train.restore import load_config
    cfg = load_config(str(p))
    if cfg.get("task") != "lm":
      raise InitFromError(f"init_from={path}: a '{cfg.get('task')}' workdir; the LM task starts from LM runs")
    model, params, tokenizer, _ = load_for_inference(str(p))
    return Imported(str(p), model.cfg, jax.device_get(unscan_params(params)), tokenizer, p / "tokenizer.json")
  raise InitFromError(f"init_from={path}: neither a Hugging Face GPT-2 directory (config.json + model.safetensors) "
                      "nor a tfjax workdir (config.json + tokenizer.json + checkpoints)")


def load_for_inference(path: str, step: int | None = None, best: bool = False) -> tuple[GPT, Any, Any, int | None]:
  """``(model, params, tokenizer, step)`` of a tfjax GPT workdir or a Hugging Face GPT-2 directory (``step`` None).

  A workdir is read as it was trained: its ``config.json``, ``tokenizer.json`` (characters or subwords) and the
  checkpoint at ``step`` (default: the latest; ``best``: the lowest evaluation loss, runs with ``train.keep_best``),
  through :mod:`tfjax.train.restore`; the model's vocabulary is the trained embedding's rows. Raises
  FileNotFoundError for a missing directory or file, ValueError for another kind of model or run, and
  :class:`tfjax.train.checkpoint.CheckpointError` for a checkpoint that cannot be read.
  """
  import flax.linen as nn
  from tfjax import hf
  from tfjax.train.restore import load_config, load_params
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} does not exist: give a tfjax GPT workdir or a Hugging Face GPT-2 directory")
  if hf.is_hf_dir(path):
    model, params = hf.load(path)
    if not isinstance(model, GPT):
      raise ValueError(f"{path} holds a {type(model).__name__}, not a GPT (decoder) language model")
    return model, params, hf.load_tokenizer(path), None
  config = load_config(path)  # CheckpointError when there is no config.json
  if config.task != "lm":
    raise ValueError(f"{path} holds a '{config.task}' run, not a language-model (task=lm) run")
  tok_path = os.path.join(path, "tokenizer.json")
  if not os.path.isfile(tok_path):
    raise FileNotFoundError(f"{path} has no tokenizer.json (written when the run starts): not a complete GPT workdir")
  tokenizer = load_tokenizer(tok_path)
  params, step = load_params(path, step, best=best)
  params = nn.unbox(params)
  vocab = params["embed"]["embedding"].shape[0]  # the trained table (may be padded past the tokenizer's size)
  return GPT(config_lib.transformer_config(config.model, vocab)), params, tokenizer, step


def same_tokenizer(a, b) -> bool:
  """Whether two tokenizers map text to the same ids (same kind and the same vocabulary)."""
  if isinstance(a, CharTokenizer) or isinstance(b, CharTokenizer):
    return (isinstance(a, CharTokenizer) and isinstance(b, CharTokenizer) and a.chars == b.chars
            and a.eot == b.eot)
  return a.tokenizer.get_vocab(with_added_tokens=True) == b.tokenizer.get_vocab(with_added_tokens=True)


class LMTask:
  """A GPT trained on next-token prediction. Implements :class:`tfjax.tasks.base.Task`."""

  def __init__(self, config: Any, workdir: str | None = None):
    self.config = config
    init_from = config.get("init_from", "") or ""
    self.imported = load_init_from(init_from) if init_from else None
    shards_path = shards.shards_dir(config.data.dataset)
    tok_path = os.path.join(workdir, "tokenizer.json") if workdir else None
    if shards_path is not None:
      self._init_shards(shards_path, tok_path)
    else:
      self._init_text(tok_path)
    if self.imported is not None:
      self.model_cfg = self._imported_model_config()
    else:
      self.model_cfg = config_lib.transformer_config(config.model, self.tokenizer.vocab_size)
    self.seq_len = config.data.get("seq_len") or self.model_cfg.max_len
    if self.data_vocab_size > self.model_cfg.vocab_size:
      raise config_lib.ConfigError(f"the data has {self.data_vocab_size} token ids but the model's vocabulary has "
                                   f"{self.model_cfg.vocab_size}")
    if self.seq_len > self.model_cfg.max_len:
      raise config_lib.ConfigError(f"data.seq_len={self.seq_len} is longer than the context window "
                                   f"model.max_len={self.model_cfg.max_len}")
    for name, split in (("training", self.train_data), ("validation", self.val_data)):
      if len(split) <= self.seq_len + 1:
        where = f" of {shards_path}" if shards_path is not None else ""
        raise config_lib.ConfigError(
            f"the {name} split{where} has {len(split)} tokens, fewer than one window of seq_len + 2 = "
            f"{self.seq_len + 2}: use a larger corpus (or validation fraction) or a shorter data.seq_len")
    self.model = GPT(self.model_cfg)
    self.batch_size = config.train.batch_size
    self.seed = config.seed

  # -- data ----------------------------------------------------------------------------------------------------------
  def _init_text(self, tok_path):
    text = load_text(self.config.data.dataset, self.config.data_dir)
    if self.imported is not None:
      self.tokenizer = self.imported.tokenizer
      self._save_tokenizer(tok_path, self.imported.tokenizer_file)
      data = np.asarray(self.tokenizer.encode(text), np.int32)
    else:
      if tok_path and os.path.exists(tok_path):  # a resumed run keeps its vocabulary
        self.tokenizer = CharTokenizer.load(tok_path)
      else:
        self.tokenizer = CharTokenizer.from_text(text)
        self._save_tokenizer(tok_path, None)
      data = self.tokenizer.encode(text)
    self.data_vocab_size = self.tokenizer.vocab_size
    n_train = int(len(data) * (1.0 - self.config.data.val_fraction))
    self.train_data, self.val_data = data[:n_train], data[n_train:]

  def _init_shards(self, path: pathlib.Path, tok_path):
    self.train_data = shards.TokenShards(path, "train")
    self.val_data = shards.TokenShards(path, "val")
    meta = self.train_data.meta
    tok_file = path / meta["tokenizer"]["file"]
    self.tokenizer = load_tokenizer(tok_file, eos_id=int(meta["eot_id"]))
    self.data_vocab_size = int(meta["vocab_size"])
    if self.imported is not None and not same_tokenizer(self.tokenizer, self.imported.tokenizer):
      raise InitFromError(
          f"the shards {path} were tokenised with {meta['tokenizer']['spec']!r} (vocab {self.data_vocab_size}), not "
          f"with the tokenizer of init_from={self.imported.source} (vocab {self.imported.tokenizer.vocab_size}): "
          f"prepare them with --tokenizer={self.imported.source}")
    if tok_path and os.path.exists(tok_path):
      if pathlib.Path(tok_path).read_bytes() != tok_file.read_bytes():
        raise config_lib.ConfigError(f"{tok_path} differs from the tokenizer of the shards {path}: this workdir was "
                                     "trained on other data; use a new workdir")
    else:
      self._save_tokenizer(tok_path, tok_file)

  def _save_tokenizer(self, tok_path, source_file):
    if not tok_path or jax.process_index() != 0:  # one writer in a multi-process run
      return
    os.makedirs(os.path.dirname(tok_path), exist_ok=True)
    if source_file is not None:
      tmp = f"{tok_path}.tmp.{os.getpid()}"
      pathlib.Path(tmp).write_bytes(pathlib.Path(source_file).read_bytes())
      os.replace(tmp, tok_path)
    else:
      self.tokenizer.save(tok_path)

  def _imported_model_config(self):
    """The imported architecture written into ``config.model``, then the TransformerConfig from it (the
    :data:`RUNTIME_KEYS` stay the experiment's; fields that ``config.model`` lacks come from the imported config)."""
    src = self.imported.model_cfg
    model = self.config.model
    for f in dataclasses.fields(src):
      if f.name in model and f.name not in RUNTIME_KEYS:
        model[f.name] = getattr(src, f.name)
    cfg = config_lib.transformer_config(model, src.vocab_size)
    rest = {f.name: getattr(src, f.name) for f in dataclasses.fields(src) if f.name not in model}
    return dataclasses.replace(cfg, **rest)

  # -- Task protocol -------------------------------------------------------------------------------------------------
  def init_params(self, rng):
    boxed = self.model.init(rng, jnp.zeros((1, self.seq_len), jnp.int32))["params"]
    if self.imported is None:
      return boxed
    import flax.linen as nn
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    abstract = nn.unbox(jax.eval_shape(lambda: boxed))
    shapes = lambda tree: {jax.tree_util.keystr(k): tuple(np.shape(x))  # noqa: E731
                           for k, x in jax.tree_util.tree_leaves_with_path(tree)}
    imported = self.imported.params  # one tree a layer; this run's scan_layers decides the layout
    if self.model_cfg.scan_layers:
      from tfjax.layers.blocks import scan_params
      imported = scan_params(imported)
    want, got = shapes(abstract), shapes(imported)
    if want != got:
      bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
      raise InitFromError(f"init_from={self.imported.source}: its parameters do not fit the model built from its "
                          f"config: {bad[0]} is {got.get(bad[0])} there, {want.get(bad[0])} in the model")
    host = jax.tree.map(lambda a, x: np.asarray(x, a.dtype), abstract, imported)
    # a host callback, not constants: jit would embed every weight in the program (slow for 100M+ parameters)
    values = jax.pure_callback(lambda: host, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract))
    return jax.tree.map(lambda b, v: b.replace_boxed(v) if is_box(b) else v, boxed, values, is_leaf=is_box)

  def loss_fn(self, params, batch, rng, train):
    # float32 sums: under data parallelism XLA can then merge every cross-device reduction of the step into one.
    loss, correct = self.model.apply({"params": params}, batch["inputs"], batch["targets"], deterministic=not train,
                                     rngs={"dropout": rng} if train and rng is not None else None,
                                     method=GPT.cross_entropy)
    return loss, jnp.asarray(batch["targets"].size, jnp.float32), {"accuracy": correct}

  def _windows(self, data, offsets: np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(data, shards.TokenShards):
      tokens = data.windows(offsets, self.seq_len + 1)
      if tokens.size and tokens.max() >= self.model_cfg.vocab_size:
        raise shards.ShardError(f"{data.path}: token id {tokens.max()} >= vocab {self.model_cfg.vocab_size} in split "
                                f"{data.split!r}: a shard is corrupt (./launch.sh prepare --verify={data.path})")
    else:
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
    """``train.eval_steps`` batches of ``batch_size`` validation windows, each yielded as the ``grad_accum_steps``
    micro-batches the training step runs (when they split evenly over the processes), so an evaluation needs no
    more memory than a training micro-step (GPT-2 124M's 512-row batch as one: 107 GB of logits)."""
    accum = self.config.train.get("grad_accum_steps", 1) or 1
    micro = self.batch_size // accum
    parts = accum if accum > 1 and self.batch_size % accum == 0 and micro % num_shards == 0 else 1
    for i in range(self.config.train.eval_steps):
      offsets = self._offsets(self.val_data, [self.seed, 2**31 - 1, i], 0, 1)  # the global batch
      for j in range(parts):  # the same windows as one batch of batch_size rows, in micro-batches
        rows = offsets[j * (self.batch_size // parts):(j + 1) * (self.batch_size // parts)]
        per = len(rows) // num_shards
        if len(rows) % num_shards:
          raise ValueError(f"batch_size={self.batch_size} does not divide into {num_shards} processes")
        yield self._windows(self.val_data, rows[shard * per:(shard + 1) * per])

  def flops_per_token(self, params) -> float:
    return flops_per_token(self.model_cfg, num_params(params), self.seq_len)

  def final_report(self, params) -> dict[str, Any]:
    s = self.config.sample
    if s.num_tokens <= 0:
      return {}
    [text] = generate_text(self.model, params, self.tokenizer, s.prompt, s.num_tokens, jax.random.key(self.seed),
                           temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p if s.top_p < 1.0 else None)
    return {"sample": text}

"""The library's config defaults, the translation of experiment configs (ml_collections ConfigDicts) into its typed
configs, and their validation.

One source of truth for the model: :func:`model_config` is built from the :class:`TransformerConfig` dataclass (its
fields, its defaults), so ``GPT(gpt_config(vocab_size=V))`` in Python is the model that ``./launch.sh train`` builds
from ``experiments/configs/lm_defaults.py`` unless an experiment overrides a key. A field whose default is None is a
typed placeholder (``ml_collections.config_dict.placeholder(int)``): None until set, and ``--config.model.mlp_dim=512``
still parses as an int. :func:`optimizer_config` and :func:`train_config` hold the optimizer and loop defaults every
experiment starts from.

The library never reads flags: experiments pass a resolved ConfigDict, and these helpers check it and name the key
at fault when a value is invalid.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from typing import Any

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from tfjax.models.config import TransformerConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
PARALLEL_MODES = ("auto", "none", "pmap", "dp", "fsdp")


class ConfigError(ValueError):
  """An invalid config value; the message names the key."""


def parse_value(text: str) -> Any:
  """A command-line value: ``"4" -> 4``, ``"3e-4" -> 0.0003``, ``"True" -> True``, anything else stays a string."""
  text = text.strip()
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: Any, overrides: list[str]) -> Any:
  """Applies ``"KEY=VALUE"`` strings (``"model.num_layers=2"``) to ``config`` in place and returns it. Values are
  parsed as Python literals where they are one (``"2"`` -> 2, ``"True"`` -> True), else kept as strings; the
  ConfigDict checks their types. An unknown key raises :class:`ConfigError` naming it."""
  for item in overrides:
    key, sep, text = item.partition("=")
    parent, _, leaf = key.strip().rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
      node = node.get(part) if hasattr(node, "get") else None
    if not sep or node is None or not hasattr(node, "get") or leaf not in node:
      raise ConfigError(f"override {item!r}: want KEY=VALUE with a known config key")
    try:
      node[leaf] = parse_value(text)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"override {item!r}: {e}") from e
  return config


# model config keys that name a dtype ("float32", "bfloat16", ...)
DTYPE_KEYS = ("dtype", "param_dtype", "logits_dtype")


def get_dtype(name: str, key: str = "dtype"):
  if name not in DTYPES:
    raise ConfigError(f"config key '{key}' must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def _dtype_name(dtype: Any) -> str:
  for name, value in DTYPES.items():
    if jnp.dtype(value) == jnp.dtype(dtype):
      return name
  raise ConfigError(f"dtype {dtype!r} has no config name; known: {sorted(DTYPES)}")


def _placeholder_type(hint: Any) -> type:
  """``int | None`` -> ``int`` (the type a None-default field takes when set)."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if len(args) != 1 or not isinstance(args[0], type):
    raise TypeError(f"cannot make a config placeholder for the annotation {hint!r}")
  return args[0]


def dataclass_config(cls: type, exclude: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """A ConfigDict with a key per field of the dataclass ``cls`` and its default: dtypes by name (``"float32"``),
  None defaults as typed placeholders (so a command-line override is parsed as the field's type)."""
  hints = typing.get_type_hints(cls)
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(cls):
    if f.name in exclude or f.default is dataclasses.MISSING:
      continue
    value = f.default
    if f.name in DTYPE_KEYS:
      value = _dtype_name(value)
    elif value is None:
      value = config_dict.placeholder(_placeholder_type(hints[f.name]))
    c[f.name] = value
  return c


def model_config() -> ml_collections.ConfigDict:
  """``config.model`` defaults: every :class:`TransformerConfig` field but ``vocab_size`` (the tokenizer's), with the
  dataclass's defaults. :func:`transformer_config` turns it back into the same dataclass."""
  return dataclass_config(TransformerConfig, exclude=("vocab_size",))


def optimizer_config() -> ml_collections.ConfigDict:
  """``config.optimizer`` defaults (read by :func:`tfjax.train.optimizer.make_optimizer`): AdamW at nanoGPT's
  shakespeare_char settings."""
  o = ml_collections.ConfigDict()
  o.name = "adamw"  # adamw | adam | sgd | lion | adafactor
  o.lr = 1e-3
  o.min_lr = 1e-4
  o.schedule = "cosine"  # cosine | linear | constant | inverse_sqrt (peak lr·sqrt(warmup/step))
  o.warmup_steps = 100
  o.decay_steps = config_dict.placeholder(int)  # None: train.num_steps
  o.b1 = 0.9
  o.b2 = 0.99
  o.eps = 1e-8
  o.weight_decay = 0.1
  o.grad_clip = 1.0  # global-norm clipping; 0: none
  return o


def train_config() -> ml_collections.ConfigDict:
  """``config.train`` defaults: every key :func:`tfjax.train.loop.train_and_evaluate` reads."""
  t = ml_collections.ConfigDict()
  t.batch_size = 64
  t.num_steps = 5000
  t.grad_accum_steps = 1
  t.log_every = 10
  t.eval_every = 250  # 0: only at the end
  t.eval_steps = 20  # batches per evaluation
  t.checkpoint_every = 250  # 0: only at the end
  t.max_to_keep = 3
  # early stopping (fairseq's --patience): stop once this many evaluations in a row have not lowered patience_metric
  # below its lowest so far (a tie is no improvement); 0: never. A relaunch of a stopped run does not train further.
  t.patience = 0
  t.patience_metric = "eval_loss"  # any key of the evaluations, e.g. the translator's eval_smoothed_loss
  # also keep the parameters of the lowest evaluation loss in WORKDIR/best (./launch.sh sample WORKDIR --best)
  t.keep_best = False
  t.parallel = "auto"  # auto | none | pmap | dp | fsdp
  t.skip_nonfinite = False
  t.restore_fallback = False  # restore an earlier checkpoint if the latest is unreadable
  t.async_checkpoint = True
  t.log_mfu = True
  t.tensorboard = True  # TensorBoard event files next to metrics.jsonl
  t.profile_steps = ""  # "A:B": trace steps A..B-1 with jax.profiler into WORKDIR/profile
  return t


# Values read as None: "default" (JAX's default matmul precision, so that jax.default_matmul_precision applies), and the
# 0s that config.json files written before the defaults came from the dataclass hold for "unset".
_LEGACY_UNSET = {"num_kv_heads": 0, "mlp_dim": 0, "head_dim": 0, "precision": "default"}


def transformer_config(model: Any, vocab_size: int, **overrides) -> TransformerConfig:
  """A :class:`TransformerConfig` from ``config.model`` (keys that are not fields, such as BERT's
  ``type_vocab_size``, are skipped; a field the ConfigDict lacks keeps the dataclass default)."""
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  kwargs = {}
  for key, value in dict(model).items():
    if key not in fields:
      continue
    if key in _LEGACY_UNSET and value == _LEGACY_UNSET[key]:
      value = None
    if key in DTYPE_KEYS:
      value = get_dtype(value, f"model.{key}")
    kwargs[key] = value
  kwargs.update(overrides)
  try:
    return TransformerConfig(vocab_size=vocab_size, **kwargs)
  except ValueError as e:
    raise ConfigError(f"invalid model config: {e}") from None


def check_no_fused_loss(cfg: TransformerConfig, model: str) -> None:
  """``model.loss_chunk_size`` is the GPT's (its loss is the unembedding's cross-entropy at every position); other
  models score their logits as they are, so a nonzero value there is an error rather than silently ignored."""
  if cfg.loss_chunk_size:
    raise ConfigError(f"config key 'model.loss_chunk_size' (the fused unembedding and loss) is for GPT language "
                      f"models; {model} computes its loss from its logits: leave it 0, got {cfg.loss_chunk_size}")


def validate_train_config(config: Any) -> None:
  """Checks the keys the training loop reads; raises :class:`ConfigError` naming the first bad one."""
  t, o = config.train, config.optimizer

  def check(ok: bool, key: str, why: str, value: Any):
    if not ok:
      raise ConfigError(f"config key '{key}' {why}, got {value!r}")

  check(t.batch_size > 0, "train.batch_size", "must be positive", t.batch_size)
  check(t.num_steps >= 0, "train.num_steps", "must be >= 0", t.num_steps)
  check(t.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1", t.grad_accum_steps)
  check(t.batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps", f"must divide train.batch_size="
        f"{t.batch_size}", t.grad_accum_steps)
  check(t.log_every > 0, "train.log_every", "must be positive", t.log_every)
  check(t.eval_every >= 0, "train.eval_every", "must be >= 0 (0: only at the end)", t.eval_every)
  check(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0: only at the end)", t.checkpoint_every)
  check(t.max_to_keep >= 1, "train.max_to_keep", "must be >= 1", t.max_to_keep)
  check(t.get("patience", 0) >= 0, "train.patience", "must be >= 0 (0: no early stopping)", t.get("patience"))
  check(not t.get("patience", 0) or t.eval_every > 0, "train.patience", "needs train.eval_every > 0 (it counts "
        "evaluations)", t.get("patience"))
  check(t.parallel in PARALLEL_MODES, "train.parallel", f"must be one of {PARALLEL_MODES}", t.parallel)
  check(o.name in ("adamw", "adam", "sgd", "lion", "adafactor"), "optimizer.name",
        "must be one of adamw, adam, sgd, lion, adafactor", o.name)
  check(o.lr > 0, "optimizer.lr", "must be positive", o.lr)
  check(0 <= o.min_lr <= o.lr, "optimizer.min_lr", "must be in [0, optimizer.lr]", o.min_lr)
  check(o.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0", o.warmup_steps)
  check(o.schedule in ("cosine", "linear", "constant", "inverse_sqrt"), "optimizer.schedule",
        "must be cosine, linear, constant or inverse_sqrt", o.schedule)
  check(o.grad_clip >= 0, "optimizer.grad_clip", "must be >= 0 (0: no clipping)", o.grad_clip)
  check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", o.weight_decay)

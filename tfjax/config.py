"""Turning experiment configs (ml_collections ConfigDicts) into the library's typed configs, and validating them.

The library never reads flags: experiments pass a resolved ConfigDict, and these helpers check it and name the key
at fault when a value is invalid.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import jax.numpy as jnp

from tfjax.layers.blocks import TransformerConfig

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


def get_dtype(name: str, key: str = "dtype"):
  if name not in DTYPES:
    raise ConfigError(f"config key '{key}' must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def transformer_config(model: Any, vocab_size: int, **overrides) -> TransformerConfig:
  """A :class:`TransformerConfig` from ``config.model`` (0 stands for "unset" in ``num_kv_heads``, ``mlp_dim``,
  ``head_dim``)."""
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  kwargs = {}
  for key, value in dict(model).items():
    if key not in fields:
      continue
    if key in ("num_kv_heads", "mlp_dim", "head_dim") and not value:
      value = None
    if key in ("dtype", "param_dtype"):
      value = get_dtype(value, f"model.{key}")
    if key == "precision" and value == "default":
      value = None  # JAX's default, so that jax.default_matmul_precision still applies
    kwargs[key] = value
  kwargs.update(overrides)
  try:
    return TransformerConfig(vocab_size=vocab_size, **kwargs)
  except ValueError as e:
    raise ConfigError(f"invalid model config: {e}") from None


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

"""What every Hugging Face import/export in :mod:`tfjax.hf` shares: the directory's files (``config.json``,
``model.safetensors`` or its shards, read and written with ``safetensors.numpy``: no torch), the error type, the
parameter-mapping rules (a tfjax parameter path, the Hugging Face tensor names, and the conversions both ways) and
config-field helpers."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Callable

import jax
import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

# activation names: Hugging Face -> tfjax, and back
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
           "silu": "silu", "swish": "silu"}


class HFCheckpointError(ValueError):
  """A Hugging Face directory that tfjax cannot read or a model it cannot write (the message says why)."""


# --------------------------------------------------------------------------------------------------------------------
# Files


def is_hf_dir(path: str | os.PathLike) -> bool:
  """True when ``path`` is a directory with ``config.json`` and safetensors weights (a Hugging Face model dir)."""
  p = pathlib.Path(path)
  return p.is_dir() and (p / CONFIG_FILE).is_file() and (
      (p / WEIGHTS_FILE).is_file() or (p / WEIGHTS_INDEX_FILE).is_file())


def read_config(path: str | os.PathLike) -> dict:
  p = pathlib.Path(path)
  if not p.is_dir():
    raise HFCheckpointError(f"{p} is not a directory (expected a Hugging Face model dir with {CONFIG_FILE} and "
                            f"{WEIGHTS_FILE})")
  if not (p / CONFIG_FILE).is_file():
    raise HFCheckpointError(f"{p} has no {CONFIG_FILE}: not a Hugging Face model directory")
  try:
    return json.loads((p / CONFIG_FILE).read_text())
  except json.JSONDecodeError as e:
    raise HFCheckpointError(f"{p / CONFIG_FILE} is not valid JSON: {e}") from None


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of the model directory (one file or shards), as numpy arrays."""
  from safetensors.numpy import load_file
  p = pathlib.Path(path)
  if (p / WEIGHTS_FILE).is_file():
    files = [p / WEIGHTS_FILE]
  elif (p / WEIGHTS_INDEX_FILE).is_file():
    weight_map = json.loads((p / WEIGHTS_INDEX_FILE).read_text())["weight_map"]
    files = [p / f for f in sorted(set(weight_map.values()))]
  else:
    others = sorted(x.name for x in p.glob("*.bin")) + sorted(x.name for x in p.glob("*.h5"))
    hint = f" (found {others}: convert them to safetensors, e.g. save_pretrained(safe_serialization=True))" \
        if others else ""
    raise HFCheckpointError(f"{p} has no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}{hint}")
  tensors = {}
  for f in files:
    try:
      tensors.update(load_file(f))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
      raise HFCheckpointError(f"cannot read {f}: {e}") from e
  return tensors


def write_tensors(tensors: dict[str, np.ndarray], path: str | os.PathLike) -> None:
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(path), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------------------------
# Parameter mapping: a list of (tfjax path, HF keys, HF tensors -> tfjax array, tfjax array -> HF tensors)


@dataclasses.dataclass(frozen=True)
class _Rule:
  path: tuple[str, ...]
  keys: tuple[str, ...]
  to_tf: Callable[..., np.ndarray]
  from_tf: Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _same(path, key):
  return _Rule(path, (key,), lambda w: w, lambda a: (a,))


def _transposed(path, key):  # nn.Linear weight [out, in] <-> flax kernel [in, out]
  return _Rule(path, (key,), lambda w: w.T, lambda a: (a.T,))


def _linear(path, key, transpose: bool):
  """A Dense layer: kernel (transposed from a torch Linear, or as-is from GPT-2's Conv1D) and bias."""
  kernel = _transposed if transpose else _same
  return [kernel(path + ("kernel",), key + ".weight"), _same(path + ("bias",), key + ".bias")]


def _layernorm(path, key):
  return [_same(path + ("scale",), key + ".weight"), _same(path + ("bias",), key + ".bias")]



def _get_path(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set_path(tree: dict, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


# --------------------------------------------------------------------------------------------------------------------
# Configs


def _get(config: dict, key: str, default: Any = None, required: bool = False):
  if key not in config or config[key] is None:
    if required:
      raise HFCheckpointError(f"config.json lacks the field '{key}'")
    return default
  return config[key]


def _activation(config: dict, key: str, default: str) -> str:
  name = _get(config, key, default)
  if name not in _HF_ACT:
    raise HFCheckpointError(f"config.json: {key}={name!r} is not supported; supported: {sorted(_HF_ACT)}")
  return _HF_ACT[name]



def tensors_from_rules(params: Any, rules) -> dict[str, np.ndarray]:
  """The Hugging Face tensors (``{key: float32 array}``) that ``rules`` make of a tfjax parameter tree."""
  tensors = {}
  for rule in rules:
    try:
      leaf = np.asarray(jax.device_get(_get_path(params, rule.path)), dtype=np.float32)
    except KeyError:
      raise HFCheckpointError(f"parameter {'/'.join(rule.path)} is missing from params") from None
    for key, x in zip(rule.keys, rule.from_tf(leaf)):
      tensors[key] = np.ascontiguousarray(x)
  return tensors


def check_tensors(path, tensors: dict, expected: dict[str, tuple], hint: str = "") -> None:
  """Every tensor of ``expected`` (``{key: shape}``) is in ``tensors`` with its shape, else an
  :class:`HFCheckpointError` naming the first missing one (``hint`` appended) or the first of a wrong shape."""
  missing = [k for k in expected if k not in tensors]
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise HFCheckpointError(f"{path}: missing tensor '{missing[0]}'{more}{hint}")
  for key, shape in expected.items():
    if tuple(tensors[key].shape) != shape:
      raise HFCheckpointError(f"{path}: tensor '{key}' has shape {tuple(tensors[key].shape)}, expected {shape} "
                              f"for the configuration in {CONFIG_FILE}")


def params_from_rules(tensors: dict, rules) -> dict:
  """The tfjax parameter tree (float32 jax arrays) that ``rules`` make of Hugging Face ``tensors``."""
  params: dict = {}
  for rule in rules:
    arrays = [np.asarray(tensors[k], dtype=np.float32) for k in rule.keys]
    _set_path(params, rule.path, np.asarray(rule.to_tf(*arrays), dtype=np.float32))
  return jax.tree.map(jax.numpy.asarray, params)


def attention_problems(cfg) -> list[str]:
  """What in ``cfg`` Hugging Face's multi-head attention (one key/value head per query head, head_dim = D / H, scores
  scaled by 1/√head_dim) and biased layers cannot represent."""
  problems = []
  if not cfg.use_bias:
    problems.append("use_bias=False")
  if cfg.num_kv_heads not in (None, cfg.num_heads):
    problems.append(f"num_kv_heads={cfg.num_kv_heads} (needs multi-head attention)")
  if cfg.head_dim not in (None, cfg.emb_dim // cfg.num_heads):
    problems.append(f"head_dim={cfg.head_dim} (needs emb_dim // num_heads)")
  if not math.isclose(cfg.score_scale, cfg.head_width ** -0.5, rel_tol=1e-6):
    problems.append(f"attention_scale={cfg.attention_scale} (needs 1/sqrt(head_dim))")
  return problems

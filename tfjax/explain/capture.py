"""Capture: run GPT, BERT or the encoder-decoder and keep the activations asked for, by name and layer.

The activations are recorded by the modules that train (:func:`tfjax.layers.hooks.hook`, Flax ``sow`` into the
``"intermediates"`` collection), in the same forward pass that computes the output: there is no second copy of the
model. Paths name the module and the activation::

    decoder/block_1/attn/pattern          GPT (stack "decoder"), layer 1, self-attention pattern [B, H, T, S]
    encoder/block_0/resid_post            BERT (stack "encoder") or the encoder-decoder's encoder
    decoder/block_2/cross_attn/pattern    the encoder-decoder's decoder, cross-attention [B, H, T, S_source]
    decoder/block_0/mlp/hidden            MLP activations [B, T, F]

(The full list of names and shapes is in :mod:`tfjax.layers.hooks`.) Ask only for what you need: ``names`` filters
what is recorded, so nothing else is kept, and under ``jax.jit`` nothing else is computed (the attention pattern is
formed only when a ``pattern``/``scores`` of that layer is asked for)::

    capture = jax.jit(functools.partial(run_with_cache, model, names=["*/attn/pattern", "*/resid_post"]))
    logits, cache = capture(variables, ids)
    cache["pattern", 0]                 # [B, H, T, T]: layer 0's attention pattern
    cache.stack("resid_post")           # [L, B, T, D]
    cache.names()                       # every recorded path

Interventions (ablation, patching) are in :mod:`tfjax.explain.interventions`, the logit lens in
:mod:`tfjax.explain.lens`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from tfjax.layers import hooks
from tfjax.layers.blocks import scan_params, unscan_params
from tfjax.models.bert import BERT
from tfjax.models.gpt import GPT
from tfjax.models.transformer import EncoderDecoder

# A names filter: None (everything), one glob, globs, or a predicate over paths.
Names = Union[None, str, Sequence[str], Callable[[str], bool]]

_LAYER = re.compile(r"^(?:(?P<stack>.*)/)?block_(?P<layer>\d+)/(?P<name>.+)$")


@dataclasses.dataclass(frozen=True)
class StackLayout:
  """The sizes of one stack of transformer blocks (what interventions index into).

  Attributes:
    name: the stack's path, ``"decoder"`` (GPT, the encoder-decoder's decoder) or ``"encoder"``.
    num_layers, num_heads, num_kv_heads, head_dim, hidden_dim: its blocks' sizes (``hidden_dim``: the MLP's ``F``).
    cross_attention: whether its blocks have ``cross_attn``.
  """
  name: str
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  hidden_dim: int
  cross_attention: bool


def model_stacks(model: nn.Module) -> dict[str, StackLayout]:
  """The stacks of blocks of a GPT (``decoder``), BERT (``encoder``) or EncoderDecoder (``encoder``, ``decoder``)."""
  if not isinstance(model, (GPT, BERT, EncoderDecoder)):
    raise ValueError(f"capture supports GPT, BERT and EncoderDecoder models, got {type(model).__name__}")
  cfg = model.cfg

  def layout(name, num_layers, cross):
    return StackLayout(name, num_layers, cfg.num_heads, cfg.num_kv_heads or cfg.num_heads,
                       cfg.head_width, cfg.hidden_dim, cross)

  if isinstance(model, GPT):
    return {"decoder": layout("decoder", cfg.num_layers, False)}
  if isinstance(model, BERT):
    return {"encoder": layout("encoder", cfg.num_layers, False)}
  return {"encoder": layout("encoder", model.num_encoder_layers or cfg.num_layers, False),
          "decoder": layout("decoder", cfg.num_layers, True)}


def resolve_stack(model: nn.Module, stack: str | None = None) -> StackLayout:
  """The named stack of ``model`` (default: GPT's and the encoder-decoder's ``decoder``, BERT's ``encoder``)."""
  stacks = model_stacks(model)
  if stack is None:
    stack = "encoder" if isinstance(model, BERT) else "decoder"
  if stack not in stacks:
    raise ValueError(f"{type(model).__name__} has no stack {stack!r}; choose one of {sorted(stacks)}")
  return stacks[stack]


def split_path(path: str) -> tuple[str | None, int | None, str]:
  """``"decoder/block_1/attn/pattern" -> ("decoder", 1, "attn/pattern")``; ``(None, None, path)`` outside blocks."""
  m = _LAYER.match(path)
  if m is None:
    return None, None, path
  return m.group("stack"), int(m.group("layer")), m.group("name")


def name_filter(names: Names) -> Callable[[str], bool] | None:
  """A predicate over paths from ``names``: None (all), a glob or globs, or a predicate (returned as is).

  A glob matches a whole path or its end at a ``/``: ``"pattern"``, ``"attn/pattern"``, ``"block_0/attn/*"`` and
  ``"decoder/block_*/resid_post"`` all work (``*`` also matches ``/``).
  """
  if names is None or callable(names):
    return names
  globs = _globs(names)
  return lambda path: any(_glob_matches(g, path) for g in globs)


def _globs(names) -> list[str]:
  globs = [names] if isinstance(names, str) else list(names)
  for g in globs:
    if not isinstance(g, str) or not g:
      raise ValueError(f"names must be non-empty glob strings (or one predicate), got {g!r}")
  return globs


def _glob_matches(glob: str, path: str) -> bool:
  return fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(path, "*/" + glob)


def describe_names(paths: Iterable[str]) -> str:
  """A compact, sorted listing of activation paths: ``decoder/block_{0..3}/attn/pattern`` per template."""
  groups: dict[str, list[int]] = {}
  for path in paths:
    stack, layer, name = split_path(path)
    if layer is None:
      groups.setdefault(path, [])
    else:
      groups.setdefault(f"{stack + '/' if stack else ''}block_{{}}/{name}", []).append(layer)
  lines = []
  for template, layers in sorted(groups.items()):
    if not layers:
      lines.append(template)
      continue
    layers = sorted(set(layers))
    span = str(layers[0]) if len(layers) == 1 else (
        f"{layers[0]}..{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else
        ",".join(map(str, layers)))
    lines.append(template.replace("{}", "{" + span + "}"))
  return ", ".join(lines)


@jax.tree_util.register_pytree_node_class
class ActivationCache:
  """Recorded activations by path (``"decoder/block_1/cross_attn/pattern" -> [B, H, T, S]``); a JAX pytree, so it
  can be returned from ``jax.jit``.

  Access: ``cache[path]``; ``cache[name, layer]`` or ``cache[name, layer, stack]`` (``name`` is the end of the path
  after ``block_{layer}/``, e.g. ``"pattern"``, ``"cross_attn/pattern"``, ``"resid_post"``); :meth:`stack` stacks a
  name over layers; :meth:`names` lists the paths. A module called several times in one run (none of tfjax's models
  does) records ``path``, ``path:1``, ``path:2``, ...
  """

  def __init__(self, activations: dict[str, jax.Array]):
    self._data = dict(sorted(activations.items()))

  # -- pytree ----------------------------------------------------------------------------------------------------------
  def tree_flatten(self):
    return tuple(self._data.values()), tuple(self._data)

  @classmethod
  def tree_unflatten(cls, keys, values):
    return cls(dict(zip(keys, values)))

  @classmethod
  def from_intermediates(cls, intermediates: dict) -> ActivationCache:
    """From Flax's ``"intermediates"`` collection (nested dicts of sown tuples). A scanned stack's activations
    (``.../layers/block/...``, leading axis = layer) are split into ``.../block_{i}/...``."""
    data = {}
    flat = traverse_util.flatten_dict(intermediates, is_leaf=lambda _, v: isinstance(v, tuple))
    for keys, values in flat.items():
      path = "/".join(keys)
      values = values if isinstance(values, tuple) else (values,)
      for call, value in enumerate(values):
        name = path if call == 0 else f"{path}:{call}"
        if hooks.is_scanned(name):
          prefix, rest = re.split(r"(?:^|/)layers/block/", name, maxsplit=1)
          for layer in range(value.shape[0]):
            data[f"{prefix + '/' if prefix else ''}block_{layer}/{rest}"] = value[layer]
        else:
          data[name] = value
    return cls(data)

  # -- mapping ---------------------------------------------------------------------------------------------------------
  def names(self) -> list[str]:
    """Every recorded path, sorted."""
    return list(self._data)

  def keys(self):
    return self._data.keys()

  def values(self):
    return self._data.values()

  def items(self):
    return self._data.items()

  def __iter__(self) -> Iterator[str]:
    return iter(self._data)

  def __len__(self) -> int:
    return len(self._data)

  def __contains__(self, key) -> bool:
    try:
      self.resolve(key)
    except ValueError:
      return False
    return True

  def __getitem__(self, key) -> jax.Array:
    return self._data[self.resolve(key)]

  def get(self, key, default=None):
    return self[key] if key in self else default

  def __repr__(self) -> str:
    shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._data.items())
    return f"ActivationCache({shapes})"

  def resolve(self, key) -> str:
    """The full path of ``key``: a path, or ``(name, layer)`` / ``(name, layer, stack)``; ValueError if none or
    several match."""
    if isinstance(key, str):
      if key in self._data:
        return key
      raise ValueError(f"no activation {key!r} in this cache; it holds: {describe_names(self._data) or 'nothing'}")
    if not isinstance(key, tuple) or not 2 <= len(key) <= 3:
      raise ValueError(f"index an ActivationCache by path, (name, layer) or (name, layer, stack); got {key!r}")
    name, layer, stack = (*key, None) if len(key) == 2 else key
    parts = name.split("/")
    hits = [p for p in self._data
            if (s := split_path(p))[1] == layer and (stack is None or s[0] == stack)
            and s[2].split("/")[-len(parts):] == parts]
    if len(hits) == 1:
      return hits[0]
    layers = self.num_layers(stack) if stack is None or stack in self.stacks() else 0
    if not hits:
      where = f"layer {layer}" + (f" of stack {stack!r}" if stack else "")
      raise ValueError(f"no activation {name!r} at {where} in this cache (layers 0..{layers - 1}); it holds: "
                       f"{describe_names(self._data) or 'nothing'}")
    raise ValueError(f"{name!r} at layer {layer} is ambiguous: {hits}; give the stack (cache[name, layer, stack]) "
                     "or a longer name (e.g. 'cross_attn/pattern')")

  # -- layers ----------------------------------------------------------------------------------------------------------
  def stacks(self) -> list[str]:
    """The stacks (path prefixes before ``block_{i}``) that have recorded activations."""
    return sorted({s for p in self._data if (s := split_path(p)[0]) is not None and split_path(p)[1] is not None})

  def num_layers(self, stack: str | None = None) -> int:
    """1 + the largest layer index recorded (in ``stack``, or in any stack)."""
    layers = [s[1] for p in self._data if (s := split_path(p))[1] is not None and (stack is None or s[0] == stack)]
    return max(layers) + 1 if layers else 0

  def stack(self, name: str, stack: str | None = None) -> jax.Array:
    """``name`` (e.g. ``"resid_post"``, ``"attn/pattern"``) of every layer, stacked: ``[L, ...]``. ``stack`` picks
    ``"encoder"`` or ``"decoder"`` where both were recorded."""
    if stack is None:
      stacks = self.stacks()
      if len(stacks) > 1:
        parts = name.split("/")
        stacks = [s for s in stacks if any(
            split_path(p)[0] == s and split_path(p)[2].split("/")[-len(parts):] == parts for p in self._data)]
      if len(stacks) > 1:
        raise ValueError(f"{name!r} is recorded in the stacks {stacks}: pass stack=")
      stack = stacks[0] if stacks else None
    n = self.num_layers(stack)
    if n == 0:
      raise ValueError(f"no layers recorded{f' in stack {stack!r}' if stack else ''}; the cache holds: "
                       f"{describe_names(self._data) or 'nothing'}")
    return jnp.stack([self[name, layer, stack] for layer in range(n)])

  def accumulated_resid(self, stack: str | None = None) -> jax.Array:
    """The residual stream after the embedding and after each layer, ``[L + 1, B, T, D]``: ``block_0/resid_pre``
    then every ``block_{i}/resid_post`` (record ``"block_0/resid_pre"`` and ``"resid_post"``)."""
    first = self["resid_pre", 0] if stack is None else self["resid_pre", 0, stack]
    return jnp.concatenate([first[None], self.stack("resid_post", stack)])

  def filter(self, names: Names) -> ActivationCache:
    """The activations whose path ``names`` accepts (see :func:`name_filter`)."""
    select = name_filter(names)
    return self if select is None else ActivationCache({k: v for k, v in self._data.items() if select(k)})


def check_names(names: Names, session: hooks.CaptureSession, cache: ActivationCache) -> None:
  """ValueError for a glob of ``names`` that matches no activation the run reached."""
  if names is None or callable(names):
    return
  valid = {p for p in session.seen if not hooks.is_scanned(p)} | set(cache.names())
  for glob in _globs(names):
    if not any(_glob_matches(glob, p) for p in valid):
      raise ValueError(f"names: {glob!r} matches no activation of this model; its activations are: "
                       f"{describe_names(valid)}")


def intervention_paths(interventions: dict | None) -> list[str]:
  """The paths of an interventions tree (nested dicts ending in ``{"mask": ..., "value": ...}``)."""
  if not interventions:
    return []
  flat = traverse_util.flatten_dict(
      interventions, is_leaf=lambda _, v: isinstance(v, dict) and set(v) == {"mask", "value"})
  return sorted({"/".join(k) for k in flat})


def check_interventions(interventions: dict | None, session: hooks.CaptureSession) -> None:
  """ValueError for an intervention at a path where the run has no activation (it would be silently ignored)."""
  unused = [p for p in intervention_paths(interventions) if p not in session.intervened]
  if not unused:
    return
  raise ValueError(f"interventions at {unused}: no such activation in this run; its activations are: "
                   f"{describe_names(session.seen)}")


def per_layer(model: nn.Module, variables: Mapping) -> tuple[nn.Module, dict]:
  """``(model, variables)`` of a model with scanned stacks (``scan_layers=True``) as the same model with one module
  per layer (:func:`tfjax.layers.blocks.unscan_params`): the same outputs, and every ``block_{l}`` path exists, so
  interventions can name a layer. Other models are returned as they are."""
  if not getattr(model.cfg, "scan_layers", False):
    return model, dict(variables)
  model = model.clone(cfg=dataclasses.replace(model.cfg, scan_layers=False))
  return model, {k: unscan_params(v) if isinstance(v, Mapping) else v for k, v in variables.items()}


def run_with_cache(model: nn.Module, variables: dict, *args, names: Names = None, method: Any = None,
                   mutable: Sequence[str] = (), **kwargs) -> tuple[Any, ActivationCache]:
  """Runs ``model.apply(variables, *args, method=method, **kwargs)`` and returns ``(output, cache)``.

  Args:
    model: a GPT, BERT or EncoderDecoder (any module whose layers call :func:`tfjax.layers.hooks.hook`).
    variables: ``{"params": ...}``; with an ``"interventions"`` collection, they are applied too (and recorded as
      changed); see :mod:`tfjax.explain.interventions`.
    *args, **kwargs: the model's inputs, as for ``apply`` (e.g. ``ids``; BERT ``input_ids, attention_mask``; the
      encoder-decoder ``src, src_valid, tgt``; ``rngs=``, ``deterministic=``).
    names: what to record (see :func:`name_filter`): None records everything; globs such as ``"*/attn/pattern"``,
      ``"block_0/resid_post"``; or a predicate over paths. A glob matching nothing the model has is a ValueError.
    method: the model method to run (e.g. ``"encode"``); default ``__call__``.
    mutable: further mutable collections (e.g. ``["cache"]`` to decode); the output is then ``(output, state)``.
  Returns:
    ``(output, ActivationCache)``: the model's usual output and the recorded activations. Jit-compatible: wrap it in
    ``jax.jit`` (e.g. ``jax.jit(functools.partial(run_with_cache, model, names=...))``).
  """
  select = name_filter(names)
  scanned = intervention_paths(variables.get(hooks.INTERVENTIONS)) and getattr(model.cfg, "scan_layers", False)
  if scanned:  # interventions name layers: run the per-layer twin (its cache, if decoding, is given back scanned)
    model, variables = per_layer(model, variables)
  with hooks.capture(select) as session:
    out, state = model.apply(variables, *args, method=method, mutable=[hooks.INTERMEDIATES, *mutable], **kwargs)
  state = dict(state)
  cache = ActivationCache.from_intermediates(state.pop(hooks.INTERMEDIATES, {}))
  check_names(names, session, cache)
  check_interventions(variables.get(hooks.INTERVENTIONS), session)
  cache = cache.filter(select)
  if scanned:
    state = {k: scan_params(v) for k, v in state.items()}
  return ((out, state) if mutable else out), cache

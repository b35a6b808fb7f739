"""Interventions: change named activations inside a run (ablate heads or neurons, patch in another run's activations)
and read the changed logits and loss.

An interventions tree mirrors the module paths, each leaf a ``{"mask": bool, "value": array}`` applied where the
activation is computed as ``where(mask, value, x)`` (both broadcast to ``x``); everything downstream sees the change::

    {"decoder": {"block_2": {"attn": {"z": {"mask": bool[1, 1, H, 1], "value": f32[1, 1, H, Dh]}}}}}

The tree is arrays only, passed as the ``"interventions"`` variable collection: a jitted function taking it as an
argument compiles once for every choice of heads (the masks are data, not code)::

    run = jax.jit(functools.partial(run_with_interventions, model))
    ablated = ablate_heads(model, [(1, 0), (1, 3)])                 # layer 1, heads 0 and 3: zero
    logits = run(variables, ablated, ids)

Helpers build the trees: :func:`ablate_heads` (head outputs ``z``, zero or mean), :func:`ablate_neurons` (MLP
``hidden``), :func:`patch` (activation patching from an :class:`~tfjax.explain.capture.ActivationCache`),
:func:`combine_interventions`. Indices out of range, unknown names and intervention paths the model does not have are
ValueErrors that name the valid range. A model with scanned stacks (``scan_layers=True``) runs as its per-layer twin
(:func:`tfjax.explain.capture.per_layer`, the same outputs), so the same trees apply.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from tfjax.explain.capture import (ActivationCache, Names, StackLayout, check_interventions, describe_names,
                                   intervention_paths, name_filter, per_layer, resolve_stack, split_path)
from tfjax.layers import hooks

# which units of a stack: "all", [(layer, index), ...] or {layer: [index, ...] | "all"}
Units = Union[str, Sequence[tuple[int, int]], Mapping[int, Union[str, Sequence[int]]]]


def intervention(mask, value) -> dict[str, jax.Array]:
  """One intervention leaf ``{"mask": bool array, "value": array}`` (applied as ``where(mask, value, x)``)."""
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise ValueError(f"an intervention mask must be boolean, got dtype {mask.dtype}")
  return {"mask": mask, "value": jnp.asarray(value)}


def interventions_from_paths(leaves: Mapping[str, Mapping[str, Any]]) -> dict:
  """The nested interventions tree from ``{path: {"mask": ..., "value": ...}}``."""
  return traverse_util.unflatten_dict({tuple(p.split("/")): dict(v) for p, v in leaves.items()})


def combine_interventions(*trees: dict) -> dict:
  """One interventions tree doing all of ``trees``; where two act on the same path, the later wins where its mask is
  True (masks OR-ed, values taken from the later where its mask holds)."""
  merged: dict[str, dict] = {}
  for tree in trees:
    if not tree:
      continue
    flat = traverse_util.flatten_dict(tree, is_leaf=lambda _, v: isinstance(v, dict) and set(v) == {"mask", "value"})
    for keys, leaf in flat.items():
      path = "/".join(keys)
      if path in merged:
        old = merged[path]
        merged[path] = {"mask": jnp.logical_or(old["mask"], leaf["mask"]),
                        "value": jnp.where(leaf["mask"], leaf["value"], old["value"])}
      else:
        merged[path] = dict(leaf)
  return interventions_from_paths(merged)


def _units(units: Units, num_layers: int, size: int, what: str) -> dict[int, list[int]]:
  """``{layer: [index, ...]}`` from a Units spec, each index checked against ``range(size)``."""
  if isinstance(units, str):
    if units != "all":
      raise ValueError(f"{what}s must be 'all', [(layer, index), ...] or {{layer: [index, ...]}}, got {units!r}")
    return {layer: list(range(size)) for layer in range(num_layers)}
  if isinstance(units, Mapping):
    pairs = [(layer, i) for layer, idx in units.items()
             for i in (range(size) if isinstance(idx, str) and idx == "all" else
                       [idx] if isinstance(idx, (int, np.integer)) else idx)]
    for layer, idx in units.items():
      if isinstance(idx, str) and idx != "all":
        raise ValueError(f"{what}s of layer {layer}: 'all' or a list of indices, got {idx!r}")
  else:
    pairs = []
    for pair in units:
      if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"{what}s must be (layer, {what}) pairs, got {pair!r}")
      pairs.append(tuple(pair))
  out: dict[int, list[int]] = {}
  for layer, i in pairs:
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < num_layers:
      raise ValueError(f"layer {layer!r} is out of range: this stack has layers 0..{num_layers - 1}")
    if not isinstance(i, (int, np.integer)) or not 0 <= i < size:
      raise ValueError(f"{what} {i!r} (layer {layer}) is out of range: valid {what}s are 0..{size - 1}")
    out.setdefault(int(layer), []).append(int(i))
  return out


def _mean_value(reference: ActivationCache, path: str, reference_mask) -> jax.Array:
  """The mean over batch and positions (``reference_mask [B, T]``: only True positions) of ``reference[path]``
  ``[B, T, ...]`` -> ``[1, 1, ...]``."""
  if path not in reference:
    raise ValueError(f"mean ablation needs {path!r} in the reference cache (record it with run_with_cache on a "
                     f"reference batch); the cache holds: {describe_names(reference.names()) or 'nothing'}")
  x = jnp.asarray(reference[path], jnp.float32)
  if reference_mask is None:
    return jnp.mean(x, axis=(0, 1), keepdims=True)
  w = jnp.asarray(reference_mask, jnp.float32)
  if w.shape != x.shape[:2]:
    raise ValueError(f"reference_mask must be [B, T] = {x.shape[:2]}, got {w.shape}")
  w = w.reshape(w.shape + (1,) * (x.ndim - 2))
  return jnp.sum(x * w, axis=(0, 1), keepdims=True) / jnp.maximum(jnp.sum(w), 1.0)


def _ablate(layout: StackLayout, per_layer: dict[int, list[int]], module: str, name: str, size: int,
            trailing: int, mode: str, reference, reference_mask) -> dict:
  if mode not in ("zero", "mean"):
    raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
  if mode == "mean" and reference is None:
    raise ValueError("mode='mean' needs reference=ActivationCache of a reference batch")
  leaves = {}
  for layer, idx in per_layer.items():
    path = f"{layout.name}/block_{layer}/{module}/{name}"
    selected = np.zeros(size, bool)
    selected[idx] = True
    mask = selected.reshape((1, 1, size) + (1,) * trailing)
    value = (jnp.zeros(()) if mode == "zero" else _mean_value(reference, path, reference_mask))
    leaves[path] = intervention(mask, value)
  return interventions_from_paths(leaves)


def ablate_heads(model: nn.Module, heads: Units, *, stack: str | None = None, sublayer: str = "attn",
                 mode: str = "zero", reference: ActivationCache | None = None, reference_mask=None) -> dict:
  """Interventions that ablate attention heads: their outputs ``z [B, T, H, Dh]`` (before the output projection)
  replaced by 0 (``mode="zero"``) or by their mean over a reference batch (``mode="mean"``).

  A zero-ablated head adds nothing to the residual stream through ``out``'s kernel (``out``'s bias stays: ablating
  every head of a layer leaves the sublayer's output equal to that bias).

  Args:
    model: the GPT, BERT or EncoderDecoder (for its sizes).
    heads: ``"all"``, ``[(layer, head), ...]`` or ``{layer: [head, ...] | "all"}``.
    stack: ``"decoder"`` or ``"encoder"`` (default: the model's main stack; the encoder-decoder's ``decoder``).
    sublayer: ``"attn"`` (self-attention) or ``"cross_attn"`` (the encoder-decoder's decoder).
    mode: ``"zero"`` or ``"mean"``.
    reference: for ``"mean"``: an ActivationCache with ``{stack}/block_{l}/{sublayer}/z`` of the reference batch;
      the mean is over batch and positions, ``[1, 1, H, Dh]``.
    reference_mask: optional ``[B, T]`` bool, the reference positions to average (e.g. not padding).
  Returns:
    an interventions tree (see the module docstring).
  """
  layout = resolve_stack(model, stack)
  if sublayer not in ("attn", "cross_attn") or (sublayer == "cross_attn" and not layout.cross_attention):
    valid = ["attn", "cross_attn"] if layout.cross_attention else ["attn"]
    raise ValueError(f"sublayer {sublayer!r} is not in the {layout.name!r} stack's blocks; choose one of {valid}")
  per_layer = _units(heads, layout.num_layers, layout.num_heads, "head")
  return _ablate(layout, per_layer, sublayer, "z", layout.num_heads, 1, mode, reference, reference_mask)


def ablate_neurons(model: nn.Module, neurons: Units, *, stack: str | None = None, mode: str = "zero",
                   reference: ActivationCache | None = None, reference_mask=None) -> dict:
  """Interventions that ablate MLP neurons: their activations ``mlp/hidden [B, T, F]`` replaced by 0 or by their mean
  over a reference batch (``reference`` holding ``{stack}/block_{l}/mlp/hidden``). ``neurons``: ``"all"``,
  ``[(layer, neuron), ...]`` or ``{layer: [neuron, ...] | "all"}``; other arguments as :func:`ablate_heads`."""
  layout = resolve_stack(model, stack)
  per_layer = _units(neurons, layout.num_layers, layout.hidden_dim, "neuron")
  return _ablate(layout, per_layer, "mlp", "hidden", layout.hidden_dim, 0, mode, reference, reference_mask)


def _position_axis(path: str) -> int:
  """The token (query) axis of an activation: 2 for ``scores``/``pattern`` ``[B, H, T, S]``, else 1."""
  return 2 if split_path(path)[2].split("/")[-1] in ("scores", "pattern") else 1


def patch(cache: ActivationCache, names: Names, positions=None) -> dict:
  """Activation patching: interventions that put ``cache``'s activations (recorded on another input) in place of
  this run's, for the paths ``names`` selects (globs or a predicate, as in :func:`run_with_cache`).

  Args:
    cache: the activations of the source run (its batch must broadcast to the patched run's).
    names: which recorded activations to patch, e.g. ``"block_1/resid_post"`` or ``"*/attn/z"``.
    positions: None (every token), a token index or indices (negative from the end), or a boolean ``[T]`` or
      ``[B, T]``: only these tokens (query positions for ``scores``/``pattern``) are patched.
  """
  select = name_filter(names)
  paths = [p for p in cache.names() if select is None or select(p)]
  if not paths:
    raise ValueError(f"patch: {names!r} matches nothing in the cache; it holds: "
                     f"{describe_names(cache.names()) or 'nothing'}")
  leaves = {}
  for path in paths:
    value = cache[path]
    axis = _position_axis(path)
    mask = np.ones((1,) * value.ndim, bool)
    if positions is not None:
      length = value.shape[axis]
      pos = np.asarray(positions)
      if pos.dtype == bool:
        if pos.shape not in ((length,), (value.shape[0], length)):
          raise ValueError(f"positions mask must be [T] = [{length}] or [B, T] = {[value.shape[0], length]}, "
                           f"got {list(pos.shape)}")
        sel = pos if pos.ndim == 2 else pos[None]
      else:
        if not np.issubdtype(pos.dtype, np.integer) or pos.ndim > 1:
          raise ValueError(f"positions must be an int, a list of ints or a boolean mask, got {positions!r}")
        if pos.size and (pos.min() < -length or pos.max() >= length):
          raise ValueError(f"positions {pos.tolist()} out of range for {length} tokens "
                           f"(valid: {-length}..{length - 1})")
        sel = np.zeros((1, length), bool)
        sel[0, pos] = True
      shape = [1] * value.ndim
      shape[0], shape[axis] = sel.shape[0], length
      mask = sel.reshape(shape) if axis == 1 else sel[:, None, :].reshape(shape)
    leaves[path] = intervention(mask, value)
  return interventions_from_paths(leaves)


def run_with_interventions(model: nn.Module, variables: dict, interventions: dict, *args, method: Any = None,
                           **kwargs) -> Any:
  """``model.apply`` with ``interventions`` (a tree from :func:`ablate_heads`, :func:`patch`, ...) applied: the
  model's output (logits ``[B, T, V]``). Jit-compatible (the tree is arrays). An intervention at a path the run does
  not reach is a ValueError. To also record activations, pass ``{**variables, "interventions": tree}`` to
  :func:`~tfjax.explain.capture.run_with_cache`."""
  variables = {k: v for k, v in dict(variables).items() if k != hooks.INTERVENTIONS}
  if not intervention_paths(interventions):
    raise ValueError("run_with_interventions: the interventions tree is empty")
  model, variables = per_layer(model, variables)  # a scanned stack (scan_layers=True): its per-layer twin
  with hooks.capture(lambda _: False) as session:
    out = model.apply({**variables, hooks.INTERVENTIONS: interventions}, *args, method=method, **kwargs)
  check_interventions(interventions, session)
  return out


def token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean cross-entropy (nats) of integer ``targets [...]`` under ``logits [..., V]``; ``weights [...]`` (e.g. not
  padding) weigh each token. For a GPT on ``ids``: ``token_loss(logits[:, :-1], ids[:, 1:])``."""
  if logits.shape[:-1] != targets.shape:
    raise ValueError(f"targets {targets.shape} must have the shape of logits without the vocabulary axis "
                     f"{logits.shape[:-1]}")
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  if weights is None:
    return jnp.mean(ce)
  w = jnp.asarray(weights, jnp.float32)
  return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def logit_difference(logits: jax.Array, correct: jax.Array | int, wrong: jax.Array | int,
                     position: int = -1) -> jax.Array:
  """``logit[correct] - logit[wrong]`` at token ``position`` of ``logits [B, T, V]``, per example ``[B]`` (token ids
  ``correct``/``wrong`` an int or ``[B]``): the standard metric of activation patching."""
  last = logits[:, position]  # [B, V]
  batch = jnp.arange(last.shape[0])
  pick = lambda t: last[batch, jnp.broadcast_to(jnp.asarray(t), (last.shape[0],))]  # noqa: E731
  return pick(correct) - pick(wrong)

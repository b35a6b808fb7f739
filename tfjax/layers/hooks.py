"""Observation points inside the modules that train: record an activation, or replace it, by name.

Every named activation of the transformer passes through :func:`hook` in the module that computes it::

    x = hook(self, "pattern", x)        # inside MultiHeadAttention

``hook`` does two things, both decided when tracing (Python, not traced code):

- **record**: when the ``"intermediates"`` collection is mutable (``apply(..., mutable=["intermediates"])``, as
  :func:`tfjax.explain.run_with_cache` does), ``x`` is sown there under the module's path
  (``intermediates/decoder/block_0/attn/pattern``). A :func:`capture` filter narrows what is recorded.
- **intervene**: when the ``"interventions"`` collection holds ``{"mask": bool, "value": array}`` at this path
  (``interventions/decoder/block_0/attn/z``), ``x`` becomes ``where(mask, value, x)`` (both broadcast to ``x``), and
  what flows on (and is recorded) is the changed activation.

When neither is asked for (a training step), ``hook`` returns ``x`` itself: the traced program is the same as
without it. Modules call it as ``hooks.hook(...)`` (the module attribute, so tests can swap it).

The names, per module (``B`` batch, ``T`` queries, ``S`` keys, ``H`` heads, ``K`` key/value heads, ``Dh`` head
width, ``D`` model width, ``F`` MLP width):

- ``MultiHeadAttention`` (``attn``; ``cross_attn`` in decoder blocks): ``q [B, T, H, Dh]`` and ``k, v [B, S, K, Dh]``
  (after RoPE; while decoding, the new positions only, before the KV cache), ``scores [B, H, T, S]`` (scaled; masked
  entries -inf), ``pattern [B, H, T, S]`` (the attention pattern, rows sum to 1 over the visible keys), ``z [B, T, H,
  Dh]`` (each head's output, before the output projection ``out``).
- ``TransformerBlock`` (``block_{i}``): ``resid_pre``, ``resid_mid`` (after self-attention), ``resid_mid_cross``
  (after cross-attention, decoder only), ``resid_post`` ``[B, T, D]``; ``attn_out``, ``cross_attn_out``, ``mlp_out``
  ``[B, T, D]``: what each sublayer adds to the residual stream.
- ``MLP`` (``mlp``): ``hidden [B, T, F]``, the activations after the nonlinearity (for SwiGLU, after the gate).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

INTERMEDIATES = "intermediates"
INTERVENTIONS = "interventions"

# Every name a hook records, by module kind (see the module docstring).
ATTENTION_NAMES = ("q", "k", "v", "scores", "pattern", "z")
BLOCK_NAMES = ("resid_pre", "attn_out", "resid_mid", "cross_attn_out", "resid_mid_cross", "mlp_out", "resid_post")
MLP_NAMES = ("hidden",)


@dataclasses.dataclass
class CaptureSession:
  """What one traced ``apply`` under :func:`capture` saw (filled while tracing).

  Attributes:
    record: which paths to record (``path -> bool``); None records every one.
    seen: every hook point reached, ``path -> jax.ShapeDtypeStruct`` of its activation.
    intervened: the paths where an intervention was applied.
  """
  record: Callable[[str], bool] | None = None
  seen: dict[str, jax.ShapeDtypeStruct] = dataclasses.field(default_factory=dict)
  intervened: set[str] = dataclasses.field(default_factory=set)


_SESSION: contextvars.ContextVar[CaptureSession | None] = contextvars.ContextVar("tfjax_capture", default=None)


@contextlib.contextmanager
def capture(record: Callable[[str], bool] | None = None) -> Iterator[CaptureSession]:
  """Within this context, hooks record only the paths ``record(path)`` accepts and note every point they pass.

  Paths inside a scanned stack (``.../layers/block/...``, ``scan_layers=True``) are recorded whatever ``record``
  says: one traced block stands for every layer there, so the choice is left to the caller (see
  :func:`tfjax.explain.run_with_cache`).
  """
  session = CaptureSession(record)
  token = _SESSION.set(session)
  try:
    yield session
  finally:
    _SESSION.reset(token)


def hook_path(module: nn.Module, name: str) -> str:
  """The path of ``name`` in ``module``, e.g. ``"decoder/block_0/attn/pattern"``."""
  return "/".join((*module.path, name))


def is_scanned(path: str) -> bool:
  """Whether ``path`` lies in a scanned stack of layers (``.../layers/block/...``)."""
  parts = path.split("/")
  return any(a == "layers" and b == "block" for a, b in zip(parts, parts[1:]))


def records(module: nn.Module, name: str) -> bool:
  """Whether :func:`hook` at ``(module, name)`` records its activation (decided when tracing)."""
  if not module.is_mutable_collection(INTERMEDIATES):
    return False
  session = _SESSION.get()
  if session is None or session.record is None:
    return True
  path = hook_path(module, name)
  return is_scanned(path) or bool(session.record(path))


def intervenes(module: nn.Module, name: str) -> bool:
  """Whether an intervention is given for ``(module, name)`` in the ``"interventions"`` collection."""
  return module.has_variable(INTERVENTIONS, name)


def wants(module: nn.Module, name: str) -> bool:
  """Whether :func:`hook` at ``(module, name)`` records or changes anything: if not, the activation need not exist
  (e.g. the attention pattern, which the fast attention path never forms)."""
  return records(module, name) or intervenes(module, name)


def _intervene(module: nn.Module, name: str, x: jnp.ndarray) -> jnp.ndarray:
  spec = module.get_variable(INTERVENTIONS, name)
  path = hook_path(module, name)
  if not isinstance(spec, dict) or set(spec) != {"mask", "value"}:
    got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
    raise ValueError(f"the intervention at {path!r} must be a dict with keys 'mask' (bool) and 'value', got {got}")
  mask, value = jnp.asarray(spec["mask"]), jnp.asarray(spec["value"])
  if mask.dtype != jnp.bool_:
    raise ValueError(f"the intervention mask at {path!r} must be boolean, got dtype {mask.dtype}")
  for what, arr in (("mask", mask), ("value", value)):
    try:
      shape = jnp.broadcast_shapes(arr.shape, x.shape)
    except ValueError:
      shape = None
    if shape != x.shape:
      raise ValueError(f"the intervention {what} at {path!r} has shape {arr.shape}, which does not broadcast to the "
                       f"activation's shape {x.shape}")
  return jnp.where(mask, value.astype(x.dtype), x)


def skip(module: nn.Module, name: str, shape: tuple[int, ...], dtype=jnp.float32) -> None:
  """Notes a hook point that this trace does not form (e.g. the pattern on the fast attention path), so that a
  :func:`capture` session still lists it among the model's activations. Call only when ``wants`` is False."""
  session = _SESSION.get()
  if session is not None:
    session.seen[hook_path(module, name)] = jax.ShapeDtypeStruct(tuple(shape), dtype)


def hook(module: nn.Module, name: str, x: jnp.ndarray) -> jnp.ndarray:
  """Records ``x`` as ``name`` of ``module`` and applies a given intervention; returns ``x`` unchanged (the same
  traced value) when neither is asked for. See the module docstring."""
  session = _SESSION.get()
  if session is not None:
    session.seen[hook_path(module, name)] = jax.ShapeDtypeStruct(x.shape, x.dtype)
  if intervenes(module, name):
    x = _intervene(module, name, x)
    if session is not None:
      session.intervened.add(hook_path(module, name))
  if records(module, name):
    module.sow(INTERMEDIATES, name, x)
  return x

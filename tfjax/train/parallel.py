"""Devices: the mesh, parameter shardings from logical axis names, and moving batches onto devices.

Modes (``config.train.parallel``):

- ``none``: one device.
- ``dp``: data parallel with ``jax.jit`` on a 1-D mesh ``('data',)`` over all devices; parameters replicated, the
  batch split along its first axis. The step runs under ``jax.shard_map``: each device computes the gradients of
  its rows, then one ``lax.psum`` of all of them as a single flat buffer (:func:`tfjax.train.step.psum_flat`).
  Letting XLA insert the reductions instead costs one device rendezvous per gradient leaf: ~15% of a small model's
  step on CPU.
- ``fsdp``: as ``dp``, but parameters and optimizer state are sharded over ``'data'`` along their ``embed`` axis
  (the logical-axis rules below); XLA gathers them for the matmuls.
- ``pmap``: ``jax.pmap`` over the local devices, state replicated with a leading device axis, gradients summed with
  ``lax.psum``. (pmap is in maintenance mode since JAX 0.8 and runs on jit + shard_map.)
- ``auto``: ``dp`` when there is more than one device, else ``none``.

All of them run the same train step (:func:`tfjax.train.step.make_train_step`).
"""

from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tfjax.config import ConfigError

DATA = "data"
# logical axis name -> mesh axis, per mode (maxtext-style rules; the config may override them).
RULES = {
    "dp": (),
    "fsdp": (("embed", DATA),),
}


def resolve_mode(mode: str) -> str:
  if mode == "auto":
    return "dp" if jax.device_count() > 1 else "none"
  return mode


def make_mesh(mode: str) -> Mesh:
  devices = jax.devices()[:1] if mode == "none" else jax.devices()
  return Mesh(np.asarray(devices), (DATA,))


def check_batch_divisible(batch_size: int, mode: str) -> None:
  n = 1 if mode == "none" else (jax.local_device_count() * jax.process_count() if mode == "pmap" else
                                jax.device_count())
  if batch_size % n:
    raise ConfigError(f"train.batch_size={batch_size} does not divide across {n} devices (parallel={mode}); "
                      f"use a multiple of {n}, or --config.train.parallel=none")


def param_shardings(abstract_params: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for (boxed) abstract params: each logical axis mapped by ``rules`` where the size divides the
  mesh axis, replicated otherwise."""
  specs = nn.get_partition_spec(abstract_params)
  rules = dict(rules)
  shapes = nn.unbox(abstract_params)

  def to_sharding(spec, shape):
    if not isinstance(spec, P):
      return NamedSharding(mesh, P())
    axes = []
    for name, size in zip(spec, shape.shape):
      mesh_axis = rules.get(name)
      if mesh_axis is not None and size % mesh.shape[mesh_axis] == 0 and mesh_axis not in axes:
        axes.append(mesh_axis)
      else:
        axes.append(None)
    return NamedSharding(mesh, P(*axes))

  return jax.tree.map(to_sharding, specs, shapes, is_leaf=lambda x: isinstance(x, P) or x is None)


def data_parallel(step_fn, mesh: Mesh):
  """``step_fn(state, batch)`` (made with ``axis_name=DATA``) run per device under ``jax.shard_map``: state
  replicated, batch split along its first axis, outputs (reduced inside the step) replicated. Jit the result."""
  return jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(), P()), check_vma=False)


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows -> a global array split along the batch axis (works across hosts)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def pmap_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``[B, ...] -> [local_devices, B / local_devices, ...]`` for pmap."""
  n = jax.local_device_count()
  return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in batch.items()}


def replicate_for_pmap(tree: Any) -> Any:
  """Puts a copy of every leaf on each local device, stacked along a new leading axis (for pmap)."""
  devices = jax.local_devices()
  sharding = NamedSharding(Mesh(np.asarray(devices), ("devices",)), P("devices"))

  def rep(x):
    x = np.asarray(jax.device_get(x))
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)

  return jax.tree.map(rep, tree)


def unreplicate(tree: Any) -> Any:
  return jax.tree.map(lambda x: x[0], tree)


def describe(mesh: Mesh, mode: str) -> str:
  kinds = sorted({d.device_kind for d in jax.devices()})
  return (f"parallel={mode}: {jax.process_count()} process(es), {jax.device_count()} device(s) "
          f"({', '.join(kinds)}), mesh {dict(mesh.shape)}")


log = logging.getLogger("tfjax")

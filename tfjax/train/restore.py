"""Loading trained parameters from a workdir for inference (no optimizer, no data needed): the one loader behind
``./launch.sh sample / translate / fill-mask / explain`` and each task's ``load_for_inference``."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from tfjax.train.checkpoint import CheckpointError, complete_steps, make_best_manager, make_manager


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` a training run wrote in ``workdir``; a clear :class:`CheckpointError` when there is none or
  it is not a tfjax run's (e.g. a Hugging Face directory without its ``model.safetensors``)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir} is not a tfjax workdir: it has no config.json")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} cannot be read as a run's config: {e}") from None
  if not isinstance(data, dict) or "task" not in data:
    raise CheckpointError(f"{path} is not a tfjax run's config (it names no task); a Hugging Face model directory "
                          "needs its weights beside it as model.safetensors")
  return ml_collections.ConfigDict(data)


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in ``WORKDIR/checkpoints``, oldest first (empty when there is none);
  opened read-only."""
  if not os.path.isdir(os.path.join(os.path.abspath(workdir), "checkpoints")):
    return []
  manager = make_manager(workdir, max_to_keep=1000, async_save=False, read_only=True)
  try:
    return complete_steps(manager)
  finally:
    manager.close()


def load_params(workdir: str, step: int | None = None, best: bool = False):
  """The parameters of the latest (or given) checkpoint of ``workdir`` as a tree of arrays, and the step.

  ``best=True``: those with the lowest evaluation loss, kept in ``WORKDIR/best`` by runs with ``train.keep_best``.
  """
  if best:
    return _load_best(workdir, step)
  manager = make_manager(workdir, max_to_keep=1000, async_save=False, read_only=True)
  try:
    steps = complete_steps(manager)
    if not steps:
      raise CheckpointError(f"no complete checkpoint in {os.path.join(os.path.abspath(workdir), 'checkpoints')}")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in {workdir}; available: {steps}")
    try:
      one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(fallback_sharding=one_device)))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot read checkpoint step {step} in {workdir}: {type(e).__name__}: {e}") from e
    state = restored["state"]
    params = state["params"] if isinstance(state, dict) else state.params
    return params, step
  finally:
    manager.close()


def _load_best(workdir: str, step: int | None):
  if step is not None:
    raise CheckpointError("the best checkpoint has its own step: ask for best or for a step, not both")
  directory = os.path.join(os.path.abspath(workdir), "best")
  if not os.path.isdir(directory):
    raise CheckpointError(f"{workdir} has no best/ checkpoint: train with --config.train.keep_best=True (it is kept "
                          "at every evaluation that lowers the loss), or load the latest checkpoint instead")
  manager = make_best_manager(workdir, async_save=False, read_only=True)
  try:
    steps = complete_steps(manager)
    if not steps:
      raise CheckpointError(f"no complete checkpoint in {directory}: the run has not evaluated yet")
    try:
      one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      restored = manager.restore(steps[-1], args=ocp.args.Composite(
          params=ocp.args.StandardRestore(fallback_sharding=one_device)))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot read the best checkpoint {directory}/{steps[-1]}: {type(e).__name__}: {e}") from e
    return restored["params"], steps[-1]
  finally:
    manager.close()

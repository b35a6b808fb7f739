"""Orbax checkpoints of the train state: atomic saves, ``max_to_keep``, resume from the latest complete step.

A checkpoint holds the unreplicated :class:`~tfjax.train.step.TrainState` (params, optimizer state, step, RNG) and a
small JSON ``meta`` item. The data position needs no saving: the batch at step ``s`` is a pure function of (seed, s).
Orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save leaves no
step that looks complete; leftover temporary directories are removed at start-up.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt, or does not fit the model; the message says which and what to do."""


def _options(max_to_keep: int, async_save: bool, read_only: bool) -> ocp.CheckpointManagerOptions:
  # a reader (translate, sample, explain on a run still training) must not clean up: the temporary directory it
  # would remove is the training process's save in progress
  return ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                                      cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)


def make_manager(workdir: str, max_to_keep: int, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of ``WORKDIR/checkpoints``. A writer (the training run) removes leftover temporary directories of
  killed saves when it opens; ``read_only=True`` (inference) touches nothing."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = _options(max_to_keep, async_save, read_only)
  # handlers named up front: item_metadata() can then read a checkpoint's shapes before any save or restore
  return ocp.CheckpointManager(directory, options=options, item_handlers={
      "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def make_best_manager(workdir: str, async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """The parameters with the lowest evaluation loss so far, in ``WORKDIR/best/<step>`` (one kept; atomic saves)."""
  directory = os.path.join(os.path.abspath(workdir), "best")
  options = _options(1, async_save, read_only)
  return ocp.CheckpointManager(directory, options=options, item_handlers={
      "params": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def save_best(manager: ocp.CheckpointManager, step: int, params: Any, meta: dict) -> None:
  if step in manager.all_steps():  # a run killed after saving it resumed from an earlier step and got here again
    manager.delete(step)
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
               force=True)


def complete_steps(manager: ocp.CheckpointManager) -> list[int]:
  """Steps whose checkpoint directory was finalised (holds orbax's metadata file), oldest first."""
  steps = []
  for step in manager.all_steps():
    path = os.path.join(str(manager.directory), str(step))
    if os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")) or not os.path.isdir(path):
      steps.append(step)
  return sorted(steps)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
               force=force)


def _describe_mismatch(abstract: Any, saved: Any) -> str:
  """Lists leaves whose shapes differ between the model and the checkpoint's metadata."""
  def name(path):
    return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)

  try:
    want = {name(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
    have = {name(k): tuple(getattr(v, "shape", ())) for k, v in jax.tree_util.tree_leaves_with_path(saved)}
  except Exception:  # pylint: disable=broad-except
    return ""
  # parameters first: the optimizer state only repeats their shapes
  keys = sorted(set(want) | set(have), key=lambda k: (not k.startswith("params"), k))
  diffs = [f"{k}: model {want.get(k)} vs checkpoint {have.get(k)}" for k in keys if want.get(k) != have.get(k)]
  return "; ".join(diffs[:8]) + (f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else "")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores ``step`` into the shapes and shardings of ``abstract_state``; raises :class:`CheckpointError`."""
  path = os.path.join(str(manager.directory), str(step))
  try:
    saved = manager.item_metadata(step)
    saved_state = saved["state"] if saved is not None and "state" in saved else None
  except Exception:  # pylint: disable=broad-except
    saved_state = None
  if saved_state is not None:
    mismatch = _describe_mismatch(abstract_state, saved_state)
    if mismatch:
      raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {mismatch}. Use a new --workdir "
                            "for a different model, or the config the checkpoint was written with.")
  try:
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                         meta=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"cannot restore checkpoint {path}: {type(e).__name__}: {e}. The checkpoint is corrupt or "
                          "incomplete; delete that step directory to resume from an earlier one, or set "
                          "--config.train.restore_fallback=True.") from e
  return out["state"], dict(out["meta"] or {})

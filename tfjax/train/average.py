"""Checkpoint averaging: the parameters of several checkpoints of one run, averaged element-wise into a new workdir.

Averaging the last checkpoints of a run (Vaswani et al. 2017 average the last 5 or 20; fairseq's
``scripts/average_checkpoints.py``; Wu et al. 2021 the last 10) smooths out the noise of the last updates and usually
adds BLEU at no training cost.

:func:`average_checkpoints` writes the average as an *inference workdir*, by default ``WORKDIR/averaged``:

    WORKDIR/averaged/config.json, tokenizer.json, ...   copied from WORKDIR (the files inference needs)
    WORKDIR/averaged/checkpoints/<step>/state           {"params": the average, "step": the last averaged step}
    WORKDIR/averaged/averaged.json                      the source workdir and the steps averaged

It is an ordinary workdir to everything that loads parameters through :func:`tfjax.train.restore.load_params`
(``./launch.sh translate WORKDIR/averaged``, ``./launch.sh sample``, ``tfjax.tasks.translate.load_for_inference``, then
``tfjax.hf.save``), with no flag and no second restore path. It holds no optimizer state, so training cannot resume
from it (the loop's restore names the missing leaves).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tfjax.train.checkpoint import CheckpointError, make_manager

AVERAGED_DIR = "averaged"
MARKER = "averaged.json"
# top-level files of a workdir that inference reads (the model's config, its tokenizer, where it came from)
COPIED_FILES = ("config.json", "tokenizer.json", "run_info.json")


def average_params(trees: Sequence[Any]) -> Any:
  """The element-wise mean of parameter trees of one structure, as numpy arrays: each leaf summed in float64 on the
  host, divided by the count and cast back to the first tree's dtype (so K copies of one tree average to it exactly)."""
  if not trees:
    raise ValueError("average_params needs at least one parameter tree")
  structure = jax.tree.structure(trees[0])
  for i, tree in enumerate(trees[1:], 1):
    if jax.tree.structure(tree) != structure:
      raise ValueError(f"parameter tree {i} differs in structure from tree 0: {jax.tree.structure(tree)} vs "
                       f"{structure}")
  for path_leaves in zip(*(jax.tree_util.tree_leaves_with_path(t) for t in trees)):
    shapes = {np.shape(leaf) for _, leaf in path_leaves}
    if len(shapes) > 1:
      raise ValueError(f"parameter {jax.tree_util.keystr(path_leaves[0][0])} has different shapes {sorted(shapes)}")

  def mean(*leaves):
    return (sum(np.asarray(x, np.float64) for x in leaves) / len(leaves)).astype(np.asarray(leaves[0]).dtype)

  return jax.tree.map(mean, *trees)


def select_steps(available: Sequence[int], last: int | None = None, steps: Sequence[int] | None = None) -> list[int]:
  """The checkpoint steps to average: the ``last`` newest of ``available``, or exactly ``steps``."""
  available = sorted(available)
  if (last is None) == (steps is None):
    raise ValueError("give either last=K (the K newest checkpoints) or steps=[...] (chosen ones), not both or neither")
  if steps is not None:
    steps = sorted(set(int(s) for s in steps))
    missing = [s for s in steps if s not in available]
    if not steps or missing:
      raise CheckpointError(f"no checkpoint for step(s) {missing or steps}; available: {available}")
    return steps
  if last < 1:
    raise ValueError(f"last must be >= 1, got {last}")
  if len(available) < last:
    raise CheckpointError(f"asked for the last {last} checkpoints but only {len(available)} are kept ({available}); "
                          "train with --config.train.max_to_keep >= that many (and checkpoint_every small enough)")
  return available[-last:]


def checkpoint_steps(workdir: str) -> list[int]:
  """The complete checkpoint steps of ``workdir`` (``checkpoints/<step>/`` finalised with orbax's metadata file),
  oldest first. Read-only: unlike opening a ``CheckpointManager``, it never removes the temporary directory of a save
  in flight, so it is safe while the run that owns the workdir is still saving."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isfile(os.path.join(directory, name, "_CHECKPOINT_METADATA")))


def load_checkpoint_params(workdir: str, step: int) -> Any:
  """The parameters saved at ``step`` in ``workdir`` (the ``state`` item's ``params``) on this process's first device,
  whatever sharding they were saved with. Read-only, like :func:`checkpoint_steps`."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
  one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    # the handler's metadata, not the checkpointer's: that one also looks for a step-level metadata file inside the
    # item directory and logs a warning for every checkpoint when it is not there (it never is)
    saved = ocp.StandardCheckpointHandler().metadata(epath.Path(path))
    saved = getattr(saved, "item_metadata", saved)
    with ocp.StandardCheckpointer() as checkpointer:
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), saved)
      state = checkpointer.restore(path, target)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"cannot read checkpoint step {step} in {workdir}: {type(e).__name__}: {e}") from e
  if not isinstance(state, dict) or "params" not in state:
    raise CheckpointError(f"checkpoint step {step} in {workdir} holds no params")
  return state["params"]


def average_checkpoints(workdir: str, last: int | None = None, steps: Sequence[int] | None = None,
                        out: str | None = None) -> tuple[str, list[int]]:
  """Averages the parameters of the ``last`` newest checkpoints of ``workdir`` (or of the chosen ``steps``) into the
  inference workdir ``out`` (default ``WORKDIR/averaged``; see the module docstring). Returns ``(out, steps)``.

  Raises :class:`CheckpointError` for a missing workdir or step, and ValueError for bad arguments. ``out`` may be
  replaced only if it is an earlier average (it holds ``averaged.json``), never a training workdir.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise CheckpointError(f"{workdir} is not a tfjax workdir: it has no config.json")
  out = os.path.abspath(out or os.path.join(workdir, AVERAGED_DIR))
  if out == workdir:
    raise ValueError("out must differ from the workdir whose checkpoints are averaged")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"{out} is a file; --out wants a directory (new, or an earlier average)")
  if os.path.exists(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MARKER)):
    raise ValueError(f"{out} exists and is not an averaged checkpoint (no {MARKER}); choose another --out")
  available = checkpoint_steps(workdir)
  if not available:
    raise CheckpointError(f"no complete checkpoint in {os.path.join(workdir, 'checkpoints')}")
  chosen = select_steps(available, last, steps)
  trees = [jax.device_get(load_checkpoint_params(workdir, step)) for step in chosen]  # K copies in host memory
  try:
    averaged = average_params(trees)
  except ValueError as e:
    raise CheckpointError(f"the checkpoints {chosen} of {workdir} do not hold the same parameters: {e}") from e

  if os.path.isdir(os.path.join(out, "checkpoints")):
    shutil.rmtree(os.path.join(out, "checkpoints"))  # an earlier average (checked above)
  os.makedirs(out, exist_ok=True)
  for name in COPIED_FILES:
    if os.path.isfile(os.path.join(workdir, name)):
      shutil.copyfile(os.path.join(workdir, name), os.path.join(out, name))
  writer = make_manager(out, max_to_keep=1, async_save=False)
  try:
    state = {"params": averaged, "step": np.asarray(chosen[-1], np.int32)}
    writer.save(chosen[-1], args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({"step": chosen[-1], "averaged_steps": chosen})))
    writer.wait_until_finished()
  finally:
    writer.close()
  with open(os.path.join(out, MARKER), "w") as f:
    json.dump({"source_workdir": workdir, "averaged_steps": chosen}, f, indent=2)
  return out, chosen

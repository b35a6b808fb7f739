"""Tasks: each binds a model family to its data, loss and evaluation, so one loop trains them all.

The registry maps ``config.task`` to a task class: :func:`make_task` is how ``./launch.sh train`` builds the task of
an experiment config, and :func:`register_task` adds your own (any object with the :class:`Task` methods).
The exported names are imported on first use (``import tfjax.tasks`` imports no JAX).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from tfjax._lazy import lazy_exports

# config.task -> "module:factory"; a factory takes (config, workdir) and returns a Task. word2vec trains with its own
# loop (tfjax.tasks.word2vec.train_and_evaluate), and the CBOW-to-attention ladder builds its CentreWordTasks itself
# (tfjax.explain.cbow_to_attention).
TASKS: dict[str, str | Callable[..., Any]] = {
    "lm": "tfjax.tasks.lm:LMTask",
    "mlm": "tfjax.tasks.mlm:MLMTask",
    "translate": "tfjax.tasks.translate:TranslationTask",
}


def register_task(name: str, factory: Callable[..., Any]) -> None:
  """Makes ``config.task = name`` build ``factory(config, workdir)``."""
  TASKS[name] = factory


def make_task(config: Any, workdir: str | None = None) -> Any:
  """The :class:`Task` that ``config.task`` names, for a run in ``workdir`` (None: nothing written, e.g. a test)."""
  entry = TASKS.get(config.task)
  if entry is None:
    known = sorted(TASKS) + ["word2vec (tfjax.tasks.word2vec.train_and_evaluate)"]
    from tfjax.config import ConfigError
    raise ConfigError(f"unknown config.task {config.task!r}; known: {', '.join(known)}")
  if isinstance(entry, str):
    module, _, name = entry.partition(":")
    entry = getattr(importlib.import_module(module), name)
  return entry(config, workdir)


__getattr__, __dir__, _exported = lazy_exports(__name__, globals(), {
    "Task": "tfjax.tasks.base:Task",
    "TaskDefaults": "tfjax.tasks.base:TaskDefaults",
    "Batch": "tfjax.tasks.base:Batch",
    "check_task": "tfjax.tasks.base:check_task",
    "LMTask": "tfjax.tasks.lm:LMTask",
    "MLMTask": "tfjax.tasks.mlm:MLMTask",
    "TranslationTask": "tfjax.tasks.translate:TranslationTask",
    "CentreWordTask": "tfjax.tasks.word2vec:CentreWordTask",
})
__all__ = sorted([*_exported, "TASKS", "make_task", "register_task"])

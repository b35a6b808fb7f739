"""Lazy exports (PEP 562): a package names its public objects without importing their modules until one is first
used, so ``import tfjax`` (or ``import tfjax.models``) imports neither JAX nor Flax.

A package's ``__init__`` maps each public name to ``"module"`` or ``"module:attribute"``::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {"GPT": "tfjax.models.gpt:GPT"})
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, namespace: dict[str, Any], exports: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
  """``(__getattr__, __dir__, __all__)`` for ``package``: the first access to an exported name imports its module and
  keeps the object in the package's ``namespace`` (later accesses are plain attribute look-ups)."""

  def __getattr__(name: str) -> Any:  # pylint: disable=invalid-name
    target = exports.get(name)
    if target is None:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    value = importlib.import_module(module_name)
    if attribute:
      value = getattr(value, attribute)
    namespace[name] = value
    return value

  def __dir__() -> list[str]:  # pylint: disable=invalid-name
    return sorted(set(namespace) | set(exports))

  return __getattr__, __dir__, sorted(exports)

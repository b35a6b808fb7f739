"""Seeing inside the models: capture activations, intervene on them, read the logit lens.

- :mod:`tfjax.explain.capture`: :func:`run_with_cache` -> ``(output, ActivationCache)``.
- :mod:`tfjax.explain.interventions`: :func:`ablate_heads`, :func:`ablate_neurons`, :func:`patch`,
  :func:`run_with_interventions`, and the losses to compare runs by.
- :mod:`tfjax.explain.lens`: :func:`logit_lens` ``[L+1, B, T, V]``.
"""

from tfjax.explain.capture import (ActivationCache, StackLayout, describe_names, model_stacks, name_filter,
                                   resolve_stack, run_with_cache, split_path)

__all__ = ["ActivationCache", "StackLayout", "describe_names", "model_stacks", "name_filter", "resolve_stack",
           "run_with_cache", "split_path"]

"""Seeing inside the models: capture activations, intervene on them, read the logit lens.

- :mod:`tfjax.explain.capture`: :func:`run_with_cache` -> ``(output, ActivationCache)``; the names and shapes of
  the observation points are in :mod:`tfjax.layers.hooks`.
- :mod:`tfjax.explain.interventions`: :func:`ablate_heads`, :func:`ablate_neurons`, :func:`patch`,
  :func:`run_with_interventions`, :func:`token_loss`, :func:`logit_difference`.
- :mod:`tfjax.explain.lens`: :func:`logit_lens` ``[L+1, B, T, V]``, :func:`lens_kl`, :func:`unembed_residual`.
"""

from tfjax.explain.capture import (ActivationCache, StackLayout, describe_names, model_stacks, name_filter,
                                   resolve_stack, run_with_cache, split_path)
from tfjax.explain.interventions import (ablate_heads, ablate_neurons, combine_interventions, intervention,
                                         interventions_from_paths, logit_difference, patch, run_with_interventions,
                                         token_loss)
from tfjax.explain.lens import lens_kl, logit_lens, unembed_residual

__all__ = [
    "ActivationCache", "StackLayout", "ablate_heads", "ablate_neurons", "combine_interventions", "describe_names",
    "intervention", "interventions_from_paths", "lens_kl", "logit_difference", "logit_lens", "model_stacks",
    "name_filter", "patch", "resolve_stack", "run_with_cache", "run_with_interventions", "split_path", "token_loss",
    "unembed_residual",
]

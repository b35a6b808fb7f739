"""Seeing inside the models: capture activations, intervene on them, read the logit lens.

- :mod:`tfjax.explain.capture`: :func:`run_with_cache` -> ``(output, ActivationCache)``; the names and shapes of
  the observation points are in :mod:`tfjax.layers.hooks`; :func:`per_layer`: a scanned model as one module a layer.
- :mod:`tfjax.explain.interventions`: :func:`ablate_heads`, :func:`ablate_neurons`, :func:`patch`,
  :func:`run_with_interventions`, :func:`token_loss`, :func:`logit_difference`.
- :mod:`tfjax.explain.lens`: :func:`logit_lens` ``[L+1, B, T, V]``, :func:`lens_kl`, :func:`unembed_residual`.
- :mod:`tfjax.explain.attribution`: :func:`logit_attribution` ``[C, B, T]``: each head's, MLP's and embedding's
  direct share of a token's logit.
- :mod:`tfjax.explain.composition`: :func:`composition_scores` (Q/K/V composition of the weights) and
  :func:`path_ablation` (a later head's queries, keys or values computed without an earlier head).
- :mod:`tfjax.explain.ov`: :func:`ov_circuit` ``[N, V]`` (the logits a head adds when it attends to a token) and
  :func:`copying_score`.
- :mod:`tfjax.explain.scaled_dot_product`: :func:`pattern_statistics` (an attention row's entropy share, largest
  weight and softmax Jacobian norm) and :func:`row_variance` (the spread of its scores).

The names are imported on first use (``import tfjax.explain`` imports no JAX).
"""

from tfjax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), {
    "capture": "tfjax.explain.capture",
    "interventions": "tfjax.explain.interventions",
    "lens": "tfjax.explain.lens",
    "ActivationCache": "tfjax.explain.capture:ActivationCache",
    "StackLayout": "tfjax.explain.capture:StackLayout",
    "describe_names": "tfjax.explain.capture:describe_names",
    "model_stacks": "tfjax.explain.capture:model_stacks",
    "name_filter": "tfjax.explain.capture:name_filter",
    "per_layer": "tfjax.explain.capture:per_layer",
    "resolve_stack": "tfjax.explain.capture:resolve_stack",
    "run_with_cache": "tfjax.explain.capture:run_with_cache",
    "split_path": "tfjax.explain.capture:split_path",
    "ablate_heads": "tfjax.explain.interventions:ablate_heads",
    "ablate_neurons": "tfjax.explain.interventions:ablate_neurons",
    "combine_interventions": "tfjax.explain.interventions:combine_interventions",
    "intervention": "tfjax.explain.interventions:intervention",
    "interventions_from_paths": "tfjax.explain.interventions:interventions_from_paths",
    "logit_difference": "tfjax.explain.interventions:logit_difference",
    "patch": "tfjax.explain.interventions:patch",
    "run_with_interventions": "tfjax.explain.interventions:run_with_interventions",
    "token_loss": "tfjax.explain.interventions:token_loss",
    "logit_attribution": "tfjax.explain.attribution:logit_attribution",
    "composition_scores": "tfjax.explain.composition:composition_scores",
    "path_ablation": "tfjax.explain.composition:path_ablation",
    "ov_circuit": "tfjax.explain.ov:ov_circuit",
    "copying_score": "tfjax.explain.ov:copying_score",
    "pattern_statistics": "tfjax.explain.scaled_dot_product:pattern_statistics",
    "row_variance": "tfjax.explain.scaled_dot_product:row_variance",
    "lens_kl": "tfjax.explain.lens:lens_kl",
    "logit_lens": "tfjax.explain.lens:logit_lens",
    "unembed_residual": "tfjax.explain.lens:unembed_residual",
})

"""``explain mlp``: the MLP as a bank of questions.

Each hidden neuron ``f`` of layer ``l``'s MLP asks a question of the token (row ``f`` of ``fc_in``); its answer, the
activation ``mlp/hidden [B, T, F]`` recorded by the MLP itself (:func:`tfjax.explain.capture.run_with_cache`), adds
``answer x fc_out[f]`` to the residual stream. The command lists, for chosen neurons (default: the most active on
validation text), the validation contexts where the neuron fires most, and the tokens its output direction
``fc_out[f] [D]`` promotes when read directly through the unembedding (``fc_out[f] · W_Uᵀ``, the direct path,
ignoring the final norm's centring and scale).
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.attention import jit_run_with_cache
from tfjax.explain.capture import resolve_stack


def unembedding_matrix(subject) -> np.ndarray:
  """``W_U [D, V]``: the tied token embedding transposed, or the model's own untied unembedding."""
  params = subject.params
  if subject.cfg.tie_embeddings or "unembed" not in params:
    return np.asarray(params["embed"]["embedding"], np.float32).T
  return np.asarray(params["unembed"]["kernel_dense"]["kernel"], np.float32)


def run(subject, out_dir: str, *, layer: int | None = None, neurons: Sequence[int] | None = None, top_k: int = 8,
        max_batches: int = 4, text: str | None = None, target: str | None = None) -> dict:
  """Writes ``mlp_contexts.png`` (per neuron, its top-``top_k`` activations with their contexts),
  ``mlp_promoted.png`` (the tokens each neuron's output promotes) and ``mlp.json``."""
  from tfjax.explain.subjects import SubjectError
  os.makedirs(out_dir, exist_ok=True)
  model, params, kind = subject.model, subject.params, subject.kind
  layout = resolve_stack(model)
  layer = layout.num_layers - 1 if layer is None else subject.check_layer(layer, layout.num_layers)
  path = f"{layout.name}/block_{layer}/mlp/hidden"
  acts, inputs, weights = [], [], []
  for b in data_lib.eval_batches(subject, max_batches, text, target):
    args, kwargs = data_lib.model_inputs(kind, jax.tree.map(jnp.asarray, b))
    _, cache = jit_run_with_cache(model, params, *args, names=(path,), **kwargs)
    acts.append(np.asarray(cache[path]))  # [B, T, F]
    inputs.append(np.asarray(b["inputs"]))
    weights.append(data_lib.token_weights(kind, b))
  acts = np.concatenate(acts)  # [N, T, F]
  ids = np.concatenate(inputs)
  real = np.concatenate(weights) > 0
  masked = np.where(real[..., None], acts, -np.inf)
  width = acts.shape[-1]
  if neurons is None:
    neurons = [int(i) for i in np.argsort(-masked.max(axis=(0, 1)))[:4]]
  bad = [n for n in neurons if not 0 <= n < width]
  if bad:
    raise SubjectError(f"neurons {bad} do not exist: layer {layer}'s MLP has {width} neurons (0 .. {width - 1})")
  w_out = np.asarray(params[layout.name][f"block_{layer}"]["mlp"]["fc_out"]["kernel"], np.float32)  # [F, D]
  direct = w_out[neurons] @ unembedding_matrix(subject)  # [n, V]

  result = {"layer": layer, "path": path, "neurons": {}}
  context_panels, promoted_panels = {}, {}
  for k, n in enumerate(neurons):
    flat = masked[..., n].reshape(-1)
    order = np.argsort(-flat)[:top_k]
    contexts = []
    for idx in order:
      row, t = divmod(int(idx), ids.shape[1])
      before = "".join(subject.labels(ids[row, max(0, t - 10):t])) if subject.kind == "gpt" else \
          " ".join(subject.labels(ids[row, max(0, t - 6):t]))
      token = subject.token_label(ids[row, t])
      contexts.append({"activation": float(flat[idx]), "context": before, "token": token, "row": row, "position": t})
    top_tokens = np.argsort(-direct[k])[:top_k]
    promoted = [(subject.token_label(i), float(direct[k, i])) for i in top_tokens]
    result["neurons"][int(n)] = {"top_contexts": contexts, "promoted": promoted,
                                 "mean_activation": float(acts[..., n][real].mean())}
    context_panels[f"neuron {n}"] = ([f"{c['context'][-18:]}[{c['token']}]" for c in contexts],
                                     [c["activation"] for c in contexts])
    promoted_panels[f"neuron {n} promotes"] = ([p[0] for p in promoted], [p[1] for p in promoted])
  pictures.bars([], [], os.path.join(out_dir, "mlp_contexts.png"), xlabel="activation", panels=context_panels)
  pictures.bars([], [], os.path.join(out_dir, "mlp_promoted.png"), xlabel="direct logit (fc_out[f] · W_U)",
                panels=promoted_panels)
  pictures.write_json(os.path.join(out_dir, "mlp.json"), result)
  lines = [f"mlp: layer {layer}, {width} neurons, {int(real.sum())} validation tokens"]
  for n, r in result["neurons"].items():
    c = r["top_contexts"][0]
    lines.append(f"  neuron {n}: fires most on {c['context'][-16:]!r} + [{c['token']}] ({c['activation']:.2f}); "
                 f"promotes {', '.join(repr(p[0]) for p in r['promoted'][:4])}")
  return {"summary": "\n".join(lines), **result}

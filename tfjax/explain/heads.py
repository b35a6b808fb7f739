"""``explain heads``: which heads matter: the validation-loss increase when each head alone is zero-ablated.

For every attention of the model (GPT/BERT: self-attention; translator: encoder self-, decoder self- and
cross-attention) and every (layer, head), the head's output ``z`` is set to 0 (:mod:`tfjax.explain.interventions`)
and the loss on the validation batches is measured again. One interventions tree per attention holds a mask for
every layer, so the jitted loss compiles once per attention and each head is a new mask, not a new program. A batch
is scored in chunks of rows whose logits fit :data:`tfjax.explain.data.OUTPUT_BYTES` (a translator's validation batch
holds 512 sentences), its loss the chunks' summed cross-entropy over their summed token count.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.capture import model_stacks
from tfjax.explain.interventions import intervention, interventions_from_paths, run_with_interventions


def head_masks_tree(stack: str, sublayer: str, num_layers: int, num_heads: int, layer: int, head: int) -> dict:
  """An interventions tree zeroing head ``head`` of layer ``layer`` (and nothing else, though every layer of the
  stack has a leaf, so that all (layer, head) share one tree structure)."""
  leaves = {}
  for l in range(num_layers):
    mask = np.zeros((1, 1, num_heads, 1), bool)
    if l == layer:
      mask[0, 0, head, 0] = True
    leaves[f"{stack}/block_{l}/{sublayer}/z"] = intervention(mask, jnp.zeros(()))
  return interventions_from_paths(leaves)


def _logits(model, kind, params, batch):
  args, kwargs = data_lib.model_inputs(kind, batch)
  return model.apply({"params": params}, *args, **kwargs)


@functools.partial(jax.jit, static_argnames=("model", "kind"))
def _loss_terms(model, kind, params, tree, batch):
  if tree is None:
    logits = _logits(model, kind, params, batch)
  else:
    args, kwargs = data_lib.model_inputs(kind, batch)
    logits = run_with_interventions(model, {"params": params}, tree, *args, **kwargs)
  return data_lib.batch_loss_terms(kind, logits, batch)


def _chunked(model, kind, params, batch: dict, budget: int = data_lib.OUTPUT_BYTES) -> list[dict]:
  """``batch`` as device arrays in chunks of rows whose logits fit ``budget`` bytes."""
  row_bytes = data_lib.output_row_bytes(functools.partial(_logits, model, kind, params), batch)
  return [jax.tree.map(jnp.asarray, c) for c in data_lib.row_chunks(batch, row_bytes, budget)]


def _mean_loss(model, kind, params, tree, batches: list[list[dict]]) -> float:
  """The mean over ``batches`` (each a list of chunks) of each batch's loss."""
  losses = []
  for chunks in batches:
    terms = [_loss_terms(model, kind, params, tree, c) for c in chunks]
    losses.append(sum(float(s) for s, _ in terms) / max(sum(float(n) for _, n in terms), 1.0))
  return float(np.mean(losses))


def attentions(model) -> list[tuple[str, str]]:
  """The (stack, sublayer) of every attention of ``model``."""
  out = []
  for name, layout in model_stacks(model).items():
    out.append((name, "attn"))
    if layout.cross_attention:
      out.append((name, "cross_attn"))
  return out


def run(subject, out_dir: str, *, max_batches: int = 4, text: str | None = None, target: str | None = None) -> dict:
  """Writes ``heads.png`` (a layer x head heatmap of the loss increase per attention) and ``heads.json``.

  The loss is over the validation batches, or over ``text`` (a translator's source sentence, whose target is
  ``target`` or the model's own translation: :func:`tfjax.explain.data.eval_batches`)."""
  os.makedirs(out_dir, exist_ok=True)
  model, params, kind = subject.model, subject.params, subject.kind
  batches = [_chunked(model, kind, params, b) for b in data_lib.eval_batches(subject, max_batches, text, target)]
  base = _mean_loss(model, kind, params, None, batches)
  stacks = model_stacks(model)
  numbers = {"base_loss": base, "batches": len(batches), "attentions": {}}
  lines = [f"heads: validation loss {base:.4f} over {len(batches)} batch(es); loss increase when one head is zeroed"]
  panels = []
  for stack, sublayer in attentions(model):
    layout = stacks[stack]
    delta = np.zeros((layout.num_layers, layout.num_heads), np.float32)
    for l in range(layout.num_layers):
      for h in range(layout.num_heads):
        tree = head_masks_tree(stack, sublayer, layout.num_layers, layout.num_heads, l, h)
        delta[l, h] = _mean_loss(model, kind, params, tree, batches) - base
    name = f"{stack}/{sublayer}"
    numbers["attentions"][name] = delta
    panels.append((name, delta))
    l, h = np.unravel_index(np.argmax(delta), delta.shape)
    lines.append(f"  {name}: most important head layer {l} head {h} (+{delta[l, h]:.4f}); "
                 f"least {float(delta.min()):+.4f}; mean {float(delta.mean()):+.4f}")
  for name, delta in panels:
    pictures.heatmap(delta, os.path.join(out_dir, f"heads_{name.replace('/', '_')}.png"),
                     row_labels=[f"layer {l}" for l in range(delta.shape[0])],
                     col_labels=[f"head {h}" for h in range(delta.shape[1])],
                     title=f"{name}: validation loss increase when the head is zeroed (base {base:.3f})",
                     center=True, annotate=True, fmt="{:+.3f}")
  pictures.write_json(os.path.join(out_dir, "heads.json"), numbers)
  return {"summary": "\n".join(lines), **numbers}

"""``explain logit_lens``: what the model would predict if it stopped after each layer.

(This module is named ``logit_lens_command`` so that it does not shadow :func:`tfjax.explain.logit_lens`.)

:func:`tfjax.explain.lens.logit_lens` applies the model's own final norm and unembedding to the residual stream after
the embedding and after every layer (``[L + 1, B, T, V]``; the last entry is the model's logits). The command shows,
for a text, each layer's top next-token guess at every position (coloured by its probability), and, averaged over
validation text, the KL divergence ``KL(final ‖ layer)`` of each layer's distribution from the final one
(:func:`tfjax.explain.lens.lens_kl`). The translator's lens reads its decoder; BERT's goes through its MLM head.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.lens import lens_kl, logit_lens


@functools.partial(jax.jit, static_argnames=("model", "kind"))
def _lens(model, kind, params, batch):
  args, kwargs = data_lib.model_inputs(kind, batch)
  kwargs.pop("masked_positions", None)  # the lens reads every position
  return logit_lens(model, {"params": params}, tuple(args), **kwargs)


@functools.partial(jax.jit, static_argnames=("model", "kind"))
def _mean_kl(model, kind, params, batch, weights):
  kl = lens_kl(_lens(model, kind, params, batch))  # [L + 1, B, T]
  return jnp.sum(kl * weights, axis=(1, 2)), jnp.sum(weights)


def _lens_chunks(model, kind, params, batch: dict, budget: int = data_lib.OUTPUT_BYTES):
  """``batch`` in chunks of rows whose ``[L + 1, rows, T, V]`` lens fits ``budget`` bytes."""
  row_bytes = data_lib.output_row_bytes(functools.partial(_lens, model, kind, params), batch)
  return data_lib.row_chunks(batch, row_bytes, budget)


def run(subject, out_dir: str, *, text: str | None = None, target: str | None = None, max_batches: int = 4,
        top_k: int = 3) -> dict:
  """Writes ``logit_lens.png`` (layers x positions: the top guess and its probability), ``logit_lens_kl.png`` (mean
  KL from the final distribution per layer, on validation text) and ``logit_lens.json``."""
  os.makedirs(out_dir, exist_ok=True)
  model, params, kind = subject.model, subject.params, subject.kind
  if kind == "translator":
    src = subject.text_ids(text, source=True)
    tgt = subject.target_ids(src, target)
    batch = {"src": src[None], "inputs": tgt[None]}
    ids = tgt
  else:
    ids = subject.text_ids(text)
    batch = ({"inputs": ids[None]} if kind == "gpt" else
             {"inputs": ids[None], "attention_mask": np.ones_like(ids[None]),
              "token_type_ids": np.zeros_like(ids[None])})
  lens = np.asarray(_lens(model, kind, params, jax.tree.map(jnp.asarray, batch)))[:, 0]  # [L + 1, T, V]
  probs = np.asarray(jax.nn.softmax(jnp.asarray(lens), axis=-1))
  top = np.argsort(-probs, axis=-1)[..., :top_k]  # [L + 1, T, k]
  top_p = np.take_along_axis(probs, top, axis=-1)
  rows = ["embed"] + [f"layer {l}" for l in range(lens.shape[0] - 1)]
  labels = subject.labels(ids)
  guesses = [[subject.token_label(top[r, t, 0]) for t in range(len(ids))] for r in range(len(rows))]
  what = "next token" if kind != "bert" else "token at each position (MLM)"
  pictures.token_grid(guesses[::-1], top_p[::-1, :, 0], os.path.join(out_dir, "logit_lens.png"),
                      row_names=rows[::-1], col_labels=labels, xlabel="input token",
                      title=f"logit lens: each layer's top guess of the {what} (colour: its probability)")

  kl_sum, count = None, 0.0
  # a workdir: its validation text; a Hugging Face directory (no task): the text itself
  for batch in data_lib.eval_batches(subject, max_batches, None if subject.config is not None else text):
    for b in _lens_chunks(model, kind, params, batch):
      weights = data_lib.token_weights(kind, b)
      s, n = _mean_kl(model, kind, params, jax.tree.map(jnp.asarray, b), jnp.asarray(weights))
      kl_sum = np.asarray(s) if kl_sum is None else kl_sum + np.asarray(s)
      count += float(n)
  mean_kl = kl_sum / max(count, 1.0)
  pictures.curves(list(range(len(rows))), {"KL(final || layer)": mean_kl}, os.path.join(out_dir, "logit_lens_kl.png"),
                  xlabel="residual stream after (0 = embedding, l = layer l - 1)", ylabel="nats",
                  title=f"logit lens: KL from the final distribution, mean over {int(count)} validation tokens")
  numbers = {"tokens": labels, "layers": rows, "top_tokens": [[[subject.token_label(i) for i in top[r, t]]
                                                               for t in range(len(ids))] for r in range(len(rows))],
             "top_probs": top_p, "mean_kl": mean_kl, "kl_tokens": count}
  pictures.write_json(os.path.join(out_dir, "logit_lens.json"), numbers)
  lines = [f"logit lens over {len(rows) - 1} layers; mean KL(final || layer) on {int(count)} validation tokens:"]
  lines.append("  " + "  ".join(f"{r}: {k:.3f}" for r, k in zip(rows, mean_kl)))
  t = len(ids) - 1
  lines.append(f"  at the last token {labels[t]!r}: " + ", ".join(f"{r} -> {guesses[i][t]!r} ({top_p[i, t, 0]:.2f})"
                                                                  for i, r in enumerate(rows)))
  return {"summary": "\n".join(lines), **numbers}

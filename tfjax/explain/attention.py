"""``explain attention``: every layer x head's attention pattern on a text, a head summary table, and the explorer.

The patterns are recorded by the model's own attention modules in one jitted forward pass
(:func:`tfjax.explain.capture.run_with_cache`, paths ``*/attn/pattern`` and, in the translator's decoder,
``*/cross_attn/pattern``): ``[B, H, T, S]`` per layer. Shown as a grid of heatmaps (rows: layers, columns: heads;
query tokens down, key tokens across): the GPT's causal triangle is blank, BERT's padding keys (the text is padded
like a training batch) and the translator's source padding are blank with greyed labels.

Head summary (:func:`head_summary`), per head, averaged over the real query tokens:

* ``entropy``: ``-Σ_s p log p`` of the row (nats): low = the head looks at few tokens;
* ``previous_token``: the weight on the token just before the query (``s = t - 1``, for ``t >= 1``);
* ``next_token``: the weight on the token just after it (``s = t + 1``; 0 in a causal model). A BERT that reads its
  neighbours grows heads with high ``previous_token`` or ``next_token`` (docs/bert.md);
* ``first_token``: the weight on the first token (``s = 0``: BOS / [CLS] / the first character), a common "rest"
  position;
* ``diagonal``: the weight on the query's own position (``s = t``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import pictures
from tfjax.explain.capture import run_with_cache
from tfjax.explain.explorer import AttentionView, write_explorer
from tfjax.layers import masks as masks_lib

SUMMARY_KEYS = ("entropy", "previous_token", "next_token", "first_token", "diagonal")


@functools.partial(jax.jit, static_argnames=("model", "names", "method"))
def jit_run_with_cache(model, params, *args, names: tuple[str, ...], method: str | None = None, **kwargs):
  """:func:`run_with_cache` under ``jax.jit`` (``model`` and ``names`` static): ``(output, ActivationCache)``."""
  return run_with_cache(model, {"params": params}, *args, names=list(names), method=method, **kwargs)


@jax.jit
def head_summary(pattern: jnp.ndarray, query_valid: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Per-head statistics of attention patterns ``pattern [B, H, T, S]`` over the real queries ``query_valid [B, T]``.

  Returns ``{"entropy", "previous_token", "next_token", "first_token", "diagonal"}``, each ``[H]`` (see the module
  docstring). ``previous_token`` averages over queries ``t >= 1`` only, ``next_token`` over ``t + 1 < S`` only;
  ``diagonal`` and ``previous_token`` over ``t < S``.
  """
  pattern = pattern.astype(jnp.float32)
  _, _, t, s = pattern.shape
  qv = query_valid.astype(jnp.float32)[:, None, :]  # [B, 1, T]
  logp = jnp.log(jnp.where(pattern > 0, pattern, 1.0))
  row_entropy = -jnp.sum(pattern * logp, axis=-1)  # [B, H, T]
  q = jnp.arange(t)
  diag, prev, nxt = _at(pattern, q), _at(pattern, q - 1), _at(pattern, q + 1)

  def mean(x, weight):
    weight = jnp.broadcast_to(weight, x.shape)
    return jnp.sum(x * weight, axis=(0, 2)) / jnp.maximum(jnp.sum(weight, axis=(0, 2)), 1.0)

  in_range = (q < s).astype(jnp.float32)
  return {"entropy": mean(row_entropy, qv),
          "previous_token": mean(prev, qv * ((q >= 1) & (q - 1 < s)).astype(jnp.float32)),
          "next_token": mean(nxt, qv * (q + 1 < s).astype(jnp.float32)),
          "first_token": mean(pattern[..., 0], qv),
          "diagonal": mean(diag, qv * in_range)}


def _at(pattern: jnp.ndarray, key_index: jnp.ndarray) -> jnp.ndarray:
  """``pattern[b, h, t, key_index[t]]`` ``[B, H, T]`` (0 where the index is outside ``[0, S)``)."""
  s = pattern.shape[-1]
  idx = jnp.clip(key_index, 0, s - 1)
  picked = jnp.take_along_axis(pattern, jnp.broadcast_to(idx[None, None, :, None], pattern.shape[:3] + (1,)),
                               axis=-1)[..., 0]
  return jnp.where((key_index >= 0) & (key_index < s), picked, 0.0)


def _pad(ids: np.ndarray, n: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  valid = np.concatenate([np.ones(len(ids), bool), np.zeros(n, bool)])
  return np.concatenate([ids, np.full(n, pad_id, np.int32)]).astype(np.int32), valid


def collect_views(subject, text: str | None = None, target: str | None = None, pad: int = 3) -> list[dict[str, Any]]:
  """The attention patterns of ``subject`` on a text, one dict per attention of the model:
  ``{"name", "stack", "kind": "self"|"cross", "pattern" [L, H, T, S], "query_ids", "key_ids", "query_valid" [T],
  "key_valid" [S], "valid" [T, S]}`` (numpy).

  GPT: ``text`` (self-attention). BERT: ``text`` padded by ``pad`` [PAD] tokens (within the context window), so
  that the padding is visibly excluded. Translator: the source ``text`` (padded likewise) and the ``target``
  (default: the model's own greedy translation): encoder self-, decoder self- and cross-attention.
  """
  model, params, kind = subject.model, subject.params, subject.kind
  if kind == "gpt":
    ids = subject.text_ids(text)
    _, cache = jit_run_with_cache(model, params, jnp.asarray(ids[None]), names=("attn/pattern",))
    valid = np.asarray(masks_lib.causal_mask(len(ids)))[0, 0]
    ones = np.ones(len(ids), bool)
    return [dict(name="self-attention (causal)", stack="decoder", kind="self", query_ids=ids, key_ids=ids,
                 query_valid=ones, key_valid=ones, valid=valid,
                 pattern=np.asarray(cache.stack("attn/pattern"))[:, 0])]
  if kind == "bert":
    ids = subject.text_ids(text)
    pad_id = subject.tokenizer.token_to_id("[PAD]")
    ids, real = _pad(ids, min(pad, subject.cfg.max_len - len(ids)), 0 if pad_id is None else pad_id)
    _, cache = jit_run_with_cache(model, params, jnp.asarray(ids[None]), jnp.asarray(real[None]),
                                  names=("attn/pattern",))
    return [dict(name="self-attention (bidirectional)", stack="encoder", kind="self", query_ids=ids, key_ids=ids,
                 query_valid=real, key_valid=real, valid=real[:, None] & real[None, :],
                 pattern=np.asarray(cache.stack("attn/pattern"))[:, 0])]
  # the translator
  from tfjax.tasks import translate as tr
  src = subject.text_ids(text, source=True)
  tgt = subject.target_ids(src, target)
  src, src_real = _pad(src, min(pad, subject.cfg.max_len - len(src)), tr.PAD_ID)
  _, cache = jit_run_with_cache(model, params, jnp.asarray(src[None]), jnp.asarray(src_real[None]),
                                jnp.asarray(tgt[None]), names=("attn/pattern", "cross_attn/pattern"))
  tgt_real = np.ones(len(tgt), bool)
  causal = np.asarray(masks_lib.causal_mask(len(tgt)))[0, 0]
  return [
      dict(name="encoder self-attention (source)", stack="encoder", kind="self", query_ids=src, key_ids=src,
           query_valid=src_real, key_valid=src_real, valid=src_real[:, None] & src_real[None, :],
           pattern=np.asarray(cache.stack("attn/pattern", "encoder"))[:, 0]),
      dict(name="decoder self-attention (target, causal)", stack="decoder", kind="self", query_ids=tgt, key_ids=tgt,
           query_valid=tgt_real, key_valid=tgt_real, valid=causal,
           pattern=np.asarray(cache.stack("attn/pattern", "decoder"))[:, 0]),
      dict(name="cross-attention (target -> source)", stack="decoder", kind="cross", query_ids=tgt, key_ids=src,
           query_valid=tgt_real, key_valid=src_real, valid=tgt_real[:, None] & src_real[None, :],
           pattern=np.asarray(cache.stack("cross_attn/pattern", "decoder"))[:, 0]),
  ]


def run(subject, out_dir: str, *, text: str | None = None, target: str | None = None) -> dict:
  """Writes, per attention of the model (``self``; translator: ``encoder``, ``decoder``, ``cross``),
  ``attention_<view>.png`` (layers x heads heatmaps), ``attention_heads_<view>.png`` (the head summary table),
  ``attention.json`` (patterns, tokens, summaries) and the explorer page ``attention_explorer.html``."""
  views = collect_views(subject, text, target)
  os.makedirs(out_dir, exist_ok=True)
  numbers, files, lines = {"kind": subject.kind, "views": []}, [], []
  explorer_views = []
  for v in views:
    tag = {"encoder self-attention (source)": "encoder", "decoder self-attention (target, causal)": "decoder",
           "cross-attention (target -> source)": "cross"}.get(v["name"], "self")
    q_labels, k_labels = subject.labels(v["query_ids"]), subject.labels(v["key_ids"])
    pattern = v["pattern"]  # [L, H, T, S]
    n_layers, n_heads = pattern.shape[:2]
    summary = jax.tree.map(np.asarray, jax.vmap(head_summary, in_axes=(0, None))(
        jnp.asarray(pattern[:, None]), jnp.asarray(v["query_valid"][None])))  # each [L, H]
    files.append(pictures.heatmap_grid(
        pattern, os.path.join(out_dir, f"attention_{tag}.png"), row_labels=q_labels, col_labels=k_labels,
        valid=v["valid"], row_valid=v["query_valid"], col_valid=v["key_valid"],
        grid_row_names=[f"layer {l}" for l in range(n_layers)], grid_col_names=[f"head {h}" for h in range(n_heads)],
        title=f"{v['name']}: attention pattern (rows: queries, columns: keys)",
        xlabel="key (source)" if v["kind"] == "cross" else "key", ylabel="query"))
    table = np.concatenate([summary[k] for k in SUMMARY_KEYS], axis=1)  # [L, 5H]
    files.append(pictures.heatmap(
        table, os.path.join(out_dir, f"attention_heads_{tag}.png"),
        row_labels=[f"layer {l}" for l in range(n_layers)],
        col_labels=[f"{k.replace('_token', '')} h{h}" for k in SUMMARY_KEYS for h in range(n_heads)],
        title=f"{v['name']}: head summary (entropy in nats; weights on previous / next / first / own token)",
        cmap="magma", annotate=True))
    numbers["views"].append({"name": v["name"], "stack": v["stack"], "kind": v["kind"], "query_tokens": q_labels,
                             "key_tokens": k_labels, "query_valid": v["query_valid"], "key_valid": v["key_valid"],
                             "pattern": pattern, "summary": summary})
    explorer_views.append(AttentionView(v["name"], pattern, q_labels, k_labels, v["valid"], v["query_valid"],
                                        v["key_valid"]))
    lines.append(f"{v['name']}: {n_layers} layers x {n_heads} heads over {len(q_labels)} x {len(k_labels)} tokens")
    for key in ("previous_token", "next_token", "first_token", "diagonal"):
      l, h = np.unravel_index(np.argmax(summary[key]), summary[key].shape)
      lines.append(f"  most {key.replace('_', '-')} head: layer {l} head {h} ({summary[key][l, h]:.2f})")
    l, h = np.unravel_index(np.argmin(summary["entropy"]), summary["entropy"].shape)
    lines.append(f"  sharpest head: layer {l} head {h} (entropy {summary['entropy'][l, h]:.2f} nats)")
  pictures.write_json(os.path.join(out_dir, "attention.json"), numbers)
  page = write_explorer(os.path.join(out_dir, "attention_explorer.html"), explorer_views,
                        title=f"attention explorer: {os.path.basename(os.path.normpath(subject.path))}",
                        subtitle=f"A {subject.kind} model.")
  files += [os.path.join(out_dir, "attention.json"), page]
  lines.append(f"explorer: {page}")
  return {"summary": "\n".join(lines), "files": files, **numbers}

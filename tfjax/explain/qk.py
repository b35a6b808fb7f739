"""``explain qk``: the notes' query/key story on real weights, for one head.

A query "asks" and a key "answers": the score of query token ``i`` on key token ``j`` is ``q_i · k_j / √Dh``. The
command shows, for a chosen head (``--layer``, ``--head``; default: the head with the highest previous-token score),

1. on a text: which query tokens attend most to which key tokens (the largest entries of the head's attention
   pattern, recorded by the model, :mod:`tfjax.explain.attention`);
2. the head's query-key matrix ``W_Q W_Kᵀ`` read through the token embeddings: for tokens ``a, b`` the score the
   head would give query token ``a`` on key token ``b`` if both were the residual stream, i.e.
   ``(norm(E_a) W_Q + b_Q) · (norm(E_b) W_K + b_K) / √Dh`` (times the model's ``attention_scale`` instead, when
   set) with ``norm`` the block's pre-attention norm (pre-LN models; post-LN models read the embeddings as they are),
   no positions (RoPE at offset 0). Exact for layer 0's token part; for deeper layers a reading of the weights, not
   of the model's residual stream.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import attention as attention_lib
from tfjax.explain import pictures
from tfjax.explain.capture import resolve_stack
from tfjax.layers.blocks import make_norm


@jax.jit
def _scores(x_NxD, w_q_DxE, b_q_E, w_k_DxE, b_k_E, scale):
  q, k = x_NxD @ w_q_DxE + b_q_E, x_NxD @ w_k_DxE + b_k_E
  return (q @ k.T) * scale


def embedding_qk(subject, layer: int, head: int, token_ids: np.ndarray) -> np.ndarray:
  """The head's query-key scores ``[N, N]`` between the embeddings of ``token_ids [N]`` (rows: queries, columns:
  keys); see the module docstring."""
  cfg, params = subject.cfg, subject.params
  layout = resolve_stack(subject.model)
  block = params[layout.name][f"block_{layer}"]  # a Subject's stacks are per layer (never scanned)
  attn = block["attn"]
  h, kv, dh = layout.num_heads, layout.num_kv_heads, layout.head_dim
  kernel = np.asarray(attn["qkv"]["kernel"], np.float32)  # [D, (H + 2K) Dh]
  bias = np.asarray(attn["qkv"]["bias"], np.float32) if "bias" in attn["qkv"] else np.zeros(kernel.shape[1],
                                                                                             np.float32)
  g = head // (h // kv)  # the key/value head this query head reads
  q_cols = slice(head * dh, (head + 1) * dh)
  k_cols = slice(h * dh + g * dh, h * dh + (g + 1) * dh)
  x = np.asarray(params["embed"]["embedding"], np.float32)[token_ids]
  if cfg.pre_ln:
    x = np.asarray(make_norm(cfg, "ln_attn").apply({"params": block["ln_attn"]}, jnp.asarray(x)))
  return np.asarray(_scores(jnp.asarray(x), kernel[:, q_cols], bias[q_cols], kernel[:, k_cols], bias[k_cols],
                            cfg.score_scale))


def run(subject, out_dir: str, *, layer: int | None = None, head: int | None = None, text: str | None = None,
        top_k: int = 10) -> dict:
  """Writes ``qk_pattern.png`` (the head's pattern on the text), ``qk_tokens.png`` (``W_Q W_Kᵀ`` on the text's distinct
  tokens) and ``qk.json`` (the top query -> key pairs of both)."""
  os.makedirs(out_dir, exist_ok=True)
  views = attention_lib.collect_views(subject, text)
  view = next(v for v in views if v["kind"] == "self" and v["stack"] == resolve_stack(subject.model).name)
  pattern = view["pattern"]  # [L, H, T, S]
  if layer is None or head is None:
    summary = jax.vmap(attention_lib.head_summary, in_axes=(0, None))(jnp.asarray(pattern[:, None]),
                                                                      jnp.asarray(view["query_valid"][None]))
    best = np.unravel_index(np.argmax(np.asarray(summary["previous_token"])), pattern.shape[:2])
    layer = int(best[0]) if layer is None else layer
    head = int(best[1]) if head is None else head
  subject.check_layer(layer, pattern.shape[0])
  subject.check_head(head)
  p = pattern[layer, head]
  q_labels, k_labels = subject.labels(view["query_ids"]), subject.labels(view["key_ids"])
  valid = view["valid"] & view["query_valid"][:, None] & view["key_valid"][None, :]
  flat = np.where(valid, p, -1.0).reshape(-1)
  pairs = []
  for idx in np.argsort(-flat)[:top_k]:
    i, j = divmod(int(idx), p.shape[1])
    pairs.append({"query": q_labels[i], "query_pos": i, "key": k_labels[j], "key_pos": j, "weight": float(p[i, j])})

  ids = np.asarray(view["query_ids"])[view["query_valid"]]
  distinct = np.array(list(dict.fromkeys(ids.tolist()))[:40], np.int32)
  scores = embedding_qk(subject, layer, head, distinct)
  labels = subject.labels(distinct)
  order = np.argsort(-scores.reshape(-1))[:top_k]
  token_pairs = [{"query": labels[i // len(distinct)], "key": labels[i % len(distinct)],
                  "score": float(scores.reshape(-1)[i])} for i in order]
  name = f"layer {layer} head {head}"
  pictures.heatmap_grid(p[None, None], os.path.join(out_dir, "qk_pattern.png"), row_labels=q_labels,
                        col_labels=k_labels, valid=valid, row_valid=view["query_valid"], col_valid=view["key_valid"],
                        title=f"{name}: attention pattern on the text")
  pictures.heatmap(scores, os.path.join(out_dir, "qk_tokens.png"), row_labels=labels, col_labels=labels,
                   title=f"{name}: W_Q W_K^T through the token embeddings (query token x key token)",
                   xlabel="key token", ylabel="query token", center=True)
  numbers = {"layer": layer, "head": head, "text_pairs": pairs, "tokens": labels, "token_scores": scores,
             "token_pairs": token_pairs}
  pictures.write_json(os.path.join(out_dir, "qk.json"), numbers)
  lines = [f"qk: {name}"]
  lines.append("  on the text, strongest query -> key: " + ", ".join(
      f"{x['query']}@{x['query_pos']}->{x['key']}@{x['key_pos']} {x['weight']:.2f}" for x in pairs[:5]))
  lines.append("  W_Q W_K^T on tokens, strongest query -> key: " + ", ".join(
      f"{x['query']}->{x['key']} {x['score']:.2f}" for x in token_pairs[:5]))
  return {"summary": "\n".join(lines), **numbers}

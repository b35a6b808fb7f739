"""``explain positions``: how a trained model knows where each token is.

The embedding of a token carries its identity and its position in the text: learned or sinusoidal models add a
position vector ``P_t`` to the token's row; RoPE models add nothing and rotate each query and key by its position
inside attention instead. Three views, per stack (GPT: ``decoder``; BERT: ``encoder``; a translator: both):

* **the position vectors** ``P [T, D]`` (learned or sinusoidal; none with RoPE, :func:`position_vectors`): the
  cosine between ``P_t`` and ``P_{t+k}`` averaged over ``t`` (how fast two positions stop looking alike), the cosine
  matrix, the top principal components of ``P`` against ``t``, and ``|P_t|`` beside the token rows' norms;
* **where the position is in the residual stream**: a linear probe (ridge regression ``resid -> t``) after the
  embedding and after every layer, fitted on half the validation rows and scored on the other half (``r2``, and the
  ``rmse`` in positions), from exact sufficient statistics (:func:`probe_from_statistics`). A RoPE model's input
  holds no position at all (a causal one can still learn it later, by counting);
* **attention by distance**: each head's mean attention weight on the key ``k`` positions before the query
  (``k < 0``: after it, in a bidirectional stack), ``profile [L, H, 2K + 1]`` for ``k = -K .. K``, and its mean
  attended distance ``E|t - s|`` beside uniform attention over the same visible keys (``uniform_distance``): a
  previous-token head puts its weight at ``k = 1``, a head that reads content far away has a large distance.

:func:`run` is ``./launch.sh explain positions WORKDIR``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.capture import model_stacks, run_with_cache
from tfjax.layers.embeddings import sinusoidal_table

HIGHEST = jax.lax.Precision.HIGHEST


def position_table(model, params, stack: str) -> jax.Array | None:
  """``[max_len, D]`` float32: what the embedding of ``stack`` adds to the token rows at each position (learned or
  sinusoidal), or None (RoPE, no positions). Traceable (``params`` may be jit arguments). A translator's learned
  tables are one per side (``encoder`` reads the source table, ``decoder`` the target one); BART-style offsets
  (``position_offset``) are removed."""
  from tfjax.models.transformer import EncoderDecoder
  cfg = model.cfg
  translator = isinstance(model, EncoderDecoder)
  if cfg.positional == "sinusoidal":
    layout = getattr(cfg, "sinusoidal_layout", "interleaved") if translator else "interleaved"
    return jnp.asarray(sinusoidal_table(cfg.max_len, cfg.emb_dim, layout=layout), jnp.float32)
  if cfg.positional != "learned":
    return None
  if translator:
    name = "src_pos_embed" if stack == "encoder" else "tgt_pos_embed"
    table = jnp.asarray(params[name]["embedding"], jnp.float32)
    return table[cfg.position_offset:cfg.position_offset + cfg.max_len]
  return jnp.asarray(params["pos_embed"]["embedding"], jnp.float32)


def position_vectors(subject) -> dict[str, np.ndarray]:
  """Stack name -> its position vectors ``[max_len, D]`` float32 (:func:`position_table` of each stack of the
  subject's model); ``{}`` for RoPE or no positions."""
  tables = {stack: position_table(subject.model, subject.params, stack) for stack in model_stacks(subject.model)}
  return {stack: np.asarray(t) for stack, t in tables.items() if t is not None}


def vector_statistics(p_TxD: np.ndarray, num_components: int = 3) -> dict[str, np.ndarray]:
  """``cos_by_offset [T]`` (``k -> mean_t cos(P_t, P_{t+k})``), ``cosine [T, T]``, ``norms [T]``, and the top
  ``num_components`` principal components of the centred ``P``: ``components [T, C]`` (each position's coordinate)
  and ``explained [C]`` (their share of the variance)."""
  p = np.asarray(p_TxD, np.float64)
  norms = np.linalg.norm(p, axis=-1)
  unit = p / np.where(norms > 0, norms, 1.0)[:, None]
  cos = unit @ unit.T
  t = len(p)
  cos_by_offset = np.array([np.mean(np.diagonal(cos, offset=k)) for k in range(t)])
  centred = p - p.mean(axis=0)
  u, s, _ = np.linalg.svd(centred, full_matrices=False)
  c = min(num_components, len(s))
  var = s ** 2
  return {"cos_by_offset": cos_by_offset, "cosine": cos, "norms": norms,
          "components": u[:, :c] * s[:c], "explained": var[:c] / max(var.sum(), 1e-30)}


def _is_causal(kind: str, stack: str) -> bool:
  """Whether the stack's self-attention is causal (a GPT's, a translator's decoder)."""
  return kind == "gpt" or stack == "decoder"


def _probe_terms(resid_LxBxTxD: jax.Array, weight_BxT: jax.Array) -> dict[str, jax.Array]:
  """Sufficient statistics of the regression of the position ``t`` on ``[resid, 1]`` at every layer point, over
  the positions ``weight`` selects: ``xtx [L, D+1, D+1]``, ``xty [L, D+1]``, ``yy``, ``y``, ``n``."""
  num_points, b, t, _ = resid_LxBxTxD.shape
  x = jnp.concatenate([resid_LxBxTxD.astype(jnp.float32), jnp.ones((num_points, b, t, 1), jnp.float32)], -1)
  w = weight_BxT.astype(jnp.float32)
  y = jnp.broadcast_to(jnp.arange(t, dtype=jnp.float32), (b, t))
  xw = x * w[None, :, :, None]
  return {"xtx": jnp.einsum("lbtd,lbte->lde", xw, x, precision=HIGHEST),
          "xty": jnp.einsum("lbtd,bt->ld", xw, y, precision=HIGHEST),
          "yy": jnp.sum(w * y * y), "y": jnp.sum(w * y), "n": jnp.sum(w)}


def _distance_terms(pattern_LxBxHxTxS: jax.Array, valid_BxT: jax.Array, causal: bool,
                    max_distance: int) -> dict[str, jax.Array]:
  """Sums and counts of the attention weight at each offset ``k = t - s`` in ``-K .. K``, of ``p * |t - s|`` per
  query, and of the same under uniform attention over the visible keys (for ``uniform_distance``)."""
  p = pattern_LxBxHxTxS.astype(jnp.float32)
  _, _, _, t, s = p.shape
  v = valid_BxT
  sums, counts = [], []
  for k in range(-max_distance, max_distance + 1):
    if abs(k) >= t:
      sums.append(jnp.zeros(p.shape[:1] + p.shape[2:3]))
      counts.append(jnp.zeros(()))
      continue
    diag = jnp.diagonal(p, offset=-k, axis1=-2, axis2=-1)  # [L, B, H, T - |k|]: query t, key t - k
    w = (v[:, k:] & v[:, :t - k]) if k >= 0 else (v[:, :t + k] & v[:, -k:])
    wf = w.astype(jnp.float32)
    sums.append(jnp.einsum("lbhi,bi->lh", diag, wf, precision=HIGHEST))
    counts.append(jnp.sum(wf))
  dist = jnp.abs(jnp.arange(t)[:, None] - jnp.arange(s)[None, :]).astype(jnp.float32)
  qf = v.astype(jnp.float32)
  visible = v[:, :, None] & v[:, None, :]
  if causal:
    visible = visible & (jnp.arange(t)[:, None] >= jnp.arange(s)[None, :])
  vis = visible.astype(jnp.float32)
  uniform = jnp.sum(vis * dist, -1) / jnp.maximum(jnp.sum(vis, -1), 1.0)  # [B, T]
  return {"sums": jnp.stack(sums, -1), "counts": jnp.stack(counts),
          "distance": jnp.einsum("lbhts,ts,bt->lh", p, dist, qf, precision=HIGHEST),
          "uniform": jnp.sum(uniform * qf), "queries": jnp.sum(qf)}


@functools.partial(jax.jit, static_argnames=("model", "kind", "max_distance"))
def _chunk_terms(model, kind, params, batch, fit_rows_B, max_distance: int):
  args, kwargs = data_lib.model_inputs(kind, batch)
  kwargs.pop("masked_positions", None)
  _, cache = run_with_cache(model, {"params": params}, *args, names=["block_0/resid_pre", "resid_post",
                                                                    "attn/pattern"], **kwargs)
  out = {}
  fit = fit_rows_B[:, None]
  for stack, valid in data_lib.valid_by_stack(kind, batch).items():
    resid = cache.accumulated_resid(stack)
    causal = _is_causal(kind, stack)
    out[stack] = {"fit": _probe_terms(resid, valid & fit), "test": _probe_terms(resid, valid & ~fit),
                  "attention": _distance_terms(cache.stack("attn/pattern", stack), valid, causal, max_distance)}
  return out


def probe_from_statistics(fit: dict, test: dict, ridge: float = 1e-4) -> dict[str, np.ndarray]:
  """Per layer point: ridge-fit ``w = (X'X + λI)^-1 X'y`` on ``fit`` (the bias unpenalised, ``λ = ridge`` times the
  mean diagonal of ``X'X``) and score it on ``test``: ``r2 [L]`` (``1 - SSE / SST``) and ``rmse [L]`` (positions).
  Both from the sufficient statistics of :func:`_probe_terms`, in float64."""
  xtx, xty = np.asarray(fit["xtx"], np.float64), np.asarray(fit["xty"], np.float64)
  num_points, d1, _ = xtx.shape
  penalty = np.eye(d1)
  penalty[-1, -1] = 0.0
  lam = ridge * np.trace(xtx[:, :-1, :-1], axis1=1, axis2=2) / max(d1 - 1, 1)
  w = np.stack([np.linalg.solve(xtx[l] + lam[l] * penalty, xty[l]) for l in range(num_points)])
  txx, txy = np.asarray(test["xtx"], np.float64), np.asarray(test["xty"], np.float64)
  n, ysum, yy = float(test["n"]), float(test["y"]), float(test["yy"])
  sse = yy - 2 * np.einsum("ld,ld->l", w, txy) + np.einsum("ld,lde,le->l", w, txx, w)
  sst = yy - ysum ** 2 / max(n, 1.0)
  sse = np.maximum(sse, 0.0)
  return {"r2": 1.0 - sse / max(sst, 1e-30), "rmse": np.sqrt(sse / max(n, 1.0))}


def _fit_half(batch: dict, first_row: int) -> np.ndarray:
  """``[B]`` bool: the rows the probe is fitted on, every other row (counted across batches), so that every
  position is seen in the fit, with other tokens at it than in the rows it is scored on."""
  return (first_row + np.arange(len(batch["inputs"]))) % 2 == 0


def _chunk_row_bytes(model, kind, params, batch) -> int:
  """Bytes one row costs inside :func:`_chunk_terms` (its residual streams and attention patterns, float32)."""
  def activations(b):
    args, kwargs = data_lib.model_inputs(kind, b)
    kwargs.pop("masked_positions", None)
    return run_with_cache(model, {"params": params}, *args, names=["resid_post", "attn/pattern"], **kwargs)[1]
  return data_lib.output_row_bytes(activations, batch)


def collect(subject, *, max_batches: int = 4, text: str | None = None, target: str | None = None,
            max_distance: int = 16) -> dict[str, dict[str, Any]]:
  """The probe and the attention-by-distance numbers of every stack, on ``subject``'s validation batches (or the
  text): stack -> ``{"probe": {"r2", "rmse"} (None on a single text: the probe needs rows to fit and rows to score
  it on), "causal", "profile" [L, H, 2K+1], "offsets", "distance" [L, H],
  "uniform_distance", "positions_fitted", "positions_scored"}``."""
  model, params, kind = subject.model, subject.params, subject.kind
  batches = data_lib.eval_batches(subject, max_batches, text, target)
  totals, first_row = None, 0
  for batch in batches:
    fit = _fit_half(batch, first_row)
    first_row += len(batch["inputs"])
    full = dict(batch, fit=fit)
    row_bytes = _chunk_row_bytes(model, kind, params, batch)
    for chunk in data_lib.row_chunks(full, row_bytes):
      chunk = dict(chunk)
      chunk_fit = chunk.pop("fit")
      terms = jax.device_get(_chunk_terms(model, kind, params, chunk, jnp.asarray(chunk_fit), max_distance))
      terms = jax.tree.map(lambda a: np.asarray(a, np.float64), terms)
      totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
  out = {}
  for stack, t in totals.items():
    att = t["attention"]
    probe = probe_from_statistics(t["fit"], t["test"]) if t["test"]["n"] >= 2 else None  # one row: none
    out[stack] = {"probe": probe, "causal": _is_causal(kind, stack),
                  "profile": att["sums"] / np.maximum(att["counts"], 1.0),
                  "offsets": np.arange(-max_distance, max_distance + 1),
                  "distance": att["distance"] / max(att["queries"], 1.0),
                  "uniform_distance": float(att["uniform"] / max(att["queries"], 1.0)),
                  "positions_fitted": int(t["fit"]["n"]), "positions_scored": int(t["test"]["n"])}
  return out


def plot(vectors: dict[str, dict], stacks: dict[str, dict], path: str, *, max_offset: int = 64) -> str:
  """Per stack one row: the position vectors' cosine by offset and top components (when it has vectors), the
  probe's R² per layer point, and every head's attention by distance."""
  plt = pictures._plt()
  names = list(stacks)
  fig, axes = plt.subplots(len(names), 4, figsize=(17, 3.6 * len(names)), squeeze=False)
  for row, stack in zip(axes, names):
    v, s = vectors.get(stack), stacks[stack]
    if v is not None:
      k = min(max_offset, len(v["cos_by_offset"]))
      row[0].plot(np.arange(k), v["cos_by_offset"][:k], "C0")
      row[0].axhline(0.0, color="k", lw=0.5)
      row[0].set_title(f"{stack}: cos(P_t, P_t+k), mean over t", fontsize=9)
      row[0].set_xlabel("offset k (positions)", fontsize=8)
      for c in range(v["components"].shape[1]):
        row[1].plot(v["components"][:, c], lw=0.9, label=f"PC{c + 1} ({v['explained'][c]:.0%})")
      row[1].set_title(f"{stack}: top principal components of P", fontsize=9)
      row[1].set_xlabel("position t", fontsize=8)
      row[1].legend(fontsize=7)
    else:
      for ax in row[:2]:
        ax.axis("off")
      row[0].text(0.0, 0.5, f"{stack}: no position vectors\n(RoPE: queries and keys are rotated\ninside attention)",
                  fontsize=10)
    if s["probe"] is not None:
      r2 = s["probe"]["r2"]
      labels = ["embed"] + [str(l) for l in range(len(r2) - 1)]
      row[2].bar(labels, r2, color="C2")
      row[2].set_ylim(min(0.0, float(np.min(r2))), 1.0)
      row[2].set_title(f"{stack}: probe for the position, held-out R²", fontsize=9)
      row[2].set_xlabel("after layer", fontsize=8)
    else:
      row[2].axis("off")
      row[2].text(0.0, 0.5, "no position probe on a single text\n(it needs validation rows:\na workdir without --text)",
                  fontsize=10)
    keep = s["offsets"] >= 0 if s["causal"] else np.ones(len(s["offsets"]), bool)  # causal: nothing at k < 0
    prof, offsets = s["profile"][..., keep], s["offsets"][keep]
    num_layers, heads, _ = prof.shape
    im = row[3].imshow(prof.reshape(num_layers * heads, -1), aspect="auto", cmap="viridis",
                       extent=(offsets[0] - 0.5, offsets[-1] + 0.5, num_layers * heads - 0.5, -0.5))
    row[3].set_yticks(range(0, num_layers * heads, heads), [f"L{l}" for l in range(num_layers)], fontsize=7)
    row[3].set_title(f"{stack}: attention on the key k back (rows: layer x head)", fontsize=9)
    row[3].set_xlabel("k = query position - key position", fontsize=8)
    fig.colorbar(im, ax=row[3])
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def _summary(subject, vectors: dict, stacks: dict) -> str:
  cfg = subject.cfg
  lines = [f"positions in {subject.path}: {cfg.positional} positions, context window {cfg.max_len}"]
  token_norm = float(np.mean(np.linalg.norm(np.asarray(subject.params["embed"]["embedding"], np.float32), axis=-1)))
  token_norm *= cfg.emb_dim ** 0.5 if cfg.embed_scale else 1.0
  for stack, s in stacks.items():
    v = vectors.get(stack)
    if v is not None:
      offsets = [k for k in (1, 2, 4, 8, 16, 64, 256) if k < len(v["cos_by_offset"])]
      lines.append(f"  {stack} position vectors: |P_t| {np.mean(v['norms']):.3f} (token rows {token_norm:.3f}); "
                   "cos(P_t, P_t+k): " + ", ".join(f"k={k} {v['cos_by_offset'][k]:+.2f}" for k in offsets))
    probe = s["probe"]
    if probe is None:
      lines.append(f"  {stack} linear probe for t: none on a single text (it needs validation rows: "
                   "a workdir without --text)")
    else:
      points = ["embed"] + [f"L{l}" for l in range(len(probe["r2"]) - 1)]
      lines.append(f"  {stack} linear probe for t (held-out R², RMSE in positions; {s['positions_fitted']} fitted, "
                   f"{s['positions_scored']} scored): " + "  ".join(
                       f"{p} {r:.3f} ({e:.1f})" for p, r, e in zip(points, probe["r2"], probe["rmse"])))
    zero = int(np.where(s["offsets"] == 0)[0][0])
    lines.append(f"  {stack} heads (mean attended distance; uniform attention {s['uniform_distance']:.1f}; "
                 "weight on k = 0 / 1 / 2 positions back):")
    for l, layer in enumerate(s["distance"]):
      lines.append(f"    layer {l}: " + "  ".join(
          f"h{h} {d:5.1f} [{s['profile'][l, h, zero]:.2f} {s['profile'][l, h, zero + 1]:.2f} "
          f"{s['profile'][l, h, zero + 2]:.2f}]" for h, d in enumerate(layer)))
  return "\n".join(lines)


def run(subject, out_dir: str, *, max_batches: int = 4, text: str | None = None, target: str | None = None,
        max_distance: int = 16) -> dict:
  """Writes ``positions.png`` and ``positions.json`` (every number); returns them with the printed summary."""
  os.makedirs(out_dir, exist_ok=True)
  if max_distance < 2:
    from tfjax.explain.subjects import SubjectError
    raise SubjectError(f"--max_distance must be at least 2, got {max_distance}")
  vectors = {stack: vector_statistics(p) for stack, p in position_vectors(subject).items()}
  stacks = collect(subject, max_batches=max_batches, text=text, target=target, max_distance=max_distance)
  files = {"picture": plot(vectors, stacks, os.path.join(out_dir, "positions.png"))}
  out = {"summary": _summary(subject, vectors, stacks), "positional": subject.cfg.positional,
         "vectors": {k: {n: x for n, x in v.items() if n != "cosine"} for k, v in vectors.items()},
         "stacks": stacks, "files": files}
  files["json"] = pictures.write_json(os.path.join(out_dir, "positions.json"), out)
  return out

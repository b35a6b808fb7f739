"""Composition: how a later head reads what an earlier head wrote (Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits").

A head reads the residual stream three times, for its queries, its keys and its values, and what an earlier head
wrote is part of that stream. A query can only find a key by what was written into the key's stream: an induction
head's query for the current token finds the key whose *previous* token matches because a previous-token head wrote
"the token before me" there (K-composition). Two views, for a sender head ``(l, h)``, a receiver head ``(l2, h2)``
with ``l2 > l``, and each way ``q``, ``k``, ``v`` the receiver reads:

* **weights** (:func:`composition_scores`): the sender's ``OV = N W_V W_O`` ``[D, D]`` (what it writes for each stream
  vector it reads; ``N`` is the linear part of the block's pre-attention norm: its scale, and for LayerNorm the
  centring) against the receiver's ``QK = (N W_Q)(N W_K)ᵀ`` and ``OV``:
  ``q: ‖OV_s QK_r‖ / (‖OV_s‖ ‖QK_r‖)``, ``k: ‖OV_s QK_rᵀ‖ / (…)``, ``v: ‖OV_s OV_r‖ / (…)`` (Frobenius norms). It is
  large when the receiver reads the directions the sender writes and 0 when it ignores them; random matrices of the
  same shapes score :func:`random_baseline`. A reading of the weights: RoPE's rotation, the norm's ``1 / σ`` and the
  biases are left out.
* **causal** (:func:`path_ablation`, path patching): the change of a metric when only the receiver's queries (or
  keys, or values) are computed without the sender (a head, or a block's MLP), everything else clean. A first run
  zeroes the sender and, with ``routes="direct"``, holds every other head and every MLP at its clean output, so the
  stream each later block reads is the clean one minus what the sender wrote into it; the receiver's ``attn/q``
  (``k``, ``v``) recorded there is patched into a clean run. ``routes="all"`` lets the heads and MLPs in between
  react (the sender's effect through every route to the receiver's input).

``./launch.sh explain composition WORKDIR`` (:func:`run`) draws both for every pair of a GPT; ``explain induction``
uses them on its induction heads.

Both take a model's stack of self-attention blocks (GPT's ``decoder``; BERT's ``encoder``). Post-LN blocks read the
stream unnormalised (``N = I``), and their stream is not a sum of the heads' writes: direct routes need pre-LN.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.capture import per_layer, resolve_stack, run_with_cache
from tfjax.explain.heads import head_masks_tree
from tfjax.explain.interventions import intervention, interventions_from_paths, run_with_interventions
from tfjax.explain.subjects import SubjectError
from tfjax.tasks.word2vec_eval import spearman

WAYS = ("q", "k", "v")
WAY_NAMES = {"q": "queries", "k": "keys", "v": "values"}
HIGHEST = jax.lax.Precision.HIGHEST


def _read_norm(cfg, block: dict, width: int) -> jnp.ndarray:
  """``N [D, D]``: the linear part of the norm a pre-LN block reads its attention input through (``I`` post-LN)."""
  if not cfg.pre_ln:
    return jnp.eye(width, dtype=jnp.float32)
  n = jnp.diag(jnp.asarray(block["ln_attn"]["scale"], jnp.float32))
  if cfg.norm != "rmsnorm":  # LayerNorm subtracts the mean first: x C with C = I - 11ᵀ/D
    n = (jnp.eye(width, dtype=jnp.float32) - 1.0 / width) @ n
  return n


def head_matrices(model, params, stack: str | None = None) -> dict[str, jnp.ndarray]:
  """Each head's projections with its read norm folded in (float32): ``w_q``, ``w_k``, ``w_v`` ``[L, H, D, Dh]``
  (keys and values repeated for the query heads that share them) and ``w_o`` ``[L, H, Dh, D]`` (its rows of
  ``out``). A scanned stack is read as its per-layer twin (``explain.per_layer``)."""
  model, variables = per_layer(model, {"params": params})
  params = variables["params"]
  layout = resolve_stack(model, stack)
  cfg = model.cfg
  heads, kv, dh = layout.num_heads, layout.num_kv_heads, layout.head_dim
  out = {name: [] for name in ("w_q", "w_k", "w_v", "w_o")}
  for l in range(layout.num_layers):
    block = params[layout.name][f"block_{l}"]
    kernel = jnp.asarray(block["attn"]["qkv"]["kernel"], jnp.float32)  # [D, (H + 2K) Dh]
    width = kernel.shape[0]
    kernel = _read_norm(cfg, block, width) @ kernel
    q, k, v = jnp.split(kernel, [heads * dh, (heads + kv) * dh], axis=-1)
    out["w_q"].append(q.reshape(width, heads, dh).transpose(1, 0, 2))
    out["w_k"].append(jnp.repeat(k.reshape(width, kv, dh).transpose(1, 0, 2), heads // kv, axis=0))
    out["w_v"].append(jnp.repeat(v.reshape(width, kv, dh).transpose(1, 0, 2), heads // kv, axis=0))
    out["w_o"].append(jnp.asarray(block["attn"]["out"]["kernel"], jnp.float32).reshape(heads, dh, width))
  return {name: jnp.stack(mats) for name, mats in out.items()}


def _score(v_DxE, o_ExD, a_DxE, b_DxE):
  """``‖V O A Bᵀ‖ / (‖V O‖ ‖A Bᵀ‖)`` for one sender ``V O`` and one receiver ``A Bᵀ``, through ``[Dh, Dh]`` Gram
  matrices (never forming a ``[D, D]`` product)."""
  ein = functools.partial(jnp.einsum, precision=HIGHEST)
  g, h, m = ein("de,df->ef", v_DxE, v_DxE), ein("de,df->ef", b_DxE, b_DxE), ein("ed,df->ef", o_ExD, a_DxE)
  num = ein("ab,ac,cb->", m, ein("ab,bc->ac", g, m), h)  # tr(Mᵀ G M H) = ‖V M Bᵀ‖²
  left = ein("ab,bd,ad->", g, o_ExD, o_ExD)  # tr(G O Oᵀ) = ‖V O‖²
  right = ein("ab,ab->", ein("de,df->ef", a_DxE, a_DxE), h)  # tr(AᵀA BᵀB) = ‖A Bᵀ‖²
  return jnp.sqrt(jnp.maximum(num, 0.0) / (left * right))


# [S, R]: every sender against every receiver
_scores = jax.jit(jax.vmap(jax.vmap(_score, (None, None, 0, 0)), (0, 0, None, None)))


def _receiver_factors(mats: dict, way: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(A, B)`` with the receiver's matrix ``A Bᵀ``: ``QK`` (q), ``QKᵀ`` (k), ``OV`` (v); each ``[L, H, D, Dh]``."""
  if way == "q":
    return mats["w_q"], mats["w_k"]
  if way == "k":
    return mats["w_k"], mats["w_q"]
  return mats["w_v"], jnp.swapaxes(mats["w_o"], -1, -2)


def composition_scores(model, params, stack: str | None = None) -> dict[str, np.ndarray]:
  """``q``, ``k``, ``v`` ``[L, H, L, H]``: the composition score of sender ``[l, h]`` into receiver ``[l2, h2]``
  (module docstring), NaN unless ``l2 > l``."""
  mats = head_matrices(model, params, stack)
  num_layers, heads, width, dh = mats["w_q"].shape
  flat = lambda x: x.reshape(num_layers * heads, *x.shape[2:])  # noqa: E731
  later = np.arange(num_layers)[None, None, :, None] > np.arange(num_layers)[:, None, None, None]
  out = {}
  for way in WAYS:
    a, b = _receiver_factors(mats, way)
    s = np.asarray(_scores(flat(mats["w_v"]), flat(mats["w_o"]), flat(a), flat(b)), np.float64)
    s = s.reshape(num_layers, heads, num_layers, heads)
    out[way] = np.where(np.broadcast_to(later, s.shape), s, np.nan)
  return out


def random_baseline(width: int, head_dim: int, draws: int = 64, seed: int = 0) -> float:
  """The mean composition score of random heads: ``V, O, A, B`` with independent normal entries, ``D = width``,
  ``Dh = head_dim`` (a head's ``OV`` and ``QK`` are matrices of rank ``Dh`` in ``D`` dimensions)."""
  k = jax.random.split(jax.random.key(seed), 4)
  v = jax.random.normal(k[0], (draws, width, head_dim))
  o = jax.random.normal(k[1], (draws, head_dim, width))
  a = jax.random.normal(k[2], (draws, width, head_dim))
  b = jax.random.normal(k[3], (draws, width, head_dim))
  return float(np.mean(jax.jit(jax.vmap(_score))(v, o, a, b)))


READ = tuple(f"attn/{w}" for w in WAYS)
WRITE = ("attn/z", "mlp_out")


@functools.partial(jax.jit, static_argnames=("model", "stack", "names"))
def _record(model, variables, tree, ids, stack, names):
  """Every block's ``names`` (``attn/q``: ``[L, B, T, H, Dh]``, ...) in a run with ``tree``'s interventions."""
  layout = resolve_stack(model, stack)
  _, cache = run_with_cache(model, {**variables, "interventions": tree}, ids,
                            names=[f"{layout.name}/block_*/{n}" for n in names])
  return {n: cache.stack(n, layout.name) for n in names}


MLP = "mlp"  # a sender ``(layer, MLP)``: that block's MLP instead of a head


def _without_sender(layout, clean: dict, layer: int, head: int | str, routes: str) -> dict:
  """The interventions of the run without sender ``(layer, head)`` (``head`` may be :data:`MLP`): its ``z`` (or
  ``mlp_out``) zeroed; with ``routes="direct"`` every other head's ``z`` and block's ``mlp_out`` held at ``clean``'s.
  One tree structure for every sender."""
  leaves = {}
  for l in range(layout.num_layers):
    z_mask = np.zeros((1, 1, layout.num_heads, 1), bool)
    if l == layer and head != MLP:
      z_mask[0, 0, head, 0] = True
    mlp_mask = np.full((1, 1, 1), l == layer and head == MLP)
    if routes == "all":
      z, mlp = jnp.zeros(()), jnp.zeros(())
    else:
      z, mlp = jnp.where(z_mask, 0.0, clean["attn/z"][l]), jnp.where(mlp_mask, 0.0, clean["mlp_out"][l])
      z_mask, mlp_mask = np.ones_like(z_mask), np.ones_like(mlp_mask)
    leaves[f"{layout.name}/block_{l}/attn/z"] = intervention(z_mask, z)
    leaves[f"{layout.name}/block_{l}/mlp_out"] = intervention(mlp_mask, mlp)
  return interventions_from_paths(leaves)


@functools.partial(jax.jit, static_argnames=("model", "metric", "names"))
def _measure(model, variables, tree, ids, layer, head, metric, names):
  """``metric(logits, ids, cache, layer, head)`` of a run with ``tree``'s interventions (``cache``: ``names``)."""
  if names:
    logits, cache = run_with_cache(model, {**variables, "interventions": tree}, ids, names=list(names))
  else:
    logits, cache = run_with_interventions(model, variables, tree, ids), None
  return metric(logits, ids, cache, layer, head)


def _patch_tree(layout, qkv: dict, layer: int | None, head: int | None, way: str | None) -> dict:
  """Patches receiver ``head`` of ``layer``'s ``way`` with ``qkv``'s values (``layer=None``: nothing). Every block and
  way has a leaf, so every choice shares one tree structure (and one compilation)."""
  leaves = {}
  for l in range(layout.num_layers):
    for w in WAYS:
      count = layout.num_heads if w == "q" else layout.num_kv_heads
      mask = np.zeros((1, 1, count, 1), bool)
      if l == layer and w == way:
        mask[0, 0, head if w == "q" else head // (layout.num_heads // layout.num_kv_heads), 0] = True
      leaves[f"{layout.name}/block_{l}/attn/{w}"] = intervention(mask, qkv[w][l])
  return interventions_from_paths(leaves)


def _check_heads(layout, heads: Sequence[tuple], what: str, mlps: bool = False) -> list[tuple]:
  out = []
  for l, h in heads:
    if mlps and h == MLP and 0 <= int(l) < layout.num_layers:
      out.append((int(l), MLP))
      continue
    if not (0 <= int(l) < layout.num_layers and h != MLP and 0 <= int(h) < layout.num_heads):
      raise ValueError(f"{what} ({l}, {h!r}) is out of range: layers 0..{layout.num_layers - 1}, heads "
                       f"0..{layout.num_heads - 1}" + (f" or {MLP!r}" if mlps else ""))
    out.append((int(l), int(h)))
  return out


def loss_metric(loss_fn: Callable[[jax.Array, jax.Array], jax.Array]):
  """A :func:`path_ablation` metric from ``loss_fn(logits, ids) -> scalar``: ``{"loss": loss_fn(logits, ids)}``."""
  return functools.partial(_loss_metric, loss_fn)


def _loss_metric(loss_fn, logits, ids, cache, layer, head):
  del cache, layer, head
  return {"loss": loss_fn(logits, ids)}


def path_ablation(model, variables: dict, ids: jax.Array, metric: Callable, receivers: Sequence[tuple[int, int]],
                  senders: Sequence[tuple] | None = None, routes: str = "direct",
                  names: Sequence[str] = (), stack: str | None = None) -> dict:
  """How much each receiver head needs each sender head through its queries, keys and values (module docstring).

  Args:
    model, variables: a GPT (or any model with a self-attention stack ``stack``) and its variables.
    ids: ``[B, T]`` token ids (the model's only input).
    metric: ``(logits, ids, cache, layer, head) -> {name: scalar}`` of a run, for receiver ``(layer, head)``
      (traced ints), with ``cache`` an :class:`~tfjax.explain.capture.ActivationCache` of ``names`` (e.g.
      ``"*/attn/pattern"``: the receiver's own attention; None without names). Hashable: a module-level function or
      a ``functools.partial`` of one (the same object on every call, or it compiles again); :func:`loss_metric` makes
      one from a loss.
    receivers: ``[(layer, head), ...]``.
    senders: ``[(layer, head), ...]``, ``head`` an index or :data:`MLP` (``"mlp"``: the block's MLP); default: every
      head and MLP of every layer below the highest receiver.
    routes: ``"direct"`` (what the sender writes straight into the receiver's input) or ``"all"``.

  Returns:
    ``{"base": {name: [R]}`` (the clean run's metric for each receiver), ``"change": {name: {"q", "k", "v": [S,
    R]}}`` (the metric when receiver ``r``'s queries / keys / values are computed without sender ``s``, minus the
    base; NaN unless the sender's layer is below the receiver's), ``"senders"``, ``"receivers"}``. Keys and values
    shared by several query heads (GQA) are patched for all of them.
  """
  model, variables = per_layer(model, variables)  # interventions name layers: a scanned stack runs one module a layer
  layout = resolve_stack(model, stack)
  if routes not in ("direct", "all"):
    raise ValueError(f"routes={routes!r}: choose 'direct' or 'all'")
  if routes == "direct" and not model.cfg.pre_ln:
    raise ValueError("routes='direct' needs pre-LN blocks (a post-LN stream is renormalised after every sublayer, "
                     "not a sum of what the heads wrote); use routes='all'")
  receivers = _check_heads(layout, receivers, "receiver head")
  if not receivers:
    raise ValueError("path_ablation needs at least one receiver head")
  if senders is None:
    top = max(l for l, _ in receivers)
    senders = [(l, h) for l in range(top) for h in [*range(layout.num_heads), MLP]]
  senders = _check_heads(layout, senders, "sender", mlps=True)
  ids, names = jnp.asarray(ids), tuple(names)
  noop = head_masks_tree(layout.name, "attn", layout.num_layers, layout.num_heads, -1, 0)
  clean = _record(model, variables, noop, ids, layout.name, READ + WRITE)
  read = lambda rec: {w: rec[f"attn/{w}"] for w in WAYS}  # noqa: E731

  def measure(tree, layer, head):
    values = _measure(model, variables, tree, ids, jnp.int32(layer), jnp.int32(head), metric, names)
    return {k: float(v) for k, v in values.items()}

  unpatched = _patch_tree(layout, read(clean), None, None, None)
  bases = [measure(unpatched, l, h) for l, h in receivers]
  keys = sorted(bases[0])
  change = {k: {w: np.full((len(senders), len(receivers)), np.nan) for w in WAYS} for k in keys}
  for i, (ls, hs) in enumerate(senders):
    if not any(lr > ls for lr, _ in receivers):
      continue
    ablated = read(_record(model, variables, _without_sender(layout, clean, ls, hs, routes), ids, layout.name, READ))
    for j, (lr, hr) in enumerate(receivers):
      if lr <= ls:
        continue
      for w in WAYS:
        values = measure(_patch_tree(layout, ablated, lr, hr, w), lr, hr)
        for k in keys:
          change[k][w][i, j] = values[k] - bases[j][k]
  return {"base": {k: np.asarray([b[k] for b in bases]) for k in keys}, "change": change, "senders": senders,
          "receivers": receivers}


# ---- ./launch.sh explain composition WORKDIR ----

def movement_metric(logits, ids, cache, layer, head, clean_pattern, clean_z):
  """How far receiver ``(layer, head)`` moves from the clean run: ``pattern``, the mean total-variation distance of
  its attention rows (``0.5 Σ_s |p - p_clean|``, 0 .. 1), and ``z``, the relative change of its output
  ``‖z - z_clean‖ / ‖z_clean‖``. ``clean_pattern [L, B, H, T, S]``, ``clean_z [L, B, T, H, Dh]``: the clean run's."""
  del logits, ids
  p = cache.stack("attn/pattern")[layer, :, head].astype(jnp.float32)
  z = cache.stack("attn/z")[layer, :, :, head].astype(jnp.float32)
  p0, z0 = clean_pattern[layer, :, head], clean_z[layer, :, :, head]
  return {"pattern": 0.5 * jnp.mean(jnp.sum(jnp.abs(p - p0), axis=-1)),
          "z": jnp.linalg.norm(z - z0) / jnp.maximum(jnp.linalg.norm(z0), 1e-30)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
  """Spearman's rho over the entries finite in both (None with fewer than 3)."""
  keep = np.isfinite(a) & np.isfinite(b)
  if keep.sum() < 3:
    return None
  rho = spearman(a[keep], b[keep])
  return rho if np.isfinite(rho) else None


def sender_name(sender) -> str:
  """``"L0 H3"``, or ``"L0 MLP"`` for a block's MLP."""
  layer, head = sender
  return f"L{layer} MLP" if head == MLP else f"L{layer} H{head}"


def _receivers(layout, layer: int | None, head: int | None) -> list[tuple[int, int]]:
  """The heads of layers 1.. (or of ``layer``, or only ``head``); a clear error for a layer or head out of range."""
  if layer is not None and not 1 <= layer < layout.num_layers:
    raise SubjectError(f"--layer={layer}: the receiving heads are in layers 1..{layout.num_layers - 1} (layer 0 reads "
                       "only the embedding)")
  if head is not None and not 0 <= head < layout.num_heads:
    raise SubjectError(f"--head={head}: heads are 0..{layout.num_heads - 1}")
  return [(l, h) for l in range(1, layout.num_layers) for h in range(layout.num_heads)
          if (layer is None or l == layer) and (head is None or h == head)]


def _way_line(numbers: dict, way: str, rows: list[str], cols: list[str], top_k: int) -> str:
  """The strongest head -> head pairs of one way, the weights' agreement, and what the MLPs' absence moves."""
  moved = numbers["moved"][way]
  heads = np.asarray([h != MLP for _, h in numbers["senders"]])
  by_heads = np.where(heads[:, None], moved, np.nan)
  order = [i for i in np.argsort(-np.nan_to_num(by_heads, nan=-np.inf).ravel())
           if np.isfinite(by_heads.ravel()[i])][:max(1, top_k)]
  pairs = [np.unravel_index(i, moved.shape) for i in order]
  rho = numbers["spearman"][way]
  mlps = "; ".join(f"{rows[i]}: mean {np.nanmean(moved[i]):.2f} over the heads above it, most "
                   f"{cols[int(np.nanargmax(moved[i]))]} {np.nanmax(moved[i]):.2f}"
                   for i in np.flatnonzero(~heads) if np.isfinite(moved[i]).any())
  return (f"  {WAY_NAMES[way]}: " + ", ".join(f"{cols[r]} reads {rows[s]} ({moved[s, r]:.2f})" for s, r in pairs)
          + (f" (Spearman with the weights' {way.upper()}-composition {rho:+.2f})" if rho is not None else "")
          + (f"; MLPs {mlps}" if mlps else ""))


def _draw(numbers: dict, way: str, rows: list[str], cols: list[str], out_dir: str) -> None:
  unit = "total variation of its pattern" if way != "v" else "relative change of its output"
  pictures.heatmap(numbers["moved"][way], os.path.join(out_dir, f"composition_{WAY_NAMES[way]}.png"), row_labels=rows,
                   col_labels=cols, annotate=True, cmap="Blues", xlabel="receiving head",
                   ylabel="left out of its " + WAY_NAMES[way],
                   title=f"how far a head moves without an earlier head in its {WAY_NAMES[way]} ({unit})")
  pictures.heatmap(numbers["weights"][way], os.path.join(out_dir, f"composition_weights_{way}.png"), row_labels=rows,
                   col_labels=cols, annotate=True, cmap="Blues", xlabel="receiving head", ylabel="writing head",
                   title=f"{way.upper()}-composition of the weights (random heads {numbers['weights_random']:.2f})")


def run(subject, out_dir: str, *, text: str | None = None, max_rows: int = 16, top_k: int = 5,
        routes: str = "direct", layer: int | None = None, head: int | None = None) -> dict:
  """Writes ``composition_{queries,keys,values}.png`` (sender x receiver: how far each head of layers 1.. moves when
  one earlier head or MLP is left out of its queries, keys or values), ``composition_weights_{q,k,v}.png`` (the
  weights' composition scores) and ``composition.json``. On up to ``max_rows`` rows of the first validation batch (or
  ``text``); queries and keys are scored by the receiver's attention pattern (total variation), values by its output
  ``z`` (relative change). ``layer`` / ``head``: only those receivers (one forward pass per sender, receiver and
  input: a deep model's every pair takes long)."""
  subject.require(("gpt",), "composition")
  model, params, cfg = subject.model, subject.params, subject.cfg
  if cfg.num_layers < 2:
    raise SubjectError(f"composition needs two layers or more: {subject.path} has {cfg.num_layers}")
  if routes not in ("direct", "all"):
    raise SubjectError(f"--routes={routes}: choose direct or all")
  if routes == "direct" and not cfg.pre_ln:
    raise SubjectError("--routes=direct needs pre-LN blocks; use --routes=all")
  layout = resolve_stack(model)
  receivers = _receivers(layout, layer, head)
  os.makedirs(out_dir, exist_ok=True)
  ids = jnp.asarray(data_lib.eval_batches(subject, 1, text)[0]["inputs"][:max(1, max_rows)])
  noop = head_masks_tree(layout.name, "attn", layout.num_layers, layout.num_heads, -1, 0)
  clean = _record(model, {"params": params}, noop, ids, layout.name, ("attn/pattern", "attn/z"))
  metric = functools.partial(movement_metric, clean_pattern=clean["attn/pattern"].astype(jnp.float32),
                             clean_z=clean["attn/z"].astype(jnp.float32))
  paths = path_ablation(model, {"params": params}, ids, metric, receivers, routes=routes,
                        names=("*/attn/pattern", "*/attn/z"))
  weights = composition_scores(model, params)
  senders = paths["senders"]
  moved = {"q": paths["change"]["pattern"]["q"], "k": paths["change"]["pattern"]["k"], "v": paths["change"]["z"]["v"]}
  grid = {w: np.asarray([[weights[w][ls, hs, lr, hr] if hs != MLP else np.nan for lr, hr in receivers]
                         for ls, hs in senders]) for w in WAYS}
  numbers = {"routes": routes, "rows": int(ids.shape[0]), "tokens": int(ids.shape[1]), "senders": senders,
             "receivers": receivers, "moved": moved, "weights": grid,
             "weights_random": random_baseline(cfg.emb_dim, layout.head_dim),
             "spearman": {w: _spearman(moved[w], grid[w]) for w in WAYS}}
  rows, cols = [sender_name(s) for s in senders], [f"L{l} H{h}" for l, h in receivers]
  above = "layer 1" if layout.num_layers == 2 else f"layers 1-{layout.num_layers - 1}"
  lines = [f"composition: {ids.shape[0]} rows of {ids.shape[1]} tokens; each head of {above} "
           f"with one earlier head or MLP left out of its queries, keys or values ({routes} routes); queries and keys: "
           f"how far its attention pattern moves (total variation, 0..1), values: how much its output changes"]
  for w in WAYS:
    lines.append(_way_line(numbers, w, rows, cols, top_k))
    _draw(numbers, w, rows, cols, out_dir)
  lines.append(f"  weights' composition scores: random heads {numbers['weights_random']:.2f}; largest Q "
               f"{np.nanmax(grid['q']):.2f}, K {np.nanmax(grid['k']):.2f}, V {np.nanmax(grid['v']):.2f}")
  pictures.write_json(os.path.join(out_dir, "composition.json"), numbers)
  return {"summary": "\n".join(lines), **numbers}

"""``explain ov``: what a head adds to the stream when it attends to a token (the value side, the OV circuit).

A head that attends to key position ``j`` adds ``v_j W_O[h]`` to the query's stream (times the attention weight):
the notes' value vector, "what should be added to the embedding if this word matters". Read through the final norm
and the unembedding it is a vector of logits, the tokens the head promotes when it reads token ``a``: the head's
**OV circuit** (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"),

    ov[a, b] = src_a · W_O[h] · R[:, b]          [N, V]
    R = C diag(g) (W_U - mean_v W_U)             [D, V]   (:func:`readout`)

with ``src_a [Dh]`` what the head reads for token ``a``, in one of two ways:

* ``embed`` (:func:`embedding_values`, the weights alone): the token's embedding through the block's read norm's
  linear part (its scale; LayerNorm's centring) and ``W_V[h]``; exact for layer 0 up to the position vector, the
  norm's ``1 / σ`` and the biases;
* ``values`` (:func:`mean_values`): the value vector ``v`` the head itself computed at token ``a``, averaged over
  ``a``'s occurrences in validation text: everything earlier layers wrote into the token's stream included (an
  induction head reads a token's stream after layer 0's MLP, not its bare embedding).

``R`` reads a stream vector as logits relative to the mean logit (what the softmax sees): the final norm's scale
``g`` and, for LayerNorm, its centring ``C`` folded in; its ``1 / σ``, one positive number per position, is left out,
which changes no ranking. A head **copies** when attending to a token raises that token's own logit:

* ``copying``: the copying score ``Σλ / Σ|λ|`` over the eigenvalues ``λ`` of ``ov`` restricted to the ``N`` tokens
  read (``[N, N]``): +1 when every direction it reads is written back onto itself, −1 when it is suppressed; from
  the ``[Dh, Dh]`` matrix ``(W_O R[:, ids]) src`` that has the same nonzero eigenvalues (:func:`copying_score`);
* ``self_top1``: the share of the ``N`` tokens whose own logit is the largest of their row of ``ov`` over the whole
  vocabulary (a random head: ``1 / V``) (:func:`self_ranks`);
* ``context_top1`` / ``context_raises`` (:func:`context_copying`): on validation text, at each query the key it
  attends to most; the share of queries where the head's actual write ``z W_O`` (through the final norm with its
  ``σ`` held at its value on the stream, as :mod:`tfjax.explain.attribution` holds it) ranks that key's token first
  among all tokens, or raises its logit above the mean logit.

Self-attention heads of pre-LN GPTs and of a translator's decoder (whose stream is unembedded); ``explain ov
WORKDIR`` (:func:`run`) draws every head's scores, and for one head (``--layer``/``--head``; default: the one that
copies most in context) the circuit on a text's tokens and the tokens it promotes when reading frequent ones.
"""

from __future__ import annotations

import collections
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import attribution
from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.capture import per_layer, resolve_stack, run_with_cache
from tfjax.explain.composition import head_matrices

HIGHEST = jax.lax.Precision.HIGHEST
STACK = attribution.STACK  # the stack whose stream is unembedded
VIEWS = ("embed", "values")


def readout(model, params) -> jnp.ndarray:
  """``R [D, V]``: a stream vector's logits relative to their mean over the vocabulary, the final norm's scale (and
  LayerNorm's centring) folded in, its ``1 / σ`` left out (module docstring)."""
  unembed = attribution.unembedding(model, params)
  directions, _ = attribution.token_directions(unembed, jnp.arange(unembed.matrix.shape[1]))  # [V, D]
  r = directions.T
  if unembed.scale is not None:
    r = unembed.scale[:, None] * r
  if unembed.norm == "layernorm":
    r = r - jnp.mean(r, axis=0, keepdims=True)
  return r


def _embed_tokens(module, ids):
  """The token embedding rows of ``ids`` as the model adds them to the stream (a method for ``model.apply``)."""
  return module.embed(ids).astype(jnp.float32)


def embedding_values(model, params, token_ids) -> jnp.ndarray:
  """``[L, H, N, Dh]``: the value vector each self-attention head of the unembedded stack would compute from the bare
  embedding of each of ``token_ids [N]`` (its read norm's linear part folded in; no position, ``1 / σ`` or bias)."""
  model, variables = per_layer(model, {"params": params})
  rows = model.apply(variables, jnp.asarray(token_ids, jnp.int32), method=_embed_tokens)  # [N, D]
  w_v = head_matrices(model, variables["params"], STACK)["w_v"]  # [L, H, D, Dh]
  return jnp.einsum("nd,lhde->lhne", rows, w_v, precision=HIGHEST)


def _head_outputs(model, params, layer: int, sublayer: str) -> jnp.ndarray:
  """``[H, Dh, D]``: each head's rows of ``layer``'s ``sublayer`` output projection ``out``."""
  model, variables = per_layer(model, {"params": params})
  layout = resolve_stack(model, STACK)
  kernel = jnp.asarray(variables["params"][STACK][f"block_{layer}"][sublayer]["out"]["kernel"], jnp.float32)
  return kernel.reshape(layout.num_heads, layout.head_dim, kernel.shape[-1])


def write_readout(model, params, layer: int, sublayer: str = "attn") -> jnp.ndarray:
  """``[H, Dh, V]``: ``W_O[h] R``, the logits each head of ``layer``'s ``sublayer`` (``attn``; a translator's
  ``cross_attn``) adds per unit of its output ``z``."""
  return jnp.einsum("hed,dv->hev", _head_outputs(model, params, layer, sublayer), readout(model, params),
                    precision=HIGHEST)


def ov_circuit(model, params, layer: int, head: int, token_ids, values_NxDh=None,
               sublayer: str = "attn") -> jnp.ndarray:
  """``[N, V]``: the logits head ``(layer, head)`` adds, per unit of attention, when it reads each of ``token_ids
  [N]``: from the bare embeddings (:func:`embedding_values`; self-attention only), or from ``values_NxDh`` (e.g.
  :func:`measure`'s mean value vectors; ``sublayer="cross_attn"``: a translator's cross-attention head)."""
  layout = resolve_stack(per_layer(model, {"params": params})[0], STACK)
  if not 0 <= layer < layout.num_layers or not 0 <= head < layout.num_heads:
    raise ValueError(f"no head ({layer}, {head}): the {STACK} has layers 0..{layout.num_layers - 1} and heads "
                     f"0..{layout.num_heads - 1}")
  if values_NxDh is None:
    if sublayer != "attn":
      raise ValueError("a cross-attention head reads the encoder's output, not embeddings: give values_NxDh")
    values_NxDh = embedding_values(model, params, token_ids)[layer, head]
  w_o = _head_outputs(model, params, layer, sublayer)[head]  # [Dh, D]: only this head's write
  return jnp.asarray(values_NxDh, jnp.float32) @ jnp.matmul(w_o, readout(model, params), precision=HIGHEST)


@jax.jit
def copying_score(values_NxDh, write_DhxN) -> jnp.ndarray:
  """``Σλ / Σ|λ|`` over the eigenvalues of the ``[N, N]`` circuit ``values write`` (rows: tokens read; columns: the
  same tokens' logits), from the ``[Dh, Dh]`` product ``write values`` with the same nonzero eigenvalues."""
  lam = jnp.linalg.eigvals(jnp.matmul(write_DhxN, values_NxDh, precision=HIGHEST))
  return jnp.sum(lam.real) / jnp.maximum(jnp.sum(jnp.abs(lam)), 1e-30)


@functools.partial(jax.jit, static_argnames="chunk")
def self_ranks(values_NxDh, write_DhxV, token_ids_N, chunk: int = 256) -> jnp.ndarray:
  """``[N]``: where token ``token_ids[n]``'s own logit ranks in row ``n`` of the circuit (0: the largest), computed
  ``chunk`` rows at a time (a ``[N, V]`` circuit of GPT-2's vocabulary need not exist at once)."""
  n = values_NxDh.shape[0]
  pad = (-n) % chunk
  values = jnp.pad(values_NxDh, ((0, pad), (0, 0))).reshape(-1, chunk, values_NxDh.shape[1])
  ids = jnp.pad(token_ids_N, (0, pad)).reshape(-1, chunk)

  def rank(args):
    v, i = args
    row = jnp.matmul(v, write_DhxV, precision=HIGHEST)  # [chunk, V]
    own = jnp.take_along_axis(row, i[:, None], axis=1)
    return jnp.sum(row > own, axis=1)
  return jax.lax.map(rank, (values, ids)).reshape(-1)[:n]


def _capture_names(layers: int, sublayer: str = "attn") -> tuple[str, ...]:
  return tuple(f"{STACK}/block_{l}/{sublayer}/{name}" for l in range(layers) for name in ("v", "z", "pattern")) + (
      f"{STACK}/block_{layers - 1}/resid_post",)


@functools.partial(jax.jit, static_argnames=("model", "names"))
def _run(model, params, args, kwargs, names):
  return run_with_cache(model, {"params": params}, *args, names=list(names), **kwargs)[1]


@jax.jit
def _context_ranks(z_BxTxHxDh, pattern_BxHxTxS, key_ids_BxS, write_HxDhxV, inv_BxT):
  """``(ranks, raised, attended)``, each ``[H, B, T]``: per head and query, the rank of the most-attended key's token
  among the head's direct logits ``z W_O R / σ``, whether that logit is above the mean, and the token itself."""
  attended = jnp.take_along_axis(key_ids_BxS[:, None, :], jnp.argmax(pattern_BxHxTxS, axis=-1), axis=2)  # [B, H, T]

  def one(args):
    z, w, ids = args  # [B, T, Dh], [Dh, V], [B, T]
    logits = jnp.einsum("bte,ev->btv", z, w, precision=HIGHEST) * inv_BxT[..., None]
    own = jnp.take_along_axis(logits, ids[..., None], axis=-1)
    return jnp.sum(logits > own, axis=-1), own[..., 0] > 0
  attended = jnp.moveaxis(attended, 1, 0)
  return (*jax.lax.map(one, (jnp.moveaxis(z_BxTxHxDh, 2, 0), write_HxDhxV, attended)), attended)


class _Writes:
  """``writes[l]``: :func:`write_readout` of layer ``l``, kept while all layers' fit ``budget`` bytes and computed
  again each time otherwise (GPT-2's 12 layers x ``[768, 50257]`` would be 1.9 GB)."""

  def __init__(self, model, params, sublayer: str, num_layers: int, budget: int | None = None):
    self.args = (model, params)
    self.sublayer = sublayer
    self.shape = jax.eval_shape(lambda: write_readout(model, params, 0, sublayer)).shape  # [H, Dh, V]
    budget = data_lib.OUTPUT_BYTES if budget is None else budget
    self.keep = num_layers * int(np.prod(self.shape)) * 4 <= budget
    self.cache = {}

  def __getitem__(self, layer: int) -> jnp.ndarray:
    if layer in self.cache:
      return self.cache[layer]
    write = write_readout(*self.args, layer, self.sublayer)
    if self.keep:
      self.cache[layer] = write
    return write


class _TokenSums:
  """Sums ``[L, K, N, Dh]`` of value vectors per token id seen so far (rows in the order first seen), without a
  ``[.., V, ..]`` array (GPT-2's vocabulary would make it GBs)."""

  def __init__(self, num_layers: int, kv: int, dh: int):
    self.row = {}
    self.sums = np.zeros((num_layers, kv, 0, dh))
    self.counts = np.zeros(0, np.int64)

  def add(self, ids_N: np.ndarray, values_LxNxKxDh: list[np.ndarray]) -> None:
    uniq, inverse = np.unique(ids_N, return_inverse=True)
    for u in uniq.tolist():
      self.row.setdefault(u, len(self.row))
    grow = len(self.row) - len(self.counts)
    if grow:
      self.sums = np.concatenate([self.sums, np.zeros((*self.sums.shape[:2], grow, self.sums.shape[3]))], axis=2)
      self.counts = np.concatenate([self.counts, np.zeros(grow, np.int64)])
    rows = np.asarray([self.row[u] for u in uniq.tolist()], np.int64)[inverse]
    np.add.at(self.counts, rows, 1)
    for l, v in enumerate(values_LxNxKxDh):
      np.add.at(self.sums[l], (slice(None), rows), np.moveaxis(v, 0, 1))

  def most_frequent(self, max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [N], counts [N], means [L, K, N, Dh])`` of the ``max_tokens`` most frequent ids (ties: the smaller
    id first)."""
    ids = np.fromiter(self.row.keys(), np.int64, len(self.row))
    order = np.lexsort((ids, -self.counts))[:max_tokens]
    return ids[order], self.counts[order], self.sums[:, :, order] / self.counts[order][None, None, :, None]


def _keys(batch, sublayer: str, real_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(ids [B, S], real [B, S])``: the tokens ``sublayer``'s keys and values are read from, and which are real:
  the stack's own inputs for self-attention, the source sentence for a translator's cross-attention."""
  if sublayer == "attn":
    return np.asarray(batch["inputs"]), real_BxT
  from tfjax.tasks.translate import PAD_ID
  src = np.asarray(batch["src"])
  return src, src != PAD_ID


def measure(model, params, kind: str, batches, max_tokens: int = 2048, sublayer: str = "attn") -> dict:
  """Every head's copying numbers (module docstring) on ``batches`` (validation batches of a ``kind`` model):
  ``copying_{embed,values}``, ``self_top1_{embed,values}``, ``context_top1``, ``context_raises`` ``[L, H]``; the
  ``tokens [N]`` read (the ``max_tokens`` most frequent real tokens of the keys) with their ``counts`` and mean
  ``values [L, H, N, Dh]``; ``queries``, the number of queries counted in context; ``final_inv``, the mean
  ``1 / σ`` of the final norm over them (a circuit times it is in logits at a typical scale); ``context_copies``
  ``[L][H]``: the tokens each head ranks first most often in context, ``[token id, queries]``.

  ``sublayer="cross_attn"``: a translator decoder's cross-attention heads, which read the source sentence through
  the encoder (no ``embed`` view: its numbers are NaN); the tokens read are source tokens, the logits target-side
  ones of the shared vocabulary."""
  attribution.check_decomposable(model)
  if sublayer not in ("attn", "cross_attn"):
    raise ValueError(f"sublayer must be attn or cross_attn, got {sublayer!r}")
  model, variables = per_layer(model, {"params": params})
  params = variables["params"]
  layout = resolve_stack(model, STACK)
  if sublayer == "cross_attn" and not layout.cross_attention:
    raise ValueError(f"this {type(model).__name__} has no cross-attention")
  num_layers, heads, kv, dh = layout.num_layers, layout.num_heads, layout.num_kv_heads, layout.head_dim
  names = _capture_names(num_layers, sublayer)
  writes = _Writes(model, params, sublayer, num_layers)
  vocab = int(writes.shape[-1])
  unembed = attribution.unembedding(model, params)
  sums = _TokenSums(num_layers, kv, dh)
  top1 = np.zeros((num_layers, heads))
  raises = np.zeros((num_layers, heads))
  queries, inv_sum = 0.0, 0.0
  copied = [[collections.Counter() for _ in range(heads)] for _ in range(num_layers)]  # token -> queries ranked first
  for batch in batches:
    args, kwargs = data_lib.model_inputs(kind, jax.tree.map(jnp.asarray, batch))
    cache = _run(model, params, args, kwargs, names)
    real = data_lib.token_weights(kind, batch) > 0  # [B, T]: the real queries
    key_ids, key_real = _keys(batch, sublayer, real)
    sums.add(key_ids[key_real], [np.asarray(cache[f"{STACK}/block_{l}/{sublayer}/v"], np.float64)[key_real]
                                 for l in range(num_layers)])  # [N, K, Dh] each
    _, inv = attribution.frozen_norm(unembed, cache[names[-1]])
    for l in range(num_layers):
      path = f"{STACK}/block_{l}/{sublayer}/"
      pattern = jnp.where(jnp.asarray(key_real)[:, None, None, :], cache[path + "pattern"], -1.0)
      ranks, up, attended = _context_ranks(cache[path + "z"].astype(jnp.float32), pattern, jnp.asarray(key_ids),
                                           writes[l], inv)
      first = (np.asarray(ranks) == 0) & real[None]  # [H, B, T]
      top1[l] += np.sum(first, axis=(1, 2))
      attended = np.asarray(attended)
      for h in range(heads):
        copied[l][h].update(attended[h][first[h]].tolist())
      raises[l] += np.sum(np.asarray(up) & real[None], axis=(1, 2))
    queries += float(real.sum())
    inv_sum += float(np.sum(np.asarray(inv)[real]))
  if not queries or not sums.row:
    raise ValueError("no real tokens in the batches")
  tokens, counts, means = sums.most_frequent(max_tokens)
  values = means[:, np.arange(heads) // (heads // kv)]  # [L, H, N, Dh]: a query head reads its group's values
  out = {"tokens": tokens, "counts": counts, "values": values.astype(np.float32), "vocab_size": vocab,
         "queries": int(queries), "final_inv": inv_sum / queries, "context_top1": top1 / queries,
         "context_raises": raises / queries, "context_copies": [[[[int(t), int(n)] for t, n in c.most_common(5)] for c in row] for row in copied]}
  views = {"values": values}
  if sublayer == "attn":
    views["embed"] = np.asarray(embedding_values(model, params, tokens))
  for view in VIEWS:
    copying, self_top1 = np.full((num_layers, heads), np.nan), np.full((num_layers, heads), np.nan)
    for l in range(num_layers if view in views else 0):
      write = writes[l]
      for h in range(heads):
        a = jnp.asarray(views[view][l, h], jnp.float32)
        copying[l, h] = float(copying_score(a, write[h][:, tokens]))
        self_top1[l, h] = float(np.mean(np.asarray(self_ranks(a, write[h], jnp.asarray(tokens))) == 0))
    out[f"copying_{view}"], out[f"self_top1_{view}"] = copying, self_top1
  return out


def _head_name(l: int, h: int) -> str:
  return f"L{l} H{h}"


def _choose_head(numbers: dict, layer: int | None, head: int | None) -> tuple[int, int]:
  """``--layer``/``--head`` as given; what is not: the head (of that layer) that copies most in context."""
  score = numbers["context_top1"] + 1e-3 * numbers["self_top1_values"]
  if layer is not None:
    score = np.where(np.arange(score.shape[0])[:, None] == layer, score, -np.inf)
  if head is not None:
    score = np.where(np.arange(score.shape[1])[None, :] == head, score, -np.inf)
  l, h = np.unravel_index(np.argmax(score), score.shape)
  return int(l), int(h)


def _text_circuit(subject, layer: int, head: int, text: str | None) -> dict:
  """Head ``(layer, head)``'s circuit ``[N, N]`` between the distinct tokens of a text (its value vectors on that
  text, averaged over each token's occurrences): ``text``, else a workdir's first validation row, else the default
  text."""
  batch = {k: v[:1] for k, v in data_lib.eval_batches(subject, 1, text=text)[0].items()}
  numbers = measure(subject.model, subject.params, subject.kind, [batch], max_tokens=30)
  ids = numbers["tokens"]
  order = np.argsort([np.flatnonzero(batch["inputs"][0] == i)[0] for i in ids])  # as the text has them
  ids = ids[order]
  values = numbers["values"][layer, head][order]
  circuit = np.asarray(ov_circuit(subject.model, subject.params, layer, head, ids, values))[:, ids]
  circuit = circuit * numbers["final_inv"]
  return {"tokens": subject.labels(ids), "circuit": circuit}


def _promoted(subject, numbers: dict, layer: int, head: int, top_k: int, rows: int = 4) -> list[dict]:
  """For the ``rows`` most frequent tokens read: the ``top_k`` tokens the head promotes when it reads them (logits
  added per unit of attention at the final norm's mean ``1 / σ``)."""
  tokens = numbers["tokens"][:rows]
  circuit = np.asarray(ov_circuit(subject.model, subject.params, layer, head, tokens,
                                  numbers["values"][layer, head][:rows])) * numbers["final_inv"]
  out = []
  for i, t in enumerate(tokens):
    best = np.argsort(-circuit[i])[:top_k]
    out.append({"reads": subject.token_label(int(t)),
                "promotes": [(subject.token_label(int(b)), float(circuit[i, b])) for b in best],
                "own_rank": int(np.sum(circuit[i] > circuit[i, t]))})
  return out


def _dictionary(subject, text: str | None, top_k: int, max_tokens: int = 8) -> list[dict]:
  """A translator: for each distinct source token of a text (as :func:`_text_circuit` picks it; special tokens left
  out), the target tokens its decoder's cross-attention heads promote together when they all read it: the sum over
  layers and heads of its value vector (averaged over the text) through ``W_O R``, at the final norm's ``1 / σ``."""
  batch = {k: v[:1] for k, v in data_lib.eval_batches(subject, 1, text=text)[0].items()}
  numbers = measure(subject.model, subject.params, subject.kind, [batch], sublayer="cross_attn")
  special = set(subject.tokenizer.special_ids()) if hasattr(subject.tokenizer, "special_ids") else set()
  src = [int(t) for t in dict.fromkeys(batch["src"][0].tolist()) if int(t) not in special][:max_tokens]
  rows = [list(numbers["tokens"]).index(t) for t in src]
  num_layers, heads = numbers["context_top1"].shape
  logits = sum(np.asarray(ov_circuit(subject.model, subject.params, l, h, src, numbers["values"][l, h][rows],
                                     sublayer="cross_attn")) for l in range(num_layers) for h in range(heads))
  logits = logits * numbers["final_inv"]  # [N, V]
  out = []
  for t, row in zip(src, logits):
    best = np.argsort(-row)[:top_k]
    out.append({"reads": subject.token_label(t), "promotes": [(subject.token_label(int(b)), float(row[b]))
                                                             for b in best]})
  return out


def _draw(numbers: dict, out_dir: str, prefix: str = "ov", heads_name: str = "H") -> None:
  """``{prefix}_copying.png`` and ``{prefix}_self_top1.png`` (layer x head; the bare-embedding view's columns, a gap,
  then the value vectors' where there are both) and ``{prefix}_context_top1.png``."""
  num_layers, heads = numbers["context_top1"].shape
  rows = [f"layer {l}" for l in range(num_layers)]
  views = [v for v in VIEWS if np.isfinite(numbers[f"copying_{v}"]).any()]
  short = {"embed": "embed", "values": "values"}
  gap = np.full((num_layers, 1), np.nan)
  for name, title, center in (
      ("copying", "copying score: eigenvalues of the OV circuit (+1 copies, -1 suppresses)", True),
      ("self_top1", "share of the tokens read whose own logit the head promotes most", False)):
    blocks, cols = [], []
    for v in views:
      blocks += [numbers[f"{name}_{v}"], gap]
      cols += [f"{heads_name}{h} {short[v]}" for h in range(heads)] + [""]
    pictures.heatmap(np.concatenate(blocks[:-1], axis=1), os.path.join(out_dir, f"{prefix}_{name}.png"),
                     row_labels=rows, col_labels=cols[:-1], title=title, annotate=True, center=center, cmap="Blues",
                     xlabel="from the bare embeddings | from its own value vectors" if len(views) == 2 else
                     "from its own value vectors")
  pictures.heatmap(numbers["context_top1"], os.path.join(out_dir, f"{prefix}_context_top1.png"), row_labels=rows,
                   col_labels=[f"{heads_name}{h}" for h in range(heads)], annotate=True, cmap="Blues",
                   title="in context: share of queries whose most-attended token the head's write ranks first")


def run(subject, out_dir: str, *, layer: int | None = None, head: int | None = None, text: str | None = None,
        top_k: int = 8, max_batches: int = 4) -> dict:
  """Writes ``ov_copying.png``, ``ov_self_top1.png``, ``ov_context_top1.png`` (every head), for the chosen head
  ``ov_tokens.png`` (its circuit on the text's tokens) and ``ov_promoted.png``, and ``ov.json``; a translator also
  its cross-attention heads' (``ov_cross_*.png``) and ``ov_cross_dictionary.png`` (:func:`_dictionary`)."""
  from tfjax.explain.subjects import SubjectError
  subject.require(("gpt", "translator"), "ov")
  try:
    attribution.check_decomposable(subject.model)
  except ValueError as e:
    raise SubjectError(str(e)) from None
  layout = resolve_stack(subject.model, STACK)
  if top_k < 1:
    raise SubjectError(f"--top_k={top_k}: list at least one promoted token")
  if layer is not None:
    subject.check_layer(layer, layout.num_layers)
  if head is not None:
    subject.check_head(head)
  os.makedirs(out_dir, exist_ok=True)
  # every head over a workdir's validation batches; a Hugging Face directory has none: the text (or the default)
  batches = data_lib.eval_batches(subject, max_batches, text=None if subject.config is not None else text)
  numbers = measure(subject.model, subject.params, subject.kind, batches)
  layer, head = _choose_head(numbers, layer, head)
  name = _head_name(layer, head)
  on_text = _text_circuit(subject, layer, head, text)
  promoted = _promoted(subject, numbers, layer, head, top_k)
  _draw(numbers, out_dir)
  pictures.heatmap(on_text["circuit"], os.path.join(out_dir, "ov_tokens.png"), row_labels=on_text["tokens"],
                   col_labels=on_text["tokens"], center=True, xlabel="token promoted", ylabel="token attended to",
                   title=f"{name}: logits it adds when it attends to a token (its value vectors on the text)")
  pictures.bars([], [], os.path.join(out_dir, "ov_promoted.png"), xlabel="logit added (relative to the mean)",
                panels={f"{name} reads {p['reads']!r}": ([q[0] for q in p["promotes"]], [q[1] for q in p["promotes"]])
                        for p in promoted})
  result = {k: v for k, v in numbers.items() if k != "values"}
  copies = [(subject.token_label(t), n) for t, n in numbers["context_copies"][layer][head]]
  result.update(layer=layer, head=head, promoted=promoted, copies=copies, text_tokens=on_text["tokens"],
                text_circuit=on_text["circuit"], chance=1.0 / numbers["vocab_size"])
  if subject.kind == "translator":
    cross = measure(subject.model, subject.params, subject.kind, batches, sublayer="cross_attn")
    result["cross"] = {k: v for k, v in cross.items() if k != "values"}
    _draw(cross, out_dir, prefix="ov_cross", heads_name="X")
    result["dictionary"] = _dictionary(subject, text, top_k)
    pictures.bars([], [], os.path.join(out_dir, "ov_cross_dictionary.png"), xlabel="logit added (every "
                  "cross-attention head reading it)", panels={f"reads {d['reads']!r}": (
                      [q[0] for q in d["promotes"]], [q[1] for q in d["promotes"]]) for d in result["dictionary"]})
  pictures.write_json(os.path.join(out_dir, "ov.json"), result)
  return {"summary": "\n".join(_summary_lines(result)), **result}


def _summary_lines(r: dict) -> list[str]:
  n, vocab = len(r["tokens"]), r["vocab_size"]
  lines = [f"ov: what each head adds when it attends to a token ({n} tokens read, {r['queries']} queries; "
           f"chance of ranking a token first 1/{vocab})",
           "  head     copying embed/values   own token first embed/values   in context: first / raised"]
  order = np.argsort(-r["context_top1"].reshape(-1), kind="stable")
  heads = r["context_top1"].shape[1]
  for idx in order[:8]:
    l, h = divmod(int(idx), heads)
    lines.append(f"  {_head_name(l, h):<8s} {r['copying_embed'][l, h]:+6.2f} / {r['copying_values'][l, h]:+5.2f}"
                 f"          {r['self_top1_embed'][l, h]:5.2f} / {r['self_top1_values'][l, h]:4.2f}"
                 f"                  {r['context_top1'][l, h]:4.2f} / {r['context_raises'][l, h]:4.2f}")
  lines.append(f"  {_head_name(r['layer'], r['head'])}: " + "; ".join(
      f"reads {p['reads']!r} -> " + ", ".join(f"{t!r} {v:+.2f}" for t, v in p["promotes"][:3])
      for p in r["promoted"][:3]))
  first = r["context_top1"][r["layer"], r["head"]]
  total = first * r["queries"]
  if total:
    lines.append(f"  {_head_name(r['layer'], r['head'])} in context ranks the token it attends to most first at "
                 f"{first:.0%} of queries: " + ", ".join(f"{t!r} {n / total:.0%}" for t, n in r["copies"][:3])
                 + " of those")
  if "cross" in r:
    c = r["cross"]
    best = np.unravel_index(np.argmax(c["context_top1"]), c["context_top1"].shape)
    lines.append(f"  cross-attention: copying score (value vectors) {np.nanmin(c['copying_values']):+.2f} .. "
                 f"{np.nanmax(c['copying_values']):+.2f}; most copying in context L{best[0]} X{best[1]} "
                 f"{c['context_top1'][best]:.2f}")
    lines.append("  cross-attention reading a source token promotes: " + "; ".join(
        f"{d['reads']!r} -> " + ", ".join(repr(t) for t, _ in d["promotes"][:3]) for d in r["dictionary"][:5]))
  return lines

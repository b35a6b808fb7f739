"""``explain scaled_dot_product``: why attention divides the scores ``q·k`` by ``√Dh``.

A head scores query ``q`` on key ``k`` by ``q·k`` times a scale (``model.attention_scale``; the default, the notes'
scaled dot product, is ``1/√Dh``). If the ``Dh`` components of ``q`` and ``k`` are independent with mean 0 and
variance 1, ``q·k`` is a sum of ``Dh`` such products: its variance is ``Dh``, its spread ``√Dh``. Left unscaled, a
wider head has larger scores. The softmax then puts nearly all the weight on one key, and a saturated softmax passes
almost no gradient back to the scores: its Jacobian ``diag(p) - p pᵀ`` goes to 0 as ``p`` goes one-hot. Dividing by
``√Dh`` keeps the spread at 1 at any width. The scale is an inverse temperature of the attention softmax
(:mod:`tfjax.explain.temperature`): ``softmax(c·s) = softmax(s / T)`` at ``T = 1/c``.

Three things are measured on every attention row (:func:`pattern_statistics`): the pattern's entropy as a share of
the uniform pattern's ``log n`` over its ``n`` visible keys (1: uniform, 0: one key), its largest weight, and the
Frobenius norm of its Jacobian, ``|diag(p) - p pᵀ|_F`` (1/2 at most, on two keys half and half; ``≈ 1/√n`` uniform;
0 one-hot): how much of a change in the scores reaches the pattern, and so how much gradient reaches ``W_Q`` and
``W_K``.

Without a workdir the command shows the argument from first principles:

* **random scores** (:func:`random_score_statistics`): unit-variance ``q`` and ``k`` at each ``Dh``; the measured
  spread of ``q·k`` beside ``√Dh``, and the three measures at the scales ``1``, ``1/√Dh`` and ``1/Dh``;
* **training** (:func:`train_recall`): one head of :class:`tfjax.layers.attention.MultiHeadAttention` learns
  associative recall. The text is ``N`` (key, value) pairs and a query key; the answer is the value stored with
  that key, so the query must find its key: queries asking, keys answering. It is trained at each ``Dh`` and scale,
  from two initialisations: ``unit`` (``q``, ``k``, ``v`` components of variance 1, the argument's assumption) and
  ``small`` (``N(0, 0.02)`` kernels, GPT-2's). Loss, accuracy and the weight on the right key are logged.

With a workdir (GPT, BERT, translator, or a Hugging Face directory), on its validation text (:func:`collect`), for
every layer x head of every attention: the spread of its raw ``q·k`` beside ``√Dh`` and beside ``√Dh rms(q)
rms(k)`` (what the independence argument predicts from the measured sizes of ``q`` and ``k``), and the three
measures as the model computes them and with its scale multiplied by ``m``, for ``m`` from 1/8 to 64 and ``m =
1/scale`` (the scores left unscaled).

:func:`run` is ``./launch.sh explain scaled_dot_product WORKDIR``, :func:`run_standalone` the same without one.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax.explain import data as data_lib
from tfjax.explain import pictures
from tfjax.explain.capture import run_with_cache, split_path
from tfjax.explain.subjects import SubjectError
from tfjax.layers.attention import MultiHeadAttention, masked_softmax

log = logging.getLogger("tfjax")

SCALES = {"1": lambda dh: 1.0, "1/sqrt(Dh)": lambda dh: dh ** -0.5, "1/Dh": lambda dh: 1.0 / dh}
INITS = ("unit", "small")
MULTIPLIERS = tuple(2.0 ** k for k in range(-3, 7))  # the model's scale times these
MEASURES = ("entropy_ratio", "max_weight", "jacobian_norm")


def pattern_statistics(scores: jax.Array, visible: jax.Array) -> dict[str, jax.Array]:
  """The three measures of each row of ``scores [..., S]`` (already scaled; entries where ``visible [..., S]`` is
  False are ignored): ``entropy_ratio`` (``H(p) / log n``, n the visible keys; 0 where n < 2), ``max_weight``,
  ``jacobian_norm`` (``|diag(p) - p pᵀ|_F = sqrt(Σp² - 2Σp³ + (Σp²)²)``), and ``num_visible``; each ``[...]``."""
  p = masked_softmax(jnp.where(visible, scores.astype(jnp.float32), -jnp.inf), visible)
  n = jnp.sum(visible, axis=-1)
  plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  entropy = -jnp.sum(plogp, axis=-1)
  ratio = jnp.where(n >= 2, entropy / jnp.log(jnp.maximum(n, 2).astype(jnp.float32)), 0.0)
  s2, s3 = jnp.sum(p * p, axis=-1), jnp.sum(p * p * p, axis=-1)
  jacobian = jnp.sqrt(jnp.maximum(s2 - 2.0 * s3 + s2 * s2, 0.0))
  return {"entropy_ratio": ratio, "max_weight": jnp.max(p, axis=-1), "jacobian_norm": jacobian, "num_visible": n}


def row_variance(scores: jax.Array, visible: jax.Array) -> jax.Array:
  """``[...]``: the variance of each row of ``scores [..., S]`` over its visible keys (what the softmax sees: adding
  a constant to a row changes nothing); 0 where fewer than 2 keys are visible. A set of rows' *spread* is the root
  of the mean of their variances."""
  s = jnp.where(visible, scores.astype(jnp.float32), 0.0)
  n = jnp.maximum(jnp.sum(visible, axis=-1), 1).astype(jnp.float32)
  mean = jnp.sum(s, axis=-1) / n
  var = jnp.sum(jnp.where(visible, (s - mean[..., None]) ** 2, 0.0), axis=-1) / n
  return jnp.where(jnp.sum(visible, axis=-1) >= 2, var, 0.0)


# ----------------------------------------------------------------------------------------------- random scores


@functools.partial(jax.jit, static_argnames=("head_dim", "num_keys", "num_rows"))
def random_scores(key: jax.Array, head_dim: int, num_keys: int, num_rows: int) -> jax.Array:
  """``[R, N]``: ``q·k`` (unscaled) of ``R`` random queries on ``N`` random keys each, all components independent
  ``N(0, 1)``."""
  kq, kk = jax.random.split(key)
  q = jax.random.normal(kq, (num_rows, head_dim))
  k = jax.random.normal(kk, (num_rows, num_keys, head_dim))
  return jnp.einsum("rd,rnd->rn", q, k, precision=jax.lax.Precision.HIGHEST)


def random_score_statistics(key: jax.Array, head_dims: Sequence[int], *, num_keys: int = 64,
                            num_rows: int = 2048) -> dict[str, Any]:
  """For each ``Dh`` in ``head_dims``: the spread of random ``q·k`` over keys (:func:`random_scores`; the argument
  says ``√Dh``; exactly, in expectation, ``√(Dh (N - 1) / N)`` over ``N`` keys), and at each of :data:`SCALES` the
  mean of each of :data:`MEASURES` over the rows. Returns
  ``{"head_dims", "num_keys", "spread" [len(dims)], "sqrt_head_dim", "scales": {scale: {measure: [len(dims)]}}}``."""
  visible = jnp.ones((num_rows, num_keys), bool)
  spread, scales = [], {name: {m: [] for m in MEASURES} for name in SCALES}
  for i, dh in enumerate(head_dims):
    s = random_scores(jax.random.fold_in(key, i), int(dh), num_keys, num_rows)
    spread.append(float(jnp.sqrt(jnp.mean(row_variance(s, visible)))))
    for name, scale in SCALES.items():
      stats = pattern_statistics(s * scale(dh), visible)
      for m in MEASURES:
        scales[name][m].append(float(jnp.mean(stats[m])))
  return {"head_dims": [int(d) for d in head_dims], "num_keys": num_keys, "num_rows": num_rows, "spread": spread,
          "sqrt_head_dim": [float(np.sqrt(d)) for d in head_dims], "scales": scales}


# ---------------------------------------------------------------------------------------------------- training


class RecallHead(nn.Module):
  """One attention head reading a recall text: ``pairs [B, N, 2]`` int (key symbol, value symbol) and ``query [B]``
  (one of the row's keys) -> logits over the value symbols ``[B, V]`` and the query's attention pattern over the
  pairs ``[B, N]``.

  Position ``n < N`` holds ``(E_key[key_n] + E_value[value_n]) / √2``, position ``N`` holds ``E_key[query]`` (rows of
  unit-variance components, as a normalised residual stream). The query attends to the ``N`` pairs only (each pair
  to itself); ``unembed [D, V]`` reads the query's output. ``scale``: the attention's score scale (None: ``1/√Dh``).
  """
  num_symbols: int
  width: int
  head_dim: int
  scale: float | None = None

  @nn.compact
  def __call__(self, pairs: jax.Array, query: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = pairs.shape[1]
    embed_init = nn.initializers.normal(1.0)
    e_key = self.param("key_embed", embed_init, (self.num_symbols, self.width))
    e_value = self.param("value_embed", embed_init, (self.num_symbols, self.width))
    x = jnp.concatenate([(e_key[pairs[..., 0]] + e_value[pairs[..., 1]]) * 2 ** -0.5, e_key[query][:, None]], 1)
    mask = np.eye(n + 1, dtype=bool)
    mask[n, :n], mask[n, n] = True, False
    attn = MultiHeadAttention(num_heads=1, head_dim=self.head_dim, use_bias=False, scale=self.scale,
                              out_stddev=self.width ** -0.5, name="attn")
    out, pattern = attn(x, mask[None, None], return_pattern=True)
    logits = nn.Dense(self.num_symbols, use_bias=False, kernel_init=nn.initializers.normal(self.width ** -0.5),
                      name="unembed")(out[:, -1])
    return logits, pattern[:, 0, -1, :n]


def recall_batch(key: jax.Array, batch_size: int, num_pairs: int, num_symbols: int) -> dict[str, jax.Array]:
  """A batch of recall texts: ``pairs [B, N, 2]`` (distinct keys per row, values drawn with replacement),
  ``which [B]`` (the pair asked for), ``query [B]`` (its key) and ``answer [B]`` (its value)."""
  kk, kv, kw = jax.random.split(key, 3)
  keys = jax.vmap(lambda k: jax.random.permutation(k, num_symbols)[:num_pairs])(jax.random.split(kk, batch_size))
  values = jax.random.randint(kv, (batch_size, num_pairs), 0, num_symbols)
  which = jax.random.randint(kw, (batch_size,), 0, num_pairs)
  pick = lambda a: jnp.take_along_axis(a, which[:, None], 1)[:, 0]
  return {"pairs": jnp.stack([keys, values], -1), "which": which, "query": pick(keys), "answer": pick(values)}


def init_recall(model: RecallHead, key: jax.Array, init: str, num_pairs: int) -> dict:
  """``model``'s parameters. ``init="small"``: as the layers make them (attention kernels ``N(0, 0.02)``);
  ``"unit"``: the attention's ``qkv`` kernel rescaled to ``N(0, 1/D)``, so that ``q``, ``k``, ``v`` have components
  of variance 1 on the unit-variance inputs."""
  return _init_params(model, key, qkv_factor(init, model.width), num_pairs)


def qkv_factor(init: str, width: int) -> float:
  """What ``init`` multiplies the ``N(0, 0.02)`` ``qkv`` kernel by (:func:`init_recall`)."""
  if init not in INITS:
    raise ValueError(f"init must be one of {INITS}, got {init!r}")
  return 1.0 / (0.02 * width ** 0.5) if init == "unit" else 1.0


def _init_params(model: RecallHead, key: jax.Array, factor, num_pairs: int) -> dict:
  params = nn.unbox(model.init(key, jnp.zeros((1, num_pairs, 2), jnp.int32), jnp.zeros((1,), jnp.int32))["params"])
  qkv = params["attn"]["qkv"]
  return {**params, "attn": {**params["attn"], "qkv": {**qkv, "kernel": qkv["kernel"] * factor}}}


def recall_metrics(model: RecallHead, params: dict, batch: dict) -> dict[str, jax.Array]:
  """``loss`` (cross-entropy of the answer), ``accuracy``, ``key_weight`` (the query's attention on the pair holding
  its key) and ``max_weight`` (its largest attention weight), means over the batch."""
  logits, pattern = model.apply({"params": params}, batch["pairs"], batch["query"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["answer"]).mean()
  return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["answer"]),
          "key_weight": jnp.mean(jnp.take_along_axis(pattern, batch["which"][:, None], 1)),
          "max_weight": jnp.mean(jnp.max(pattern, -1))}


def train_recall(head_dim: int, scales: Sequence[float], inits: Sequence[str], *, steps: int = 300,
                 seeds: Sequence[int] = (0, 1, 2), batch_size: int = 64, num_pairs: int = 16, num_symbols: int = 64,
                 width: int = 64, learning_rate: float = 3e-3) -> list[dict[str, Any]]:
  """Trains a :class:`RecallHead` of width ``head_dim`` with Adam for ``steps`` steps, once per ``(scale, init)`` of
  ``zip(scales, inits)`` and per seed: all of them side by side under ``jax.vmap`` (one compile), the steps one
  ``lax.scan``. Seed ``i``'s parameters and its batch of step ``s`` are drawn from ``(seed_i, s)``, so every ``Dh``,
  scale and init sees the same texts. Returns per ``(scale, init)`` ``{"steps" [steps + 1], metric: [seeds, steps +
  1] for each of :func:`recall_metrics}`` (at step ``s`` on that step's batch before its update; the last on a fresh
  batch after the last update), ``"score_spread_at_init" [seeds]`` (the spread of the query's scaled scores on the
  first batch) and ``"wall_s"`` (of the whole call)."""
  if len(scales) != len(inits):
    raise ValueError(f"scales and inits must pair up, got {len(scales)} and {len(inits)}")
  opt = optax.adam(learning_rate)

  def one_run(scale, factor, seed_key):
    model = RecallHead(num_symbols, width, head_dim, scale)
    draw = lambda key, s: recall_batch(jax.random.fold_in(key, s), batch_size, num_pairs, num_symbols)
    init_key, data_key = jax.random.split(seed_key)
    params = _init_params(model, init_key, factor, num_pairs)
    first = draw(data_key, 0)
    cache = run_with_cache(model, {"params": params}, first["pairs"], first["query"], names="attn/scores")[1]
    variance = row_variance(cache["attn/scores"][:, 0, -1, :num_pairs], jnp.ones((1, num_pairs), bool))

    def loss_fn(params, batch):
      metrics = recall_metrics(model, params, batch)
      return metrics["loss"], metrics

    def body(carry, s):
      params, state = carry
      (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, draw(data_key, s))
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), metrics

    (params, _), metrics = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
    final = recall_metrics(model, params, draw(data_key, steps))
    return jax.tree.map(lambda m, f: jnp.concatenate([m, f[None]]), metrics, final), jnp.sqrt(jnp.mean(variance))

  start = time.perf_counter()
  keys = jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])
  runs = jax.vmap(jax.vmap(lambda c, f, k: one_run(c, f, jax.random.wrap_key_data(k)), in_axes=(None, None, 0)),
                  in_axes=(0, 0, None))
  factors = [qkv_factor(i, width) for i in inits]
  metrics, spread = jax.device_get(jax.jit(runs)(jnp.asarray(scales, jnp.float32), jnp.asarray(factors, jnp.float32),
                                                 keys))
  wall_s = time.perf_counter() - start
  return [{"steps": list(range(steps + 1)), **{k: np.asarray(v[i], np.float64) for k, v in metrics.items()},
           "score_spread_at_init": np.asarray(spread[i], np.float64), "wall_s": wall_s} for i in range(len(scales))]


def steps_to(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
  """The first of ``steps`` at which ``values`` is at least ``threshold``, or None."""
  for s, v in zip(steps, values):
    if v >= threshold:
      return int(s)
  return None


def recall_experiment(head_dims: Sequence[int], *, steps: int = 300, seeds: Sequence[int] = (0, 1, 2),
                      **train_kwargs) -> list[dict]:
  """:func:`train_recall` at every ``Dh`` x :data:`SCALES` x :data:`INITS` (one compile per ``Dh``): one row each,
  ``{"head_dim", "scale", "init", "curve", "mean_loss" (over all steps and seeds: the area under the loss curve),
  "final_loss", "final_accuracy", "final_key_weight" (means over seeds), "steps_to_90" [seeds] (the first step with
  accuracy >= 0.9; None if never)}``."""
  rows = []
  pairs = [(name, init) for init in INITS for name in SCALES]
  for dh in head_dims:
    curves = train_recall(int(dh), [SCALES[name](dh) for name, _ in pairs], [init for _, init in pairs],
                          steps=steps, seeds=seeds, **train_kwargs)
    log.info("scaled_dot_product: Dh %d trained at %d scales x inits x %d seeds in %.1f s", dh, len(pairs),
             len(seeds), curves[0]["wall_s"])
    for (name, init), curve in zip(pairs, curves):
      row = {"head_dim": int(dh), "scale": name, "init": init, "curve": curve,
             "mean_loss": float(np.mean(curve["loss"])), "final_loss": float(np.mean(curve["loss"][:, -1])),
             "final_accuracy": float(np.mean(curve["accuracy"][:, -1])),
             "final_key_weight": float(np.mean(curve["key_weight"][:, -1])),
             "steps_to_90": [steps_to(curve["steps"], a, 0.9) for a in curve["accuracy"]]}
      log.info("scaled_dot_product: init %s, Dh %d, scale %s: mean loss %.3f, final accuracy %.3f, weight on the "
               "key %.3f, accuracy 0.9 at steps %s", init, dh, name, row["mean_loss"], row["final_accuracy"],
               row["final_key_weight"], row["steps_to_90"])
      rows.append(row)
  rows.sort(key=lambda r: (INITS.index(r["init"]), r["head_dim"]))
  return rows


# ------------------------------------------------------------------------------------------- a trained model


_RECORDED = tuple(f"{module}/{name}" for module in ("attn", "cross_attn") for name in ("scores", "q", "k"))


def _recorded(path: str) -> bool:
  """What :func:`_chunk_terms` records: every self- and cross-attention's ``scores``, ``q`` and ``k``."""
  return split_path(path)[2] in _RECORDED


def _modules(cache) -> list[tuple[str, str]]:
  """``(stack, module)`` of every attention the cache recorded scores of (``attn``, ``cross_attn``)."""
  found = []
  for path in cache.names():
    stack, _, name = split_path(path)
    module, _, what = name.rpartition("/")
    if what == "scores" and (stack, module) not in found:
      found.append((stack, module))
  return found


@functools.partial(jax.jit, static_argnames=("model", "kind", "multipliers", "scale"))
def _chunk_terms(model, kind, params, batch, multipliers: tuple[float, ...], scale: float):
  """Per attention ``"STACK/MODULE"``: :func:`_attention_terms` of one chunk of rows (sums, to add over chunks)."""
  args, kwargs = data_lib.model_inputs(kind, batch)
  kwargs.pop("masked_positions", None)
  _, cache = run_with_cache(model, {"params": params}, *args, names=_recorded, **kwargs)
  valid = data_lib.valid_by_stack(kind, batch)
  out = {}
  for stack, module in _modules(cache):
    key_valid = valid["encoder"] if module == "cross_attn" else valid[stack]
    out[f"{stack}/{module}" if stack else module] = _attention_terms(
        *(cache.stack(f"{module}/{name}", stack) for name in ("scores", "q", "k")), valid[stack], key_valid,
        multipliers, scale)
  return out


def _mean_square_terms(x_LxBxTxHxD: jax.Array, valid_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The sum of ``x²`` per head ``[L, H]`` over the valid positions and components, and how many entries it adds."""
  w = valid_BxT[None, :, :, None, None].astype(jnp.float32)
  return jnp.sum(jnp.square(x_LxBxTxHxD.astype(jnp.float32)) * w, (1, 2, 4)), jnp.sum(w) * x_LxBxTxHxD.shape[-1]


def _attention_terms(scores, q, k, query_valid, key_valid, multipliers: tuple[float, ...], scale: float) -> dict:
  """Sums over the query rows that count (a real token, at least two visible keys) of one attention's
  ``scores [L, B, H, T, S]`` (scaled, masked -inf), ``q [L, B, T, H, Dh]``, ``k [L, B, S, K, Dh]``: ``rows``,
  ``variance`` of the raw ``q·k`` (``[L, H]``), each of :data:`MEASURES` at the scale times each multiplier
  (``[L, H, M]``), and ``q``'s and ``k``'s mean-square sums and counts."""
  visible = jnp.isfinite(scores)
  rows = (query_valid[None, :, None, :] & (jnp.sum(visible, -1) >= 2)).astype(jnp.float32)  # [L, B, H, T]
  add = lambda x: jnp.sum(x * rows, (1, 3))  # noqa: E731  [L, B, H, T] -> [L, H]
  raw = jnp.where(visible, scores / scale, 0.0)
  terms = {"rows": jnp.sum(rows, (1, 3)), "variance": add(row_variance(raw, visible))}
  terms["q_mean_square"], terms["q_count"] = _mean_square_terms(q, query_valid)
  terms["k_mean_square"], terms["k_count"] = _mean_square_terms(k, key_valid)
  per_multiplier = [pattern_statistics(scores * mult, visible) for mult in multipliers]
  for m in MEASURES:
    terms[m] = jnp.stack([add(stats[m]) for stats in per_multiplier], -1)  # [L, H, M]
  return terms


def _chunk_row_bytes(model, kind, params, batch) -> int:
  def activations(b):
    args, kwargs = data_lib.model_inputs(kind, b)
    kwargs.pop("masked_positions", None)
    return run_with_cache(model, {"params": params}, *args, names=lambda p: p.endswith("attn/scores"), **kwargs)[1]
  return 4 * data_lib.output_row_bytes(activations, batch)  # the scores, their mask and two softmaxes at a time


def collect(subject, *, max_batches: int = 4, text: str | None = None, target: str | None = None) -> dict[str, Any]:
  """Every attention's numbers on ``subject``'s validation batches (or the text): ``{"scale", "head_dim",
  "multipliers" [M] (the model's scale times these; the last is ``1/scale``: unscaled), "attentions": {"STACK/MODULE":
  {"spread" [L, H] (the spread of the raw q·k over keys, :func:`row_variance`), "scaled_spread" [L, H] (times the
  scale: what the softmax sees), "predicted_spread" [L, H] (√Dh rms(q) rms(k)), "q_rms" [L, H],
  "k_rms" [L, K], measure: [L, H, M] for each of MEASURES, "rows"}}}``."""
  cfg, model, params, kind = subject.cfg, subject.model, subject.params, subject.kind
  scale, head_dim = float(cfg.score_scale), int(cfg.head_width)
  multipliers = tuple(sorted(set(MULTIPLIERS) | {1.0 / scale}))
  totals = None
  for batch in data_lib.eval_batches(subject, max_batches, text, target):
    row_bytes = _chunk_row_bytes(model, kind, params, batch)
    for chunk in data_lib.row_chunks(batch, row_bytes):
      terms = jax.device_get(_chunk_terms(model, kind, params, dict(chunk), multipliers, scale))
      terms = jax.tree.map(lambda a: np.asarray(a, np.float64), terms)
      totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
  attentions = {}
  for name, t in totals.items():
    rows = np.maximum(t["rows"], 1.0)
    q_rms = np.sqrt(t["q_mean_square"] / max(float(t["q_count"]), 1.0))
    k_rms = np.sqrt(t["k_mean_square"] / max(float(t["k_count"]), 1.0))
    group = q_rms.shape[1] // k_rms.shape[1]
    spread = np.sqrt(t["variance"] / rows)
    entry = {"spread": spread, "scaled_spread": spread * scale, "q_rms": q_rms, "k_rms": k_rms,
             "predicted_spread": np.sqrt(head_dim) * q_rms * np.repeat(k_rms, group, axis=1), "rows": t["rows"]}
    for m in MEASURES:
      entry[m] = t[m] / rows[..., None]
    attentions[name] = entry
  return {"scale": scale, "head_dim": head_dim, "multipliers": list(multipliers),
          "unscaled_index": multipliers.index(1.0 / scale), "trained_index": multipliers.index(1.0),
          "attentions": attentions}


def peak_multipliers(found: dict) -> dict[str, np.ndarray]:
  """Per attention ``[L, H]``: the multiplier of :func:`collect`'s grid at which each head's softmax Jacobian norm is
  largest (1: the head is where its pattern is most sensitive to its scores; < 1: it is sharper than that)."""
  mults = np.asarray(found["multipliers"])
  return {name: mults[np.argmax(a["jacobian_norm"], -1)] for name, a in found["attentions"].items()}


def development(subject, *, max_batches: int = 4) -> dict[str, Any]:
  """:func:`collect` at every checkpoint of ``subject``'s workdir (on its first ``max_batches`` validation batches):
  ``{"steps" [S], "attentions": {"STACK/MODULE": {"scaled_spread", "entropy_ratio", "max_weight", "jacobian_norm",
  "peak_multiplier": [S, L] (means over each layer's heads, as trained; the peak's median)}}}``: how the heads'
  scores grow into the softmax during training."""
  from tfjax.explain.subjects import load_subject  # pylint: disable=import-outside-toplevel
  from tfjax.train.restore import checkpoint_steps  # pylint: disable=import-outside-toplevel
  if subject.config is None:
    raise SubjectError(f"--over_checkpoints reads a workdir's checkpoints; {subject.path} is not a tfjax workdir")
  steps = checkpoint_steps(subject.path)
  per_step = []
  for step in steps:
    found = collect(load_subject(subject.path, step=step), max_batches=max_batches)
    peaks, t = peak_multipliers(found), found["trained_index"]
    per_step.append({name: {"scaled_spread": a["scaled_spread"].mean(-1),
                            **{m: a[m][..., t].mean(-1) for m in MEASURES},
                            "peak_multiplier": np.median(peaks[name], -1)} for name, a in found["attentions"].items()})
  names = list(per_step[0])
  return {"steps": np.asarray(steps), "attentions": {
      name: {k: np.stack([row[name][k] for row in per_step]) for k in per_step[0][name]} for name in names}}


# ------------------------------------------------------------------------------------------------- pictures


def plot_theory(theory: dict, rows: list[dict], path: str) -> str:
  """Random scores (spread against √Dh; entropy share and Jacobian norm at each scale against Dh) and the recall
  training curves (accuracy against step, one panel per init)."""
  plt = pictures._plt()
  fig, axes = plt.subplots(1, 5, figsize=(23, 4.2))
  dims = theory["head_dims"]
  axes[0].loglog(dims, theory["sqrt_head_dim"], "k--", label="√Dh")
  axes[0].loglog(dims, theory["spread"], "o", color="C0", label="measured")
  axes[0].set_title("spread of q·k (unit-variance q, k)", fontsize=9)
  for ax, m, title in ((axes[1], "entropy_ratio", "entropy / log N"), (axes[2], "jacobian_norm",
                                                                         "|softmax Jacobian|_F")):
    for i, name in enumerate(SCALES):
      ax.semilogx(dims, theory["scales"][name][m], "o-", color=f"C{i}", label=f"scale {name}")
    ax.set_title(f"{title}, N = {theory['num_keys']} keys", fontsize=9)
  for ax in axes[:3]:
    ax.set_xlabel("head width Dh", fontsize=8)
    ax.legend(fontsize=7)
  styles = {"1/sqrt(Dh)": "-", "1": "--", "1/Dh": ":"}
  for ax, init in zip(axes[3:], INITS):
    for i, dh in enumerate(sorted({r["head_dim"] for r in rows})):
      for r in rows:
        if r["init"] == init and r["head_dim"] == dh:
          ax.plot(r["curve"]["steps"], np.mean(r["curve"]["accuracy"], 0), styles[r["scale"]], color=f"C{i}",
                  label=f"Dh {dh}, scale {r['scale']}")
    ax.set_title(f"recall, {init} init: accuracy (mean over seeds)", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylim(0, 1.02)
  axes[4].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def plot_model(found: dict, path: str) -> str:
  """Per attention one row: each head's spread of raw q·k beside √Dh and the prediction; entropy share and Jacobian
  norm of every head against the scale multiplier (the trained and the unscaled scale marked)."""
  plt = pictures._plt()
  names = list(found["attentions"])
  fig, axes = plt.subplots(len(names), 3, figsize=(16, 3.8 * len(names)), squeeze=False)
  mults = np.asarray(found["multipliers"])
  for row, name in zip(axes, names):
    a = found["attentions"][name]
    num_layers, heads = a["spread"].shape
    x = np.arange(num_layers * heads)
    row[0].bar(x, a["spread"].reshape(-1), color="C0", label="measured")
    row[0].plot(x, a["predicted_spread"].reshape(-1), "k.", label="√Dh rms(q) rms(k)")
    row[0].axhline(np.sqrt(found["head_dim"]), color="C3", ls="--", label="√Dh")
    row[0].set_xticks(range(0, num_layers * heads, heads), [f"L{l}" for l in range(num_layers)], fontsize=7)
    row[0].set_title(f"{name}: spread of raw q·k per head", fontsize=9)
    row[0].legend(fontsize=7)
    for ax, m, title in ((row[1], "entropy_ratio", "entropy / log n"), (row[2], "jacobian_norm",
                                                                          "|softmax Jacobian|_F")):
      for curve in a[m].reshape(num_layers * heads, -1):
        ax.semilogx(mults, curve, color="C0", alpha=0.4, lw=0.8)
      ax.axvline(1.0, color="C2", label="as trained")
      ax.axvline(mults[found["unscaled_index"]], color="C3", ls="--", label="unscaled")
      ax.set_title(f"{name}: {title} per head", fontsize=9)
      ax.set_xlabel("scale x m (m = 1: the model's)", fontsize=8)
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def plot_development(dev: dict, path: str) -> str:
  """Against the checkpoint step, one line per attention x layer: the scaled spread, the entropy share and the
  Jacobian norm as trained, and the multiplier of the Jacobian's peak."""
  plt = pictures._plt()
  fig, axes = plt.subplots(1, 4, figsize=(19, 3.8))
  panels = (("scaled_spread", "spread of the scaled scores"), ("entropy_ratio", "entropy / log n"),
            ("jacobian_norm", "|softmax Jacobian|_F"), ("peak_multiplier", "multiplier of the Jacobian's peak"))
  for ax, (key, title) in zip(axes, panels):
    for i, (name, a) in enumerate(dev["attentions"].items()):
      for l in range(a[key].shape[1]):
        ax.plot(dev["steps"], a[key][:, l], marker="o", ms=3, color=f"C{l}", ls=("-", "--", ":")[i % 3],
                label=f"{name} L{l}")
    ax.set_title(f"{title} (mean over heads)" if key != "peak_multiplier" else f"{title} (median over heads)",
                 fontsize=9)
    ax.set_xlabel("step", fontsize=8)
  axes[3].set_yscale("log", base=2)
  axes[3].axhline(1.0, color="k", lw=0.5)
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------------------------- commands


def _theory_summary(theory: dict, rows: list[dict], steps: int) -> str:
  lines = [f"random q, k (unit-variance components), N = {theory['num_keys']} keys: spread of q·k, and at each "
           "scale entropy/log N | largest weight | |Jacobian|_F"]
  for i, dh in enumerate(theory["head_dims"]):
    parts = "   ".join(f"{name:>10s} {theory['scales'][name]['entropy_ratio'][i]:.2f} "
                       f"{theory['scales'][name]['max_weight'][i]:.2f} {theory['scales'][name]['jacobian_norm'][i]:.3f}"
                       for name in SCALES)
    lines.append(f"  Dh {dh:5d}: spread {theory['spread'][i]:6.2f} (√Dh {theory['sqrt_head_dim'][i]:6.2f})   {parts}")
  lines.append(f"recall ({steps} steps, {len(rows[0]['steps_to_90'])} seeds): spread of the scaled scores at init, "
               "mean loss over training, final accuracy and weight on the right key, steps to accuracy 0.9 per seed")
  for r in rows:
    reached = " ".join("never" if s is None else str(s) for s in r["steps_to_90"])
    lines.append(f"  {r['init']:>5s} init, Dh {r['head_dim']:4d}, scale {r['scale']:>10s}: spread "
                 f"{np.mean(r['curve']['score_spread_at_init']):7.3f}  mean loss {r['mean_loss']:.3f}  accuracy "
                 f"{r['final_accuracy']:.3f}  key weight {r['final_key_weight']:.3f}  0.9 at {reached}")
  return "\n".join(lines)


def run_standalone(out_dir: str, *, head_dims: Sequence[int] = (8, 32, 128, 512), steps: int = 300, seed: int = 0,
                   quick: bool = False) -> dict:
  """``explain scaled_dot_product`` without a workdir: :func:`random_score_statistics` and :func:`recall_experiment`
  (seeds ``seed, seed + 1, seed + 2``, batches of 64) at ``head_dims``. ``quick``: fewer random rows, one seed,
  batches of 32 (tests). Writes ``scaled_dot_product.png`` and ``scaled_dot_product.json``."""
  head_dims = [int(d) for d in head_dims]
  if not head_dims or min(head_dims) < 1:
    raise SubjectError(f"--head_dims must be positive integers, got {head_dims}")
  if steps < 1:
    raise SubjectError(f"--steps must be at least 1, got {steps}")
  os.makedirs(out_dir, exist_ok=True)
  key = jax.random.key(seed)
  theory = random_score_statistics(key, head_dims, num_rows=256 if quick else 2048)
  seeds = (seed,) if quick else (seed, seed + 1, seed + 2)
  rows = recall_experiment(head_dims, steps=steps, seeds=seeds, batch_size=32 if quick else 64)
  files = {"picture": plot_theory(theory, rows, os.path.join(out_dir, "scaled_dot_product.png"))}
  out = {"summary": _theory_summary(theory, rows, steps), "random_scores": theory, "recall": rows, "files": files}
  files["json"] = pictures.write_json(os.path.join(out_dir, "scaled_dot_product.json"), out)
  return out


def _model_summary(subject, found: dict) -> str:
  t, u = found["trained_index"], found["unscaled_index"]
  lines = [f"scaled dot product in {subject.path}: Dh {found['head_dim']}, scale {found['scale']:.4g} "
           f"(1/√Dh = {found['head_dim'] ** -0.5:.4g}); per head: spread of raw q·k (√Dh rms(q) rms(k)) -> "
           "scaled, then "
           "entropy/log n | largest weight | |Jacobian|_F as trained -> unscaled"]
  for name, a in found["attentions"].items():
    lines.append(f"  {name}:")
    for l in range(a["spread"].shape[0]):
      lines.append(f"    layer {l}: " + "  ".join(
          f"h{h} {a['spread'][l, h]:.2f} ({a['predicted_spread'][l, h]:.2f})->{a['scaled_spread'][l, h]:.2f} "
          f"{a['entropy_ratio'][l, h, t]:.2f}->{a['entropy_ratio'][l, h, u]:.2f} "
          f"{a['max_weight'][l, h, t]:.2f}->{a['max_weight'][l, h, u]:.2f} "
          f"{a['jacobian_norm'][l, h, t]:.3f}->{a['jacobian_norm'][l, h, u]:.3f}" for h in range(a["spread"].shape[1])))
  return "\n".join(lines)


def _development_summary(dev: dict) -> str:
  lines = [f"over {len(dev['steps'])} checkpoints (steps {', '.join(str(s) for s in dev['steps'])}), per layer: "
           "scaled spread, entropy/log n, |Jacobian|_F, the Jacobian's peak multiplier"]
  for name, a in dev["attentions"].items():
    for l in range(a["scaled_spread"].shape[1]):
      lines.append(f"  {name} layer {l}: " + "  ".join(
          f"{s}: {a['scaled_spread'][i, l]:.2f} {a['entropy_ratio'][i, l]:.2f} {a['jacobian_norm'][i, l]:.3f} "
          f"x{a['peak_multiplier'][i, l]:.3g}" for i, s in enumerate(dev["steps"])))
  return "\n".join(lines)


def run(subject, out_dir: str, *, max_batches: int = 4, text: str | None = None, target: str | None = None,
        over_checkpoints: bool = False) -> dict:
  """``explain scaled_dot_product WORKDIR``: :func:`collect`; writes ``scaled_dot_product.png`` and
  ``scaled_dot_product.json``; ``over_checkpoints``: also :func:`development` on the same batches (``scaled_dot_product_steps.png``)."""
  os.makedirs(out_dir, exist_ok=True)
  found = collect(subject, max_batches=max_batches, text=text, target=target)
  files = {"picture": plot_model(found, os.path.join(out_dir, "scaled_dot_product.png"))}
  out = {"summary": _model_summary(subject, found), **found, "peak_multiplier": peak_multipliers(found),
         "files": files}
  if over_checkpoints:
    out["development"] = development(subject, max_batches=max_batches)
    files["steps"] = plot_development(out["development"], os.path.join(out_dir, "scaled_dot_product_steps.png"))
    out["summary"] += "\n" + _development_summary(out["development"])
  files["json"] = pictures.write_json(os.path.join(out_dir, "scaled_dot_product.json"), out)
  return out

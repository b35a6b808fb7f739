"""Superposition in a trained model: how it places more directions than it has dimensions.

A model of width ``D`` keeps far more than ``D`` directions in its residual stream: ``V`` token embeddings (4,096 in
256 dimensions for ``gpt2_small_cpu``, 50,257 in 768 for GPT-2), and per layer ``F = 4 D`` MLP neurons, each reading
the stream along one direction (column ``f`` of ``fc_in [D, F]``: the question it asks) and writing along another
(row ``f`` of ``fc_out [F, D]``). Only ``D`` of them can be exactly orthogonal. The notes' claim is that in high
dimensions nearly orthogonal is enough, and that many more such directions fit. This module measures, for each
set of ``N`` directions ``W [N, D]`` of a trained model (:func:`direction_sets`), beside ``N`` random directions in
the same ``D`` (what "nearly orthogonal" means there, :mod:`tfjax.explain.superposition`):

* the pairwise angles (on at most ``max_vectors`` rows, drawn at random): their spread around 90 degrees, the mean
  cosine (a shared direction shifts every angle) and the largest ``|cos|`` (near-duplicates);
* the feature dimensionality of each direction, Elhage et al.'s ``D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2``
  (1: a dimension of its own; ``D / N`` when the ``N`` directions share the ``D`` dimensions evenly, a tight frame,
  the most ``N > D`` directions of one length can all have; about ``D / (N + D)`` for random directions; near 0: it
  shares its direction with many others), computed exactly over all ``N`` through the ``[D, D]`` Gram matrix
  ``G = W^T W``: ``sum_j (W_hat_i . W_j)^2 = W_hat_i^T G W_hat_i``;
* the effective number of dimensions the set spans, the participation ratio ``tr(G)^2 / tr(G^2)`` (``D`` when the
  set fills every dimension evenly, 1 when it lies on one line).

Trained token embeddings share a mean direction (every pairwise cosine shifted up, and ``G`` dominated by it), so
the angles and dimensions are also given for the set with its mean subtracted (``centred_*``).

:func:`run` is ``./launch.sh explain superposition WORKDIR`` (without a workdir the command runs the toy models of
:mod:`tfjax.explain.superposition` instead).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import superposition as sp

BINS = 180  # angle histogram bins over [0, 180] degrees


def direction_sets(subject) -> dict[str, np.ndarray]:
  """The subject's sets of directions in its residual stream, name -> ``[N, D]`` float32 (one row a direction).

  ``embed``: the token embeddings (word2vec: its word vectors); ``unembed``: the untied unembedding's columns; for
  each layer of each stack, ``{stack}/block_{l}/mlp/reads`` (``fc_in`` transposed: what each neuron reads) and
  ``.../writes`` (``fc_out``: what each neuron adds to the stream)."""
  if subject.kind == "word2vec":
    return {"embed": np.asarray(subject.vectors.vectors, np.float32)}
  from tfjax.explain.capture import model_stacks
  params = subject.params
  sets = {"embed": np.asarray(params["embed"]["embedding"], np.float32)}
  if "unembed" in params:
    sets["unembed"] = np.asarray(params["unembed"]["kernel_dense"]["kernel"], np.float32).T
  for stack, layout in model_stacks(subject.model).items():
    for l in range(layout.num_layers):
      mlp = params[stack][f"block_{l}"]["mlp"]
      sets[f"{stack}/block_{l}/mlp/reads"] = np.asarray(mlp["fc_in"]["kernel"], np.float32).T
      sets[f"{stack}/block_{l}/mlp/writes"] = np.asarray(mlp["fc_out"]["kernel"], np.float32)
  return sets


@jax.jit
def dimensionality(vectors_NxD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(D_i [N], effective_dims)``: each row's feature dimensionality ``||W_i||^4 / (W_i^T G W_i)`` with
  ``G = W^T W [D, D]`` (0 for a zero row), and the participation ratio ``tr(G)^2 / tr(G^2)``. Equal to
  :func:`tfjax.explain.superposition.dimensions_per_feature` of ``W^T`` without its ``[N, N]`` overlaps."""
  w = vectors_NxD.astype(jnp.float32)
  gram_DxD = jnp.matmul(w.T, w, precision=jax.lax.Precision.HIGHEST)
  norms_sq = jnp.sum(w * w, axis=-1)
  shared = jnp.sum(jnp.matmul(w, gram_DxD, precision=jax.lax.Precision.HIGHEST) * w, axis=-1)  # W_i^T G W_i
  dims = jnp.where(shared > 0, norms_sq**2 / jnp.where(shared > 0, shared, 1.0), 0.0)
  effective = jnp.trace(gram_DxD) ** 2 / jnp.sum(gram_DxD * gram_DxD)
  return dims, effective


@jax.jit
def _angle_summary(vectors_SxD: jax.Array) -> dict[str, jax.Array]:
  cos = sp.cosine_matrix(vectors_SxD)
  upper = jnp.triu(jnp.ones(cos.shape, bool), k=1)
  c = jnp.clip(jnp.where(upper, cos, 0.0), -1.0, 1.0)
  n_pairs = jnp.sum(upper)
  angles = jnp.degrees(jnp.arccos(c))
  hist = jnp.histogram(jnp.where(upper, angles, -1.0), bins=BINS, range=(0.0, 180.0))[0]
  return {"mean_cosine": jnp.sum(c) / n_pairs,
          "std_cosine": jnp.sqrt(jnp.sum(jnp.where(upper, (c - jnp.sum(c) / n_pairs) ** 2, 0.0)) / n_pairs),
          "mean_abs_deviation_deg": jnp.sum(jnp.where(upper, jnp.abs(angles - 90.0), 0.0)) / n_pairs,
          "max_abs_cosine": jnp.max(jnp.abs(c)), "angle_histogram": hist}


def direction_statistics(vectors_NxD: np.ndarray, key: jax.Array, *, max_vectors: int = 2048) -> dict[str, Any]:
  """The numbers of one set of directions (see the module docstring) and of ``N`` random directions in the same
  ``D`` (``random_*``, drawn with ``key``): ``num_vectors``, ``dim``, ``per_dimension`` (``N / D``), the angle
  statistics of at most ``max_vectors`` rows (``sampled``; ``angle_histogram [BINS]`` over ``[0, 180]`` degrees,
  ``mean_cosine``, ``std_cosine``, ``mean_abs_deviation_deg``, ``max_abs_cosine``), the feature dimensionalities
  (``dims_per_direction [N]``, their ``mean_dims_per_direction`` and ``total_dims``) and ``effective_dims``; and,
  of the set with its mean row subtracted, ``centred_mean_abs_deviation_deg``, ``centred_mean_cosine``,
  ``centred_mean_dims_per_direction`` and ``centred_effective_dims``."""
  w = np.asarray(vectors_NxD, np.float32)
  if w.ndim != 2 or w.shape[0] < 2 or w.shape[1] < 2:
    raise ValueError(f"directions must be [N, D] with N, D >= 2, got shape {w.shape}")
  n, d = w.shape
  sample_key, random_key = jax.random.split(key)
  rows = np.sort(np.asarray(jax.random.permutation(sample_key, n)[:max_vectors])) if n > max_vectors else None
  nonzero = np.linalg.norm(w, axis=-1) > 0
  if not nonzero.all():
    raise ValueError(f"{int((~nonzero).sum())} of the {n} directions are zero: their angles are undefined")
  # random directions with the trained lengths, so that D_i compares placement, not lengths
  rand = np.asarray(sp.random_unit_vectors(random_key, n, d)) * np.linalg.norm(w, axis=-1, keepdims=True)
  out: dict[str, Any] = {"num_vectors": n, "dim": d, "per_dimension": n / d, "sampled": min(n, max_vectors)}
  for prefix, v in (("", w), ("random_", rand)):
    out.update({prefix + k: x for k, x in _set_statistics(v, rows).items()})
  centred = w - w.mean(axis=0, keepdims=True)
  if (np.linalg.norm(centred, axis=-1) > 0).all():
    stats = _set_statistics(centred, rows)
    out.update({"centred_" + k: stats[k] for k in ("mean_abs_deviation_deg", "mean_cosine", "mean_dims_per_direction",
                                                   "effective_dims")})
  return out


def _set_statistics(v: np.ndarray, rows: np.ndarray | None) -> dict[str, Any]:
  """The angle statistics of ``v``'s sampled ``rows`` (all when None) and the dimensionalities of all of ``v``."""
  summary = jax.device_get(_angle_summary(jnp.asarray(v if rows is None else v[rows])))
  dims, effective = jax.device_get(dimensionality(jnp.asarray(v)))
  out = {k: (float(x) if np.ndim(x) == 0 else np.asarray(x)) for k, x in summary.items()}
  out.update(dims_per_direction=np.asarray(dims), mean_dims_per_direction=float(dims.mean()),
             total_dims=float(dims.sum()), effective_dims=float(effective))
  return out


def _line(name: str, s: dict) -> str:
  return (f"  {name:28s} {s['num_vectors']:6d} {s['per_dimension']:7.1f}  "
          f"{s['mean_abs_deviation_deg']:5.1f} ({s['random_mean_abs_deviation_deg']:4.1f})  "
          f"{s['mean_cosine']:+.3f}  {s['max_abs_cosine']:.3f} ({s['random_max_abs_cosine']:.3f})  "
          f"{s['mean_dims_per_direction']:.4f} ({s['random_mean_dims_per_direction']:.4f})  "
          f"{s['effective_dims']:6.1f} ({s['random_effective_dims']:5.1f})  "
          f"{s.get('centred_effective_dims', np.nan):6.1f}")


def _plotted(names: list[str]) -> list[str]:
  """The sets drawn: the embeddings (and unembedding), and the first and last layer's MLP of each stack."""
  keep = [n for n in names if "/" not in n]
  stacks: dict[str, list[int]] = {}
  for n in names:
    if "/" in n:
      stack, block = n.split("/")[:2]
      stacks.setdefault(stack, []).append(int(block.split("_")[1]))
  for stack, layers in stacks.items():
    for l in sorted({min(layers), max(layers)}):
      keep += [f"{stack}/block_{l}/mlp/reads", f"{stack}/block_{l}/mlp/writes"]
  return keep


def plot(stats: dict[str, dict], path: str) -> str:
  """One row per set drawn (:func:`_plotted`): its angle histogram against random directions' (and the exact law
  of random angles), and its feature dimensionalities against the random ones'."""
  from tfjax.explain.pictures import _plt
  plt = _plt()
  names = _plotted(list(stats))
  fig, axes = plt.subplots(len(names), 2, figsize=(11, 2.3 * len(names)), squeeze=False)
  edges = np.linspace(0.0, 180.0, BINS + 1)
  centres = (edges[:-1] + edges[1:]) / 2
  for (ax_a, ax_d), name in zip(axes, names):
    s = stats[name]
    for prefix, label, colour in (("", "trained", "C0"), ("random_", "random, same lengths", "C7")):
      h = np.asarray(s[prefix + "angle_histogram"], np.float64)
      ax_a.step(centres, h / h.sum() / (180.0 / BINS), where="mid", color=colour, label=label)
    ax_a.plot(centres, sp.angle_density(centres, s["dim"]), "k--", lw=0.8, label=f"random law, d={s['dim']}")
    ax_a.set_xlim(0, 180)
    ax_a.set_title(f"{name}: {s['num_vectors']} directions in {s['dim']} dims ({s['per_dimension']:.1f} per dim)",
                   fontsize=9)
    ax_a.set_ylabel("density / degree", fontsize=8)
    hi = max(float(np.max(s["dims_per_direction"])), float(np.max(s["random_dims_per_direction"])), 1e-6)
    bins = np.linspace(0.0, hi, 50)
    ax_d.hist(s["dims_per_direction"], bins=bins, color="C0", alpha=0.7, label="trained")
    ax_d.hist(s["random_dims_per_direction"], bins=bins, color="C7", alpha=0.5, label="random")
    ax_d.axvline(s["dim"] / s["num_vectors"], color="k", ls="--", lw=0.8, label="D / N: a tight frame")
    ax_d.set_title(f"dimensions per direction: mean {s['mean_dims_per_direction']:.4f}; effective dims "
                   f"{s['effective_dims']:.0f} of {s['dim']}", fontsize=9)
  axes[0, 0].legend(fontsize=7)
  axes[0, 1].legend(fontsize=7)
  axes[-1, 0].set_xlabel("angle between two directions (degrees)")
  axes[-1, 1].set_xlabel("feature dimensionality D_i = |W_i|^2 / sum_j (W_i_hat . W_j)^2")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def run(subject, out_dir: str, *, seed: int = 0) -> dict:
  """Writes ``superposition_model.png`` and ``superposition_model.json`` (every number, per set) for a trained
  model; returns them with the printed table as ``"summary"``."""
  from tfjax.explain.pictures import write_json
  os.makedirs(out_dir, exist_ok=True)
  key = jax.random.key(seed)
  sets = direction_sets(subject)
  stats = {name: direction_statistics(w, jax.random.fold_in(key, i)) for i, (name, w) in enumerate(sets.items())}
  lines = [f"superposition in {subject.path}: each set of directions against as many random ones (in brackets); "
           "centred: effective dims with the mean direction removed",
           f"  {'set':28s} {'N':>6s} {'N/D':>7s}  {'|θ-90°|':>12s}  {'cos':>6s}  {'max |cos|':>13s}  "
           f"{'dims/direction':>17s}  {'effective dims':>14s}  {'centred':>7s}"]
  lines += [_line(name, s) for name, s in stats.items()]
  files = {"picture": plot(stats, os.path.join(out_dir, "superposition_model.png"))}
  out = {"summary": "\n".join(lines), "sets": stats, "seed": seed, "files": files}
  files["json"] = write_json(os.path.join(out_dir, "superposition_model.json"), out)
  return out

"""The pictures of :mod:`tfjax.explain.superposition` (matplotlib, Agg): each function takes the numpy results of the
library, writes one PNG and returns its path."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from tfjax.explain.superposition import STICKY_FRACTIONS, angle_density


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: str | os.PathLike, dpi: int = 90) -> str:
  fig.savefig(path, dpi=dpi)
  _plt().close(fig)
  return str(path)


def plot_angles(near: dict, path: str | os.PathLike, show_dims: Sequence[int] = (2, 8, 32, 128, 1024)) -> str:
  """Left: the distribution of pairwise angles (density per degree; steps measured, dashed the exact
  ``sin^(d-2)`` law) for the dims of ``near`` (:func:`~tfjax.explain.superposition.near_orthogonality`) among
  ``show_dims``. Right: the largest ``|cos|`` against ``d`` with the Johnson-Lindenstrauss bound and ``1/sqrt(d)``."""
  plt = _plt()
  dims = [int(d) for d in near["dims"]]
  edges = np.asarray(near["bin_edges_deg"])
  centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
  shown = [d for d in dims if d in show_dims] or dims[:: max(1, len(dims) // 5)]
  for k, d in enumerate(shown):
    hist = np.asarray(near["angle_histogram"][dims.index(d)], np.float64)
    colour = f"C{k}"
    ax.step(centres, hist / hist.sum() / width, where="mid", color=colour, lw=1.2, label=f"d = {d}")
    ax.plot(centres, angle_density(centres, d), "--", color=colour, lw=0.8)
  ax.axvline(90, color="k", lw=0.5)
  ax.set_xlim(0, 180)
  ax.set_xticks(range(0, 181, 30))
  ax.set_xlabel("angle between two random directions (degrees)")
  ax.set_ylabel("density (per degree)")
  ax.set_yscale("log")
  ax.set_ylim(1e-4, 1.0)
  ax.legend(fontsize=8, title=f"{near['num_vectors']} vectors; dashed: exact", title_fontsize=8)
  ax.set_title("pairwise angles concentrate at 90 deg")
  d = np.asarray(dims, np.float64)
  bx.plot(d, near["max_abs_cosine"], "o-", label=f"largest |cos| of {near['num_vectors']} random vectors")
  bx.plot(d, near["jl_max_cosine"], "k--", label=f"JL bound sqrt(2 ln(N(N-1)/delta)/d), delta={near['delta']}")
  bx.plot(d, near["std_cosine"], "s:", ms=3, label="std of cos (exact 1/sqrt(d))")
  bx.plot(d, 1 / np.sqrt(d), color="grey", lw=0.6)
  bx.set_xscale("log", base=2)
  bx.set_yscale("log")
  bx.set_xlabel("dimension d")
  bx.set_ylabel("|cos|")
  bx.grid(alpha=0.3, which="both")
  bx.legend(fontsize=7)
  bx.set_title("worst pair: largest |cos| against d")
  fig.tight_layout()
  return _save(fig, path)


def plot_packing(pack: dict, path: str | os.PathLike) -> str:
  """How many directions fit with every pair within ``90 deg +- tolerance`` against ``d`` (log-log):
  :func:`~tfjax.explain.superposition.packing_numbers`' optimised packing, random draws (median, min-max bar), the
  JL lower bound, the Welch upper bound, and ``N = d`` (an orthonormal basis)."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  dims = np.asarray(pack["dims"], np.float64)
  rd = np.asarray(pack["random_dims"], np.float64)
  all_d = np.unique(np.concatenate([dims, rd]))
  ax.plot(all_d, all_d, color="grey", lw=1, label="N = d (orthonormal basis)")
  if "optimized" in pack:
    ax.plot(dims, pack["optimized"], "o-", color="C3", label="optimised packing (gradient descent)")
  counts = np.asarray(pack["random_counts"], np.float64)
  med = np.asarray(pack["random_median"], np.float64)
  ax.errorbar(rd, med, yerr=[med - counts.min(1), counts.max(1) - med], fmt="s-", ms=4, color="C0", capsize=2,
              label=f"random draws before the first bad pair (median of {counts.shape[1]})")
  ax.plot(rd, pack["random_jl"], "k--", lw=1, label="JL bound: N random all fit w.p. >= 1/2")
  welch = np.asarray(pack["welch"], np.float64)
  finite = np.isfinite(welch)
  ax.plot(dims[finite], welch[finite], "v:", color="C2", label="Welch upper bound (none beyond)")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("dimension d")
  ax.set_ylabel("number of directions N")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  ax.set_title(f"directions with every pair within 90 +- {pack['tolerance_deg']:g} deg")
  fig.tight_layout()
  return _save(fig, path)


def plot_toy_models(reports: dict, sparsities: Sequence[float], path: str | os.PathLike) -> str:
  """The paper's figure: for each model (``reports``: name -> :func:`~tfjax.explain.superposition.toy_model_report`)
  and each sparsity, ``W^T W`` (red +, blue -) and the feature norms ``||W_i||`` coloured by superposition
  ``sum_{j != i} (W_hat_i . W_j)^2`` (dark: a dimension of its own; yellow: shared)."""
  plt = _plt()
  import matplotlib.colors as mcolors
  names = list(reports)
  cols = len(sparsities)
  fig, axes = plt.subplots(2 * len(names), cols, figsize=(1.6 * cols + 1.2, 4.0 * len(names)),
                           gridspec_kw={"height_ratios": [1, 1.1] * len(names)}, squeeze=False)
  fig.subplots_adjust(left=0.06, right=0.88, top=0.93, bottom=0.04, hspace=0.45, wspace=0.12)
  cmap, norm = plt.get_cmap("viridis"), mcolors.Normalize(0.0, 1.0)
  for r, name in enumerate(names):
    rep = reports[name]
    n = rep["gram"].shape[-1]
    for c, s in enumerate(sparsities):
      ax, bx = axes[2 * r, c], axes[2 * r + 1, c]
      ax.imshow(rep["gram"][c], cmap="RdBu_r", vmin=-1, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"1-S = {1 - s:.3g}: {int(rep['features_represented'][c])} feat.", fontsize=8)
      norms = rep["feature_norms"][c]
      bx.barh(np.arange(n), norms, color=cmap(norm(np.minimum(rep["interference"][c], 1.0))), height=0.8)
      bx.axvline(0.5, color="k", lw=0.5, ls=":")
      bx.set_xlim(0, 1.3)
      bx.set_ylim(n - 0.5, -0.5)
      bx.set_yticks([])
      bx.tick_params(labelsize=6)
      if c == 0:
        ax.set_ylabel(f"{name}\nW^T W", fontsize=9)
        bx.set_ylabel("||W_i|| (feature 0 on top)", fontsize=7)
  fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=fig.add_axes([0.9, 0.1, 0.015, 0.75]),
               label="bar colour: superposition sum_{j!=i} (W^_i . W_j)^2")
  fig.suptitle("toy model of superposition (n = 20, m = 5, importance 0.7^i): W^T W and feature norms ||W_i||; "
               "features represented: ||W_i|| > 0.5", fontsize=10)
  return _save(fig, path)


def plot_dimensionality(reports: dict, sparsities: Sequence[float], path: str | os.PathLike,
                        threshold: float = 0.5) -> str:
  """Dimensions per feature against ``1 / (1 - S)`` (log): each represented feature's ``D_i`` (dots, ``||W_i|| >
  threshold``) and the model's ``D* = m / ||W||_F^2`` (line), with the sticky fractions 1, 3/4, 2/3, 1/2, 2/5, 3/8
  marked."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  x = 1.0 / (1.0 - np.asarray(sparsities, np.float64))
  for frac, label in zip(STICKY_FRACTIONS, ("1", "3/4", "2/3", "1/2", "2/5", "3/8")):
    ax.axhline(frac, color="grey", lw=0.6, ls="--")
    ax.text(x.max() * 1.6, frac, label, va="center", fontsize=8, color="dimgrey")
  rng = np.random.default_rng(0)
  for k, (name, rep) in enumerate(reports.items()):
    colour = f"C{k}"
    ax.plot(x, rep["model_dimensions_per_feature"], "-", color=colour, lw=1.5, label=f"{name}: m / ||W||_F^2")
    for c in range(len(x)):
      keep = rep["feature_norms"][c] > threshold
      jitter = np.exp(rng.uniform(-0.08, 0.08, keep.sum()))
      ax.scatter(x[c] * jitter, rep["dimensions_per_feature"][c][keep], s=12, color=colour, alpha=0.6,
                 label=f"{name}: D_i of represented features" if c == 0 else None)
  ax.set_xscale("log")
  ax.set_xlim(x.min() / 1.5, x.max() * 2.5)
  ax.set_ylim(0, 1.1)
  ax.set_xlabel("1 / (1 - S)   (1 / feature probability)")
  ax.set_ylabel("dimensions per feature")
  ax.legend(fontsize=7, loc="lower left")
  ax.set_title("feature dimensionality D_i = ||W_i||^2 / sum_j (W^_i . W_j)^2")
  fig.tight_layout()
  return _save(fig, path)

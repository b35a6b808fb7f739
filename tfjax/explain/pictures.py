"""The pictures of ``explain``: matplotlib heatmap grids, token grids, curves and scatters, and the JSON beside them.

Every function takes numpy arrays (shapes in the docstrings), writes one PNG and returns its path. Masked entries
(``valid == False``: the causal triangle of a GPT, padding of a BERT) are drawn blank (white) and padded tokens are
greyed on the axes, so that what the model could not see is visibly not there.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

PAD_COLOUR = "#bbbbbb"


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def to_jsonable(x: Any) -> Any:
  """``x`` with numpy arrays and scalars as lists and Python numbers (NaN/inf as None), for ``json.dump``."""
  if isinstance(x, Mapping):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if hasattr(x, "__array__") and not isinstance(x, (str, bytes)):
    a = np.asarray(x)
    if a.dtype.kind == "f":
      return to_jsonable(a.tolist()) if a.ndim else (float(a) if np.isfinite(a) else None)
    return a.tolist()
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  return x


def write_json(path: str | os.PathLike, obj: Any) -> str:
  """Writes ``obj`` (numpy allowed) as JSON to ``path`` atomically; returns the path."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(to_jsonable(obj), f, indent=1)
  os.replace(tmp, path)
  return str(path)


def _label_axes(ax, row_labels, col_labels, row_valid=None, col_valid=None, show_rows=True, show_cols=True,
                fontsize=7):
  ax.set_xticks(range(len(col_labels)))
  ax.set_yticks(range(len(row_labels)))
  ax.set_xticklabels(col_labels if show_cols else [], rotation=90, fontsize=fontsize)
  ax.set_yticklabels(row_labels if show_rows else [], fontsize=fontsize)
  ax.tick_params(length=0)
  for ticks, valid in ((ax.get_xticklabels(), col_valid), (ax.get_yticklabels(), row_valid)):
    if valid is not None:
      for t, v in zip(ticks, valid):
        if not v:
          t.set_color(PAD_COLOUR)


def heatmap_grid(values: np.ndarray, path: str | os.PathLike, *, row_labels: Sequence[str],
                 col_labels: Sequence[str], valid: np.ndarray | None = None, row_valid=None, col_valid=None,
                 grid_row_names: Sequence[str] | None = None, grid_col_names: Sequence[str] | None = None,
                 title: str = "", xlabel: str = "key", ylabel: str = "query", vmin: float = 0.0,
                 vmax: float | None = 1.0, cmap: str = "Blues") -> str:
  """A grid of heatmaps: ``values [R, C, T, S]`` (e.g. layers x heads of attention patterns ``[T, S]``).

  ``valid [T, S]`` (or broadcastable to ``values``) marks the entries that exist (False: drawn white, e.g. the causal
  triangle); ``row_valid [T]`` / ``col_valid [S]`` grey the labels of padded tokens. Labels are drawn on every panel
  of sequences up to 24 tokens, else on the outer panels only.
  """
  plt = _plt()
  values = np.asarray(values, np.float32)
  n_rows, n_cols, t, s = values.shape
  mask = None if valid is None else ~np.broadcast_to(np.asarray(valid, bool), values.shape)
  cell = min(0.32, 3.2 / max(t, s))
  panel_w, panel_h = s * cell + 0.9, t * cell + 0.9
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_w * n_cols + 0.6, panel_h * n_rows + 0.8), squeeze=False)
  colormap = plt.get_cmap(cmap).with_extremes(bad="white")
  every = max(t, s) <= 24
  image = None
  for r in range(n_rows):
    for c in range(n_cols):
      ax = axes[r, c]
      data = values[r, c] if mask is None else np.ma.masked_array(values[r, c], mask[r, c])
      image = ax.imshow(data, cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
      _label_axes(ax, row_labels, col_labels, row_valid, col_valid, show_rows=every or c == 0,
                  show_cols=every or r == n_rows - 1, fontsize=6 if max(t, s) > 16 else 7)
      name = " ".join(x for x in ((grid_row_names[r] if grid_row_names else ""),
                                  (grid_col_names[c] if grid_col_names else "")) if x)
      ax.set_title(name, fontsize=8)
      if r == n_rows - 1:
        ax.set_xlabel(xlabel, fontsize=7)
      if c == 0:
        ax.set_ylabel(ylabel, fontsize=7)
  if image is not None:
    fig.colorbar(image, ax=axes, shrink=0.6, pad=0.01)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=72 if n_rows * n_cols > 16 else 90, bbox_inches="tight")
  plt.close(fig)
  return str(path)


def heatmap(values: np.ndarray, path: str | os.PathLike, *, row_labels: Sequence[str], col_labels: Sequence[str],
            title: str = "", xlabel: str = "", ylabel: str = "", cmap: str = "viridis", center: bool = False,
            annotate: bool = False, fmt: str = "{:.2f}", row_valid=None, col_valid=None) -> str:
  """One heatmap of ``values [R, C]``; ``center=True``: a diverging map symmetric about 0; ``annotate``: numbers."""
  plt = _plt()
  values = np.asarray(values, np.float32)
  r, c = values.shape
  fig, ax = plt.subplots(figsize=(max(3.5, 0.32 * c + 1.8), max(2.5, 0.3 * r + 1.3)))
  kw = {}
  if center:
    lim = float(np.nanmax(np.abs(values))) or 1.0
    kw = dict(vmin=-lim, vmax=lim)
  image = ax.imshow(values, cmap="RdBu_r" if center else cmap, aspect="auto", interpolation="nearest", **kw)
  _label_axes(ax, row_labels, col_labels, row_valid, col_valid)
  if annotate:
    lo, hi = np.nanmin(values), np.nanmax(values)
    for i in range(r):
      for j in range(c):
        v = values[i, j]
        if not np.isfinite(v):
          continue  # an entry that does not exist (drawn blank)
        light = (v - lo) / (hi - lo + 1e-12) > 0.6 if not center else abs(v) > 0.6 * kw["vmax"]
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color="white" if light else "black")
  ax.set_xlabel(xlabel, fontsize=8)
  ax.set_ylabel(ylabel, fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, shrink=0.8)
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)
  return str(path)


def token_grid(tokens: Sequence[Sequence[str]], values: np.ndarray, path: str | os.PathLike, *,
               row_names: Sequence[str], col_labels: Sequence[str], title: str = "", xlabel: str = "",
               cmap: str = "Greens", vmin: float = 0.0, vmax: float = 1.0) -> str:
  """A table of words ``tokens [R][C]`` in cells coloured by ``values [R, C]`` (e.g. the logit lens: each layer's top
  guess at each position, coloured by its probability)."""
  plt = _plt()
  values = np.asarray(values, np.float32)
  r, c = values.shape
  fig, ax = plt.subplots(figsize=(max(4.0, 0.62 * c + 1.6), max(2.0, 0.36 * r + 1.2)))
  image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
  for i in range(r):
    for j in range(c):
      ax.text(j, i, tokens[i][j][:8], ha="center", va="center", fontsize=7,
              color="white" if values[i, j] > 0.65 * vmax else "black")
  _label_axes(ax, row_names, col_labels)
  ax.set_xlabel(xlabel, fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, shrink=0.8)
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)
  return str(path)


def curves(x: Sequence[float], ys: Mapping[str, Sequence[float]], path: str | os.PathLike, *, xlabel: str,
           ylabel: str, title: str = "", logx: bool = False, markers: bool = True, panels: Mapping[str, Any] | None
           = None) -> str:
  """Lines ``ys[name]`` against ``x`` (one panel); ``panels``: several ``{title: (x, ys, ylabel)}`` side by side."""
  plt = _plt()
  specs = dict(panels) if panels else {title: (x, ys, ylabel)}
  fig, axes = plt.subplots(1, len(specs), figsize=(4.6 * len(specs), 3.4), squeeze=False)
  for ax, (name, (px, pys, plabel)) in zip(axes[0], specs.items()):
    for label, y in pys.items():
      ax.plot(px, y, marker="o" if markers else None, markersize=3, label=label)
    if logx:
      ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(plabel, fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
    if len(pys) > 1:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return str(path)


def bars(labels: Sequence[str], values: Sequence[float], path: str | os.PathLike, *, title: str = "",
         xlabel: str = "", panels: Mapping[str, tuple[Sequence[str], Sequence[float]]] | None = None,
         ncols: int = 4) -> str:
  """Horizontal bars (one panel, or ``panels``: ``{title: (labels, values)}`` in a grid of ``ncols``)."""
  plt = _plt()
  specs = dict(panels) if panels else {title: (labels, values)}
  n = len(specs)
  cols = min(ncols, n)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 0.22 * max(len(v[0]) for v in specs.values()) * rows
                                                + 1.2 * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  for ax, (name, (labs, vals)) in zip(axes.flat, specs.items()):
    y = np.arange(len(labs))[::-1]
    ax.barh(y, vals, color="#4a7ab5")
    ax.set_yticks(y)
    ax.set_yticklabels(labs, fontsize=7)
    ax.set_title(name, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(xlabel, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return str(path)


def scatter(xy: np.ndarray, labels: Sequence[str], groups: Sequence[str], path: str | os.PathLike, *,
            title: str = "") -> str:
  """A labelled 2-D scatter ``xy [N, 2]``, one colour per group name in ``groups [N]``."""
  plt = _plt()
  xy = np.asarray(xy, np.float32)
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  names = list(dict.fromkeys(groups))
  colours = plt.get_cmap("tab10")
  for k, name in enumerate(names):
    idx = [i for i, g in enumerate(groups) if g == name]
    ax.scatter(xy[idx, 0], xy[idx, 1], s=18, color=colours(k % 10), label=name)
    for i in idx:
      ax.annotate(labels[i], xy[i], xytext=(3, 3), textcoords="offset points", fontsize=8, color=colours(k % 10))
  if len(names) > 1:
    ax.legend(fontsize=7)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return str(path)

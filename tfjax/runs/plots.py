"""Loss curves to PNG: training loss (thin) and evaluation loss (markers) of one or more workdirs."""

from __future__ import annotations

import os

from tfjax.train.metrics import read_metrics


def plot_runs(workdirs: list[str], out_path: str, metric: str = "loss", highlight: str | None = None,
              title: str | None = None) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  for i, wd in enumerate(workdirs):
    recs = read_metrics(wd)
    name = os.path.basename(os.path.normpath(wd))
    color = f"C{i % 10}"
    lw = 2.5 if highlight and os.path.normpath(wd) == os.path.normpath(highlight) else 1.0
    train = [(r["step"], r[metric]) for r in recs if metric in r]
    evals = [(r["step"], r[f"eval_{metric}"]) for r in recs if f"eval_{metric}" in r]
    if train:
      ax.plot(*zip(*train), color=color, lw=lw, alpha=0.8, label=f"{name} train")
    if evals:
      ax.plot(*zip(*evals), "o--", color=color, lw=lw, ms=4, label=f"{name} eval")
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title or metric)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path

"""Compare a run's loss curve with nanoGPT's reference curves measured on this machine kind.

``python experiments/bench/compare_nanogpt.py WORKDIR --reference=../shared/reference/nanogpt_baby_curve.tsv
[--out=WORKDIR/vs_nanogpt.png]`` prints, at each step the reference has, both runs' train/val loss, and draws the
curves. Reference files: ``step<TAB>train_loss<TAB>val_loss`` rows (eval points), optionally followed by a
``iter<TAB>batch_loss`` block (per-iteration training loss).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("reference", None, "nanoGPT reference TSV.")
flags.DEFINE_string("out", None, "PNG (default: WORKDIR/vs_nanogpt.png).")
FLAGS = flags.FLAGS


def read_reference(path):
  evals, batch = [], []
  block = None
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      cols = line.split("\t")
      if not cols[0].isdigit():
        block = cols
        continue
      vals = [float(c) for c in cols]
      if block and block[1] == "batch_loss":
        batch.append((int(vals[0]), vals[1]))
      elif block and len(cols) >= 3:
        evals.append((int(vals[0]), vals[1], vals[2]))
      elif block:
        batch.append((int(vals[0]), vals[1]))
  return evals, batch


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: compare_nanogpt.py WORKDIR --reference=FILE")
  from tfjax.train.metrics import read_metrics
  workdir = argv[1]
  recs = read_metrics(workdir)
  ours_eval = {r["step"]: r["eval_loss"] for r in recs if "eval_loss" in r}
  ours_train = {r["step"]: r["loss"] for r in recs if "loss" in r}
  evals, batch = read_reference(FLAGS.reference)
  print(f"{'step':>6s} {'nanoGPT val':>12s} {'tfjax val':>10s} {'delta':>7s}")
  for step, _, val in evals:
    if step in ours_eval:
      print(f"{step:6d} {val:12.4f} {ours_eval[step]:10.4f} {ours_eval[step] - val:+7.4f}")
  if batch:
    # nanoGPT's iteration i computes the loss of its (i+1)-th batch; tfjax logs it as step i+1 (steps done).
    print(f"{'iter':>6s} {'nanoGPT batch':>14s} {'tfjax train (mean of logged interval)':>38s}")
    for it, loss in batch:
      if it + 1 in ours_train:
        print(f"{it:6d} {loss:14.4f} {ours_train[it + 1]:38.4f}")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5))
  if batch:
    ax.plot(*zip(*batch), color="C1", alpha=0.7, label="nanoGPT train (batch)")
  if evals:
    ax.plot([e[0] for e in evals], [e[2] for e in evals], "s--", color="C1", label="nanoGPT val")
  ax.plot([s - 1 for s in sorted(ours_train)], [ours_train[s] for s in sorted(ours_train)], color="C0", alpha=0.7,
          label="tfjax train")
  ax.plot(sorted(ours_eval), [ours_eval[s] for s in sorted(ours_eval)], "o--", color="C0", label="tfjax val")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(f"{os.path.basename(os.path.normpath(workdir))} vs nanoGPT")
  out = FLAGS.out or os.path.join(workdir, "vs_nanogpt.png")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  print(out)


if __name__ == "__main__":
  flags.mark_flag_as_required("reference")
  app.run(main)

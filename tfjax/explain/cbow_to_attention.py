"""From word2vec's average to attention: train the ladder of context models and show what each rung learned.

``run_cbow_to_attention(out_dir, config_overrides) -> dict`` trains every rung of
:mod:`tfjax.models.context_models` (``ladder.rungs``; rung 4 once per ``ladder.self_attention_heads``) on the same
corpus, seed, batches, optimizer and number of steps, through the shared loop (:mod:`tfjax.train.loop` with
:class:`tfjax.tasks.word2vec.CentreWordTask`), then writes to ``out_dir``:

* ``runs/<rung>/``: each rung's workdir (checkpoint, ``metrics.jsonl``, ``results.json``) and ``ladder_row.json``;
  a relaunch reuses the rows of finished rungs whose config is unchanged;
* ``cbow_to_attention.json`` (every row and the config) and ``cbow_to_attention.md`` (the table): held-out
  centre-word loss and accuracy, analogy, WordSim-353 and SimLex-999 scores of the input vectors, training time;
* ``cbow_to_attention_positions.png``: rung 2's learned weight per window position (CBOW's is ``1 / C``);
* ``cbow_to_attention_patterns.png``: for the example sentences, the weights of rungs 1-3 over the centre word's
  window and rung 4's attention pattern over the window (one panel per head);
* ``cbow_to_attention_loss.png``: training and held-out loss of every rung.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tfjax import config as config_lib
from tfjax.data import word2vec_data as wd
from tfjax.models import context_models as cm
from tfjax.tasks import word2vec as w2v_task

log = logging.getLogger("tfjax")
NAME = "cbow_to_attention"


def default_config() -> ml_collections.ConfigDict:
  """The experiment's config (:mod:`tfjax.explain.cbow_to_attention_config`, also
  ``experiments/configs/cbow_to_attention.py``)."""
  from tfjax.explain import cbow_to_attention_config  # pylint: disable=import-outside-toplevel
  return cbow_to_attention_config.get_config()


def apply_config_overrides(config: ml_collections.ConfigDict,
                           overrides: Mapping[str, Any] | Sequence[str] | None) -> ml_collections.ConfigDict:
  """``config`` with ``overrides`` applied: a mapping ``{"train.num_steps": 200}`` or ``"KEY=VALUE"`` strings (a
  leading ``--config.`` is accepted). An unknown key raises :class:`tfjax.config.ConfigError` naming it."""
  if not overrides:
    return config
  if isinstance(overrides, Mapping):
    items = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in overrides.items()]
  else:
    items = [o[len("--config."):] if o.startswith("--config.") else o for o in overrides]
  return config_lib.apply_overrides(config, items)


def ladder_runs(config: ml_collections.ConfigDict) -> list[tuple[str, str, int]]:
  """``(run name, rung, heads)`` of every model the ladder trains, in order; raises naming a bad ladder key."""
  rungs = tuple(config.ladder.rungs)
  unknown = [r for r in rungs if r not in cm.RUNGS]
  if not rungs or unknown:
    raise config_lib.ConfigError(f"config key 'ladder.rungs' must be a non-empty subset of {cm.RUNGS}, got {rungs!r}")
  runs = []
  for rung in rungs:
    if rung != cm.SELF_ATTENTION:
      runs.append((rung, rung, 0))
      continue
    heads = tuple(config.ladder.self_attention_heads) or (config.model.num_heads,)
    for h in heads:
      if int(h) < 1 or config.model.dim % int(h):
        raise config_lib.ConfigError(f"config key 'ladder.self_attention_heads': {h} heads must divide "
                                     f"model.dim={config.model.dim}")
      runs.append((f"{rung}_{int(h)}h", rung, int(h)))
  return runs


def example_windows(config: ml_collections.ConfigDict, vocab: wd.Vocab) -> list[dict[str, Any]]:
  """The window of each ``ladder.example_centres`` word in its ``ladder.example_sentences`` line: ``{"sentence",
  "centre", "words" (C slots, "" for padding), "context" int32[C], "mask" bool[C]}``. Raises naming a word that is
  not in the sentence or not in the vocabulary."""
  sentences, centres = tuple(config.ladder.example_sentences), tuple(config.ladder.example_centres)
  if len(sentences) != len(centres):
    raise config_lib.ConfigError(f"ladder.example_sentences ({len(sentences)}) and ladder.example_centres "
                                 f"({len(centres)}) must have the same length")
  window = config.data.window
  out = []
  for text, centre in zip(sentences, centres):
    tokens = [t for t in wd.tokenize_line(text) if t in vocab.index]  # word2vec drops unknown words first
    if centre not in tokens:
      raise ValueError(f"example centre {centre!r} is not an in-vocabulary word of the sentence {text!r} "
                       f"(in-vocabulary words: {tokens})")
    i = tokens.index(centre)
    words, ids, mask = [], [], []
    for o in wd.window_offsets(window):
      real = 0 <= i + o < len(tokens)
      words.append(tokens[i + o] if real else "")
      ids.append(vocab.index[tokens[i + o]] if real else 0)
      mask.append(real)
    out.append({"sentence": text, "centre": centre, "words": words, "context": np.asarray(ids, np.int32),
                "mask": np.asarray(mask, bool)})
  return out


def context_weights(task: w2v_task.CentreWordTask, params: Any, examples: list[dict[str, Any]]) -> np.ndarray:
  """The context model's weights on the example windows: ``E x C`` (rungs 1-3) or the attention pattern
  ``E x H x C x C`` (rung 4)."""
  context = jnp.asarray(np.stack([e["context"] for e in examples]))
  mask = jnp.asarray(np.stack([e["mask"] for e in examples]))
  _, weights = task.model.apply({"params": params}, context, mask)
  return np.asarray(weights)


def _row(name: str, rung: str, heads: int, results: dict, wall_s: float, num_steps: int, batch: int,
         params: Any) -> dict[str, Any]:
  context_params = params.get("context", {})
  a = results["analogy"]
  return {
      "run": name, "rung": rung, "heads": heads,
      "title": cm.RUNG_TITLES[rung] + (f", {heads} head{'s' if heads > 1 else ''}" if heads else ""),
      "context_params": int(sum(np.size(x) for x in jax.tree.leaves(context_params))),
      "heldout_loss": results["eval_loss"], "heldout_accuracy": results["eval_accuracy"],
      "train_loss": results["train_loss"],
      "analogy_accuracy": a["accuracy"], "analogy_correct": a["correct"], "analogy_total": a["total"],
      "wordsim353": results["wordsim353"]["spearman"], "simlex999": results["simlex999"]["spearman"],
      "neighbors": results["neighbors"], "train_wall_s": wall_s, "steps": num_steps, "batch_size": batch,
      "centres_per_s": results.get("tokens_per_s_median"),
  }


def format_table(rows: list[dict[str, Any]]) -> str:
  """The ladder's markdown table."""
  lines = ["| rung | context parameters | held-out loss (nats) | held-out top-1 | analogy | WordSim-353 | "
           "SimLex-999 | train time |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['title']} | {r['context_params']:,} | {r['heldout_loss']:.3f} | "
                 f"{100 * r['heldout_accuracy']:.1f}% | {100 * r['analogy_accuracy']:.2f}% "
                 f"({r['analogy_correct']}/{r['analogy_total']}) | {r['wordsim353']:.3f} | {r['simlex999']:.3f} | "
                 f"{r['train_wall_s']:.0f} s |")
  return "\n".join(lines) + "\n"


def plot_positions(position_weights: np.ndarray, window: int, path: str) -> str:
  """Bar chart of rung 2's weight per window offset beside CBOW's uniform ``1 / C``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  offsets = wd.window_offsets(window)
  fig, ax = plt.subplots(figsize=(6, 3.2))
  ax.bar([str(o) for o in offsets], position_weights, color="C1", label="2. learned weight per position")
  ax.axhline(1 / len(offsets), color="C0", ls="--", label=f"1. CBOW: uniform 1/{len(offsets)}")
  ax.set_xlabel("offset of the context word from the centre")
  ax.set_ylabel("weight in the average")
  ax.set_title("What rung 2 learned: which neighbours count")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_patterns(examples: list[dict[str, Any]], weights_by_run: dict[str, np.ndarray], titles: dict[str, str],
                  path: str) -> str:
  """For every example (rows): the weights of the single-query rungs over the window (one heatmap row per rung)
  and, per head, the attention pattern of the self-attention run with the most heads (query word x key word)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  single = [n for n, w in weights_by_run.items() if w.ndim == 2]
  multi = [n for n, w in weights_by_run.items() if w.ndim == 4]
  attn = max(multi, key=lambda n: weights_by_run[n].shape[1]) if multi else None
  heads = weights_by_run[attn].shape[1] if attn else 0
  cols = 1 + heads
  fig, axes = plt.subplots(len(examples), cols, figsize=(4.2 * cols, 3.0 * len(examples)), squeeze=False)
  for e, ex in enumerate(examples):
    labels = [w or "·" for w in ex["words"]]
    ax = axes[e, 0]
    grid = np.stack([weights_by_run[n][e] for n in single]) if single else np.zeros((0, len(labels)))
    ax.imshow(grid, cmap="viridis", vmin=0, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < grid.max() / 2 else "k")
    ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
    ax.set_yticks(range(len(single)), [titles[n].split(":")[0] for n in single], fontsize=7)
    ax.set_title(f"predict “{ex['centre']}”: weight of each neighbour", fontsize=8)
    for h in range(heads):
      ax = axes[e, 1 + h]
      pattern = weights_by_run[attn][e, h]
      ax.imshow(pattern, cmap="viridis", vmin=0, vmax=1)
      ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
      ax.set_yticks(range(len(labels)), labels, fontsize=7)
      ax.set_title(f"4. self-attention, head {h + 1}: query (row) -> key", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=65)
  plt.close(fig)
  return path


def _train_rung(c: ml_collections.ConfigDict, name: str, rung: str, heads: int | None, workdir: str,
                data) -> tuple[dict[str, Any], Any, Any]:
  """One rung's run in ``workdir`` (reused when it finished with this config): ``(row, params, task)``."""
  from tfjax.train import loop  # pylint: disable=import-outside-toplevel
  from tfjax.train.restore import load_params  # pylint: disable=import-outside-toplevel
  task = w2v_task.CentreWordTask(c, data)
  row_path = os.path.join(workdir, "ladder_row.json")
  row = None
  if os.path.exists(row_path):
    with open(row_path) as f:
      saved = json.load(f)
    if saved.get("config") == c.to_json():
      row = saved["row"]
      log.info("%s: reusing the finished run in %s", name, workdir)
  if row is None:
    t0 = time.perf_counter()
    results = loop.train_and_evaluate(c, workdir, task)
    wall = time.perf_counter() - t0
    if "preempted_at" in results:
      raise RuntimeError(f"{name} was stopped at step {results['preempted_at']}; relaunch to resume")
  params, _ = load_params(workdir)
  if row is None:
    row = _row(name, rung, heads, results, wall, c.train.num_steps, c.train.batch_size, params)
    with open(row_path, "w") as f:
      json.dump({"config": c.to_json(), "row": row}, f, indent=2, default=float)
  return row, params, task


def _write_outputs(out_dir: str, config: ml_collections.ConfigDict, data, rows: list[dict[str, Any]],
                   workdirs: list[str], examples, weights_by_run: dict, titles: dict) -> dict[str, Any]:
  """The loss curves, position weights and patterns pictures, ``NAME.md`` (the table) and ``NAME.json``."""
  from tfjax.runs import plots
  files = {}
  files["loss"] = plots.plot_runs(workdirs, os.path.join(out_dir, f"{NAME}_loss.png"),
                                  title="centre-word loss of each rung (train, and held-out dashed)")
  position_rows = [r for r in rows if "position_weights" in r]
  if position_rows:
    files["positions"] = plot_positions(np.asarray(position_rows[0]["position_weights"]), config.data.window,
                                        os.path.join(out_dir, f"{NAME}_positions.png"))
  files["patterns"] = plot_patterns(examples, weights_by_run, titles, os.path.join(out_dir, f"{NAME}_patterns.png"))
  table = format_table(rows)
  header = (f"Corpus: {', '.join(config.data.files)} ({data.corpus_words:,} words; vocabulary {len(data.vocab):,}; "
            f"{len(data.train):,} training / {len(data.heldout):,} held-out centres, window {config.data.window} "
            f"each side). Every rung: {config.train.num_steps} steps of {config.train.batch_size} centres, "
            f"{config.optimizer.name} lr {config.optimizer.lr}, seed {config.seed}, full softmax. Train time "
            f"includes compilation and evaluation ({jax.device_count()} {jax.default_backend()} devices).\n\n")
  with open(os.path.join(out_dir, f"{NAME}.md"), "w") as f:
    f.write(header + table)
  files["table"] = os.path.join(out_dir, f"{NAME}.md")
  result = {"rows": rows, "table": table, "summary": header + table, "files": files, "config": config.to_dict(),
            "examples": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in e.items()} | {
                "weights": {n: w[i].tolist() for n, w in weights_by_run.items()}} for i, e in enumerate(examples)]}
  with open(os.path.join(out_dir, f"{NAME}.json"), "w") as f:
    json.dump(result, f, indent=2, default=float)
  files["json"] = os.path.join(out_dir, f"{NAME}.json")
  log.info("%s: wrote %s", NAME, ", ".join(files.values()))
  return result


def run_cbow_to_attention(out_dir: str, config_overrides: Mapping[str, Any] | Sequence[str] | None = None, *,
                          steps: int | None = None, seed: int | None = None,
                          base_config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Trains the ladder and writes its table and pictures to ``out_dir`` (see the module docstring).

  ``config_overrides``: ``{"train.num_steps": 300}`` or ``["train.num_steps=300", ...]`` on ``base_config``
  (default: :func:`default_config`); ``steps`` / ``seed`` (``explain``'s ``--steps`` / ``--seed``) set
  ``train.num_steps`` / ``seed`` after them. Returns ``{"rows": [...], "table": str, "summary": str (the table with
  its header), "files": {...}, "config": {...}, "examples": [...]}``.
  """
  config = apply_config_overrides(copy.deepcopy(base_config or default_config()), config_overrides)
  if steps is not None:
    config.train.num_steps = int(steps)
  if seed is not None:
    config.seed = int(seed)
  runs = ladder_runs(config)
  out_dir = os.path.abspath(out_dir)
  os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
  data = w2v_task.load_centre_word_data(config)
  examples = example_windows(config, data.vocab)
  log.info("%s: %d corpus words, vocabulary %d, %d training and %d held-out centres; %d runs of %d steps",
           NAME, data.corpus_words, len(data.vocab), len(data.train), len(data.heldout), len(runs),
           config.train.num_steps)

  rows, weights_by_run, titles, workdirs = [], {}, {}, []
  for name, rung, heads in runs:
    c = copy.deepcopy(config)
    c.model.context = rung
    if heads:
      c.model.num_heads = heads
    workdir = os.path.join(out_dir, "runs", name)
    workdirs.append(workdir)
    row, params, task = _train_rung(c, name, rung, heads, workdir, data)
    rows.append(row)
    titles[name] = row["title"]
    weights_by_run[name] = context_weights(task, params, examples)
    if rung == cm.POSITION:
      row["position_weights"] = np.asarray(
          jax.nn.softmax(jnp.asarray(params["context"]["position_logits"]))).tolist()
    log.info("%s: held-out loss %.4f, analogy %.2f%%, WordSim-353 %.3f, %.0f s", name, row["heldout_loss"],
             100 * row["analogy_accuracy"], row["wordsim353"], row["train_wall_s"])
  return _write_outputs(out_dir, config, data, rows, workdirs, examples, weights_by_run, titles)

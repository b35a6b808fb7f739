"""``explain induction``: does the model copy what it has seen? Induction heads on repeated random tokens.

``n`` random tokens, then the same ``n`` again (``ids [B, 2n]``; a workdir's tokens are drawn from those in its
validation text, a Hugging Face model's from its whole vocabulary, special tokens left out). In the first copy
nothing can be predicted (the loss is about ``log`` of the number of tokens drawn from); in the second, everything
can, by a model that looks back to where the current token appeared before and copies the token that followed it.
That is what an **induction head** does (Olsson et al. 2022): an earlier head writes "the token before me" into each
position (a previous-token head), and a later head's query for the current token finds the key whose previous token
matches, and its value copies the token there. Per head, over the second copy's queries ``t``:

* ``induction [L, H]``: mean attention to key ``t - n + 1``, the token after the earlier occurrence;
* ``duplicate [L, H]``: to key ``t - n``, the earlier occurrence itself;
* ``previous [L, H]``: to key ``t - 1`` (over every query ``t >= 1``);
* ``uniform``: the same mean for attention spread evenly over the visible keys (``mean 1 / (t + 1)``).

And the loss at every position (``loss [2n - 1]``: the first copy against the second: the in-context drop), and the
second copy's loss when each head alone is zeroed (``ablation [L, H]``, the rise). What each head adds when it reads
a token (pre-LN models, :mod:`tfjax.explain.ov`, on the same rows): ``copying [L, H]``, the copying score of its OV
circuit on its own value vectors (+1: the token read is the token promoted), and ``copying_context [L, H]``, the
share of queries where its write ranks the token it attends to most first.

The circuit (:mod:`tfjax.explain.composition`), for the strongest induction heads above layer 0 (those scoring at
least ``CIRCUIT_MIN_RATIO`` times uniform): their own induction score and the second copy's loss when only their
queries, keys or values are computed without one earlier head (``paths``: every route; ``paths_direct``: the
earlier head's direct write only), and the weights' composition scores ``composition`` (``q``, ``k``, ``v``
``[L, H, L, H]``) against random heads (``composition_random``). In an induction circuit the keys need the
previous-token head: K-composition.

:func:`repeated_tokens` draws the batch; :func:`head_scores` computes the scores from attention patterns; :func:`run`
is ``./launch.sh explain induction WORKDIR``.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax.explain import composition as composition_lib
from tfjax.explain import ov as ov_lib
from tfjax.explain import pictures
from tfjax.explain.capture import run_with_cache
from tfjax.explain.heads import head_masks_tree
from tfjax.explain.interventions import run_with_interventions


def repeated_tokens(vocab_size: int, num_tokens: int, batch_size: int, seed: int = 0,
                    exclude=(), allowed=None) -> np.ndarray:
  """``[batch_size, 2 * num_tokens]`` int32: each row ``num_tokens`` ids drawn uniformly from ``allowed`` (default:
  the whole vocabulary) without the ids in ``exclude`` (e.g. special tokens), and then the same ids again."""
  pool = np.arange(vocab_size) if allowed is None else np.unique(np.asarray(allowed, np.int64))
  allowed = np.setdiff1d(pool, np.asarray(list(exclude), np.int64))
  if allowed.size < 2:
    raise ValueError(f"need at least 2 tokens to draw from; the vocabulary has {allowed.size} after exclusions")
  first = np.random.default_rng(seed).choice(allowed, size=(batch_size, num_tokens))
  return np.concatenate([first, first], axis=1).astype(np.int32)


def head_scores(patterns_LxBxHxTxT: jax.Array, num_tokens: int) -> dict[str, jax.Array]:
  """``induction``, ``duplicate``, ``previous`` ``[L, H]`` and the ``uniform`` reference (a scalar) of attention
  patterns on :func:`repeated_tokens` rows (see the module docstring)."""
  p = jnp.asarray(patterns_LxBxHxTxT, jnp.float32)
  n = num_tokens
  t = jnp.arange(n, 2 * n)
  after = p[..., t, t - n + 1]  # [L, B, H, n]
  same = p[..., t, t - n]
  q = jnp.arange(1, 2 * n)
  prev = p[..., q, q - 1]
  return {"induction": jnp.mean(after, axis=(1, 3)), "duplicate": jnp.mean(same, axis=(1, 3)),
          "previous": jnp.mean(prev, axis=(1, 3)), "uniform": jnp.mean(1.0 / (t + 1.0))}


def _token_losses(logits, ids):
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), ids[:, 1:])


@functools.partial(jax.jit, static_argnames=("model",))
def _patterns_and_losses(model, params, ids):
  logits, cache = run_with_cache(model, {"params": params}, ids, names=["*/attn/pattern"])
  return cache.stack("attn/pattern"), jnp.mean(_token_losses(logits, ids), axis=0)


@functools.partial(jax.jit, static_argnames=("model", "num_tokens"))
def _second_copy_loss(model, params, tree, ids, num_tokens):
  logits = run_with_interventions(model, {"params": params}, tree, ids)
  return _second_copy_loss_of(logits, ids, num_tokens)  # predicting tokens n + 1 .. 2n - 1


def _second_copy_loss_of(logits, ids, num_tokens):
  return jnp.mean(_token_losses(logits, ids)[:, num_tokens:])


def circuit_metric(logits, ids, cache, layer, head, num_tokens: int) -> dict[str, jax.Array]:
  """The second copy's ``loss`` and head ``(layer, head)``'s ``induction`` score on :func:`repeated_tokens` rows (a
  :func:`tfjax.explain.composition.path_ablation` metric; ``cache`` holds ``*/attn/pattern``)."""
  pattern = cache.stack("attn/pattern")[layer, :, head]  # [B, T, T]
  return {"loss": _second_copy_loss_of(logits, ids, num_tokens),
          "induction": head_scores(pattern[None, :, None], num_tokens)["induction"][0, 0]}


CIRCUIT_MIN_RATIO = 3.0  # a head is explained as an induction head when it scores at least this many times uniform


def _circuit(subject, ids, n: int, induction_LxH: np.ndarray, uniform: float, top_k: int) -> dict:
  """The module docstring's circuit numbers for the ``top_k`` strongest induction heads above layer 0 that score at
  least ``CIRCUIT_MIN_RATIO`` times uniform attention (``{}`` when there is none)."""
  model, params = subject.model, subject.params
  order = [np.unravel_index(i, induction_LxH.shape) for i in np.argsort(-induction_LxH.ravel())]
  receivers = [(int(l), int(h)) for l, h in order
               if l > 0 and induction_LxH[l, h] >= CIRCUIT_MIN_RATIO * uniform][:max(1, top_k)]
  if not receivers:
    return {}
  metric = functools.partial(circuit_metric, num_tokens=n)
  paths = {routes: composition_lib.path_ablation(model, {"params": params}, ids, metric, receivers, routes=routes,
                                                 names=("*/attn/pattern",)) for routes in ("all", "direct")}
  layout = composition_lib.resolve_stack(model)
  return {"paths": paths["all"], "paths_direct": paths["direct"],
          "composition": composition_lib.composition_scores(model, params),
          "composition_random": composition_lib.random_baseline(model.cfg.emb_dim, layout.head_dim)}


def _special_ids(subject) -> list[int]:
  tok = subject.tokenizer
  return list(tok.special_ids()) if tok is not None and hasattr(tok, "special_ids") else []


def _seen_tokens(subject) -> np.ndarray | None:
  """The ids in a workdir's first validation batch (what the model was trained on), or None (no workdir)."""
  if subject.config is None:
    return None
  from tfjax.explain import data as data_lib
  return np.unique(data_lib.eval_batches(subject, 1)[0]["inputs"])


def _check(subject, num_tokens: int | None, num_samples: int) -> int:
  """The half length ``n`` (default: half the context window, at most 100); a clear error when it cannot be."""
  from tfjax.explain.subjects import SubjectError
  subject.require(("gpt",), "induction")
  cfg = subject.cfg
  n = min(100, cfg.max_len // 2) if num_tokens is None else int(num_tokens)
  if not 2 <= n <= cfg.max_len // 2:
    raise SubjectError(f"--num_tokens={n}: each random half must have 2 .. {cfg.max_len // 2} tokens (two copies "
                       f"fill the context window max_len={cfg.max_len})")
  if num_samples < 1:
    raise SubjectError(f"--num_samples={num_samples}: need at least one row")
  return n


def measure(subject, num_tokens: int, num_samples: int = 32, seed: int = 0, ablate: bool = True,
            allowed=None, top_k: int = 3) -> dict:
  """The numbers of the module docstring for ``subject`` (a GPT) on ``num_samples`` rows of ``num_tokens`` random
  tokens repeated: ``induction``, ``duplicate``, ``previous`` ``[L, H]``, ``uniform``, ``loss [2n - 1]``,
  ``first_copy_loss``, ``second_copy_loss`` and (``ablate``) ``ablation [L, H]`` over ``ablation_base``, and with
  two layers or more the circuit of the ``top_k`` strongest induction heads (``paths``, ``composition``,
  ``composition_random``). ``allowed``: the ids to draw from (default: those in a workdir's validation text, else the
  whole vocabulary)."""
  model, params, cfg, n = subject.model, subject.params, subject.cfg, num_tokens
  ids = jnp.asarray(repeated_tokens(cfg.vocab_size, n, num_samples, seed, exclude=_special_ids(subject),
                                    allowed=_seen_tokens(subject) if allowed is None else allowed))
  patterns, losses = _patterns_and_losses(model, params, ids)
  scores = {k: np.asarray(v) for k, v in head_scores(patterns, n).items()}
  losses = np.asarray(losses)
  out = {"num_tokens": n, "num_samples": num_samples, "seed": seed, "loss": losses,
         "first_copy_loss": float(losses[:n - 1].mean()), "second_copy_loss": float(losses[n:].mean()),
         **{k: scores[k] for k in ("induction", "duplicate", "previous")}, "uniform": float(scores["uniform"])}
  if model.cfg.pre_ln:  # what each head adds when it reads a token (its OV circuit, tfjax.explain.ov) on these rows
    copying = ov_lib.measure(model, params, "gpt", [{"inputs": np.asarray(ids)}])
    out.update(copying=copying["copying_values"], copying_context=copying["context_top1"])
  if ablate:
    layers, heads = scores["induction"].shape
    noop = head_masks_tree("decoder", "attn", layers, heads, -1, 0)  # the same tree structure: one compilation
    base = float(_second_copy_loss(model, params, noop, ids, n))
    ablation = np.zeros((layers, heads), np.float32)
    for l in range(layers):
      for h in range(heads):
        tree = head_masks_tree("decoder", "attn", layers, heads, l, h)
        ablation[l, h] = float(_second_copy_loss(model, params, tree, ids, n)) - base
    out.update(ablation=ablation, ablation_base=base)
    if layers >= 2:
      out.update(_circuit(subject, ids, n, scores["induction"], float(scores["uniform"]), top_k))
  return out


def development(subject, num_tokens: int, num_samples: int = 32, seed: int = 0) -> dict:
  """:func:`measure` (without ablations) at every checkpoint of ``subject``'s workdir: ``steps [S]``,
  ``induction``/``previous``/``duplicate`` ``[S, L]`` (each layer's strongest head), ``first_copy_loss`` and
  ``second_copy_loss`` ``[S]``: how the copying circuit forms during training."""
  from tfjax.explain.subjects import SubjectError, load_subject
  from tfjax.train.restore import checkpoint_steps
  if subject.config is None:
    raise SubjectError(f"--over_checkpoints reads a workdir's checkpoints; {subject.path} is not a tfjax workdir")
  steps = checkpoint_steps(subject.path)
  allowed = _seen_tokens(subject)  # the same rows at every checkpoint
  rows = [measure(load_subject(subject.path, step=s), num_tokens, num_samples, seed, ablate=False, allowed=allowed)
          for s in steps]
  out = {"steps": np.asarray(steps)}
  for k in ("induction", "previous", "duplicate", "copying"):
    if k in rows[0]:
      out[k] = np.stack([r[k].max(axis=1) for r in rows])
  for k in ("first_copy_loss", "second_copy_loss"):
    out[k] = np.asarray([r[k] for r in rows])
  return out


def _draw(numbers: dict, out_dir: str) -> None:
  layers, heads = numbers["induction"].shape
  n, base = numbers["num_tokens"], numbers["ablation_base"]
  labels = dict(row_labels=[f"layer {l}" for l in range(layers)], col_labels=[f"head {h}" for h in range(heads)])
  for name, title in (("induction", f"induction score: attention to the token after the earlier occurrence "
                                    f"(uniform {numbers['uniform']:.3f})"),
                      ("previous", "previous-token score"), ("duplicate", "duplicate-token score")):
    pictures.heatmap(numbers[name], os.path.join(out_dir, f"induction_{name}.png"), annotate=True, title=title,
                     **labels)
  pictures.heatmap(numbers["ablation"], os.path.join(out_dir, "induction_ablation.png"), center=True, annotate=True,
                   fmt="{:+.2f}", title=f"second copy's loss increase when the head is zeroed (base {base:.2f})",
                   **labels)
  pictures.curves(list(range(1, 2 * n)), {"loss": numbers["loss"]}, os.path.join(out_dir, "induction_loss.png"),
                  xlabel=f"position of the predicted token (the second copy starts at {n})", ylabel="nats",
                  title=f"loss on {numbers['num_samples']} rows of {n} random tokens repeated: first copy "
                        f"{numbers['first_copy_loss']:.2f}, second {numbers['second_copy_loss']:.2f}", markers=False)
  if "paths" in numbers:
    _draw_paths(numbers, out_dir)


def _draw_paths(numbers: dict, out_dir: str) -> None:
  """The induction score of each receiver when its queries or keys read without each earlier head: every route, and
  the sender's direct write alone."""
  rows = [(routes, r, w) for routes in ("paths", "paths_direct") for r in range(len(numbers["paths"]["receivers"]))
          for w in ("q", "k")]
  paths = numbers["paths"]
  values = np.stack([numbers[routes]["base"]["induction"][r] + numbers[routes]["change"]["induction"][w][:, r]
                     for routes, r, w in rows])
  pictures.heatmap(values, os.path.join(out_dir, "induction_paths.png"), annotate=True, cmap="Blues",
                   row_labels=[f"{composition_lib.sender_name(paths['receivers'][r])} {composition_lib.WAY_NAMES[w]}"
                               f"{'' if routes == 'paths' else ' (direct)'}" for routes, r, w in rows],
                   col_labels=[composition_lib.sender_name(s) for s in paths["senders"]],
                   xlabel="earlier head (or MLP) left out",
                   ylabel="induction head: its queries / keys without it",
                   title="the induction head's induction score without one earlier head in one input")


def _circuit_lines(numbers: dict) -> list[str]:
  """One line per receiver: the earlier head and the input (queries or keys) its induction needs most."""
  paths, direct, scores = numbers["paths"], numbers["paths_direct"], numbers["composition"]
  score, loss = paths["change"]["induction"], paths["change"]["loss"]
  lines = ["  how the strongest induction heads find the earlier occurrence (their induction score with one earlier "
           "head left out of their queries or keys, the rest as it was):"]
  heads = [i for i, (_, h) in enumerate(paths["senders"]) if h != composition_lib.MLP]
  mlps = [i for i, (l, h) in enumerate(paths["senders"]) if h == composition_lib.MLP]
  names = composition_lib.WAY_NAMES
  for j, (lr, hr) in enumerate(paths["receivers"]):
    drops = np.stack([score[w][heads, j] for w in ("q", "k")])  # [2, heads]
    w_i, h_i = np.unravel_index(np.nanargmin(drops), drops.shape)
    s_i = heads[h_i]
    ls, hs = paths["senders"][s_i]
    w, o = ("q", "k")[w_i], ("k", "q")[w_i]
    base = paths["base"]["induction"][j]
    below = [i for i in mlps if paths["senders"][i][0] < lr]
    mlp_text = "".join(f"; without {composition_lib.sender_name(paths['senders'][i])} in its {names[w]}: "
                       f"{base + score[w][i, j]:.2f} "
                       f"(its direct write only: {base + direct['change']['induction'][w][i, j]:.2f})" for i in below)
    lines.append(
        f"    L{lr} H{hr} (induction {base:.2f}) needs L{ls} H{hs} in its {names[w]}: "
        f"{base + score[w][s_i, j]:.2f} without it (without its direct write only: "
        f"{base + direct['change']['induction'][w][s_i, j]:.2f}; in its {names[o]}: {base + score[o][s_i, j]:.2f}); "
        f"second copy {loss[w][s_i, j]:+.2f} nats{mlp_text}; {w.upper()}-composition of the weights "
        f"{scores[w][ls, hs, lr, hr]:.2f} (random heads {numbers['composition_random']:.2f})")
  return lines


def _draw_development(dev: dict, out_dir: str) -> None:
  steps = dev["steps"].tolist()
  layers = dev["induction"].shape[1]
  scores = {f"{k} L{l}": dev[k][:, l] for k in ("induction", "previous", "copying") if k in dev
            for l in range(layers)}
  pictures.curves(steps, {}, os.path.join(out_dir, "induction_steps.png"), xlabel="training step", ylabel="",
                  panels={"each layer's strongest head": (steps, scores, "attention / copying score"),
                          "loss on the repeated rows": (steps, {"first copy": dev["first_copy_loss"],
                                                                "second copy": dev["second_copy_loss"]}, "nats")})


def run(subject, out_dir: str, *, num_tokens: int | None = None, num_samples: int = 32, seed: int = 0,
        top_k: int = 3, over_checkpoints: bool = False) -> dict:
  """Writes ``induction_{induction,previous,duplicate}.png`` (the head scores as layer x head heatmaps),
  ``induction_ablation.png`` (the second copy's loss increase when each head is zeroed), ``induction_loss.png``
  (the loss at each position), ``induction_paths.png`` (the circuit: each of the ``top_k`` strongest induction
  heads' score without each earlier head or MLP in its queries or keys) and ``induction.json``; with
  ``over_checkpoints``, also ``induction_steps.png``: the scores and losses at every checkpoint of the workdir
  (:func:`development`)."""
  n = _check(subject, num_tokens, num_samples)
  os.makedirs(out_dir, exist_ok=True)
  numbers = measure(subject, n, num_samples, seed, top_k=top_k)
  _draw(numbers, out_dir)
  first, second, uniform = numbers["first_copy_loss"], numbers["second_copy_loss"], numbers["uniform"]
  shape = numbers["induction"].shape

  def strongest(name):
    return [np.unravel_index(i, shape) for i in np.argsort(-numbers[name].ravel())[:max(1, top_k)]]

  lines = [f"induction: {num_samples} rows of {n} random tokens, then the same again; loss first copy {first:.2f}, "
           f"second copy {second:.2f} nats ({first - second:+.2f} in context)",
           f"  strongest induction heads (attention to the token after the earlier occurrence; uniform {uniform:.3f}): "
           + ", ".join(f"L{l} H{h} {numbers['induction'][l, h]:.2f} (zeroed: second copy "
                       f"{numbers['ablation'][l, h]:+.2f}" + (f"; copying score {numbers['copying'][l, h]:+.2f}"
                                                              if "copying" in numbers else "") + ")"
                       for l, h in strongest("induction")),
           "  strongest previous-token heads: " + ", ".join(
               f"L{l} H{h} {numbers['previous'][l, h]:.2f}" for l, h in strongest("previous"))]
  if "paths" in numbers:
    lines.extend(_circuit_lines(numbers))
  elif numbers["induction"].shape[0] >= 2:
    lines.append(f"  no induction head above layer 0 to trace (none attends to the token after the earlier occurrence "
                 f"{CIRCUIT_MIN_RATIO:g}x as much as uniform attention)")
  if over_checkpoints:
    dev = development(subject, n, num_samples, seed)
    _draw_development(dev, out_dir)
    numbers["development"] = dev
    lines.append(f"  over {len(dev['steps'])} checkpoints (steps {dev['steps'][0]} .. {dev['steps'][-1]}): "
                 + "; ".join(f"step {s}: induction {dev['induction'][i].max():.2f}, "
                             + (f"copying {dev['copying'][i].max():+.2f}, " if "copying" in dev else "")
                             + f"second copy {dev['second_copy_loss'][i]:.2f}" for i, s in enumerate(dev["steps"])))
  pictures.write_json(os.path.join(out_dir, "induction.json"), numbers)
  return {"summary": "\n".join(lines), **numbers}

"""``explain induction``: does the model copy what it has seen? Induction heads on repeated random tokens.

``n`` random tokens, then the same ``n`` again (``ids [B, 2n]``). In the first copy nothing can be predicted (the
loss is about ``log`` of the number of tokens drawn from); in the second, everything can, by a model that looks back
to where the current token appeared before and copies the token that followed it. That is what an **induction head**
does (Olsson et al. 2022): an earlier head writes "the token before me" into each position (a previous-token head),
and a later head's query for the current token finds the key whose previous token matches, and its value copies the
token there. Per head, over the second copy's queries ``t``:

* ``induction [L, H]``: mean attention to key ``t - n + 1``, the token after the earlier occurrence;
* ``duplicate [L, H]``: to key ``t - n``, the earlier occurrence itself;
* ``previous [L, H]``: to key ``t - 1`` (over every query ``t >= 1``);
* ``uniform``: the same mean for attention spread evenly over the visible keys (``mean 1 / (t + 1)``).

And the loss at every position (``loss [2n - 1]``: the first copy against the second: the in-context drop), and the
second copy's loss when each head alone is zeroed (``ablation [L, H]``, the rise).

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

from tfjax.explain import pictures
from tfjax.explain.capture import run_with_cache
from tfjax.explain.heads import head_masks_tree
from tfjax.explain.interventions import run_with_interventions


def repeated_tokens(vocab_size: int, num_tokens: int, batch_size: int, seed: int = 0,
                    exclude=()) -> np.ndarray:
  """``[batch_size, 2 * num_tokens]`` int32: each row ``num_tokens`` ids drawn uniformly (without the ids in
  ``exclude``, e.g. special tokens) and then the same ids again."""
  allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(exclude), np.int64))
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
  return jnp.mean(_token_losses(logits, ids)[:, num_tokens:])  # predicting tokens n + 1 .. 2n - 1


def _special_ids(subject) -> list[int]:
  tok = subject.tokenizer
  return list(tok.special_ids()) if tok is not None and hasattr(tok, "special_ids") else []


def run(subject, out_dir: str, *, num_tokens: int | None = None, num_samples: int = 32, seed: int = 0,
        top_k: int = 3) -> dict:
  """Writes ``induction.png`` (the three head scores as layer x head heatmaps, the second copy's loss increase
  when each head is zeroed, and the loss at each position) and ``induction.json``. ``num_tokens``: the length of
  each random half (default: half the context window, at most 100)."""
  from tfjax.explain.subjects import SubjectError
  subject.require(("gpt",), "induction")
  cfg = subject.cfg
  n = min(100, cfg.max_len // 2) if num_tokens is None else int(num_tokens)
  if not 2 <= n <= cfg.max_len // 2:
    raise SubjectError(f"--num_tokens={n}: each random half must have 2 .. {cfg.max_len // 2} tokens (two copies "
                       f"fill the context window max_len={cfg.max_len})")
  if num_samples < 1:
    raise SubjectError(f"--num_samples={num_samples}: need at least one row")
  os.makedirs(out_dir, exist_ok=True)
  model, params = subject.model, subject.params
  special = _special_ids(subject)
  ids = jnp.asarray(repeated_tokens(cfg.vocab_size, n, num_samples, seed, exclude=special))
  patterns, losses = _patterns_and_losses(model, params, ids)
  scores = {k: np.asarray(v) for k, v in head_scores(patterns, n).items()}
  losses = np.asarray(losses)
  first, second = float(losses[:n - 1].mean()), float(losses[n:].mean())
  layers, heads = scores["induction"].shape
  base = float(_second_copy_loss(model, params, head_masks_tree("decoder", "attn", layers, heads, -1, 0), ids, n))
  ablation = np.zeros((layers, heads), np.float32)
  for l in range(layers):
    for h in range(heads):
      tree = head_masks_tree("decoder", "attn", layers, heads, l, h)
      ablation[l, h] = float(_second_copy_loss(model, params, tree, ids, n)) - base

  labels = dict(row_labels=[f"layer {l}" for l in range(layers)], col_labels=[f"head {h}" for h in range(heads)])
  for name, title in (("induction", f"induction score: attention to the token after the earlier occurrence "
                                    f"(uniform {float(scores['uniform']):.3f})"),
                      ("previous", "previous-token score"), ("duplicate", "duplicate-token score")):
    pictures.heatmap(scores[name], os.path.join(out_dir, f"induction_{name}.png"), annotate=True,
                     title=title, **labels)
  pictures.heatmap(ablation, os.path.join(out_dir, "induction_ablation.png"), center=True, annotate=True,
                   fmt="{:+.2f}", title=f"second copy's loss increase when the head is zeroed (base {base:.2f})",
                   **labels)
  pictures.curves(list(range(1, 2 * n)), {"loss": losses}, os.path.join(out_dir, "induction_loss.png"),
                  xlabel=f"position of the predicted token (the second copy starts at {n})", ylabel="nats",
                  title=f"loss on {num_samples} rows of {n} random tokens repeated: first copy {first:.2f}, second "
                        f"{second:.2f}", markers=False)
  numbers = {"num_tokens": n, "num_samples": num_samples, "seed": seed, "loss": losses, "first_copy_loss": first,
             "second_copy_loss": second, "ablation": ablation, "ablation_base": base,
             **{k: scores[k] for k in ("induction", "duplicate", "previous")}, "uniform": float(scores["uniform"])}
  pictures.write_json(os.path.join(out_dir, "induction.json"), numbers)
  order = np.argsort(-scores["induction"].ravel())[:max(1, top_k)]
  best = [np.unravel_index(i, (layers, heads)) for i in order]
  lines = [f"induction: {num_samples} rows of {n} random tokens, then the same again; loss first copy {first:.2f}, "
           f"second copy {second:.2f} nats ({first - second:+.2f} in context)",
           "  strongest induction heads (attention to the token after the earlier occurrence; uniform "
           f"{float(scores['uniform']):.3f}): " + ", ".join(
               f"L{l} H{h} {scores['induction'][l, h]:.2f} (zeroed: second copy {ablation[l, h]:+.2f})"
               for l, h in best),
           "  strongest previous-token heads: " + ", ".join(
               f"L{l} H{h} {scores['previous'][l, h]:.2f}" for l, h in
               (np.unravel_index(i, (layers, heads)) for i in np.argsort(-scores["previous"].ravel())[:max(1, top_k)]))]
  return {"summary": "\n".join(lines), **numbers}

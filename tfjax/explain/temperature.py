"""``explain temperature``: softmax with temperature, on a trained GPT.

The next token is drawn from ``softmax(logits / T)``: ``T = 1`` is the model's distribution, ``T < 1`` sharpens it
(``T -> 0``: all mass on the argmax, greedy decoding), ``T > 1`` flattens it towards uniform. The command shows, for a
prompt, the next-token distribution at several temperatures, its entropy against ``T``, and the unigram entropy and
distinct-n of text sampled at each ``T`` with :func:`tfjax.generate.generate` (the project's own sampler).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import pictures
from tfjax.generate import generate

DEFAULT_TEMPERATURES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def temperature_distributions(logits: jnp.ndarray, temperatures: jnp.ndarray) -> jnp.ndarray:
  """``softmax(logits / T)`` for each ``T``: ``logits [V]``, ``temperatures [N]`` -> ``probs [N, V]``.

  ``T == 0`` gives the one-hot distribution of the argmax (the limit ``T -> 0``; ties go to the first index, as
  :func:`jnp.argmax` and greedy decoding do).
  """
  logits = logits.astype(jnp.float32)
  temperatures = jnp.asarray(temperatures, jnp.float32)
  safe = jnp.where(temperatures > 0, temperatures, 1.0)[:, None]
  soft = jax.nn.softmax(logits[None, :] / safe, axis=-1)
  greedy = jax.nn.one_hot(jnp.argmax(logits), logits.shape[-1], dtype=jnp.float32)
  return jnp.where((temperatures > 0)[:, None], soft, greedy[None, :])


def entropy(probs: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
  """Shannon entropy in nats of distributions ``probs [..., V]`` along ``axis`` (``0 log 0 = 0``)."""
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=axis)


def distinct_n(ids: np.ndarray, n: int) -> float:
  """The fraction of distinct n-grams among all n-grams of the rows of ``ids [B, L]`` (pooled over rows)."""
  ids = np.asarray(ids)
  grams = [tuple(row[i:i + n]) for row in ids for i in range(len(row) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def unigram_entropy(ids: np.ndarray) -> float:
  """Entropy in nats of the token frequencies of ``ids`` (all rows pooled)."""
  _, counts = np.unique(np.asarray(ids), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


@functools.partial(jax.jit, static_argnames=("model",))
def next_token_logits(model, params, ids: jnp.ndarray) -> jnp.ndarray:
  """The model's next-token logits ``[B, V]`` after ``ids [B, T]`` (a GPT's last position)."""
  return model.apply({"params": params}, ids)[:, -1]


def run(subject, out_dir: str, *, text: str | None = None, temperatures=DEFAULT_TEMPERATURES,
        num_samples: int = 8, num_tokens: int | None = None, top_k: int = 12, seed: int = 0) -> dict:
  """Writes ``temperature_distribution.png`` (the top-``top_k`` next tokens' probabilities at each T),
  ``temperature_entropy.png`` (entropy of the next-token distribution against T; unigram entropy and distinct-1/2/3
  of ``num_samples`` samples of ``num_tokens`` tokens at each T) and ``temperature.json``."""
  from tfjax.explain.subjects import SubjectError
  os.makedirs(out_dir, exist_ok=True)
  temps = [float(t) for t in temperatures]
  if not temps or min(temps) < 0:
    raise SubjectError(f"--temperatures must be >= 0, got {temps}")
  if num_samples < 1:
    raise SubjectError(f"--num_samples must be >= 1, got {num_samples}")
  model, params = subject.model, subject.params
  ids = subject.text_ids(text)
  # samples continue the prompt's last max_len/2 tokens and by default fill the window once: one compiled decoding
  # loop per temperature (a longer sample refills the cache and compiles a second prompt length)
  prompt_ids = ids[-max(1, model.cfg.max_len // 2):]
  if num_tokens is None:
    num_tokens = max(3, min(64, model.cfg.max_len - len(prompt_ids)))
  if num_tokens < 3:
    raise SubjectError(f"--num_tokens must be >= 3 (distinct-3 needs three tokens), got {num_tokens}")
  logits = next_token_logits(model, params, jnp.asarray(ids[None]))[0]
  probs = np.asarray(temperature_distributions(logits, jnp.asarray(temps)))  # [N, V]
  fine_t = np.linspace(0.0, max(3.0, max(temps)), 61)
  fine_entropy = np.asarray(entropy(temperature_distributions(logits, jnp.asarray(fine_t))))
  top = np.argsort(-np.asarray(jax.nn.softmax(logits)))[:min(top_k, probs.shape[1])]
  top_labels = subject.labels(top)

  samples, stats = {}, {"unigram_entropy": [], "distinct_1": [], "distinct_2": [], "distinct_3": []}
  prompt = np.repeat(prompt_ids[None], num_samples, axis=0)
  for i, t in enumerate(temps):
    out = generate(model, params, prompt, num_tokens, jax.random.key(seed + i), temperature=t)[:, len(prompt_ids):]
    samples[t] = [subject.tokenizer.decode(row) for row in out]
    stats["unigram_entropy"].append(unigram_entropy(out))
    for n in (1, 2, 3):
      stats[f"distinct_{n}"].append(distinct_n(out, n))

  title = f"next token after {subject.tokenizer.decode(ids)[-40:]!r}"
  pictures.heatmap(probs[:, top], os.path.join(out_dir, "temperature_distribution.png"),
                   row_labels=[f"T={t:g}" for t in temps], col_labels=top_labels, title=title, xlabel="token",
                   cmap="Blues", annotate=True)
  pictures.curves(fine_t, {}, os.path.join(out_dir, "temperature_entropy.png"), xlabel="temperature T", ylabel="",
                  panels={"next-token entropy (nats)": (fine_t, {"H(softmax(logits/T))": fine_entropy}, "nats"),
                          f"{num_samples} samples x {num_tokens} tokens": (
                              temps, {k: v for k, v in stats.items() if k != "unigram_entropy"}, "distinct-n"),
                          "sampled text": (temps, {"unigram entropy": stats["unigram_entropy"]}, "nats")})
  numbers = {"prompt": subject.tokenizer.decode(ids), "temperatures": temps, "top_tokens": top_labels,
             "top_token_ids": top, "probs_top": probs[:, top], "entropy": np.asarray(entropy(jnp.asarray(probs))),
             "entropy_curve": {"T": fine_t, "entropy": fine_entropy}, "samples": stats,
             "sample_text": {str(t): s for t, s in samples.items()}}
  pictures.write_json(os.path.join(out_dir, "temperature.json"), numbers)
  lines = [f"temperature: next token after {numbers['prompt'][-30:]!r}"]
  for t, p, h, d2 in zip(temps, probs, numbers["entropy"], stats["distinct_2"]):
    lines.append(f"  T={t:<5g} top {top_labels[0]!r} p={p[top[0]]:.3f}  entropy {h:.3f} nats  "
                 f"samples distinct-2 {d2:.3f}")
  lines.append(f"  e.g. T={temps[len(temps) // 2]:g}: {samples[temps[len(temps) // 2]][0][:60]!r}")
  return {"summary": "\n".join(lines), **numbers}

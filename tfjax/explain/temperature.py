"""``explain temperature``: softmax with temperature, on a trained GPT, translator or BERT.

The next token is drawn from ``softmax(logits / T)``: ``T = 1`` is the model's distribution, ``T < 1`` sharpens it
(``T -> 0``: all mass on the argmax, greedy decoding), ``T > 1`` flattens it towards uniform. The command shows, for a
prompt, the next-token distribution at several temperatures, its entropy against ``T``, and the unigram entropy and
distinct-n of text sampled at each ``T`` with the project's own samplers: :func:`tfjax.generate.generate` continues a
GPT's prompt; for a translator the prompt is the source sentence, the distribution is that of the first target token,
and the samples are translations drawn by :func:`tfjax.generate.translate` (each up to its end token). A BERT reads a
text with blanks (``[MASK]``; a text without one has its last ``num_tokens`` tokens blanked): the distribution is its
first blank's, and the samples fill every blank left to right (:func:`tfjax.tasks.mlm.sample_masks`), both over the
tokens a blank can take (not ``[PAD]``, ``[MASK]`` and the other special tokens); their unigram entropy and distinct-n
count the filled tokens only.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.explain import pictures
from tfjax.generate import generate, translate

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
  terms = jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
  return 0.0 - jnp.sum(terms, axis=axis)  # 0 - x, not -x: a one-hot distribution's entropy is +0, not -0


def _tail(text: str, n: int) -> str:
  """The end of ``text`` in at most ``n`` characters, marked "..." where its start is cut."""
  return text if len(text) <= n else "..." + text[-(n - 3):]


def distinct_n(ids, n: int) -> float:
  """The fraction of distinct n-grams among all n-grams of the rows of ``ids`` (``[B, L]``, or rows of different
  lengths; pooled over rows)."""
  grams = [tuple(row[i:i + n]) for row in ids for i in range(len(row) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def unigram_entropy(ids) -> float:
  """Entropy in nats of the token frequencies of ``ids`` (all rows pooled; rows may differ in length)."""
  tokens = np.concatenate([np.asarray(row).reshape(-1) for row in ids] or [np.zeros(0)])
  if tokens.size == 0:
    return 0.0
  _, counts = np.unique(tokens, return_counts=True)
  p = counts / counts.sum()
  return float(0.0 - (p * np.log(p)).sum())  # 0 - x: one token's entropy is +0, not -0


@functools.partial(jax.jit, static_argnames=("model",))
def next_token_logits(model, params, ids: jnp.ndarray) -> jnp.ndarray:
  """The model's next-token logits ``[B, V]`` after ``ids [B, T]`` (a GPT's last position)."""
  return model.apply({"params": params}, ids)[:, -1]


@functools.partial(jax.jit, static_argnames=("model", "bos_id"))
def first_target_logits(model, params, src: jnp.ndarray, src_valid: jnp.ndarray, bos_id: int) -> jnp.ndarray:
  """A translator's logits ``[B, V]`` for the first target token of ``src [B, S]`` (after the begin token)."""
  return model.apply({"params": params}, src, src_valid, jnp.full((src.shape[0], 1), bos_id, jnp.int32))[:, -1]


class _GPTPrompt:
  """A GPT's prompt: the next token after it, and continuations of its last ``max_len / 2`` tokens."""

  def __init__(self, subject, text, num_tokens):
    self.model, self.params = subject.model, subject.params
    self.ids = subject.text_ids(text)
    # samples continue the prompt's last max_len/2 tokens and by default fill the window once: one compiled decoding
    # loop per temperature (a longer sample refills the cache and compiles a second prompt length)
    self.prompt_ids = self.ids[-max(1, self.model.cfg.max_len // 2):]
    self.num_tokens = max(3, min(64, self.model.cfg.max_len - len(self.prompt_ids))) if num_tokens is None \
        else num_tokens
    self.prompt = subject.tokenizer.decode(self.ids)
    self.what = "next token after"
    self.token = "next token"  # whose distribution it is

  def logits(self):
    return next_token_logits(self.model, self.params, jnp.asarray(self.ids[None]))[0]

  def text(self, row):
    """A sample's text: its new tokens."""
    return row

  def samples(self, num_samples, temperature, key):
    prompt = np.repeat(self.prompt_ids[None], num_samples, axis=0)
    out = generate(self.model, self.params, prompt, self.num_tokens, key, temperature=temperature)
    return [row for row in out[:, len(self.prompt_ids):]]


class _Source:
  """A translator's source sentence: its first target token, and translations sampled up to their end token."""

  def __init__(self, subject, text, num_tokens):
    from tfjax.tasks.translate import BOS_ID, EOS_ID, PAD_ID
    self.model, self.params = subject.model, subject.params
    self.bos, self.eos, self.pad = BOS_ID, EOS_ID, PAD_ID
    self.src = subject.text_ids(text, source=True)
    self.num_tokens = min(64, self.model.cfg.max_len) if num_tokens is None else num_tokens
    if self.num_tokens > self.model.cfg.max_len:
      from tfjax.explain.subjects import SubjectError
      raise SubjectError(f"--num_tokens={self.num_tokens} is longer than the context window {self.model.cfg.max_len}")
    self.prompt = subject.tokenizer.decode(self.src[:-1])
    self.what = "first target token of"
    self.token = "first target token"  # whose distribution it is

  def logits(self):
    src = jnp.asarray(self.src[None])
    return first_target_logits(self.model, self.params, src, src != self.pad, self.bos)[0]

  def samples(self, num_samples, temperature, key):
    src = np.repeat(self.src[None], num_samples, axis=0)
    out = translate(self.model, self.params, src, src != self.pad, self.num_tokens, bos_id=self.bos, eos_id=self.eos,
                    pad_id=self.pad, rng=key, temperature=temperature)
    rows = []
    for row in out:  # each translation up to (not including) its end token
      end = np.flatnonzero(row == self.eos)
      rows.append(row[:end[0]] if end.size else row)
    return rows

  def text(self, row):
    """A sample's text: the translation."""
    return row


class _Blanks:
  """A BERT's text with blanks: the distribution at its first ``[MASK]``, and every blank filled by sampling."""

  def __init__(self, subject, text, num_tokens):
    from tfjax.data.tokenizers import MASK
    from tfjax.explain.subjects import SubjectError
    self.model, self.params, tok = subject.model, subject.params, subject.tokenizer
    self.mask_id = tok.token_to_id(MASK)
    if self.mask_id is None:
      raise SubjectError(f"{subject.path}'s tokenizer has no {MASK} token: a BERT's temperature needs blanks to fill")
    ids = subject.text_ids(text).copy()
    blanks = ids == self.mask_id
    if blanks.any() and num_tokens is not None:
      raise SubjectError(f"--num_tokens blanks the end of a text without {MASK}; this text has {int(blanks.sum())} "
                         f"of them already: drop --num_tokens")
    if not blanks.any():  # blank out the text's last num_tokens real tokens
      real = np.flatnonzero(~np.isin(ids, tok.special_ids()))
      num_tokens = 3 if num_tokens is None else num_tokens
      if not 1 <= num_tokens <= real.size:
        raise SubjectError(f"--num_tokens={num_tokens}: the text has {real.size} tokens to blank (1 .. {real.size}); "
                           f"or write {MASK} where the blanks go")
      ids[real[-num_tokens:]] = self.mask_id
      blanks = ids == self.mask_id
    self.ids, self.blanks = ids, blanks
    self.first = int(np.flatnonzero(blanks)[0])
    self.num_tokens = int(blanks.sum())
    special = set(tok.special_ids())
    kept = [i for i in ids if i == self.mask_id or i not in special]  # the text, [MASK]s shown
    self.prompt = tok.decode(kept, skip_special_tokens=False)
    self.what = "first [MASK] of"
    self.token = "first [MASK]"  # whose distribution it is
    from tfjax.tasks.mlm import fillable_tokens
    self.fillable = fillable_tokens(tok, self.model.cfg.vocab_size)  # a blank is never filled with [PAD], [MASK], ...

  def logits(self):
    """The first blank's logits, ``-inf`` at the tokens no blank is filled with (:func:`fillable_tokens`)."""
    from tfjax.tasks.mlm import fill_mask_logits
    logits = fill_mask_logits(self.model, self.params, jnp.asarray(self.ids[None]),
                              jnp.asarray([[self.first]], jnp.int32))[0, 0]
    return jnp.where(self.fillable, logits, -jnp.inf)

  def samples(self, num_samples, temperature, key):
    from tfjax.tasks.mlm import sample_masks
    ids = np.repeat(self.ids[None], num_samples, axis=0)
    filled = sample_masks(self.model, self.params, ids, np.repeat(self.blanks[None], num_samples, axis=0), key,
                          temperature=temperature, fillable=self.fillable)
    return [row[self.blanks] for row in filled]

  def text(self, row):
    """The whole text with the blanks filled by ``row`` (one sample's tokens)."""
    ids = self.ids.copy()
    ids[self.blanks] = row
    return ids


def run(subject, out_dir: str, *, text: str | None = None, temperatures=DEFAULT_TEMPERATURES,
        num_samples: int = 8, num_tokens: int | None = None, top_k: int = 12, seed: int = 0) -> dict:
  """Writes ``temperature_distribution.png`` (the top-``top_k`` next tokens' probabilities at each T),
  ``temperature_entropy.png`` (entropy of the next-token distribution against T; unigram entropy and distinct-1/2/3
  of ``num_samples`` samples of ``num_tokens`` tokens at each T) and ``temperature.json``. A BERT: ``text`` with
  ``[MASK]`` blanks (the sampled tokens), or without, its last ``num_tokens`` tokens (default 3) blanked."""
  from tfjax.explain.subjects import SubjectError
  os.makedirs(out_dir, exist_ok=True)
  temps = [float(t) for t in temperatures]
  if not temps or min(temps) < 0:
    raise SubjectError(f"--temperatures must be >= 0, got {temps}")
  if num_samples < 1:
    raise SubjectError(f"--num_samples must be >= 1, got {num_samples}")
  source = {"translator": _Source, "bert": _Blanks}.get(subject.kind, _GPTPrompt)(subject, text, num_tokens)
  num_tokens = source.num_tokens
  if num_tokens < 3 and subject.kind != "bert":  # a BERT's blanks are the text's: distinct-n up to their number
    raise SubjectError(f"--num_tokens must be >= 3 (distinct-3 needs three tokens), got {num_tokens}")
  orders = [n for n in (1, 2, 3) if n <= num_tokens]
  logits = source.logits()
  probs = np.asarray(temperature_distributions(logits, jnp.asarray(temps)))  # [N, V]
  fine_t = np.linspace(0.0, max(3.0, max(temps)), 61)
  fine_entropy = np.asarray(entropy(temperature_distributions(logits, jnp.asarray(fine_t))))
  top = np.argsort(-np.asarray(jax.nn.softmax(logits)))[:min(top_k, probs.shape[1])]
  top_labels = subject.labels(top)

  samples, fills, stats = {}, {}, {"unigram_entropy": [], **{f"distinct_{n}": [] for n in orders}}
  for i, t in enumerate(temps):
    rows = source.samples(num_samples, t, jax.random.key(seed + i))
    samples[t] = [subject.tokenizer.decode(source.text(row)) for row in rows]
    fills[t] = [subject.tokenizer.decode(row) for row in rows]
    stats["unigram_entropy"].append(unigram_entropy(rows))
    for n in orders:
      stats[f"distinct_{n}"].append(distinct_n(rows, n))

  title = f"{source.what} {_tail(source.prompt, 40)!r}"
  pictures.heatmap(probs[:, top], os.path.join(out_dir, "temperature_distribution.png"),
                   row_labels=[f"T={t:g}" for t in temps], col_labels=top_labels, title=title, xlabel="token",
                   cmap="Blues", annotate=True)
  pictures.curves(fine_t, {}, os.path.join(out_dir, "temperature_entropy.png"), xlabel="temperature T", ylabel="",
                  panels={f"entropy of the {source.token} (nats)": (
                              fine_t, {"H(softmax(logits/T))": fine_entropy}, "nats"),
                          f"{num_samples} samples x {num_tokens} tokens": (
                              temps, {k: v for k, v in stats.items() if k != "unigram_entropy"}, "distinct-n"),
                          "sampled text": (temps, {"unigram entropy": stats["unigram_entropy"]}, "nats")})
  numbers = {"prompt": source.prompt, "temperatures": temps, "top_tokens": top_labels,
             "top_token_ids": top, "probs_top": probs[:, top], "entropy": np.asarray(entropy(jnp.asarray(probs))),
             "entropy_curve": {"T": fine_t, "entropy": fine_entropy}, "samples": stats,
             "sample_text": {str(t): s for t, s in samples.items()}}
  if subject.kind == "bert":
    numbers["sample_blanks"] = {str(t): f for t, f in fills.items()}  # each sample's filled tokens alone
  pictures.write_json(os.path.join(out_dir, "temperature.json"), numbers)
  lines = [f"temperature: {source.what} {_tail(source.prompt, 60)!r}"]
  shown = orders[min(1, len(orders) - 1)]  # distinct-2 (distinct-1 for a single blank)
  for t, p, h, d in zip(temps, probs, numbers["entropy"], stats[f"distinct_{shown}"]):
    lines.append(f"  T={t:<5g} top {top_labels[0]!r} p={p[top[0]]:.3f}  entropy {h:.3f} nats  "
                 f"samples distinct-{shown} {d:.3f}")
  middle = temps[len(temps) // 2]
  if subject.kind == "bert":
    lines.append(f"  e.g. T={middle:g}: the blanks filled with {fills[middle][0]!r}: {samples[middle][0][-60:]!r}")
  else:
    lines.append(f"  e.g. T={middle:g}: {samples[middle][0][:60]!r}")
  return {"summary": "\n".join(lines), **numbers}

"""word2vec data: tokenisation, vocabulary, frequent-word subsampling, dynamic windows, noise distribution.

Everything here is numpy and vectorised over the corpus: per epoch, the only Python loops run over the window
offsets (at most ``2 * window`` of them), never over words.

Tokenisation (one rule, shared by tfjax and the gensim benchmark, :func:`tokenize_line`): lowercase the line, split
on whitespace, strip leading and trailing punctuation (``string.punctuation``) from every token and drop tokens that
become empty. Punctuation inside a token is kept ("don't", "u.s", "1.5"). WikiText's ``<unk>`` placeholder is
dropped, and so are its ``@-@``/``@,@``/``@.@`` joiners (they are all punctuation). One line of a corpus file is one
sentence: context windows never cross a line.

Conventions follow gensim 4 (so that word counts and "effective words" are comparable):

* the vocabulary keeps words seen at least ``min_count`` times, sorted by descending count (ties by the word);
* subsampling keeps an occurrence of word ``w`` with probability
  ``min(1, (sqrt(c_w / t) + 1) * t / c_w)`` with ``t = sample * total`` (``total`` = number of in-vocabulary tokens;
  gensim's formula, which is Mikolov's word2vec.c formula); ``sample = 0`` keeps every word;
* out-of-vocabulary and dropped words are removed *before* the windows are laid, so windows span over them;
* the dynamic window of each kept centre word is ``r = window - b`` with ``b`` uniform in ``[0, window)``, i.e. ``r``
  uniform in ``[1, window]``;
* the noise distribution for negative sampling is ``count ** ns_exponent`` normalised (``ns_exponent = 0.75``).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import string
from typing import Iterable, Sequence

import numpy as np

_PUNCT = string.punctuation
_DROP_TOKENS = frozenset({"<unk>"})


class CorpusError(ValueError):
  """The corpus is empty, or no word survives ``min_count``."""


def tokenize_line(line: str) -> list[str]:
  """Lowercase, split on whitespace, strip punctuation at both ends of each token, drop empty tokens and ``<unk>``."""
  out = []
  for tok in line.lower().split():
    if tok in _DROP_TOKENS:
      continue
    tok = tok.strip(_PUNCT)
    if tok:
      out.append(tok)
  return out


def read_sentences(paths: Iterable[str | os.PathLike]) -> list[list[str]]:
  """Reads text files, one sentence per non-empty line (after tokenisation)."""
  sentences = []
  for path in paths:
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        toks = tokenize_line(line)
        if toks:
          sentences.append(toks)
  return sentences


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Words sorted by descending count; ``index[word]`` is the row of the word's vectors."""
  words: tuple[str, ...]
  counts: np.ndarray  # int64[V]
  index: dict[str, int]

  def __len__(self) -> int:
    return len(self.words)

  @property
  def total(self) -> int:
    """Number of in-vocabulary tokens in the corpus (gensim's ``retain_total``)."""
    return int(self.counts.sum())

  def ids(self, words: Sequence[str]) -> np.ndarray:
    """Ids of ``words``; raises ``KeyError`` naming the first out-of-vocabulary word."""
    out = np.empty(len(words), np.int32)
    for i, w in enumerate(words):
      if w not in self.index:
        raise KeyError(f"word {w!r} is not in the vocabulary ({len(self)} words)")
      out[i] = self.index[w]
    return out


def build_vocab(sentences: Iterable[Sequence[str]], min_count: int = 5) -> Vocab:
  """Counts words and keeps those seen at least ``min_count`` times, most frequent first (ties by word)."""
  counter = collections.Counter()
  for s in sentences:
    counter.update(s)
  if not counter:
    raise CorpusError("the corpus is empty: no tokens after tokenisation.")
  kept = [(w, c) for w, c in counter.items() if c >= min_count]
  if not kept:
    raise CorpusError(f"no word occurs at least min_count={min_count} times in the corpus "
                      f"({len(counter)} distinct words, most frequent {counter.most_common(1)[0]}).")
  kept.sort(key=lambda wc: (-wc[1], wc[0]))
  words = tuple(w for w, _ in kept)
  return Vocab(words, np.array([c for _, c in kept], np.int64), {w: i for i, w in enumerate(words)})


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
  """Probability of keeping one occurrence of each word under frequent-word subsampling (gensim's formula).

  ``p_w = min(1, (sqrt(c_w / t) + 1) * t / c_w)`` with threshold count ``t = sample * sum(counts)`` (or ``t = sample``
  when ``sample >= 1``, as in gensim). ``sample <= 0`` disables subsampling.
  """
  counts = np.asarray(counts, np.float64)
  if sample <= 0:
    return np.ones_like(counts)
  t = sample if sample >= 1.0 else sample * counts.sum()
  return np.minimum(1.0, (np.sqrt(counts / t) + 1.0) * (t / counts))


def noise_distribution(counts: np.ndarray, exponent: float = 0.75) -> np.ndarray:
  """The negative-sampling noise distribution ``c_w ** exponent / sum(c ** exponent)`` (float64[V])."""
  p = np.asarray(counts, np.float64) ** exponent
  return p / p.sum()


@dataclasses.dataclass(frozen=True)
class EncodedCorpus:
  """The corpus as flat arrays: ``ids`` int32[N] of in-vocabulary tokens, ``sentence`` int32[N] their line number."""
  ids: np.ndarray
  sentence: np.ndarray

  def __len__(self) -> int:
    return len(self.ids)


def encode(sentences: Sequence[Sequence[str]], vocab: Vocab) -> EncodedCorpus:
  """Maps tokens to ids, dropping out-of-vocabulary words (as gensim does before laying windows)."""
  index = vocab.index
  ids, sent = [], []
  for s_i, s in enumerate(sentences):
    row = [index[w] for w in s if w in index]
    ids.extend(row)
    sent.extend([s_i] * len(row))
  if not ids:
    raise CorpusError("no in-vocabulary token in the corpus.")
  return EncodedCorpus(np.asarray(ids, np.int32), np.asarray(sent, np.int32))


def subsample(corpus: EncodedCorpus, keep_prob: np.ndarray, rng: np.random.Generator) -> EncodedCorpus:
  """Drops each token independently with probability ``1 - keep_prob[id]``; the survivors are the effective words."""
  if np.all(keep_prob >= 1.0):
    return corpus
  keep = rng.random(len(corpus.ids), dtype=np.float32) < keep_prob.astype(np.float32)[corpus.ids]
  return EncodedCorpus(corpus.ids[keep], corpus.sentence[keep])


def window_offsets(window: int) -> list[int]:
  """The context offsets ``-window..-1, 1..window``: column ``j`` of :func:`windows` is offset ``[j]``."""
  return [o for o in range(-window, window + 1) if o != 0]


def window_mask(corpus: EncodedCorpus, window: int, rng: np.random.Generator, dynamic: bool = True) -> np.ndarray:
  """``mask_NxC`` of :func:`windows` alone (the same draws from ``rng``): ``mask[i, j]`` says that the token at
  ``i + window_offsets(window)[j]`` is a neighbour of token ``i``."""
  sent = corpus.sentence
  n = len(sent)
  if dynamic:
    reach = window - rng.integers(0, window, size=n, dtype=np.int32)
  else:
    reach = np.full(n, window, np.int32)
  offsets = window_offsets(window)
  mask = np.zeros((n, len(offsets)), bool)
  for j, o in enumerate(offsets):  # 2 * window iterations, each vectorised over the corpus
    lo, hi = max(0, -o), min(n, n - o)  # centres i with 0 <= i + o < n
    mask[lo:hi, j] = (sent[lo + o:hi + o] == sent[lo:hi]) & (reach[lo:hi] >= abs(o))
  return mask


def windows(corpus: EncodedCorpus, window: int, rng: np.random.Generator, dynamic: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
  """Context windows of every token of ``corpus`` (already subsampled).

  Returns ``(context_NxC, mask_NxC)`` with ``C = 2 * window``: column ``j`` holds the word at offset
  ``-window..-1, 1..window``; ``mask`` is False where the offset is outside the token's (dynamic) window or its
  sentence, and there ``context`` is 0. With ``dynamic`` the reach of each centre is uniform in ``[1, window]``.
  So wherever ``mask[i, j]``, ``context[i, j] == corpus.ids[i + window_offsets(window)[j]]``.
  """
  ids = corpus.ids
  n = len(ids)
  mask = window_mask(corpus, window, rng, dynamic)
  context = np.zeros(mask.shape, np.int32)
  for j, o in enumerate(window_offsets(window)):
    lo, hi = max(0, -o), min(n, n - o)
    context[lo:hi, j] = np.where(mask[lo:hi, j], ids[lo + o:hi + o], 0)
  return context, mask


def extended_blocks(ids: np.ndarray, block: int, num_blocks: int, window: int, fill: int) -> np.ndarray:
  """The ids of ``num_blocks`` consecutive blocks of ``block`` positions, each extended by ``window`` positions on
  both sides: ``out[b, k] = ids[b * block - window + k]`` (int32 ``num_blocks x (block + 2 * window)``), ``fill``
  where that position is outside ``ids`` (before its start, or past its end when the blocks pad it)."""
  padded = np.full(num_blocks * block + 2 * window, fill, np.int32)
  n = min(len(ids), num_blocks * block)
  padded[window:window + n] = ids[:n]
  return np.lib.stride_tricks.sliding_window_view(padded, block + 2 * window)[::block].copy()


def sample_noise(noise_cdf: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """Draws word ids from the noise distribution given by its cumulative sum ``noise_cdf`` (int32[shape])."""
  u = rng.random(shape, dtype=np.float64) * noise_cdf[-1]
  return np.minimum(np.searchsorted(noise_cdf, u, side="right"), len(noise_cdf) - 1).astype(np.int32)


def skipgram_pairs(context: np.ndarray, mask: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Flattens windows into (centre, context) pairs in corpus order: two int32[P] arrays, ``P = mask.sum()``."""
  counts = mask.sum(axis=1)
  return np.repeat(centre, counts).astype(np.int32), context[mask].astype(np.int32)

"""Word vectors: save/load (word2vec text and binary formats), neighbours, analogies, similarity benchmarks, PCA plot.

All numpy. The evaluations follow gensim's ``KeyedVectors`` so that numbers are comparable:

* analogies (:func:`evaluate_analogies`, like ``evaluate_word_analogies``): for ``a b c d`` ("a is to b as c is to d")
  predict ``argmax_w cos(w, b^ - a^ + c^)`` over the ``restrict_vocab`` most frequent words, excluding ``a``, ``b``,
  ``c`` (3CosAdd on unit vectors); questions with a word outside that vocabulary are skipped and counted as OOV;
  words are compared lowercased;
* word-pair similarity (:func:`evaluate_word_pairs`): Spearman rank correlation (average ranks for ties) between
  cosine similarities and human scores over the pairs whose two words are in the vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np


@dataclasses.dataclass
class WordVectors:
  """Word vectors ``vectors_VxD`` (float32) for ``words`` (row ``i`` is ``words[i]``, most frequent first)."""
  words: list[str]
  vectors: np.ndarray

  def __post_init__(self):
    self.vectors = np.asarray(self.vectors, np.float32)
    if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
      raise ValueError(f"vectors of shape {self.vectors.shape} do not match {len(self.words)} words")
    self.index = {w: i for i, w in enumerate(self.words)}
    norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
    self.unit = self.vectors / np.maximum(norms, 1e-12)

  def __len__(self) -> int:
    return len(self.words)

  def __contains__(self, word: str) -> bool:
    return word in self.index

  def id(self, word: str) -> int:
    try:
      return self.index[word]
    except KeyError:
      raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} words)") from None

  def __getitem__(self, word: str) -> np.ndarray:
    return self.vectors[self.id(word)]

  def similarity(self, a: str, b: str) -> float:
    return float(self.unit[self.id(a)] @ self.unit[self.id(b)])

  def most_similar(self, positive: Sequence[str] = (), negative: Sequence[str] = (), topn: int = 10,
                   restrict_vocab: int | None = None) -> list[tuple[str, float]]:
    """Words nearest (cosine) to ``mean(unit(positive)) - ...`` like gensim: the query words themselves are excluded.

    ``most_similar(["king", "woman"], ["man"])`` answers king - man + woman.
    """
    if not positive and not negative:
      raise ValueError("give at least one positive or negative word")
    ids = [self.id(w) for w in positive] + [self.id(w) for w in negative]
    weights = np.array([1.0] * len(positive) + [-1.0] * len(negative), np.float32)
    query = (weights[:, None] * self.unit[ids]).mean(axis=0)
    query /= max(np.linalg.norm(query), 1e-12)
    limit = len(self) if restrict_vocab is None else min(restrict_vocab, len(self))
    sims = self.unit[:limit] @ query
    sims[[i for i in ids if i < limit]] = -np.inf
    top = np.argsort(-sims)[:topn]
    return [(self.words[i], float(sims[i])) for i in top if np.isfinite(sims[i])]

  def neighbors(self, word: str, topn: int = 10) -> list[tuple[str, float]]:
    return self.most_similar([word], topn=topn)

  def analogy(self, a: str, b: str, c: str, topn: int = 10) -> list[tuple[str, float]]:
    """``a - b + c`` (e.g. ``king, man, woman`` -> queen): the words nearest to it, excluding a, b, c."""
    return self.most_similar([a, c], [b], topn=topn)


# ---------------------------------------------------------------------------------------------------- save / load


def save_word2vec(wv: WordVectors, path: str | os.PathLike, binary: bool = False) -> None:
  """Writes the word2vec format: header ``"V D\\n"``, then per word ``word v1 .. vD\\n`` (text) or ``word `` + D
  little-endian float32 + ``\\n`` (binary, as word2vec.c writes it). Both load with gensim's
  ``KeyedVectors.load_word2vec_format(path, binary=...)``."""
  for w in wv.words:
    if not w or any(ch.isspace() for ch in w):
      raise ValueError(f"word {w!r} cannot be written in word2vec format (empty or contains whitespace)")
  v, d = wv.vectors.shape
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(f"{v} {d}\n".encode())
    if binary:
      rows = wv.vectors.astype("<f4")
      for w, row in zip(wv.words, rows):
        f.write(w.encode() + b" " + row.tobytes() + b"\n")
    else:
      lines = (w + " " + " ".join(f"{x:.6g}" for x in row) for w, row in zip(wv.words, wv.vectors))
      f.write(("\n".join(lines) + "\n").encode())
  os.replace(tmp, path)


def load_word2vec(path: str | os.PathLike, binary: bool | None = None) -> WordVectors:
  """Reads the word2vec text or binary format (``binary=None``: guessed from the bytes after the header). A file in
  neither format, or cut short, is a ``ValueError`` naming it."""
  with open(path, "rb") as f:
    header = f.readline().split()
    if len(header) != 2 or not all(h.isdigit() for h in header):
      raise ValueError(f"{path}: not a word2vec file: its first line must be 'num_words dim', got {header!r}")
    v, d = int(header[0]), int(header[1])
    body = f.read()
  if binary is None:
    binary = _looks_binary(body, d)
  if binary:
    words, vecs = _read_binary_records(body, v, d, path)
  else:
    words, vecs = _read_text_records(body, v, d, path)
  return WordVectors(words, vecs)


def _read_binary_records(body: bytes, v: int, d: int, path) -> tuple[list[str], np.ndarray]:
  words, vecs = [], np.empty((v, d), np.float32)
  pos = 0
  for i in range(v):
    while body[pos:pos + 1] in (b"\n", b" "):
      pos += 1
    sp = body.find(b" ", pos)
    if sp < 0 or sp + 1 + 4 * d > len(body):
      raise ValueError(f"{path}: the file ends inside word {i + 1} of the {v} its header announces (cut short, or "
                       "not in word2vec format)")
    try:
      words.append(body[pos:sp].decode("utf-8"))
    except UnicodeDecodeError:
      raise ValueError(f"{path}: word {i + 1} is not UTF-8 (not a word2vec binary file?)") from None
    vecs[i] = np.frombuffer(body, "<f4", count=d, offset=sp + 1)
    pos = sp + 1 + 4 * d
  return words, vecs


def _read_text_records(body: bytes, v: int, d: int, path) -> tuple[list[str], np.ndarray]:
  words, vecs = [], np.empty((v, d), np.float32)
  try:
    lines = body.decode("utf-8").splitlines()
  except UnicodeDecodeError:
    raise ValueError(f"{path}: not UTF-8 text (not a word2vec text file?)") from None
  lines = [ln for ln in lines if ln.strip()]
  if len(lines) != v:
    raise ValueError(f"{path}: header says {v} words, found {len(lines)} lines")
  for i, ln in enumerate(lines):
    parts = ln.rstrip().split(" ")
    if len(parts) != d + 1:
      raise ValueError(f"{path}: line {i + 2} has {len(parts) - 1} numbers, expected {d}")
    words.append(parts[0])
    try:
      vecs[i] = np.asarray(parts[1:], np.float32)
    except ValueError:
      raise ValueError(f"{path}: line {i + 2} has a value that is not a number") from None
  return words, vecs


def _looks_binary(body: bytes, d: int) -> bool:
  """True unless the first record reads as text: a word and ``d`` numbers separated by spaces."""
  first = body.split(b"\n", 1)[0]
  try:
    parts = first.decode("utf-8").rstrip().split(" ")
    [float(p) for p in parts[1:]]
  except (UnicodeDecodeError, ValueError):
    return True
  return len(parts) != d + 1


# ---------------------------------------------------------------------------------------------------- evaluation


def read_analogies(path: str | os.PathLike) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
  """Reads questions-words.txt: sections (``: name`` lines) of lowercased ``a b c d`` questions."""
  sections: list[tuple[str, list]] = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      if line.startswith(":"):
        sections.append((line[1:].strip(), []))
        continue
      parts = line.lower().split()
      if len(parts) != 4:
        raise ValueError(f"{path}: bad analogy line {line!r}")
      if not sections:
        raise ValueError(f"{path}: question before the first ': section' line")
      sections[-1][1].append(tuple(parts))
  return sections


def evaluate_analogies(wv: WordVectors, path: str | os.PathLike, restrict_vocab: int = 300_000,
                       chunk: int = 2048) -> dict:
  """3CosAdd analogy accuracy, by section and overall, like gensim's ``evaluate_word_analogies``.

  Returns ``{"accuracy", "correct", "total", "oov", "oov_ratio", "semantic", "syntactic", "sections": {name:
  {"accuracy", "correct", "total"}}}``; sections whose name starts with ``gram`` are syntactic.
  """
  limit = min(restrict_vocab, len(wv))
  index = {w: i for i, w in enumerate(wv.words[:limit])}
  unit = wv.unit[:limit]
  sections = read_analogies(path)
  out_sections, oov, n_questions = {}, 0, 0
  sem, syn = [0, 0], [0, 0]
  for name, questions in sections:
    n_questions += len(questions)
    q = [tuple(index.get(w, -1) for w in qq) for qq in questions]
    q = np.array([t for t in q if min(t) >= 0], np.int64).reshape(-1, 4)
    oov += len(questions) - len(q)
    correct = 0
    for s in range(0, len(q), chunk):
      a, b, c, d = q[s:s + chunk].T
      query = unit[b] - unit[a] + unit[c]  # same argmax as gensim's mean of (b^, c^, -a^) normalised
      sims = query @ unit.T
      rows = np.arange(len(a))
      sims[rows, a] = sims[rows, b] = sims[rows, c] = -np.inf
      correct += int(np.sum(np.argmax(sims, axis=1) == d))
    out_sections[name] = {"accuracy": correct / len(q) if len(q) else 0.0, "correct": correct, "total": len(q)}
    bucket = syn if name.startswith("gram") else sem
    bucket[0] += correct
    bucket[1] += len(q)
  correct = sem[0] + syn[0]
  total = sem[1] + syn[1]
  return {
      "accuracy": correct / total if total else 0.0, "correct": correct, "total": total,
      "oov": oov, "oov_ratio": oov / max(n_questions, 1),
      "semantic": sem[0] / sem[1] if sem[1] else 0.0, "syntactic": syn[0] / syn[1] if syn[1] else 0.0,
      "sections": out_sections,
  }


def rankdata(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n with ties given their average rank (like ``scipy.stats.rankdata(method="average")``)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  # Start index of each run of equal values, broadcast to its members: average rank = (first + last) / 2 + 1.
  new_run = np.r_[True, xs[1:] != xs[:-1]]
  run_id = np.cumsum(new_run) - 1
  starts = np.flatnonzero(new_run)
  ends = np.r_[starts[1:], len(xs)] - 1
  avg = (starts + ends) / 2.0 + 1.0
  ranks = np.empty(len(x), np.float64)
  ranks[order] = avg[run_id]
  return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman rank correlation: the Pearson correlation of the average ranks."""
  rx, ry = rankdata(np.asarray(x, np.float64)), rankdata(np.asarray(y, np.float64))
  if len(rx) < 2:
    raise ValueError("Spearman correlation needs at least 2 pairs")
  rx -= rx.mean()
  ry -= ry.mean()
  denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
  return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def read_word_pairs(path: str | os.PathLike) -> list[tuple[str, str, float]]:
  """Reads a ``word1<TAB>word2<TAB>score`` file (lines starting with ``#`` are comments); words lowercased."""
  pairs = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip() or line.startswith("#"):
        continue
      parts = line.strip().split("\t")
      if len(parts) < 3:
        parts = line.split()
      pairs.append((parts[0].lower(), parts[1].lower(), float(parts[2])))
  return pairs


def evaluate_word_pairs(wv: WordVectors, path: str | os.PathLike) -> dict:
  """Spearman correlation of cosine similarity with human scores on in-vocabulary pairs; OOV pairs are skipped."""
  pairs = read_word_pairs(path)
  known = [(a, b, s) for a, b, s in pairs if a in wv and b in wv]
  if len(known) < 2:
    return {"spearman": float("nan"), "pairs": len(known), "oov": len(pairs) - len(known),
            "oov_ratio": 1.0 if pairs else 0.0}
  sims = [wv.similarity(a, b) for a, b, _ in known]
  return {"spearman": spearman(sims, [s for _, _, s in known]), "pairs": len(known),
          "oov": len(pairs) - len(known), "oov_ratio": (len(pairs) - len(known)) / len(pairs)}


# ---------------------------------------------------------------------------------------------------- plot

COUNTRIES_AND_CAPITALS = ("france", "paris", "germany", "berlin", "italy", "rome", "spain", "madrid", "england",
                          "london", "russia", "moscow", "japan", "tokyo", "china", "beijing")


def pca_2d(x: np.ndarray) -> np.ndarray:
  """Projects the rows of ``x_NxD`` on their first two principal components (``N x 2``)."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:2].T


def plot_pca(wv: WordVectors, words: Iterable[str], path: str | os.PathLike, title: str = "") -> list[str]:
  """Saves a PNG scatter of the words' vectors projected by 2-D PCA; returns the words plotted (those in vocab)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  words = [w for w in words if w in wv]
  if len(words) < 2:
    raise ValueError("need at least 2 in-vocabulary words to plot")
  xy = pca_2d(np.stack([wv.unit[wv.id(w)] for w in words]))
  fig, ax = plt.subplots(figsize=(7, 6))
  ax.scatter(xy[:, 0], xy[:, 1], s=12)
  for (x, y), w in zip(xy, words):
    ax.annotate(w, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=9)
  ax.set_title(title or "word vectors, 2-D PCA")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return words

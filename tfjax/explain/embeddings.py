"""``explain embeddings``: the geometry of token embeddings, for word2vec and for a GPT / BERT / translator.

The rows of the embedding table ``[V, D]`` are read as word vectors (:class:`tfjax.tasks.word2vec_eval.WordVectors`, the
same class ``./launch.sh query`` uses): nearest neighbours by cosine, analogies ``a - b + c`` (3CosAdd on unit
vectors, the query words excluded), a 2-D PCA projection of chosen groups of words, and the cosine-similarity
matrix of the chosen words.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from tfjax.tasks import word2vec_eval as ev
from tfjax.explain import pictures

DEFAULT_GROUPS = {
    "word2vec": ["capitals:paris,london,berlin,rome,madrid", "countries:france,england,germany,italy,spain",
                 "numbers:one,two,three,four,five", "family:king,queen,man,woman,father,mother"],
    "gpt": ["vowels:a,e,i,o,u", "consonants:b,c,d,f,g,h", "capitals:A,B,C,D,E,F", "punctuation:.,;,:,!,?"],
    "bert": ["numbers:one,two,three,four,five", "places:france,paris,london,england,germany",
             "function:the,a,of,and,in,to"],
    "translator": ["numbers:one,two,three,ein,zwei,drei", "animals:dog,cat,horse,hund,katze,pferd",
                   "colours:red,blue,green,rot,blau,grün"],
}
DEFAULT_ANALOGIES = {"word2vec": ["king,man,woman", "paris,france,germany"], "gpt": ["A,a,b", "E,e,i"],
                     "bert": ["paris,france,germany", "king,man,woman"], "translator": ["dog,hund,katze"]}


def word_vectors(subject) -> ev.WordVectors:
  """The subject's token embeddings as word vectors: word2vec's own; a model's ``embed/embedding [V, D]`` rows under
  their token labels."""
  if subject.kind == "word2vec":
    return subject.vectors
  table = np.asarray(subject.params["embed"]["embedding"], np.float32)
  labels = subject.vocab()
  seen: dict[str, int] = {}
  unique = []
  for i, w in enumerate(labels):  # distinct labels (two byte-level tokens may look alike)
    unique.append(w if w not in seen else f"{w}#{i}")
    seen.setdefault(w, i)
  return ev.WordVectors(unique, table)


def _parse_groups(groups: Sequence[str], wv: ev.WordVectors) -> dict[str, list[str]]:
  from tfjax.explain.subjects import SubjectError
  out = {}
  for spec in groups:
    name, sep, words = spec.partition(":")
    if not sep:
      name, words = f"group {len(out)}", spec
    items = [w for w in words.split(",") if w]
    known = [w for w in items if w in wv]
    if known:
      out[name] = known
  if not out:
    raise SubjectError(f"none of the words of the groups {list(groups)} is in the vocabulary; give --group="
                       "NAME:w1,w2,... with words the model knows")
  return out


def run(subject, out_dir: str, *, words: Sequence[str] | None = None, analogy: Sequence[str] | None = None,
        groups: Sequence[str] | None = None, top_k: int = 8) -> dict:
  """Writes ``embeddings_neighbours.png`` (the ``top_k`` nearest tokens of each of ``words``),
  ``embeddings_projection.png`` (the ``groups`` projected on their first two principal components),
  ``embeddings_cosine.png`` (their cosine-similarity matrix) and ``embeddings.json`` (also the analogies)."""
  from tfjax.explain.subjects import SubjectError
  os.makedirs(out_dir, exist_ok=True)
  wv = word_vectors(subject)
  group_words = _parse_groups(groups or DEFAULT_GROUPS[subject.kind], wv)
  chosen = [w for ws in group_words.values() for w in ws]
  if words is not None:
    missing = [w for w in words if w not in wv]
    if missing:
      raise SubjectError(f"not in the vocabulary: {missing} ({len(wv)} tokens)")
    query = list(words)
  else:
    query = [ws[0] for ws in group_words.values()][:6]
  neighbours = {w: wv.neighbors(w, top_k) for w in query}
  analogies = {}
  for spec in (analogy if analogy is not None else DEFAULT_ANALOGIES[subject.kind]):
    parts = [x.strip() for x in spec.split(",")]
    if len(parts) != 3:
      raise SubjectError(f"--analogy takes three comma-separated words a,b,c (a - b + c), got {spec!r}")
    if all(p in wv for p in parts):
      analogies[spec] = wv.analogy(*parts, topn=top_k)
    elif analogy is not None:
      raise SubjectError(f"analogy {spec!r}: {[p for p in parts if p not in wv]} not in the vocabulary")
  unit = np.stack([wv.unit[wv.id(w)] for w in chosen])
  cosine = unit @ unit.T
  xy = ev.pca_2d(np.stack([wv[w] for w in chosen])) if len(chosen) >= 2 else np.zeros((len(chosen), 2))

  pictures.bars([], [], os.path.join(out_dir, "embeddings_neighbours.png"), xlabel="cosine",
                panels={f"nearest to {w!r}": ([n for n, _ in nb], [s for _, s in nb]) for w, nb in neighbours.items()})
  pictures.scatter(xy, chosen, [g for g, ws in group_words.items() for _ in ws],
                   os.path.join(out_dir, "embeddings_projection.png"),
                   title=f"token embeddings, 2-D PCA of the chosen groups ({subject.kind})")
  pictures.heatmap(cosine, os.path.join(out_dir, "embeddings_cosine.png"), row_labels=chosen, col_labels=chosen,
                   title="cosine similarity of token embeddings", center=True)
  numbers = {"kind": subject.kind, "vocab_size": len(wv), "dim": int(wv.vectors.shape[1]), "groups": group_words,
             "neighbours": neighbours, "analogies": analogies, "words": chosen, "cosine": cosine, "pca_2d": xy}
  pictures.write_json(os.path.join(out_dir, "embeddings.json"), numbers)
  lines = [f"embeddings: {len(wv)} tokens x {wv.vectors.shape[1]} dims ({subject.kind})"]
  for w, nb in neighbours.items():
    lines.append(f"  nearest to {w!r}: " + ", ".join(f"{n} {s:.2f}" for n, s in nb[:5]))
  for spec, res in analogies.items():
    a, b, c = spec.split(",")
    lines.append(f"  {a} - {b} + {c} = " + ", ".join(f"{n} {s:.2f}" for n, s in res[:3]))
  return {"summary": "\n".join(lines), **numbers}

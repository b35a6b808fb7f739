"""Character-level tokenizer: one token per distinct character of the training text (as in char-rnn / nanoGPT)."""

from __future__ import annotations

import json
import os

import numpy as np


class CharTokenizer:
  """Maps each character of a fixed alphabet to an id ``0 .. V-1`` (sorted by code point) and back."""

  def __init__(self, chars: str | list[str]):
    self.chars = sorted(set(chars))
    if not self.chars:
      raise ValueError("a character tokenizer needs a non-empty alphabet")
    self._ids = {c: i for i, c in enumerate(self.chars)}

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    return cls(set(text))

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    unknown = sorted(set(text) - self._ids.keys())
    if unknown:
      raise ValueError(f"characters not in the tokenizer's alphabet: {unknown[:10]!r}")
    return np.fromiter((self._ids[c] for c in text), dtype=np.int32, count=len(text))

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

  def save(self, path: str | os.PathLike) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      json.dump({"type": "char", "chars": self.chars}, f)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "CharTokenizer":
    with open(path) as f:
      data = json.load(f)
    if data.get("type") != "char":
      raise ValueError(f"{path} is not a character tokenizer")
    return cls(data["chars"])

"""Tokenizers of the language-model task: characters (as in char-rnn / nanoGPT) and byte-level BPE (as GPT-2).

- :class:`CharTokenizer`: one token per distinct character of the training text, ids ``0 .. C-1`` sorted by code
  point; with ``eot=True`` one more id ``C`` is the end-of-text token that separates documents in token shards.
- :func:`train_byte_bpe`: a GPT-2-style byte-level BPE (every byte representable, so nothing is ever unknown)
  trained with Hugging Face ``tokenizers`` from an iterator of strings (never the whole corpus at once);
  ``<|endoftext|>`` is id 0. Returned as a :class:`tfjax.data.wordpiece.Tokenizer`.
- :func:`load_tokenizer`: a saved ``tokenizer.json`` of either kind.

Both kinds offer ``encode(text) -> int32[n]``-like ids, ``decode(ids) -> str``, ``vocab_size`` and ``eos_id`` (the
end-of-text id, or None).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np

EOT = "<|endoftext|>"


class CharTokenizer:
  """Maps each character of a fixed alphabet to an id ``0 .. C-1`` (sorted by code point) and back; with ``eot`` the
  id ``C`` is an end-of-text token (decoded as nothing)."""

  def __init__(self, chars: str | list[str], eot: bool = False):
    self.chars = sorted(set(chars))
    if not self.chars:
      raise ValueError("a character tokenizer needs a non-empty alphabet")
    self.eot = bool(eot)
    self._ids = {c: i for i, c in enumerate(self.chars)}
    self._table = None  # code point -> id (-1: not in the alphabet), built on the first encode

  @classmethod
  def from_text(cls, text: str, eot: bool = False) -> "CharTokenizer":
    return cls(set(text), eot=eot)

  @property
  def vocab_size(self) -> int:
    return len(self.chars) + self.eot

  @property
  def eos_id(self) -> int | None:
    return len(self.chars) if self.eot else None

  def encode(self, text: str) -> np.ndarray:
    """``int32[len(text)]``: a table lookup over the text's code points (no Python loop per character)."""
    if self._table is None:
      codes = np.fromiter((ord(c) for c in self.chars), np.int64, len(self.chars))
      self._table = np.full(int(codes.max()) + 1, -1, np.int32)
      self._table[codes] = np.arange(len(self.chars), dtype=np.int32)
    points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    inside = points < self._table.size
    ids = np.where(inside, self._table[np.where(inside, points, 0)], -1)
    if (ids < 0).any():
      unknown = sorted(set(text) - self._ids.keys())
      raise ValueError(f"characters not in the tokenizer's alphabet: {unknown[:10]!r}")
    return ids.astype(np.int32, copy=False)

  def decode(self, ids) -> str:
    n = len(self.chars)
    return "".join(self.chars[i] for i in map(int, np.asarray(ids).reshape(-1)) if i < n)

  def save(self, path: str | os.PathLike) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    data = {"type": "char", "chars": self.chars}
    if self.eot:
      data["eot"] = EOT
    with open(tmp, "w") as f:
      json.dump(data, f)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "CharTokenizer":
    with open(path) as f:
      data = json.load(f)
    if data.get("type") != "char":
      raise ValueError(f"{path} is not a character tokenizer")
    return cls(data["chars"], eot=bool(data.get("eot")))


def train_byte_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
  """A GPT-2-style byte-level BPE of ``vocab_size`` tokens (256 bytes + ``<|endoftext|>`` = id 0 + merges) trained
  on an iterable of strings; ``decode(encode(text)) == text`` for any text."""
  from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
  from tfjax.data.wordpiece import Tokenizer
  if vocab_size < 257:
    raise ValueError(f"a byte-level BPE needs vocab_size >= 257 (256 bytes + {EOT}), got {vocab_size}")
  tok = HFTok(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  assert tok.token_to_id(EOT) == 0
  return Tokenizer(tok, eos_token=EOT)


def load_tokenizer(path: str | os.PathLike, eos_id: int | None = None):
  """A ``tokenizer.json`` saved by tfjax: a :class:`CharTokenizer` (``{"type": "char", ...}``) or any Hugging Face
  ``tokenizers`` file (as a :class:`tfjax.data.wordpiece.Tokenizer`, whose end-of-text token is the one of id
  ``eos_id`` when given, else ``<|endoftext|>`` / ``[EOS]`` / ``</s>`` if the vocabulary has one)."""
  with open(path) as f:
    data = json.load(f)
  if data.get("type") == "char":
    return CharTokenizer.load(path)
  from tfjax.data.wordpiece import Tokenizer
  tok = Tokenizer.from_file(path)
  if eos_id is not None:
    eos = tok.id_to_token(eos_id)
  else:
    eos = next((t for t in (EOT, "[EOS]", "</s>") if tok.token_to_id(t) is not None), None)
  tok.eos_token = eos
  return tok

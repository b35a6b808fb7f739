"""Tokenizers: text to token ids and back.

- :class:`CharTokenizer`: one token per distinct character of the training text (as in char-rnn / nanoGPT), ids
  ``0 .. C-1`` sorted by code point; with ``eot=True`` one more id ``C`` is the end-of-text token that separates
  documents in token shards.
- :class:`Tokenizer`: a thin wrapper over a Hugging Face ``tokenizers.Tokenizer`` (any model: BERT's WordPiece, the
  byte-level BPE of GPT-2, a SentencePiece-style BPE) with the few methods tfjax uses: ``encode(text) -> list[int]``,
  ``decode(ids) -> str``, ``token_to_id``, ``vocab_size``, ``eos_id``; saved and loaded as one ``tokenizer.json``.
- :func:`train_wordpiece`: a BERT-style uncased WordPiece vocabulary (normaliser: NFD, lowercase, strip accents;
  pre-tokeniser: split on whitespace and punctuation; post-processor: ``[CLS] A [SEP]``). The special tokens get the
  first ids: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``.
- :func:`train_bpe`: a lossless SentencePiece-style BPE (a space becomes ``▁`` and belongs to the next word, so
  ``decode(encode(text)) == text`` for text made of characters seen in training; others become ``[UNK]``; case and
  accents kept), e.g. the joint source/target vocabulary of a translator. Special tokens ``[PAD]=0, [UNK]=1,
  [BOS]=2, [EOS]=3``; ``encode`` adds none of them. ``style="subword_nmt"`` marks word ends instead (``</w>``), as
  subword-nmt and fairseq's recipes segment: words are split on whitespace and decoded with single spaces between.
- :func:`train_byte_bpe`: a GPT-2-style byte-level BPE (every byte representable, so nothing is ever unknown)
  trained from an iterator of strings (never the whole corpus at once); ``<|endoftext|>`` is id 0.
- :func:`load_tokenizer`: a saved ``tokenizer.json`` of either kind.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

EOT = "<|endoftext|>"
PAD, UNK, CLS, SEP, MASK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"
BERT_SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
SEQ2SEQ_SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
SUBWORD_NMT_SUFFIX = "</w>"  # subword-nmt's end-of-word mark


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


class Tokenizer:
  """A thin wrapper over ``tokenizers.Tokenizer`` (see the module docstring)."""

  def __init__(self, tokenizer, eos_token: str | None = None):
    self.tokenizer = tokenizer
    self.eos_token = eos_token

  @classmethod
  def from_file(cls, path: str | os.PathLike, eos_token: str | None = None) -> "Tokenizer":
    import tokenizers
    return cls(tokenizers.Tokenizer.from_file(os.fspath(path)), eos_token)

  def save(self, path: str | os.PathLike) -> None:
    """Writes ``tokenizer.json`` atomically (a temporary file, then a rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    self.tokenizer.save(tmp)
    os.replace(tmp, path)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self.tokenizer.id_to_token(int(i))

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` (with the post-processor's special tokens, e.g. BERT's [CLS]/[SEP], by default)."""
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  @property
  def eos_id(self) -> int | None:
    return None if self.eos_token is None else self.token_to_id(self.eos_token)

  def special_ids(self) -> list[int]:
    """Ids of the added special tokens (never chosen for masking)."""
    return sorted(i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special)


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2,
                    lowercase: bool = True) -> Tokenizer:
  """Trains a BERT-style WordPiece tokenizer on an iterable of strings (e.g. lines); see the module docstring."""
  from tokenizers import Tokenizer as HFTok, decoders, models, normalizers, pre_tokenizers, processors, trainers
  tok = HFTok(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
  tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                              lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  tok.post_processor = processors.TemplateProcessing(
      single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
      special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))])
  for i, t in enumerate(BERT_SPECIAL_TOKENS):
    assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
  return Tokenizer(tok)


BPE_STYLES = ("sentencepiece", "subword_nmt")


def train_bpe(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
              style: str = "sentencepiece") -> Tokenizer:
  """Trains a BPE tokenizer of ``vocab_size`` tokens (specials and characters included) on an iterable of strings.

  ``style="sentencepiece"`` marks the start of a word (``▁``, lossless); ``"subword_nmt"`` marks its end (``</w>``,
  subword-nmt's ``learn_bpe``/``apply_bpe`` segmentation, fairseq's usual preprocessing), splitting on whitespace, so
  decoding joins words with single spaces. See the module docstring."""
  from tokenizers import Tokenizer as HFTok, decoders, models, normalizers, pre_tokenizers, trainers
  if style not in BPE_STYLES:
    raise ValueError(f"BPE style must be one of {BPE_STYLES}, got {style!r}")
  suffix = {"end_of_word_suffix": SUBWORD_NMT_SUFFIX} if style == "subword_nmt" else {}
  tok = HFTok(models.BPE(unk_token=UNK, **suffix))
  tok.normalizer = normalizers.NFC()
  if style == "subword_nmt":
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.BPEDecoder(suffix=SUBWORD_NMT_SUFFIX)
  else:
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                special_tokens=list(SEQ2SEQ_SPECIAL_TOKENS), **suffix)
  tok.train_from_iterator(texts, trainer=trainer)
  for i, t in enumerate(SEQ2SEQ_SPECIAL_TOKENS):
    assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
  return Tokenizer(tok, eos_token=EOS)


def load_or_train_wordpiece(path: str | os.PathLike, texts_fn, vocab_size: int = 8192,
                            min_frequency: int = 2, lowercase: bool = True) -> Tokenizer:
  """Loads ``path`` (a tokenizer.json) if it exists, else trains on ``texts_fn()`` and saves it there atomically."""
  path = os.fspath(path)
  if os.path.exists(path):
    return Tokenizer.from_file(path)
  tok = train_wordpiece(texts_fn(), vocab_size, min_frequency, lowercase)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tok.save(path)
  return tok


def train_byte_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
  """A GPT-2-style byte-level BPE of ``vocab_size`` tokens (256 bytes + ``<|endoftext|>`` = id 0 + merges) trained
  on an iterable of strings; ``decode(encode(text)) == text`` for any text."""
  from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
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
  ``tokenizers`` file (as a :class:`Tokenizer`, whose end-of-text token is the one of id
  ``eos_id`` when given, else ``<|endoftext|>`` / ``[EOS]`` / ``</s>`` if the vocabulary has one)."""
  with open(path) as f:
    data = json.load(f)
  if data.get("type") == "char":
    return CharTokenizer.load(path)
  tok = Tokenizer.from_file(path)
  if eos_id is not None:
    eos = tok.id_to_token(eos_id)
  else:
    eos = next((t for t in (EOT, "[EOS]", "</s>") if tok.token_to_id(t) is not None), None)
  tok.eos_token = eos
  return tok

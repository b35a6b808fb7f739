"""Subword tokenizers through Hugging Face ``tokenizers``: BERT's WordPiece and SentencePiece-style BPE (both trained
here), and loading saved ones.

:func:`train_wordpiece` trains a BERT-style uncased WordPiece vocabulary on text (normaliser: NFD, lowercase, strip
accents; pre-tokeniser: split on whitespace and punctuation; post-processor: ``[CLS] A [SEP]``). The special tokens
get the first ids: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``.

:class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` (any model: WordPiece, byte-level BPE of GPT-2, ...) with the few
methods tfjax uses: ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``token_to_id``, ``vocab_size``; it is
saved and loaded as a single ``tokenizer.json``.

:func:`train_bpe` trains a lossless byte-pair-encoding vocabulary (SentencePiece's scheme: a space becomes ``▁`` and
belongs to the next word, so ``decode(encode(text)) == text`` for text made of characters seen in training (others
become ``[UNK]``); case and accents kept), for generating text in any
language, e.g. the joint source/target vocabulary of a translator. Special tokens ``[PAD]=0, [UNK]=1, [BOS]=2,
[EOS]=3``; ``encode`` adds none of them.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

PAD, UNK, CLS, SEP, MASK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"
BERT_SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
SEQ2SEQ_SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


def clean_wikitext(text: str) -> str:
  """Undoes WikiText's tokenisation artefacts (``a @-@ b`` -> ``a-b``, ``1 @,@ 000`` -> ``1,000``, ``@.@``) and
  maps its unknown-word marker ``<unk>`` to BERT's ``[UNK]`` (a special token: never split, never masked)."""
  text = re.sub(r" @([-,.])@ ", r"\1", text)
  return text.replace("<unk>", UNK)


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


def train_bpe(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
  """Trains a SentencePiece-style BPE tokenizer on an iterable of strings; see the module docstring."""
  from tokenizers import Tokenizer as HFTok, decoders, models, normalizers, pre_tokenizers, trainers
  tok = HFTok(models.BPE(unk_token=UNK))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                special_tokens=list(SEQ2SEQ_SPECIAL_TOKENS))
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

"""Prepare once, train many times: a corpus of any size streamed through a tokenizer into token shards.

:func:`prepare` ``(sources, tokenizer_spec, out_dir, ...)`` writes the directory described in
:mod:`tfjax.data.shards` (``meta.json``, ``tokenizer.json``, ``train_*.bin``, ``val_*.bin``).

Sources: plain text (``.txt`` or any other name), gzip text (``.gz``), JSON lines (``.jsonl`` / ``.jsonl.gz``: one
object per line, its ``text_field`` is a document); several files or globs, read in the order given (each glob
sorted). A document is a whole text file or one JSONL record; each is followed by the end-of-text id.

Tokenizer spec: ``char`` (the corpus's characters plus an end-of-text id), ``bpe:V`` (a GPT-2-style byte-level BPE
of V tokens trained on the training split with Hugging Face ``tokenizers``, from an iterator), or a directory with a
Hugging Face tokenizer (``tokenizer.json`` or GPT-2's ``vocab.json`` + ``merges.txt``), e.g. GPT-2's own.

Validation split: the last ``val_fraction`` of every source, by bytes, cut at a document boundary (JSONL: the
records that start past the mark) or, inside a text file, at the first place past the mark where a piece may be cut
(below); the two parts of a text file are two documents. Train and validation are thus disjoint byte ranges
of each source and never overlap, and every source is represented in both (the validation text is the end of each
source, as the usual 90/10 split of Tiny Shakespeare).

Memory is bounded by construction: text is read in 1 MB blocks and cut into pieces of about ``piece_bytes``
characters, only where GPT-2's byte-level pre-tokeniser never joins across the cut (after a newline, or before a
space between two words: :func:`_can_cut`), so a piece-wise encoding equals the whole document's (a tokenizer that
marks the start of its input, e.g. SentencePiece's ``▁`` prefix, would differ at each cut; a text without whitespace
for 64 pieces is cut anyway); batches of pieces go through a queue of a few batches, and ids are appended to shard
files as they come. A JSONL record is held whole while it is parsed. Encoding uses all cores (``tokenizers``'
``encode_batch_fast`` runs in Rust threads while a reader thread decodes the next batch; ``char`` is a vectorised
table lookup).

Idempotent: the output is a pure function of the inputs (files, sizes and modification times, the tokenizer spec,
the options); a rerun with the same inputs finds ``meta.json`` with the same fingerprint and stops at once, and a
forced rerun writes the same bytes. Work happens in ``OUT/.partial``; ``meta.json`` is written last.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import pathlib
import queue
import re
import shutil
import sys
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from tfjax.data import shards
from tfjax.data.tokenizers import EOT, CharTokenizer, load_tokenizer, train_byte_bpe

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16: nanoGPT's OpenWebText train.bin is 9B tokens in one file
PIECE_BYTES = 1 << 15
BATCH_BYTES = 1 << 20  # 32 pieces: work for 32 encoding threads; 4 MB batches: same speed here, twice the memory


class PrepareError(ValueError):
  """Bad sources, tokenizer spec or output directory (the message says which and what to do)."""


@dataclasses.dataclass(frozen=True)
class Source:
  path: str
  kind: str  # text | jsonl
  compressed: bool
  size: int  # uncompressed bytes


@dataclasses.dataclass
class Piece:
  """A slice of a document's text: ``last`` when it ends the document."""
  split: str
  text: str
  nbytes: int
  last: bool


def expand_sources(patterns: list[str]) -> list[str]:
  """Paths of the sources: each pattern as a file, or a glob expanded in sorted order; duplicates once."""
  out: list[str] = []
  for pat in patterns:
    hits = [pat] if os.path.isfile(pat) else sorted(p for p in glob.glob(os.path.expanduser(pat), recursive=True)
                                                    if os.path.isfile(p))
    if not hits:
      raise PrepareError(f"source {pat!r} matches no file")
    out += [os.path.abspath(p) for p in hits if os.path.abspath(p) not in out]
  return out


def _open_binary(path: str, compressed: bool):
  return gzip.open(path, "rb") if compressed else open(path, "rb")


def describe_source(path: str) -> Source:
  name = path.lower()
  compressed = name.endswith(".gz")
  base = name[:-3] if compressed else name
  kind = "jsonl" if base.endswith(".jsonl") or base.endswith(".json") else "text"
  if compressed:  # the uncompressed size: needed for the validation mark and the progress; one streaming pass
    size = 0
    try:
      with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
          size += len(chunk)
    except (OSError, EOFError) as e:
      raise PrepareError(f"{path}: not a readable gzip file ({e})") from None
  else:
    size = os.path.getsize(path)
  return Source(path, kind, compressed, size)


_WORD_CUT = re.compile(r"(?<=\S) (?=\S)")  # before a space between two non-spaces: "word| next"


def _can_cut(before: str, after: str) -> bool:
  """Whether text may be cut between ``before`` (its end) and ``after`` (its start) without changing its tokens.

  GPT-2's pre-tokeniser (``'s|'t|...| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``) splits off
  whitespace runs: at the end of a piece a run is one token, in the whole text its last character joins what follows
  when that is a non-space. A cut is therefore safe (1) after a newline when the next line starts with one space and a
  non-space (the space starts the next word's token either way), or with a non-space and the run before the cut is
  that newline alone, or (2) before a space that sits between two non-spaces (``word| next``: a token ends there and
  the next one starts with the space, in the whole text and in the pieces).
  """
  if not before or not after:
    return False
  if before[-1] == "\n":
    if after[0] == " ":
      return len(after) > 1 and not after[1].isspace()
    return not after[0].isspace() and (len(before) < 2 or not before[-2].isspace())
  return after[0] == " " and not before[-1].isspace() and len(after) > 1 and not after[1].isspace()


def _find_cut(text: str, start: int, window: int) -> int | None:
  """The first safe cut (:func:`_can_cut`) after a newline in ``text[start : start + window]``, else the first before
  a space between words at or after ``start``; None when there is none (the text has no whitespace there). A cut
  leaves at least 2 characters after it."""
  end = min(start + window, len(text) - 2)
  i = start - 2  # a newline at start - 1 makes a cut at start
  while True:
    i = text.find("\n", i + 1, end)
    if i < 0:
      break
    if _can_cut(text[max(i - 7, 0):i + 1], text[i + 1:i + 3]):
      return i + 1
  m = _WORD_CUT.search(text, start, len(text) - 1)
  return m.start() if m else None


def _split_text(text: str, piece_bytes: int, force_after: int | None = None) -> Iterator[str]:
  """``text`` in pieces of about ``piece_bytes`` characters at safe cuts (:func:`_find_cut`); a text with no safe cut
  in ``force_after`` characters (default ``64 * piece_bytes``) is cut there anyway (its tokens may then differ at
  the cut)."""
  force_after = force_after or 64 * piece_bytes
  start = 0
  while len(text) - start > 2 * piece_bytes:
    cut = _find_cut(text, start + piece_bytes, piece_bytes)
    if cut is None or cut - start > force_after:
      cut = start + force_after if len(text) - start > force_after else len(text)
    yield text[start:cut]
    start = cut
  if start < len(text):
    yield text[start:]


def _text_pieces(f, path: str, piece_bytes: int, decode_errors: str,
                 progress: Callable[[int], None] | None) -> Iterator[str]:
  """The text of a binary file in pieces of about ``piece_bytes`` characters at safe cuts, read in 1 MB blocks (a
  file of one endless line included); the pieces concatenated are the file's text."""
  decoder = codecs.getincrementaldecoder("utf-8")(errors=decode_errors)
  buf, nread = "", 0
  while True:
    block = f.read(1 << 20)
    try:
      buf += decoder.decode(block, final=not block)
    except UnicodeDecodeError as e:
      raise PrepareError(f"{path}: not UTF-8 at byte {nread + e.start} ({e.reason}): convert the file to UTF-8, or "
                         "pass --decode_errors=replace to read such bytes as U+FFFD") from None
    nread += len(block)
    if progress:
      progress(len(block))
    if not block:
      yield from _split_text(buf, piece_bytes)
      return
    start = 0
    while len(buf) - start > 2 * piece_bytes:
      cut = _find_cut(buf, start + piece_bytes, piece_bytes)
      if cut is None:
        if len(buf) - start <= 64 * piece_bytes:
          break  # read on: the next block may hold a cut
        cut = start + 64 * piece_bytes
      yield buf[start:cut]
      start = cut
    buf = buf[start:]


def _with_last(pieces: Iterator[Piece]) -> Iterator[Piece]:
  """``pieces`` with the final one marked as the end of its document."""
  prev = None
  for p in pieces:
    if prev is not None:
      yield prev
    prev = p
  if prev is not None:
    prev.last = True
    yield prev


def _split_at_mark(pieces: Iterator[str], mark: int) -> Iterator[Piece]:
  """Text pieces as training pieces up to the first safe cut at or after byte ``mark``, validation pieces after it;
  the piece before the switch ends its (training) document."""
  split, pos = "train", 0
  for text in pieces:
    nbytes = len(text.encode("utf-8"))
    if split == "train" and pos + nbytes >= mark:
      cut = _find_cut(text, max(mark - pos, 1), len(text))  # chars >= bytes past pos: at or after the mark
      head, text = (text[:cut], text[cut:]) if cut is not None else (text, "")
      head_bytes = len(head.encode("utf-8"))
      yield Piece("train", head, head_bytes, last=True)
      pos, nbytes, split = pos + head_bytes, nbytes - head_bytes, "val"
      if not text:
        continue
    yield Piece(split, text, nbytes, last=False)
    pos += nbytes


def read_pieces(src: Source, val_fraction: float, text_field: str = "text",
                piece_bytes: int = PIECE_BYTES, progress: Callable[[int], None] | None = None,
                decode_errors: str = "strict") -> Iterator[Piece]:
  """The documents of one source, split into train / val (see the module docstring), as :class:`Piece` s.
  ``decode_errors``: what to do with bytes that are not UTF-8 in a text source (``strict``: an error naming the file
  and offset; ``replace``: U+FFFD)."""
  mark = src.size - int(src.size * val_fraction) if val_fraction > 0 else src.size + 1
  pos = 0
  with _open_binary(src.path, src.compressed) as f:
    if src.kind == "text":
      yield from _with_last(_split_at_mark(_text_pieces(f, src.path, piece_bytes, decode_errors, progress), mark))
    else:
      for lineno, line in enumerate(f, 1):
        start = pos
        pos += len(line)
        if progress:
          progress(len(line))
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise PrepareError(f"{src.path}:{lineno}: not a JSON object ({e})") from None
        if not isinstance(record, dict) or text_field not in record:
          raise PrepareError(f"{src.path}:{lineno}: no field {text_field!r} (set --text_field to the field that "
                             "holds the text)")
        text = record[text_field]
        if not isinstance(text, str):
          raise PrepareError(f"{src.path}:{lineno}: field {text_field!r} is not a string")
        if not text:
          continue
        split = "val" if start >= mark else "train"
        parts = list(_split_text(text, piece_bytes))
        for i, part in enumerate(parts):
          yield Piece(split, part, len(part.encode("utf-8")), i == len(parts) - 1)


def iter_pieces(sources: list[Source], val_fraction: float, text_field: str, piece_bytes: int = PIECE_BYTES,
                progress: Callable[[int], None] | None = None, decode_errors: str = "strict") -> Iterator[Piece]:
  for src in sources:
    yield from read_pieces(src, val_fraction, text_field, piece_bytes, progress, decode_errors)


class Progress:
  """Prints bytes read, tokens, tokens/s and the ETA (by bytes) at most every ``every`` seconds."""

  def __init__(self, total_bytes: int, what: str, every: float = 2.0, stream=sys.stderr):
    self.total, self.what, self.every, self.stream = max(total_bytes, 1), what, every, stream
    self.bytes = self.tokens = 0
    self.start = self.last = time.perf_counter()

  def add_bytes(self, n: int) -> None:
    self.bytes += n

  def add_tokens(self, n: int) -> None:
    self.tokens += n
    now = time.perf_counter()
    if now - self.last >= self.every:
      self.last = now
      self.report()

  def report(self, final: bool = False) -> None:
    el = time.perf_counter() - self.start
    frac = min(self.bytes / self.total, 1.0)
    eta = el * (1 - frac) / frac if frac > 0 else float("nan")
    msg = (f"[prepare] {self.what}: {self.bytes / 1e6:,.1f} / {self.total / 1e6:,.1f} MB ({100 * frac:.0f}%)")
    if self.tokens:
      msg += f", {self.tokens:,} tokens, {self.tokens / max(el, 1e-9):,.0f} tokens/s"
    msg += f", {el:.1f} s" if final else f", ETA {eta:.0f} s"
    print(msg, file=self.stream, flush=True)


def _batches(pieces: Iterator[Piece], batch_bytes: int) -> Iterator[list[Piece]]:
  batch, n = [], 0
  for p in pieces:
    batch.append(p)
    n += p.nbytes
    if n >= batch_bytes:
      yield batch
      batch, n = [], 0
  if batch:
    yield batch


def _prefetched(it: Iterator, depth: int = 3) -> Iterator:
  """``it`` run in a background thread, at most ``depth`` items ahead (bounded memory); errors re-raised here."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for item in it:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  t = threading.Thread(target=work, daemon=True)
  t.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def make_tokenizer(spec: str, sources: list[Source], val_fraction: float, text_field: str,
                   decode_errors: str = "strict"):
  """The tokenizer a spec names (see the module docstring); ``char`` and ``bpe:V`` read the corpus once for it."""
  if spec == "char":
    chars: set[str] = set()
    prog = Progress(sum(s.size for s in sources), "alphabet")
    for piece in iter_pieces(sources, 0.0, text_field, progress=prog.add_bytes,
                             decode_errors=decode_errors):
      chars.update(piece.text)
    if not chars:
      raise PrepareError("the sources hold no text")
    return CharTokenizer(chars, eot=True)
  if spec.startswith("bpe:"):
    try:
      vocab_size = int(spec[4:])
    except ValueError:
      raise PrepareError(f"--tokenizer={spec}: want bpe:VOCAB_SIZE, e.g. bpe:8192") from None
    if vocab_size < 257:
      raise PrepareError(f"--tokenizer={spec}: a byte-level BPE needs at least 257 tokens")
    prog = Progress(sum(s.size for s in sources), f"training a byte-level BPE of {vocab_size} tokens")
    texts = (p.text for p in iter_pieces(sources, val_fraction, text_field, progress=prog.add_bytes,
                                                 decode_errors=decode_errors)
             if p.split == "train")
    tok = train_byte_bpe(texts, vocab_size)
    prog.report(final=True)
    return tok
  path = pathlib.Path(spec).expanduser()
  if path.is_dir():
    from tfjax import hf
    try:  # a tfjax workdir or shards directory keeps its tokenizer (character-level ones too) in tokenizer.json
      tok = load_tokenizer(path / "tokenizer.json") if _is_char_tokenizer(path / "tokenizer.json") else (
          hf.load_tokenizer(path))
    except hf.HFCheckpointError as e:
      raise PrepareError(f"--tokenizer={spec}: {e}") from None
    if tok.eos_id is None:
      raise PrepareError(f"--tokenizer={spec}: the tokenizer has no end-of-text token (<|endoftext|>, [EOS] or </s>) "
                         "to separate documents")
    return tok
  if path.is_file() and path.suffix == ".json":
    tok = load_tokenizer(path)
    if tok.eos_id is None:
      raise PrepareError(f"--tokenizer={spec}: the tokenizer has no end-of-text token to separate documents")
    return tok
  raise PrepareError(f"--tokenizer={spec!r}: want 'char', 'bpe:VOCAB_SIZE', or a directory with a Hugging Face "
                     "tokenizer (tokenizer.json, or vocab.json + merges.txt)")


def _is_char_tokenizer(path: pathlib.Path) -> bool:
  """Whether ``path`` is the ``tokenizer.json`` of a tfjax character tokenizer (``{"type": "char", ...}``)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f).get("type") == "char"
  except (OSError, ValueError, AttributeError):
    return False


def _encoder(tok) -> Callable[[list[str]], list[np.ndarray]]:
  if isinstance(tok, CharTokenizer):
    return lambda texts: [tok.encode(t) for t in texts]
  hf_tok = tok.tokenizer
  fast = getattr(hf_tok, "encode_batch_fast", hf_tok.encode_batch)
  return lambda texts: [np.asarray(e.ids, np.int64) for e in fast(texts, add_special_tokens=False)]


def _tokenizer_fingerprint(spec: str) -> str:
  """The spec, with the content hashes of a tokenizer directory's (or file's) tokenizer files."""
  path = pathlib.Path(spec).expanduser()
  if not path.exists():
    return spec
  names = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
  files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name in names and p.is_file())
  return spec + ":" + ",".join(f"{p.name}={shards.sha256_of(p)[:16]}" for p in files)


def fingerprint(paths: list[str], tokenizer_spec: str, val_fraction: float, shard_tokens: int,
                text_field: str, decode_errors: str = "strict", piece_bytes: int = PIECE_BYTES) -> str:
  """What the output is a function of: the source files (path, size, mtime), the tokenizer and the options."""
  inputs = {"version": shards.VERSION, "tokenizer": _tokenizer_fingerprint(tokenizer_spec),
            "val_fraction": val_fraction, "shard_tokens": shard_tokens, "text_field": text_field,
            "decode_errors": decode_errors, "piece_bytes": piece_bytes, "cut_rule": 3,
            "sources": [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]}
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _finished(out: pathlib.Path, fp: str) -> dict | None:
  try:
    meta = shards.read_meta(out)
  except shards.ShardError:
    return None
  if meta.get("prepare", {}).get("fingerprint") != fp:
    return None
  try:
    for split in meta["splits"]:
      shards.TokenShards(out, split)
  except shards.ShardError:
    return None
  return meta


def _check_options(val_fraction: float, decode_errors: str, shard_tokens: int) -> None:
  if not 0.0 <= val_fraction < 1.0:
    raise PrepareError(f"--val_fraction must be in [0, 1), got {val_fraction}")
  if decode_errors not in ("strict", "replace"):
    raise PrepareError(f"--decode_errors must be strict or replace, got {decode_errors!r}")
  if shard_tokens <= 0:
    raise PrepareError(f"--shard_tokens must be positive, got {shard_tokens}")


def _check_out_dir(out: pathlib.Path, force: bool) -> None:
  """``out`` may be new, empty, unfinished, or (with ``force``) another set of shards: never anything else."""
  if out.exists() and not out.is_dir():
    raise PrepareError(f"--out={out} is a file, not a directory; choose an empty or new --out")
  if (out / shards.META_FILE).is_file() and not force:
    raise PrepareError(f"{out} holds shards prepared from other sources, tokenizer or options; choose another --out "
                       "or pass --force to replace them")
  if out.is_dir() and not (out / shards.META_FILE).is_file() and any(
      p.name != ".partial" for p in out.iterdir()):
    raise PrepareError(f"{out} exists and is not a shards directory; choose an empty or new --out")


def _tokenise(srcs: list[Source], tok, partial: pathlib.Path, dtype: str, *, val_fraction: float,
              shard_tokens: int, text_field: str, decode_errors: str, piece_bytes: int, batch_bytes: int,
              total_bytes: int) -> dict[str, dict[str, Any]]:
  """Streams the sources' pieces through ``tok`` into the shards of each split in ``partial``, the end-of-text id
  after each document; returns the splits' ``meta.json`` entries."""
  writers = {s: shards.ShardWriter(partial, s, dtype, shard_tokens) for s in shards.SPLITS}
  docs = {s: 0 for s in shards.SPLITS}
  nbytes = {s: 0 for s in shards.SPLITS}
  encode = _encoder(tok)
  prog = Progress(total_bytes, "tokenising")
  eot = np.asarray([tok.eos_id], np.int64)
  batches = _prefetched(_batches(iter_pieces(srcs, val_fraction, text_field, piece_bytes, prog.add_bytes,
                                                  decode_errors), batch_bytes))
  for batch in batches:
    for piece, ids in zip(batch, encode([p.text for p in batch])):
      w = writers[piece.split]
      w.write(ids)
      nbytes[piece.split] += piece.nbytes
      if piece.last:
        w.write(eot)
        docs[piece.split] += 1
      prog.add_tokens(ids.size + piece.last)
  prog.report(final=True)
  return {s: {"tokens": w.tokens, "documents": docs[s], "bytes": nbytes[s], "shards": w.close()}
          for s, w in writers.items()}


def _commit(out: pathlib.Path, partial: pathlib.Path, meta: dict[str, Any]) -> None:
  """Moves the finished files from ``partial`` into ``out``: the old ``meta.json`` goes first (the directory reads as
  unfinished from then on), then the old files, then the new files, and the new ``meta.json`` last."""
  (out / shards.META_FILE).unlink(missing_ok=True)
  for old in list(out.glob("*.bin")) + [out / shards.TOKENIZER_FILE]:
    old.unlink(missing_ok=True)
  for f in partial.iterdir():
    os.replace(f, out / f.name)
  partial.rmdir()
  tmp = out / (shards.META_FILE + ".tmp")
  tmp.write_text(json.dumps(meta, indent=1) + "\n")
  os.replace(tmp, out / shards.META_FILE)


def prepare(sources: list[str], tokenizer_spec: str, out_dir: str | os.PathLike, *, val_fraction: float = 0.005,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, text_field: str = "text", decode_errors: str = "strict",
            force: bool = False, piece_bytes: int = PIECE_BYTES, batch_bytes: int = BATCH_BYTES,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Tokenises ``sources`` into a shards directory ``out_dir`` and returns its ``meta.json`` (see the module
  docstring). Returns the existing meta at once when ``out_dir`` already holds these inputs' shards (unless
  ``force``)."""
  log = log or (lambda m: print(m, file=sys.stderr, flush=True))
  _check_options(val_fraction, decode_errors, shard_tokens)
  paths = expand_sources(list(sources))
  out = pathlib.Path(out_dir).expanduser().absolute()
  fp = fingerprint(paths, tokenizer_spec, val_fraction, shard_tokens, text_field, decode_errors, piece_bytes)
  if not force and (meta := _finished(out, fp)):
    log(f"[prepare] {out} already holds these shards (same sources, tokenizer and options): nothing to do "
        "(--force redoes it)")
    return meta
  _check_out_dir(out, force)

  t0 = time.perf_counter()
  srcs = [describe_source(p) for p in paths]
  total = sum(s.size for s in srcs)
  log(f"[prepare] {len(srcs)} sources, {total / 1e6:,.1f} MB of text -> {out} (tokenizer {tokenizer_spec})")
  tok = make_tokenizer(tokenizer_spec, srcs, val_fraction, text_field, decode_errors)
  vocab_size, eot_id = tok.vocab_size, tok.eos_id
  dtype = shards.dtype_for_vocab(vocab_size)
  partial = out / ".partial"
  if partial.exists():
    shutil.rmtree(partial)
  partial.mkdir(parents=True)
  splits = _tokenise(srcs, tok, partial, dtype, val_fraction=val_fraction, shard_tokens=shard_tokens,
                     text_field=text_field, decode_errors=decode_errors, piece_bytes=piece_bytes,
                     batch_bytes=batch_bytes, total_bytes=total)
  tok.save(partial / shards.TOKENIZER_FILE)
  meta = {"format": shards.FORMAT, "version": shards.VERSION,
          "tokenizer": {"spec": tokenizer_spec, "file": shards.TOKENIZER_FILE,
                        "type": "char" if isinstance(tok, CharTokenizer) else "hf",
                        "eot_token": EOT if isinstance(tok, CharTokenizer) else tok.eos_token},
          "vocab_size": int(vocab_size), "eot_id": int(eot_id), "dtype": dtype, "splits": splits,
          "prepare": {"fingerprint": fp, "sources": [dataclasses.asdict(s) for s in srcs],
                      "val_fraction": val_fraction, "shard_tokens": shard_tokens, "text_field": text_field,
                      "decode_errors": decode_errors,
                      "validation": "the last val_fraction of each source by bytes, cut at a line (text) or record "
                                    "(JSONL) boundary"}}
  _commit(out, partial, meta)
  el = time.perf_counter() - t0
  n = sum(v["tokens"] for v in splits.values())
  log(f"[prepare] wrote {splits['train']['tokens']:,} train + {splits['val']['tokens']:,} val tokens "
      f"({dtype}, vocab {vocab_size}) to {out} in {el:.1f} s ({n / max(el, 1e-9):,.0f} tokens/s overall)")
  return meta

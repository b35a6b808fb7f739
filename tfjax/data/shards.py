"""Token shards: a tokenised corpus on disk as flat binary files of token ids, read through ``np.memmap``.

Written by ``./launch.sh prepare`` (:func:`tfjax.data.prepare.prepare`), read by the LM task and evaluation.

Layout of a shards directory ``DIR``::

    DIR/meta.json              what is below, written last (its presence marks a finished directory)
    DIR/tokenizer.json         the tokenizer the ids come from (see tfjax.data.tokenizers.load_tokenizer)
    DIR/train_00000.bin ...    training split: token ids, little-endian uint16 (uint32 when vocab_size > 65535)
    DIR/val_00000.bin ...      validation split, same dtype

Each split is ONE token sequence: its shards concatenated in order (``train_00000.bin`` then ``train_00001.bin``
...); a shard is only a unit of storage of at most ``shard_tokens`` ids. Every document is followed by the
end-of-text id ``eot_id``, so documents are separated in the sequence (GPT-2's ``<|endoftext|>`` convention).

``meta.json``::

    {"format": "tfjax-token-shards", "version": 1,
     "tokenizer": {"spec": "bpe:8192", "file": "tokenizer.json", "type": "char" | "hf"},
     "vocab_size": 8192, "eot_id": 0, "dtype": "uint16",
     "splits": {"train": {"tokens": N, "documents": D, "bytes": B,        # B: UTF-8 bytes of the split's text
                          "shards": [{"file": "train_00000.bin", "tokens": n, "sha256": "..."}, ...]},
                "val": {...}},
     "prepare": {...}}                                                     # the inputs and options that made it

Reader: :class:`TokenShards` ``(dir, split)`` is a read-only view of one split as a 1-D sequence of ``len(s)`` ids:
``s.read(start, n) -> int32[n]`` and ``s.windows(offsets_B, L) -> int32[B, L]`` (window ``b`` is the ids
``offsets[b] .. offsets[b] + L - 1`` of the split, gathered across shard boundaries when it straddles one, so
windows start anywhere in ``[0, len(s) - L]``). Only the pages a window touches are read; shards are memory-mapped
lazily (at most :data:`MAX_OPEN_SHARDS` at once). Opening always checks every shard's existence and byte length
against ``meta.json`` (cheap); ``verify=True`` or :meth:`TokenShards.verify` also checks each shard's sha256. A
missing, truncated or corrupt shard is a :class:`ShardError` naming the file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
from typing import Any, Iterator

import numpy as np

from tfjax.data.files import sha256_of

FORMAT = "tfjax-token-shards"
VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
PREFIX = "shards:"
MAX_OPEN_SHARDS = 64
SPLITS = ("train", "val")


class ShardError(ValueError):
  """A shards directory that cannot be read as written (missing, truncated or corrupt file); the message names it."""


def dtype_for_vocab(vocab_size: int) -> str:
  """The narrowest unsigned dtype that holds every id of a ``vocab_size`` vocabulary."""
  return "uint16" if vocab_size <= 2**16 else "uint32"


def _np_dtype(name: str) -> np.dtype:
  if name not in ("uint16", "uint32"):
    raise ShardError(f"meta.json: dtype {name!r} is not uint16 or uint32")
  return np.dtype(name).newbyteorder("<")


def shards_dir(dataset: str) -> pathlib.Path | None:
  """The shards directory a ``data.dataset`` value names (``shards:DIR``, or a directory with ``meta.json``), else
  None. ``shards:DIR`` that is not a finished shards directory is an error."""
  if dataset.startswith(PREFIX):
    path = pathlib.Path(dataset[len(PREFIX):]).expanduser()
    if not (path / META_FILE).is_file():
      raise ShardError(f"data.dataset={dataset!r}: {path / META_FILE} does not exist; make the shards with "
                       f"./launch.sh prepare SOURCES... --tokenizer=SPEC --out={path}")
    return path
  path = pathlib.Path(dataset).expanduser()
  if path.is_dir() and (path / META_FILE).is_file():
    return path
  return None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
  """``DIR/meta.json``, checked for the format and the keys the reader needs."""
  meta_path = pathlib.Path(path) / META_FILE
  if not meta_path.is_file():
    raise ShardError(f"{meta_path} does not exist: {path} is not a finished shards directory (./launch.sh prepare "
                     f"writes meta.json last; rerun it)")
  try:
    meta = json.loads(meta_path.read_text())
  except json.JSONDecodeError as e:
    raise ShardError(f"{meta_path} is not valid JSON ({e}); rerun ./launch.sh prepare") from None
  if meta.get("format") != FORMAT:
    raise ShardError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
  if meta.get("version", 0) > VERSION:
    raise ShardError(f"{meta_path}: version {meta['version']} is newer than this tfjax reads ({VERSION}); "
                     "update tfjax")
  for key in ("vocab_size", "eot_id", "dtype", "splits", "tokenizer"):
    if key not in meta:
      raise ShardError(f"{meta_path} lacks the key {key!r}")
  return meta


class ShardWriter:
  """Appends token ids of one split to ``{split}_{i:05d}.bin`` files of at most ``shard_tokens`` ids each, hashing
  them as they are written. :meth:`close` returns the shard records for ``meta.json``."""

  def __init__(self, out_dir: str | os.PathLike, split: str, dtype: str, shard_tokens: int):
    if shard_tokens <= 0:
      raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    self.out_dir, self.split, self.shard_tokens = pathlib.Path(out_dir), split, int(shard_tokens)
    self.dtype = _np_dtype(dtype)
    self.records: list[dict[str, Any]] = []
    self.tokens = 0
    self._f = None
    self._hash = None
    self._in_shard = 0

  def _open_next(self):
    name = f"{self.split}_{len(self.records):05d}.bin"
    self._f = open(self.out_dir / name, "wb")
    self._hash = hashlib.sha256()
    self.records.append({"file": name, "tokens": 0, "sha256": ""})
    self._in_shard = 0

  def _finish_shard(self):
    self._f.close()
    self.records[-1].update(tokens=self._in_shard, sha256=self._hash.hexdigest())
    self._f = None

  def write(self, ids: np.ndarray) -> None:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
      raise ValueError(f"token ids out of range for {self.dtype.name}: [{ids.min()}, {ids.max()}]")
    ids = ids.astype(self.dtype, copy=False)
    pos = 0
    while pos < ids.size:
      if self._f is None:
        self._open_next()
      take = min(ids.size - pos, self.shard_tokens - self._in_shard)
      data = ids[pos:pos + take].tobytes()
      self._f.write(data)
      self._hash.update(data)
      self._in_shard += take
      self.tokens += take
      pos += take
      if self._in_shard == self.shard_tokens:
        self._finish_shard()

  def close(self) -> list[dict[str, Any]]:
    if self._f is not None:
      self._finish_shard()
    return self.records


class TokenShards:
  """One split of a shards directory as a read-only 1-D sequence of token ids (see the module docstring).

  Attributes: ``path``, ``split``, ``meta``, ``vocab_size``, ``eot_id``, ``dtype``, ``files`` (the shard paths),
  ``starts`` (int64[num_shards + 1]: the offset of each shard in the split, then the total).
  """

  def __init__(self, path: str | os.PathLike, split: str = "train", *, verify: bool = False):
    self.path = pathlib.Path(path)
    self.meta = read_meta(self.path)
    if split not in self.meta["splits"]:
      raise ShardError(f"{self.path / META_FILE} has no split {split!r} (it has {sorted(self.meta['splits'])})")
    self.split = split
    self.vocab_size = int(self.meta["vocab_size"])
    self.eot_id = int(self.meta["eot_id"])
    self.dtype = _np_dtype(self.meta["dtype"])
    records = self.meta["splits"][split]["shards"]
    self.files = [self.path / r["file"] for r in records]
    self._sha256 = [r["sha256"] for r in records]
    counts = np.asarray([int(r["tokens"]) for r in records], np.int64)
    for f, n in zip(self.files, counts):
      if not f.is_file():
        raise ShardError(f"shard {f} is missing (listed in {self.path / META_FILE}); prepare the shards again")
      size, want = f.stat().st_size, int(n) * self.dtype.itemsize
      if size != want:
        raise ShardError(f"shard {f} has {size} bytes but {META_FILE} lists {n} {self.dtype.name} tokens = {want} "
                         "bytes: the file is truncated or corrupt; prepare the shards again")
    self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(self.meta["splits"][split].get("tokens", self.starts[-1]))
    if total != self.starts[-1]:
      raise ShardError(f"{self.path / META_FILE}: split {split!r} says {total} tokens but its shards hold "
                       f"{self.starts[-1]}")
    self._open: collections.OrderedDict[int, np.memmap] = collections.OrderedDict()
    if verify:
      self.verify()

  def __len__(self) -> int:
    return int(self.starts[-1])

  @property
  def num_shards(self) -> int:
    return len(self.files)

  def verify(self) -> None:
    """Checks every shard's sha256 against ``meta.json``; raises :class:`ShardError` naming the first bad file."""
    for f, want in zip(self.files, self._sha256):
      got = sha256_of(f)
      if got != want:
        raise ShardError(f"shard {f} has sha256 {got}, {META_FILE} says {want}: the file is corrupt; prepare the "
                         "shards again")

  def _shard(self, i: int) -> np.memmap:
    m = self._open.get(i)
    if m is None:
      m = np.memmap(self.files[i], dtype=self.dtype, mode="r")
      self._open[i] = m
      if len(self._open) > MAX_OPEN_SHARDS:
        self._open.popitem(last=False)
    else:
      self._open.move_to_end(i)
    return m

  def read(self, start: int, n: int) -> np.ndarray:
    """The ids ``start .. start + n - 1`` of the split as int32[n] (crossing shard boundaries as needed)."""
    start, n = int(start), int(n)
    if start < 0 or n < 0 or start + n > len(self):
      raise IndexError(f"tokens [{start}, {start + n}) out of range for the {len(self)} tokens of split "
                       f"{self.split!r} in {self.path}")
    out = np.empty(n, np.int32)
    pos = 0
    i = int(np.searchsorted(self.starts, start, side="right")) - 1
    while pos < n:
      lo = start + pos - int(self.starts[i])
      take = min(n - pos, int(self.starts[i + 1]) - (start + pos))
      out[pos:pos + take] = self._shard(i)[lo:lo + take]
      pos += take
      i += 1
    return out

  def windows(self, offsets: np.ndarray, length: int) -> np.ndarray:
    """``int32[B, length]``: row ``b`` is ``read(offsets[b], length)``."""
    offsets = np.asarray(offsets, np.int64).reshape(-1)
    out = np.empty((offsets.size, int(length)), np.int32)
    for b, o in enumerate(offsets):
      out[b] = self.read(o, length)
    return out

  def iter_chunks(self, chunk_tokens: int) -> Iterator[np.ndarray]:
    """The whole split in order, as int32 arrays of ``chunk_tokens`` ids (the last may be shorter)."""
    for start in range(0, len(self), chunk_tokens):
      yield self.read(start, min(chunk_tokens, len(self) - start))

  def __repr__(self) -> str:
    return (f"TokenShards({str(self.path)!r}, split={self.split!r}: {len(self):,} {self.dtype.name} tokens in "
            f"{self.num_shards} shards, vocab {self.vocab_size})")


def verify_dir(path: str | os.PathLike) -> dict[str, int]:
  """Checks every split of a shards directory (lengths and sha256); returns ``{split: tokens}``."""
  meta = read_meta(path)
  out = {}
  for split in meta["splits"]:
    s = TokenShards(path, split, verify=True)
    out[split] = len(s)
  return out

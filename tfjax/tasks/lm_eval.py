"""Perplexity and bits per byte of a language model over a whole token stream, by sliding windows.

The stream ``tokens [N]`` (token ids: a numpy array, a ``np.memmap``, or a split of token shards,
:class:`tfjax.data.shards.TokenShards`, read a window at a time) is scored by windows of the model's context ``C`` moved by ``stride`` ``S`` (Hugging Face's "perplexity of
fixed-length models" recipe). Window ``k`` starts at ``b_k = k·S``; its inputs are ``tokens[b_k : b_k + C]`` and its
targets the next tokens ``tokens[b_k + 1 : b_k + C + 1]`` (the C predictions of one forward pass). Each target
``j = 1 .. N-1`` is scored once, in the first window that reaches it: ``k(j) = max(0, ceil((j - C) / S))``, with the
context ``tokens[b_k(j) : j]``. So the first window scores all its targets, and every later window scores its last
``S``, each with at least ``C - S + 1`` tokens of context (``S = C``: disjoint windows, the cheapest and the most
pessimistic; ``S = 1``: every token with the full context, ``N`` forward passes). This is the Hugging Face recipe with
``max_length = C + 1`` (a window of C inputs there yields only C - 1 predictions, and with ``stride = max_length`` it
leaves the first token of every window unscored; here none is). The first token of the stream has no context and is
not scored.

Results (:class:`EvalResult`): ``loss`` = total negative log-likelihood / scored tokens (nats per token),
``perplexity = exp(loss)``, and ``bits_per_byte`` = total nats / ln 2 / the UTF-8 bytes the scored tokens spell
(special tokens such as ``<|endoftext|>`` spell none): comparable across tokenizers, unlike perplexity.

Batches have fixed shapes ``[batch_size, C]`` (the last window is padded past the end of the stream, the last batch
with empty windows, both masked out), so the scoring function compiles once per (model, batch size).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """The totals of :func:`evaluate` and the figures derived from them."""
  nats: float  # total negative log-likelihood of the scored tokens (natural log)
  scored_tokens: int  # N - 1
  num_bytes: int | None  # UTF-8 bytes the scored tokens spell (None: unknown)
  num_windows: int
  context: int
  stride: int
  seconds: float = 0.0

  @property
  def loss(self) -> float:
    """Mean negative log-likelihood, nats per token."""
    return self.nats / self.scored_tokens

  @property
  def perplexity(self) -> float:
    return math.exp(self.loss)

  @property
  def bits_per_byte(self) -> float | None:
    return None if not self.num_bytes else self.nats / math.log(2) / self.num_bytes

  def to_dict(self) -> dict[str, Any]:
    return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
            "nats": self.nats, "scored_tokens": self.scored_tokens, "bytes": self.num_bytes,
            "windows": self.num_windows, "context": self.context, "stride": self.stride, "seconds": self.seconds,
            "tokens_per_s": self.scored_tokens / self.seconds if self.seconds else None}


def num_windows(num_tokens: int, context: int, stride: int) -> int:
  """Windows needed to score targets ``1 .. N-1``: one, then one per ``stride`` targets past the first window."""
  check_window_args(num_tokens, context, stride)
  return 1 + max(0, -(-(num_tokens - 1 - context) // stride))


def check_window_args(num_tokens: int, context: int, stride: int) -> None:
  if context < 1:
    raise ValueError(f"the context must be at least 1 token, got {context}")
  if not 1 <= stride <= context:
    raise ValueError(f"stride must be in [1, context={context}] (each token is scored with at least context - stride "
                     f"+ 1 tokens of context), got {stride}")
  if num_tokens < 2:
    raise ValueError(f"the text has {num_tokens} token(s): scoring needs at least 2 (a token and its successor)")


def window_batches(tokens, context: int, stride: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches of windows (see the module docstring): ``inputs [B, C]`` and ``targets [B, C]`` int32 ids and
  ``mask [B, C]`` float32, 1 where the target is scored by this window. Reads ``tokens`` one window at a time."""
  n = len(tokens)
  k_total = num_windows(n, context, stride)
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  for first in range(0, k_total, batch_size):
    inputs = np.zeros((batch_size, context), np.int32)
    targets = np.zeros((batch_size, context), np.int32)
    mask = np.zeros((batch_size, context), np.float32)
    for row, k in enumerate(range(first, min(first + batch_size, k_total))):
      b = k * stride
      window = _read(tokens, b, min(context + 1, n - b))  # up to C + 1 tokens
      m = len(window) - 1  # targets in this window
      inputs[row, :m] = window[:-1]
      targets[row, :m] = window[1:]
      lo = 0 if k == 0 else context - stride  # targets before lo were scored by window k - 1
      mask[row, lo:m] = 1.0
    yield {"inputs": inputs, "targets": targets, "mask": mask}


def _read(tokens, start: int, n: int) -> np.ndarray:
  """``tokens[start : start + n]`` as int32, from an array or a :class:`tfjax.data.shards.TokenShards`."""
  if hasattr(tokens, "read"):
    return tokens.read(start, n)
  return np.asarray(tokens[start:start + n], dtype=np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _batch_nats(model, params, inputs, targets, mask):
  """Sum of the masked negative log-likelihoods of ``targets [B, C]`` after ``inputs [B, C]``."""
  logits = model.apply({"params": params}, inputs)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(nll * mask)


def evaluate(model: Any, params: Any, tokens, *, stride: int | None = None, batch_size: int = 8,
             context: int | None = None, num_bytes: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
  """Scores ``tokens [N]`` with a decoder (:class:`tfjax.models.gpt.GPT` call signature) by sliding windows.

  Args:
    model, params: the model and its parameters.
    tokens: token ids: a 1-D integer array (``np.memmap`` included) or a :class:`tfjax.data.shards.TokenShards`
      split, read one window at a time.
    stride: window step (default: the context, disjoint windows).
    batch_size: windows per forward pass.
    context: window length (default and maximum: ``model.cfg.max_len``).
    num_bytes: UTF-8 bytes spelled by ``tokens[1:]`` (see :func:`count_bytes`) for bits per byte.
    progress: called as ``progress(windows_done, windows_total)`` after each batch.
  """
  max_len = model.cfg.max_len
  context = max_len if context is None else context
  if context > max_len:
    raise ValueError(f"context={context} is longer than the model's context window max_len={max_len}")
  stride = context if stride is None else stride
  n = len(tokens)
  k_total = num_windows(n, context, stride)
  params = nn.unbox(params)
  vocab = model.cfg.vocab_size
  t0 = time.perf_counter()
  total = 0.0
  pending = None
  done = 0
  for batch in window_batches(tokens, context, stride, batch_size):
    lo, hi = int(batch["inputs"].min()), int(max(batch["inputs"].max(), batch["targets"].max()))
    if lo < 0 or hi >= vocab:
      raise ValueError(f"token id {hi if hi >= vocab else lo} is outside the model's vocabulary [0, {vocab}): the "
                       "tokens were made with another tokenizer")
    out = _batch_nats(model, params, batch["inputs"], batch["targets"], batch["mask"])
    if pending is not None:  # read the previous batch's sum once this one is dispatched
      total += float(pending)
    pending = out
    done = min(done + batch_size, k_total)
    if progress is not None:
      progress(done, k_total)
  total += float(pending)
  return EvalResult(nats=total, scored_tokens=n - 1, num_bytes=num_bytes, num_windows=k_total, context=context,
                    stride=stride, seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------------------------
# Bytes per token


def _bytes_to_unicode() -> dict[str, int]:
  """GPT-2's byte-level alphabet: the printable character that stands for each byte (``tokenizers``' ByteLevel)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


def token_byte_lengths(tokenizer) -> np.ndarray | None:
  """``[V]`` UTF-8 bytes each token id spells, for a character tokenizer (``chars``) or a byte-level BPE (GPT-2's;
  special tokens such as end-of-text: 0); None for other tokenizers (:func:`count_bytes` then decodes)."""
  if hasattr(tokenizer, "chars"):  # ids past the alphabet (an end-of-text token) spell nothing
    lengths = np.zeros(tokenizer.vocab_size, np.int64)
    lengths[:len(tokenizer.chars)] = [len(c.encode("utf-8")) for c in tokenizer.chars]
    return lengths
  hf = getattr(tokenizer, "tokenizer", None)
  if hf is None or type(hf.decoder).__name__ != "ByteLevel":
    return None
  alphabet = _bytes_to_unicode()
  special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
  lengths = np.zeros(tokenizer.vocab_size, np.int64)
  for token, i in hf.get_vocab(with_added_tokens=True).items():
    if i in special:
      continue
    if not all(c in alphabet for c in token):  # an added non-special token: its text as written
      lengths[i] = len(token.encode("utf-8"))
    else:
      lengths[i] = len(token)
  return lengths


def count_bytes(tokenizer, tokens, chunk: int = 1 << 20) -> int:
  """UTF-8 bytes spelled by ``tokens`` (special tokens: none): exact from :func:`token_byte_lengths` where the
  tokenizer has one, else by decoding chunks of ``chunk`` tokens (a character cut at a chunk's edge may then count a
  few bytes wrong; documents separated by special tokens cost nothing)."""
  lengths = token_byte_lengths(tokenizer)
  total = 0
  for i in range(0, len(tokens), chunk):
    part = _read(tokens, i, min(chunk, len(tokens) - i))
    if lengths is not None:
      total += int(lengths[part].sum())
    else:
      total += len(tokenizer.decode(part).encode("utf-8"))
  return total

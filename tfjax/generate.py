"""Sampling text from a decoder: temperature, top-k, top-p (nucleus) and greedy decoding, with or without a KV cache.

The next token is drawn from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and to
the smallest set whose probability reaches ``top_p``. ``temperature = 0`` is greedy decoding (argmax).

With the cache (default) the prompt is run once (prefill) and each new token costs one position: the model is called
on ``[B, 1]`` with ``decode=True`` inside a ``lax.scan``. Without it, every step runs the full forward pass over the
last ``max_len`` tokens, as nanoGPT's ``generate`` does; both give the same tokens for the same key. When a sequence
outgrows the context window, the cache is refilled from the last ``max_len // 2`` tokens (the no-cache path slides
its window by one token instead, so the two differ only past the window).

:func:`generate_text` does the same from text to text with a tokenizer (imported GPT-2 models sample with it too).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.layers.embeddings import check_token_ids


def sample_logits(logits: jnp.ndarray, rng: jax.Array, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> jnp.ndarray:
  """Draws token ids ``[B]`` from ``logits [B, V]``; ``temperature == 0`` returns the argmax (greedy)."""
  if jax.dtypes.issubdtype(jnp.asarray(logits).dtype, jax.dtypes.prng_key):
    raise TypeError("sample_logits(logits, rng, ...): the logits come first, then the key (a key was given first)")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if top_k is not None and top_k <= 0:
    raise ValueError(f"top_k must be positive, got {top_k}")
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None and top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the strictly more likely tokens
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k", "top_p"))
def _cached_generate(model, params, prompt, rngs, temperature, top_k, top_p):
  """``[B, N]`` new tokens after ``prompt [B, P]`` (``P <= max_len``), one per key of ``rngs [N]``, in one compiled
  program: the prompt is prefilled once, then a ``lax.scan`` over the ``N - 1`` remaining tokens either decodes one
  position with the KV cache or, when the window is full, refills a fresh cache from the last ``max_len // 2``
  tokens (a ``lax.cond``: only the branch taken runs). The shapes do not depend on how often the window refills, so
  a whole sample compiles once (it used to compile once per segment shape and slice its keys eagerly)."""
  from tfjax.models.gpt import init_cache  # local: generate works for any decoder with the GPT call signature
  max_len = model.cfg.max_len
  batch, plen = prompt.shape
  num_new = rngs.shape[0]
  half = max(1, max_len // 2)

  def prefill(context):
    """Logits ``[B, V]`` after ``context [B, C]`` at positions 0..C-1, and the filled cache."""
    length = context.shape[1]
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    logits, vars_ = model.apply({"params": params, "cache": init_cache(model, batch)}, context, positions=positions,
                                decode=True, mutable=["cache"])
    return logits[:, -1], vars_["cache"]

  logits, cache = prefill(prompt)
  first = sample_logits(logits, rngs[0], temperature, top_k, top_p)
  # every token written so far (the prompt, then the new ones): the refill reads its last `half` from here
  tokens = jnp.zeros((batch, plen + num_new), jnp.int32).at[:, :plen].set(prompt).at[:, plen].set(first)

  def step(carry, xs):
    cache, tokens, pos = carry  # pos: the window position of the last token (already in `tokens`, not yet cached)
    index, rng_t = xs  # index: where the token sampled now goes in `tokens`

    def decode(cache):
      logits, vars_ = model.apply({"params": params, "cache": cache}, tokens[:, index - 1][:, None],
                                  positions=jnp.full((batch, 1), pos), decode=True, mutable=["cache"])
      return logits[:, -1], vars_["cache"], pos + 1

    def refill(_):
      logits, cache = prefill(jax.lax.dynamic_slice_in_dim(tokens, index - half, half, axis=1))
      return logits, cache, jnp.int32(half)

    if can_refill:
      logits, cache, next_pos = jax.lax.cond(pos == max_len, refill, decode, cache)
    else:  # the window never fills (the refill branch could not even be traced: fewer than `half` tokens)
      logits, cache, next_pos = decode(cache)
    nxt = sample_logits(logits, rng_t, temperature, top_k, top_p)
    return (cache, tokens.at[:, index].set(nxt), next_pos), None

  # the scan's k-th step (k = 0..N-2) refills when pos = plen + k reaches max_len
  can_refill = plen + num_new - 2 >= max_len
  if num_new > 1:
    indices = jnp.arange(plen + 1, plen + num_new, dtype=jnp.int32)
    (_, tokens, _), _ = jax.lax.scan(step, (cache, tokens, jnp.int32(plen)), (indices, rngs[1:]))
  return tokens[:, plen:]


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k", "top_p"))
def _full_forward_step(model, params, window, length, rng, temperature, top_k, top_p):
  """One token from a full forward pass over ``window [B, max_len]`` whose first ``length`` tokens are real."""
  logits = model.apply({"params": params}, window)
  last = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)
  return sample_logits(last, rng, temperature, top_k, top_p)


def generate(model: Any, params: Any, prompt, max_new_tokens: int, rng: jax.Array, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True) -> np.ndarray:
  """Continues ``prompt [B, P]`` (int ids) by ``max_new_tokens``; returns ``[B, P + max_new_tokens]`` (numpy).

  ``model`` is a decoder with the :class:`tfjax.models.gpt.GPT` call signature and a ``cfg`` with ``max_len`` and
  ``vocab_size``. The same ``rng`` gives the same tokens with and without the cache.
  """
  prompt = np.asarray(prompt, dtype=np.int32)
  if prompt.ndim != 2 or prompt.shape[1] == 0:
    raise ValueError(f"prompt must be [batch, length >= 1] token ids, got shape {prompt.shape}")
  check_token_ids(prompt, model.cfg.vocab_size)
  max_len = model.cfg.max_len
  tokens = prompt
  rngs = jax.random.split(rng, max_new_tokens) if max_new_tokens else None
  if use_cache:
    if not max_new_tokens:
      return tokens
    new = _cached_generate(model, params, jnp.asarray(tokens[:, -max_len:]), rngs, float(temperature), top_k, top_p)
    return np.concatenate([tokens, np.asarray(new)], axis=1)
  for i in range(max_new_tokens):
    window = tokens[:, -max_len:]
    length = window.shape[1]
    padded = np.zeros((tokens.shape[0], max_len), np.int32)
    padded[:, :length] = window
    nxt = _full_forward_step(model, params, jnp.asarray(padded), length, rngs[i], float(temperature), top_k, top_p)
    tokens = np.concatenate([tokens, np.asarray(nxt)[:, None]], axis=1)
  return tokens



def generate_text(model: Any, params: Any, tokenizer: Any, prompt: str, max_new_tokens: int, rng: jax.Array, *,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  num_samples: int = 1, use_cache: bool = True) -> list[str]:
  """Continues the text ``prompt`` by ``max_new_tokens`` tokens, ``num_samples`` times: the decoded prompt and new
  text of each sample. ``tokenizer`` is any tfjax tokenizer (characters or a Hugging Face one: ``encode``,
  ``decode``, ``eos_id``); the one text-generation path of ``./launch.sh sample``, a run's final sample and imported
  GPT-2 models.

  An empty prompt starts from the end-of-text token when the tokenizer has one (as GPT-2's unconditional samples
  do), else from a newline (as nanoGPT's character models do).
  """
  ids = list(tokenizer.encode(prompt)) if prompt else []
  if not ids:
    eos = getattr(tokenizer, "eos_id", None)
    ids = [eos] if eos is not None else list(tokenizer.encode("\n"))
  prompt_ids = np.repeat(np.asarray([ids], np.int32), num_samples, axis=0)
  out = generate(model, params, prompt_ids, max_new_tokens, rng, temperature=temperature, top_k=top_k, top_p=top_p,
                 use_cache=use_cache)
  return [tokenizer.decode(row) for row in out]


def _check_source(model, src, max_new_tokens: int) -> np.ndarray:
  """``src`` as int32 ``[B, S]`` token ids in range, and ``max_new_tokens`` within the context window."""
  src = np.asarray(src, dtype=np.int32)
  if src.ndim != 2 or src.shape[1] == 0:
    raise ValueError(f"src must be [batch, length >= 1] token ids, got shape {src.shape}")
  check_token_ids(src, model.cfg.vocab_size)
  if not 0 < max_new_tokens <= model.cfg.max_len:
    raise ValueError(f"max_new_tokens must be in [1, max_len={model.cfg.max_len}], got {max_new_tokens}")
  return src


def _encode_for_decoding(model, params, src, src_valid):
  """``(memory, empty cache, step)`` for an encoder-decoder: ``step(cache, tokens [N], pos, memory=None) -> (logits
  [N, V], cache)`` runs the decoder on one new position (``memory`` only on the first step; later steps reuse the
  source's keys/values kept in the cache)."""
  from tfjax.models.transformer import EncoderDecoder, init_cache  # local: models import layers, not generate
  memory = model.apply({"params": params}, src, src_valid, method=EncoderDecoder.encode)

  def step(cache, tokens, pos, memory=None):
    logits, vars_ = model.apply({"params": params, "cache": cache}, tokens[:, None], memory, src_valid,
                                positions=jnp.full((tokens.shape[0], 1), pos), decode=True, mutable=["cache"],
                                method=EncoderDecoder.decode)
    return logits[:, -1], vars_["cache"]

  return memory, init_cache(model, src.shape[0], src.shape[1]), step


@functools.partial(jax.jit, static_argnames=("model", "bos_id", "eos_id", "pad_id", "temperature", "top_k", "top_p"))
def _translate(model, params, src, src_valid, rngs, bos_id, eos_id, pad_id, temperature, top_k, top_p):
  batch = src.shape[0]
  memory, cache, decode_step = _encode_for_decoding(model, params, src, src_valid)

  def step(carry, xs, memory=None):  # memory: only on the first step
    cache, token, done = carry
    pos, rng_t = xs
    logits, cache = decode_step(cache, token, pos, memory)
    nxt = sample_logits(logits, rng_t, temperature, top_k, top_p)
    nxt = jnp.where(done, pad_id, nxt)
    return (cache, nxt, done | (nxt == eos_id)), nxt

  start = (cache, jnp.full((batch,), bos_id, jnp.int32), jnp.zeros((batch,), bool))
  carry, first = step(start, (jnp.int32(0), rngs[0]), memory)
  _, rest = jax.lax.scan(step, carry, (jnp.arange(1, len(rngs), dtype=jnp.int32), rngs[1:]))
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def translate(model: Any, params: Any, src, src_valid, max_new_tokens: int, *, bos_id: int, eos_id: int,
              pad_id: int = 0, rng: jax.Array | None = None, temperature: float = 0.0, top_k: int | None = None,
              top_p: float | None = None) -> np.ndarray:
  """Target ids ``[B, max_new_tokens]`` (numpy) for source ids ``src [B, S]`` (``src_valid [B, S]``: real tokens)
  with an :class:`tfjax.models.transformer.EncoderDecoder`: the source is encoded once, then the target grows from
  ``bos_id`` one position at a time with the decoder's KV cache. ``temperature = 0`` (default) is greedy decoding.
  After a sequence's ``eos_id`` (included in the output) its remaining positions are ``pad_id``."""
  src = _check_source(model, src, max_new_tokens)
  rngs = jax.random.split(jax.random.key(0) if rng is None else rng, max_new_tokens)
  out = _translate(model, params, jnp.asarray(src), jnp.asarray(src_valid, bool), rngs, int(bos_id), int(eos_id),
                   int(pad_id), float(temperature), top_k, top_p)
  return np.asarray(out)


LENGTH_NORMS = ("gnmt", "fairseq")


def length_normalised(scores, lengths, length_penalty: float, length_norm: str = "gnmt"):
  """Hypothesis scores (summed log-probabilities) divided by a length penalty of their ``lengths`` (tokens, the end
  token included): ``"gnmt"``: ``((5 + length) / 6) ** length_penalty`` (Wu et al. 2016; T2T, flax's wmt example);
  ``"fairseq"``: ``length ** length_penalty`` (fairseq's ``--lenpen``, Hugging Face's ``length_penalty``; 1.0 is the
  mean log-probability per token). ``length_penalty = 0``: raw log-probabilities; larger values favour longer
  hypotheses."""
  lengths = jnp.asarray(lengths, jnp.float32)
  if length_norm == "gnmt":
    return scores / ((5.0 + lengths) / 6.0) ** length_penalty
  if length_norm == "fairseq":
    return scores / jnp.maximum(lengths, 1.0) ** length_penalty
  raise ValueError(f"length_norm must be one of {LENGTH_NORMS}, got {length_norm!r}")


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "beam_size", "bos_id", "eos_id", "pad_id",
                                             "length_norm"))
def _beam_translate(model, params, src, src_valid, max_new_tokens, beam_size, bos_id, eos_id, pad_id,
                    length_penalty, length_norm):
  batch, k = src.shape[0], beam_size
  # [B*K, S]: row b's beams are rows b*K .. b*K+K-1
  memory, cache, decode_step = _encode_for_decoding(model, params, jnp.repeat(src, k, axis=0),
                                                    jnp.repeat(src_valid, k, axis=0))
  vocab = model.cfg.vocab_size
  n_cand = min(2 * k, k * vocab)  # enough candidates that K of them go on even if K end here

  def step(carry, t, memory=None):
    # alive: the K best unfinished hypotheses by summed log-probability; finished: the K best ended ones by their
    # length-normalised score (raw sums in finished_raw)
    cache, alive, last, alive_scores, fin, fin_scores, fin_raw = carry
    logits, cache = decode_step(cache, last.reshape(batch * k), t, memory)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
    cand = (alive_scores[..., None] + logp).reshape(batch, k * vocab)
    scores, idx = jax.lax.top_k(cand, n_cand)  # [B, 2K]
    beam, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive, beam[..., None], 1).at[:, :, t].set(tok)  # [B, 2K, N]
    ended = tok == eos_id
    # the candidates that end here join the finished ones; the K best of both stay
    ended_norm = jnp.where(ended, length_normalised(scores, t + 1, length_penalty, length_norm), -jnp.inf)
    all_norm = jnp.concatenate([fin_scores, ended_norm], axis=1)
    fin_scores, keep = jax.lax.top_k(all_norm, k)
    fin = jnp.take_along_axis(jnp.concatenate([fin, seqs], axis=1), keep[..., None], 1)
    fin_raw = jnp.take_along_axis(jnp.concatenate([fin_raw, scores], axis=1), keep, 1)
    # the K best candidates that go on become the alive ones, with their parents' cache rows
    alive_scores, pick = jax.lax.top_k(jnp.where(ended, -jnp.inf, scores), k)
    alive = jnp.take_along_axis(seqs, pick[..., None], 1)
    parent = jnp.take_along_axis(beam, pick, 1)
    rows = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)  # the parent of each alive beam, in [B*K]
    cache = jax.tree.map(lambda c: c[rows] if c.ndim and c.shape[0] == batch * k else c, cache)
    last = jnp.take_along_axis(tok, pick, 1)
    return (cache, alive, last, alive_scores, fin, fin_scores, fin_raw), None

  empty = jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32)
  no_scores = jnp.full((batch, k), -jnp.inf)
  alive_scores = no_scores.at[:, 0].set(0.0)  # one live beam at first
  carry = (cache, empty, jnp.full((batch, k), bos_id, jnp.int32), alive_scores, empty, no_scores, no_scores)
  carry, _ = step(carry, jnp.int32(0), memory)
  (_, alive, _, alive_scores, fin, fin_scores, fin_raw), _ = jax.lax.scan(
      step, carry, jnp.arange(1, max_new_tokens, dtype=jnp.int32))
  # hypotheses still going at max_new_tokens compete as they are (cut at the limit)
  alive_norm = length_normalised(alive_scores, max_new_tokens, length_penalty, length_norm)
  norm = jnp.concatenate([fin_scores, alive_norm], axis=1)
  best = jnp.argmax(norm, axis=1)
  seqs = jnp.concatenate([fin, alive], axis=1)
  raw = jnp.concatenate([fin_raw, alive_scores], axis=1)
  return (jnp.take_along_axis(seqs, best[:, None, None], 1)[:, 0],
          jnp.take_along_axis(raw, best[:, None], 1)[:, 0])


def beam_translate(model: Any, params: Any, src, src_valid, max_new_tokens: int, *, beam_size: int, bos_id: int,
                   eos_id: int, pad_id: int = 0, length_penalty: float = 0.6,
                   length_norm: str = "gnmt") -> tuple[np.ndarray, np.ndarray]:
  """Beam search with an :class:`tfjax.models.transformer.EncoderDecoder`: ``(ids [B, max_new_tokens], log-prob
  [B])`` of the best hypothesis. At every step the ``beam_size`` best unfinished hypotheses (by summed
  log-probability) are extended by every token; of the ``2 * beam_size`` best extensions, those that end
  (``eos_id``) join the finished ones, ranked by :func:`length_normalised` scores (``length_penalty``,
  ``length_norm``), and the best ``beam_size`` others go on, each with its parent's KV cache rows. A hypothesis that
  ends never takes a place in the beam from one that goes on (as in fairseq, T2T and flax's wmt example). The result
  is the finished (or, at ``max_new_tokens``, unfinished) hypothesis with the best normalised score; after its
  ``eos_id`` come ``pad_id``. ``beam_size=1`` with ``length_penalty=0`` is greedy decoding."""
  src = _check_source(model, src, max_new_tokens)
  if not 1 <= beam_size <= model.cfg.vocab_size ** min(max_new_tokens, 8):
    raise ValueError(f"beam_size must be >= 1 (and at most vocab_size ** max_new_tokens), got {beam_size}")
  if length_norm not in LENGTH_NORMS:
    raise ValueError(f"length_norm must be one of {LENGTH_NORMS}, got {length_norm!r}")
  ids, score = _beam_translate(model, params, jnp.asarray(src), jnp.asarray(src_valid, bool), max_new_tokens,
                               beam_size, int(bos_id), int(eos_id), int(pad_id), float(length_penalty), length_norm)
  return np.asarray(ids), np.asarray(score)

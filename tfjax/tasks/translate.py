"""Translation: an encoder-decoder transformer on Multi30k (English image captions and their German translations).

Data: Multi30k task 1 (train 29,000 pairs, val 1,014, test2016 1,000), ``config.data.source`` -> ``config.data.target``
(``en``, ``de`` or ``fr``). One BPE vocabulary (:func:`tfjax.data.wordpiece.train_bpe`, ``config.data.vocab_size``)
is trained on the training split of both languages and saved in the workdir (a resumed run keeps it). A pair becomes

    src     = tokens(source) + [EOS]                   [S]   (padded with [PAD] to S = model.max_len)
    inputs  = [BOS] + tokens(target)                   [T]   (the decoder's input, teacher forcing)
    targets = tokens(target) + [EOS]                   [T]   (what each decoder position predicts)
    weights = 1 where targets is a real token          [T]

Training pairs longer than the context window are left out (their count is logged); validation and test sources
are cut to fit. The training batch at step ``s`` draws ``batch_size`` pairs with ``numpy.random.default_rng([seed,
s])``: a pure function of (seed, step), so a resumed run sees the same batches.

Length buckets (``config.data.length_buckets``, e.g. ``"16,24,32"``; the context window is the last bucket): each
training pair belongs to the shortest bucket that holds it (source and target), and the batch at step ``s`` first
draws a bucket with probability proportional to its number of pairs, then ``batch_size`` pairs from it, padded to
the bucket's length. Every pair is still drawn with the same probability, so the expected gradient is unchanged,
while the padding, which at one width of 40 is ~2/3 of the positions (median pair: 13 tokens), mostly goes. Each
bucket is one more compiled shape of the train step.

Loss: cross-entropy with label smoothing ``config.train.label_smoothing`` while training; evaluation reports the plain
cross-entropy per target token (so ``exp(eval_loss)`` is the perplexity) over the whole validation set. At the end,
:meth:`TranslationTask.final_report` translates the test set greedily (KV cache, :func:`tfjax.generate.translate`) and
scores it with sacreBLEU (the standard BLEU implementation: its 13a tokenisation on detokenised text).
"""

from __future__ import annotations

import gzip
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax import config as config_lib
from tfjax.data import files, wordpiece
from tfjax.generate import beam_translate, translate
from tfjax.models.transformer import EncoderDecoder, flops_per_token

log = logging.getLogger("tfjax")
LANGUAGES = ("en", "de", "fr")
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
PAD_ID, BOS_ID, EOS_ID = 0, 2, 3  # wordpiece.SEQ2SEQ_SPECIAL_TOKENS


def load_multi30k(split: str, lang: str, data_dir: str | None) -> list[str]:
  """The lines (captions) of one Multi30k file, e.g. ``("train", "en")``."""
  if lang not in LANGUAGES:
    raise config_lib.ConfigError(f"Multi30k languages are {LANGUAGES}, got {lang!r}")
  path = files.find_data_file(files.MULTI30K[f"{SPLITS[split]}.{lang}"], data_dir or None)
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return f.read().rstrip("\n").split("\n")


def pad_rows(rows: list[list[int]], length: int) -> np.ndarray:
  out = np.full((len(rows), length), PAD_ID, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def make_model(config: Any, vocab_size: int) -> EncoderDecoder:
  """The :class:`EncoderDecoder` that ``config.model`` describes."""
  return EncoderDecoder(config_lib.transformer_config(config.model, vocab_size),
                        num_encoder_layers=config.model.get("num_encoder_layers") or None)


class TranslationTask:
  """An :class:`EncoderDecoder` trained to translate. Implements :class:`tfjax.tasks.base.Task`."""

  def __init__(self, config: Any, workdir: str | None = None):
    self.config = config
    d = config.data
    if d.source == d.target:
      raise config_lib.ConfigError(f"data.source and data.target must differ, both are {d.source!r}")
    text = {(split, lang): load_multi30k(split, lang, config.data_dir) for split in SPLITS
            for lang in (d.source, d.target)}
    for split in SPLITS:
      if len(text[split, d.source]) != len(text[split, d.target]):
        raise ValueError(f"Multi30k {split}: {len(text[split, d.source])} {d.source} lines but "
                         f"{len(text[split, d.target])} {d.target} lines")
    tok_path = os.path.join(workdir, "tokenizer.json") if workdir else None
    if tok_path and os.path.exists(tok_path):  # a resumed run keeps its vocabulary
      self.tokenizer = wordpiece.Tokenizer.from_file(tok_path, eos_token=wordpiece.EOS)
    else:
      self.tokenizer = wordpiece.train_bpe(text["train", d.source] + text["train", d.target], d.vocab_size)
      if tok_path and jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        self.tokenizer.save(tok_path)
    self.model = make_model(config, self.tokenizer.vocab_size)
    self.model_cfg = self.model.cfg
    self.max_len = self.model_cfg.max_len
    self.texts = text
    self.pairs = {}
    for split in SPLITS:
      src = [ids + [EOS_ID] for ids in self.tokenizer.encode_batch(text[split, d.source])]
      tgt = self.tokenizer.encode_batch(text[split, d.target])
      if split == "train":
        keep = [i for i in range(len(src)) if len(src[i]) <= self.max_len and len(tgt[i]) + 1 <= self.max_len]
        if len(keep) < len(src):
          log.info("translate: %d of %d training pairs are longer than max_len=%d and left out",
                   len(src) - len(keep), len(src), self.max_len)
        src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
      else:
        src = [s if len(s) <= self.max_len else s[:self.max_len - 1] + [EOS_ID] for s in src]
        tgt = [t[:self.max_len - 1] for t in tgt]
      self.pairs[split] = (src, tgt)
    self.batch_size = config.train.batch_size
    self.seed = config.seed
    self.buckets = self._make_buckets(str(d.get("length_buckets", "")))
    # one batch shape (the loop then runs its ahead-of-time compiled step), or one per bucket (jit compiles each)
    self.fixed_batch_shape = self.buckets is None

  def _make_buckets(self, spec: str):
    """``(lengths, rows of each bucket)`` of the training pairs for ``"L1,L2,..."``, or None for ``""``."""
    if not spec.strip():
      return None
    try:
      lengths = sorted({int(x) for x in spec.split(",") if x.strip()} | {self.max_len})
    except ValueError:
      raise config_lib.ConfigError(f"config key 'data.length_buckets' must be comma-separated lengths such as "
                                   f"'16,24,32', got {spec!r}") from None
    if lengths[0] < 2 or lengths[-1] > self.max_len:
      raise config_lib.ConfigError(f"config key 'data.length_buckets' must hold lengths in [2, model.max_len="
                                   f"{self.max_len}], got {spec!r}")
    src, tgt = self.pairs["train"]
    need = np.maximum([len(s) for s in src], [len(t) + 1 for t in tgt])  # [BOS] + target / target + [EOS]
    which = np.searchsorted(lengths, need)  # the shortest bucket >= need
    rows = [np.flatnonzero(which == b) for b in range(len(lengths))]
    keep = [b for b in range(len(lengths)) if len(rows[b])]
    lengths, rows = [lengths[b] for b in keep], [rows[b] for b in keep]
    log.info("translate: length buckets %s hold %s training pairs", lengths, [len(r) for r in rows])
    return lengths, rows

  # -- batches -------------------------------------------------------------------------------------------------------
  def make_batch(self, split: str, rows: np.ndarray, length: int | None = None) -> dict[str, np.ndarray]:
    """The padded arrays (see the module docstring) of the pairs ``rows`` of ``split``, ``length`` (default: the
    context window) wide; ``-1`` rows are empty."""
    length = length or self.max_len
    src, tgt = self.pairs[split]
    s = [src[i] if i >= 0 else [] for i in rows]
    t = [tgt[i] if i >= 0 else None for i in rows]
    targets = pad_rows([x + [EOS_ID] if x is not None else [] for x in t], length)
    return {"src": pad_rows(s, length),
            "inputs": pad_rows([[BOS_ID] + x if x is not None else [] for x in t], length),
            "targets": targets, "weights": (targets != PAD_ID).astype(np.float32)}

  def train_batch(self, step, shard=0, num_shards=1):
    if self.batch_size % num_shards:
      raise ValueError(f"batch_size={self.batch_size} does not divide into {num_shards} processes")
    rng = np.random.default_rng([self.seed, step])
    length = None
    if self.buckets is None:
      rows = rng.integers(0, len(self.pairs["train"][0]), self.batch_size)
    else:
      lengths, bucket_rows = self.buckets
      sizes = np.array([len(r) for r in bucket_rows], np.float64)
      b = rng.choice(len(lengths), p=sizes / sizes.sum())
      rows, length = bucket_rows[b][rng.integers(0, len(bucket_rows[b]), self.batch_size)], lengths[b]
    per = self.batch_size // num_shards
    return self.make_batch("train", rows[shard * per:(shard + 1) * per], length)

  def eval_batches(self, shard=0, num_shards=1):
    """The whole validation set in batches of ``batch_size`` rows (the last one padded with empty rows)."""
    n = len(self.pairs["val"][0])
    per = self.batch_size // num_shards
    for start in range(0, n, self.batch_size):
      rows = np.arange(start, start + self.batch_size)
      rows = np.where(rows < n, rows, -1)
      yield self.make_batch("val", rows[shard * per:(shard + 1) * per])

  # -- Task protocol -------------------------------------------------------------------------------------------------
  def init_params(self, rng):
    ids = jnp.zeros((1, self.max_len), jnp.int32)
    return self.model.init(rng, ids, jnp.ones((1, self.max_len), bool), ids)["params"]

  def loss_fn(self, params, batch, rng, train):
    src_valid = batch["src"] != PAD_ID
    logits = self.model.apply({"params": params}, batch["src"], src_valid, batch["inputs"], deterministic=not train,
                              rngs={"dropout": rng} if train and rng is not None else None)
    w = batch["weights"]
    smoothing = self.config.train.label_smoothing if train else 0.0
    if smoothing:
      labels = optax.smooth_labels(jax.nn.one_hot(batch["targets"], logits.shape[-1]), smoothing)
      ce = optax.softmax_cross_entropy(logits, labels)
    else:
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == batch["targets"]) * w)
    return jnp.sum(ce * w), jnp.sum(w), {"accuracy": correct}

  def flops_per_token(self, params) -> float:
    return flops_per_token(self.model_cfg, params, self.max_len, self.max_len, self.model.num_encoder_layers)

  def translate(self, params, sources: list[str], batch_size: int = 128) -> list[str]:
    """Translations of ``sources`` (strings of the source language): greedy, or beam search with
    ``config.eval.beam_size`` > 1."""
    e = self.config.get("eval", {})
    return translate_texts(self.model, params, self.tokenizer, sources, batch_size,
                           beam_size=e.get("beam_size", 1), length_penalty=e.get("length_penalty", 0.6))

  def bleu(self, params, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """sacreBLEU of the translations of ``split`` (``limit``: its first pairs only) and three examples."""
    import sacrebleu
    d = self.config.data
    sources, refs = self.texts[split, d.source][:limit], self.texts[split, d.target][:limit]
    hyps = self.translate(params, sources)
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    return {f"{split}_bleu": bleu.score, f"{split}_bleu_signature": str(bleu), "examples": [
        {"source": s, "reference": r, "translation": h} for s, r, h in list(zip(sources, refs, hyps))[:3]]}

  def eval_report(self, params) -> dict[str, float]:
    """At each periodic evaluation: greedy sacreBLEU on the validation set (``eval.val_bleu_sentences`` of it)."""
    n = self.config.eval.get("val_bleu_sentences", 0)
    return {"eval_bleu": self.bleu(params, "val", n if n > 0 else None)["val_bleu"]} if n else {}

  def final_report(self, params) -> dict[str, Any]:
    n = self.config.eval.bleu_sentences
    return self.bleu(params, "test", n if n > 0 else None) if n else {}


def translate_texts(model: EncoderDecoder, params, tokenizer: wordpiece.Tokenizer, sources: list[str],
                    batch_size: int = 128, temperature: float = 0.0, seed: int = 0, beam_size: int = 1,
                    length_penalty: float = 0.6) -> list[str]:
  """Translations of ``sources``: greedy by default, ``temperature`` > 0 samples, ``beam_size`` > 1 is beam search
  (:func:`tfjax.generate.beam_translate`); ``batch_size`` at a time (the last batch padded, so one compiled shape
  serves them all). Sources longer than the context window are cut."""
  max_len = model.cfg.max_len
  out = []
  for start in range(0, len(sources), batch_size):
    chunk = [ids[:max_len - 1] + [EOS_ID] for ids in tokenizer.encode_batch(sources[start:start + batch_size])]
    n = len(chunk)
    chunk += [[EOS_ID]] * (batch_size - n)
    src = pad_rows(chunk, max_len)
    if beam_size > 1:
      ids, _ = beam_translate(model, params, src, src != PAD_ID, max_len, beam_size=beam_size, bos_id=BOS_ID,
                              eos_id=EOS_ID, pad_id=PAD_ID, length_penalty=length_penalty)
    else:
      ids = translate(model, params, src, src != PAD_ID, max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
                      rng=jax.random.key(seed + start), temperature=temperature)
    out += [tokenizer.decode([i for i in row if i not in (PAD_ID, EOS_ID)]) for row in ids[:n]]
  return out


def load_for_inference(workdir: str, step: int | None = None, best: bool = False
                       ) -> tuple[EncoderDecoder, Any, wordpiece.Tokenizer, Any]:
  """``(model, params, tokenizer, config)`` of a translation workdir: its ``config.json``, ``tokenizer.json`` and
  the checkpoint at ``step`` (default: the latest; ``best``: the lowest evaluation loss, with ``train.keep_best``).
  Needs no data files."""
  from tfjax.train import restore
  config = restore.load_config(workdir)
  if config.get("task") != "translate":
    raise ValueError(f"{workdir} was trained with task={config.get('task')!r}, not a translation config")
  tok_path = os.path.join(workdir, "tokenizer.json")
  if not os.path.isfile(tok_path):
    raise FileNotFoundError(f"workdir {workdir} has no tokenizer.json")
  tokenizer = wordpiece.Tokenizer.from_file(tok_path, eos_token=wordpiece.EOS)
  params, _ = restore.load_params(workdir, step, best=best)
  return make_model(config, tokenizer.vocab_size), params, tokenizer, config

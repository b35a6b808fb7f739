"""Translation: an encoder-decoder transformer on Multi30k (English image captions and their German translations).

Data: Multi30k task 1 (train 29,000 pairs, val 1,014, test2016 1,000), ``config.data.source`` -> ``config.data.target``
(``en``, ``de`` or ``fr``). One BPE vocabulary (:func:`tfjax.data.tokenizers.train_bpe`, ``config.data.vocab_size``;
``config.data.bpe``: ``sentencepiece`` marks word starts, ``subword_nmt`` word ends as fairseq's recipes) is trained
on the training split of both languages and saved in the workdir (a resumed run keeps it). A pair becomes

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

Token batches (``config.data.max_tokens`` > 0, with length buckets: fairseq's ``--max-tokens``): a batch holds
``max_tokens // width`` pairs of one bucket (rounded down to a multiple of ``config.data.batch_multiple``, fairseq's
``--required-batch-size-multiple``, and of the devices times ``train.grad_accum_steps``), so short pairs come many to a
batch and long ones few, and every batch costs about the same. Training goes by epochs, as fairseq's: epoch ``e``
shuffles each bucket's pairs with ``numpy.random.default_rng([seed, e, 1])``, cuts them into batches (each bucket's
last one short, filled with empty rows) and shuffles the batches; step ``s`` is batch ``s % n`` of epoch ``s // n``
(``n`` updates an epoch, logged at the start). Every pair is seen exactly once an epoch, and the loss, a mean over
the batch's target tokens, weighs every token alike, where fixed-size batches weigh the tokens of short pairs more.

Text (``config.data.text``): ``raw``, the dataset's cased captions, or ``tok``, the same captions lowercased,
punctuation-normalised and Moses-tokenised by the dataset's own script (``multi30k/tok/``): the text the
multimodal-translation literature trains on and scores BLEU against.

Loss: cross-entropy with label smoothing ``config.train.label_smoothing`` while training; evaluation reports the plain
cross-entropy per target token (so ``exp(eval_loss)`` is the perplexity) over the whole validation set, and with label
smoothing also the smoothed one (``eval_smoothed_loss``, the training objective: fairseq's validation loss). At the end,
:meth:`TranslationTask.final_report` translates the test set (greedy or beam search, ``config.eval.beam_size``; the
average of the last ``config.eval.average_last`` checkpoints when > 0) and scores it twice (:func:`score_bleu`):

* ``test_bleu_tok``: BLEU as papers on Multi30k score it: hypotheses in the lowercased Moses-tokenised form against
  ``test_2016_flickr.lc.norm.tok.de`` with no further tokenisation (sacreBLEU ``tokenize="none"``, which equals
  ``multi-bleu.perl`` / fairseq on this text);
* ``test_bleu``: sacreBLEU's standard score (its 13a tokenisation of detokenised text against the raw, cased
  references), with its signature.

A ``tok`` model's output is detokenised (Moses) for the second score; a ``raw`` model's output is lowercased, normalised
and tokenised with sacremoses (a Python port of the Moses scripts, so ``test_bleu_tok`` is then very close to, not
byte-for-byte, the dataset's preprocessing) for the first.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax import config as config_lib
from tfjax.data import files, tokenizers
from tfjax.generate import beam_translate, translate
from tfjax.models.transformer import EncoderDecoder, flops_per_token

log = logging.getLogger("tfjax")
LANGUAGES = ("en", "de", "fr")
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
TEXTS = ("raw", "tok")  # the dataset's captions, or their lowercased Moses-tokenised form (multi30k/tok/)
PAD_ID, BOS_ID, EOS_ID = 0, 2, 3  # tokenizers.SEQ2SEQ_SPECIAL_TOKENS


def load_multi30k(split: str, lang: str, data_dir: str | None, text: str = "raw") -> list[str]:
  """The lines (captions) of one Multi30k file, e.g. ``("train", "en")``; ``text="tok"``: their lowercased
  Moses-tokenised form."""
  if lang not in LANGUAGES:
    raise config_lib.ConfigError(f"Multi30k languages are {LANGUAGES}, got {lang!r}")
  if split not in SPLITS:
    raise config_lib.ConfigError(f"Multi30k splits are {tuple(SPLITS)}, got {split!r}")
  if text not in TEXTS:
    raise config_lib.ConfigError(f"config key 'data.text' must be one of {TEXTS}, got {text!r}")
  table = files.MULTI30K if text == "raw" else files.MULTI30K_TOK
  path = files.find_data_file(table[f"{SPLITS[split]}.{lang}"], data_dir or None)
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return f.read().rstrip("\n").split("\n")


# -- the two forms of the text, and BLEU on each -----------------------------------------------------------------------
def moses_tokenise(lines: list[str], lang: str) -> list[str]:
  """``lines`` as the dataset's ``task1-tokenize.sh`` makes them (lowercase, normalise punctuation, Moses-tokenise
  with escaping such as ``&apos;``), through sacremoses."""
  from sacremoses import MosesPunctNormalizer, MosesTokenizer
  normalizer, tokenizer = MosesPunctNormalizer(lang), MosesTokenizer(lang)
  return [tokenizer.tokenize(normalizer.normalize(line.lower()), escape=True, return_str=True) for line in lines]


def moses_detokenise(lines: list[str], lang: str) -> list[str]:
  """Moses-tokenised ``lines`` back to running text (``&apos;`` etc. unescaped), through sacremoses."""
  from sacremoses import MosesDetokenizer
  detokenizer = MosesDetokenizer(lang)
  return [detokenizer.detokenize(line.split()) for line in lines]


def tokenised_bleu(hypotheses: list[str], references: list[str]):
  """Corpus BLEU of already-tokenised ``hypotheses`` against one tokenised reference each, with no further
  tokenisation (sacreBLEU ``tokenize="none"``: ``multi-bleu.perl`` and fairseq's score on such text). Returns
  ``(sacrebleu BLEUScore, signature)``."""
  from sacrebleu.metrics import BLEU
  _check_parallel(hypotheses, references)
  metric = BLEU(tokenize="none", force=True)  # force: the input is tokenised on purpose
  score = metric.corpus_score(hypotheses, [references])
  return score, str(metric.get_signature())


def sacre_bleu(hypotheses: list[str], references: list[str], lowercase: bool = False):
  """sacreBLEU's standard corpus score of detokenised ``hypotheses`` (13a tokenisation, cased unless ``lowercase``).
  Returns ``(sacrebleu BLEUScore, signature)``."""
  from sacrebleu.metrics import BLEU
  _check_parallel(hypotheses, references)
  metric = BLEU(lowercase=lowercase)
  score = metric.corpus_score(hypotheses, [references])
  return score, str(metric.get_signature())


def _check_parallel(hypotheses, references):
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references: one line per sentence needed")


def score_bleu(hypotheses: list[str], split: str, lang: str, data_dir: str | None, text: str, limit: int | None = None
               ) -> tuple[dict[str, Any], dict[str, list[str]]]:
  """Both BLEU scores (see the module docstring) of the translations ``hypotheses`` (in the model's ``text`` form) of
  Multi30k ``split`` into ``lang`` (``limit``: of its first sentences only). Returns ``(scores, hypotheses by form)``:
  ``scores`` has ``{split}_bleu_tok``, ``{split}_bleu`` (and for a ``tok`` model ``{split}_bleu_lc``, case-insensitive),
  each with ``_signature`` (sacreBLEU's) and ``_detail`` (n-gram precisions, brevity penalty, lengths); the forms are
  ``"tok"`` (what ``{split}_bleu_tok`` scored) and ``"detok"`` (what ``{split}_bleu`` scored)."""
  tok_refs = load_multi30k(split, lang, data_dir, "tok")[:limit]
  raw_refs = load_multi30k(split, lang, data_dir, "raw")[:limit]
  if text == "tok":
    forms = {"tok": list(hypotheses), "detok": moses_detokenise(hypotheses, lang)}
  else:
    forms = {"tok": moses_tokenise(hypotheses, lang), "detok": list(hypotheses)}
  scores: dict[str, Any] = {}
  runs = [("bleu_tok", tokenised_bleu(forms["tok"], tok_refs)), ("bleu", sacre_bleu(forms["detok"], raw_refs))]
  if text == "tok":  # a lowercased model cannot restore case: the case-insensitive score beside the cased one
    runs.append(("bleu_lc", sacre_bleu(forms["detok"], raw_refs, lowercase=True)))
  for name, (score, signature) in runs:
    scores.update({f"{split}_{name}": score.score, f"{split}_{name}_signature": signature,
                   f"{split}_{name}_detail": str(score)})
  return scores, forms


def write_bleu_report(directory: str, name: str, scores: dict[str, Any], forms: dict[str, list[str]], lang: str
                      ) -> dict[str, str]:
  """Writes ``DIR/NAME.json`` (the scores) and, beside it, the hypotheses one line per sentence in each scored form:
  ``DIR/NAME.hyp.tok.LANG`` (tokenised BLEU's input) and ``DIR/NAME.hyp.LANG`` (sacreBLEU's). Returns the paths."""
  os.makedirs(directory, exist_ok=True)
  paths = {"scores": os.path.join(directory, f"{name}.json"),
           "tok": os.path.join(directory, f"{name}.hyp.tok.{lang}"),
           "detok": os.path.join(directory, f"{name}.hyp.{lang}")}
  for form in ("tok", "detok"):
    write_lines(paths[form], forms[form])
  with open(paths["scores"] + ".tmp", "w") as f:
    json.dump({**scores, "hypotheses": {"tok": paths["tok"], "detok": paths["detok"]}}, f, indent=2)
  os.replace(paths["scores"] + ".tmp", paths["scores"])
  return paths


def write_lines(path: str, lines: list[str]) -> None:
  """Writes ``lines`` to ``path``, one a line (atomically); a line holding a newline is an error."""
  for i, line in enumerate(lines):
    if "\n" in line:
      raise ValueError(f"hypothesis {i} spans several lines: {line!r}")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  os.replace(path + ".tmp", path)


def pad_rows(rows: list[list[int]], length: int) -> np.ndarray:
  out = np.full((len(rows), length), PAD_ID, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def make_model(config: Any, vocab_size: int) -> EncoderDecoder:
  """The :class:`EncoderDecoder` that ``config.model`` describes."""
  cfg = config_lib.transformer_config(config.model, vocab_size)
  config_lib.check_no_fused_loss(cfg, "the translator")
  return EncoderDecoder(cfg, num_encoder_layers=config.model.get("num_encoder_layers") or None)


def smoothed_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray, smoothing: float = 0.0) -> jnp.ndarray:
  """Cross-entropy ``[B, T]`` of ``logits [B, T, V]`` against ``targets [B, T]`` smoothed by ``smoothing`` (the labels
  ``optax.smooth_labels(one_hot(targets), smoothing)``: ``(1 - smoothing)·(-log p[target]) + smoothing·mean_v(-log
  p[v])``), without building the ``[B, T, V]`` one-hot labels."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if not smoothing:
    return nll
  uniform = -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
  return (1.0 - smoothing) * nll + smoothing * uniform


class TranslationTask:
  """An :class:`EncoderDecoder` trained to translate. Implements :class:`tfjax.tasks.base.Task`."""

  def __init__(self, config: Any, workdir: str | None = None):
    self.config = config
    self.workdir = workdir
    d = config.data
    if d.source == d.target:
      raise config_lib.ConfigError(f"data.source and data.target must differ, both are {d.source!r}")
    style = d.get("bpe", "sentencepiece")
    if style not in tokenizers.BPE_STYLES:
      raise config_lib.ConfigError(f"config key 'data.bpe' must be one of {tokenizers.BPE_STYLES}, got {style!r}")
    self.text_form = d.get("text", "raw")
    text = {(split, lang): load_multi30k(split, lang, config.data_dir, self.text_form) for split in SPLITS
            for lang in (d.source, d.target)}
    for split in SPLITS:
      if len(text[split, d.source]) != len(text[split, d.target]):
        raise ValueError(f"Multi30k {split}: {len(text[split, d.source])} {d.source} lines but "
                         f"{len(text[split, d.target])} {d.target} lines")
    tok_path = os.path.join(workdir, "tokenizer.json") if workdir else None
    if tok_path and os.path.exists(tok_path):  # a resumed run keeps its vocabulary
      self.tokenizer = tokenizers.Tokenizer.from_file(tok_path, eos_token=tokenizers.EOS)
    else:
      self.tokenizer = tokenizers.train_bpe(text["train", d.source] + text["train", d.target], d.vocab_size,
                                            style=style)
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
    self.max_tokens = int(d.get("max_tokens", 0) or 0)
    if self.max_tokens:
      self.bucket_batch_sizes = self._token_batch_sizes(config)
      self.batches_per_epoch = sum(-(-len(r) // n) for r, n in zip(self.buckets[1], self.bucket_batch_sizes))
      log.info("translate: token batches of <= %d positions: %s pairs a batch for buckets %s, %d updates an epoch",
               self.max_tokens, self.bucket_batch_sizes, self.buckets[0], self.batches_per_epoch)
      self._epoch_plan = (-1, [])

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

  def _token_batch_sizes(self, config) -> list[int]:
    """Pairs a batch of each bucket for ``data.max_tokens``: ``max_tokens // width``, rounded down to a multiple of
    ``data.batch_multiple`` (fairseq's ``--required-batch-size-multiple``) and of the devices times
    ``train.grad_accum_steps`` (so every batch divides across them)."""
    if self.max_tokens < 0:
      raise config_lib.ConfigError(f"config key 'data.max_tokens' must be >= 0 (0: batch_size pairs a batch), got "
                                   f"{self.max_tokens}")
    if self.buckets is None:
      raise config_lib.ConfigError("config key 'data.max_tokens' needs data.length_buckets (e.g. '12,16,20,24,32'): "
                                   "a token budget is spent on pairs of one bucket's width")
    multiple = int(config.data.get("batch_multiple", 8))
    if multiple < 1:
      raise config_lib.ConfigError(f"config key 'data.batch_multiple' must be >= 1, got {multiple}")
    multiple = int(np.lcm(multiple, jax.device_count() * config.train.get("grad_accum_steps", 1)))
    widths = self.buckets[0]
    if self.max_tokens < multiple * widths[-1]:
      raise config_lib.ConfigError(f"config key 'data.max_tokens'={self.max_tokens} holds fewer than {multiple} pairs "
                                   f"of the widest bucket ({widths[-1]} positions): raise it to >= "
                                   f"{multiple * widths[-1]}")
    return [self.max_tokens // w // multiple * multiple for w in widths]

  def _token_epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """fairseq's epoch of token batches: ``(bucket, rows)`` for every batch, each bucket's pairs shuffled and cut into
    batches of its size (the last one short), all the batches then shuffled; a pure function of (seed, epoch)."""
    if self._epoch_plan[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch, 1])  # a stream of its own: [seed, step] draws pair batches
      batches = []
      for b, (rows, n) in enumerate(zip(self.buckets[1], self.bucket_batch_sizes)):
        order = rng.permutation(rows)
        batches += [(b, order[i:i + n]) for i in range(0, len(order), n)]
      self._epoch_plan = (epoch, [batches[i] for i in rng.permutation(len(batches))])
    return self._epoch_plan[1]

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
    rng = np.random.default_rng([self.seed, step])
    length = None
    if self.max_tokens:  # the step's batch of its epoch, padded to its bucket's batch size with empty rows
      b, rows = self._token_epoch(step // self.batches_per_epoch)[step % self.batches_per_epoch]
      n, length = self.bucket_batch_sizes[b], self.buckets[0][b]
      rows = np.concatenate([rows, np.full(n - len(rows), -1, rows.dtype)])
    elif self.buckets is None:
      rows = rng.integers(0, len(self.pairs["train"][0]), self.batch_size)
    else:
      lengths, bucket_rows = self.buckets
      sizes = np.array([len(r) for r in bucket_rows], np.float64)
      b = rng.choice(len(lengths), p=sizes / sizes.sum())
      rows, length = bucket_rows[b][rng.integers(0, len(bucket_rows[b]), self.batch_size)], lengths[b]
    if len(rows) % num_shards:
      raise ValueError(f"a batch of {len(rows)} pairs does not divide into {num_shards} processes")
    per = len(rows) // num_shards
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
    smoothing = self.config.train.label_smoothing
    ce = smoothed_cross_entropy(logits, batch["targets"], smoothing if train else 0.0)
    metrics = {"accuracy": jnp.sum((jnp.argmax(logits, axis=-1) == batch["targets"]) * w)}
    if not train and smoothing:  # the training objective on validation: fairseq's validation loss (its --patience's)
      metrics["smoothed_loss"] = jnp.sum(smoothed_cross_entropy(logits, batch["targets"], smoothing) * w)
    return jnp.sum(ce * w), jnp.sum(w), metrics

  def flops_per_token(self, params) -> float:
    return flops_per_token(self.model_cfg, params, self.max_len, self.max_len, self.model.num_encoder_layers)

  def translate(self, params, sources: list[str], batch_size: int = 128, beam_size: int | None = None) -> list[str]:
    """Translations of ``sources`` (strings of the source language, in the task's text form): greedy, or beam search
    with ``beam_size`` (default ``config.eval.beam_size``) > 1."""
    e = self.config.get("eval", {})
    return translate_texts(self.model, params, self.tokenizer, sources, batch_size,
                           beam_size=beam_size or e.get("beam_size", 1), length_penalty=e.get("length_penalty", 0.6),
                           length_norm=e.get("length_norm", "gnmt"))

  def bleu(self, params, split: str = "test", limit: int | None = None, report_name: str | None = None,
           beam_size: int | None = None) -> dict[str, Any]:
    """Both BLEU scores (:func:`score_bleu`) of the translations of ``split`` (``limit``: its first pairs only;
    ``beam_size``: default ``config.eval.beam_size``) and three examples; ``report_name``: also written, with the
    hypotheses, to ``WORKDIR/bleu/`` (:func:`write_bleu_report`)."""
    d = self.config.data
    sources, refs = self.texts[split, d.source][:limit], self.texts[split, d.target][:limit]
    hyps = self.translate(params, sources, beam_size=beam_size)
    scores, forms = score_bleu(hyps, split, d.target, self.config.data_dir, self.text_form, limit)
    if report_name and self.workdir:
      write_bleu_report(os.path.join(self.workdir, "bleu"), report_name, scores, forms, d.target)
    return {**scores, "examples": [
        {"source": s, "reference": r, "translation": h} for s, r, h in list(zip(sources, refs, hyps))[:3]]}

  def eval_report(self, params) -> dict[str, float]:
    """At each periodic evaluation: greedy BLEU on the validation set (``eval.val_bleu_sentences`` of it), the
    tokenised one for a ``tok`` model (the literature's), sacreBLEU for a ``raw`` one."""
    n = self.config.eval.get("val_bleu_sentences", 0)
    if not n:
      return {}
    scores = self.bleu(params, "val", n if n > 0 else None, beam_size=1)
    return {"eval_bleu": scores["val_bleu_tok" if self.text_form == "tok" else "val_bleu"]}

  def final_report(self, params, step: int | None = None) -> dict[str, Any]:
    """The test BLEU scores of the final parameters (those after ``step`` steps, default ``train.num_steps``), or of
    the average of the last ``eval.average_last`` checkpoints (the final parameters and the ``average_last - 1``
    checkpoints before ``step`` in ``WORKDIR/checkpoints``); with ``eval.report_val``, the validation scores too.
    Written with the hypotheses to ``WORKDIR/bleu/``."""
    e = self.config.eval
    n = e.bleu_sentences
    if not n:
      return {}
    out: dict[str, Any] = {}
    k = e.get("average_last", 0)
    if k > 1:
      params, steps = self._average_with_last_checkpoints(params, k, self.config.train.num_steps if step is None
                                                          else step)
      out["averaged_steps"] = steps
    name = f"{'avg' + str(k) + '.' if k > 1 else ''}{'beam' + str(e.beam_size) if e.beam_size > 1 else 'greedy'}"
    if e.get("report_val", False):
      out.update({key: v for key, v in self.bleu(params, "val", report_name=f"val.{name}").items()
                  if key != "examples"})
    out.update(self.bleu(params, "test", n if n > 0 else None, report_name=f"test.{name}"))
    return out

  def _average_with_last_checkpoints(self, params, k: int, final: int):
    """The mean of ``params`` (step ``final``'s) and the ``k - 1`` newest complete checkpoints before step ``final``,
    and the steps averaged."""
    from tfjax.train import average
    from tfjax.train.checkpoint import CheckpointError
    if not self.workdir:
      raise CheckpointError("eval.average_last needs the task's workdir (its checkpoints)")
    # read-only: the loop's save of the final step may still be in flight (a CheckpointManager opened here would
    # remove its temporary directory)
    earlier = [s for s in average.checkpoint_steps(self.workdir) if s < final]
    if len(earlier) < k - 1:
      raise CheckpointError(f"eval.average_last={k} needs {k - 1} checkpoints before step {final}, the workdir keeps "
                            f"{earlier}: set train.max_to_keep >= {k} and train.checkpoint_every small enough")
    steps = earlier[-(k - 1):]
    trees = [average.load_checkpoint_params(self.workdir, s) for s in steps] + [jax.device_get(params)]
    return average.average_params(trees), steps + [final]


def translate_texts(model: EncoderDecoder, params, tokenizer: tokenizers.Tokenizer, sources: list[str],
                    batch_size: int = 128, temperature: float = 0.0, seed: int = 0, beam_size: int = 1,
                    length_penalty: float = 0.6, length_norm: str = "gnmt", too_long: str = "cut") -> list[str]:
  """Translations of ``sources`` (one string each, in the model's text form): greedy by default, ``temperature`` > 0
  samples, ``beam_size`` > 1 is beam search (:func:`tfjax.generate.beam_translate`, hypotheses ranked by
  :func:`tfjax.generate.length_normalised` scores); ``batch_size`` at a time (the last batch padded, so one compiled
  shape serves them all).

  An empty (or all-space) source translates to ``""`` without running the model. A source longer than the context
  window (``max_len - 1`` tokens and its ``[EOS]``): ``too_long="cut"`` keeps its first ``max_len - 1`` tokens and logs
  a warning with the count, ``"error"`` raises ValueError naming the first such line.
  """
  if too_long not in ("cut", "error"):
    raise ValueError(f"too_long must be 'cut' or 'error', got {too_long!r}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  max_len = model.cfg.max_len
  out = [""] * len(sources)
  todo = [i for i, text in enumerate(sources) if text.strip()]
  encoded = tokenizer.encode_batch([sources[i] for i in todo]) if todo else []
  long_lines = [i for i, ids in zip(todo, encoded) if len(ids) > max_len - 1]
  if long_lines:
    first = long_lines[0]
    msg = (f"{len(long_lines)} of {len(sources)} sources are longer than the context window ({max_len - 1} tokens + "
           f"[EOS]), the first is line {first + 1} ({len(tokenizer.encode(sources[first]))} tokens)")
    if too_long == "error":
      raise ValueError(msg)
    log.warning("%s: translating their first %d tokens", msg, max_len - 1)
  for start in range(0, len(todo), batch_size):
    chunk = [ids[:max_len - 1] + [EOS_ID] for ids in encoded[start:start + batch_size]]
    n = len(chunk)
    chunk += [[EOS_ID]] * (batch_size - n)
    src = pad_rows(chunk, max_len)
    if beam_size > 1:
      ids, _ = beam_translate(model, params, src, src != PAD_ID, max_len, beam_size=beam_size, bos_id=BOS_ID,
                              eos_id=EOS_ID, pad_id=PAD_ID, length_penalty=length_penalty, length_norm=length_norm)
    else:
      ids = translate(model, params, src, src != PAD_ID, max_len, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
                      rng=jax.random.key(seed + start), temperature=temperature)
    for i, row in zip(todo[start:start + n], ids[:n]):
      out[i] = tokenizer.decode([t for t in row if t not in (PAD_ID, EOS_ID)])
  return out


def load_for_inference(workdir: str, step: int | None = None, best: bool = False
                       ) -> tuple[EncoderDecoder, Any, tokenizers.Tokenizer, Any]:
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
  tokenizer = tokenizers.Tokenizer.from_file(tok_path, eos_token=tokenizers.EOS)
  params, _ = restore.load_params(workdir, step, best=best)
  return make_model(config, tokenizer.vocab_size), params, tokenizer, config

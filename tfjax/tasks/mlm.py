"""Masked-language-model pretraining of BERT (Devlin et al., 2019), as a :class:`tfjax.tasks.base.Task`.

Data: a WordPiece tokenizer is trained on the training text (or loaded from ``workdir/tokenizer.json`` on resume, or
from ``data.tokenizer_file``). Hugging Face ``tokenizers`` trains WordPiece non-deterministically (the ids of its
``##`` pieces follow a hash map's order and break ties between merges: huggingface/tokenizers#1794), so two fresh
runs of one config differ in a few of 8192 tokens; give both the same ``data.tokenizer_file`` to compare runs exactly.
The text's lines are tokenised and concatenated into one stream, cut into sequences ``[CLS] t_1 .. t_{T-2} [SEP]``
(the last one padded with ``[PAD]``, ``attention_mask`` 0 there).

Masking (BERT paper, section 3.1 and appendix A.1), *dynamic*: new positions every step, drawn by
``numpy.random.default_rng([seed, step])`` so a batch is a pure function of (seed, step). In each sequence
``round(mask_prob · n)`` of its ``n`` real, non-special tokens are chosen (at least one, at most ``max_predictions``);
of those, 80% become ``[MASK]``, 10% a random non-special token, 10% stay unchanged. The loss is the cross-entropy at
the chosen positions only; the head runs only there (``masked_positions [B, P]``, padded entries have weight 0).
Evaluation uses fixed masks (the same on every call) on the evaluation text.

Batch keys: ``inputs``, ``attention_mask``, ``token_type_ids`` ``[B, T]``; ``masked_positions``, ``masked_labels``
(int) and ``masked_weights`` (float) ``[B, P]``.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax import config as config_lib
from tfjax.data import files
from tfjax.data import tokenizers
from tfjax.models.bert import BERT

log = logging.getLogger("tfjax")

DATASETS = {"wikitext2_valid": files.WIKITEXT2_VALID, "wikitext2_test": files.WIKITEXT2_TEST,
            "tinyshakespeare": files.TINY_SHAKESPEARE, "lee_background": files.LEE_BACKGROUND,
            "multi30k_train_en": files.MULTI30K["train.en"]}


def read_lines(dataset: str, data_dir: str | None, clean_wikitext: bool = False) -> list[str]:
  """Non-empty lines of a known dataset name (:data:`DATASETS`) or a text file path (``.gz`` read as gzip).

  Several sources joined by ``+`` (``"wikitext2_valid+lee_background"``) give their lines in that order.
  """
  if "+" in dataset:
    return [line for part in dataset.split("+") for line in read_lines(part.strip(), data_dir, clean_wikitext)]
  path = files.find_data_file(DATASETS.get(dataset, dataset), data_dir or None)
  with (gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")) as f:
    text = f.read()
  if clean_wikitext:
    text = files.clean_wikitext(text)
  lines = [line.strip() for line in text.splitlines()]
  lines = [line for line in lines if line]
  if not lines:
    raise config_lib.ConfigError(f"data file {path} has no text")
  return lines


def pack_sequences(token_lists: list[list[int]], seq_len: int, cls_id: int, sep_id: int, pad_id: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Concatenates the token lists and cuts them into ``[CLS] ... [SEP]`` rows of ``seq_len`` (last row padded).

  Returns ``ids [N, seq_len]`` (int32) and ``attention_mask [N, seq_len]`` (int32, 1 = real token).
  """
  if seq_len < 3:
    raise ValueError(f"seq_len must be >= 3 ([CLS] token [SEP]), got {seq_len}")
  stream = np.fromiter((t for toks in token_lists for t in toks), dtype=np.int32)
  body = seq_len - 2
  n = max(1, math.ceil(len(stream) / body))
  ids = np.full((n, seq_len), pad_id, np.int32)
  mask = np.zeros((n, seq_len), np.int32)
  for i in range(n):
    chunk = stream[i * body:(i + 1) * body]
    row = np.concatenate([[cls_id], chunk, [sep_id]])
    ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return ids, mask


def mask_tokens(ids: np.ndarray, candidates: np.ndarray, rng: np.random.Generator, *, mask_id: int,
                random_ids: np.ndarray, max_predictions: int, mask_prob: float = 0.15, mask_token_prob: float = 0.8,
                random_token_prob: float = 0.1) -> dict[str, np.ndarray]:
  """BERT's masking of ``ids [B, T]``; ``candidates [B, T]`` (bool) marks the tokens that may be chosen.

  Returns ``inputs [B, T]`` (the corrupted ids) and ``masked_positions``, ``masked_labels`` (the original ids),
  ``masked_weights`` ``[B, max_predictions]`` (1.0 for a chosen position, 0.0 for an unused slot).
  """
  if not 0.0 < mask_prob < 1.0:
    raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
  if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1.0:
    raise ValueError(f"mask_token_prob={mask_token_prob} and random_token_prob={random_token_prob} must be >= 0 "
                     "and sum to at most 1")
  batch = ids.shape[0]
  inputs = ids.copy()
  positions = np.zeros((batch, max_predictions), np.int32)
  labels = np.zeros((batch, max_predictions), np.int32)
  weights = np.zeros((batch, max_predictions), np.float32)
  for b in range(batch):
    cand = np.flatnonzero(candidates[b])
    if cand.size == 0:
      continue
    n = min(max_predictions, max(1, int(round(cand.size * mask_prob))))
    chosen = np.sort(rng.choice(cand, size=n, replace=False))
    u = rng.random(n)
    replace_mask = u < mask_token_prob
    replace_random = (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    inputs[b, chosen[replace_mask]] = mask_id
    inputs[b, chosen[replace_random]] = rng.choice(random_ids, size=int(replace_random.sum()))
    positions[b, :n], labels[b, :n], weights[b, :n] = chosen, ids[b, chosen], 1.0
  return {"inputs": inputs, "masked_positions": positions, "masked_labels": labels, "masked_weights": weights}


REPLACEMENTS = ("mask", "random", "unchanged")


def replacement_kind(batch: dict[str, np.ndarray], mask_id: int) -> np.ndarray:
  """What BERT's masking did at each chosen position: ``[B, P]`` int, 0 = replaced by ``[MASK]``, 1 = by a random
  token, 2 = left unchanged (a random draw of the original token counts as unchanged), -1 = unused slot."""
  rows = np.arange(batch["inputs"].shape[0])[:, None]
  seen = batch["inputs"][rows, batch["masked_positions"]]  # [B, P]: the input the model saw there
  kind = np.where(seen == mask_id, 0, np.where(seen == batch["masked_labels"], 2, 1))
  return np.where(batch["masked_weights"] > 0, kind, -1).astype(np.int32)


def scores_by_replacement(logits: np.ndarray, batch: dict[str, np.ndarray], mask_id: int) -> dict[str, np.ndarray]:
  """Per replacement kind (:data:`REPLACEMENTS`), sums over the chosen positions of ``logits [B, P, V]``:
  ``loss``, ``correct`` and ``count`` (arrays of 3). Only the ``[MASK]`` positions measure prediction from
  context: an unchanged position shows the answer, which a model that copies its input gets right."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, batch["masked_labels"][..., None].astype(np.int64), -1)[..., 0]
  correct = logits.argmax(-1) == batch["masked_labels"]
  kind = replacement_kind(batch, mask_id)
  out = {"loss": np.zeros(3), "correct": np.zeros(3), "count": np.zeros(3)}
  for k in range(3):
    at = kind == k
    out["loss"][k], out["correct"][k], out["count"][k] = ce[at].sum(), correct[at].sum(), at.sum()
  return out


def summarize_by_replacement(sums: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
  """``{kind: {"loss", "accuracy", "count"}}`` from summed :func:`scores_by_replacement` outputs."""
  return {name: {"loss": float(sums["loss"][k] / max(sums["count"][k], 1)),
                 "accuracy": float(sums["correct"][k] / max(sums["count"][k], 1)), "count": int(sums["count"][k])}
          for k, name in enumerate(REPLACEMENTS)}


def context_baselines(train_ids: np.ndarray, train_mask: np.ndarray, batches, mask_id: int, vocab_size: int,
                      chunk: int = 1024) -> dict[str, float]:
  """Accuracy at the ``[MASK]`` positions of ``batches`` of three count models of the training rows, the yardsticks
  of context use (a BERT that guesses above ``unigram`` reads its context; above ``neighbours``, more than the two
  adjacent tokens):

  - ``unigram``: always the most frequent training token;
  - ``left_bigram``: the most frequent successor of the token on the left, ``argmax_w c(l, w)``;
  - ``neighbours``: both adjacent tokens, naive Bayes over bigram counts, ``argmax_w c(l, w) · c(w, r) / c(w)``
    (add-0.01 smoothing by unigram frequency).

  ``train_ids``/``train_mask`` ``[N, T]``: the packed training rows (bigrams within a row); ``batches``: evaluation
  batches as :meth:`MLMTask.eval_batches` yields them. The counts are sparse (``scipy.sparse``) and the scores
  computed ``chunk`` positions at a time: memory stays ``O(chunk · V)``.
  """
  import scipy.sparse  # pylint: disable=import-outside-toplevel  (a JAX dependency)
  real = train_mask > 0
  pair = real[:, :-1] & real[:, 1:]
  left, right = train_ids[:, :-1][pair], train_ids[:, 1:][pair]
  counts = scipy.sparse.csr_matrix((np.ones(left.size, np.float32), (left, right)), shape=(vocab_size, vocab_size))
  by_right = counts.T.tocsr()  # by_right[r, w] = c(w, r)
  uni = np.bincount(train_ids[real], minlength=vocab_size).astype(np.float64) + 0.1
  prior = 0.01 * uni / uni.sum()
  ls, rs, ys = [], [], []
  for batch in batches:
    kind = replacement_kind(batch, mask_id)
    b, p = np.nonzero(kind == 0)
    pos = batch["masked_positions"][b, p]
    ls.append(batch["inputs"][b, pos - 1])  # [CLS] at position 0: never a candidate, so pos >= 1
    inputs = np.pad(batch["inputs"], ((0, 0), (0, 1)), constant_values=0)
    rs.append(inputs[b, pos + 1])
    ys.append(batch["masked_labels"][b, p])
  l, r, y = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (ls, rs, ys))
  correct = np.zeros(3)
  for i in range(0, len(y), chunk):
    lc, rc, yc = l[i:i + chunk], r[i:i + chunk], y[i:i + chunk]
    after_left = counts[lc].toarray() + prior  # [n, V]
    before_right = by_right[rc].toarray() + prior
    correct[0] += (yc == np.argmax(uni)).sum()
    correct[1] += (np.argmax(after_left, -1) == yc).sum()
    correct[2] += (np.argmax(np.log(after_left) + np.log(before_right) - np.log(uni), -1) == yc).sum()
  n = max(len(y), 1)
  return {"unigram": float(correct[0] / n), "left_bigram": float(correct[1] / n),
          "neighbours": float(correct[2] / n), "count": int(len(y))}


def build_model(config: Any, vocab_size: int) -> BERT:
  """The BERT of ``config.model`` (keys as in :func:`tfjax.config.transformer_config`, plus ``type_vocab_size``)."""
  # BERT draws every weight from N(0, 0.02), the residual branches' output projections too (no GPT-2 1/sqrt(2L))
  cfg = config_lib.transformer_config(config.model, vocab_size,
                                      scale_residual_init=config.model.get("scale_residual_init", False))
  if cfg.positional not in ("learned", "rope"):
    raise config_lib.ConfigError(f"config key 'model.positional' must be 'learned' or 'rope' for BERT, got "
                                 f"{cfg.positional!r}")
  config_lib.check_no_fused_loss(cfg, "BERT")
  return BERT(cfg, type_vocab_size=config.model.get("type_vocab_size", 2))


def _check_masking_config(seq_len: int, mask_prob: float, mask_token_prob: float, random_token_prob: float) -> None:
  """The config's sequence length and masking probabilities, each a :class:`ConfigError` naming its key."""
  if seq_len < 3:
    raise config_lib.ConfigError(f"data.seq_len must be >= 3 ([CLS] token [SEP]), got {seq_len}")
  if not 0.0 < mask_prob < 1.0:
    raise config_lib.ConfigError(f"data.mask_prob must be in (0, 1), got {mask_prob}")
  if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1.0:
    raise config_lib.ConfigError(f"data.mask_token_prob={mask_token_prob} and data.random_token_prob="
                                 f"{random_token_prob} must be >= 0 and sum to at most 1")


class MLMTask:
  """BERT trained with the masked-LM objective. Implements :class:`tfjax.tasks.base.Task`.

  Constructed as ``MLMTask(config, workdir)``; ``workdir`` (may be None in tests) receives ``tokenizer.json``.
  """

  def __init__(self, config: Any, workdir: str | None = None):
    self.config = config
    self.workdir = os.path.abspath(workdir) if workdir else None
    d = config.data
    _check_masking_config(d.seq_len or config.model.max_len, d.get("mask_prob", 0.15), d.get("mask_token_prob", 0.8),
                          d.get("random_token_prob", 0.1))  # before the tokenizer is trained
    clean = d.get("clean_wikitext", True)
    train_lines = read_lines(d.dataset, config.data_dir, clean)
    eval_lines = read_lines(d.eval_dataset, config.data_dir, clean)

    def texts():
      return train_lines

    tok_path = os.path.join(self.workdir, "tokenizer.json") if self.workdir else None
    given = d.get("tokenizer_file")  # a fixed tokenizer (e.g. another run's): comparable runs, no training
    if given:
      if not os.path.isfile(given):
        raise config_lib.ConfigError(f"config key 'data.tokenizer_file': no file {given} (a tokenizer.json, e.g. "
                                     "WORKDIR/tokenizer.json of an earlier MLM run)")
      if tok_path and not os.path.exists(tok_path):
        os.makedirs(self.workdir, exist_ok=True)
        with open(given, "rb") as src, open(tok_path + ".tmp", "wb") as dst:
          dst.write(src.read())
        os.replace(tok_path + ".tmp", tok_path)
      self.tokenizer = tokenizers.Tokenizer.from_file(tok_path or given)
    elif tok_path:
      self.tokenizer = tokenizers.load_or_train_wordpiece(tok_path, texts, d.vocab_size, d.get("min_frequency", 2),
                                                         d.get("lowercase", True))
    else:
      self.tokenizer = tokenizers.train_wordpiece(texts(), d.vocab_size, d.get("min_frequency", 2),
                                                 d.get("lowercase", True))
    tok = self.tokenizer
    self.pad_id, self.cls_id, self.sep_id, self.mask_id = (
        tok.token_to_id(t) for t in (tokenizers.PAD, tokenizers.CLS, tokenizers.SEP, tokenizers.MASK))
    if None in (self.pad_id, self.cls_id, self.sep_id, self.mask_id):
      raise config_lib.ConfigError(f"tokenizer {tok_path or given} lacks one of [PAD] [CLS] [SEP] [MASK] (config key "
                                   "'data.tokenizer_file' wants a WordPiece tokenizer of an MLM run)")
    words = fillable_tokens(tok, tok.vocab_size)  # the non-special tokens
    self.random_ids = np.flatnonzero(words)  # random replacements

    self.seq_len = d.seq_len or config.model.max_len
    self.model = build_model(config, tok.vocab_size)
    if self.seq_len > self.model.cfg.max_len:
      raise config_lib.ConfigError(f"data.seq_len={self.seq_len} is longer than model.max_len="
                                   f"{self.model.cfg.max_len}")
    self.mask_prob = d.get("mask_prob", 0.15)
    self.max_predictions = d.get("max_predictions", 0) or math.ceil(self.mask_prob * self.seq_len)
    self.train_ids, self.train_mask = self._encode(train_lines)
    self.eval_ids, self.eval_mask = self._encode(eval_lines)
    self.is_special = ~words
    self.batch_size = config.train.batch_size
    self.seed = config.seed
    log.info("mlm: vocab %d, %d training and %d evaluation sequences of %d tokens, %d predictions per sequence",
             tok.vocab_size, len(self.train_ids), len(self.eval_ids), self.seq_len, self.max_predictions)

  def _encode(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    token_lists = self.tokenizer.encode_batch(lines, add_special_tokens=False)
    return pack_sequences(token_lists, self.seq_len, self.cls_id, self.sep_id, self.pad_id)

  def _masked_batch(self, ids: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    candidates = (mask > 0) & ~self.is_special[ids]
    d = self.config.data
    batch = mask_tokens(ids, candidates, rng, mask_id=self.mask_id, random_ids=self.random_ids,
                        max_predictions=self.max_predictions, mask_prob=self.mask_prob,
                        mask_token_prob=d.get("mask_token_prob", 0.8),
                        random_token_prob=d.get("random_token_prob", 0.1))
    batch["attention_mask"] = mask
    batch["token_type_ids"] = np.zeros_like(ids)
    return batch

  @staticmethod
  def _rows(batch: dict[str, np.ndarray], shard: int, num_shards: int) -> dict[str, np.ndarray]:
    n = next(iter(batch.values())).shape[0]
    if n % num_shards:
      raise ValueError(f"batch_size={n} does not divide into {num_shards} processes")
    per = n // num_shards
    return {k: v[shard * per:(shard + 1) * per] for k, v in batch.items()}

  # -- Task protocol -------------------------------------------------------------------------------------------------
  def init_params(self, rng):
    ids = jnp.zeros((1, self.seq_len), jnp.int32)
    return self.model.init(rng, ids, attention_mask=jnp.ones_like(ids),
                           masked_positions=jnp.zeros((1, self.max_predictions), jnp.int32))["params"]

  def loss_fn(self, params, batch, rng, train):
    logits = self.model.apply({"params": params}, batch["inputs"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"], masked_positions=batch["masked_positions"],
                              deterministic=not train, rngs={"dropout": rng} if train and rng is not None else None)
    labels, weights = batch["masked_labels"], batch["masked_weights"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(ce * weights), jnp.sum(weights), {"accuracy": jnp.sum(correct * weights)}

  def train_batch(self, step, shard=0, num_shards=1):
    """Sequences of epoch ``e = step·B // N`` in a (seed, e) permutation; masks from ``rng([seed, step])``."""
    n, b = len(self.train_ids), self.batch_size
    index = np.arange(step * b, (step + 1) * b)
    epochs = index // n
    rows = np.empty(b, np.int64)
    for e in np.unique(epochs):
      perm = np.random.default_rng([self.seed, 1, int(e)]).permutation(n)
      rows[epochs == e] = perm[index[epochs == e] % n]
    batch = self._masked_batch(self.train_ids[rows], self.train_mask[rows],
                               np.random.default_rng([self.seed, 0, int(step)]))
    return self._rows(batch, shard, num_shards)

  def eval_batches(self, shard=0, num_shards=1) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation text in order (``train.eval_steps`` batches; 0 = all of it), with fixed masks. The last batch
    is completed with all-padding rows of weight 0."""
    n, b = len(self.eval_ids), self.batch_size
    num = math.ceil(n / b)
    steps = self.config.train.get("eval_steps", 0)
    num = min(num, steps) if steps else num
    for i in range(num):
      ids = np.full((b, self.seq_len), self.pad_id, np.int32)
      mask = np.zeros((b, self.seq_len), np.int32)
      chunk = slice(i * b, min((i + 1) * b, n))
      m = chunk.stop - chunk.start
      ids[:m], mask[:m] = self.eval_ids[chunk], self.eval_mask[chunk]
      batch = self._masked_batch(ids, mask, np.random.default_rng([self.seed, 2, i]))
      yield self._rows(batch, shard, num_shards)

  def flops_per_token(self, params) -> float:
    """Training FLOPs per input token: ``6·N_body + 12·L·T·D`` plus the head at ``P/T`` of the positions."""
    cfg = self.model.cfg
    p = params["params"] if "params" in params else params
    body = sum(x.size for x in jax.tree.leaves(p["encoder"]))
    head = cfg.emb_dim * cfg.emb_dim + cfg.emb_dim * cfg.vocab_size
    head_dim = cfg.head_width
    return (6.0 * body + 12.0 * cfg.num_layers * self.seq_len * cfg.num_heads * head_dim
            + 6.0 * head * self.max_predictions / self.seq_len)

  def evaluate_by_replacement(self, params) -> dict[str, dict[str, float]]:
    """Masked-token loss and accuracy on the evaluation batches split by what the masking did at each position
    (``[MASK]`` / random / unchanged; see :func:`scores_by_replacement`)."""
    logits_fn = jax.jit(lambda p, b: self.model.apply(
        {"params": p}, b["inputs"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
        masked_positions=b["masked_positions"]))
    total = {"loss": np.zeros(3), "correct": np.zeros(3), "count": np.zeros(3)}
    for batch in self.eval_batches():
      sums = scores_by_replacement(np.asarray(logits_fn(params, batch)), batch, self.mask_id)
      total = {k: total[k] + sums[k] for k in total}
    return summarize_by_replacement(total)

  def final_report(self, params) -> dict[str, Any]:
    """Evaluation by replacement kind (``eval_by_replacement``: accuracy at the ``[MASK]`` positions is what shows
    context use) beside count models of the training text at the same positions (``mask_baselines``, see
    :func:`context_baselines`); fill-mask predictions for ``config.fill_mask.texts``; exports the model and tokenizer
    as a Hugging Face directory ``workdir/hf`` (post-LN models only): ``BertForMaskedLM`` with learned positions,
    ``RoFormerForMaskedLM`` with RoPE."""
    out: dict[str, Any] = {"eval_by_replacement": self.evaluate_by_replacement(params),
                           "mask_baselines": context_baselines(self.train_ids, self.train_mask, self.eval_batches(),
                                                               self.mask_id, self.tokenizer.vocab_size)}
    log.info("accuracy at [MASK] positions: %.1f%% (count models of the training text: unigram %.1f%%, left "
             "bigram %.1f%%, both neighbours %.1f%%)", 100 * out["eval_by_replacement"]["mask"]["accuracy"],
             *(100 * out["mask_baselines"][k] for k in ("unigram", "left_bigram", "neighbours")))
    fm = self.config.get("fill_mask")
    if fm is not None:
      out["fill_mask"] = {text: fill_mask(self.model, params, self.tokenizer, text, fm.get("top_k", 5))
                          for text in fm.get("texts", ())}
    if self.workdir and not self.model.cfg.pre_ln:
      from tfjax import hf
      hf_dir = os.path.join(self.workdir, "hf")
      hf.save(self.model, params, hf_dir, tokenizer_file=os.path.join(self.workdir, "tokenizer.json"))
      out["hf_export"] = hf_dir
    return out


def load_for_inference(path: str, step: int | None = None, best: bool = False
                       ) -> tuple[BERT, Any, tokenizers.Tokenizer]:
  """``(model, params, tokenizer)`` from a training workdir or a Hugging Face BERT directory.

  ``path`` is either a Hugging Face ``BertForMaskedLM`` / ``RoFormerForMaskedLM`` directory (``config.json`` +
  ``model.safetensors`` + a tokenizer), or a workdir of ``experiments/train.py`` with an MLM config: its
  ``config.json``, ``tokenizer.json`` and the checkpoint at ``step`` (default: the latest; ``best``: the lowest
  evaluation loss, with ``train.keep_best``), read by :mod:`tfjax.train.restore`, or, without checkpoints, its ``hf/``
  export.
  """
  from tfjax import hf
  from tfjax.train import restore
  if hf.is_hf_dir(path):
    model, params = hf.load(path)
    if not isinstance(model, BERT):
      raise ValueError(f"{path} holds a {type(model).__name__}, not a BERT")
    return model, params, hf.load_tokenizer(path)
  steps = restore.checkpoint_steps(path)
  if not steps and not best:
    if hf.is_hf_dir(os.path.join(path, "hf")):
      return load_for_inference(os.path.join(path, "hf"))
    raise FileNotFoundError(f"{path} is neither a Hugging Face BERT directory nor a training workdir with "
                            "checkpoints/ (or an hf/ export)")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"no complete checkpoint at step {step} in {os.path.join(path, 'checkpoints')}; "
                            f"have {steps}")
  tok_path = os.path.join(path, "tokenizer.json")
  for f in (os.path.join(path, "config.json"), tok_path):
    if not os.path.isfile(f):
      raise FileNotFoundError(f"workdir {path} has checkpoints but no {os.path.basename(f)}")
  config = restore.load_config(path)
  if config.get("task") != "mlm":
    raise ValueError(f"{path} was trained with task={config.get('task')!r}, not 'mlm'")
  tokenizer = tokenizers.Tokenizer.from_file(tok_path)
  params, _ = restore.load_params(path, step, best=best)
  return build_model(config, tokenizer.vocab_size), params, tokenizer


def fillable_tokens(tokenizer: tokenizers.Tokenizer, vocab_size: int) -> np.ndarray:
  """``[vocab_size]`` bool (the model's vocabulary): the tokens a blank may be filled with, every one of the
  tokenizer's but its special tokens (``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``): no training target is
  one of them, and a blank filled with one is no word (decoding drops it). Rows of a padded vocabulary past the
  tokenizer's are not fillable either."""
  fillable = np.arange(vocab_size) < tokenizer.vocab_size
  special = np.asarray(tokenizer.special_ids(), np.int64)
  fillable[special[special < vocab_size]] = False
  return fillable


def fill_mask(model: BERT, params, tokenizer: tokenizers.Tokenizer, text: str, top_k: int = 5
              ) -> list[list[tuple[str, float]]]:
  """The ``top_k`` (token, probability) for each ``[MASK]`` in ``text``, in order of the masks: the model's
  distribution at that blank over the :func:`fillable_tokens` (the special tokens left out, the rest renormalised)."""
  if top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  ids, blanks = _blanks(model, tokenizer, text)
  where = np.flatnonzero(blanks)
  logits = fill_mask_logits(model, params, jnp.asarray(ids[None]), jnp.asarray(where[None]))
  probs = np.asarray(jax.nn.softmax(logits[0], axis=-1, where=fillable_tokens(tokenizer, model.cfg.vocab_size)))
  out = []
  for p in probs:
    top = np.argsort(-p)[:top_k]
    out.append([(tokenizer.id_to_token(int(i)), float(p[i])) for i in top])
  return out


def sample_fills(model: BERT, params, tokenizer: tokenizers.Tokenizer, text: str, num_samples: int, rng: jax.Array,
                 temperature: float = 1.0) -> list[str]:
  """``num_samples`` texts: ``text`` with its ``[MASK]`` blanks filled by :func:`sample_masks` at ``temperature``."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  ids, blanks = _blanks(model, tokenizer, text)
  filled = sample_masks(model, params, np.repeat(ids[None], num_samples, 0), np.repeat(blanks[None], num_samples, 0),
                        rng, temperature=temperature, fillable=fillable_tokens(tokenizer, model.cfg.vocab_size))
  return [tokenizer.decode(row) for row in filled]


def _blanks(model: BERT, tokenizer: tokenizers.Tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
  """``text``'s token ids ``[T]`` and where its ``[MASK]`` blanks are ``[T]`` (bool); an error unless it has one and
  fits the context window."""
  ids = np.asarray(tokenizer.encode(text), np.int32)
  blanks = ids == tokenizer.token_to_id(tokenizers.MASK)
  if not blanks.any():
    raise ValueError(f"no {tokenizers.MASK} token in {text!r}")
  if len(ids) > model.cfg.max_len:
    shown = text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"
    raise ValueError(f"{shown!r} is {len(ids)} tokens long, more than max_len={model.cfg.max_len}")
  return ids, blanks


@functools.partial(jax.jit, static_argnums=0)
def fill_mask_logits(model, params, ids, positions):
  """BERT's logits ``[B, P, V]`` at ``positions [B, P]`` of ``ids [B, T]`` (every token real)."""
  return model.apply({"params": params}, ids, attention_mask=jnp.ones_like(ids), masked_positions=positions)


def sample_masks(model: BERT, params, ids, masked, rng: jax.Array, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, fillable=None) -> np.ndarray:
  """``ids [B, T]`` with every position of ``masked [B, T]`` (bool) filled by sampling, one at a time, left to right.

  Each blank is drawn from ``softmax(logits / temperature)`` (:func:`tfjax.generate.sample_logits`: ``top_k`` /
  ``top_p`` restrict it, ``temperature = 0`` takes the argmax) at that position, given the text with the blanks to its
  left already filled: a BERT generates by filling blanks, and a blank's neighbours change what it should be (one
  pass that fills them all at once would draw "new york" and "los angeles" into "new angeles"). Rows may have
  different numbers of blanks; the rows' other tokens are kept. Every token of a row is real (no padding).
  ``fillable``: ``[V]`` bool, the tokens a blank may take (e.g. :func:`fillable_tokens`); None: every token.
  """
  ids, masked = np.asarray(ids, np.int32), np.asarray(masked, bool)
  if ids.ndim != 2 or masked.shape != ids.shape:
    raise ValueError(f"ids and masked must both be [B, T]; got {ids.shape} and {masked.shape}")
  if ids.shape[1] > model.cfg.max_len:
    raise ValueError(f"the rows are {ids.shape[1]} tokens long, more than max_len={model.cfg.max_len}")
  count = masked.sum(axis=1)
  blanks = int(count.max(initial=0))
  if blanks == 0:
    return ids
  order = np.argsort(~masked, axis=1, kind="stable")[:, :blanks].astype(np.int32)  # each row's blanks, in order
  valid = np.arange(blanks)[None, :] < count[:, None]
  vocab = model.cfg.vocab_size
  fillable = np.ones(vocab, bool) if fillable is None else np.asarray(fillable)
  if fillable.shape != (vocab,) or fillable.dtype != bool or not fillable.any():
    raise ValueError(f"fillable must be a [V] = [{vocab}] bool array with at least one True; got {fillable.dtype} "
                     f"{fillable.shape}")
  out = _sample_masks(model, params, jnp.asarray(ids), jnp.asarray(order), jnp.asarray(valid), jnp.asarray(fillable),
                      rng, float(temperature), top_k, top_p)
  return np.asarray(out)


@functools.partial(jax.jit, static_argnames=("model", "temperature", "top_k", "top_p"))
def _sample_masks(model, params, ids, order, valid, fillable, rng, temperature, top_k, top_p):
  from tfjax.generate import sample_logits
  rows = jnp.arange(ids.shape[0])

  def fill_one(k, ids):
    where = order[:, k]  # [B]: each row's k-th blank (past a row's last blank: another of its tokens, kept)
    logits = model.apply({"params": params}, ids, attention_mask=jnp.ones_like(ids),
                         masked_positions=where[:, None])[:, 0]
    logits = jnp.where(fillable, logits, -jnp.inf)
    drawn = sample_logits(logits, jax.random.fold_in(rng, k), temperature, top_k, top_p)
    return ids.at[rows, where].set(jnp.where(valid[:, k], drawn, ids[rows, where]))

  return jax.lax.fori_loop(0, order.shape[1], fill_one, ids)

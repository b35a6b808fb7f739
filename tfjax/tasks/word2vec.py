"""word2vec training and evaluation: ``train_and_evaluate(config, workdir) -> results``.

Writes to ``workdir``: ``config.json`` (resolved config), ``metrics.jsonl`` (one line per log: step, epoch, loss,
words_per_s, lr, ...), orbax checkpoints at epoch ends (``checkpoints/<epochs done>``), and at the end
``vectors.txt`` (word2vec text format), ``vectors.bin`` (word2vec binary), ``results.json`` and ``pca.png``.
A relaunch with the same workdir resumes from the last finished epoch, or, when training had finished, re-reports.

How the step is made fast (the work is gathers, small batched matrix products and scatter-adds):

* Per epoch the host lays out all training items at once, vectorised in numpy (subsampling, dynamic windows,
  pairs, noise words), seeded by ``(seed, epoch)``; the next epoch is prepared in a thread while this one trains.
* Items are grouped in rows of ``train.row_size`` that share their noise words (see :mod:`tfjax.models.word2vec`);
  ``train.rows_per_step`` rows form one SGD micro-step and ``train.steps_per_call`` micro-steps run inside one jitted
  ``lax.scan`` (one dispatch per call).
* The update is a hand-written sparse SGD: the loss is differentiated with respect to the gathered rows only and
  ``lr * grad`` is scatter-added into the two tables (duplicates accumulate). A dense optimizer (optax.sgd) would read
  and write all ``2 x V x D`` parameters every micro-step; here a micro-step touches ~2 rows per item. The learning
  rate decays linearly from ``alpha`` to ``min_alpha`` over all epochs, by the position of each micro-step in the
  corpus, as word2vec.c/gensim do. (Full softmax uses dense gradients: its output matrix is touched entirely anyway.)
* CBOW (negative sampling) reads its input table by corpus position, not by context slot: a micro-step's centres are
  consecutive positions, so the input rows of the block extended by the window are gathered once, each centre's
  neighbour sum is ``2 * window`` shifted masked adds, and the update is ONE scatter-add of those rows
  (``B + 2W`` rows instead of ``B x 2W``; XLA:CPU's scatter-add costs ~100 ns per row). On the 2-core CPU, same
  settings and seeds, 0.51M -> 1.23M words/s with identical accuracy.
* All local devices: each call's micro-steps are split over a 1-D mesh with ``shard_map``; each device runs its share
  sequentially on its own copy of the tables, and at the end of the call the tables become
  ``W + sum_devices(W_device - W)``: every device's updates are applied, as with gensim's lock-free (Hogwild)
  workers but synchronised once per call. On CPU, one XLA device per core (``--xla_force_host_platform_device_count``)
  is what uses both cores: XLA's gather/scatter are single-threaded.

On CPU the results are bit-identical for a fixed seed and device count. (On GPU, scatter-add with duplicate indices
uses atomics, whose order, and hence the last bits, may vary.)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tfjax.config import ConfigError
from tfjax.tasks import word2vec_eval as ev
from tfjax.data import files
from tfjax.data import word2vec_data as wd
from tfjax.models import word2vec as w2v

log = logging.getLogger("tfjax")
DATA = "data"

_KNOWN_FILES = {f.relpath: f for f in (files.WIKITEXT2_VALID, files.WIKITEXT2_TEST, files.LEE_BACKGROUND, files.LEE,
                                       files.TINY_SHAKESPEARE, files.QUESTIONS_WORDS, files.WORDSIM353,
                                       files.SIMLEX999)}


def data_path(relpath: str, data_dir: str | None) -> str:
  """A corpus or evaluation file: a known data set (downloaded with checksum if missing), a relpath, or a path."""
  return str(files.find_data_file(_KNOWN_FILES.get(relpath, relpath), data_dir or None))


# ---------------------------------------------------------------------------------------------------- corpus


@dataclasses.dataclass
class Corpus:
  vocab: wd.Vocab
  encoded: wd.EncodedCorpus
  keep_prob: np.ndarray  # float64[V]
  noise_cdf: np.ndarray  # float64[V], cumulative noise distribution
  raw_words: int  # tokens in the corpus before min_count


def load_corpus(config: ml_collections.ConfigDict) -> Corpus:
  paths = [data_path(p, config.data_dir) for p in config.data.files]
  sentences = wd.read_sentences(paths)
  vocab = wd.build_vocab(sentences, config.data.min_count)
  encoded = wd.encode(sentences, vocab)
  noise = wd.noise_distribution(vocab.counts, config.model.ns_exponent)
  return Corpus(vocab, encoded, wd.keep_probabilities(vocab.counts, config.data.sample), np.cumsum(noise),
                sum(len(s) for s in sentences))


@dataclasses.dataclass
class EpochData:
  """One epoch's training items in rows, padded to whole calls. ``arrays`` are indexed ``[call, step, device, ...]``."""
  arrays: dict[str, np.ndarray]
  num_calls: int
  words: int  # effective words (centre words kept by subsampling)
  items: int  # real (unpadded) items


def epoch_data(corpus: Corpus, config: ml_collections.ConfigDict, epoch: int, num_devices: int) -> EpochData:
  """Lays out the items of ``epoch`` (a pure function of seed and epoch).

  Arrays, each ``[call, step, device, ...]``: negative-sampling skip-gram: ``input``, ``target``, ``mask``
  (``rows x row_size`` pairs) and ``noise`` (``rows x noise_pool``); negative-sampling CBOW: ``context_mask``
  (``rows x row_size x 2W``), ``target``, ``mask``, ``noise`` and ``window_ids`` (``rows * row_size + 2W``: the ids at
  the micro-step's consecutive centre positions extended by ``W`` on both sides, ``V`` outside the corpus); full
  softmax: ``context``, ``context_mask``, ``target``, ``mask`` (``rows`` centres)."""
  rng = np.random.default_rng([config.seed, epoch])
  kept = wd.subsample(corpus.encoded, corpus.keep_prob, rng)
  window = config.data.window
  t = config.train
  sampled = config.model.loss == w2v.NEGATIVE_SAMPLING
  cbow_by_position = sampled and config.model.architecture == w2v.CBOW_ARCH
  if cbow_by_position:  # the neighbours' ids are not laid out per centre: they are read from "window_ids"
    items = {"context_mask": wd.window_mask(kept, window, rng, config.data.dynamic_window), "target": kept.ids}
  else:
    context, mask = wd.windows(kept, window, rng, config.data.dynamic_window)
    if sampled:  # skip-gram pairs
      target, source = wd.skipgram_pairs(context, mask, kept.ids)
      items = {"input": source, "target": target}
    else:
      items = {"context": context, "context_mask": mask, "target": kept.ids}
  row, row_shape = (t.row_size, (t.row_size,)) if sampled else (1, ())
  n = len(items["target"])
  per_call = t.steps_per_call * num_devices * t.rows_per_step * row
  num_calls = max(1, -(-n // per_call))
  pad = num_calls * per_call - n
  shape = (num_calls, t.steps_per_call, num_devices, t.rows_per_step)
  arrays = {}
  for k, v in items.items():
    v = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
    arrays[k] = v.reshape(shape + row_shape + v.shape[1:])
  arrays["mask"] = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)]).reshape(shape + row_shape)
  if cbow_by_position:  # a micro-step on a device is a block of rows_per_step * row_size consecutive centres
    block = t.rows_per_step * row
    arrays["window_ids"] = wd.extended_blocks(kept.ids, block, (n + pad) // block, window,
                                              len(corpus.vocab)).reshape(shape[:-1] + (block + 2 * window,))
  if sampled:
    arrays["noise"] = wd.sample_noise(corpus.noise_cdf, shape + (noise_pool(config),), rng)
  return EpochData(arrays, num_calls, len(kept), n)


# ---------------------------------------------------------------------------------------------------- steps


def noise_pool(config: ml_collections.ConfigDict) -> int:
  """Noise words drawn per row: ``train.noise_pool``, or ``model.negatives`` when 0."""
  return int(config.train.noise_pool or config.model.negatives)


def _noise_weight(noise_RxP, target_RxS, negatives: int):
  """``K / P`` for each (item, noise word), 0 where the noise word is the item's true word (``R x S x P``)."""
  same = noise_RxP[:, None, :] == target_RxS[:, :, None]
  return jnp.where(same, 0.0, negatives / noise_RxP.shape[-1]).astype(jnp.float32)


def _ns_skipgram_micro_step(tables, batch, lr, negatives: int):
  """One SGD micro-step of negative-sampling skip-gram on ``R`` rows of ``S`` pairs; sparse update."""
  w_in, w_out = tables
  inp, target, noise, mask = batch["input"], batch["target"], batch["noise"], batch["mask"]  # RxS, RxS, RxK, RxS
  rows = (w_in[inp], w_out[target], w_out[noise])
  noise_mask = _noise_weight(noise, target, negatives)
  loss, (g_in, g_target, g_noise) = jax.value_and_grad(w2v.negative_sampling_loss, argnums=(0, 1, 2))(
      *rows, mask, noise_mask)
  d = w_in.shape[1]
  w_in = w_in.at[inp.reshape(-1)].add(-lr * g_in.reshape(-1, d))
  out_ids = jnp.concatenate([target.reshape(-1), noise.reshape(-1)])
  w_out = w_out.at[out_ids].add(-lr * jnp.concatenate([g_target.reshape(-1, d), g_noise.reshape(-1, d)]))
  return (w_in, w_out), (loss, jnp.sum(mask))


def _window_sum(rows_LxD, ctx_mask_BxC):
  """``out[q] = sum_j ctx_mask[q, j] * rows[q + W + o_j]`` (``B x D``), with ``L = B + 2W`` rows at positions
  ``-W .. B + W - 1`` and ``o_j`` the offsets ``-W..-1, 1..W`` (``C = 2W``): each centre's neighbour sum as ``C``
  shifted, masked dense adds. (The mask multiplies as 0/1 floats: XLA:CPU runs that faster than a select.)"""
  b, c = ctx_mask_BxC.shape
  w = c // 2
  m = ctx_mask_BxC.astype(rows_LxD.dtype)
  out = jnp.zeros((b, rows_LxD.shape[1]), rows_LxD.dtype)
  for j, o in enumerate(wd.window_offsets(w)):
    out = out + m[:, j, None] * rows_LxD[w + o:w + o + b]
  return out


def _window_sum_transpose(g_BxD, ctx_mask_BxC):
  """The transpose of :func:`_window_sum`: ``out[p] = sum_j ctx_mask[q, j] * g[q]`` over ``q = p - W - o_j``
  (``L x D``, ``L = B + 2W``): what each position receives from the centres it is a neighbour of.

  ``g`` and the mask are padded once (by ``2W`` on both sides) and every term is a slice of them: XLA:CPU runs this
  several times faster than a sum of ``C`` padded arrays."""
  b, c = ctx_mask_BxC.shape
  w = c // 2
  g = jnp.pad(g_BxD, ((2 * w, 2 * w), (0, 0)))
  m = jnp.pad(ctx_mask_BxC.astype(g_BxD.dtype), ((2 * w, 2 * w), (0, 0)))
  out = jnp.zeros((b + 2 * w, g_BxD.shape[1]), g_BxD.dtype)
  for j, o in enumerate(wd.window_offsets(w)):
    lo, hi = w - o, w - o + b + 2 * w  # out[p] reads centre q = p - W - o_j, at p + W - o_j in the padded arrays
    out = out + m[lo:hi, j, None] * g[lo:hi]
  return out


def _ns_cbow_micro_step(tables, batch, lr, negatives: int, exact_mean_grad: bool = False):
  """One SGD micro-step of negative-sampling CBOW on ``R`` rows of ``S`` centres (``C = 2W`` context slots each).

  The ``B = R * S`` centres are consecutive positions of the (subsampled) corpus, and the neighbour in slot ``j`` of
  centre ``q`` is the word at position ``q + o_j`` (``o_j`` in ``-W..-1, 1..W``; see ``wd.windows``). So the input
  table is read once per position: ``batch["window_ids"]`` (``L = B + 2W``) are the ids at positions ``-W .. B+W-1``
  (``V``, out of range, outside the corpus), the ``L`` rows are gathered once, each centre's neighbour sum is ``C``
  shifted masked adds of them (:func:`_window_sum`), and the update is the transpose: ``C`` shifted masked adds of
  the centres' gradients, then ONE scatter-add of ``L`` rows (instead of gathering and scatter-adding ``B x C``).
  Same batched SGD step as gathering every slot; only the order of the sums differs.

  As in word2vec.c and gensim (``cbow_mean=1``), every neighbour receives the full gradient of the hidden vector, not
  the gradient of the mean (which is that divided by the number of neighbours); ``exact_mean_grad`` uses the latter.

  ``batch``: ``window_ids`` L, ``context_mask`` RxSxC, ``target`` RxS, ``noise`` RxP, ``mask`` RxS.
  """
  w_in, w_out = tables
  ids, ctx_mask = batch["window_ids"], batch["context_mask"]
  target, noise, mask = batch["target"], batch["noise"], batch["mask"]
  r, s, c = ctx_mask.shape
  d = w_in.shape[1]
  ctx_mask = ctx_mask.reshape(r * s, c)
  n_ctx = jnp.sum(ctx_mask, axis=-1).astype(w_in.dtype)  # B
  denom = jnp.maximum(n_ctx, 1.0)[:, None]
  rows = w_in.at[ids.astype(jnp.uint32)].get(mode="clip")  # LxD
  # Under lax.cond the sums are computed once and stored: inlined, XLA:CPU recomputes the C-term sum inside each of
  # its consumers (~30% of the step). Micro-steps of padding only (no centre with context) skip them.
  hidden = jax.lax.cond(jnp.any(ctx_mask), _window_sum, lambda rows, _: jnp.zeros_like(rows[:r * s]),
                        rows, ctx_mask)
  hidden = (hidden / denom).reshape(r, s, d)
  noise_mask = _noise_weight(noise, target, negatives)
  item_mask = mask & (n_ctx > 0).reshape(r, s)
  loss, (g_hidden, g_target, g_noise) = jax.value_and_grad(w2v.negative_sampling_loss, argnums=(0, 1, 2))(
      hidden, w_out[target], w_out[noise], item_mask, noise_mask)
  g_in = -lr * g_hidden.reshape(r * s, d)  # BxD
  if exact_mean_grad:
    g_in = g_in / denom
  w_in = w_in.at[ids].add(_window_sum_transpose(g_in, ctx_mask), mode="drop")
  out_ids = jnp.concatenate([target.reshape(-1), noise.reshape(-1)])
  w_out = w_out.at[out_ids].add(-lr * jnp.concatenate([g_target.reshape(-1, d), g_noise.reshape(-1, d)]))
  return (w_in, w_out), (loss, jnp.sum(item_mask))


def _full_softmax_micro_step(model, tables, batch, lr):
  """One SGD micro-step with the full softmax (dense gradients from the flax module's loss)."""
  w_in, w_out = tables
  mb = {"centre": batch["target"], "context": batch["context"], "mask": batch["context_mask"] & batch["mask"][:, None]}

  def loss_fn(w_in, w_out):
    return model.apply({"params": {"input_embedding": w_in, "output_embedding": w_out}}, mb, method="loss")

  loss, (g_in, g_out) = jax.value_and_grad(loss_fn, argnums=(0, 1))(w_in, w_out)
  if model.config.architecture == w2v.SKIPGRAM:
    count = jnp.sum(mb["mask"])
  else:
    count = jnp.sum(jnp.any(mb["mask"], axis=1))
  return (w_in - lr * g_in, w_out - lr * g_out), (loss, count)


def make_train_call(config: ml_collections.ConfigDict, model_config: w2v.Word2VecConfig, mesh: Mesh):
  """``call(w_in, w_out, batch, lr_M) -> (w_in, w_out, loss_sum, count)``: ``M`` micro-steps on every device.

  ``batch`` arrays are ``[M, devices, ...]`` sharded over devices on axis 1; the tables are replicated and donated.
  """
  if model_config.loss == w2v.FULL_SOFTMAX:
    micro = functools.partial(_full_softmax_micro_step, w2v.make_model(model_config))
  elif model_config.architecture == w2v.SKIPGRAM:
    micro = functools.partial(_ns_skipgram_micro_step, negatives=model_config.negatives)
  else:
    micro = functools.partial(_ns_cbow_micro_step, negatives=model_config.negatives,
                              exact_mean_grad=config.model.cbow_exact_mean_grad)

  def per_device(w_in, w_out, batch, lr):
    batch = jax.tree.map(lambda x: x[:, 0], batch)  # [M, 1, ...] -> [M, ...]
    start = (jax.lax.pcast(w_in, (DATA,), to="varying"), jax.lax.pcast(w_out, (DATA,), to="varying"))

    def skip(tables, batch, lr):  # a micro-step of padding only (the end of an epoch's last call)
      zero = jax.lax.pcast(jnp.zeros((), jnp.float32), (DATA,), to="varying")
      return tables, (zero, zero.astype(jnp.int32))

    body = lambda tables, xs: jax.lax.cond(jnp.any(xs[0]["mask"]), micro, skip, tables, *xs)
    (new_in, new_out), (losses, counts) = jax.lax.scan(body, start, (batch, lr))
    # Apply every device's updates: W + sum_d (W_d - W).
    new_in = w_in + jax.lax.psum(new_in - w_in, DATA)
    new_out = w_out + jax.lax.psum(new_out - w_out, DATA)
    return new_in, new_out, jax.lax.psum(jnp.sum(losses), DATA), jax.lax.psum(jnp.sum(counts), DATA)

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(None, DATA), P()),
                     out_specs=(P(), P(), P(), P()))
  return jax.jit(fn, donate_argnums=(0, 1))


# ---------------------------------------------------------------------------------------------------- driver


def init_params(model_config: w2v.Word2VecConfig, seed: int) -> dict[str, jax.Array]:
  """The model's ``{"input_embedding", "output_embedding"}`` tables (float32 ``V x D``) for ``seed``."""
  model = w2v.make_model(model_config)
  if model_config.architecture == w2v.SKIPGRAM:
    args = (jnp.zeros((1,), jnp.int32),)
  else:
    args = (jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), bool))
  return jax.jit(model.init)(jax.random.key(seed), *args)["params"]  # one compiled call, not eager op-by-op


def _lr(config: ml_collections.ConfigDict, progress: np.ndarray) -> np.ndarray:
  t = config.train
  return (t.alpha - (t.alpha - t.min_alpha) * np.clip(progress, 0.0, 1.0)).astype(np.float32)


def _config_fingerprint(config: ml_collections.ConfigDict, corpus: Corpus) -> str:
  relevant = {k: config.to_dict()[k] for k in ("data", "model", "seed")}
  relevant["vocab"] = hashlib.sha256("\n".join(corpus.vocab.words).encode()).hexdigest()[:16]
  relevant["train"] = {k: config.train[k] for k in ("row_size", "rows_per_step", "steps_per_call", "epochs",
                                                     "alpha", "min_alpha", "noise_pool")}
  return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_config(config: ml_collections.ConfigDict, vocab_size: int) -> w2v.Word2VecConfig:
  m = config.model
  return w2v.Word2VecConfig(vocab_size=vocab_size, dim=m.dim, architecture=m.architecture, loss=m.loss,
                            negatives=m.negatives)


def _validate(config: ml_collections.ConfigDict) -> None:
  t = config.train
  for name in ("epochs", "row_size", "rows_per_step", "steps_per_call"):
    if int(t[name]) < 1:
      raise ConfigError(f"train.{name} must be >= 1, got {t[name]}")
  if config.data.window < 1:
    raise ConfigError(f"data.window must be >= 1, got {config.data.window}")
  if not config.data.files:
    raise ConfigError("data.files is empty: give at least one corpus file")
  w2v.Word2VecConfig(vocab_size=1, dim=config.model.dim, architecture=config.model.architecture,
                     loss=config.model.loss, negatives=config.model.negatives)


def _restore(workdir: str, fingerprint: str, tables: tuple[np.ndarray, np.ndarray], epochs: int):
  """Opens ``workdir``'s checkpoints and metrics log: ``(manager, epochs done, writer, step, tables)``, the tables
  those of the last finished epoch when there is one (its config fingerprint must match ``fingerprint``)."""
  from tfjax.train import checkpoint as ckpt
  from tfjax.train import metrics as metrics_lib
  manager = ckpt.make_manager(workdir, max_to_keep=2, async_save=False)
  done = ckpt.complete_steps(manager)
  start_epoch, step = 0, 0
  if done:
    start_epoch = done[-1]
    abstract = {"input_embedding": jax.ShapeDtypeStruct(tables[0].shape, np.float32),
                "output_embedding": jax.ShapeDtypeStruct(tables[1].shape, np.float32)}
    state, meta = ckpt.restore(manager, start_epoch, abstract)
    if meta.get("fingerprint") != fingerprint:
      raise ckpt.CheckpointError(
          f"the checkpoint in {workdir} was written with a different corpus/config (fingerprint "
          f"{meta.get('fingerprint')} vs {fingerprint}); use a new --workdir.")
    tables = (np.asarray(state["input_embedding"]), np.asarray(state["output_embedding"]))
    step = int(meta.get("step", 0))
    log.info("resumed from %s after epoch %d/%d", workdir, start_epoch, epochs)
  writer = metrics_lib.MetricsWriter(workdir, resume_step=step)  # drops lines logged after the checkpoint
  return manager, start_epoch, writer, step, tables


def _save_epoch(manager, epochs_done: int, w_in, w_out, step: int, fingerprint: str) -> None:
  """Checkpoints both tables after ``epochs_done`` epochs, synchronously (an epoch's end is the only resume point)."""
  from tfjax.train import checkpoint as ckpt
  state = {"input_embedding": np.asarray(w_in), "output_embedding": np.asarray(w_out)}
  ckpt.save(manager, epochs_done, state, {"epoch": epochs_done, "step": step, "fingerprint": fingerprint})
  manager.wait_until_finished()


def _epoch_lrs(config: ml_collections.ConfigDict, data: EpochData, epoch: int) -> np.ndarray:
  """``[num_calls, steps_per_call]``: each micro-step's learning rate, by its first item's place in the whole run."""
  m = config.train.steps_per_call
  per_call_items = data.arrays["mask"][0].size
  item_pos = np.arange(data.num_calls * m) * (per_call_items // m)  # first item of each micro-step
  progress = (epoch + np.minimum(item_pos, data.items) / max(data.items, 1)) / config.train.epochs
  return _lr(config, progress).reshape(-1, m)


class _EpochLog:
  """One epoch's running loss, logged (and written to ``metrics.jsonl``) every ``train.log_every_s`` seconds and at
  the epoch's end, with words/s and the ETA of the whole run; ``stats`` gets the last logged loss."""

  def __init__(self, config, epoch: int, data: EpochData, lrs: np.ndarray, stats: dict, step0: int,
               t_epoch: float, expected_words: float, writer):
    self.config, self.epoch, self.data, self.lrs, self.stats = config, epoch, data, lrs, stats
    self.step0, self.t_epoch, self.expected_words, self.writer = step0, t_epoch, expected_words, writer
    self.loss, self.count, self.last_log = 0.0, 0.0, time.perf_counter()

  def add(self, loss: float, count: float) -> None:
    self.loss += loss
    self.count += count

  def maybe_log(self, i: int, last: bool) -> None:
    """After call ``i`` of the epoch: logs when ``train.log_every_s`` has passed or at the epoch's end."""
    now = time.perf_counter()
    if not ((now - self.last_log >= self.config.train.log_every_s or last) and self.count > 0):
      return
    data, epochs = self.data, self.config.train.epochs
    done_words = self.stats["words"] + data.words * (i + 1) / data.num_calls
    elapsed = self.stats["train_s"] + (now - self.t_epoch)
    wps = done_words / max(elapsed, 1e-9)
    eta = (self.expected_words - done_words) / max(wps, 1e-9)
    step = self.step0 + (i + 1) * self.config.train.steps_per_call
    rec = {"step": step, "epoch": self.epoch + (i + 1) / data.num_calls, "loss": self.loss / self.count,
           "words_per_s": wps, "lr": float(self.lrs[i][-1]), "elapsed_s": elapsed, "eta_s": eta}
    log.info("epoch %d/%d %3.0f%% | loss %.4f | %.0fk words/s | lr %.5f | ETA %.1fs", self.epoch + 1, epochs,
             100 * (i + 1) / data.num_calls, rec["loss"], wps / 1e3, rec["lr"], eta)
    if self.writer is not None:
      self.writer.write(rec)
    self.stats["final_loss"] = rec["loss"]
    if not np.isfinite(rec["loss"]):
      raise FloatingPointError(f"loss is {rec['loss']} at step {step}; lower train.alpha")
    self.loss, self.count, self.last_log = 0.0, 0.0, now


def _train_epoch(call, w_in, w_out, data: EpochData, lrs: np.ndarray, batch_sharding, epoch_log: _EpochLog):
  """Runs an epoch's training calls; returns the new tables. A call's loss is read after the next call has been
  dispatched, so the host never waits for the device between calls."""
  pending = []
  for i in range(data.num_calls):
    batch = {k: jax.device_put(v[i], batch_sharding) for k, v in data.arrays.items()}
    w_in, w_out, loss, count = call(w_in, w_out, batch, jnp.asarray(lrs[i]))
    pending.append((loss, count))
    last = i == data.num_calls - 1
    while len(pending) > 1 or (last and pending):
      loss, count = pending.pop(0)
      epoch_log.add(float(loss), float(count))
    epoch_log.maybe_log(i, last)
  return w_in, w_out


def train(config: ml_collections.ConfigDict, workdir: str | None = None, corpus: Corpus | None = None
          ) -> tuple[ev.WordVectors, dict]:
  """Trains word vectors; with ``workdir``, writes ``config.json`` (once a checkpoint there fits), logs metrics and
  checkpoints/resumes at epoch ends.

  Returns ``(vectors, stats)``; ``stats`` has ``words`` (effective words trained), ``train_s`` (seconds spent in
  training calls, compile excluded), ``compile_s``, ``words_per_s``, ``final_loss``.
  """
  _validate(config)
  corpus = corpus if corpus is not None else load_corpus(config)
  vocab = corpus.vocab
  model_config = _model_config(config, len(vocab))
  n_dev = config.train.num_devices or jax.local_device_count()
  devices = jax.local_devices()[:n_dev]
  mesh = Mesh(np.asarray(devices), (DATA,))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(None, DATA))
  epochs = config.train.epochs

  params = init_params(model_config, config.seed)
  tables = (np.asarray(params["input_embedding"]), np.asarray(params["output_embedding"]))
  manager, start_epoch, writer, step = None, 0, None, 0
  fingerprint = _config_fingerprint(config, corpus)
  if workdir is not None:
    manager, start_epoch, writer, step, tables = _restore(workdir, fingerprint, tables, epochs)
    with open(os.path.join(workdir, "config.json"), "w") as f:  # once the checkpoint (if any) fits this config
      json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=str)

  stats = {"words": 0, "train_s": 0.0, "train_cpu_s": 0.0, "compile_s": 0.0, "final_loss": None, "devices": n_dev,
           "vocab_size": len(vocab), "corpus_words": corpus.raw_words, "retained_words": vocab.total}
  if start_epoch >= epochs:
    return ev.WordVectors(list(vocab.words), tables[0]), stats

  w_in = jax.device_put(tables[0], replicated)
  w_out = jax.device_put(tables[1], replicated)
  call = make_train_call(config, model_config, mesh)
  pool = concurrent.futures.ThreadPoolExecutor(1)
  next_data = pool.submit(epoch_data, corpus, config, start_epoch, n_dev)
  t_start = time.perf_counter()
  expected_words = None
  for epoch in range(start_epoch, epochs):
    t_epoch = time.perf_counter()  # words/s counts the wait for this epoch's data, not the compilation
    cpu_epoch = time.process_time()
    data = next_data.result()
    if epoch + 1 < epochs:
      next_data = pool.submit(epoch_data, corpus, config, epoch + 1, n_dev)
    if expected_words is None:
      expected_words = data.words * (epochs - start_epoch)
    lrs = _epoch_lrs(config, data, epoch)
    if stats["compile_s"] == 0.0:
      t = time.perf_counter()
      batch0 = {k: jax.device_put(v[0], batch_sharding) for k, v in data.arrays.items()}
      call = call.lower(w_in, w_out, batch0, jnp.asarray(lrs[0])).compile()
      stats["compile_s"] = time.perf_counter() - t
      t_epoch += stats["compile_s"]
      cpu_epoch = time.process_time()
      log.info("compiled the training call in %.1fs (%d devices: %s)", stats["compile_s"], n_dev,
               devices[0].platform)
    epoch_log = _EpochLog(config, epoch, data, lrs, stats, step, t_epoch, expected_words, writer)
    w_in, w_out = _train_epoch(call, w_in, w_out, data, lrs, batch_sharding, epoch_log)
    step += data.num_calls * config.train.steps_per_call
    jax.block_until_ready(w_in)
    stats["train_s"] += time.perf_counter() - t_epoch
    stats["train_cpu_s"] += time.process_time() - cpu_epoch
    stats["words"] += data.words
    if manager is not None:
      _save_epoch(manager, epoch + 1, w_in, w_out, step, fingerprint)
  pool.shutdown()
  stats["words_per_s"] = stats["words"] / max(stats["train_s"], 1e-9)
  stats["wall_s"] = time.perf_counter() - t_start
  return ev.WordVectors(list(vocab.words), np.asarray(w_in)), stats


def evaluate(wv: ev.WordVectors, config: ml_collections.ConfigDict) -> dict:
  """Analogies (by section and overall), WordSim-353 and SimLex-999 Spearman, and a few neighbour lists."""
  e = config.eval
  analogies = ev.evaluate_analogies(wv, data_path(e.analogies, config.data_dir), restrict_vocab=e.restrict_vocab)
  out = {"analogy": analogies}
  for name, rel in (("wordsim353", e.wordsim353), ("simlex999", e.simlex999)):
    out[name] = ev.evaluate_word_pairs(wv, data_path(rel, config.data_dir))
  out["neighbors"] = {w: wv.neighbors(w, 8) for w in e.neighbor_words if w in wv}
  return out


def _summary(results: dict) -> str:
  a = results["analogy"]
  return (f"analogy {100 * a['accuracy']:.2f}% ({a['correct']}/{a['total']}, {a['oov']} OOV questions skipped) | "
          f"WordSim-353 {results['wordsim353']['spearman']:.3f} | SimLex-999 {results['simlex999']['spearman']:.3f}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, writes the vectors and evaluates; a relaunch resumes (or re-reports when already finished)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  results_path = os.path.join(workdir, "results.json")
  corpus = load_corpus(config)
  log.info("corpus: %d words, vocabulary %d (min_count %d), %d in-vocabulary tokens", corpus.raw_words,
           len(corpus.vocab), config.data.min_count, corpus.vocab.total)
  wv, stats = train(config, workdir, corpus)
  if stats["words"] == 0 and os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
    log.info("already trained (%d epochs); results: %s", config.train.epochs, _summary(results))
    return results
  ev.save_word2vec(wv, os.path.join(workdir, "vectors.txt"))
  ev.save_word2vec(wv, os.path.join(workdir, "vectors.bin"), binary=True)
  results = evaluate(wv, config)
  results["train"] = stats
  try:
    results["plot"] = ev.plot_pca(wv, config.eval.plot_words, os.path.join(workdir, "pca.png"),
                                  f"{config.model.architecture} word vectors, 2-D PCA")
  except ValueError as e:
    log.warning("no PCA plot: %s", e)
  tmp = results_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2, default=float)
  os.replace(tmp, results_path)
  log.info("results: %s", _summary(results))
  if stats["words"]:
    log.info("trained %d effective words in %.1fs: %.0fk words/s (compile %.1fs)", stats["words"],
             stats["train_s"], stats["words_per_s"] / 1e3, stats["compile_s"])
  return results


# ---------------------------------------------------------------------------------------------------- context models
# The ladder from CBOW's average to attention (tfjax.models.context_models): every rung predicts the centre word
# with a full softmax, trained by the shared loop (tfjax.train.loop) through CentreWordTask; ``model.context``
# selects the rung.


def split_heldout(sentences: list[list[str]], every: int) -> tuple[list[list[str]], list[list[str]]]:
  """``(training, held_out)`` sentences: every ``every``-th line (the last of each group of ``every``) is held out,
  so both splits span every corpus file."""
  if every < 2:
    raise ValueError(f"data.heldout_every must be >= 2 (one line in that many is held out), got {every}")
  held = [s for i, s in enumerate(sentences) if i % every == every - 1]
  return [s for i, s in enumerate(sentences) if i % every != every - 1], held


@dataclasses.dataclass
class CentreWindows:
  """Every centre word of a split with a full (fixed) window: ``centre`` int32[N], ``context`` int32[N, C] and
  ``mask`` bool[N, C] as :func:`tfjax.data.word2vec_data.windows` lays them (False past a sentence's edge, where the
  id is 0); only centres with at least one real context word are kept. ``sentence`` int32[N] is the line number."""
  centre: np.ndarray
  context: np.ndarray
  mask: np.ndarray
  sentence: np.ndarray

  def __len__(self) -> int:
    return len(self.centre)


def centre_windows(sentences: list[list[str]], vocab: wd.Vocab, window: int) -> CentreWindows:
  """The windows of every in-vocabulary token of ``sentences`` (out-of-vocabulary words dropped first, as word2vec
  does), without subsampling and with the full ``window`` each side."""
  encoded = wd.encode(sentences, vocab)
  context, mask = wd.windows(encoded, window, np.random.default_rng(0), dynamic=False)  # no draw without dynamic
  has = mask.any(axis=1)
  return CentreWindows(encoded.ids[has], context[has], mask[has], encoded.sentence[has])


@dataclasses.dataclass
class CentreWordData:
  """The ladder's corpus: a vocabulary built on the training lines, and the windows of both splits."""
  vocab: wd.Vocab
  train: CentreWindows
  heldout: CentreWindows
  corpus_words: int  # tokens of all lines before min_count


def load_centre_word_data(config: ml_collections.ConfigDict) -> CentreWordData:
  """Reads ``config.data.files`` with word2vec's tokenisation, holds out one line in ``data.heldout_every``, builds
  the vocabulary (``data.min_count``) on the training lines and lays the windows of ``data.window`` each side."""
  if config.data.window < 1:
    raise ConfigError(f"data.window must be >= 1, got {config.data.window}")
  if not config.data.files:
    raise ConfigError("data.files is empty: give at least one corpus file")
  sentences = wd.read_sentences([data_path(p, config.data_dir) for p in config.data.files])
  train_s, held_s = split_heldout(sentences, config.data.heldout_every)
  if not held_s:
    raise wd.CorpusError(f"no held-out line: the corpus has {len(sentences)} lines and data.heldout_every is "
                         f"{config.data.heldout_every}")
  vocab = wd.build_vocab(train_s, config.data.min_count)
  return CentreWordData(vocab, centre_windows(train_s, vocab, config.data.window),
                        centre_windows(held_s, vocab, config.data.window), sum(len(s) for s in sentences))


def context_model_config(config: ml_collections.ConfigDict, vocab_size: int):
  """The :class:`tfjax.models.context_models.ContextModelConfig` of ``config.model`` (``context`` picks the rung)."""
  from tfjax.models import context_models as cm
  m = config.model
  return cm.ContextModelConfig(vocab_size=vocab_size, window=config.data.window, dim=m.dim, context=m.context,
                               key_dim=m.key_dim, num_heads=m.num_heads,
                               precision=None if m.precision == "default" else m.precision)


class CentreWordTask:
  """A context model of the ladder predicting each centre word from its window. Implements
  :class:`tfjax.tasks.base.Task` for :func:`tfjax.train.loop.train_and_evaluate`.

  The training batch at step ``s`` is ``train.batch_size`` centres drawn uniformly (with replacement) from the
  training split by ``numpy.random.default_rng([seed, s])``: a pure function of (seed, step). With
  ``data.dynamic_window`` each drawn centre's reach is uniform in ``[1, window]`` (word2vec's dynamic window, drawn
  by the same generator); the held-out split always uses the full window. Evaluation: the held-out centre-word
  cross-entropy (nats) and top-1 accuracy over every held-out centre; the final report adds the input vectors'
  analogy, WordSim-353 and SimLex-999 scores (:func:`evaluate`).
  """

  def __init__(self, config: ml_collections.ConfigDict, data: CentreWordData | None = None):
    from tfjax.models import context_models as cm
    self.config = config
    self.data = data if data is not None else load_centre_word_data(config)
    self.model_config = context_model_config(config, len(self.data.vocab))
    self.model = cm.CentreWordModel(self.model_config)
    self.batch_size = config.train.batch_size
    self.eval_batch_size = config.train.get("eval_batch_size", 0) or self.batch_size
    self.seed = config.seed
    self.offsets = np.abs(np.asarray(wd.window_offsets(config.data.window)))

  # -- Task protocol -------------------------------------------------------------------------------------------------
  def init_params(self, rng):
    slots = self.model_config.num_slots
    return self.model.init(rng, jnp.zeros((1, slots), jnp.int32), jnp.ones((1, slots), bool))["params"]

  def loss_fn(self, params, batch, rng, train):  # pylint: disable=unused-argument
    loss, count, correct = self.model.apply({"params": params}, batch, method="loss")
    return loss, count, {"accuracy": correct}

  def _rows(self, split: CentreWindows, idx: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    return {"centre": split.centre[idx], "context": split.context[idx], "mask": split.mask[idx],
            "weight": weight.astype(np.float32)}

  def train_batch(self, step: int, shard: int = 0, num_shards: int = 1):
    if self.batch_size % num_shards:
      raise ValueError(f"train.batch_size={self.batch_size} does not split into {num_shards} processes")
    rng = np.random.default_rng([self.seed, step])
    idx = rng.integers(0, len(self.data.train), size=self.batch_size)
    batch = self._rows(self.data.train, idx, np.ones(self.batch_size))
    if self.config.data.dynamic_window:
      reach = self.config.data.window - rng.integers(0, self.config.data.window, size=self.batch_size)
      batch["mask"] = batch["mask"] & (self.offsets[None, :] <= reach[:, None])
    block = self.batch_size // num_shards
    return {k: v[shard * block:(shard + 1) * block] for k, v in batch.items()}

  def eval_batches(self, shard: int = 0, num_shards: int = 1):
    held = self.data.heldout
    size = self.eval_batch_size
    for start in range(0, len(held), size):
      idx = np.arange(start, start + size)
      real = idx < len(held)
      batch = self._rows(held, np.where(real, idx, 0), real)  # the last batch padded with weight-0 rows
      block = size // num_shards
      yield {k: v[shard * block:(shard + 1) * block] for k, v in batch.items()}

  def final_report(self, params) -> dict:
    wv = ev.WordVectors(list(self.data.vocab.words), np.asarray(params["input_embedding"]))
    out = evaluate(wv, self.config)
    out["vocab_size"] = len(self.data.vocab)
    out["train_centres"], out["heldout_centres"] = len(self.data.train), len(self.data.heldout)
    return out

"""Validation batches for ``explain`` and how a batch enters the model and gives a loss, per kind of model.

* a tfjax workdir: the first ``max_batches`` of its task's own evaluation batches (``LMTask`` / ``MLMTask`` /
  ``TranslationTask`` built from the run's config: the validation text, with the run's masks for BERT);
* a Hugging Face directory (no task), or a text given (``--text``): that text (or the default) as one batch: next
  tokens for a GPT, 15% of the tokens masked BERT's way (:func:`tfjax.tasks.mlm.mask_tokens`, seed 0) for a BERT,
  and for a translator the text as the source and as the target ``target`` (``--target``) or, by default, the
  model's own greedy translation of it (:meth:`tfjax.explain.subjects.Subject.target_ids`).

:func:`model_inputs` gives ``(args, kwargs)`` for ``model.apply``; :func:`batch_loss` the mean cross-entropy
(:func:`tfjax.explain.interventions.token_loss`) of the logits on the batch's targets and :func:`batch_loss_terms` its
sum and token count (to add up over chunks); :func:`token_weights` the ``[B, T]`` weights of the positions that
count (real tokens); :func:`row_chunks` a batch in pieces whose ``[rows, T, V]`` outputs fit a memory budget.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfjax.explain.interventions import token_loss


def _task(subject):
  config = subject.config
  if config.task == "lm":
    from tfjax.tasks.lm import LMTask
    return LMTask(config, subject.path)
  if config.task == "mlm":
    from tfjax.tasks.mlm import MLMTask
    return MLMTask(config, subject.path)
  from tfjax.tasks.translate import TranslationTask
  return TranslationTask(config, subject.path)


def eval_batches(subject, max_batches: int = 4, text: str | None = None,
                 target: str | None = None) -> list[dict[str, np.ndarray]]:
  """Up to ``max_batches`` validation batches of ``subject`` (see the module docstring)."""
  from tfjax.explain.subjects import SubjectError
  if target is not None and subject.kind != "translator":
    raise SubjectError(f"--target is a translator's target sentence; this is a {subject.kind}")
  if target is not None and text is None and subject.config is not None:
    raise SubjectError("--target is the translation of --text: give the source sentence too")
  if subject.config is not None and text is None:
    return list(itertools.islice(_task(subject).eval_batches(), max(1, max_batches)))
  if subject.kind == "translator":
    from tfjax.tasks.translate import PAD_ID
    src = subject.text_ids(text, source=True)
    tgt = subject.target_ids(src, target)
    return [{"src": src[None], "inputs": tgt[None, :-1], "targets": tgt[None, 1:],
             "weights": (tgt[None, 1:] != PAD_ID).astype(np.float32)}]
  ids = subject.text_ids(text)
  if subject.kind == "gpt":
    return [{"inputs": ids[None, :-1], "targets": ids[None, 1:]}]
  if subject.kind == "bert":
    from tfjax.tasks import mlm
    tok = subject.tokenizer
    special = np.asarray(tok.special_ids(), np.int64)
    candidates = ~np.isin(ids, special)[None]
    batch = mlm.mask_tokens(ids[None], candidates, np.random.default_rng(0), mask_id=tok.token_to_id("[MASK]"),
                            random_ids=np.setdiff1d(np.arange(tok.vocab_size), special),
                            max_predictions=max(1, int(np.ceil(0.15 * len(ids)))))
    batch["attention_mask"] = np.ones_like(ids[None])
    batch["token_type_ids"] = np.zeros_like(ids[None])
    return [batch]
  raise SubjectError(f"no batches for a {subject.kind}")


def model_inputs(kind: str, batch: dict[str, Any]) -> tuple[tuple, dict]:
  """``(args, kwargs)`` of ``model.apply`` for ``batch``."""
  if kind == "gpt":
    return (batch["inputs"],), {}
  if kind == "bert":
    return (batch["inputs"],), {"attention_mask": batch["attention_mask"], "token_type_ids": batch["token_type_ids"],
                                "masked_positions": batch.get("masked_positions")}  # None: every position
  from tfjax.tasks.translate import PAD_ID
  return (batch["src"], batch["src"] != PAD_ID, batch["inputs"]), {}


def _targets(kind: str, batch: dict[str, Any]) -> tuple[Any, Any]:
  """The batch's target ids and their weights (``None``: every target counts)."""
  if kind == "gpt":
    return batch["targets"], None
  if kind == "bert":
    return batch["masked_labels"], batch["masked_weights"]
  return batch["targets"], batch["weights"]


def batch_loss(kind: str, logits: jnp.ndarray, batch: dict[str, Any]) -> jnp.ndarray:
  """Mean cross-entropy (nats) of ``logits`` on the batch's targets (BERT: at the masked positions)."""
  return token_loss(logits, *_targets(kind, batch))


def batch_loss_terms(kind: str, logits: jnp.ndarray, batch: dict[str, Any]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(sum, count)``: the cross-entropy summed over the targets that count, and their (weighted) number, so that
  the loss of a batch scored in chunks is ``sum(sums) / sum(counts)``, the :func:`batch_loss` of the whole."""
  targets, weights = _targets(kind, batch)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  w = jnp.ones_like(ce) if weights is None else jnp.asarray(weights, jnp.float32)
  return jnp.sum(ce * w), jnp.sum(w)


OUTPUT_BYTES = 256 << 20  # what one call on a chunk of rows may output ([rows, T, V] float32 logits, a lens)


def row_chunks(batch: dict[str, Any], row_bytes: int, budget: int = OUTPUT_BYTES):
  """``batch`` in consecutive pieces of rows whose output, ``row_bytes`` a row, fits ``budget`` bytes: a
  translator's validation batch of 512 rows would otherwise give ``[512, T, V]`` logits (and their softmax) of GBs."""
  rows = len(next(iter(batch.values())))
  step = int(max(1, min(rows, budget // max(1, int(row_bytes)))))
  for i in range(0, rows, step):
    yield {k: v[i:i + step] for k, v in batch.items()}


def output_row_bytes(fn, batch: dict[str, Any]) -> int:
  """Bytes of ``fn(one_row_batch)``'s output (float32), by :func:`jax.eval_shape` (nothing is computed)."""
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), batch)
  return sum(int(np.prod(o.shape)) * 4 for o in jax.tree.leaves(jax.eval_shape(fn, one)))


def token_weights(kind: str, batch: dict[str, Any]) -> np.ndarray:
  """``[B, T]`` float weights of the input positions that are real tokens (the model's query positions)."""
  if kind == "gpt":
    return np.ones(batch["inputs"].shape, np.float32)
  if kind == "bert":
    return np.asarray(batch["attention_mask"], np.float32)
  return np.asarray(batch["weights"], np.float32)


def valid_by_stack(kind: str, batch: dict[str, Any]) -> dict[str, jax.Array]:
  """Stack -> ``[B, T]`` bool: the positions of real tokens each stack of the model reads (GPT: ``decoder``; BERT:
  ``encoder``; a translator: ``encoder`` the source, ``decoder`` the target inputs)."""
  if kind == "gpt":
    return {"decoder": jnp.ones(batch["inputs"].shape, bool)}
  if kind == "bert":
    return {"encoder": jnp.asarray(batch["attention_mask"]) > 0}
  from tfjax.tasks.translate import PAD_ID  # pylint: disable=import-outside-toplevel
  return {"encoder": jnp.asarray(batch["src"]) != PAD_ID, "decoder": jnp.asarray(batch["inputs"]) != PAD_ID}

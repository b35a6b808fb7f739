"""Validation batches for ``explain`` and how a batch enters the model and gives a loss, per kind of model.

* a tfjax workdir: the first ``max_batches`` of its task's own evaluation batches (``LMTask`` / ``MLMTask`` /
  ``TranslationTask`` built from the run's config: the validation text, with the run's masks for BERT);
* a Hugging Face directory (no task): the text (``--text`` or the default) as one batch: next tokens for GPT-2,
  15% of the tokens masked BERT's way (:func:`tfjax.tasks.mlm.mask_tokens`, seed 0) for BERT.

:func:`model_inputs` gives ``(args, kwargs)`` for ``model.apply``; :func:`batch_loss` the mean cross-entropy
(:func:`tfjax.explain.interventions.token_loss`) of the logits on the batch's targets; :func:`token_weights` the
``[B, T]`` weights of the positions that count (real tokens).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax.numpy as jnp
import numpy as np

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


def eval_batches(subject, max_batches: int = 4, text: str | None = None) -> list[dict[str, np.ndarray]]:
  """Up to ``max_batches`` validation batches of ``subject`` (see the module docstring)."""
  if subject.config is not None and text is None:
    return list(itertools.islice(_task(subject).eval_batches(), max(1, max_batches)))
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
  from tfjax.tasks.translate import PAD_ID
  src = subject.text_ids(text, source=True)
  tgt = ids
  return [{"src": src[None], "inputs": tgt[None, :-1], "targets": tgt[None, 1:],
           "weights": (tgt[None, 1:] != PAD_ID).astype(np.float32)}]


def model_inputs(kind: str, batch: dict[str, Any]) -> tuple[tuple, dict]:
  """``(args, kwargs)`` of ``model.apply`` for ``batch``."""
  if kind == "gpt":
    return (batch["inputs"],), {}
  if kind == "bert":
    return (batch["inputs"],), {"attention_mask": batch["attention_mask"], "token_type_ids": batch["token_type_ids"],
                                "masked_positions": batch["masked_positions"]}
  from tfjax.tasks.translate import PAD_ID
  return (batch["src"], batch["src"] != PAD_ID, batch["inputs"]), {}


def batch_loss(kind: str, logits: jnp.ndarray, batch: dict[str, Any]) -> jnp.ndarray:
  """Mean cross-entropy (nats) of ``logits`` on the batch's targets (BERT: at the masked positions)."""
  if kind == "gpt":
    return token_loss(logits, batch["targets"])
  if kind == "bert":
    return token_loss(logits, batch["masked_labels"], batch["masked_weights"])
  return token_loss(logits, batch["targets"], batch["weights"])


def token_weights(kind: str, batch: dict[str, Any]) -> np.ndarray:
  """``[B, T]`` float weights of the input positions that are real tokens (the model's query positions)."""
  if kind == "gpt":
    return np.ones(batch["inputs"].shape, np.float32)
  if kind == "bert":
    return np.asarray(batch["attention_mask"], np.float32)
  return np.asarray(batch["weights"], np.float32)

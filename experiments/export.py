"""Export a trained workdir as a Hugging Face directory that transformers' ``from_pretrained`` loads.

    ./launch.sh export runs/gpt2_small_cpu                      # -> runs/gpt2_small_cpu/hf (GPT2LMHeadModel)
    ./launch.sh export runs/bert --out=/tmp/bert_hf --step=2000  # BertForMaskedLM, or RoFormerForMaskedLM with RoPE
    ./launch.sh export runs/translate_multi30k_tiny/averaged     # an averaged inference workdir too

A GPT run is written as ``GPT2LMHeadModel`` when GPT-2 can express it (learned positions, LayerNorm, GELU, one key
and value per head, tied embeddings); a BERT run as ``BertForMaskedLM`` or, with rotary positions,
``RoFormerForMaskedLM``; an encoder-decoder with Marian's or BART's layout as ``MarianMTModel`` /
``BartForConditionalGeneration``. Anything else is an error naming what the Hugging Face architecture lacks
(:func:`tfjax.hf.save`). The run's ``tokenizer.json`` is copied beside the weights when it is a Hugging Face
``tokenizers`` file (a character-level run's alphabet is not). The export is then read back with
:func:`tfjax.hf.load` and its logits compared with the workdir's on a few tokens.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "The Hugging Face directory to write (default: WORKDIR/hf).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_bool("best", False, "The parameters with the lowest evaluation loss (runs with train.keep_best).")


class ExportError(Exception):
  """A workdir that cannot be exported (the message says why)."""


def load_run(path: str, step: int | None, best: bool):
  """``(model, params, tokenizer_file or None)`` of a GPT, BERT or translator workdir."""
  from tfjax.data.tokenizers import CharTokenizer
  from tfjax.train.restore import load_config
  if not os.path.isdir(path):
    raise ExportError(f"{path} does not exist: give a tfjax workdir")
  task = load_config(path).get("task")
  if task == "lm":
    from tfjax.tasks.lm import load_for_inference
    model, params, tokenizer, _ = load_for_inference(path, step, best)
    hf_tokenizer = not isinstance(tokenizer, CharTokenizer)
  elif task == "mlm":
    from tfjax.tasks.mlm import load_for_inference
    if best:
      raise ExportError("BERT runs keep no best/ checkpoint; drop --best")
    model, params, _ = load_for_inference(path, step)
    hf_tokenizer = True
  elif task == "translate":
    from tfjax.tasks.translate import load_for_inference
    model, params, _, _ = load_for_inference(path, step, best)
    hf_tokenizer = True
  else:
    raise ExportError(f"{path} holds a {task!r} run; export writes GPT (lm), BERT (mlm) and translator runs "
                      "(word2vec runs write their vectors as word2vec files already)")
  tok = os.path.join(path, "tokenizer.json")
  return model, params, (tok if hf_tokenizer and os.path.isfile(tok) else None)


def max_logit_difference(model, params, out: str) -> float:
  """Largest |difference| between the logits of ``(model, params)`` and of the export read back, on a few tokens."""
  import jax.numpy as jnp
  import numpy as np
  from tfjax import hf
  from tfjax.models.bert import BERT
  from tfjax.models.transformer import EncoderDecoder
  back, back_params = hf.load(out)
  cfg = model.cfg
  ids = jnp.asarray((np.arange(min(8, cfg.max_len)) * 7 + 3) % cfg.vocab_size, jnp.int32)[None]

  def logits(m, p):
    if isinstance(m, EncoderDecoder):
      return m.apply({"params": p}, ids, jnp.ones(ids.shape, bool), ids)
    if isinstance(m, BERT):
      return m.apply({"params": p}, ids, jnp.ones(ids.shape, jnp.int32), jnp.zeros(ids.shape, jnp.int32))
    return m.apply({"params": p}, ids)
  return float(np.max(np.abs(np.asarray(logits(model, params)) - np.asarray(logits(back, back_params)))))


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: export.py WORKDIR [--out=DIR] [--step=N | --best]")
  from experiments import runtime
  runtime.quiet_logging()
  from tfjax import hf
  from tfjax.train.checkpoint import CheckpointError
  path = argv[1]
  out = FLAGS.out or os.path.join(path, "hf")
  try:
    model, params, tokenizer_file = load_run(path, FLAGS.step, FLAGS.best)
    hf.save(model, params, out, tokenizer_file=tokenizer_file)
  except (ExportError, CheckpointError, hf.HFCheckpointError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  diff = max_logit_difference(model, params, out)
  with open(os.path.join(out, "config.json")) as f:
    arch = json.load(f).get("architectures", ["?"])[0]
  print(f"wrote {out}: {arch}{'' if tokenizer_file else ' (no Hugging Face tokenizer: a character-level run)'}; "
        f"read back, its logits differ from the workdir's by at most {diff:.1e}")
  return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
  app.run(main)

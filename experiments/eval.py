"""Loss, perplexity and bits per byte of a language model over a whole split, by sliding windows.

``./launch.sh eval WORKDIR|HF_DIR [--data=SHARDS_DIR|TEXT_FILE|DATASET] [--split=val|test] [--stride=S]
[--batch_size=B] [--out=FILE]``

- ``WORKDIR``: a tfjax GPT run (its ``config.json``, ``tokenizer.json`` and latest checkpoint, or ``--step`` /
  ``--best``); ``HF_DIR``: a Hugging Face GPT-2 directory, scored with its own tokenizer.
- ``--data``: a shards directory made by ``./launch.sh prepare`` (``DIR`` or ``shards:DIR``; its ``--split``, read
  through ``np.memmap`` a window at a time), a text file (the whole file), or a dataset name: ``wikitext2``
  (``--split=val|test``: ``valid.txt`` / ``test.txt``) or ``tinyshakespeare`` (``--split=val``: its last
  ``data.val_fraction``, the training run's held-out tokens). Without ``--data``, a workdir is scored on its own
  data (``config.data.dataset``): the ``--split`` of its shards, or the held-out last ``data.val_fraction`` of its
  text.
- ``--stride``: the window step, default the context (disjoint windows); every token is scored once with at least
  ``context - stride + 1`` tokens of context (see :mod:`tfjax.tasks.lm_eval`).

Prints a table and writes the figures as JSON (default ``MODEL_DIR/eval_<data>_<split>.json``).
"""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (defined when run as a program, so that tests can import this module)."""
  flags.DEFINE_string("data", None, "A shards directory (./launch.sh prepare), a text file, or a dataset name "
                      "(wikitext2, tinyshakespeare); default: a workdir's own data (its validation tokens).")
  flags.DEFINE_enum("split", "val", ["val", "test", "train"], "Which split of a shards directory or "
                    "dataset.")
  flags.DEFINE_integer("stride", 0, "Window step in tokens (0: the context, disjoint windows).")
  flags.DEFINE_integer("context", 0, "Window length in tokens (0: the model's context window).")
  flags.DEFINE_integer("batch_size", 8, "Windows per forward pass.")
  flags.DEFINE_string("out", None, "JSON output (default: MODEL_DIR/eval_<data>_<split>.json).")
  flags.DEFINE_integer("step", None, "Checkpoint step of a workdir (default: the latest).")
  flags.DEFINE_bool("best", False, "The best checkpoint of a workdir (runs with train.keep_best).")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the model's own).")
  flags.DEFINE_bool("prepend_eos", False, "Score the text's first token too, after the tokenizer's end-of-text token "
                    "(as GPT-2's paper and lm-evaluation-harness do); text inputs only.")


DATASETS = {"wikitext2": {"val": "WIKITEXT2_VALID", "test": "WIKITEXT2_TEST"},
            "tinyshakespeare": {"val": "TINY_SHAKESPEARE"}}


class EvalError(Exception):
  """A problem the user can fix (the message says what)."""


def load_model(path: str, step: int | None = None, best: bool = False, dtype: str | None = None):
  """``(model, params, tokenizer, info)`` of a tfjax GPT workdir or a Hugging Face GPT-2 directory."""
  import dataclasses
  from tfjax import config as config_lib
  from tfjax.tasks.lm import load_for_inference
  from tfjax.train.restore import load_config
  try:
    model, params, tokenizer, step = load_for_inference(path, step, best)
  except (FileNotFoundError, ValueError) as e:
    raise EvalError(str(e)) from None
  if dtype is not None:
    model = model.clone(cfg=dataclasses.replace(model.cfg, dtype=config_lib.get_dtype(dtype, "--dtype")))
  if step is None:
    return model, params, tokenizer, {"kind": "Hugging Face GPT-2", "step": None}
  return model, params, tokenizer, {"kind": "tfjax GPT workdir", "step": step, "config": load_config(path)}


def encode_text(tokenizer, text: str, where: str):
  """int32 ids of ``text``; a character tokenizer's unknown characters are an :class:`EvalError` naming ``where``."""
  import numpy as np
  if hasattr(tokenizer, "chars"):
    try:
      return np.asarray(tokenizer.encode(text), np.int32)
    except ValueError as e:
      raise EvalError(f"{where}: {e}. The model is character-level: it can only score text written in the "
                      f"{len(tokenizer.chars)} characters of its training text (e.g. its own dataset's split)") from None
  return np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)


def load_data(data: str, split: str, tokenizer, *, val_fraction: float = 0.1, prepend_eos: bool = False,
              data_dir: str | None = None, held_out: bool = False):
  """``(tokens, num_bytes, description)``: the token ids to score and the UTF-8 bytes their targets spell.
  ``held_out``: ``data`` is a run's training text, of which only the last ``val_fraction`` of tokens is scored."""
  import numpy as np
  from tfjax.data import files
  from tfjax.tasks import lm_eval
  from tfjax.data import shards
  try:
    shards_path = shards.shards_dir(data)
  except shards.ShardError as e:
    raise EvalError(str(e)) from None
  if shards_path is not None:
    if prepend_eos:
      raise EvalError("--prepend_eos applies to text inputs: in shards, documents are already separated by "
                      "end-of-text tokens")
    return load_shards(shards_path, split, tokenizer)
  if os.path.isdir(data):
    raise EvalError(f"--data={data} is a directory without meta.json: not a finished shards directory (make one with "
                    "./launch.sh prepare SOURCES... --tokenizer=SPEC --out=DIR)")
  if held_out and data not in DATASETS:
    if split != "val":
      raise EvalError(f"the run trained on the text {data}, which has no '{split}' split: only 'val' (its held-out "
                      "tokens), or score another --data")
    try:
      path = str(files.find_data_file(data, data_dir))
    except files.DataFileError as e:
      raise EvalError(f"the run's text: {e}") from None
    fraction = val_fraction
    desc = f"{path}, its last {fraction:g} of tokens (the run's held-out text)"
  elif os.path.isfile(data):
    path, desc, fraction = data, f"{data} (the whole file)", None
  elif data in DATASETS:
    if split not in DATASETS[data]:
      raise EvalError(f"--data={data} has no '{split}' split; it has: {', '.join(DATASETS[data])}")
    try:
      path = str(files.find_data_file(getattr(files, DATASETS[data][split]), data_dir))
    except files.DataFileError as e:
      raise EvalError(str(e)) from None
    fraction = val_fraction if data == "tinyshakespeare" else None
    desc = f"{data} {split} ({path}" + (f", its last {fraction:g} of tokens)" if fraction else ")")
  else:
    raise EvalError(f"--data={data}: not a shards directory, not a file, not a dataset name "
                    f"({', '.join(DATASETS)})")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  tokens = encode_text(tokenizer, text, path)
  if fraction:
    tokens = tokens[int(len(tokens) * (1.0 - fraction)):]
  if prepend_eos:
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
      raise EvalError("--prepend_eos: the model's tokenizer has no end-of-text token")
    tokens = np.concatenate([[eos], tokens]).astype(np.int32)
  if len(tokens) < 2:
    raise EvalError(f"{path} gives {len(tokens)} token(s): scoring needs at least 2")
  return tokens, lm_eval.count_bytes(tokenizer, tokens[1:]), desc


def load_shards(directory, split: str, tokenizer):
  """The tokens of a prepared shards directory's split (memory-mapped, read a window at a time) and the bytes they
  spell after the first token."""
  from tfjax.data import shards
  from tfjax.data.tokenizers import load_tokenizer
  from tfjax.tasks import lm_eval
  from tfjax.tasks.lm import same_tokenizer
  try:
    tokens = shards.TokenShards(directory, split)
  except shards.ShardError as e:
    raise EvalError(f"--data={directory}: {e}") from None
  tok_file = os.path.join(directory, tokens.meta["tokenizer"].get("file", shards.TOKENIZER_FILE))
  if not same_tokenizer(load_tokenizer(tok_file), tokenizer):
    raise EvalError(f"--data={directory} was tokenised with {tok_file} ({tokens.meta['tokenizer'].get('spec')}, "
                    f"{tokens.vocab_size} tokens), not with the model's tokenizer ({tokenizer.vocab_size} tokens): "
                    "prepare the text again with the model's tokenizer (--tokenizer=MODEL_DIR for a Hugging Face "
                    "model), or evaluate on a text file")
  if len(tokens) < 2:
    raise EvalError(f"{directory} split '{split}' has {len(tokens)} token(s): scoring needs at least 2")
  num_bytes = lm_eval.count_bytes(tokenizer, tokens) - lm_eval.count_bytes(tokenizer, tokens.read(0, 1))
  return tokens, num_bytes, f"{directory} {split} ({len(tokens):,} tokens in {tokens.num_shards} shards)"


def slug(data: str, split: str, held_out: bool = False) -> str:
  """A file name part for ``data``'s ``split`` (a whole text file has no split; a run's held-out text has)."""
  name = os.path.basename(os.path.normpath(data)) if os.path.exists(data) else data
  name = re.sub(r"\.(txt|gz|jsonl)$", "", name)
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ("" if os.path.isfile(data) and not held_out else f"_{split}")


def format_table(rows) -> str:
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def own_data(path: str, config) -> str:
  """The data a workdir trained on (``config.data.dataset``); a Hugging Face directory has none."""
  if config is None:
    raise EvalError(f"{path} is not a tfjax run: say what to score with --data=SHARDS_DIR|TEXT_FILE|DATASET "
                    f"({', '.join(DATASETS)})")
  return str(config.data.dataset)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: eval.py WORKDIR|HF_DIR [--data=SHARDS_DIR|TEXT_FILE|DATASET] [--split=val|test] "
                         "[--stride=S] [--batch_size=B]")
  import numpy as np
  from experiments import runtime
  from tfjax.tasks import lm_eval
  from tfjax.train.checkpoint import CheckpointError
  runtime.quiet_logging()
  path = argv[1]
  try:
    model, params, tokenizer, info = load_model(path, FLAGS.step, FLAGS.best, FLAGS.dtype)
    config = info.get("config")
    val_fraction = config.data.get("val_fraction", 0.1) if config is not None else 0.1
    data_dir = (config.get("data_dir") or None) if config is not None else None
    data = FLAGS.data or own_data(path, config)
    tokens, num_bytes, desc = load_data(data, FLAGS.split, tokenizer, val_fraction=val_fraction,
                                        prepend_eos=FLAGS.prepend_eos, data_dir=data_dir, held_out=not FLAGS.data)
    context = FLAGS.context or model.cfg.max_len
    stride = FLAGS.stride or context
    lm_eval.check_window_args(len(tokens), context, stride)
    if context > model.cfg.max_len:
      raise EvalError(f"--context={context} is longer than the model's context window {model.cfg.max_len}")
  except (EvalError, CheckpointError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  out = FLAGS.out or os.path.join(path, f"eval_{slug(data, FLAGS.split, held_out=not FLAGS.data)}.json")
  total = lm_eval.num_windows(len(tokens), context, stride)
  print(f"# {path} ({info['kind']}{'' if info['step'] is None else ', step ' + str(info['step'])}): {desc}, "
        f"{len(tokens):,} tokens, {total:,} windows of {context} with stride {stride}", file=sys.stderr)
  last = [time.perf_counter()]

  def progress(done, k_total):
    if time.perf_counter() - last[0] > 10 or done == k_total:
      last[0] = time.perf_counter()
      print(f"#   {done:,}/{k_total:,} windows", file=sys.stderr)

  try:
    result = lm_eval.evaluate(model, params, tokens, stride=stride, batch_size=FLAGS.batch_size, context=context,
                              num_bytes=num_bytes, progress=progress)
  except ValueError as e:  # e.g. token ids outside the model's vocabulary
    print(f"error: {e}", file=sys.stderr)
    return 1
  bpb = result.bits_per_byte
  print(format_table([
      ("model", f"{path} ({info['kind']}{'' if info['step'] is None else ', step ' + str(info['step'])})"),
      ("data", desc),
      ("tokens", f"{result.scored_tokens:,} scored (all but the first), {num_bytes:,} bytes"),
      ("windows", f"{result.num_windows:,} of {context} tokens, stride {stride} (context >= {context - stride + 1})"),
      ("loss", f"{result.loss:.4f} nats/token"),
      ("perplexity", f"{result.perplexity:.3f}"),
      ("bits/byte", "n/a" if bpb is None else f"{bpb:.4f}"),
      ("time", f"{result.seconds:.1f} s ({result.scored_tokens / max(result.seconds, 1e-9):,.0f} tokens/s)"),
  ]))
  record = {"model": os.path.abspath(path), "model_kind": info["kind"], "step": info["step"], "data": data,
            "split": None if os.path.isfile(data) and FLAGS.data else FLAGS.split, "data_description": desc,
            "prepend_eos": FLAGS.prepend_eos, "batch_size": FLAGS.batch_size, "tokens": int(len(tokens)),
            "dtype": np.dtype(model.cfg.dtype).name,
            **result.to_dict()}
  try:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(record, f, indent=2)
      f.write("\n")
  except OSError as e:
    print(f"error: cannot write {out} ({e}); choose another file with --out", file=sys.stderr)
    return 1
  print(f"# wrote {out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)

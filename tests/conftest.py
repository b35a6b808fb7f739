"""Test set-up: the shared data dir, and helpers to build small configs."""

import os
import pathlib
import shutil

if os.environ.get("PYTEST_XDIST_WORKER"):
  # parallel workers (./launch.sh test) share the machine's accelerators: none may claim most of their memory up front
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_shared = ROOT.parent / "shared" / "data"
if "TFJAX_DATA_DIR" not in os.environ and _shared.is_dir():
  os.environ["TFJAX_DATA_DIR"] = str(_shared)

# Tests compare against float32/float64 references: on GPUs (TF32) and TPUs (bf16 passes) a float32 matmul's default
# precision is lower than that, so tests ask for full float32 matmuls everywhere (a no-op on CPUs).
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
  if os.environ.get("TFJAX_SLOW_TESTS") == "1":
    return
  skip = pytest.mark.skip(reason="slow; run with TFJAX_SLOW_TESTS=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


def tiny_lm_config(**overrides):
  """A GPT config small enough to train in seconds: 2 layers, width 32, context 16, batch 8."""
  from experiments.configs import gpt_shakespeare_tiny
  c = gpt_shakespeare_tiny.get_config()
  c.model.update(num_layers=2, num_heads=4, emb_dim=32, max_len=16)
  c.train.update(batch_size=8, num_steps=20, log_every=5, eval_every=10, eval_steps=2, checkpoint_every=10,
                 parallel="none", log_mfu=False, async_checkpoint=False)
  c.optimizer.update(warmup_steps=5, lr=3e-3)
  c.sample.num_tokens = 0
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def hf_bert_with_vocab(tmp_path) -> str:
  """The tiny HF BERT fixture plus a WordPiece vocab.txt of its 100 ids (the fixture ships no tokenizer)."""
  d = tmp_path / "hf_bert"
  shutil.copytree(ROOT / "tests" / "fixtures" / "hf_bert", d)
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c in "abcdefghijklmnopqrstuvwxyz"] + \
          ["the", "capital", "of", "is", "paris", "france", "rome", "italy", ",", "."]
  words += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
  words += [f"w{i}" for i in range(100 - len(words))]
  (d / "vocab.txt").write_text("\n".join(words) + "\n")
  return str(d)

"""Test set-up: the shared data dir, and helpers to build small configs."""

import os
import json
import pathlib
import shutil
import subprocess
import sys
import warnings

if os.environ.get("PYTEST_XDIST_WORKER"):
  # parallel workers (./launch.sh test) share the machine's accelerators: none may claim most of their memory up front
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_shared = ROOT.parent / "shared" / "data"
if "TFJAX_DATA_DIR" not in os.environ and _shared.is_dir():
  os.environ["TFJAX_DATA_DIR"] = str(_shared)

# One persistent compilation cache for the whole test session (pytest-xdist workers inherit the controller's
# environment, and the CLIs the tests launch read the same variable): a program compiled by one test (the tiny GPT's
# train step, say, in-process or in a subprocess) is loaded, not compiled again, by the next test that builds the same
# program. JAX keys entries by the program, options, flags, devices and versions, so a hit is the same executable.
# The folder is removed when the session ends; a TFJAX_COMPILATION_CACHE_DIR set by the caller (``off``: none) wins.
_SESSION_CACHE_OWNER = "TFJAX_COMPILATION_CACHE_DIR" not in os.environ and not os.environ.get("PYTEST_XDIST_WORKER")
if _SESSION_CACHE_OWNER:
  import tempfile  # noqa: E402
  os.environ["TFJAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="tfjax_test_jax_cache_")


def pytest_unconfigure(config):
  if _SESSION_CACHE_OWNER:
    shutil.rmtree(os.environ["TFJAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


from experiments import runtime as _runtime  # noqa: E402

_runtime.enable_compilation_cache()

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


# XLA:CPU with 8 fake devices on a loaded 2-core machine has hung in a collective (7 of 8 device threads at the
# rendezvous; the same worker alone passes). The cause found: the translator's 64 validation batches were all queued
# at once (tfjax.train.loop.EVAL_BATCHES_IN_FLIGHT now bounds them: 6 of 6 loaded runs passed, against 1 of 2 before).
# In case another queue does it, the worker is given 240 s for a collective to gather (a healthy one takes well under
# a second) and is run again once when that aborts it.
WORKER_COLLECTIVE_TIMEOUT_S = 240
_HANG = "Termination timeout"


def run_parallel_worker(*args: str) -> dict:
  """``tests/parallel_worker.py ARGS`` in a subprocess (8 fake CPU devices): its ``RESULT`` JSON. A run aborted by a
  hung collective is repeated once, with a warning; any other failure fails with the worker's output."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  from experiments import runtime  # pylint: disable=import-outside-toplevel
  flags = [f"{f.split('=')[0]}={WORKER_COLLECTIVE_TIMEOUT_S}" for f in runtime.COLLECTIVE_TIMEOUT_FLAGS]
  env["XLA_FLAGS"] = " ".join(f for f in flags if runtime._jaxlib_knows_flag(f))  # pylint: disable=protected-access
  for attempt in range(2):
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_worker.py"), *args], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=1800)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if line:
      return json.loads(line[0][len("RESULT "):])
    if _HANG not in out.stderr or attempt == 1:
      break
    warnings.warn(f"parallel_worker.py {' '.join(args)}: a collective hung (XLA:CPU rendezvous abort); running it "
                  "again")
  raise AssertionError(out.stdout[-3000:] + out.stderr[-3000:])

"""What the README demo spends outside training: the matmul peak measured once and cached, a sample compiled once
(and equal to full forward passes over the same sliding window), the compilation cache, tensorboardX without torch,
and the side-by-side demo benchmark's nanoGPT data and log parsing."""

import importlib.util
import json
import os
import pickle
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from tfjax import generate as generate_lib
from tfjax.models.config import TransformerConfig
from tfjax.models.gpt import GPT
from tfjax.train import metrics


def test_matmul_peak_is_measured_once_per_machine_and_flags(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(metrics, "measure_matmul_peak", lambda: calls.append(1) or 1e9 * len(calls))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert metrics.cached_matmul_peak(tmp_path) == 1e9
  assert metrics.cached_matmul_peak(tmp_path) == 1e9 and len(calls) == 1  # read back, not measured
  assert metrics.device_peak_flops(cache_dir=tmp_path) == 1e9 and len(calls) == 1
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false")
  assert metrics.cached_matmul_peak(tmp_path) == 2e9 and len(calls) == 2  # other flags: another entry
  table = json.loads((tmp_path / metrics.PEAK_CACHE_FILE).read_text())
  assert len(table) == 2
  (tmp_path / metrics.PEAK_CACHE_FILE).write_text("{not json")
  assert metrics.cached_matmul_peak(tmp_path) == 3e9 and len(calls) == 3  # unreadable: measured over


def _sliding_reference(model, params, prompt, num_new):
  """Greedy tokens from full forward passes (no cache) over the window the cached sampler keeps: the prompt's last
  max_len tokens, growing until it would exceed max_len, then restarted from the last max_len // 2 tokens."""
  max_len, half = model.cfg.max_len, max(1, model.cfg.max_len // 2)
  tokens = list(prompt)
  start = max(0, len(tokens) - max_len)
  for _ in range(num_new):
    if len(tokens) - start > max_len:
      start = len(tokens) - half
    logits = model.apply({"params": params}, jnp.asarray([tokens[start:]], jnp.int32))
    tokens.append(int(np.argmax(np.asarray(logits[0, -1]))))
  return tokens


@pytest.fixture(scope="module")
def small_gpt():
  model = GPT(TransformerConfig(vocab_size=30, num_layers=1, num_heads=2, emb_dim=16, max_len=8))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  params = jax.tree.map(lambda p: p * 6.0 if p.ndim == 2 else p, params)  # not a constant greedy sequence
  return model, params


@pytest.mark.parametrize("prompt", [[3], [1, 2, 3, 4, 5], list(range(1, 12))])  # short, mid, longer than max_len
def test_cached_sample_refills_its_window_like_full_forward_passes(small_gpt, prompt):
  model, params = small_gpt
  out = generate_lib.generate(model, params, np.asarray([prompt]), 21, jax.random.key(0), temperature=0.0)
  assert out[0].tolist() == _sliding_reference(model, params, prompt, 21)


@pytest.mark.parametrize("num_new", [1, 2, 3, 8])  # samples that end before the window fills (no refill traced)
def test_short_cached_samples_equal_full_forward_passes(small_gpt, num_new):
  model, params = small_gpt
  out = generate_lib.generate(model, params, np.asarray([[3]]), num_new, jax.random.key(0), temperature=0.0)
  assert out[0].tolist() == _sliding_reference(model, params, [3], num_new)


def test_a_whole_sample_compiles_once(small_gpt):
  model, params = small_gpt
  before = generate_lib._cached_generate._cache_size()  # pylint: disable=protected-access
  generate_lib.generate(model, params, np.asarray([[1, 2]]), 40, jax.random.key(1), temperature=0.8, top_k=5)
  # 40 tokens through a window of 8 refill the cache ~8 times: still one compiled program
  assert generate_lib._cached_generate._cache_size() == before + 1  # pylint: disable=protected-access


def test_tensorboard_writer_is_imported_without_torch(tmp_path):
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed: nothing to keep out")
  code = ("import sys; from tfjax.train import metrics; w = metrics.TensorBoardWriter(sys.argv[1]); "
          "w.write({'step': 1, 'loss': 2.0}); w.close(); print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
  assert out.stdout.strip() == "False"


def test_compilation_cache_is_written_and_can_be_turned_off(tmp_path):
  code = ("import sys; from experiments import runtime; d = runtime.enable_compilation_cache(); print(d); "
          "import jax, jax.numpy as jnp; jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((8, 8))).block_until_ready()")
  env = dict(os.environ, TFJAX_COMPILATION_CACHE_DIR=str(tmp_path / "jc"))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                       check=True)
  assert out.stdout.strip() == str(tmp_path / "jc")
  assert any(name.startswith("jit_") for name in os.listdir(tmp_path / "jc"))
  env["TFJAX_COMPILATION_CACHE_DIR"] = "off"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                       check=True)
  assert out.stdout.strip() == "None"


def test_nanogpt_prepare_writes_its_bins_and_meta(tmp_path):
  from experiments.bench.nanogpt import prepare
  text = "hello world\nthe quick brown fox\n" * 50
  (tmp_path / "input.txt").write_text(text)
  meta = prepare(str(tmp_path / "input.txt"), str(tmp_path / "out"))
  train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
  val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
  assert len(train) == int(0.9 * len(text)) and len(train) + len(val) == len(text)
  with open(tmp_path / "out" / "meta.pkl", "rb") as f:
    saved = pickle.load(f)
  assert saved["vocab_size"] == meta["vocab_size"] == len(set(text))
  assert "".join(saved["itos"][int(i)] for i in np.concatenate([train, val])) == text
  assert list(saved["stoi"]) == sorted(set(text))


def test_demo_bench_reads_both_programs_logs(tmp_path):
  from experiments.bench import demo as bench_demo
  tf_lines = [(5.0, "12:00:00 step 0 | eval_loss 4.1867 | eval_accuracy 0.0273"),
              (9.0, "12:00:04 step 50/2000 | loss 3.4 | lr 2.4e-04 | 4,000 tok/s | MFU 15.3% | ETA 5m"),
              (12.0, "12:00:07 step 100/2000 | loss 2.6 | lr 7.4e-04 | 20,000 tok/s | MFU 19.8% | ETA 4m"),
              (15.0, "12:00:10 step 150/2000 | loss 2.3 | lr 1.0e-03 | 22,000 tok/s | MFU 17.3% | ETA 4m"),
              (20.0, "12:00:15 step 250 | eval_loss 1.8700 | eval_accuracy 0.4"),
              (30.0, "12:00:25 step 500 | eval_loss 1.7800 | eval_accuracy 0.5")]
  (tmp_path / "results.json").write_text(json.dumps({
      "eval_loss": 1.78, "started_unix": 1003.0, "run_seconds": 25.0,
      "phase_seconds": {"setup": 2.0, "compile": 3.0, "train": 15.0, "eval": 2.0, "checkpoint": 1.0}}))
  rec = bench_demo.parse_tfjax(tf_lines, 30.0, 1000.0, str(tmp_path), 1.88)
  assert rec["time_to_target_s"] == 20.0 and rec["final_val_loss"] == 1.78
  assert rec["steady_tokens_per_s"] == 21000.0  # the first interval (compilation) left out
  assert rec["phases"]["startup"] == 3.0 and rec["phases"]["exit"] == pytest.approx(2.0)
  ng_lines = [(1.0, "number of parameters: 0.80M"), (2.0, "step 0: train loss 4.19, val loss 4.18")]
  ng_lines += [(3.0 + i, f"iter {i}: loss 3.0, time {40.0 if i % 2 else 30.0:.2f}ms") for i in range(13)]
  ng_lines += [(20.0, "step 250: train loss 1.9, val loss 1.8900"),
               (25.0, 'RESULT {"phases": {"imports": 2.0, "setup": 1.0, "eval": 3.0, "checkpoint": 0.5, '
                      '"train": 15.0}, "tokens_per_iter": 768}')]
  rec = bench_demo.parse_nanogpt(ng_lines, 26.0, 1.88)
  assert rec["time_to_target_s"] is None and rec["final_val_loss"] == 1.89  # 1.89 never reaches 1.88
  assert rec["steady_tokens_per_s"] == pytest.approx(768 / 0.035)  # median of 30 and 40 ms iterations
  assert rec["phases"]["startup"] == 2.0 and rec["phases"]["exit"] == pytest.approx(4.5)

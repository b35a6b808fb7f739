"""pmap / dp / fsdp on 8 fake CPU devices give the same losses as one device (in a subprocess: XLA_FLAGS must be
set before JAX starts)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_worker.py"), "none,pmap,dp,fsdp"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  assert line, out.stdout[-3000:] + out.stderr[-3000:]
  return json.loads(line[0][len("RESULT "):])


@pytest.mark.parametrize("mode", ["pmap", "dp", "fsdp", "fsdp_fused_loss"])
def test_mode_equals_single_device(results, mode):
  single = results["none"]
  assert len(single["loss"]) == 6
  np.testing.assert_allclose(results[mode]["loss"], single["loss"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(results[mode]["eval_loss"], single["eval_loss"], rtol=1e-5, atol=1e-5)
  assert single["loss"][-1] < single["loss"][0]


def test_fsdp_shards_parameters(results):
  assert "data" in results["fsdp_embedding_spec"]


def test_batch_not_divisible_by_devices(results):
  assert results["indivisible_error"] is not None
  assert "does not divide across 8 devices" in results["indivisible_error"]


def test_cpu_devices_get_patient_collectives_and_user_flags_win(monkeypatch):
  # several CPU devices: the all-reduce rendezvous must not abort a run after XLA's default 40 s on a loaded machine
  from experiments import runtime
  monkeypatch.setenv("TFJAX_CPU_DEVICES", "2")
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_collective_timeout_seconds=5")
  runtime.configure_devices()
  flags = os.environ["XLA_FLAGS"].split()
  assert "--xla_force_host_platform_device_count=2" in flags
  assert "--xla_cpu_collective_call_terminate_timeout_seconds=600" in flags
  assert [f for f in flags if f.startswith("--xla_cpu_collective_timeout_seconds")] == [
      "--xla_cpu_collective_timeout_seconds=5"]  # the user's own value is kept
  monkeypatch.setenv("TFJAX_CPU_DEVICES", "1")
  monkeypatch.setenv("XLA_FLAGS", "")
  runtime.configure_devices()
  assert os.environ["XLA_FLAGS"] == ""  # one device: no collectives, nothing added

"""pmap / dp / fsdp on 8 fake CPU devices give the same losses as one device (in a subprocess: XLA_FLAGS must be
set before JAX starts)."""

import os

import numpy as np
import pytest

from conftest import run_parallel_worker


@pytest.fixture(scope="module")
def results():
  return run_parallel_worker("none,pmap,dp,fsdp")


@pytest.mark.parametrize("mode", ["pmap", "dp", "fsdp", "fsdp_fused_loss"])
def test_mode_equals_single_device(results, mode):
  single = results["none"]
  assert len(single["loss"]) == 6
  np.testing.assert_allclose(results[mode]["loss"], single["loss"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(results[mode]["eval_loss"], single["eval_loss"], rtol=1e-5, atol=1e-5)
  assert single["loss"][-1] < single["loss"][0]


def test_fsdp_shards_parameters(results):
  assert "data" in results["fsdp_embedding_spec"]


def test_flash_attention_sharded_by_batch_and_heads_equals_one_device(results):
  r = results["flash_sharded"]
  assert r["loss_diff"] < 1e-4 and r["grad_diff"] < 1e-5, r
  assert "data" in r["dq_spec"] and "model" in r["dq_spec"], r


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


def test_the_worker_is_run_again_once_after_a_hung_collective_and_only_then(monkeypatch):
  import types
  import conftest
  calls = []
  replies = iter([("", "F1207 rendezvous.cc:161] Termination timeout for `all reduce`"), ('RESULT {"a": 1}\n', ""),
                  ("", "Termination timeout"), ("", "Termination timeout"), ("", "Traceback: ValueError")])

  def fake_run(cmd, **kwargs):
    calls.append(kwargs["env"]["XLA_FLAGS"])
    stdout, stderr = next(replies)
    return types.SimpleNamespace(stdout=stdout, stderr=stderr, returncode=1)

  monkeypatch.setattr(conftest.subprocess, "run", fake_run)
  with pytest.warns(UserWarning, match="hung"):
    assert conftest.run_parallel_worker("x") == {"a": 1}
  with pytest.warns(UserWarning), pytest.raises(AssertionError, match="Termination timeout"):
    conftest.run_parallel_worker("x")  # hung twice: a failure
  with pytest.raises(AssertionError, match="ValueError"):
    conftest.run_parallel_worker("x")  # anything else: no second run
  assert len(calls) == 5 and all(f"={conftest.WORKER_COLLECTIVE_TIMEOUT_S}" in c for c in calls)

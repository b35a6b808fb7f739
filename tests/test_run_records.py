"""What a run leaves in its workdir besides checkpoints: the resolved config, versions and devices, the compiled
step's memory, TensorBoard event files and (when asked) a profiler trace of chosen steps."""

import json
import os
import subprocess

import jax
import pytest

from conftest import tiny_lm_config
from tfjax.config import ConfigError
from tfjax.tasks.lm import LMTask
from tfjax.train.loop import parse_profile_steps, train_and_evaluate


def test_workdir_records_config_versions_memory_tensorboard_and_profile(tmp_path):
  config = tiny_lm_config(**{"train.num_steps": 6, "train.log_every": 1, "train.eval_every": 3,
                             "model.num_layers": 1})
  config.train.profile_steps = "2:4"
  res = train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))

  assert json.load(open(tmp_path / "config.json"))["model"]["num_layers"] == 1  # the resolved config
  info = json.load(open(tmp_path / "run_info.json"))
  # the checkout's commit; outside a git checkout (an unpacked release, say) the record says so with ""
  head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(__file__))
  expected = head.stdout.strip() if head.returncode == 0 else ""
  assert info["git_commit"] == expected, (info["git_commit"], head.stderr)
  assert len(expected) in (0, 40)
  assert info["jax"] == jax.__version__ and info["flax"] and info["device_kinds"] == ["cpu"]
  mem = info["step_memory_bytes"]
  assert mem["argument_size_in_bytes"] > 4 * res["num_params"]  # params + optimizer state + batch
  assert res["step_memory_bytes"] == mem

  events = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
  assert events
  data = open(tmp_path / events[0], "rb").read()
  assert b"loss" in data and b"eval_loss" in data and b"tokens_per_s" in data

  traces = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "profile") for f in fs]
  assert any(t.endswith(".xplane.pb") for t in traces), traces


def test_profile_steps_spec():
  assert parse_profile_steps("") is None
  assert parse_profile_steps("10:15") == (10, 15)
  for bad in ("10", "15:10", "a:b"):
    with pytest.raises(ConfigError, match="profile_steps"):
      parse_profile_steps(bad)


def test_a_config_json_that_is_not_a_runs_record_is_a_clear_error(tmp_path):
  """A Hugging Face directory without its weights (or any other config.json) is not read as a run's config."""
  import sys
  from conftest import ROOT
  from tfjax.train.checkpoint import CheckpointError
  from tfjax.train.restore import load_config
  (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
  with pytest.raises(CheckpointError, match="is not a tfjax run's config .* model.safetensors"):
    load_config(str(tmp_path))
  (tmp_path / "config.json").write_text('{"task": ')
  with pytest.raises(CheckpointError, match="cannot be read as a run's config"):
    load_config(str(tmp_path))
  out = subprocess.run([sys.executable, str(ROOT / "experiments" / "sample.py"), str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr and "cannot be read" in out.stderr, out.stderr

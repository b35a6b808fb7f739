"""Runs that survive being killed: SIGKILL at random moments (mid-step, mid-async-save) and a relaunch give parameters
bit-identical to an uninterrupted run; SIGTERM saves at the current step; NaN steps stop or are skipped; corrupt and
incompatible checkpoints give clear errors, or fall back to the previous step."""

import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_lm_config
from tfjax.tasks.lm import LMTask
from tfjax.train import checkpoint as ckpt_lib
from tfjax.train.loop import NonFiniteLossError, train_and_evaluate
from tfjax.train.optimizer import make_optimizer
from tfjax.train.step import init_state

# async checkpoints on, a save after every step: a random kill often lands in the middle of one
KILL_OVERRIDES = {"model.num_layers": 1, "train.num_steps": 40, "train.checkpoint_every": 1, "train.log_every": 1,
                  "train.eval_every": 0, "train.eval_steps": 1, "train.async_checkpoint": True,
                  "model.dropout_rate": 0.1, "optimizer.decay_steps": 40, "train.max_to_keep": 2}


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def train_args(config, workdir):
  """Command-line arguments of experiments/train.py that reproduce ``config`` (a tiny_lm_config)."""
  from experiments.configs import gpt_shakespeare_tiny
  base = _flatten(gpt_shakespeare_tiny.get_config().to_dict())
  args = ["--config=experiments/configs/gpt_shakespeare_tiny.py", f"--workdir={workdir}"]
  for k, v in _flatten(config.to_dict()).items():
    if base.get(k) != v:
      args.append(f"--config.{k}={v}")
  return args


def one_device_env():
  """This process's environment for a run on one device: ``TFJAX_CPU_DEVICES=1``, and ``XLA_FLAGS`` without a fake
  CPU device count. Other XLA flags stay, so that ``XLA_FLAGS=--xla_gpu_deterministic_ops=true pytest
  tests/test_kill.py`` checks bit-exact resumption on a GPU."""
  env = dict(os.environ, TFJAX_CPU_DEVICES="1")
  kept = [f for f in env.pop("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  if kept:
    env["XLA_FLAGS"] = " ".join(kept)
  return env


def start_train(config, workdir, **popen):
  env = one_device_env()
  return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "train.py"), *train_args(config, workdir)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def wait_for_training(proc, timeout=300):
  """Reads the run's output until it logs a training step ("step N/M | loss ..."); False if it ended first."""
  t0 = time.time()
  for line in proc.stdout:
    if re.search(r"step \d+/\d+ \| loss", line):
      return True
    if time.time() - t0 > timeout:
      raise TimeoutError("the run did not start training")
  return False


def complete_checkpoints(workdir):
  """Steps with a finalised checkpoint in ``workdir`` (orbax renames a step's directory when its save completes)."""
  d = workdir / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()) \
      if d.is_dir() else []


def wait_for_checkpoint(workdir, proc, timeout=300):
  """Waits until ``workdir`` holds a finalised checkpoint; False if the run ended first."""
  t0 = time.time()
  while not complete_checkpoints(workdir):
    if proc.poll() is not None:
      return False
    if time.time() - t0 > timeout:
      raise TimeoutError("the run wrote no checkpoint")
    time.sleep(0.02)
  return True


def final_state(workdir, config):
  task = LMTask(config, None)
  tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
  abstract = jax.eval_shape(functools.partial(init_state, task, tx, config.seed))
  manager = ckpt_lib.make_manager(str(workdir), 3, async_save=False)
  state, _ = ckpt_lib.restore(manager, ckpt_lib.complete_steps(manager)[-1], abstract)
  manager.close()
  return state


def assert_identical(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_at_random_moments_then_relaunch_is_bit_identical(tmp_path):
  config = tiny_lm_config(**KILL_OVERRIDES)
  ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
  # the uninterrupted reference is the same program as the killed runs (a subprocess, not this process: pytest's
  # conftest asks for "highest" matmul precision, which on a GPU differs from the program's default)
  ref = start_train(config, ref_dir)
  out, _ = ref.communicate(timeout=300)
  assert ref.returncode == 0, out[-3000:]
  # the kill moments' delays are drawn from a fixed seed (TFJAX_KILL_SEED=N draws others); printed for reruns
  seed = int(os.environ.get("TFJAX_KILL_SEED", "0"))
  print(f"TFJAX_KILL_SEED={seed}")
  rng = random.Random(seed)
  kills = int(os.environ.get("TFJAX_KILLS", "2"))
  killed_at = []
  for i in range(kills):
    proc = start_train(config, dir_)
    if not wait_for_training(proc):
      break  # finished before the kill
    # the first kill comes after a checkpoint exists (on a slow machine two early kills could both precede the first
    # finished save, and the relaunch would then rightly start afresh instead of resuming); later kills are anywhere
    if i == 0 and not wait_for_checkpoint(dir_, proc):
      break
    time.sleep(rng.uniform(0.0, 1.0))
    if proc.poll() is not None:
      break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    steps = [json.loads(l)["step"] for l in open(dir_ / "metrics.jsonl") if l.strip().endswith("}")]
    killed_at.append(steps[-1] if steps else 0)
    assert not (dir_ / "results.json").exists() or killed_at[-1] == config.train.num_steps
  print("killed after steps", killed_at)
  assert len(killed_at) >= min(kills, 2), killed_at
  proc = start_train(config, dir_)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert "resumed from the checkpoint at step" in out, (killed_at, out[-3000:])
  a, b = final_state(ref_dir, config), final_state(dir_, config)
  assert int(a.step) == int(b.step) == config.train.num_steps, killed_at
  assert_identical(a, b)
  # each step is logged once, with the uninterrupted run's values
  loss = lambda d: [json.loads(l)["loss"] for l in open(d / "metrics.jsonl") if '"loss"' in l]  # noqa: E731
  assert loss(dir_) == loss(ref_dir)


def test_sigterm_saves_at_the_current_step_and_exits_cleanly(tmp_path):
  config = tiny_lm_config(**{**KILL_OVERRIDES, "train.checkpoint_every": 1000, "train.num_steps": 400,
                             "optimizer.decay_steps": 400})
  proc = start_train(config, tmp_path)
  assert wait_for_training(proc)
  time.sleep(0.3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: saved a checkpoint at step" in out
  step = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split()[0])
  assert 0 < step < config.train.num_steps
  manager = ckpt_lib.make_manager(str(tmp_path), 2, async_save=False)
  assert ckpt_lib.complete_steps(manager) == [step]  # the periodic checkpoint (every 1000) never ran
  manager.close()
  assert int(final_state(tmp_path, config).step) == step
  assert not (tmp_path / "results.json").exists()


class _SigtermAt(LMTask):
  """Sends this process SIGTERM while building the batch of a chosen step (as a scheduler would, mid-run)."""
  term_step = 6

  def train_batch(self, step, shard=0, num_shards=1):
    if step == self.term_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().train_batch(step, shard, num_shards)


def test_sigterm_right_after_a_periodic_checkpoint_exits_cleanly(tmp_path):
  # a checkpoint after every step: the stop comes on a step that was just saved (orbax refused a second save of it)
  config = tiny_lm_config(**{"train.checkpoint_every": 1, "train.num_steps": 12})
  res = train_and_evaluate(config, str(tmp_path), _SigtermAt(config, str(tmp_path)))
  assert 0 < res["preempted_at"] < config.train.num_steps
  manager = ckpt_lib.make_manager(str(tmp_path), 2, async_save=False)
  assert ckpt_lib.complete_steps(manager)[-1] == res["preempted_at"]
  manager.close()


class _NaNAt(LMTask):
  """Poisons the inputs of chosen steps: an out-of-range token id gives NaN gradients (see STYLE.md)."""
  bad_steps = (3, 7)

  def train_batch(self, step, shard=0, num_shards=1):
    b = dict(super().train_batch(step, shard, num_shards))
    if step in self.bad_steps:
      b["inputs"] = b["inputs"].copy()
      b["inputs"][0, 0] = 10**6
    return b


def test_nan_step_stops_naming_step_and_metric_and_keeps_last_checkpoint(tmp_path):
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 10, "train.checkpoint_every": 2, "train.log_every": 1})
  with pytest.raises(NonFiniteLossError, match=r"non-finite grad_norm = nan at step 4") as e:
    train_and_evaluate(config, str(tmp_path), _NaNAt(config, str(tmp_path)))
  assert "checkpoints" in str(e.value)
  manager = ckpt_lib.make_manager(str(tmp_path), 3, async_save=False)
  assert ckpt_lib.complete_steps(manager)[-1] == 2  # the NaN step 4 is checked before its checkpoint is written
  manager.close()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(final_state(tmp_path, config).params))


def test_skip_nonfinite_skips_and_counts_the_bad_steps(tmp_path):
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 10, "train.log_every": 1, "train.skip_nonfinite": True})
  res = train_and_evaluate(config, str(tmp_path), _NaNAt(config, str(tmp_path)))
  assert res["skipped_steps"] == 2
  recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  skipped = {r["step"]: r["skipped_total"] for r in recs if "skipped_total" in r}
  assert skipped[3] == 0 and skipped[4] == 1 and skipped[8] == 2 and skipped[10] == 2
  assert np.isnan([r["grad_norm"] for r in recs if r["step"] == 4][0])
  state = final_state(tmp_path, config)
  assert int(state.step) == 10
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  assert np.isfinite(res["eval_loss"])


def _corrupt(step_dir):
  """Overwrites every array data file of a checkpoint step with garbage."""
  n = 0
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      if not f.startswith("_") and not f.endswith(".json"):
        p = os.path.join(root, f)
        with open(p, "r+b") as fh:
          size = os.path.getsize(p)
          fh.write(b"\x00garbage" * max(1, size // 8))
        n += 1
  assert n, f"nothing to corrupt in {step_dir}"


def test_corrupt_checkpoint_is_an_error_unless_restore_fallback(tmp_path):
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 4, "train.checkpoint_every": 2, "train.eval_every": 0,
                             "train.log_every": 1})
  train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))
  _corrupt(tmp_path / "checkpoints" / "4")
  longer = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 6, "train.checkpoint_every": 2, "train.eval_every": 0,
                             "train.log_every": 1})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/4.*restore_fallback"):
    train_and_evaluate(longer, str(tmp_path), LMTask(longer, str(tmp_path)))
  longer.train.restore_fallback = True
  res = train_and_evaluate(longer, str(tmp_path), LMTask(longer, str(tmp_path)))
  assert res["step"] == 6
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]  # resumed at 2, steps 3-4 re-done once


def test_incompatible_checkpoint_names_what_differs(tmp_path):
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 2, "train.checkpoint_every": 2, "train.eval_every": 0})
  train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))
  wider = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 4, "model.emb_dim": 48, "train.eval_every": 0})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"does not fit") as e:
    train_and_evaluate(wider, str(tmp_path), LMTask(wider, str(tmp_path)))
  # the message names parameters and both shapes (parameters before the optimizer state)
  assert re.search(r"does not fit this model/optimizer: params/decoder/block_0/\S+: model \(48, \d+\) vs "
                   r"checkpoint \(32, \d+\)", str(e.value)), str(e.value)

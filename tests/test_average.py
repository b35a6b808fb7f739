"""Checkpoint averaging (tfjax.train.average): K copies of one checkpoint average to it, two to their mean (against
numpy), chosen steps, clear errors, and the averaged workdir loaded by the ordinary inference path."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from tfjax.train import average as avg
from tfjax.train import checkpoint as ckpt_lib
from tfjax.train import restore


def _params(seed):
  rng = np.random.RandomState(seed)
  return {"embed": {"embedding": rng.randn(11, 4).astype(np.float32)},
          "block_0": {"kernel": rng.randn(4, 6).astype(np.float32), "bias": rng.randn(6).astype(np.float32)}}


def _workdir(tmp_path, trees: dict[int, dict]):
  """A workdir whose checkpoints hold ``trees`` at their steps (the state as the loop saves it: params + step)."""
  wd = tmp_path / "run"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps({"task": "lm"}))
  (wd / "tokenizer.json").write_text("{}")
  manager = ckpt_lib.make_manager(str(wd), max_to_keep=100, async_save=False)
  for step, params in trees.items():
    ckpt_lib.save(manager, step, {"params": params, "step": np.int32(step)}, {"step": step})
  manager.wait_until_finished()
  manager.close()
  return str(wd)


def _close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


def test_averaging_copies_of_one_checkpoint_returns_it(tmp_path):
  p = _params(0)
  wd = _workdir(tmp_path, {10: p, 20: p, 30: p})
  out, steps = avg.average_checkpoints(wd, last=3)
  assert steps == [10, 20, 30] and out == os.path.join(wd, "averaged")
  params, step = restore.load_params(out)  # the ordinary inference restore path reads it
  assert step == 30
  _close(params, p, rtol=0, atol=0)
  assert json.load(open(os.path.join(out, "averaged.json")))["averaged_steps"] == [10, 20, 30]
  assert os.path.isfile(os.path.join(out, "config.json")) and os.path.isfile(os.path.join(out, "tokenizer.json"))


def test_average_of_two_is_their_mean_and_last_k_or_chosen_steps(tmp_path):
  trees = {s: _params(s) for s in (5, 10, 15)}
  wd = _workdir(tmp_path, trees)
  in_flight = os.path.join(wd, "checkpoints", "20.orbax-checkpoint-tmp-1")  # a save still being written
  os.makedirs(os.path.join(in_flight, "state"))
  out, steps = avg.average_checkpoints(wd, last=2)
  assert steps == [10, 15] and avg.checkpoint_steps(wd) == [5, 10, 15]
  assert os.path.isdir(os.path.join(in_flight, "state"))  # read-only: the training run's save is left alone
  want = jax.tree.map(lambda a, b: (a.astype(np.float64) + b) / 2, trees[10], trees[15])
  _close(restore.load_params(out)[0], want, rtol=1e-6, atol=1e-7)
  assert not np.allclose(want["block_0"]["kernel"], trees[15]["block_0"]["kernel"])  # the mean is not either one
  # chosen steps, into another directory; a second average replaces an earlier one
  out2, steps = avg.average_checkpoints(wd, steps=[5, 15], out=str(tmp_path / "avg"))
  assert steps == [5, 15]
  _close(restore.load_params(out2)[0], jax.tree.map(lambda a, b: (a + b) / 2, trees[5], trees[15]), rtol=1e-6)
  out3, _ = avg.average_checkpoints(wd, last=3, out=out2)
  _close(restore.load_params(out3)[0], jax.tree.map(lambda *x: sum(x) / 3, *trees.values()), rtol=1e-6, atol=1e-7)
  assert restore.load_params(out3)[1] == 15


def test_average_params_is_the_elementwise_mean_and_checks_structure():
  a, b = _params(1), _params(2)
  _close(avg.average_params([a, b, b]), jax.tree.map(lambda x, y: (x + 2.0 * y) / 3, a, b), rtol=1e-6, atol=1e-7)
  half = {k: v for k, v in a.items() if k != "embed"}
  with pytest.raises(ValueError, match="differs in structure"):
    avg.average_params([a, half])
  wrong = jax.tree.map(lambda x: x, b)
  wrong["block_0"]["bias"] = np.zeros(7, np.float32)
  with pytest.raises(ValueError, match="block_0.*different shapes"):
    avg.average_params([a, wrong])
  with pytest.raises(ValueError, match="at least one"):
    avg.average_params([])


def test_average_errors_name_what_is_wrong(tmp_path):
  wd = _workdir(tmp_path, {1: _params(0), 2: _params(1)})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"last 3 checkpoints but only 2 are kept \(\[1, 2\]\)"):
    avg.average_checkpoints(wd, last=3)
  with pytest.raises(ckpt_lib.CheckpointError, match=r"no checkpoint for step\(s\) \[7\]; available: \[1, 2\]"):
    avg.average_checkpoints(wd, steps=[1, 7])
  with pytest.raises(ValueError, match="either last=K .* or steps"):
    avg.average_checkpoints(wd, last=1, steps=[1])
  with pytest.raises(ValueError, match="last must be >= 1"):
    avg.average_checkpoints(wd, last=0)
  with pytest.raises(ValueError, match="is not an averaged checkpoint"):
    avg.average_checkpoints(wd, last=1, out=str(tmp_path))  # a directory with other things in it
  (tmp_path / "a_file").write_text("kept")
  with pytest.raises(ValueError, match="is a file; --out wants a directory"):
    avg.average_checkpoints(wd, last=1, out=str(tmp_path / "a_file"))
  assert (tmp_path / "a_file").read_text() == "kept"
  with pytest.raises(ckpt_lib.CheckpointError, match="has no config.json"):
    avg.average_checkpoints(str(tmp_path / "nowhere"), last=1)


def test_launch_average_cli_and_sample_from_the_averaged_gpt(tmp_path):
  """A real run's last two checkpoints averaged by ./launch.sh average, then sampled from by ./launch.sh sample."""
  from conftest import ROOT, tiny_lm_config
  from experiments import runtime
  c = tiny_lm_config()
  c.train.update(num_steps=20, checkpoint_every=10, tensorboard=False)
  wd = tmp_path / "gpt"
  runtime.run(c, str(wd))
  out = subprocess.run([str(ROOT / "launch.sh"), "average", str(wd), "--last=2"], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "averaged steps [10, 20]" in out.stdout
  want = avg.average_params([restore.load_params(str(wd), s)[0] for s in (10, 20)])
  _close(restore.load_params(str(wd / "averaged"))[0], want, rtol=1e-6, atol=1e-7)
  out = subprocess.run([str(ROOT / "launch.sh"), "sample", str(wd / "averaged"), "--num_tokens=5"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "step 20" in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip() == f"# {wd / 'averaged'}: step 20", out.stderr[:2000]  # no orbax restore logs
  for flag, said in (("--temperature=-1", "non-negative"), ("--top_p=0", "--top_p must be in (0, 1]"),
                     ("--prompt=\u20ac", "not in the tokenizer's alphabet")):  # bad input: one line, no traceback
    out = subprocess.run([str(ROOT / "launch.sh"), "sample", str(wd / "averaged"), "--num_tokens=5", flag],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and said in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
  out = subprocess.run([str(ROOT / "launch.sh"), "average", str(wd), "--last=5"], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 1 and "only 2 are kept" in out.stderr

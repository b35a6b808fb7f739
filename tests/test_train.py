"""Training: the loss falls, checkpoints restore exactly, resume is bit-exact, accumulation equals a big batch,
and bad inputs give clear errors."""

import functools
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_lm_config
from tfjax.config import ConfigError
from tfjax.data.files import DataFileError
from tfjax.tasks.lm import LMTask
from tfjax.train import checkpoint as ckpt_lib
from tfjax.train.loop import train_and_evaluate
from tfjax.train.optimizer import make_optimizer
from tfjax.train.restore import load_params
from tfjax.train.step import init_state, make_train_step


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def _final_params(workdir, config):
  """The params of the latest checkpoint in ``workdir`` (restored independently of the loop)."""
  task = LMTask(config, None)
  tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
  abstract = jax.eval_shape(functools.partial(init_state, task, tx, config.seed))
  manager = ckpt_lib.make_manager(workdir, 3, async_save=False)
  state, _ = ckpt_lib.restore(manager, manager.latest_step(), abstract)
  manager.close()
  return state


def test_training_lowers_the_loss_and_writes_the_workdir(tmp_path):
  config = tiny_lm_config(**{"train.num_steps": 40, "train.eval_every": 40, "sample.num_tokens": 20})
  results = train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))
  recs = _metrics(tmp_path)
  first = next(r for r in recs if "loss" in r)
  assert first["loss"] > 3.5  # ~ln(65) at the start
  assert results["eval_loss"] < first["loss"] - 0.6
  for key in ("step", "loss", "tokens_per_s", "lr"):
    assert key in first
  for name in ("config.json", "results.json", "run_info.json", "tokenizer.json", "loss.png"):
    assert (tmp_path / name).exists(), name
  assert len(results["sample"]) > 20
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["step"] == 40
  # where the time went: every phase of the run timed, and together no more than the run itself
  phases = saved["phase_seconds"]
  for name in ("setup", "compile", "eval", "train", "checkpoint", "final_report", "plot"):
    assert phases[name] >= 0.0, name
  assert phases["train"] > 0.0 and phases["compile"] > 0.0
  assert sum(phases.values()) <= saved["run_seconds"] + 1e-3
  assert saved["started_unix"] <= time.time()


def test_checkpoint_restore_equals_saved_state(tmp_path):
  config = tiny_lm_config()
  task = LMTask(config, None)
  tx, schedule = make_optimizer(config.optimizer, 10)
  state = jax.jit(functools.partial(init_state, task, tx, 0))()
  step = jax.jit(make_train_step(task, tx, schedule))
  for s in range(3):
    state, _ = step(state, task.train_batch(s))
  manager = ckpt_lib.make_manager(str(tmp_path), 2, async_save=False)
  ckpt_lib.save(manager, 3, state, {"step": 3})
  manager.wait_until_finished()
  restored, meta = ckpt_lib.restore(manager, 3, jax.eval_shape(lambda: state))
  assert meta["step"] == 3
  leaves_a, tree_a = jax.tree.flatten(state)
  leaves_b, tree_b = jax.tree.flatten(restored)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(restored.step) == 3


def test_loading_params_for_inference_leaves_a_save_in_progress_alone(tmp_path):
  # translate / sample / explain may read a workdir while its run is still saving: the reader must not remove the
  # writer's temporary directory (orbax's clean-up on open did), and reads the latest complete step
  config = tiny_lm_config()
  task = LMTask(config, None)
  tx, _ = make_optimizer(config.optimizer, 10)
  state = jax.jit(functools.partial(init_state, task, tx, 0))()
  manager = ckpt_lib.make_manager(str(tmp_path), 2, async_save=False)
  ckpt_lib.save(manager, 3, state, {"step": 3})
  manager.wait_until_finished()
  manager.close()
  in_progress = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234567890"
  (in_progress / "state").mkdir(parents=True)
  params, step = load_params(str(tmp_path))
  assert step == 3 and in_progress.is_dir()
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stop_and_resume_equals_uninterrupted(tmp_path):
  overrides = {"train.num_steps": 20, "optimizer.decay_steps": 20, "train.checkpoint_every": 5,
               "model.dropout_rate": 0.1}
  full = tiny_lm_config(**overrides)
  train_and_evaluate(full, str(tmp_path / "a"), LMTask(full, str(tmp_path / "a")))
  first_half = tiny_lm_config(**{**overrides, "train.num_steps": 10})
  train_and_evaluate(first_half, str(tmp_path / "b"), LMTask(first_half, str(tmp_path / "b")))
  train_and_evaluate(full, str(tmp_path / "b"), LMTask(full, str(tmp_path / "b")))  # relaunch resumes at 10
  a, b = _final_params(tmp_path / "a", full), _final_params(tmp_path / "b", full)
  assert int(a.step) == int(b.step) == 20
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  la = [r["loss"] for r in _metrics(tmp_path / "a") if "loss" in r]
  lb = [r["loss"] for r in _metrics(tmp_path / "b") if "loss" in r]
  assert la == lb  # the resumed run logs each step once, with the same values


def test_keep_best_keeps_the_parameters_of_the_lowest_eval_loss(tmp_path, monkeypatch):
  """Scripted eval losses 3, 2, 1, 1.5 at steps 0, 5, 10, 15, then a relaunch from step 5 (as if killed after best/10
  was written, before checkpoint 10 was) evaluating 1, 1.5, 1.2 at 10, 15, 20: best/ holds step 10's parameters,
  equal to the regular checkpoint of step 10 and not to the last one."""
  from tfjax.train import loop
  from tfjax.train.restore import load_params
  scripted = iter([3.0, 2.0, 1.0, 1.5, 1.0, 1.5, 1.2])
  monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"eval_loss": next(scripted)})
  overrides = {"train.num_steps": 15, "optimizer.decay_steps": 20, "train.eval_every": 5, "train.checkpoint_every": 5,
               "train.max_to_keep": 10, "train.keep_best": True}
  config = tiny_lm_config(**overrides)
  results = train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))
  assert results["best_eval_step"] == results["best_checkpoint_step"] == 10
  for step in ("10", "15"):
    shutil.rmtree(tmp_path / "checkpoints" / step)
  config = tiny_lm_config(**{**overrides, "train.num_steps": 20})  # relaunch: resumes at 5
  results = train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))
  assert (results["eval_loss"], results["best_eval_step"], results["best_checkpoint_step"]) == (1.2, 10, 10)
  best, best_step = load_params(str(tmp_path), best=True)
  at_10, _ = load_params(str(tmp_path), step=10)
  last, _ = load_params(str(tmp_path))
  assert best_step == 10 and sorted(os.listdir(tmp_path / "best")) == ["10"]
  for x, y, z in zip(jax.tree.leaves(best), jax.tree.leaves(at_10), jax.tree.leaves(last)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(not np.array_equal(np.asarray(x), np.asarray(z)) for x, z in zip(jax.tree.leaves(best),
                                                                               jax.tree.leaves(last)))
  with pytest.raises(ckpt_lib.CheckpointError, match="keep_best"):
    load_params(str(tmp_path / "nothing"), best=True)


def test_gradient_accumulation_equals_one_big_batch():
  # plain SGD: the update is proportional to the gradient (Adam's first step, g/|g|, would amplify rounding)
  config = tiny_lm_config(**{"optimizer.warmup_steps": 0, "optimizer.name": "sgd", "optimizer.b1": 0.0,
                             "optimizer.lr": 1.0})
  task = LMTask(config, None)
  tx, schedule = make_optimizer(config.optimizer, 10)
  state = jax.jit(functools.partial(init_state, task, tx, 0))()
  batch = task.train_batch(0)
  one, m1 = jax.jit(make_train_step(task, tx, schedule, accum_steps=1))(state, batch)
  four, m4 = jax.jit(make_train_step(task, tx, schedule, accum_steps=4))(state, batch)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  assert not np.allclose(one.params["embed"]["embedding"], state.params["embed"]["embedding"])


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
  config = tiny_lm_config(**{"optimizer.lr": 1e30, "optimizer.grad_clip": 0.0, "optimizer.warmup_steps": 0})
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))


def test_missing_data_file_says_where_to_put_it(tmp_path, monkeypatch):
  monkeypatch.delenv("TFJAX_DATA_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("TFJAX_OFFLINE", "1")
  config = tiny_lm_config(data_dir=str(tmp_path / "nodata"))
  with pytest.raises(DataFileError, match="tinyshakespeare/input.txt") as e:
    LMTask(config, None)
  assert "TFJAX_DATA_DIR" in str(e.value) and "https://" in str(e.value)


def test_invalid_config_values_name_the_key(tmp_path):
  for key, value in (("train.parallel", "bogus"), ("train.batch_size", 0), ("optimizer.lr", -1.0),
                     ("model.positional", "spiral")):
    config = tiny_lm_config(**{key: value})
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
      train_and_evaluate(config, str(tmp_path), LMTask(config, str(tmp_path)))


def _run_train(*args, env_extra=None):
  env = {**os.environ, "TFJAX_CPU_DEVICES": "1", **(env_extra or {})}
  return subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), *args], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=300)


def test_unknown_config_key_is_rejected_in_one_line_naming_the_flag(tmp_path):
  for flag, said in (("--config.model.num_layerz=3", 'Did you mean "num_layers"'),
                     ("--config.nosuch.x=1", "no key 'nosuch'")):
    out = _run_train("--config=experiments/configs/gpt_shakespeare_tiny.py", f"--workdir={tmp_path}",
                     "--config.train.num_steps=2", flag)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {flag}: the config has no key")
    assert said in out.stderr
    assert not os.path.exists(tmp_path / "config.json")  # nothing started



def test_bad_config_values_of_every_task_are_one_line_errors(tmp_path):
  """Values each task checks when it is built (not only the shared keys): a one-line error, no traceback."""
  for config, flag, said in (
      ("gpt_shakespeare_tiny", "--config.task=nosuch", "unknown config.task 'nosuch'"),
      ("gpt_shakespeare_tiny", "--config.data.val_fraction=0.00005", "the validation split has 56 tokens"),
      ("bert_wikitext2", "--config.data.mask_prob=1.5", "data.mask_prob must be in (0, 1)"),
      ("word2vec_skipgram", "--config.data.window=0", "data.window must be >= 1")):
    out = _run_train(f"--config=experiments/configs/{config}.py", f"--workdir={tmp_path / config}", flag,
                     "--config.train.num_steps=2" if config != "word2vec_skipgram" else "--config.train.epochs=1")
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout, (flag, out.stderr[-2000:])
    assert said in out.stdout + out.stderr, (flag, out.stdout[-1000:], out.stderr[-1000:])
    assert not os.path.exists(tmp_path / config / "config.json")  # nothing started

def test_apply_overrides_sets_nested_keys_and_names_bad_ones():
  from experiments.configs import gpt_shakespeare_tiny
  from tfjax.config import apply_overrides
  config = apply_overrides(gpt_shakespeare_tiny.get_config(),
                           ["model.num_layers=2", "model.positional=learned", "optimizer.lr=3e-4"])
  assert (config.model.num_layers, config.model.positional, config.optimizer.lr) == (2, "learned", 3e-4)
  for bad, named in (("model.num_layerz=2", "num_layerz"), ("nope.x=1", "nope.x"), ("model.num_layers", "KEY=VALUE"),
                     ("model.num_layers=two", "num_layers")):
    with pytest.raises(ConfigError, match=named):
      apply_overrides(gpt_shakespeare_tiny.get_config(), [bad])


def test_bench_ab_times_paired_variants(tmp_path):
  out = tmp_path / "ab.jsonl"
  env = dict(os.environ, TFJAX_CPU_DEVICES="2")
  res = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench" / "ab.py"), "--rounds=3",
                        "--steps_per_round=2", "--variant=base:model.num_layers=1",
                        "--variant=relu:model.num_layers=1,model.activation=relu", f"--out={out}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["variant"] for r in rows] == ["base", "relu"]
  assert rows[0]["speedup_median"] == 1.0 and rows[1]["overrides"][-1] == "model.activation=relu"
  assert all(r["tokens_per_s"] > 0 and r["rounds"] == 1 and r["temp_mb"] > 0 for r in rows)


def test_plot_cli_draws_runs_and_refuses_what_it_cannot_draw(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
      {"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.0}, {"step": 2, "eval_loss": 3.5})))
  plot = [sys.executable, str(ROOT / "experiments" / "plot.py")]
  ok = subprocess.run([*plot, str(run), f"--out={tmp_path / 'a.png'}"], capture_output=True, text=True, cwd=tmp_path)
  assert ok.returncode == 0 and (tmp_path / "a.png").stat().st_size > 5000, ok.stderr[-2000:]
  for args, said in (([str(tmp_path / "none")], "has no metrics.jsonl"), ([str(run), "--metric=bleu"], "no 'bleu'")):
    bad = subprocess.run([*plot, *args, f"--out={tmp_path / 'b.png'}"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1 and said in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b.png").exists()


def test_a_relaunch_that_cannot_resume_leaves_the_runs_record_as_it_was(tmp_path, caplog):
  """A config whose model does not fit the checkpoint, or a config of another task, is refused with a message, and
  config.json / tokenizer.json stay those of the run in the workdir."""
  from experiments import runtime
  from experiments.configs import translate_multi30k_tiny
  c = tiny_lm_config()
  c.train.update(num_steps=2, eval_every=0, tensorboard=False)
  wd = tmp_path / "gpt"
  assert runtime.run(c, str(wd)) is not None
  record = {n: (wd / n).read_bytes() for n in ("config.json", "tokenizer.json", "run_info.json")}
  bigger = tiny_lm_config()
  bigger.train.update(num_steps=4, eval_every=0, tensorboard=False)
  bigger.model.num_layers = c.model.num_layers + 1
  for other, said in ((bigger, "does not fit this model"), (translate_multi30k_tiny.get_config(), "holds a 'lm' run")):
    caplog.clear()
    assert runtime.run(other, str(wd)) is None
    assert said in caplog.text
    assert {n: (wd / n).read_bytes() for n in record} == record
  (tmp_path / "a_file").write_text("kept")
  caplog.clear()
  assert runtime.run(c, str(tmp_path / "a_file")) is None  # a --workdir that is a file: refused, left as it was
  assert "is a file, not a directory" in caplog.text and (tmp_path / "a_file").read_text() == "kept"


def test_bad_data_init_and_batch_flags_are_one_line_errors(tmp_path):
  for flag, said in (("--config.data.dataset=shards:/nonexistent", "meta.json does not exist"),
                     ("--config.init_from=/nonexistent", "neither a Hugging Face GPT-2 directory"),
                     ("--config.train.batch_size=3", "does not divide across 2 devices")):
    out = _run_train("--config=experiments/configs/gpt_shakespeare_tiny.py", f"--workdir={tmp_path / 'wd'}",
                     "--config.train.num_steps=2", "--config.train.parallel=dp", flag,
                     env_extra={"TFJAX_CPU_DEVICES": "2"})
    text = out.stdout + out.stderr  # the log goes to stdout
    assert out.returncode == 1 and "error: " in text and said in text and "Traceback" not in text, text[-2000:]
    assert not (tmp_path / "wd" / "config.json").exists()


def test_evaluation_keeps_few_batches_in_flight_and_averages_them_all(monkeypatch):
  """20 evaluation batches are read back 8, 8 and 4 at a time (XLA:CPU's collectives deadlock with dozens of
  multi-device programs queued), and the result is the weighted mean over all of them."""
  import jax.numpy as jnp
  from tfjax.train import loop

  class Task:
    def eval_batches(self, pid, nproc):
      return ({"x": np.float32(i)} for i in range(20))

  def eval_fn(params, batch):
    return batch["x"] * 2.0, jnp.float32(2.0), {"acc": batch["x"]}

  sizes, device_get = [], jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda xs: sizes.append(len(xs)) or device_get(xs))
  out = loop.evaluate(Task(), eval_fn, None, lambda b: jax.tree.map(jnp.asarray, b))
  assert sizes == [8, 8, 4] and loop.EVAL_BATCHES_IN_FLIGHT == 8
  assert out["eval_loss"] == pytest.approx(np.arange(20).mean()) and out["eval_acc"] == pytest.approx(4.75)

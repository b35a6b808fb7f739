"""The library boundary: every exported name resolves, ``import tfjax`` stays cheap, the Task protocol is what the loop
uses, the library never imports ``experiments``, and docs/library.md's example runs as written."""

import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("tfjax", "tfjax.layers", "tfjax.models", "tfjax.data", "tfjax.tasks", "tfjax.train", "tfjax.explain")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
  module = importlib.import_module(package)
  assert module.__all__, package
  for name in module.__all__:
    value = getattr(module, name)
    assert value is not None, f"{package}.{name}"
    assert name in dir(module)
  with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
    getattr(module, "no_such_name")


def test_exports_are_the_objects_of_their_modules():
  import tfjax
  from tfjax.explain import capture
  from tfjax.models import config as model_config
  from tfjax.models import gpt
  from tfjax.train import loop
  assert tfjax.TransformerConfig is tfjax.layers.TransformerConfig is tfjax.models.TransformerConfig is \
      model_config.TransformerConfig
  assert tfjax.GPT is gpt.GPT and tfjax.train_and_evaluate is loop.train_and_evaluate
  assert tfjax.run_with_cache is tfjax.explain.run_with_cache is capture.run_with_cache
  assert callable(tfjax.hf.load) and callable(tfjax.hf.save)


def test_import_tfjax_imports_no_jax():
  heavy = ("jax", "flax", "optax", "orbax", "numpy", "ml_collections")
  code = (f"import sys, tfjax, {', '.join(PACKAGES[1:])}\n"
          f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_library_never_imports_experiments():
  """tfjax/ is the installed package; experiments/ is not (configs are experiments built on the library)."""
  offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tfjax").rglob("*.py")
               if re.search(r"^\s*(from|import) experiments\b", p.read_text(), re.M)]
  assert not offenders, offenders


def test_shipped_tasks_implement_the_protocol():
  from tfjax.tasks import TASKS, LMTask, MLMTask, TranslationTask, CentreWordTask
  from tfjax.tasks.base import OPTIONAL, Task, TaskDefaults
  required = [n for n in vars(Task) if not n.startswith("_")]
  assert sorted(required) == ["eval_batches", "init_params", "loss_fn", "train_batch"]
  for cls in (LMTask, MLMTask, TranslationTask, CentreWordTask):
    assert all(callable(getattr(cls, n, None)) for n in required), cls
  assert set(OPTIONAL) == {n for n in vars(TaskDefaults) if not n.startswith("_")}
  assert sorted(TASKS) == ["lm", "mlm", "translate"]


def test_optional_members_default_and_missing_ones_are_named():
  import ml_collections
  from tfjax.tasks import check_task, make_task, register_task
  from tfjax.tasks.base import optional

  class Bare:
    def init_params(self, rng): ...
    def loss_fn(self, params, batch, rng, train): ...
    def train_batch(self, step, shard=0, num_shards=1): ...

  with pytest.raises(TypeError, match="Bare is not a tfjax Task: it lacks eval_batches"):
    check_task(Bare())
  Bare.eval_batches = lambda self, shard=0, num_shards=1: []
  task = Bare()
  check_task(task)
  assert optional(task, "fixed_batch_shape") is True and optional(task, "flops_per_token")(None) is None
  assert optional(task, "eval_report")(None) == {} and optional(task, "final_report")(None) == {}
  task.fixed_batch_shape = False
  assert optional(task, "fixed_batch_shape") is False
  with pytest.raises(AttributeError, match="not an optional Task member"):
    optional(task, "loss_fn")
  register_task("bare_for_test", lambda config, workdir: Bare())
  try:
    assert isinstance(make_task(ml_collections.ConfigDict({"task": "bare_for_test"})), Bare)
  finally:
    from tfjax.tasks import TASKS
    TASKS.pop("bare_for_test")
  with pytest.raises(ValueError, match="unknown config.task 'nope'; known: lm, mlm, translate"):
    make_task(ml_collections.ConfigDict({"task": "nope"}))


def test_the_loop_calls_only_the_protocol(tmp_path):
  """A task with only the required methods trains; every member the loop looks up is one of the protocol's."""
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  from tfjax import config as config_lib
  from tfjax.train.loop import train_and_evaluate

  calls = set()

  class Linear:
    def __getattribute__(self, name):
      if not name.startswith("_"):
        calls.add(name)
      return object.__getattribute__(self, name)

    def init_params(self, rng):  # pylint: disable=unused-argument
      return {"w": jnp.zeros((3,))}

    def loss_fn(self, params, batch, rng, train):  # pylint: disable=unused-argument
      err = batch["inputs"] @ params["w"] - batch["targets"]
      return jnp.sum(err ** 2), jnp.asarray(err.size, jnp.float32), {}

    def _batch(self, key):
      x = np.random.default_rng(key).normal(size=(8, 3)).astype(np.float32)
      return {"inputs": x, "targets": x @ np.array([1.0, -2.0, 0.5], np.float32)}

    def train_batch(self, step, shard=0, num_shards=1):  # pylint: disable=unused-argument
      return self._batch([0, step])

    def eval_batches(self, shard=0, num_shards=1):  # pylint: disable=unused-argument
      return [self._batch([1, 0])]

  config = ml_collections.ConfigDict({"seed": 0, "optimizer": config_lib.optimizer_config(),
                                      "train": config_lib.train_config()})
  config.optimizer.update(lr=0.1, warmup_steps=0, weight_decay=0.0, schedule="constant")
  config.train.update(batch_size=8, num_steps=40, log_every=20, eval_every=20, checkpoint_every=0,
                      parallel="none", log_mfu=False, tensorboard=False, async_checkpoint=False)
  results = train_and_evaluate(config, str(tmp_path), Linear())
  assert results["eval_loss"] < 1e-3 and results["step"] == 40
  from tfjax.tasks.base import OPTIONAL
  required = {"init_params", "loss_fn", "train_batch", "eval_batches"}
  assert required <= calls <= required | set(OPTIONAL), calls  # the protocol's members and nothing else


def test_docs_library_example_runs(capsys):
  """docs/library.md's code blocks, executed as written, in order."""
  text = (ROOT / "docs" / "library.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks
  namespace = {"__name__": "docs_library"}
  for block in blocks:
    exec(compile(block, "docs/library.md", "exec"), namespace)  # pylint: disable=exec-used
  results = namespace["results"]
  assert results["step"] == 300 and results["eval_accuracy"] > 0.8, results
  assert "eval accuracy" in capsys.readouterr().out

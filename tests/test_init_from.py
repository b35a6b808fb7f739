"""config.init_from: a run starts from a Hugging Face GPT-2 (the loss at step 0 is the PyTorch model's on the same
batch) or from another tfjax workdir (its parameters exactly), with its tokenizer; mismatches are clear errors."""

import functools
import json

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_lm_config
from tfjax.data import prepare as prep
from tfjax.tasks.lm import InitFromError, LMTask
from tfjax.train.optimizer import make_optimizer
from tfjax.train.restore import load_params
from tfjax.train.step import init_state, make_train_step

GPT2 = ROOT / "tests" / "fixtures" / "hf_gpt2"


def _reference_loss(inputs, targets) -> float:
  """Mean next-token cross-entropy of the Hugging Face GPT-2 fixture on ``inputs``, float64 sums: transformers'
  GPT2LMHeadModel when torch is installed (the independent reference), else the model ``tfjax.hf.load`` builds from
  the same directory (which tests/test_hf.py holds to transformers' stored logits), so CI without torch checks that
  init_from starts from exactly the imported model."""
  try:
    import torch
    import transformers
  except ImportError:
    from tfjax import hf
    model, params = hf.load(GPT2)
    logits = np.asarray(model.apply({"params": params}, np.asarray(inputs)), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, np.asarray(targets)[..., None], -1).mean())
  model = transformers.GPT2LMHeadModel.from_pretrained(str(GPT2)).eval()
  with torch.no_grad():
    logits = model(torch.as_tensor(np.asarray(inputs), dtype=torch.long)).logits.double()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1))
  return float(ce)


@pytest.fixture(scope="module")
def gpt2_shards(tmp_path_factory):
  d = tmp_path_factory.mktemp("gpt2_shards")
  text = (ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt").read_text()[:40000]
  (d / "t.txt").write_text(text)
  prep.prepare([str(d / "t.txt")], str(GPT2), d / "shards", val_fraction=0.1, log=lambda m: None)
  return d / "shards"


def test_step_zero_loss_equals_the_imported_models_loss_on_the_same_batch(gpt2_shards, tmp_path):
  config = tiny_lm_config(**{"init_from": str(GPT2), "data.dataset": str(gpt2_shards),
                             "optimizer.warmup_steps": 0})
  task = LMTask(config, str(tmp_path))
  # the architecture is the checkpoint's, written into config.model (so the workdir's config.json describes it)
  assert (config.model.num_layers, config.model.emb_dim, config.model.max_len, config.model.positional,
          config.model.use_bias) == (2, 16, 32, "learned", True)
  assert task.seq_len == 32 and task.model_cfg.vocab_size == 300 and task.model_cfg.activation == "gelu_tanh"
  assert json.loads((tmp_path / "tokenizer.json").read_text()) == json.loads((GPT2 / "tokenizer.json").read_text())
  tx, schedule = make_optimizer(config.optimizer, 10)
  state = jax.jit(functools.partial(init_state, task, tx, config.seed))()
  batch = task.train_batch(0)
  _, metrics = jax.jit(make_train_step(task, tx, schedule))(state, batch)
  np.testing.assert_allclose(float(metrics["loss"]), _reference_loss(batch["inputs"], batch["targets"]), rtol=1e-5)


def test_the_loop_starts_from_the_imported_weights_and_the_text_is_tokenised_with_its_tokenizer(tmp_path):
  from tfjax.train.loop import train_and_evaluate
  config = tiny_lm_config(**{"init_from": str(GPT2), "train.num_steps": 1, "train.eval_every": 1,
                             "train.eval_steps": 1, "train.checkpoint_every": 0})
  task = LMTask(config, str(tmp_path))  # tinyshakespeare as text, encoded by the GPT-2 tokenizer (vocab 300)
  assert task.train_data.max() >= 256  # merges, not characters
  first = next(task.eval_batches())
  train_and_evaluate(config, str(tmp_path), task)
  step0 = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert step0["step"] == 0
  np.testing.assert_allclose(step0["eval_loss"], _reference_loss(first["inputs"], first["targets"]), rtol=1e-5)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["emb_dim"] == 16


def test_init_from_a_workdir_continues_from_its_parameters(gpt2_shards, tmp_path):
  """The workdir's architecture and parameters; how to run (here ``scan_layers``: the first run scanned its 2
  layers, the second does not) stays the new run's, the parameters converted to its layout."""
  from tfjax.layers.blocks import unscan_params
  from tfjax.train.loop import train_and_evaluate
  first = tiny_lm_config(**{"data.dataset": str(gpt2_shards), "model.num_layers": 2, "model.positional": "rope",
                            "model.scan_layers": True, "train.num_steps": 3, "train.eval_every": 0,
                            "train.checkpoint_every": 3})
  train_and_evaluate(first, str(tmp_path / "a"), LMTask(first, str(tmp_path / "a")))
  params_a, _ = load_params(str(tmp_path / "a"))
  assert "layers" in params_a["decoder"]
  # the second run's own model keys (learned positions, 3 layers) give way to the workdir's
  config = tiny_lm_config(**{"data.dataset": str(gpt2_shards), "init_from": str(tmp_path / "a"),
                             "model.num_layers": 3})
  task = LMTask(config, None)
  assert (config.model.num_layers, config.model.positional, task.model_cfg.scan_layers) == (2, "rope", False)
  tx, _ = make_optimizer(config.optimizer, 10)
  state = jax.jit(functools.partial(init_state, task, tx, 123))()
  want = unscan_params(params_a)
  assert jax.tree.structure(want) == jax.tree.structure(state.params)
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_init_from_hugging_face_gpt2_into_scanned_layers(gpt2_shards):
  """A run with ``scan_layers=True`` fine-tunes a Hugging Face GPT-2 (one tree a layer) from the same weights,
  stacked: the step-0 loss is the imported model's (it was silently reset to the checkpoint's scan_layers=False)."""
  config = tiny_lm_config(**{"init_from": str(GPT2), "data.dataset": str(gpt2_shards), "model.scan_layers": True})
  task = LMTask(config, None)
  assert task.model_cfg.scan_layers
  tx, _ = make_optimizer(config.optimizer, 10)
  state = jax.jit(functools.partial(init_state, task, tx, 0))()
  assert "layers" in state.params["decoder"]
  batch = task.train_batch(0)
  loss, count, _ = task.loss_fn(state.params, batch, None, False)
  np.testing.assert_allclose(float(loss / count), _reference_loss(batch["inputs"], batch["targets"]), rtol=1e-5)


def test_a_tokenizer_that_differs_from_the_datas_or_a_model_that_is_not_a_gpt_is_an_error(tmp_path):
  (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.\n" * 50)
  prep.prepare([str(tmp_path / "t.txt")], "char", tmp_path / "char", val_fraction=0.5, log=lambda m: None)
  config = tiny_lm_config(**{"init_from": str(GPT2), "data.dataset": f"shards:{tmp_path / 'char'}"})
  with pytest.raises(InitFromError, match=f"prepare them with --tokenizer={GPT2}"):
    LMTask(config, None)
  with pytest.raises(InitFromError, match="BERT"):
    LMTask(tiny_lm_config(**{"init_from": str(ROOT / "tests" / "fixtures" / "hf_bert")}), None)
  with pytest.raises(InitFromError, match="neither a Hugging Face GPT-2 directory"):
    LMTask(tiny_lm_config(**{"init_from": str(tmp_path)}), None)

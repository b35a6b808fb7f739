"""The ladder from CBOW's average to attention (tfjax.models.context_models, CentreWordTask, the explain runner).

References are independent of the modules under test: word2vec's ``context_mean`` for CBOW, ``mask / n`` for its
weights, and a numpy transcription of self-attention for rung 4.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import cbow_to_attention as cfg_mod
from tfjax import config as config_lib
from tfjax.explain import cbow_to_attention as explain
from tfjax.models import context_models as cm
from tfjax.models import word2vec as w2v
from tfjax.tasks import word2vec as w2v_task

B, W, D, V = 5, 3, 12, 40
C = 2 * W
# sentence edges: slots past the start (rows 1, 3) or the end (row 2) of a sentence are padding; row 4 has no context
MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0],
                 [0, 0, 0, 0, 0, 0]], bool)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  vectors = rng.normal(size=(B, C, D)).astype(np.float32)
  return jnp.asarray(vectors), jnp.asarray(MASK)


def _uniform_reference(vectors, mask):
  n = mask.sum(axis=1, keepdims=True)
  return np.asarray(w2v.context_mean(vectors, mask)), np.where(n > 0, mask / np.maximum(n, 1), 0.0)


def _init(module, vectors, mask, seed=0):
  return nn.unbox(module.init(jax.random.key(seed), vectors, mask)["params"])


def _randomise(params, seed=1):
  """Every parameter replaced by a draw of the same shape (zero-initialised ones would hide bugs)."""
  leaves, tree = jax.tree.flatten(jax.tree.map(np.asarray, nn.unbox(params)))
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [jnp.asarray(rng.normal(size=x.shape).astype(np.float32)) for x in leaves])


def test_rung2_with_equal_weights_is_cbow():
  vectors, mask = _inputs()
  module = cm.PositionWeightedContext(C)
  params = {"position_logits": jnp.full((C,), 3.7)}
  hidden, weights = module.apply({"params": params}, vectors, mask)
  ref_hidden, ref_weights = _uniform_reference(vectors, mask)
  np.testing.assert_allclose(hidden, ref_hidden, atol=1e-6)
  np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
  hidden1, weights1 = cm.MeanContext().apply({}, vectors, mask)
  np.testing.assert_allclose(hidden1, ref_hidden, atol=1e-6)
  np.testing.assert_allclose(weights1, ref_weights, atol=1e-6)
  # and unequal logits are not uniform (the test can fail)
  params = {"position_logits": jnp.arange(C, dtype=jnp.float32)}
  _, weights = module.apply({"params": params}, vectors, mask)
  assert np.abs(np.asarray(weights)[0] - ref_weights[0]).max() > 0.1


def test_rung3_with_equal_keys_is_cbow():
  vectors, mask = _inputs()
  module = cm.ContentWeightedContext(C, key_dim=8)
  params = _randomise(_init(module, vectors, mask))
  ref_hidden, ref_weights = _uniform_reference(vectors, mask)
  # (a) a zero key projection: every key is 0, whatever the words and positions
  zero_keys = dict(params, key={"kernel": jnp.zeros_like(params["key"]["kernel"])})
  hidden, weights = module.apply({"params": zero_keys}, vectors, mask)
  np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
  np.testing.assert_allclose(hidden, ref_hidden, atol=1e-5)
  # (b) the same word in every slot and no position embedding: equal keys from a random projection
  same_word = jnp.broadcast_to(vectors[:, :1], vectors.shape)
  equal = dict(params, position_embedding=jnp.zeros_like(params["position_embedding"]))
  hidden, weights = module.apply({"params": equal}, same_word, mask)
  np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
  # (c) with different keys the weights are not uniform
  _, weights = module.apply({"params": params}, vectors, mask)
  assert np.abs(np.asarray(weights)[0] - ref_weights[0]).max() > 0.01


def _numpy_self_attention(params, vectors, mask, heads):
  """Rung 4 by hand: x = e + p, one self-attention layer, masked mean of its outputs (float64)."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  e = np.asarray(vectors, np.float64)
  x = e + p["position_embedding"]
  a = p["attention"]
  qkv = x @ a["qkv"]["kernel"] + a["qkv"]["bias"]
  dh = D // heads
  q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, C, heads, dh) for i in range(3))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
  allowed = mask[:, None, :, None] & mask[:, None, None, :]
  scores = np.where(allowed, scores, -np.inf)
  with np.errstate(invalid="ignore"):
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern = np.nan_to_num(pattern / pattern.sum(-1, keepdims=True))
  out = np.einsum("bhqk,bkhd->bqhd", pattern, v).reshape(B, C, D) @ a["out"]["kernel"] + a["out"]["bias"]
  n = mask.sum(1, keepdims=True)
  return (out * mask[..., None]).sum(1) / np.maximum(n, 1), pattern


@pytest.mark.parametrize("heads", [1, 3])
def test_rung4_matches_numpy_self_attention(heads):
  vectors, mask = _inputs()
  module = cm.SelfAttentionContext(C, num_heads=heads, precision="highest")
  params = _randomise(_init(module, vectors, mask), seed=heads)
  params = jax.tree.map(lambda x: x * 0.3, params)
  hidden, pattern = module.apply({"params": params}, vectors, mask)
  ref_hidden, ref_pattern = _numpy_self_attention(params, np.asarray(vectors), MASK, heads)
  np.testing.assert_allclose(pattern, ref_pattern, atol=1e-5)
  np.testing.assert_allclose(hidden, ref_hidden, atol=1e-4)


@pytest.mark.parametrize("rung", cm.RUNGS)
def test_weights_are_a_distribution_over_the_real_context(rung):
  config = cm.ContextModelConfig(vocab_size=V, window=W, dim=D, context=rung, num_heads=3)
  model = cm.CentreWordModel(config)
  rng = np.random.default_rng(3)
  context = jnp.asarray(rng.integers(0, V, size=(B, C)), jnp.int32)
  mask = jnp.asarray(MASK)
  params = _randomise(model.init(jax.random.key(0), context, mask)["params"], seed=4)
  logits, weights = model.apply({"params": params}, context, mask)
  weights = np.asarray(weights)
  assert logits.shape == (B, V) and np.all(np.isfinite(logits))
  assert np.all(weights >= 0)
  if rung == cm.SELF_ATTENTION:
    assert weights.shape == (B, 3, C, C)
    allowed = np.broadcast_to(MASK[:, None, :, None] & MASK[:, None, None, :], weights.shape)
    assert np.all(weights[~allowed] == 0)  # padding keys, and the rows of padding queries
    np.testing.assert_allclose(weights.sum(-1), np.broadcast_to(MASK[:, None, :], (B, 3, C)).astype(float),
                               atol=1e-5)
  else:
    assert weights.shape == (B, C)
    assert np.all(weights[~MASK] == 0)
    np.testing.assert_allclose(weights.sum(-1), MASK.any(1).astype(float), atol=1e-5)
  # the ids at padding slots change nothing
  other = jnp.where(mask, context, (context + 7) % V)
  np.testing.assert_allclose(model.apply({"params": params}, other, mask)[0], logits, atol=1e-5)


def test_loss_is_full_softmax_cross_entropy_of_valid_centres():
  config = cm.ContextModelConfig(vocab_size=V, window=W, dim=D, context=cm.CONTENT)
  model = cm.CentreWordModel(config)
  rng = np.random.default_rng(5)
  batch = {"centre": jnp.asarray(rng.integers(0, V, B), jnp.int32),
           "context": jnp.asarray(rng.integers(0, V, (B, C)), jnp.int32), "mask": jnp.asarray(MASK),
           "weight": jnp.asarray([1, 1, 1, 0, 1], jnp.float32)}
  params = _randomise(model.init(jax.random.key(0), batch["context"], batch["mask"])["params"])
  loss, count, correct = model.apply({"params": params}, batch, method="loss")
  logits = np.asarray(model.apply({"params": params}, batch["context"], batch["mask"])[0], np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1,
                                                                                                         keepdims=True)
  valid = np.array([1, 1, 1, 0, 0], bool)  # row 3 has weight 0, row 4 no context
  ce = -logp[np.arange(B), np.asarray(batch["centre"])]
  np.testing.assert_allclose(loss, ce[valid].sum(), rtol=1e-5)
  assert count == 3
  assert correct == np.sum((logits.argmax(1) == np.asarray(batch["centre"]))[valid])


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match="context must be one of"):
    cm.ContextModelConfig(vocab_size=V, window=W, context="lstm")
  with pytest.raises(ValueError, match="num_heads=3 must .* divide dim=10"):
    cm.ContextModelConfig(vocab_size=V, window=W, dim=10, num_heads=3)
  vectors, mask = _inputs()
  with pytest.raises(ValueError, match="must be boolean"):
    cm.PositionWeightedContext(C).init(jax.random.key(0), vectors, mask.astype(jnp.int32))
  with pytest.raises(ValueError, match="has 8 context slots"):
    cm.ContentWeightedContext(8, 4).init(jax.random.key(0), vectors, mask)
  config = cfg_mod.get_config()
  with pytest.raises(config_lib.ConfigError, match="ladder.rungs"):
    explain.ladder_runs(explain.apply_config_overrides(config, {"ladder.rungs": ("mean", "lstm")}))
  with pytest.raises(config_lib.ConfigError, match="model.num_head=2"):  # unknown key
    explain.apply_config_overrides(cfg_mod.get_config(), ["--config.model.num_head=2"])


def _tiny_corpus(tmp_path):
  """200 lines of 3-11 consecutive words of the cycle w0 w1 .. w29 (each centre is fixed by its neighbours)."""
  rng = np.random.default_rng(0)
  lines = []
  for _ in range(200):
    start, n = rng.integers(0, 30), rng.integers(3, 12)
    lines.append(" ".join(f"w{(start + i) % 30}" for i in range(n)))
  path = tmp_path / "corpus.txt"
  path.write_text("\n".join(lines) + "\n")
  return str(path), lines


def _tiny_config(path, **overrides):
  c = cfg_mod.get_config()
  c.data.files = (path,)
  c.data.min_count = 1
  c.data.window = 2
  c.model.dim = 8
  c.train.update(batch_size=16, eval_batch_size=64, num_steps=20, log_every=10, eval_every=20, parallel="none")
  c.optimizer.update(lr=3e-2, min_lr=3e-3, warmup_steps=0)
  return explain.apply_config_overrides(c, overrides)


def test_task_batches(tmp_path):
  path, lines = _tiny_corpus(tmp_path)
  config = _tiny_config(path)
  task = w2v_task.CentreWordTask(config)
  data = task.data
  tokens = sum(len(s.split()) for s in lines)
  assert len(data.train) + len(data.heldout) == tokens
  assert len(data.heldout) == sum(len(s.split()) for i, s in enumerate(lines) if i % 20 == 19)
  a, b = task.train_batch(7), task.train_batch(7)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(np.concatenate([task.train_batch(7, i, 4)[k] for i in range(4)]), a[k])
  assert not np.array_equal(task.train_batch(8)["centre"], a["centre"])
  # every held-out centre is evaluated once; the padding rows of the last batch weigh 0
  batches = list(task.eval_batches())
  assert sum(float(bb["weight"].sum()) for bb in batches) == len(data.heldout)
  np.testing.assert_array_equal(np.concatenate([bb["centre"][bb["weight"] > 0] for bb in batches]),
                                data.heldout.centre)
  # a dynamic window only removes far neighbours
  dyn = w2v_task.CentreWordTask(_tiny_config(path, **{"data.dynamic_window": True}), data).train_batch(7)
  assert np.all(dyn["mask"] <= a["mask"]) and dyn["mask"].sum() < a["mask"].sum()


def _heldout_loss(task, params):
  sums = [task.loss_fn(params, b, None, False)[:2] for b in task.eval_batches()]
  return float(sum(l for l, _ in sums) / sum(w for _, w in sums))


@pytest.mark.parametrize("rung", cm.RUNGS)
def test_short_run_of_each_rung_lowers_its_loss(tmp_path, rung):
  path, _ = _tiny_corpus(tmp_path)
  task = w2v_task.CentreWordTask(_tiny_config(path, **{"model.context": rung, "model.num_heads": 2}))
  params = nn.unbox(task.init_params(jax.random.key(0)))
  tx = optax.adam(3e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    grads = jax.grad(lambda p: (lambda l, w, _: l / w)(*task.loss_fn(p, batch, None, True)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  before = _heldout_loss(task, params)
  np.testing.assert_allclose(before, np.log(len(task.data.vocab)), rtol=1e-5)  # zero unembed: uniform
  for s in range(30):
    params, opt_state = step(params, opt_state, task.train_batch(s))
  after = _heldout_loss(task, params)
  assert after < before - 0.3, (before, after)


@pytest.mark.slow
def test_ladder_runs_and_each_rung_lowers_its_loss(tmp_path):
  path, _ = _tiny_corpus(tmp_path)
  config = _tiny_config(path, **{"train.num_steps": 60, "train.eval_every": 60})  # rung 4 starts slowest
  config.ladder.example_sentences = ("w1 w2 w3 w4 w5", "w3 w4 w5")
  config.ladder.example_centres = ("w3", "w3")
  config.ladder.self_attention_heads = (2,)
  out = tmp_path / "out"
  result = explain.run_cbow_to_attention(str(out), base_config=config)
  names = [r["run"] for r in result["rows"]]
  assert names == ["mean", "position", "content", "self_attention_2h"]
  for name in names:
    with open(out / "runs" / name / "metrics.jsonl") as f:
      evals = [json.loads(line)["eval_loss"] for line in f if "eval_loss" in line]
    assert evals[-1] < evals[0] - 0.1, (name, evals)
  for key in ("loss", "positions", "patterns", "table", "json"):
    assert os.path.getsize(result["files"][key]) > 0
  position = next(r for r in result["rows"] if r["rung"] == cm.POSITION)["position_weights"]
  assert len(position) == 4 and abs(sum(position) - 1) < 1e-5
  ex = result["examples"][1]  # "w3 w4 w5": w3 starts the sentence, so the 2 slots before it are padding
  assert ex["words"] == ["", "", "w4", "w5"]
  assert ex["weights"]["mean"] == [0, 0, 0.5, 0.5]
  assert "| 1. CBOW: uniform average |" in result["table"]
  # a relaunch reuses the finished rows
  again = explain.run_cbow_to_attention(str(out), base_config=config)
  assert [r["train_wall_s"] for r in again["rows"]] == [r["train_wall_s"] for r in result["rows"]]

"""Memory and precision options against the plain float32 path: rematerialisation gives the same loss and gradients,
scanned layers the same loss and gradients for the same (re-stacked) parameters, bfloat16 compute a close loss with
float32 parameters, optimizer state and logits."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_lm_config
from tfjax.layers.blocks import scan_params
from tfjax.models.gpt import GPT
from tfjax.tasks.lm import LMTask
from tfjax.train.optimizer import make_optimizer
from tfjax.train.step import init_state


@pytest.fixture(scope="module")
def setup():
  config = tiny_lm_config(**{"model.num_layers": 2})
  task = LMTask(config, None)
  params = nn.unbox(task.init_params(jax.random.key(0)))
  batch = task.train_batch(0)
  return task, params, batch, loss_and_grads(task.model_cfg, params, batch)  # the plain float32 path


def loss_and_grads(cfg, params, batch):
  model = GPT(cfg)

  def f(p):
    logits = model.apply({"params": p}, batch["inputs"])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]))

  return jax.jit(jax.value_and_grad(f))(params)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_gives_the_same_loss_and_gradients(setup, policy):
  task, params, batch, plain = setup
  remat_cfg = dataclasses.replace(task.model_cfg, remat=policy)
  remat = loss_and_grads(remat_cfg, params, batch)
  np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat[1]), jax.tree.leaves(plain[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # and remat is really applied: the backward pass recomputes (the jaxpr holds a checkpoint/remat primitive)
  jaxpr = str(jax.make_jaxpr(lambda p: GPT(remat_cfg).apply({"params": p}, batch["inputs"]))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_layers_gives_the_same_loss_and_gradients(setup, remat):
  task, params, batch, plain = setup
  scan_cfg = dataclasses.replace(task.model_cfg, scan_layers=True, remat=remat)
  # the scanned model's own init has the stacked layout we map to
  scan_init = nn.unbox(GPT(scan_cfg).init(jax.random.key(0), batch["inputs"])["params"])
  stacked = scan_params(params)  # checked against the scanned init's layout
  assert jax.tree.structure(scan_init) == jax.tree.structure(stacked)
  assert jax.tree.map(jnp.shape, scan_init) == jax.tree.map(jnp.shape, stacked)
  scanned = loss_and_grads(scan_cfg, stacked, batch)
  np.testing.assert_allclose(scanned[0], plain[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(scanned[1]), jax.tree.leaves(scan_params(plain[1]))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_state_and_logits(setup):
  task, params, batch, (plain_loss, plain_grads) = setup
  bf_cfg = dataclasses.replace(task.model_cfg, dtype=jnp.bfloat16)
  bf_loss, bf_grads = loss_and_grads(bf_cfg, params, batch)
  # bfloat16 has 8 bits of mantissa: the loss agrees to ~1%, the gradients point the same way
  np.testing.assert_allclose(bf_loss, plain_loss, rtol=1e-2)
  assert bf_loss != plain_loss  # bfloat16 really was used
  g1, g2 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (plain_grads, bf_grads))
  assert np.dot(g1, g2) / np.linalg.norm(g1) / np.linalg.norm(g2) > 0.99
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(bf_grads))
  logits = GPT(bf_cfg).apply({"params": params}, batch["inputs"])
  assert logits.dtype == jnp.float32

  # a bfloat16 task: parameters and optimizer state stay float32
  config = tiny_lm_config(**{"model.dtype": "bfloat16", "model.num_layers": 1})
  bf_task = LMTask(config, None)
  tx, _ = make_optimizer(config.optimizer, 10)
  state = jax.eval_shape(functools.partial(init_state, bf_task, tx, 0))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  float_state = [x.dtype for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert float_state and all(d == jnp.float32 for d in float_state)


def test_bfloat16_logits_are_computed_in_float32(setup):
  task, params, batch, _ = setup
  logits = np.asarray(GPT(dataclasses.replace(task.model_cfg, dtype=jnp.bfloat16)).apply(
      {"params": params}, batch["inputs"]))
  rounded = np.asarray(jnp.asarray(logits).astype(jnp.bfloat16).astype(jnp.float32))
  # float32 logits are almost never exactly representable in bfloat16; bfloat16 ones always are
  assert np.mean(logits == rounded) < 0.5


@pytest.mark.parametrize("tied", [True, False])
def test_logits_dtype_rounds_the_logits_as_autocast_and_keeps_the_loss_close(setup, tied):
  """``logits_dtype=bfloat16`` (nanoGPT's autocast logits): the float32 logits rounded to bfloat16, returned widened
  to float32; loss and gradients close to the float32 logits' ones, gradients float32."""
  task, params, batch, _ = setup
  cfg = dataclasses.replace(task.model_cfg, dtype=jnp.bfloat16, tie_embeddings=tied)
  if not tied:
    params = dict(params, unembed={"kernel_dense": {"kernel": nn.unbox(params)["embed"]["embedding"].T}})
  wide = np.asarray(GPT(cfg).apply({"params": params}, batch["inputs"]))
  bf_cfg = dataclasses.replace(cfg, logits_dtype=jnp.bfloat16)
  narrow = np.asarray(GPT(bf_cfg).apply({"params": params}, batch["inputs"]))
  assert narrow.dtype == np.float32
  rounded = np.asarray(jnp.asarray(wide).astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(narrow, np.asarray(jnp.asarray(narrow).astype(jnp.bfloat16).astype(jnp.float32)))
  # one bfloat16 rounding of the same float32 sums (an ulp apart where XLA rounds the accumulation differently)
  np.testing.assert_allclose(narrow, rounded, rtol=2 ** -7, atol=1e-6)
  (wide_loss, wide_grads), (loss, grads) = (loss_and_grads(c, params, batch) for c in (cfg, bf_cfg))
  np.testing.assert_allclose(loss, wide_loss, rtol=1e-3)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  g1, g2 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (wide_grads, grads))
  assert np.dot(g1, g2) / np.linalg.norm(g1) / np.linalg.norm(g2) > 0.999


def test_logits_dtype_is_a_config_key():
  from tfjax import config as config_lib
  cfg = config_lib.transformer_config(tiny_lm_config(**{"model.logits_dtype": "bfloat16"}).model, 65)
  assert cfg.logits_dtype == jnp.bfloat16
  with pytest.raises(config_lib.ConfigError, match="logits_dtype"):
    config_lib.transformer_config(tiny_lm_config(**{"model.logits_dtype": "float8"}).model, 65)


def test_embedding_gradient_is_summed_in_float32_under_bfloat16_compute():
  """The lookup's backward pass scatter-adds every position's gradient into its row: in bfloat16 4,096 adds of 1
  would stop at 256 (8-bit mantissa); gathered in float32 and cast after, the sum is exact."""
  from tfjax.layers.embeddings import LearnedPositionalEmbedding, TokenEmbedding
  ids = jnp.zeros((2, 2048), jnp.int32)
  for module in (TokenEmbedding(8, 4, dtype=jnp.bfloat16), LearnedPositionalEmbedding(8, 4, dtype=jnp.bfloat16)):
    params = module.init(jax.random.key(0), ids)["params"]
    out = module.apply({"params": params}, ids)
    assert out.dtype == jnp.bfloat16
    grads = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, ids).astype(jnp.float32)))(params)
    g = nn.unbox(grads)["embedding"]
    assert g.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(g[0]), np.full(4, 4096.0))
    np.testing.assert_array_equal(np.asarray(g[1:]), 0.0)


def _dot_precisions(jaxpr):
  """The ``precision`` of every dot_general in ``jaxpr`` and its sub-jaxprs (jit, remat, custom_jvp, scan...)."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      out.append(eqn.params["precision"])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          out += _dot_precisions(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          out += _dot_precisions(sub)
  return out


@pytest.mark.parametrize("model_name", ["gpt", "bert", "encoder_decoder"])
def test_precision_reaches_every_matmul_forward_and_backward(model_name):
  """``model.precision`` is a parameter of every matmul of the three models (projections, attention scores and values,
  MLP, unembedding), in the forward pass and in the gradients: with "highest", no dot is left at the default."""
  from tfjax.models.config import TransformerConfig
  from tfjax.models.bert import BERT
  from tfjax.models.transformer import EncoderDecoder
  cfg = TransformerConfig(vocab_size=40, num_layers=2, num_heads=2, emb_dim=16, max_len=8,
                          positional="learned" if model_name == "bert" else "rope",
                          attention_impl="reference", tie_embeddings=model_name != "gpt", precision="highest")
  ids = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 40
  valid = jnp.ones((2, 8), bool)
  model, args = {"gpt": (GPT(cfg), (ids,)), "bert": (BERT(cfg), (ids, valid)),
                 "encoder_decoder": (EncoderDecoder(cfg), (ids, valid, ids))}[model_name]
  params = model.init(jax.random.key(0), *args)["params"]
  loss = lambda p: jnp.sum(model.apply({"params": p}, *args)[..., :3])  # noqa: E731
  with jax.default_matmul_precision("bfloat16"):  # a matmul that ignores model.precision would show DEFAULT
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr
  precisions = _dot_precisions(jaxpr)
  assert len(precisions) >= 10
  assert all(p is not None and {str(x) for x in p} == {"HIGHEST"} for p in precisions), precisions


def test_precision_must_be_a_known_name():
  from tfjax import config as config_lib
  from tfjax.config import ConfigError
  c = tiny_lm_config(**{"model.precision": "tf32"})
  with pytest.raises(ConfigError, match="precision must be one of"):
    config_lib.transformer_config(c.model, 65)
  # "default" leaves the matmuls to JAX's default, so jax.default_matmul_precision (as tests/conftest.py) applies
  assert config_lib.transformer_config(tiny_lm_config().model, 65).precision is None
  c = tiny_lm_config(**{"model.precision": "highest"})
  assert config_lib.transformer_config(c.model, 65).precision == "highest"

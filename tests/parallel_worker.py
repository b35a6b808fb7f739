"""Run in a subprocess with 8 fake CPU devices: trains the tiny LM (or, with ``--translate``, a tiny translator)
under each parallel mode, prints JSON losses."""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiments import runtime  # noqa: E402

# 8 fake CPU devices set up as a run's are (``runtime.configure_devices``): with their collectives' patient timeouts,
# so a machine busy with other tests (``./launch.sh test`` runs files in parallel) slows the all-reduces, never aborts
os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                   if not f.startswith("--xla_force_host_platform_device_count"))
os.environ["TFJAX_CPU_DEVICES"] = "8"
os.environ["JAX_PLATFORMS"] = "cpu"  # the 8 fake devices are CPU ones, also on a machine with a GPU
runtime.configure_devices()

import jax  # noqa: E402

from conftest import tiny_lm_config  # noqa: E402
from tfjax.tasks.lm import LMTask  # noqa: E402
from tfjax.train import parallel  # noqa: E402
from tfjax.train.loop import train_and_evaluate  # noqa: E402


def losses(mode, **extra):
  config = tiny_lm_config(**{"train.parallel": mode, "train.batch_size": 16, "train.num_steps": 6,
                             "train.log_every": 1, "train.eval_every": 6, "optimizer.warmup_steps": 0, **extra})
  with tempfile.TemporaryDirectory() as wd:
    res = train_and_evaluate(config, wd, LMTask(config, wd))
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      recs = [json.loads(l) for l in f]
  return {"loss": [r["loss"] for r in recs if "loss" in r], "eval_loss": res["eval_loss"]}


def translate_losses(mode):
  from experiments.configs import translate_multi30k
  from tfjax.tasks.translate import TranslationTask
  c = translate_multi30k.get_config()
  c.data.vocab_size = 500
  c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=24, dropout_rate=0.0)
  c.train.update(batch_size=16, num_steps=4, log_every=1, eval_every=4, checkpoint_every=0, parallel=mode,
                 log_mfu=False, async_checkpoint=False, tensorboard=False)
  c.optimizer.warmup_steps = 0
  c.eval.bleu_sentences = 0
  with tempfile.TemporaryDirectory() as wd:
    res = train_and_evaluate(c, wd, TranslationTask(c, wd))
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      recs = [json.loads(l) for l in f]
  return {"loss": [r["loss"] for r in recs if "loss" in r], "eval_loss": res["eval_loss"]}


def flash_sharded_against_one_device():
  """Flash attention's output and gradients with q, k, v sharded by batch and heads (a 4 x 2 mesh) against the same
  jitted function on unsharded inputs: the largest differences, and whether dq kept the inputs' sharding."""
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from tfjax.layers import masks
  from tfjax.layers.flash_attention import flash_attention
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  q, k, v, w = (jax.random.normal(key, (4, 40, 4, 8)) for key in jax.random.split(jax.random.key(0), 4))
  mask = masks.causal_mask(40)
  grad = jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(flash_attention(q, k, v, mask, block_q=8, block_k=16) * w), argnums=(0, 1, 2)))
  want = grad(q, k, v)
  spec = PartitionSpec("data", None, "model", None)
  got = grad(*(jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)))
  return {"loss_diff": float(jnp.abs(got[0] - want[0])),
          "grad_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(got[1], want[1])),
          "dq_spec": str(got[1][0].sharding.spec)}


def main():
  assert jax.device_count() == 8, jax.devices()
  if sys.argv[1] == "--translate":
    print("RESULT " + json.dumps({mode: translate_losses(mode) for mode in sys.argv[2].split(",")}))
    return
  out = {mode: losses(mode) for mode in sys.argv[1].split(",")}
  # the fused unembedding + loss (chunks of 5 of the 16 positions) on sharded rows and a sharded embedding
  out["fsdp_fused_loss"] = losses("fsdp", **{"model.loss_chunk_size": 5})
  # the fsdp rules must actually shard a parameter
  config = tiny_lm_config()
  task = LMTask(config, None)
  boxed = jax.eval_shape(task.init_params, jax.random.key(0))
  sh = parallel.param_shardings(boxed, parallel.make_mesh("fsdp"), parallel.RULES["fsdp"])
  out["fsdp_embedding_spec"] = str(sh["embed"]["embedding"].spec)
  out["flash_sharded"] = flash_sharded_against_one_device()
  try:
    losses("dp", **{"train.batch_size": 12})
    out["indivisible_error"] = None
  except ValueError as e:
    out["indivisible_error"] = str(e)
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()

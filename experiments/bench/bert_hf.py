"""tfjax's BERT beside Hugging Face ``BertForMaskedLM`` (PyTorch), trained on the same batches with the same recipe.

The Hugging Face class is the one tfjax's export writes: ``BertForMaskedLM`` for learned positions
(``--config.model.positional=learned``), ``RoFormerForMaskedLM`` (BERT with rotary positions) for the shipped RoPE
BERT.

``./launch.sh bench bert_hf [--steps=1000] [--init=tfjax|hf|own] [--chunk=50] [--eval] [--config.KEY=VALUE ...]``

Needs the optional ``bench`` extra (PyTorch and transformers, never a runtime dependency of tfjax):
``.venv/bin/pip install torch==2.13.0 transformers`` (torch 2.13.0 is the CPU wheel on this machine's disk; plain
``torch`` would pull a multi-GB CUDA build).

Both models are trained from one :class:`tfjax.tasks.mlm.MLMTask` built from the config (default
``experiments/configs/bert_wikitext2.py``): the same tokenizer, the same packed ``[CLS] ... [SEP]`` rows, and at each
step the same batch, ``task.train_batch(step)`` (BERT's 80/10/10 masking of 15%), given to the torch model as
``labels`` = the original id at the chosen positions and -100 elsewhere. The recipe is the config's:

* tfjax: its own training path, :func:`tfjax.train.optimizer.make_optimizer` and :func:`tfjax.train.step.make_train_step`
  (optax AdamW, weight-decay mask, warmup + cosine schedule, global-norm clipping), jitted with the state donated.
* PyTorch: ``torch.optim.AdamW`` with two parameter groups (weight decay on tensors of ndim >= 2: weight matrices and
  embeddings; none on biases and LayerNorm), ``torch.nn.utils.clip_grad_norm_``, and the learning rate of each step
  computed here from the recipe (:func:`recipe_lr`, written independently of optax) -- so the comparison also checks
  optax's schedule.

``--init`` chooses the starting weights: ``tfjax`` (tfjax's initialisation, copied into the torch model through the
Hugging Face export :func:`tfjax.hf.save`), ``hf`` (Hugging Face's ``_init_weights``, imported into tfjax with
:func:`tfjax.hf.load`), or ``own`` (each library its own). From the same weights, the two loss curves must coincide
up to float noise if the two trainings compute the same thing; a gap that opens under ``own`` only is the
initialisation's.

The two trainings run in alternating chunks of ``--chunk`` steps in one process, so that a shared machine's changing
speed affects both alike; tokens/s is the median over chunks (the first chunk of each, with compilation, excluded).
``--eval`` scores both models at the end on the config's evaluation text with fixed masks (masked-token loss and
accuracy, the same batches for both). One JSON line goes to ``--out``.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from experiments import runtime  # noqa: E402  (sets XLA flags before JAX starts)

runtime.configure_devices()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "experiments/configs/bert_wikitext2.py"),
                                "MLM experiment config (experiments/configs/*.py).", lock_config=False)
flags.DEFINE_integer("steps", 0, "Training steps of each model (0: the config's train.num_steps).")
flags.DEFINE_enum("init", "tfjax", ["tfjax", "hf", "own"], "Starting weights: tfjax's init copied into torch, "
                  "Hugging Face's init imported into tfjax, or each its own.")
flags.DEFINE_integer("chunk", 50, "Steps of one model before switching to the other (alternation for timing).")
flags.DEFINE_integer("print_every", 50, "Print the two losses every this many steps (and the first 10).")
flags.DEFINE_bool("eval", True, "Score both models on the evaluation text (fixed masks) at the end.")
flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: torch's default).")
flags.DEFINE_string("torch_device", "cpu", "torch device: cpu | cuda.")
flags.DEFINE_bool("skip_torch", False, "Train only tfjax (e.g. on a GPU machine without torch).")
flags.DEFINE_string("workdir", "", "Where the tokenizer and the export go (default: a temporary directory).")
flags.DEFINE_string("out", "bench_results/bert_hf.jsonl", "JSON lines output ('' for none).")
FLAGS = flags.FLAGS


def recipe_lr(step: int, o, num_steps: int) -> float:
  """The learning rate of ``step`` (0-based) by the recipe, without optax: linear warmup from 0 to ``o.lr`` over
  ``o.warmup_steps``, then a half cosine from ``o.lr`` down to ``o.min_lr`` at step ``decay_steps``, then ``min_lr``.
  Only ``schedule='cosine'`` is written here."""
  if o.schedule != "cosine":
    raise ValueError(f"bench_bert_hf states only the cosine recipe, got optimizer.schedule={o.schedule!r}")
  decay_steps = o.decay_steps or num_steps
  if step < o.warmup_steps:
    return o.lr * step / o.warmup_steps
  t = min(1.0, (step - o.warmup_steps) / max(1, decay_steps - o.warmup_steps))
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * t))



def torch_labels(batch, np):
  """Hugging Face ``labels [B, T]``: the original id at each chosen position, -100 (ignored) elsewhere."""
  labels = np.full(batch["inputs"].shape, -100, np.int64)
  rows, slots = np.nonzero(batch["masked_weights"] > 0)
  labels[rows, batch["masked_positions"][rows, slots]] = batch["masked_labels"][rows, slots]
  return labels


def torch_inputs(torch, batch, np, device="cpu"):
  """The batch's ``input_ids``, ``attention_mask`` and ``token_type_ids [B, T]`` as int64 torch tensors."""
  return {name: torch.from_numpy(batch[key].astype(np.int64)).to(device) for name, key in
          (("input_ids", "inputs"), ("attention_mask", "attention_mask"), ("token_type_ids", "token_type_ids"))}


def make_torch_optimizer(torch, model, o):
  """AdamW with weight decay on weight matrices and embeddings (ndim >= 2) only; clipping is done by the caller."""
  trained = [p for p in model.parameters() if p.requires_grad]  # not RoFormer's fixed sinusoidal table
  decay = [p for p in trained if p.ndim >= 2]
  no_decay = [p for p in trained if p.ndim < 2]
  if o.name != "adamw":
    raise ValueError(f"bench_bert_hf states only AdamW, got optimizer.name={o.name!r}")
  return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)


def evaluate_torch(torch, model, task, np, device="cpu"):
  """Masked-token loss and accuracy of the torch model on ``task.eval_batches()``, overall and by replacement kind
  (:func:`tfjax.tasks.mlm.scores_by_replacement` on its logits at the masked positions)."""
  from tfjax.tasks import mlm
  model.eval()
  total = {"loss": np.zeros(3), "correct": np.zeros(3), "count": np.zeros(3)}
  with torch.no_grad():
    for batch in task.eval_batches():
      logits = model(**torch_inputs(torch, batch, np, device)).logits  # [B, T, V]
      pos = torch.from_numpy(batch["masked_positions"].astype(np.int64)).to(device)
      at = torch.gather(logits, 1, pos[..., None].expand(-1, -1, logits.shape[-1]))  # [B, P, V]
      sums = mlm.scores_by_replacement(at.cpu().numpy(), batch, task.mask_id)
      total = {k: total[k] + sums[k] for k in total}
  model.train()
  count = total["count"].sum()
  return {"eval_loss": total["loss"].sum() / count, "eval_accuracy": total["correct"].sum() / count,
          "eval_tokens": int(count), "eval_by_replacement": mlm.summarize_by_replacement(total)}


def evaluate_tfjax(jax, task, params):
  step = jax.jit(lambda p, b: task.loss_fn(p, b, None, False))
  loss_sum = correct = count = 0.0
  for batch in task.eval_batches():
    ls, w, sums = step(params, batch)
    loss_sum, count, correct = loss_sum + float(ls), count + float(w), correct + float(sums["accuracy"])
  return {"eval_loss": loss_sum / count, "eval_accuracy": correct / count, "eval_tokens": int(count),
          "eval_by_replacement": task.evaluate_by_replacement(params)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  import numpy as np
  from tfjax import hf
  from tfjax.tasks.mlm import MLMTask
  from tfjax.train.optimizer import make_optimizer
  from jax.sharding import NamedSharding, PartitionSpec as P
  from tfjax.train import loop, parallel
  from tfjax.train.step import init_state

  config = FLAGS.config
  if config.task != "mlm":
    raise app.UsageError(f"--config must be an MLM config (task='mlm'), got task={config.task!r}")
  steps = FLAGS.steps or config.train.num_steps
  config.train.num_steps = steps
  if not config.data_dir:
    config.data_dir = os.environ.get("TFJAX_DATA_DIR", "")
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="bench_bert_hf_")
  os.makedirs(workdir, exist_ok=True)
  task = MLMTask(config, workdir)
  o = config.optimizer
  tx, schedule = make_optimizer(o, steps)
  # the training loop's step: data-parallel over the CPU cores (one XLA device each) or one device; state replicated
  mode = parallel.resolve_mode(config.train.parallel)
  if mode not in ("none", "dp"):
    raise app.UsageError(f"bench_bert_hf runs train.parallel none or dp (auto), got {mode!r}")
  parallel.check_batch_divisible(config.train.batch_size, mode)
  mesh = parallel.make_mesh(mode)
  rep, batch_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P(parallel.DATA))
  init = functools.partial(init_state, task, tx, config.seed)
  state_sh = jax.tree.map(lambda _: rep, jax.eval_shape(init))
  state = jax.jit(init, out_shardings=state_sh)()
  export_dir = os.path.join(workdir, "init_hf")

  use_torch = not FLAGS.skip_torch
  if use_torch:
    import torch
    import transformers
    if FLAGS.threads:
      torch.set_num_threads(FLAGS.threads)
    torch.manual_seed(config.seed)
    hf.save(task.model, state.params, export_dir, tokenizer_file=os.path.join(workdir, "tokenizer.json"))
    # BertForMaskedLM or RoFormerForMaskedLM, as the export's config.json says
    if FLAGS.init == "tfjax":
      tmodel = transformers.AutoModelForMaskedLM.from_pretrained(export_dir)
    else:  # HF's own init
      tmodel = transformers.AutoModelForMaskedLM.from_config(transformers.AutoConfig.from_pretrained(export_dir))
      if FLAGS.init == "hf":
        tmodel.save_pretrained(export_dir, safe_serialization=True)
        _, params = hf.load(export_dir)
        params = jax.tree.map(lambda a, b: np.asarray(b, a.dtype), state.params, params)
        state = jax.device_put(state.replace(params=params, opt_state=tx.init(params)), state_sh)
    for name, p in tmodel.named_parameters():  # RoFormer's sinusoids are fixed; transformers 5's from_pretrained
      if "embed_positions" in name:            # hands them back trainable
        p.requires_grad_(False)
    tmodel.to(FLAGS.torch_device).train()
    topt = make_torch_optimizer(torch, tmodel, o)
    tparams = [p for p in tmodel.parameters() if p.requires_grad]
    print(f"{type(tmodel).__name__}: torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")

  train_step = loop.jit_train_step(task, tx, schedule, config.train, mode, mesh, state_sh, batch_sh)
  tokens_per_step = config.train.batch_size * task.seq_len
  curves = {"tfjax": [], "hf": []}
  lrs = {"tfjax": [], "hf": []}
  chunk_rates = {"tfjax": [], "hf": []}
  print(f"{steps} steps, batch {config.train.batch_size} x {task.seq_len} tokens, init={FLAGS.init}, jax backend "
        f"{jax.default_backend()}")
  print(f"{'step':>5} {'tfjax loss':>11} {'hf loss':>9} {'diff':>9} {'lr tfjax':>10} {'lr recipe':>10}")
  printed = 0
  for start in range(0, steps, FLAGS.chunk):
    stop = min(start + FLAGS.chunk, steps)
    batches = [task.train_batch(s) for s in range(start, stop)]
    t0 = time.perf_counter()
    metrics = []
    for batch in batches:
      state, m = train_step(state, parallel.global_batch(batch, batch_sh))
      metrics.append(m)
    jax.block_until_ready(state)
    chunk_rates["tfjax"].append((stop - start) * tokens_per_step / (time.perf_counter() - t0))
    for m in jax.device_get(metrics):
      curves["tfjax"].append(float(m["loss"]))
      lrs["tfjax"].append(float(m["lr"]))
    if use_torch:
      t0 = time.perf_counter()
      losses = []
      for s, batch in zip(range(start, stop), batches):
        lr = recipe_lr(s, o, steps)
        for g in topt.param_groups:
          g["lr"] = lr
        out = tmodel(**torch_inputs(torch, batch, np, FLAGS.torch_device),
                     labels=torch.from_numpy(torch_labels(batch, np)).to(FLAGS.torch_device))
        out.loss.backward()
        if o.grad_clip > 0:
          torch.nn.utils.clip_grad_norm_(tparams, o.grad_clip)
        topt.step()
        topt.zero_grad(set_to_none=True)
        losses.append(out.loss.detach())
        lrs["hf"].append(lr)
      curves["hf"].extend(torch.stack(losses).cpu().tolist())  # one device sync per chunk
      chunk_rates["hf"].append((stop - start) * tokens_per_step / (time.perf_counter() - t0))
    for s in range(start, stop):
      if s < 10 or (s + 1) % FLAGS.print_every == 0 or s == steps - 1:
        h = curves["hf"][s] if use_torch else float("nan")
        print(f"{s:5d} {curves['tfjax'][s]:11.4f} {h:9.4f} {curves['tfjax'][s] - h:+9.4f} {lrs['tfjax'][s]:10.3e} "
              f"{recipe_lr(s, o, steps):10.3e}", flush=True)
        printed += 1

  def rate(name):
    r = chunk_rates[name][1:] or chunk_rates[name]
    return statistics.median(r) if r else float("nan")

  def tail_mean(c, n=50):
    return float(np.mean(c[-n:])) if c else float("nan")

  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  result = {"bench": "bert_hf", "time": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": steps, "init": FLAGS.init,
            "config_overrides": overrides,
            "batch_size": config.train.batch_size, "seq_len": task.seq_len, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "parallel": mode, "jax_devices": jax.device_count(),
            "tfjax": {"tokens_per_s": rate("tfjax"), "final_loss_mean50": tail_mean(curves["tfjax"]),
                      "loss_every_50": curves["tfjax"][49::50]},
            "lr_max_abs_diff": float(max(abs(a - recipe_lr(s, o, steps)) for s, a in enumerate(lrs["tfjax"])))}
  if use_torch:
    diffs = np.abs(np.asarray(curves["tfjax"]) - np.asarray(curves["hf"]))
    result["hf"] = {"tokens_per_s": rate("hf"), "final_loss_mean50": tail_mean(curves["hf"]),
                    "loss_every_50": curves["hf"][49::50], "torch_threads": torch.get_num_threads()}
    result["loss_abs_diff"] = {"first10_max": float(diffs[:10].max()), "max": float(diffs.max()),
                               "mean_last50": float(diffs[-50:].mean())}
    result["speedup"] = rate("tfjax") / rate("hf")
  print(f"tokens/s (median over {len(chunk_rates['tfjax'])} alternating chunks of {FLAGS.chunk} steps): "
        f"tfjax {rate('tfjax'):,.0f}" + (f", HF {rate('hf'):,.0f} (tfjax {result['speedup']:.2f}x)" if use_torch else ""))
  print(f"mean loss of the last 50 steps: tfjax {result['tfjax']['final_loss_mean50']:.4f}" +
        (f", HF {result['hf']['final_loss_mean50']:.4f}" if use_torch else ""))
  if FLAGS.eval:
    result["tfjax"].update(evaluate_tfjax(jax, task, state.params))
    line = f"eval ({config.data.eval_dataset}, fixed masks): tfjax loss {result['tfjax']['eval_loss']:.4f} " \
           f"acc {result['tfjax']['eval_accuracy']:.2%}"
    if use_torch:
      result["hf"].update(evaluate_torch(torch, tmodel, task, np, FLAGS.torch_device))
      line += f"; HF loss {result['hf']['eval_loss']:.4f} acc {result['hf']['eval_accuracy']:.2%}"
    print(line + f" ({result['tfjax']['eval_tokens']:,} masked tokens)")
    for name in ("tfjax", "hf") if use_torch else ("tfjax",):
      parts = result[name]["eval_by_replacement"]
      print(f"  {name} accuracy by replacement: " + ", ".join(
          f"{k} {v['accuracy']:.2%} ({v['count']:,})" for k, v in parts.items()))
  if FLAGS.out:
    runtime.append_json_lines(FLAGS.out, [result])
  return 0


if __name__ == "__main__":
  app.run(main)

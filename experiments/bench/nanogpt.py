"""The PyTorch reference for ``bench train``: nanoGPT's model and training iteration, timed on this machine.

``./launch.sh bench nanogpt [--config=baby|default] [--steps=300]`` needs PyTorch, which tfjax does not depend on:
``.venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu`` (the CPU wheel).

tfjax's throughput is judged against nanoGPT (karpathy/nanoGPT, PyTorch, ``--device=cpu --compile=False``), whose
reference figures were measured on this machine kind at another time. A shared 2-core VM runs ±25% faster or slower
from one hour to the next, so the fair comparison is side by side: this script and ``bench/train.py`` alternately,
one process after the other, with the same batch shapes and the same optimiser work, e.g.::

  for i in 1 2 3; do ./launch.sh bench train --only=baby; ./launch.sh bench nanogpt --config=baby; done

What it runs is nanoGPT's ``model.py`` architecture re-stated: token + learned position embeddings, pre-LN blocks
(LayerNorm without bias, causal ``F.scaled_dot_product_attention`` with dropout, MLP with exact GELU), final
LayerNorm, ``lm_head`` tied to the token embedding; weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)).
A training iteration is nanoGPT's ``train.py`` loop body at ``gradient_accumulation_steps=1``: a random batch of
windows of the training text, forward, cross-entropy, backward, global-norm clipping at 1.0, AdamW (betas 0.9/0.99,
weight decay 0.1 on matrices), ``zero_grad(set_to_none=True)``, with the cosine learning rate set each iteration.
Batches are drawn with ``torch.randint`` from the encoded text in the device's memory (nanoGPT re-opens a ``np.memmap``
each iteration, slightly slower). On a GPU, ``--device=cuda --dtype=bfloat16 --compile`` is nanoGPT's own setting
there (TF32 matmuls, bfloat16 autocast, ``torch.compile``, fused AdamW). Throughput is the median of the tokens/s of
10-iteration intervals after the first, as in ``bench/train.py``.

``--mode=whole_run`` is the whole program nanoGPT's ``train.py`` runs at its README's CPU "baby" setting
(``config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0``), start
to finish, for ``bench/demo.py``: its imports; the vocabulary size from ``meta.pkl`` of the data its ``prepare.py``
wrote (``--mode=prepare``: characters sorted, the first 90% of the text to ``train.bin``, the rest to ``val.bin``,
uint16); the model and AdamW built as above; then iterations 0..max_iters inclusive, each: the learning rate, every
``eval_interval`` iterations ``estimate_loss`` (``eval_iters`` batches of train and of val, ``model.eval()``, no
grad) and, when the val loss improved and the iteration is past 0, ``torch.save`` of model, optimizer, model args,
iteration, best loss and config to ``ckpt.pt``; forward, the next batch fetched, backward, clipping, the optimizer
step, ``zero_grad``, and a log line with ``loss.item()`` every ``log_interval`` iterations. Batches as nanoGPT's
``get_batch``: a fresh ``np.memmap`` of the split each time, ``torch.randint`` offsets, rows stacked. On a CPU its
``GradScaler`` and autocast are off, so they are left out. It ends after the loop, as ``train.py`` does (nanoGPT
samples with a separate ``sample.py``). Its last line is ``RESULT {json}`` with the time of each phase.
"""

import json
import math
import os
import pickle
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so that tests can import this module)."""
  flags.DEFINE_enum("config", "baby", ["baby", "default"], "baby: 4/4/128 ctx 64 b12, no dropout; default: nanoGPT's "
                    "shakespeare_char 6/6/384 ctx 256 b64, dropout 0.2.")
  flags.DEFINE_integer("steps", 300, "Training iterations measured.")
  flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: torch's default, one per core).")
  flags.DEFINE_string("data_dir", "", "Where tinyshakespeare/input.txt is (default: $TFJAX_DATA_DIR, then the cache).")
  flags.DEFINE_string("device", "cpu", "torch device: cpu | cuda (nanoGPT's own default on a GPU).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype: bfloat16 runs forward and loss under "
                    "torch.autocast, as nanoGPT does on GPUs that support it (parameters stay float32).")
  flags.DEFINE_bool("compile", False, "torch.compile the model (nanoGPT's default on GPU; its CPU figures used "
                    "--compile=False).")
  flags.DEFINE_string("out", "bench_results/train.jsonl", "JSON lines output.")
  flags.DEFINE_enum("mode", "throughput", ["throughput", "whole_run", "prepare"], "throughput: time --steps training "
                    "iterations; whole_run: nanoGPT's whole train.py run (see the module docstring); prepare: write "
                    "nanoGPT's prepare.py data (train.bin, val.bin, meta.pkl) to --prepared_dir.")
  flags.DEFINE_string("prepared_dir", "", "whole_run / prepare: the folder of train.bin, val.bin and meta.pkl.")
  flags.DEFINE_string("out_dir", "", "whole_run: where ckpt.pt is saved (nanoGPT's out_dir).")
  flags.DEFINE_integer("eval_interval", 250, "whole_run: evaluate every this many iterations.")
  flags.DEFINE_integer("eval_iters", 20, "whole_run: batches per split per evaluation.")
  flags.DEFINE_integer("log_interval", 1, "whole_run: a log line (with loss.item()) every this many iterations.")
  flags.DEFINE_integer("max_iters", 2000, "whole_run: the last iteration (nanoGPT runs 0..max_iters inclusive).")
  flags.DEFINE_integer("lr_decay_iters", 2000, "whole_run: the cosine schedule's length.")

CONFIGS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, max_iters=2000),
    "default": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2, max_iters=5000),
}


def build(torch, cfg, vocab_size):
  nn, F = torch.nn, torch.nn.functional

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      d = cfg["n_embd"]
      self.ln_1 = nn.LayerNorm(d, bias=False)
      self.c_attn = nn.Linear(d, 3 * d, bias=False)
      self.attn_proj = nn.Linear(d, d, bias=False)
      self.ln_2 = nn.LayerNorm(d, bias=False)
      self.c_fc = nn.Linear(d, 4 * d, bias=False)
      self.mlp_proj = nn.Linear(4 * d, d, bias=False)
      self.drop = nn.Dropout(cfg["dropout"])

    def attention(self, x):
      b, t, d = x.shape
      h = cfg["n_head"]
      q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in self.c_attn(x).split(d, dim=2))
      y = F.scaled_dot_product_attention(q, k, v, dropout_p=cfg["dropout"] if self.training else 0.0, is_causal=True)
      return self.drop(self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d)))

    def forward(self, x):
      x = x + self.attention(self.ln_1(x))
      return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      d = cfg["n_embd"]
      self.wte = nn.Embedding(vocab_size, d)
      self.wpe = nn.Embedding(cfg["block_size"], d)
      self.drop = nn.Dropout(cfg["dropout"])
      self.blocks = nn.ModuleList(Block() for _ in range(cfg["n_layer"]))
      self.ln_f = nn.LayerNorm(d, bias=False)
      self.lm_head = nn.Linear(d, vocab_size, bias=False)
      self.wte.weight = self.lm_head.weight  # tied
      for name, p in self.named_parameters():
        if p.dim() == 2:
          std = 0.02 / math.sqrt(2 * cfg["n_layer"]) if name.endswith("proj.weight") else 0.02
          torch.nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
      pos = torch.arange(idx.shape[1], device=idx.device)
      x = self.drop(self.wte(idx) + self.wpe(pos))
      for block in self.blocks:
        x = block(x)
      logits = self.lm_head(self.ln_f(x))
      return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

  return GPT()


def lr_at(it, max_iters, lr=1e-3, min_lr=1e-4, warmup=100):
  if it < warmup:
    return lr * (it + 1) / (warmup + 1)
  ratio = min((it - warmup) / (max_iters - warmup), 1.0)
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def prepare(text_path: str, out_dir: str) -> dict:
  """nanoGPT's ``data/shakespeare_char/prepare.py``: the sorted characters of the text as the vocabulary, the first 90%
  of the text encoded to ``train.bin`` and the rest to ``val.bin`` (uint16), and ``meta.pkl`` (vocab_size, itos,
  stoi). Returns the meta dict."""
  import numpy as np
  with open(text_path, encoding="utf-8") as f:
    data = f.read()
  chars = sorted(set(data))
  stoi = {ch: i for i, ch in enumerate(chars)}
  itos = {i: ch for i, ch in enumerate(chars)}
  n = len(data)
  os.makedirs(out_dir, exist_ok=True)
  for name, part in (("train.bin", data[: int(n * 0.9)]), ("val.bin", data[int(n * 0.9):])):
    np.array([stoi[c] for c in part], dtype=np.uint16).tofile(os.path.join(out_dir, name))
  meta = {"vocab_size": len(chars), "itos": itos, "stoi": stoi}
  with open(os.path.join(out_dir, "meta.pkl"), "wb") as f:
    pickle.dump(meta, f)
  return meta


def whole_run(torch, cfg, t_start: float) -> dict:
  """nanoGPT's ``train.py`` at ``cfg`` (the baby setting), from the data on disk to the end of its loop; returns the
  seconds of each phase and the losses."""
  import numpy as np
  phases = {"imports": time.time() - t_start}
  t0 = time.perf_counter()
  data_dir = FLAGS.prepared_dir
  if not os.path.exists(os.path.join(data_dir, "train.bin")):
    raise app.UsageError(f"no train.bin in --prepared_dir={data_dir!r}; write it with --mode=prepare")
  out_dir = FLAGS.out_dir or os.path.join(data_dir, "out")
  os.makedirs(out_dir, exist_ok=True)
  torch.manual_seed(1337)
  b, t = cfg["batch_size"], cfg["block_size"]

  def get_batch(split):
    # nanoGPT recreates the memmap for every batch (to avoid a memory leak)
    data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - t, (b,))
    x = torch.stack([torch.from_numpy((data[i:i + t]).astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + t]).astype(np.int64)) for i in ix])
    return x, y

  with open(os.path.join(data_dir, "meta.pkl"), "rb") as f:
    vocab_size = pickle.load(f)["vocab_size"]
  model_args = dict(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], block_size=t, bias=False,
                    vocab_size=vocab_size, dropout=cfg["dropout"])
  model = build(torch, cfg, vocab_size)
  n_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
  print(f"number of parameters: {n_params / 1e6:.2f}M", flush=True)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-3, betas=(0.9, 0.99))
  phases["setup"] = time.perf_counter() - t0

  @torch.no_grad()
  def estimate_loss():
    out = {}
    model.eval()
    for split in ("train", "val"):
      losses = torch.zeros(FLAGS.eval_iters)
      for k in range(FLAGS.eval_iters):
        x, y = get_batch(split)
        losses[k] = model(x, y).item()
      out[split] = losses.mean()
    model.train()
    return out

  eval_s = ckpt_s = 0.0
  best_val, iter_num, evals, dts = 1e9, 0, [], []
  x, y = get_batch("train")
  loop_start = t_last = time.perf_counter()
  while True:
    lr = lr_at(iter_num, FLAGS.lr_decay_iters)
    for group in opt.param_groups:
      group["lr"] = lr
    if iter_num % FLAGS.eval_interval == 0:
      te = time.perf_counter()
      losses = estimate_loss()
      print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
      evals.append({"step": iter_num, "train_loss": float(losses["train"]), "val_loss": float(losses["val"])})
      eval_s += time.perf_counter() - te
      if losses["val"] < best_val:
        best_val = losses["val"]
        if iter_num > 0:
          tc = time.perf_counter()
          checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": model_args,
                        "iter_num": iter_num, "best_val_loss": best_val, "config": dict(cfg)}
          print(f"saving checkpoint to {out_dir}", flush=True)
          torch.save(checkpoint, os.path.join(out_dir, "ckpt.pt"))
          ckpt_s += time.perf_counter() - tc
    loss = model(x, y)
    x, y = get_batch("train")  # the next batch, fetched before the backward pass as nanoGPT does
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    now = time.perf_counter()
    dt, t_last = now - t_last, now
    if iter_num % FLAGS.log_interval == 0:
      print(f"iter {iter_num}: loss {loss.item():.4f}, time {dt * 1000:.2f}ms", flush=True)
      dts.append(dt)
    iter_num += 1
    if iter_num > FLAGS.max_iters:
      break
  phases.update(eval=eval_s, checkpoint=ckpt_s, train=time.perf_counter() - loop_start - eval_s - ckpt_s)
  return {"phases": phases, "evals": evals, "best_val_loss": float(best_val), "iterations": iter_num,
          "tokens_per_iter": b * t, "median_iter_s": statistics.median(dts) if dts else None}


def main(argv):
  del argv
  t_start = float(os.environ.get("BENCH_SPAWN_UNIX", "0")) or time.time()
  import numpy as np
  if FLAGS.mode == "prepare":
    from tfjax.data.files import TINY_SHAKESPEARE, find_data_file
    meta = prepare(str(find_data_file(TINY_SHAKESPEARE, FLAGS.data_dir or None)), FLAGS.prepared_dir or "data")
    print(f"vocab size {meta['vocab_size']}; wrote train.bin, val.bin, meta.pkl to {FLAGS.prepared_dir}")
    return
  try:
    import torch
  except ImportError:
    raise app.UsageError("bench nanogpt needs PyTorch: .venv/bin/pip install torch --index-url "
                         "https://download.pytorch.org/whl/cpu") from None
  from tfjax.data.files import TINY_SHAKESPEARE, find_data_file
  from tfjax.data.tokenizers import CharTokenizer
  if FLAGS.threads:
    torch.set_num_threads(FLAGS.threads)
  cfg = CONFIGS[FLAGS.config]
  if FLAGS.mode == "whole_run":
    result = whole_run(torch, cfg, t_start)
    print("RESULT " + json.dumps({**result, "implementation": f"nanoGPT train.py (torch {torch.__version__})",
                                  "threads": torch.get_num_threads()}), flush=True)
    return
  path = find_data_file(TINY_SHAKESPEARE, FLAGS.data_dir or None)
  text = open(path, encoding="utf-8").read()
  tokenizer = CharTokenizer.from_text(text)
  data = torch.from_numpy(tokenizer.encode(text[: int(0.9 * len(text))]).astype(np.int64))
  torch.manual_seed(1337)
  device = torch.device(FLAGS.device)
  if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True  # as nanoGPT's train.py
    torch.backends.cudnn.allow_tf32 = True
  data = data.to(device)
  model = build(torch, cfg, tokenizer.vocab_size).to(device)
  model.train()
  forward = torch.compile(model) if FLAGS.compile else model
  autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=FLAGS.dtype == "bfloat16")
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-3, betas=(0.9, 0.99), fused=device.type == "cuda")
  b, t = cfg["batch_size"], cfg["block_size"]

  def get_batch():
    ix = torch.randint(len(data) - t, (b,), device=device)
    windows = data[ix[:, None] + torch.arange(t + 1, device=device)]  # [b, t + 1], one gather
    return windows[:, :-1], windows[:, 1:]

  rates, t_last = [], time.perf_counter()
  for it in range(FLAGS.steps):
    for group in opt.param_groups:
      group["lr"] = lr_at(it, cfg["max_iters"])
    x, y = get_batch()
    with autocast:
      loss = forward(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if (it + 1) % 10 == 0:
      loss_value = loss.item()
      now = time.perf_counter()
      if it + 1 > 10:  # the first interval includes warm-up
        rates.append(10 * b * t / (now - t_last))
      print(f"iter {it + 1}/{FLAGS.steps} | loss {loss_value:.4f} | {10 * b * t / (now - t_last):,.0f} tok/s",
            flush=True)
      t_last = now
  if not rates:
    raise app.UsageError("--steps must be at least 20 (the first 10 iterations are warm-up)")
  name = {"baby": "baby 4/4/128 ctx64 b12", "default": "nanoGPT 6/6/384 ctx256 b64"}[FLAGS.config]
  rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "implementation": f"nanoGPT (torch {torch.__version__})",
         "threads": torch.get_num_threads(), "device": str(device), "dtype": FLAGS.dtype, "compile": FLAGS.compile,
         "ld_preload": os.environ.get("LD_PRELOAD", ""), "config": name,
         "steps": FLAGS.steps,
         "tokens_per_s": statistics.median(rates), "tokens_per_s_p10": sorted(rates)[len(rates) // 10],
         "step_ms": 1e3 * b * t / statistics.median(rates)}
  print(f"{'config':<30} {'tokens/s':>9} {'p10':>9} {'ms/step':>8}")
  print(f"{name + ' (torch)':<30} {rec['tokens_per_s']:>9,.0f} {rec['tokens_per_s_p10']:>9,.0f} {rec['step_ms']:>8.1f}")
  if FLAGS.out:
    from experiments import runtime
    runtime.append_json_lines(FLAGS.out, [rec])


if __name__ == "__main__":
  define_flags()
  app.run(main)

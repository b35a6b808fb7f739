"""The PyTorch reference for ``bench train``: nanoGPT's model and training iteration, timed on this machine.

``./launch.sh bench nanogpt [--config=baby|default] [--steps=300]`` needs PyTorch, which tfjax does not depend on:
``.venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu`` (the CPU wheel).

tfjax's throughput is judged against nanoGPT (karpathy/nanoGPT, PyTorch, ``--device=cpu --compile=False``), whose
reference figures were measured on this machine kind at another time. A shared 2-core VM runs ±25% faster or slower
from one hour to the next, so the fair comparison is side by side: this script and ``bench_train.py`` alternately,
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
10-iteration intervals after the first, as in ``bench_train.py``.
"""

import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

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
FLAGS = flags.FLAGS

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


def main(argv):
  del argv
  import numpy as np
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
  app.run(main)

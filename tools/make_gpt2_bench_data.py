"""The data of ``tools/gpu_bench_gpt2.sh`` (issue 15): the same tokens for tfjax and nanoGPT, at GPT-2's vocabulary size.

    python3 tools/make_gpt2_bench_data.py --out=.h4gpu/gpt2bench --nanogpt=.h4gpu/nanogpt [SOURCES...]

Prepares token shards of SOURCES (default: the shared text, as ``gpt2_small_cpu``'s, plus WikiText-2's test split)
with a byte-level BPE asked for 50,257 tokens (``./launch.sh prepare --tokenizer=bpe:50257``). A corpus of a few MB
learns fewer (~32k); the tokenizer is then padded with unused special tokens to 50,257, so that both models have
GPT-2's unembedding, the largest matmul of the step. The token ids do not change, so the shards' sha256 still hold.
Then writes nanoGPT's format into ``NANOGPT/data/gpt2bench/``: ``train.bin`` and ``val.bin`` (the splits' flat
uint16 ids, shards joined) and ``meta.pkl`` (``{"vocab_size": 50257}``). The data serves throughput only.
NANOGPT is a copy of karpathy/nanoGPT (it stays outside this project). Needs the project's environment
(``.venv/bin/python``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2_VOCAB = 50257


def default_sources() -> list[str]:
  data = os.environ.get("TFJAX_DATA_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "data")
  return [os.path.join(data, p) for p in ("wikitext2/valid.txt", "wikitext2/test.txt", "tinyshakespeare/input.txt",
                                          "lee/lee_background.cor", "multi30k/train.en.gz")]


def pad_vocabulary(out: str, size: int) -> int:
  """Pads ``out/tokenizer.json`` with unused special tokens to ``size`` and records it in ``meta.json``; returns the
  number of tokens the BPE learned."""
  from tokenizers import AddedToken, Tokenizer
  tok_path, meta_path = os.path.join(out, "tokenizer.json"), os.path.join(out, "meta.json")
  tok = Tokenizer.from_file(tok_path)
  learned = tok.get_vocab_size(with_added_tokens=True)
  if learned > size:
    raise ValueError(f"the tokenizer has {learned} tokens, more than {size}")
  tok.add_special_tokens([AddedToken(f"<|unused_{i}|>", special=True) for i in range(size - learned)])
  assert tok.get_vocab_size(with_added_tokens=True) == size
  tok.save(tok_path)
  with open(meta_path) as f:
    meta = json.load(f)
  meta["vocab_size"] = size
  meta["tokenizer"]["spec"] += f" ({learned} learned + unused, GPT-2 size, for a throughput benchmark)"
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=1)
  return learned


def write_nanogpt(out: str, nanogpt: str, size: int) -> None:
  with open(os.path.join(out, "meta.json")) as f:
    meta = json.load(f)
  target = os.path.join(nanogpt, "data", "gpt2bench")
  os.makedirs(target, exist_ok=True)
  for split, name in (("train", "train.bin"), ("val", "val.bin")):
    with open(os.path.join(target, name), "wb") as dst:
      for shard in meta["splits"][split]["shards"]:
        ids = np.fromfile(os.path.join(out, shard["file"]), dtype=meta["dtype"])
        ids.astype(np.uint16).tofile(dst)
  with open(os.path.join(target, "meta.pkl"), "wb") as f:
    pickle.dump({"vocab_size": size}, f)
  print(f"nanoGPT data: {target} (train.bin, val.bin, meta.pkl)")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("sources", nargs="*")
  p.add_argument("--out", required=True, help="the shards directory to write")
  p.add_argument("--nanogpt", default="", help="a nanoGPT copy whose data/gpt2bench/ receives the same tokens")
  p.add_argument("--vocab_size", type=int, default=GPT2_VOCAB)
  args = p.parse_args(argv)
  sources = args.sources or default_sources()
  subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "prepare.py"), *sources,
                  f"--tokenizer=bpe:{args.vocab_size}", f"--out={args.out}", "--val_fraction=0.05"], check=True)
  with open(os.path.join(args.out, "meta.json")) as f:
    if json.load(f)["vocab_size"] < args.vocab_size:
      learned = pad_vocabulary(args.out, args.vocab_size)
      print(f"tokenizer padded from {learned} learned tokens to {args.vocab_size}")
  if args.nanogpt:
    write_nanogpt(args.out, args.nanogpt, args.vocab_size)


if __name__ == "__main__":
  main()

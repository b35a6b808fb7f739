"""Synthetic texts that isolate one behaviour, generated in memory (no file to download).

``repeats``: lines of random lowercase letters, each written twice (``"qkvx...qkvx...\\n"``), of a random length in
``[min_len, max_len]``. The first copy cannot be predicted; the second can, by copying what followed the current
letter's earlier occurrence, which is what an induction head does (``./launch.sh explain induction``). The lengths
vary so that a model cannot copy by a fixed offset.
"""

from __future__ import annotations

import random

LETTERS = "abcdefghijklmnopqrstuvwxyz"

def repeats(num_lines: int = 30_000, min_len: int = 6, max_len: int = 24, seed: int = 0) -> str:
  """``num_lines`` lines of ``s + s`` for random strings ``s`` of ``min_len .. max_len`` letters (``random.Random
  (seed)``: the same text on every machine and Python version)."""
  if not 1 <= min_len <= max_len:
    raise ValueError(f"repeats needs 1 <= min_len <= max_len, got {min_len}, {max_len}")
  rng = random.Random(seed)
  lines = []
  for _ in range(num_lines):
    s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len)))
    lines.append(s + s + "\n")
  return "".join(lines)


SYNTHETIC = {"repeats": repeats}  # config.data.dataset name -> the function that writes its text

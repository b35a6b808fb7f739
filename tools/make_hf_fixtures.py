"""Builds the tiny Hugging Face fixtures under tests/fixtures/ (run by hand; needs torch + transformers, not in CI).

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch==2.13.0 transformers safetensors numpy
    .venv-fixtures/bin/python tools/make_hf_fixtures.py            # writes tests/fixtures/{hf_gpt2,hf_bert}/ + .npz
    .venv-fixtures/bin/python tools/make_hf_fixtures.py --check DIR [--reference tests/fixtures/hf_bert.npz]

The models are randomly initialised ``GPT2LMHeadModel`` and ``BertForMaskedLM`` (2 layers, tiny widths) whose every
weight is then perturbed (LayerNorm weights not 1, biases not 0), saved with ``save_pretrained`` (safetensors). The
``.npz`` files hold inputs with right padding and the PyTorch logits, computed in float32 with eager attention.
GPT-2 also gets a small byte-level BPE tokenizer (``tokenizer.json`` and ``vocab.json`` + ``merges.txt``) and the ids
``transformers`` encodes a sample text to.

``--check DIR`` loads a directory (e.g. one written by ``tfjax.hf.save``) with ``transformers`` and compares its
logits on the reference inputs with the reference logits: the proof that tfjax's export loads in PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import numpy as np
import torch

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SAMPLE_TEXT = ("Hello world! The quick brown fox jumps over the lazy dog. "
               "Tokenizers split text into pieces: café, naïve, 1,234.5 — and <|endoftext|> too.")
TOKENIZER_CORPUS = [
    "the quick brown fox jumps over the lazy dog", "hello world, hello there", "to be or not to be",
    "the capital of france is paris", "transformers attend to every token", "a tokenizer splits text",
] * 20


def _perturb(model: torch.nn.Module, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=g))


def _inputs(rng: np.random.Generator, batch: int, length: int, vocab: int, lengths: list[int]):
  ids = rng.integers(0, vocab, size=(batch, length))
  mask = np.zeros((batch, length), np.int64)
  for b, n in enumerate(lengths):
    mask[b, :n] = 1
  return ids, mask


def make_gpt2(out: pathlib.Path) -> None:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(TOKENIZER_CORPUS, trainer=trainer)
  vocab = tok.get_vocab_size()
  eos = tok.token_to_id("<|endoftext|>")

  torch.manual_seed(0)
  config = GPT2Config(attn_implementation="eager", vocab_size=vocab, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=eos,
                      eos_token_id=eos, activation_function="gelu_new", layer_norm_epsilon=1e-5)
  model = GPT2LMHeadModel(config).eval()
  _perturb(model, 1)
  model.save_pretrained(out / "hf_gpt2", safe_serialization=True)
  hf_tok = GPT2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")
  hf_tok.save_pretrained(out / "hf_gpt2")
  tok.model.save(str(out / "hf_gpt2"))  # vocab.json + merges.txt (the other format a GPT-2 dir may have)
  for extra in ("generation_config.json", "special_tokens_map.json"):
    (out / "hf_gpt2" / extra).unlink(missing_ok=True)

  ids, mask = _inputs(np.random.default_rng(0), 3, 12, vocab, [12, 7, 3])
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  text_ids = np.asarray(hf_tok(SAMPLE_TEXT)["input_ids"], np.int32)
  np.savez_compressed(out / "hf_gpt2.npz", input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                      logits=logits.astype(np.float32), text=np.array(SAMPLE_TEXT), text_ids=text_ids)


def make_bert(out: pathlib.Path) -> None:
  from transformers import BertConfig, BertForMaskedLM
  torch.manual_seed(0)
  config = BertConfig(attn_implementation="eager", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu",
                      layer_norm_eps=1e-12, pad_token_id=0)
  model = BertForMaskedLM(config).eval()
  _perturb(model, 2)
  model.save_pretrained(out / "hf_bert", safe_serialization=True)
  (out / "hf_bert" / "generation_config.json").unlink(missing_ok=True)

  rng = np.random.default_rng(1)
  ids, mask = _inputs(rng, 3, 12, 100, [12, 8, 2])
  types = rng.integers(0, 2, size=ids.shape)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types)).logits.numpy()
  np.savez_compressed(out / "hf_bert.npz", input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                      token_type_ids=types.astype(np.int32), logits=logits.astype(np.float32))


def check(path: pathlib.Path, reference: pathlib.Path | None) -> None:
  """Loads ``path`` with transformers and compares logits at real positions with the reference .npz."""
  from transformers import AutoConfig, BertForMaskedLM, GPT2LMHeadModel
  config = AutoConfig.from_pretrained(path)
  cls = {"gpt2": GPT2LMHeadModel, "bert": BertForMaskedLM}[config.model_type]
  model = cls.from_pretrained(path, attn_implementation="eager").eval()
  reference = reference or FIXTURES / f"hf_{config.model_type}.npz"
  ref = np.load(reference)
  kwargs = {k: torch.tensor(ref[k].astype(np.int64)) for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in ref}
  with torch.no_grad():
    logits = model(**kwargs).logits.numpy()
  real = ref["attention_mask"].astype(bool)
  err = float(np.max(np.abs(logits[real] - ref["logits"][real])))
  print(json.dumps({"dir": str(path), "reference": str(reference), "max_abs_err": err}))
  if not err < 1e-5:
    raise SystemExit(f"logits differ by {err}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=pathlib.Path, default=FIXTURES)
  parser.add_argument("--check", type=pathlib.Path, default=None)
  parser.add_argument("--reference", type=pathlib.Path, default=None)
  args = parser.parse_args()
  torch.set_num_threads(1)
  if args.check is not None:
    check(args.check, args.reference)
    return
  args.out.mkdir(parents=True, exist_ok=True)
  make_gpt2(args.out)
  make_bert(args.out)
  total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
  for f in sorted(args.out.rglob("*")):
    if f.is_file():
      print(f"{f.stat().st_size:8d}  {f.relative_to(args.out)}")
  print(f"{total:8d}  total bytes")


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  main()

"""Builds the tiny Hugging Face fixtures under tests/fixtures/ (run by hand; needs torch + transformers, not in CI).

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch==2.13.0 transformers safetensors numpy sentencepiece
    .venv-fixtures/bin/python tools/make_hf_fixtures.py     # tests/fixtures/hf_{gpt2,bert,roformer,marian,bart}/ + .npz
    .venv-fixtures/bin/python tools/make_hf_fixtures.py --only marian,bart     # some of them
    .venv-fixtures/bin/python tools/make_hf_fixtures.py --check DIR [--reference tests/fixtures/hf_bert.npz]

The models are randomly initialised ``GPT2LMHeadModel``, ``BertForMaskedLM``, ``RoFormerForMaskedLM`` (BERT with
rotary positions), ``MarianMTModel`` and
``BartForConditionalGeneration`` (1-2 layers, tiny widths) whose every weight is then perturbed (LayerNorm weights
not 1, biases not 0, ``final_logits_bias`` not 0; Marian's sinusoidal positions are fixed and stay), saved with
``save_pretrained`` (safetensors). The ``.npz`` files hold inputs with right padding and the PyTorch logits, computed
in float32 with eager attention. GPT-2 also gets a small byte-level BPE tokenizer (``tokenizer.json`` and
``vocab.json`` + ``merges.txt``) and the ids ``transformers`` encodes a sample text to.

The encoder-decoders get their own tokenizers: Marian two sentencepiece models trained here (``source.spm``,
``target.spm``) and the ``vocab.json`` joining their pieces (``</s>`` 0, ``<unk>`` 1, ``<pad>`` last, as opus-mt);
BART a byte-level BPE (``tokenizer.json``, ``vocab.json`` + ``merges.txt``; ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2).
Their ``.npz`` holds encoder and decoder inputs, both with padding, the logits, the ids ``transformers`` encodes
sample texts to (and decodes ids to), and greedy ``generate`` output from a sample source.

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
      if p.requires_grad:  # RoFormer's fixed sinusoidal table stays
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


def _masked_lm_fixture(model, out: pathlib.Path, name: str, perturb_seed: int, input_seed: int,
                       lengths: list[int]) -> None:
  """Perturbs and saves a masked-LM ``model`` as ``out/name/``, and ``out/name.npz``: right-padded inputs, token
  types and its logits."""
  _perturb(model, perturb_seed)
  model.save_pretrained(out / name, safe_serialization=True)
  (out / name / "generation_config.json").unlink(missing_ok=True)
  rng = np.random.default_rng(input_seed)
  ids, mask = _inputs(rng, 3, 12, model.config.vocab_size, lengths)
  types = rng.integers(0, 2, size=ids.shape)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types)).logits.numpy()
  np.savez_compressed(out / f"{name}.npz", input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                      token_type_ids=types.astype(np.int32), logits=logits.astype(np.float32))


def make_bert(out: pathlib.Path) -> None:
  from transformers import BertConfig, BertForMaskedLM
  torch.manual_seed(0)
  config = BertConfig(attn_implementation="eager", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu",
                      layer_norm_eps=1e-12, pad_token_id=0)
  _masked_lm_fixture(BertForMaskedLM(config).eval(), out, "hf_bert", 2, 1, [12, 8, 2])


def make_roformer(out: pathlib.Path) -> None:
  """RoFormerForMaskedLM: BERT with rotary positions (BERT's layers, no position table); head_dim 8."""
  from transformers import RoFormerConfig, RoFormerForMaskedLM
  torch.manual_seed(0)
  config = RoFormerConfig(attn_implementation="eager", vocab_size=100, hidden_size=32, embedding_size=32,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                          max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                          pad_token_id=0, rotary_value=False)
  _masked_lm_fixture(RoFormerForMaskedLM(config).eval(), out, "hf_roformer", 4, 5, [12, 9, 3])


SEQ2SEQ_SOURCES = ["a dog runs in the snow .", "two men are playing football", "a woman with a red hat",
                   "the children play outside in the park", "a man rides a bike down the street"]
SEQ2SEQ_TARGETS = ["ein hund rennt im schnee .", "zwei männer spielen fußball", "eine frau mit einem roten hut",
                   "die kinder spielen draußen im park", "ein mann fährt mit dem fahrrad die straße hinunter"]
SEQ2SEQ_TEXTS = ["a dog runs in the snow .", "the café is naïve", ">>de<< two men", "zzz qqq 1,234"]


def _perturb_seq2seq(model: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
  """Every trained weight and the final_logits_bias buffer perturbed; Marian's fixed sinusoidal tables left alone."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.requires_grad:  # large enough that greedy translations depend on the source
        p.add_(scale * torch.randn(p.shape, generator=g))
    model.final_logits_bias.add_(0.5 * torch.randn(model.final_logits_bias.shape, generator=g))


def _seq2seq_reference(model, tok, out: pathlib.Path, name: str, vocab: int, start: int, seed: int) -> None:
  """Logits of padded encoder and decoder inputs, tokenizer ids and decodes, and greedy generate, into NAME.npz."""
  rng = np.random.default_rng(seed)
  ids, mask = _inputs(rng, 3, 10, vocab, [10, 6, 3])
  dec, dec_mask = _inputs(rng, 3, 7, vocab, [7, 4, 2])
  dec[:, 0] = start
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   decoder_input_ids=torch.tensor(dec), decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
  text_ids = [tok(t)["input_ids"] for t in SEQ2SEQ_TEXTS]
  width = max(map(len, text_ids))
  text_ids = np.array([t + [-1] * (width - len(t)) for t in text_ids], np.int32)  # -1: no token
  decode_ids = rng.integers(0, vocab, size=(4, 9)).astype(np.int32)
  decoded = [tok.decode(r.tolist(), skip_special_tokens=True) for r in decode_ids]
  enc = tok(SEQ2SEQ_SOURCES[:2], return_tensors="pt", padding=True)
  with torch.no_grad():  # greedy, 8 new tokens, no forced end (tfjax decodes to the context window)
    gen = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=8, min_new_tokens=0,
                         forced_eos_token_id=None, forced_bos_token_id=None, bad_words_ids=None).numpy()
  np.savez_compressed(out / f"{name}.npz", input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                      decoder_input_ids=dec.astype(np.int32), decoder_attention_mask=dec_mask.astype(np.int32),
                      logits=logits.astype(np.float32), texts=np.array(SEQ2SEQ_TEXTS), text_ids=text_ids,
                      decode_ids=decode_ids, decoded=np.array(decoded), generate_sources=np.array(SEQ2SEQ_SOURCES[:2]),
                      generate_ids=gen.astype(np.int32))


def make_marian(out: pathlib.Path) -> None:
  import io
  import sentencepiece as spm
  from transformers import MarianConfig, MarianMTModel, MarianTokenizer
  d = out / "hf_marian"
  d.mkdir(parents=True, exist_ok=True)
  for name, corpus in (("source", SEQ2SEQ_SOURCES), ("target", SEQ2SEQ_TARGETS)):
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus * 20), model_writer=model_file, vocab_size=48,
                                   model_type="unigram", unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
                                   normalization_rule_name="identity")  # no 240 KB NFKC table
    (d / f"{name}.spm").write_bytes(model_file.getvalue())
  vocab = {"</s>": 0, "<unk>": 1}
  for name in ("source", "target"):
    sp = spm.SentencePieceProcessor(model_file=str(d / f"{name}.spm"))
    for i in range(sp.get_piece_size()):
      piece = sp.id_to_piece(i)
      if piece not in vocab and piece not in ("<s>", "</s>", "<unk>"):
        vocab[piece] = len(vocab)
  vocab[">>de<<"] = len(vocab)  # a language code (multilingual opus-mt models start sources with one)
  vocab["<pad>"] = len(vocab)
  (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
  tok = MarianTokenizer(vocab=str(d / "vocab.json"), source_spm=str(d / "source.spm"),
                        target_spm=str(d / "target.spm"))
  pad = vocab["<pad>"]

  torch.manual_seed(0)
  config = MarianConfig(attn_implementation="eager", vocab_size=len(vocab), d_model=16, encoder_layers=2,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
                        decoder_ffn_dim=24, max_position_embeddings=32, activation_function="swish",
                        scale_embedding=True, pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0,
                        forced_eos_token_id=0, dropout=0.1)
  model = MarianMTModel(config).eval()
  _perturb_seq2seq(model, 3)
  model.save_pretrained(d, safe_serialization=True)
  tok.save_pretrained(d)
  _seq2seq_reference(model, tok, out, "hf_marian", len(vocab), pad, seed=3)


def make_bart(out: pathlib.Path) -> None:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer
  d = out / "hf_bart"
  specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
  bpe = Tokenizer(models.BPE(unk_token="<unk>"))
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator(SEQ2SEQ_SOURCES * 20 + TOKENIZER_CORPUS, trainer=trainer)
  bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
  tok = BartTokenizer(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                      unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
  vocab = bpe.get_vocab_size()

  torch.manual_seed(0)
  config = BartConfig(attn_implementation="eager", vocab_size=vocab, d_model=16, encoder_layers=1, decoder_layers=2,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=24,
                      max_position_embeddings=32, activation_function="gelu", scale_embedding=False,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                      forced_eos_token_id=2, dropout=0.1)
  model = BartForConditionalGeneration(config).eval()
  _perturb_seq2seq(model, 4)
  model.save_pretrained(d, safe_serialization=True)
  tok.save_pretrained(d)
  bpe.model.save(str(d))  # vocab.json + merges.txt, the other form a BART dir may have
  _seq2seq_reference(model, tok, out, "hf_bart", vocab, 2, seed=4)


def check(path: pathlib.Path, reference: pathlib.Path | None) -> None:
  """Loads ``path`` with transformers and compares logits at real positions with the reference .npz."""
  from transformers import (AutoConfig, BartForConditionalGeneration, BertForMaskedLM, GPT2LMHeadModel,
                            MarianMTModel, RoFormerForMaskedLM)
  config = AutoConfig.from_pretrained(path)
  cls = {"gpt2": GPT2LMHeadModel, "bert": BertForMaskedLM, "marian": MarianMTModel,
         "bart": BartForConditionalGeneration, "roformer": RoFormerForMaskedLM}[config.model_type]
  model = cls.from_pretrained(path, attn_implementation="eager").eval()
  reference = reference or FIXTURES / f"hf_{config.model_type}.npz"
  ref = np.load(reference)
  keys = ("input_ids", "attention_mask", "token_type_ids", "decoder_input_ids", "decoder_attention_mask")
  kwargs = {k: torch.tensor(ref[k].astype(np.int64)) for k in keys if k in ref}
  with torch.no_grad():
    logits = model(**kwargs).logits.numpy()
  real = ref["decoder_attention_mask" if "decoder_attention_mask" in ref else "attention_mask"].astype(bool)
  err = float(np.max(np.abs(logits[real] - ref["logits"][real])))
  print(json.dumps({"dir": str(path), "reference": str(reference), "max_abs_err": err}))
  if not err < 1e-5:
    raise SystemExit(f"logits differ by {err}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=pathlib.Path, default=FIXTURES)
  parser.add_argument("--check", type=pathlib.Path, default=None)
  parser.add_argument("--reference", type=pathlib.Path, default=None)
  parser.add_argument("--only", default="gpt2,bert,roformer,marian,bart", help="comma-separated fixtures to (re)build")
  args = parser.parse_args()
  torch.set_num_threads(1)
  if args.check is not None:
    check(args.check, args.reference)
    return
  args.out.mkdir(parents=True, exist_ok=True)
  makers = {"gpt2": make_gpt2, "bert": make_bert, "roformer": make_roformer, "marian": make_marian, "bart": make_bart}
  for name in args.only.split(","):
    makers[name](args.out)
  for extra in ("generation_config.json", "special_tokens_map.json"):  # transformers rebuilds them from config.json
    for f in args.out.glob(f"hf_*/{extra}"):
      f.unlink()
  total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
  for f in sorted(args.out.rglob("*")):
    if f.is_file():
      print(f"{f.stat().st_size:8d}  {f.relative_to(args.out)}")
  print(f"{total:8d}  total bytes")


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  main()

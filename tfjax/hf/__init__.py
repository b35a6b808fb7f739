"""Hugging Face checkpoint interoperability: GPT-2 (``GPT2LMHeadModel``), BERT (``BertForMaskedLM``; with RoPE,
``RoFormerForMaskedLM``), and the encoder-decoders Marian (``MarianMTModel``) and BART
(``BartForConditionalGeneration``, :mod:`tfjax.hf.seq2seq`).

A Hugging Face model directory holds ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), and usually a tokenizer (``tokenizer.json``, or GPT-2's ``vocab.json`` +
``merges.txt``, or BERT's ``vocab.txt``, or Marian's ``source.spm``/``target.spm`` + ``vocab.json``). Tensors are
read and written with ``safetensors.numpy``: no torch.

- :func:`load` ``(path) -> (model, params)``: a tfjax :class:`~tfjax.models.gpt.GPT`,
  :class:`~tfjax.models.bert.BERT` or :class:`~tfjax.models.transformer.EncoderDecoder` configured to compute what
  the PyTorch model computes (activation, LayerNorm epsilon, post-/pre-LN, positions, embedding scale, tied head),
  with plain float32 parameters.
- :func:`save` ``(model, params, path)``: writes ``config.json`` + ``model.safetensors`` that ``transformers`` loads.
- :func:`is_hf_dir`, :func:`load_tokenizer` (``tokenizer.json``, GPT-2's ``vocab.json`` + ``merges.txt``, BERT's
  ``vocab.txt``, Marian's sentencepiece files) and :func:`translate_texts` (an imported Marian/BART with its
  tokenizer, greedy or beam).

Layout differences handled here: PyTorch ``nn.Linear`` stores ``weight [out, in]`` (transposed to a flax kernel
``[in, out]``); GPT-2's ``Conv1D`` already stores ``[in, out]`` and its fused ``c_attn`` is ``[q | k | v]`` like
tfjax's ``qkv``; BERT's separate ``query``/``key``/``value`` are concatenated into ``qkv``. RoFormer rotates
adjacent channel pairs ``(2i, 2i+1)`` of a head where tfjax rotates ``(i, i + Dh/2)``: the query and key columns of
every head are permuted between the two layouts (the attention scores are unchanged). LayerNorm ``weight`` is
flax's ``scale``. Tied output embeddings are not stored twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
from typing import Any

import jax
import numpy as np

from tfjax.hf import seq2seq
from tfjax.hf.common import (CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, HFCheckpointError, _activation, _get,
                             _get_path, _layernorm, _linear, _Rule, _same, _transposed,
                             attention_problems, check_tensors, is_hf_dir, read_config, params_from_rules,
                             read_tensors, tensors_from_rules, write_tensors)
from tfjax.hf.seq2seq import GenerationIds, MarianTokenizer, generation_ids, translate_ids, translate_texts
from tfjax.layers.blocks import unscan_params
from tfjax.models.config import TransformerConfig

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "WEIGHTS_INDEX_FILE", "SUPPORTED", "HFCheckpointError", "GenerationIds",
           "MarianTokenizer", "generation_ids", "is_hf_dir", "load", "load_tokenizer",
           "read_config", "read_tensors", "save", "translate_ids", "translate_texts", "write_tensors"]

SUPPORTED = {"gpt2": "GPT2LMHeadModel", "bert": "BertForMaskedLM", "roformer": "RoFormerForMaskedLM",
             **seq2seq.SEQ2SEQ}
_ENCODERS = ("bert", "roformer")  # BERT-style masked-LM encoders: tfjax BERT with learned / rotary positions

_GPT2_ACT_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
_BERT_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

# tensors present in some checkpoints that tfjax does not need (buffers, pooler, next-sentence head)
_IGNORED = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|position_ids|^(bert|roformer)\.pooler\.|"
                      r"^cls\.seq_relationship\.|^roformer\.encoder\.embed_positions\.)")


def _gpt2_rules(cfg: TransformerConfig) -> list[_Rule]:
  r = [_same(("embed", "embedding"), "transformer.wte.weight"),
       _same(("pos_embed", "embedding"), "transformer.wpe.weight")]
  for i in range(cfg.num_layers):
    t, h = ("decoder", f"block_{i}"), f"transformer.h.{i}"
    r += _layernorm(t + ("ln_attn",), h + ".ln_1")
    r += _linear(t + ("attn", "qkv"), h + ".attn.c_attn", transpose=False)
    r += _linear(t + ("attn", "out"), h + ".attn.c_proj", transpose=False)
    r += _layernorm(t + ("ln_mlp",), h + ".ln_2")
    r += _linear(t + ("mlp", "fc_in"), h + ".mlp.c_fc", transpose=False)
    r += _linear(t + ("mlp", "fc_out"), h + ".mlp.c_proj", transpose=False)
  r += _layernorm(("ln_final",), "transformer.ln_f")
  if not cfg.tie_embeddings:
    r.append(_transposed(("unembed", "kernel_dense", "kernel"), "lm_head.weight"))
  return r


def rotary_pairs_permutation(num_heads: int, head_dim: int) -> np.ndarray:
  """Column order taking tfjax's rotary layout (a head's channel ``i`` pairs with ``i + Dh/2``) to RoFormer's
  (``2i`` pairs with ``2i + 1``): ``roformer_columns = tfjax_columns[..., perm]`` over ``num_heads * head_dim``
  columns; ``np.argsort(perm)`` goes back."""
  half = head_dim // 2
  within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)  # 0, h, 1, h+1, ...
  return (np.arange(num_heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def _bert_rules(cfg: TransformerConfig, model_type: str = "bert") -> list[_Rule]:
  """BertForMaskedLM (``model_type="bert"``) or RoFormerForMaskedLM (``"roformer"``: no position table, RoPE)."""
  e = f"{model_type}.embeddings"
  r = [_same(("embed", "embedding"), f"{e}.word_embeddings.weight"),
       _same(("type_embed", "embedding"), f"{e}.token_type_embeddings.weight")]
  if model_type == "bert":
    r.append(_same(("pos_embed", "embedding"), f"{e}.position_embeddings.weight"))
  r += _layernorm(("ln_embed",), f"{e}.LayerNorm")
  head_dim = cfg.head_width
  # RoFormer's q and k columns in its rotary pair order; v (not rotated) as it is
  perm = rotary_pairs_permutation(cfg.num_heads, head_dim) if model_type == "roformer" else None
  inv = np.argsort(perm) if perm is not None else None

  def to_tf(q, k, v):  # HF [D] or [out, in] -> tfjax columns
    if perm is not None:
      q, k = q[inv], k[inv]
    return np.concatenate([q.T, k.T, v.T], axis=-1) if q.ndim == 2 else np.concatenate([q, k, v])

  def from_tf(a):
    q, k, v = np.split(a, 3, axis=-1)
    if perm is not None:
      q, k = q[..., perm], k[..., perm]
    return tuple(x.T for x in (q, k, v))

  for i in range(cfg.num_layers):
    t, h = ("encoder", f"block_{i}"), f"{model_type}.encoder.layer.{i}"
    qkv = tuple(f"{h}.attention.self.{n}" for n in ("query", "key", "value"))
    r.append(_Rule(t + ("attn", "qkv", "kernel"), tuple(k + ".weight" for k in qkv), to_tf, from_tf))
    r.append(_Rule(t + ("attn", "qkv", "bias"), tuple(k + ".bias" for k in qkv), to_tf, from_tf))
    r += _linear(t + ("attn", "out"), f"{h}.attention.output.dense", transpose=True)
    r += _layernorm(t + ("ln_attn",), f"{h}.attention.output.LayerNorm")
    r += _linear(t + ("mlp", "fc_in"), f"{h}.intermediate.dense", transpose=True)
    r += _linear(t + ("mlp", "fc_out"), f"{h}.output.dense", transpose=True)
    r += _layernorm(t + ("ln_mlp",), f"{h}.output.LayerNorm")
  p = "cls.predictions"
  r += _linear(("mlm_head", "dense"), f"{p}.transform.dense", transpose=True)
  r += _layernorm(("mlm_head", "ln"), f"{p}.transform.LayerNorm")
  r.append(_same(("mlm_head", "bias"), f"{p}.bias"))
  if not cfg.tie_embeddings:
    r.append(_transposed(("mlm_head", "unembed", "kernel_dense", "kernel"), f"{p}.decoder.weight"))
  return r


def _normalise_keys(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
  """Old names (LayerNorm ``gamma``/``beta``), missing ``transformer.``/``bert.`` prefixes, the decoder bias alias."""
  out = {}
  for k, v in tensors.items():
    k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
    if model_type == "gpt2" and not k.startswith(("transformer.", "lm_head.")):
      k = "transformer." + k  # GPT2Model checkpoints (e.g. the original "gpt2") have no prefix
    if model_type in _ENCODERS and not k.startswith((f"{model_type}.", "cls.")):
      k = f"{model_type}." + k
    out[k] = v
  if model_type in _ENCODERS and "cls.predictions.bias" not in out and "cls.predictions.decoder.bias" in out:
    out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
  out.pop("cls.predictions.decoder.bias", None)
  return out


def _gpt2_config(c: dict, overrides: dict) -> TransformerConfig:
  if _get(c, "add_cross_attention", False):
    raise HFCheckpointError("GPT-2 with add_cross_attention=True is not supported")
  if not _get(c, "scale_attn_weights", True) or _get(c, "scale_attn_by_inverse_layer_idx", False):
    raise HFCheckpointError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported "
                            "(scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True)")
  kw = dict(vocab_size=_get(c, "vocab_size", required=True), num_layers=_get(c, "n_layer", required=True),
            num_heads=_get(c, "n_head", required=True), emb_dim=_get(c, "n_embd", required=True),
            mlp_dim=_get(c, "n_inner"), max_len=_get(c, "n_positions", 1024),
            dropout_rate=_get(c, "resid_pdrop", 0.0), attention_dropout_rate=_get(c, "attn_pdrop", 0.0),
            positional="learned", norm="layernorm", norm_eps=_get(c, "layer_norm_epsilon", 1e-5), use_bias=True,
            pre_ln=True, activation=_activation(c, "activation_function", "gelu_new"),
            tie_embeddings=bool(_get(c, "tie_word_embeddings", True)))
  kw.update(overrides)
  return TransformerConfig(**kw)


def _bert_config(c: dict, overrides: dict, model_type: str = "bert") -> tuple[TransformerConfig, int]:
  name = "RoFormer" if model_type == "roformer" else "BERT"
  if model_type == "bert" and _get(c, "position_embedding_type", "absolute") != "absolute":
    raise HFCheckpointError(f"BERT position_embedding_type={c['position_embedding_type']!r} is not supported "
                            "(only 'absolute')")
  if model_type == "roformer":
    if _get(c, "rotary_value", False):
      raise HFCheckpointError("RoFormer with rotary_value=True (values rotated too) is not supported")
    if _get(c, "embedding_size", None) not in (None, _get(c, "hidden_size", required=True)):
      raise HFCheckpointError(f"RoFormer embedding_size={c['embedding_size']} != hidden_size={c['hidden_size']} "
                              "(an embedding projection) is not supported")
  if _get(c, "is_decoder", False) or _get(c, "add_cross_attention", False):
    raise HFCheckpointError(f"{name} as a decoder (is_decoder / add_cross_attention) is not supported")
  kw = dict(vocab_size=_get(c, "vocab_size", required=True), num_layers=_get(c, "num_hidden_layers", required=True),
            num_heads=_get(c, "num_attention_heads", required=True), emb_dim=_get(c, "hidden_size", required=True),
            mlp_dim=_get(c, "intermediate_size", required=True), max_len=_get(c, "max_position_embeddings", 512),
            dropout_rate=_get(c, "hidden_dropout_prob", 0.0),
            attention_dropout_rate=_get(c, "attention_probs_dropout_prob", 0.0),
            positional="rope" if model_type == "roformer" else "learned", rope_base=10_000.0,
            norm="layernorm", norm_eps=_get(c, "layer_norm_eps", 1e-12), use_bias=True, pre_ln=False,
            activation=_activation(c, "hidden_act", "gelu"),
            tie_embeddings=bool(_get(c, "tie_word_embeddings", True)),
            scale_residual_init=False,  # BERT's init: every weight N(0, 0.02)
            attention_block_size=0)  # bidirectional: no causal query blocks
  kw.update(overrides)
  return TransformerConfig(**kw), int(_get(c, "type_vocab_size", 2))


def _check_exportable(cfg: TransformerConfig, what: str, pre_ln: bool, positional: str = "learned") -> None:
  problems = []
  if cfg.pre_ln != pre_ln:
    problems.append(f"pre_ln={cfg.pre_ln} ({what} is {'pre' if pre_ln else 'post'}-LN)")
  if cfg.positional != positional:
    problems.append(f"positional={cfg.positional!r} (needs {positional!r})")
  if positional == "rope" and cfg.rope_base != 10_000.0:
    problems.append(f"rope_base={cfg.rope_base} (needs 10000)")
  if cfg.norm != "layernorm":
    problems.append(f"norm={cfg.norm!r} (needs 'layernorm')")
  if cfg.embed_scale:
    problems.append("embed_scale=True (its embeddings are not scaled)")
  problems += attention_problems(cfg)
  table = _GPT2_ACT_OUT if what == "GPT-2" else _BERT_ACT_OUT
  if cfg.activation not in table:
    problems.append(f"activation={cfg.activation!r}")
  if problems:
    raise HFCheckpointError(f"this model cannot be written as a Hugging Face {what}: " + "; ".join(problems))


def _gpt2_config_out(cfg: TransformerConfig) -> dict:
  _check_exportable(cfg, "GPT-2", pre_ln=True)
  eos = 50256 if cfg.vocab_size > 50256 else None
  return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
          "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_embd": cfg.emb_dim,
          "n_inner": None if cfg.hidden_dim == 4 * cfg.emb_dim else cfg.hidden_dim, "n_positions": cfg.max_len,
          "n_ctx": cfg.max_len, "activation_function": _GPT2_ACT_OUT[cfg.activation],
          "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout_rate, "embd_pdrop": cfg.dropout_rate,
          "attn_pdrop": cfg.attention_dropout_rate, "scale_attn_weights": True,
          "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
          "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": eos, "eos_token_id": eos,
          "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float32"}


def _bert_config_out(cfg: TransformerConfig, type_vocab_size: int) -> dict:
  """``BertForMaskedLM``'s config of a BERT with learned positions, ``RoFormerForMaskedLM``'s of one with RoPE."""
  if cfg.positional == "rope":
    _check_exportable(cfg, "RoFormer", pre_ln=False, positional="rope")
    out = _bert_config_out(dataclasses.replace(cfg, positional="learned"), type_vocab_size)
    del out["position_embedding_type"]
    return {**out, "architectures": ["RoFormerForMaskedLM"], "model_type": "roformer",
            "embedding_size": cfg.emb_dim, "rotary_value": False}
  _check_exportable(cfg, "BERT", pre_ln=False)
  return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
          "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads, "hidden_size": cfg.emb_dim,
          "intermediate_size": cfg.hidden_dim, "max_position_embeddings": cfg.max_len,
          "type_vocab_size": type_vocab_size, "hidden_act": _BERT_ACT_OUT[cfg.activation],
          "layer_norm_eps": cfg.norm_eps, "hidden_dropout_prob": cfg.dropout_rate,
          "attention_probs_dropout_prob": cfg.attention_dropout_rate, "position_embedding_type": "absolute",
          "tie_word_embeddings": cfg.tie_embeddings, "pad_token_id": 0, "initializer_range": 0.02,
          "is_decoder": False, "use_cache": True, "torch_dtype": "float32"}


# --------------------------------------------------------------------------------------------------------------------
# Load / save


def _expected_shapes(model, rules) -> dict[str, tuple[int, ...]]:
  """The Hugging Face tensor shapes the model needs, from the shapes of its freshly initialised parameters."""
  import flax.linen as nn
  import jax.numpy as jnp
  ids = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids))["params"])
  out = {}
  for rule in rules:
    try:
      leaf = _get_path(shapes, rule.path)
    except KeyError:
      raise AssertionError(f"internal: tfjax parameter {'/'.join(rule.path)} does not exist") from None
    for key, x in zip(rule.keys, rule.from_tf(np.zeros(leaf.shape, np.float32))):
      out[key] = tuple(x.shape)
  return out


def _build(model_type: str, config: dict, overrides: dict):
  from tfjax.models.bert import BERT
  from tfjax.models.gpt import GPT
  if model_type == "gpt2":
    cfg = _gpt2_config(config, overrides)
    return GPT(cfg), _gpt2_rules(cfg)
  cfg, type_vocab = _bert_config(config, overrides, model_type)
  return BERT(cfg, type_vocab_size=type_vocab), _bert_rules(cfg, model_type)


def load(path: str | os.PathLike, **config_overrides) -> tuple[Any, dict]:
  """Imports a Hugging Face GPT-2, BERT, Marian or BART directory as ``(model, params)`` (a tfjax GPT, BERT or
  EncoderDecoder; float32 params).

  ``config_overrides`` replace fields of the derived :class:`TransformerConfig` that do not change the parameters
  (e.g. ``attention_impl``, ``dtype``, ``dropout_rate``). Call the model as ``model.apply({'params': params},
  input_ids, ...)`` (see :class:`~tfjax.models.gpt.GPT` and :class:`~tfjax.models.bert.BERT` for the arguments;
  an EncoderDecoder takes ``src, src_valid, tgt``).

  Raises:
    HFCheckpointError: no config.json or weights, an unsupported architecture or option, a missing tensor, or a
      tensor of the wrong shape (the message names the tensor).
  """
  path = pathlib.Path(path)
  config = read_config(path)
  model_type = config.get("model_type")
  if model_type not in SUPPORTED:
    archs = config.get("architectures")
    raise HFCheckpointError(f"{path}: unsupported model_type {model_type!r} (architectures {archs}); tfjax imports "
                            + ", ".join(f"{t!r} ({a})" for t, a in SUPPORTED.items()))
  if model_type in seq2seq.SEQ2SEQ:
    return seq2seq.load(path, config, config_overrides)
  try:
    model, rules = _build(model_type, config, config_overrides)
  except (TypeError, ValueError) as e:
    if isinstance(e, HFCheckpointError):
      raise
    raise HFCheckpointError(f"{path / CONFIG_FILE}: cannot build a tfjax {model_type} model: {e}") from e
  tensors = _normalise_keys(read_tensors(path), model_type)
  expected = _expected_shapes(model, rules)

  hint = ""
  if model_type in _ENCODERS and any(k.startswith("cls.") and k not in tensors for k in expected):
    hint = (f" ({SUPPORTED[model_type]} needs the masked-LM head 'cls.predictions.*'; a checkpoint of the bare "
            "encoder lacks it)")
  check_tensors(path, tensors, expected, hint)
  tied_copies = {"lm_head.weight", "cls.predictions.decoder.weight"}  # tied heads some checkpoints store anyway
  unused = sorted(k for k in tensors if k not in expected and not _IGNORED.search(k) and k not in tied_copies)
  if unused:
    logging.warning("tfjax.hf.load(%s): ignoring %d tensors not used by the model: %s", path, len(unused),
                    unused[:5])

  return model, params_from_rules(tensors, rules)


def save(model, params, path: str | os.PathLike, *, tokenizer_file: str | os.PathLike | None = None,
         tokenizer_from: str | os.PathLike | None = None, token_ids: dict | None = None) -> None:
  """Exports a tfjax GPT (as ``GPT2LMHeadModel``), post-LN BERT (as ``BertForMaskedLM``, or with RoPE as
  ``RoFormerForMaskedLM``) or EncoderDecoder with Marian's or BART's embeddings (as ``MarianMTModel`` /
  ``BartForConditionalGeneration``) to a Hugging Face dir.

  Writes ``config.json`` and ``model.safetensors`` (float32, tied embeddings stored once); copies ``tokenizer_file``
  to ``tokenizer.json``, and the tokenizer files of the Hugging Face directory ``tokenizer_from``, when given.
  ``token_ids`` (encoder-decoders): ``pad_token_id``, ``eos_token_id``, ``decoder_start_token_id``, ... for
  ``config.json`` (default: those of ``tokenizer_from``'s config, else transformers' defaults). Raises
  :class:`HFCheckpointError` for a model whose configuration the Hugging Face architecture cannot express (e.g.
  RoPE, RMSNorm, GQA, pre-LN BERT, an EncoderDecoder with tfjax's own final norms).
  """
  import flax.linen as nn
  from tfjax.models.bert import BERT
  from tfjax.models.gpt import GPT
  from tfjax.models.transformer import EncoderDecoder
  cfg = model.cfg
  params = nn.unbox(params)
  params = params.get("params", params) if "params" in params and len(params) == 1 else params
  path = pathlib.Path(path)
  if isinstance(model, EncoderDecoder):
    if token_ids is None and tokenizer_from is not None and (pathlib.Path(tokenizer_from) / CONFIG_FILE).is_file():
      token_ids = seq2seq.config_extra(tokenizer_from)
    seq2seq.save(model, params, path, token_ids)
    if tokenizer_from is not None:
      _copy_tokenizer(tokenizer_from, path)
    return
  if isinstance(model, GPT):
    config, rules = _gpt2_config_out(cfg), _gpt2_rules(cfg)
  elif isinstance(model, BERT):
    config = _bert_config_out(cfg, model.type_vocab_size)
    rules = _bert_rules(cfg, config["model_type"])
  else:
    raise HFCheckpointError(f"cannot export {type(model).__name__}: tfjax exports GPT (as GPT-2), BERT and "
                            "EncoderDecoder (as Marian or BART)")
  params = unscan_params(params)
  tensors = tensors_from_rules(params, rules)
  if config["model_type"] == "roformer":  # its fixed sinusoidal table (transformers warns when it is missing)
    from tfjax.layers.embeddings import sinusoidal_table
    tensors["roformer.encoder.embed_positions.weight"] = sinusoidal_table(
        cfg.max_len, cfg.head_width, layout="halves")
  path.mkdir(parents=True, exist_ok=True)
  write_tensors(tensors, path / WEIGHTS_FILE)
  (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  if tokenizer_file is not None:
    (path / "tokenizer.json").write_bytes(pathlib.Path(tokenizer_file).read_bytes())
  if tokenizer_from is not None:
    _copy_tokenizer(tokenizer_from, path)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "vocab.txt", "source.spm", "target.spm", "generation_config.json")


def _copy_tokenizer(src: str | os.PathLike, dst: pathlib.Path) -> None:
  src = pathlib.Path(src)
  found = [name for name in _TOKENIZER_FILES if (src / name).is_file()]
  if not any(name not in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
             for name in found):
    raise HFCheckpointError(f"tokenizer_from={src} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:8])})")
  for name in found:
    shutil.copyfile(src / name, dst / name)


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers


def load_tokenizer(path: str | os.PathLike):
  """The tokenizer of a Hugging Face model directory as a :class:`tfjax.data.tokenizers.Tokenizer` (Marian's: a
  :class:`~tfjax.hf.seq2seq.MarianTokenizer`, the same interface over sentencepiece).

  Reads Marian's ``source.spm`` + ``target.spm`` + ``vocab.json``; else ``tokenizer.json``; else GPT-2's (BART's,
  with ``<s> ... </s>`` around every text) byte-level BPE from ``vocab.json`` + ``merges.txt``; else BERT's WordPiece
  from ``vocab.txt`` (lower-cased unless ``tokenizer_config.json`` says ``do_lower_case: false``). ``eos_token`` is
  taken from ``tokenizer_config.json`` / ``special_tokens_map.json`` when present (GPT-2: ``<|endoftext|>``).
  """
  import tokenizers
  from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
  from tfjax.data.tokenizers import Tokenizer
  p = pathlib.Path(path)
  tok_config = {}
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    if (p / name).is_file():
      tok_config = {**json.loads((p / name).read_text()), **tok_config}
  eos = tok_config.get("eos_token")
  if isinstance(eos, dict):
    eos = eos.get("content")
  if (p / "source.spm").is_file():
    return MarianTokenizer(p)
  if (p / "tokenizer.json").is_file():
    tok = tokenizers.Tokenizer.from_file(str(p / "tokenizer.json"))
  elif (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
    tok = tokenizers.Tokenizer(models.BPE.from_file(str(p / "vocab.json"), str(p / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if "<|endoftext|>" in tok.get_vocab():
      tok.add_special_tokens(["<|endoftext|>"])
      eos = eos or "<|endoftext|>"
    elif "<s>" in tok.get_vocab() and "</s>" in tok.get_vocab():  # BART / RoBERTa: <s> text </s>
      tok.add_special_tokens([t for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>") if t in tok.get_vocab()])
      tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                        ("<s>", tok.token_to_id("<s>")), add_prefix_space=False)
      eos = eos or "</s>"
  elif (p / "vocab.txt").is_file():
    tok = tokenizers.Tokenizer(models.WordPiece.from_file(str(p / "vocab.txt"), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=tok_config.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if tok.token_to_id(t) is not None]
    tok.add_special_tokens(specials)
    if tok.token_to_id("[CLS]") is not None and tok.token_to_id("[SEP]") is not None:
      tok.post_processor = processors.TemplateProcessing(
          single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
          special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
  else:
    raise HFCheckpointError(f"{p} has no tokenizer (tokenizer.json, vocab.json + merges.txt, or vocab.txt)")
  if eos is None and tok.token_to_id("<|endoftext|>") is not None:
    eos = "<|endoftext|>"
  return Tokenizer(tok, eos_token=eos)

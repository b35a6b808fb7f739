"""Hugging Face encoder-decoders: Marian (``MarianMTModel``, the Helsinki-NLP opus-mt family) and BART
(``BartForConditionalGeneration``) as tfjax's :class:`~tfjax.models.transformer.EncoderDecoder`.

Both are post-LN transformers with no norm after either stack, biases everywhere, LayerNorm eps 1e-5, one token
embedding shared by encoder, decoder and (tied) output, and a ``final_logits_bias [1, V]`` added to the logits. They
differ in their embeddings:

=================  ==========================================  ==============================================
                   Marian                                      BART
=================  ==========================================  ==============================================
positions          sinusoidal, sines then cosines (not          learned, ``[max_len + 2, D]``, position p reads
                   interleaved), not trained                    row p + 2
embedding scale    ``sqrt(D)`` (``scale_embedding``)           ``scale_embedding`` (False in bart-base/large)
embedding norm     none                                        ``layernorm_embedding`` (both stacks)
activation         ``activation_function`` (opus-mt: swish)    ``activation_function`` (gelu: exact erf)
decoder start      ``<pad>``                                   ``</s>``
tokenizer          ``source.spm`` / ``target.spm`` +            byte-level BPE (``tokenizer.json`` or
                   ``vocab.json`` (sentencepiece)               ``vocab.json`` + ``merges.txt``)
=================  ==========================================  ==============================================

Mapping of one decoder layer ``model.decoder.layers.{i}.*`` to ``decoder/block_{i}/*`` (the encoder's is the same
without ``encoder_attn``): ``self_attn.{q,k,v}_proj`` -> ``attn/qkv`` (``[D, 3D]``, q | k | v), ``self_attn.out_proj``
-> ``attn/out``, ``self_attn_layer_norm`` -> ``ln_attn``, ``encoder_attn.q_proj`` -> ``cross_attn/query``,
``encoder_attn.{k,v}_proj`` -> ``cross_attn/key_value`` (``[D, 2D]``, k | v), ``encoder_attn.out_proj`` ->
``cross_attn/out``, ``encoder_attn_layer_norm`` -> ``ln_cross``, ``fc1``/``fc2`` -> ``mlp/fc_in``/``mlp/fc_out``,
``final_layer_norm`` -> ``ln_mlp``. ``model.shared`` -> ``embed``, ``final_logits_bias`` -> ``logits_bias``,
``lm_head`` (untied only) -> ``unembed``.

Generation (:func:`translate_texts` on text, :func:`translate_ids` on ids) starts the decoder from
``decoder_start_token_id`` and stops at ``eos_token_id`` (:func:`generation_ids`); single-token ``bad_words_ids`` of
``generation_config.json`` (opus-mt bans ``<pad>``) are never generated. Greedy decoding gives transformers'
``generate(num_beams=1)`` tokens; beam search ranks with GNMT's length penalty, and BART's ``forced_bos_token_id``
is not applied.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.hf.common import (CONFIG_FILE, WEIGHTS_FILE, HFCheckpointError, _activation, _get, _get_path, _layernorm,
                             _linear, _Rule, _same, _transposed, attention_problems, check_tensors,
                             params_from_rules, read_tensors, write_tensors)
from tfjax.models.config import TransformerConfig
from tfjax.layers.embeddings import sinusoidal_table

log = logging.getLogger("tfjax")

SEQ2SEQ = {"marian": "MarianMTModel", "bart": "BartForConditionalGeneration"}
_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "swish"}
_LN_EPS = 1e-5  # nn.LayerNorm's default: neither config can change it
_BART_POSITION_OFFSET = 2

# (legacy config key, the value transformers' current model implements) per model type: the keys come from the time
# one BartConfig covered Marian, mBART and Pegasus; transformers ignores them now, so a checkpoint that sets one to
# the other value was made for a different architecture than the one transformers (and tfjax) would run
_LEGACY = {
    "marian": {"normalize_before": False, "add_final_layer_norm": False, "normalize_embedding": False,
               "static_position_embeddings": True, "add_bias_logits": False, "do_blenderbot_90_layernorm": False},
    "bart": {"normalize_before": False, "add_final_layer_norm": False, "normalize_embedding": True,
             "static_position_embeddings": False, "add_bias_logits": False, "do_blenderbot_90_layernorm": False,
             "extra_pos_embeddings": _BART_POSITION_OFFSET},
}


# --------------------------------------------------------------------------------------------------------------------
# Config


def config_from_hf(c: dict, model_type: str, overrides: dict) -> tuple[TransformerConfig, int]:
  """``(TransformerConfig, num_encoder_layers)`` computing what transformers' ``model_type`` model computes; raises
  :class:`HFCheckpointError` naming the first option tfjax cannot represent."""
  for key, value in _LEGACY[model_type].items():
    if key in c and c[key] is not None and c[key] != value:
      raise HFCheckpointError(f"{CONFIG_FILE}: {key}={c[key]!r} is not supported: {SEQ2SEQ[model_type]} (in "
                              f"transformers and tfjax) has {key}={value!r}")
  if _get(c, "is_decoder", False):
    raise HFCheckpointError(f"{CONFIG_FILE}: is_decoder=True (a decoder alone) is not supported; tfjax imports the "
                            f"whole {SEQ2SEQ[model_type]}")
  if model_type == "marian":
    if not _get(c, "share_encoder_decoder_embeddings", True):
      raise HFCheckpointError(f"{CONFIG_FILE}: share_encoder_decoder_embeddings=False (separate source and target "
                              "vocabularies) is not supported: tfjax's EncoderDecoder has one token embedding")
    vocab = _get(c, "vocab_size", required=True)
    if _get(c, "decoder_vocab_size", vocab) != vocab:
      raise HFCheckpointError(f"{CONFIG_FILE}: decoder_vocab_size={c['decoder_vocab_size']} differs from "
                              f"vocab_size={vocab}: tfjax's EncoderDecoder has one vocabulary")
  for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
    if _get(c, enc, required=True) != _get(c, dec, required=True):
      raise HFCheckpointError(f"{CONFIG_FILE}: {enc}={c[enc]} differs from {dec}={c[dec]}: tfjax's EncoderDecoder "
                              "gives both stacks the same shape (only the depths may differ)")
  for key in ("encoder_layerdrop", "decoder_layerdrop"):
    if _get(c, key, 0.0):
      log.warning("tfjax.hf.load: %s=%s ignored (tfjax has no layer drop; inference is unaffected)", key, c[key])
  marian = model_type == "marian"
  kw = dict(vocab_size=_get(c, "vocab_size", required=True), num_layers=_get(c, "decoder_layers", required=True),
            num_heads=_get(c, "decoder_attention_heads"), emb_dim=_get(c, "d_model", required=True),
            mlp_dim=_get(c, "decoder_ffn_dim"), max_len=_get(c, "max_position_embeddings", 1024),
            dropout_rate=_get(c, "dropout", 0.0), attention_dropout_rate=_get(c, "attention_dropout", 0.0),
            positional="sinusoidal" if marian else "learned", sinusoidal_layout="halves",
            position_offset=0 if marian else _BART_POSITION_OFFSET, embed_scale=bool(_get(c, "scale_embedding", False)),
            embed_stddev=_get(c, "init_std", 0.02), norm="layernorm", norm_eps=_LN_EPS, use_bias=True, pre_ln=False,
            activation=_activation(c, "activation_function", "gelu"),
            tie_embeddings=bool(_get(c, "tie_word_embeddings", True)), scale_residual_init=False, final_norm=False,
            embed_norm=not marian, logits_bias=True, num_kv_heads=None, head_dim=None)
  kw.update(overrides)
  return TransformerConfig(**kw), _get(c, "encoder_layers", required=True)


def model_type_of(cfg: TransformerConfig) -> str:
  """``"marian"`` or ``"bart"``: the Hugging Face architecture whose embeddings ``cfg`` has (sinusoidal halves, or
  learned positions with BART's offset); raises :class:`HFCheckpointError` when it is neither, or when anything else
  in ``cfg`` has no Hugging Face counterpart."""
  marian = cfg.positional == "sinusoidal" and cfg.sinusoidal_layout == "halves" and not cfg.embed_norm
  bart = cfg.positional == "learned" and cfg.position_offset == _BART_POSITION_OFFSET and cfg.embed_norm
  problems = []
  if not (marian or bart):
    problems.append(f"positional={cfg.positional!r} sinusoidal_layout={cfg.sinusoidal_layout!r} position_offset="
                    f"{cfg.position_offset} embed_norm={cfg.embed_norm} (Marian: 'sinusoidal', 'halves', no embed_norm;"
                    f" BART: 'learned', position_offset=2, embed_norm=True)")
  if cfg.pre_ln:
    problems.append("pre_ln=True (Marian and BART are post-LN)")
  if cfg.final_norm:
    problems.append("final_norm=True (Marian and BART have no norm after a stack)")
  if cfg.norm != "layernorm" or cfg.norm_eps != _LN_EPS:
    problems.append(f"norm={cfg.norm!r} norm_eps={cfg.norm_eps} (needs 'layernorm', {_LN_EPS})")
  problems += attention_problems(cfg)
  if cfg.activation not in _ACT_OUT:
    problems.append(f"activation={cfg.activation!r} (supported: {sorted(_ACT_OUT)})")
  if problems:
    raise HFCheckpointError("this EncoderDecoder cannot be written as a Hugging Face Marian or BART model: "
                            + "; ".join(problems))
  return "marian" if marian else "bart"


def config_to_hf(cfg: TransformerConfig, num_encoder_layers: int, model_type: str, token_ids: dict) -> dict:
  layers = dict(encoder_layers=num_encoder_layers, decoder_layers=cfg.num_layers,
                encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
                encoder_ffn_dim=cfg.hidden_dim, decoder_ffn_dim=cfg.hidden_dim)
  out = {"architectures": [SEQ2SEQ[model_type]], "model_type": model_type, "vocab_size": cfg.vocab_size,
         "d_model": cfg.emb_dim, **layers, "max_position_embeddings": cfg.max_len,
         "activation_function": _ACT_OUT[cfg.activation], "scale_embedding": cfg.embed_scale,
         "dropout": cfg.dropout_rate, "attention_dropout": cfg.attention_dropout_rate, "activation_dropout": 0.0,
         "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": cfg.embed_stddev,
         "tie_word_embeddings": cfg.tie_embeddings, "is_encoder_decoder": True, "use_cache": True,
         "torch_dtype": "float32", **token_ids}
  if model_type == "marian":
    out.update(decoder_vocab_size=cfg.vocab_size, share_encoder_decoder_embeddings=True)
  return out


def default_token_ids(model_type: str, vocab_size: int) -> dict:
  """The special ids transformers' config classes default to (Marian: ``<pad>`` is the last id, ``</s>`` is 0)."""
  if model_type == "marian":
    return {"pad_token_id": vocab_size - 1, "eos_token_id": 0, "decoder_start_token_id": vocab_size - 1,
            "forced_eos_token_id": 0, "bos_token_id": None}
  return {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2,
          "forced_eos_token_id": 2}


# --------------------------------------------------------------------------------------------------------------------
# Parameters


def _attention(path, key, cross: bool):
  """HF ``q_proj``/``k_proj``/``v_proj`` -> tfjax's fused ``qkv`` (self) or ``query`` + ``key_value`` (cross)."""
  names = ("q_proj", "k_proj", "v_proj")
  w = tuple(f"{key}.{n}.weight" for n in names)
  b = tuple(f"{key}.{n}.bias" for n in names)
  split = lambda a, n: tuple(np.split(a, n, axis=-1))  # noqa: E731
  if not cross:
    rules = [_Rule(path + ("qkv", "kernel"), w, lambda q, k, v: np.concatenate([q.T, k.T, v.T], axis=1),
                   lambda a: tuple(x.T for x in split(a, 3))),
             _Rule(path + ("qkv", "bias"), b, lambda q, k, v: np.concatenate([q, k, v]), lambda a: split(a, 3))]
  else:
    rules = [_transposed(path + ("query", "kernel"), w[0]), _same(path + ("query", "bias"), b[0]),
             _Rule(path + ("key_value", "kernel"), w[1:], lambda k, v: np.concatenate([k.T, v.T], axis=1),
                   lambda a: tuple(x.T for x in split(a, 2))),
             _Rule(path + ("key_value", "bias"), b[1:], lambda k, v: np.concatenate([k, v]), lambda a: split(a, 2))]
  return rules + _linear(path + ("out",), f"{key}.out_proj", transpose=True)


def rules(cfg: TransformerConfig, num_encoder_layers: int) -> list[_Rule]:
  r = [_same(("embed", "embedding"), "model.shared.weight"),
       _Rule(("logits_bias",), ("final_logits_bias",), lambda b: b.reshape(-1), lambda a: (a.reshape(1, -1),))]
  if cfg.positional == "learned":
    r += [_same(("src_pos_embed", "embedding"), "model.encoder.embed_positions.weight"),
          _same(("tgt_pos_embed", "embedding"), "model.decoder.embed_positions.weight")]
  if cfg.embed_norm:
    r += _layernorm(("ln_embed_src",), "model.encoder.layernorm_embedding")
    r += _layernorm(("ln_embed_tgt",), "model.decoder.layernorm_embedding")
  for stack, n in (("encoder", num_encoder_layers), ("decoder", cfg.num_layers)):
    for i in range(n):
      t, h = (stack, f"block_{i}"), f"model.{stack}.layers.{i}"
      r += _attention(t + ("attn",), f"{h}.self_attn", cross=False)
      r += _layernorm(t + ("ln_attn",), f"{h}.self_attn_layer_norm")
      if stack == "decoder":
        r += _attention(t + ("cross_attn",), f"{h}.encoder_attn", cross=True)
        r += _layernorm(t + ("ln_cross",), f"{h}.encoder_attn_layer_norm")
      r += _linear(t + ("mlp", "fc_in"), f"{h}.fc1", transpose=True)
      r += _linear(t + ("mlp", "fc_out"), f"{h}.fc2", transpose=True)
      r += _layernorm(t + ("ln_mlp",), f"{h}.final_layer_norm")
  if not cfg.tie_embeddings:
    r.append(_transposed(("unembed", "kernel_dense", "kernel"), "lm_head.weight"))
  return r


def _normalise_keys(tensors: dict[str, np.ndarray], cfg: TransformerConfig) -> dict[str, np.ndarray]:
  """A base ``MarianModel``/``BartModel`` checkpoint (no ``model.`` prefix), the shared embedding stored only under
  a tied name, and a missing ``final_logits_bias`` (zeros, as transformers' buffer starts)."""
  out = {}
  for k, v in tensors.items():
    if not k.startswith(("model.", "lm_head.", "final_logits_bias")):
      k = "model." + k
    out[k] = v
  if "model.shared.weight" not in out:
    tied = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
    tied += ("lm_head.weight",) if cfg.tie_embeddings else ()
    for k in tied:
      if k in out:
        out["model.shared.weight"] = out[k]
        break
  if "final_logits_bias" not in out and "model.shared.weight" in out:
    log.warning("tfjax.hf.load: no final_logits_bias in the checkpoint: zeros (as transformers starts it)")
    out["final_logits_bias"] = np.zeros((1, cfg.vocab_size), np.float32)
  return out


def _tied_copies(cfg: TransformerConfig) -> set[str]:
  out = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
  return out | {"lm_head.weight"} if cfg.tie_embeddings else out


def check_marian_positions(tensors: dict[str, np.ndarray], cfg: TransformerConfig, path) -> None:
  """A Marian checkpoint may store its (untrained) sinusoidal tables; tfjax computes them, so they must match."""
  expected = sinusoidal_table(cfg.max_len, cfg.emb_dim, layout="halves")
  for stack in ("encoder", "decoder"):
    key = f"model.{stack}.embed_positions.weight"
    if key not in tensors:
      continue
    table = tensors[key]
    if table.shape != expected.shape:
      raise HFCheckpointError(f"{path}: tensor '{key}' has shape {tuple(table.shape)}, expected {expected.shape} "
                              f"(max_position_embeddings x d_model in {CONFIG_FILE})")
    err = float(np.max(np.abs(table - expected)))
    if err > 1e-5:
      raise HFCheckpointError(f"{path}: tensor '{key}' is not Marian's sinusoidal table (differs by {err:.3g}): "
                              "tfjax computes these positions and cannot import trained ones")


def expected_shapes(model, rule_list) -> dict[str, tuple[int, ...]]:
  """The Hugging Face tensor shapes ``model`` needs, from the shapes of its (abstractly) initialised parameters."""
  import flax.linen as nn
  ids = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids, ids > 0, ids))["params"])
  out = {}
  for rule in rule_list:
    leaf = _get_path(shapes, rule.path)
    for key, x in zip(rule.keys, rule.from_tf(np.zeros(leaf.shape, np.float32))):
      out[key] = tuple(x.shape)
  return out


def load(path: pathlib.Path, config: dict, overrides: dict):
  """``(EncoderDecoder, params)`` of a Marian or BART directory (see :func:`tfjax.hf.load`)."""
  from tfjax.models.transformer import EncoderDecoder
  model_type = config["model_type"]
  try:
    cfg, enc_layers = config_from_hf(config, model_type, overrides)
  except (TypeError, ValueError) as e:
    if isinstance(e, HFCheckpointError):
      raise
    raise HFCheckpointError(f"{path / CONFIG_FILE}: cannot build a tfjax EncoderDecoder: {e}") from e
  model = EncoderDecoder(cfg, num_encoder_layers=enc_layers)
  rule_list = rules(cfg, enc_layers)
  tensors = _normalise_keys(read_tensors(path), cfg)
  expected = expected_shapes(model, rule_list)
  first_missing = next((k for k in expected if k not in tensors), None)
  hint = " (an untied lm_head: tie_word_embeddings=false)" if first_missing == "lm_head.weight" else ""
  check_tensors(path, tensors, expected, hint)
  if model_type == "marian":
    check_marian_positions(tensors, cfg, path)
  known = set(expected) | _tied_copies(cfg) | {"model.encoder.embed_positions.weight",
                                                "model.decoder.embed_positions.weight"}
  unused = sorted(k for k in tensors if k not in known)
  if unused:  # a layer norm after a stack (mBART-style), or anything else this architecture does not have
    raise HFCheckpointError(f"{path}: {len(unused)} tensors that {SEQ2SEQ[model_type]} does not have, e.g. "
                            f"'{unused[0]}' (another architecture saved as model_type={model_type!r}?)")
  return model, params_from_rules(tensors, rule_list)


def save(model, params, path: pathlib.Path, token_ids: dict | None) -> None:
  """Writes an EncoderDecoder as a Marian or BART directory (see :func:`tfjax.hf.save`)."""
  from tfjax.hf.common import tensors_from_rules
  from tfjax.layers.blocks import unscan_params
  cfg = model.cfg
  model_type = model_type_of(cfg)
  enc_layers = model.num_encoder_layers or cfg.num_layers
  ids = {**default_token_ids(model_type, cfg.vocab_size), **(token_ids or {})}
  params = unscan_params(params)
  if not cfg.logits_bias:  # a model trained without one: transformers' buffer is zeros
    params = {**params, "logits_bias": np.zeros((cfg.vocab_size,), np.float32)}
  tensors = tensors_from_rules(params, rules(cfg, enc_layers))
  path.mkdir(parents=True, exist_ok=True)
  write_tensors(tensors, path / WEIGHTS_FILE)
  config = config_to_hf(cfg, enc_layers, model_type, ids)
  (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer and translation


@dataclasses.dataclass(frozen=True)
class GenerationIds:
  """The special ids a Hugging Face encoder-decoder generates with (from ``config.json`` and
  ``generation_config.json``)."""
  decoder_start: int
  eos: int
  pad: int
  banned: tuple[int, ...] = ()  # single-token bad_words_ids: never generated (opus-mt: <pad>)
  forced_bos: int | None = None  # BART summarisers force <s> first; tfjax's translate does not


def generation_ids(path: str | os.PathLike) -> GenerationIds:
  """The :class:`GenerationIds` of a Marian/BART directory (``generation_config.json`` over ``config.json``)."""
  from tfjax.hf.common import read_config
  p = pathlib.Path(path)
  c = read_config(p)
  g = json.loads((p / "generation_config.json").read_text()) if (p / "generation_config.json").is_file() else {}
  merged = {**c, **{k: v for k, v in g.items() if v is not None}}
  defaults = default_token_ids(c.get("model_type", "bart"), int(c.get("vocab_size", 0)))

  def one(key):
    value = merged.get(key, defaults.get(key))
    if isinstance(value, list):  # eos_token_id may be a list; the first is the end of a sentence
      value = value[0]
    if value is None:
      raise HFCheckpointError(f"{p}: {CONFIG_FILE} gives no {key}, needed to translate")
    return int(value)

  banned = tuple(int(w[0]) for w in merged.get("bad_words_ids") or [] if isinstance(w, list) and len(w) == 1)
  return GenerationIds(decoder_start=one("decoder_start_token_id"), eos=one("eos_token_id"),
                       pad=one("pad_token_id"), banned=banned, forced_bos=merged.get("forced_bos_token_id"))


class MarianTokenizer:
  """A Marian tokenizer (transformers' ``MarianTokenizer``) over sentencepiece: ``source.spm`` splits the source into
  pieces, ``vocab.json`` maps pieces to the model's ids (``<unk>`` when absent), ``</s>`` is appended; decoding maps
  ids back to pieces and joins them with the source model (``target.spm`` with ``separate_vocabs``). A leading
  language code such as ``>>fr<<`` is kept as one token. Same interface as :class:`tfjax.data.tokenizers.Tokenizer`.
  """

  def __init__(self, path: str | os.PathLike):
    import sentencepiece
    p = pathlib.Path(path)
    tok_config = {}
    if (p / "tokenizer_config.json").is_file():
      tok_config = json.loads((p / "tokenizer_config.json").read_text())
    if tok_config.get("separate_vocabs"):
      raise HFCheckpointError(f"{p}: separate_vocabs=True (target_vocab.json) is not supported: tfjax's "
                              "EncoderDecoder has one vocabulary")
    for name in ("source.spm", "target.spm", "vocab.json"):
      if not (p / name).is_file():
        raise HFCheckpointError(f"{p}: a Marian tokenizer needs source.spm, target.spm and vocab.json; {name} is "
                                "missing")
    self.vocab: dict[str, int] = json.loads((p / "vocab.json").read_text())
    self.inverse = {i: t for t, i in self.vocab.items()}
    self.source = sentencepiece.SentencePieceProcessor(model_file=str(p / "source.spm"))
    self.target = sentencepiece.SentencePieceProcessor(model_file=str(p / "target.spm"))

    def token(key, default):
      t = tok_config.get(key, default)
      return t.get("content") if isinstance(t, dict) else t

    self.eos_token, self.unk_token, self.pad_token = (token("eos_token", "</s>"), token("unk_token", "<unk>"),
                                                      token("pad_token", "<pad>"))
    for t in (self.eos_token, self.unk_token, self.pad_token):
      if t not in self.vocab:
        raise HFCheckpointError(f"{p / 'vocab.json'} has no {t!r}")

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def token_to_id(self, token: str) -> int | None:
    return self.vocab.get(token)

  def id_to_token(self, i: int) -> str | None:
    return self.inverse.get(int(i))

  @property
  def eos_id(self) -> int:
    return self.vocab[self.eos_token]

  @property
  def pad_id(self) -> int:
    return self.vocab[self.pad_token]

  def special_ids(self) -> list[int]:
    return sorted({self.eos_id, self.pad_id, self.vocab[self.unk_token]})

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    code = []
    if text.startswith(">>") and (end := text.find("<<")) != -1:  # a target-language code, e.g. >>fr<<
      code, text = [text[:end + 2]], text[end + 2:]
    pieces = code + self.source.encode(text, out_type=str)
    unk = self.vocab[self.unk_token]
    ids = [self.vocab.get(piece, unk) for piece in pieces]
    return ids + [self.eos_id] if add_special_tokens else ids

  def encode_batch(self, texts, add_special_tokens: bool = True) -> list[list[int]]:
    return [self.encode(t, add_special_tokens) for t in texts]

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    specials = {self.eos_token, self.unk_token, self.pad_token}
    tokens = [self.inverse.get(int(i), self.unk_token) for i in ids]
    if skip_special_tokens:
      tokens = [t for t in tokens if t not in specials]
    out, pieces = "", []
    for t in tokens:  # special tokens are not pieces: kept as they are
      if t in specials:
        out += self.source.decode_pieces(pieces) + t + " "
        pieces = []
      else:
        pieces.append(t)
    out += self.source.decode_pieces(pieces)
    return out.replace("\u2581", " ").strip()


def translate_texts(model, params, tokenizer, sources: list[str], ids: GenerationIds, *, batch_size: int = 32,
                    beam_size: int = 1, length_penalty: float = 1.0, length_norm: str = "fairseq",
                    temperature: float = 0.0, seed: int = 0, too_long: str = "cut") -> list[str]:
  """Translations of ``sources`` with an imported Marian/BART model and its own tokenizer (whose encoding carries the
  model's special tokens, e.g. Marian's ``</s>``, BART's ``<s> ... </s>``); decoding as :func:`translate_ids`.

  An empty (or all-space) source translates to ``""`` without running the model. A source longer than the context
  window (``max_position_embeddings``): ``too_long="cut"`` keeps its first ``max_len - 1`` tokens and its final
  ``</s>`` and logs a warning naming the first such line; ``"error"`` raises ValueError naming it.
  """
  if too_long not in ("cut", "error"):
    raise ValueError(f"too_long must be 'cut' or 'error', got {too_long!r}")
  max_len = model.cfg.max_len
  out = [""] * len(sources)
  todo = [i for i, text in enumerate(sources) if text.strip()]
  encoded = tokenizer.encode_batch([sources[i] for i in todo])
  long_lines = [(i, len(e)) for i, e in zip(todo, encoded) if len(e) > max_len]
  if long_lines:
    msg = (f"{len(long_lines)} of {len(sources)} sources are longer than the context window ({max_len} tokens), "
           f"the first is line {long_lines[0][0] + 1} ({long_lines[0][1]} tokens)")
    if too_long == "error":
      raise ValueError(msg)
    log.warning("%s: translating their first %d tokens", msg, max_len - 1)
  encoded = [e if len(e) <= max_len else e[:max_len - 1] + [ids.eos] for e in encoded]
  hyps = translate_ids(model, params, encoded, ids, batch_size=batch_size, beam_size=beam_size,
                       length_penalty=length_penalty, length_norm=length_norm, temperature=temperature, seed=seed)
  for i, row in zip(todo, hyps):
    out[i] = tokenizer.decode(row)
  return out


def translate_ids(model, params, sources: list[list[int]], ids: GenerationIds, *, batch_size: int = 32,
                  beam_size: int = 1, length_penalty: float = 1.0, length_norm: str = "fairseq",
                  temperature: float = 0.0, seed: int = 0) -> list[list[int]]:
  """Target ids (without the decoder start and the end of sentence) of source ids (each at most ``max_len``, with
  the model's special tokens): greedy, sampled (``temperature`` > 0) or beam search (``beam_size`` > 1, ranked by
  :func:`tfjax.generate.length_normalised` scores: by default transformers' ``log-probability / n **
  length_penalty``). ``batch_size`` sources at a time, each padded to ``max_len`` (one compiled shape). The ids in
  ``ids.banned`` get a -inf logit (as transformers' ``bad_words_ids``)."""
  from tfjax.generate import beam_translate, translate
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  max_len = model.cfg.max_len
  for n, s in enumerate(sources):
    if not 0 < len(s) <= max_len:
      raise ValueError(f"source {n} has {len(s)} tokens: needs 1 to max_len={max_len}")
  if ids.banned:
    if "logits_bias" not in params:
      raise HFCheckpointError("banning tokens (bad_words_ids) needs a model with logits_bias=True")
    params = {**params, "logits_bias": jnp.asarray(params["logits_bias"]).at[jnp.asarray(ids.banned)].set(-jnp.inf)}
  out = []
  for start in range(0, len(sources), batch_size):
    chunk = sources[start:start + batch_size]
    n = len(chunk)
    chunk = chunk + [[ids.eos]] * (batch_size - n)  # the last batch padded: one compiled shape
    src = np.full((batch_size, max_len), ids.pad, np.int32)
    valid = np.zeros((batch_size, max_len), bool)
    for r, c in enumerate(chunk):
      src[r, :len(c)], valid[r, :len(c)] = c, True
    if beam_size > 1:
      rows, _ = beam_translate(model, params, src, valid, max_len, beam_size=beam_size, bos_id=ids.decoder_start,
                               eos_id=ids.eos, pad_id=ids.pad, length_penalty=length_penalty, length_norm=length_norm)
    else:
      rows = translate(model, params, src, valid, max_len, bos_id=ids.decoder_start, eos_id=ids.eos,
                       pad_id=ids.pad, rng=jax.random.key(seed + start), temperature=temperature)
    for row in rows[:n].tolist():
      out.append(row[:row.index(ids.eos)] if ids.eos in row else row)
  return out


def is_seq2seq_dir(path: str | os.PathLike) -> bool:
  """True for a Hugging Face directory whose ``config.json`` names a Marian or BART model."""
  p = pathlib.Path(path)
  try:
    return json.loads((p / CONFIG_FILE).read_text()).get("model_type") in SEQ2SEQ
  except (OSError, ValueError):
    return False


def config_extra(path: str | os.PathLike) -> dict[str, Any]:
  """The special-token ids of a directory's ``config.json`` (what :func:`tfjax.hf.save` writes back)."""
  c = json.loads((pathlib.Path(path) / CONFIG_FILE).read_text())
  keys = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_eos_token_id")
  return {k: c[k] for k in keys if k in c}

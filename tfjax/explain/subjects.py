"""What ``explain`` looks at: a trained model (GPT, BERT, translator) or word vectors, with its tokenizer.

:func:`load_subject` reads a tfjax workdir through the project's own loaders (:mod:`tfjax.train.restore` for a GPT
run, :func:`tfjax.tasks.mlm.load_for_inference`, :func:`tfjax.tasks.translate.load_for_inference`,
:func:`tfjax.tasks.word2vec_eval.load_word2vec`) or a Hugging Face GPT-2 / BERT directory (:func:`tfjax.hf.load`), and
returns a :class:`Subject`: the Flax module, its parameters, the tokenizer and how to turn a text into ids
and token labels. The ``explain`` commands only ever see a Subject.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

KINDS = ("gpt", "bert", "translator", "word2vec")
KIND_NAMES = {"gpt": "a GPT (decoder)", "bert": "a BERT (encoder)", "translator": "an encoder-decoder translator",
              "word2vec": "word2vec vectors"}


DEFAULT_TEXTS = {
    "gpt": "First Citizen:\nBefore we proceed any further, hear me speak.",
    "bert": "the capital of france is paris , and the capital of italy is rome .",
    "translator": "A little girl climbs into a wooden playhouse.",
}


class SubjectError(ValueError):
  """A workdir of the wrong kind, a text that does not fit, an unknown layer/head/neuron or word: a user error."""


def _show(token: str) -> str:
  """A token as a short visible label: spaces, newlines and tabs made visible."""
  return (token.replace("Ġ", "␣").replace("Ċ", "⏎").replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
          or "∅")


@dataclasses.dataclass(frozen=True)
class Subject:
  """A loaded model (or word vectors) and its tokenizer.

  Attributes:
    kind: one of :data:`KINDS`.
    path: the workdir, Hugging Face directory or vectors file it came from.
    model: the Flax module (``GPT``, ``BERT`` or ``EncoderDecoder``); None for word2vec.
    params: its parameters (the ``params`` collection). A model trained with ``scan_layers=True`` is held as its
      per-layer twin (:func:`tfjax.explain.capture.per_layer`), so that every command can name and read a layer.
    tokenizer: a :class:`tfjax.data.tokenizers.CharTokenizer` or :class:`tfjax.data.tokenizers.Tokenizer` (None when a
      Hugging Face directory has none, or for word2vec).
    config: the workdir's training config (None for Hugging Face directories and vectors files).
    vectors: the word vectors (word2vec only).
  """
  kind: str
  path: str
  model: Any = None
  params: Any = None
  tokenizer: Any = None
  config: Any = None
  vectors: Any = None

  def __post_init__(self):
    if self.model is not None and getattr(self.model.cfg, "scan_layers", False):
      # the commands name layers and read each layer's weights: a scanned stack becomes one module per layer
      from tfjax.explain.capture import per_layer
      model, variables = per_layer(self.model, {"params": self.params})
      object.__setattr__(self, "model", model)
      object.__setattr__(self, "params", variables["params"])

  @property
  def cfg(self):
    """The model's :class:`tfjax.models.config.TransformerConfig`."""
    return self.model.cfg

  @property
  def num_layers(self) -> int:
    return self.cfg.num_layers

  @property
  def num_encoder_layers(self) -> int:
    return getattr(self.model, "num_encoder_layers", None) or self.cfg.num_layers

  @property
  def num_heads(self) -> int:
    return self.cfg.num_heads

  def require(self, kinds: Sequence[str], command: str) -> None:
    """Raises :class:`SubjectError` unless this subject's kind is one of ``kinds``."""
    if self.kind not in kinds:
      raise SubjectError(f"`explain {command}` works on {' or '.join(KIND_NAMES[k] for k in kinds)}; "
                         f"{self.path} holds {KIND_NAMES[self.kind]}")

  def _need_tokenizer(self):
    if self.tokenizer is None:
      raise SubjectError(f"{self.path} has no tokenizer (tokenizer.json, vocab.json + merges.txt, or vocab.txt): "
                         "explain needs one to read a text")
    return self.tokenizer

  def model_text(self, text: str, *, source: bool = False) -> str:
    """Running ``text`` in the form the model was trained on: a translator trained on Multi30k's lowercased,
    Moses-tokenised captions (``data.text=tok``, the published recipe) reads it lowercased and tokenised
    (:func:`tfjax.tasks.translate.moses_tokenise`, as ``./launch.sh translate`` does); other models read it as it is."""
    if self.kind != "translator" or self.config is None or self.config.data.get("text", "raw") != "tok" or not text:
      return text
    from tfjax.tasks.translate import moses_tokenise
    return moses_tokenise([text], self.config.data.source if source else self.config.data.target)[0]

  def encode(self, text: str, *, source: bool = False, model_form: bool = False) -> np.ndarray:
    """Token ids ``[T]`` (int32) of ``text`` as the model reads it: characters for a character GPT, BPE for GPT-2,
    ``[CLS] ... [SEP]`` for BERT, the target side for the translator (``source=True``: the source side, ending with
    its end-of-sequence token). ``text`` is running text, put into the model's form by :meth:`model_text`
    (``model_form=True``: it already is, e.g. the translator's own output). Raises :class:`SubjectError` for an empty
    text or one longer than the context window."""
    tok = self._need_tokenizer()
    if not text:
      raise SubjectError("the text is empty")
    if not model_form:
      text = self.model_text(text, source=source)
    try:
      ids = np.asarray(tok.encode(text), np.int32)
    except ValueError as e:  # e.g. characters outside a character tokenizer's alphabet
      raise SubjectError(f"cannot tokenise {text!r}: {e}") from None
    if self.kind == "translator":
      from tfjax.tasks.translate import BOS_ID, EOS_ID
      ids = np.concatenate([ids, [EOS_ID]]) if source else np.concatenate([[BOS_ID], ids])
      ids = ids.astype(np.int32)
    if ids.size == 0:
      raise SubjectError(f"{text!r} has no tokens")
    if ids.size > self.cfg.max_len:
      raise SubjectError(f"the text is {ids.size} tokens long, longer than the model's context window "
                         f"max_len={self.cfg.max_len}; give a shorter --text")
    return ids

  def target_ids(self, src: np.ndarray, target: str | None) -> np.ndarray:
    """A translator's target-side ids for the source ids ``src`` (:meth:`encode` with ``source=True``): ``target``
    (running text), or, when None, the model's own greedy translation of the source."""
    if target is not None:
      return self.text_ids(target)
    from tfjax.tasks.translate import translate_texts
    translation = translate_texts(self.model, self.params, self.tokenizer, [self.tokenizer.decode(src[:-1])],
                                  batch_size=1)[0]
    return self.text_ids(translation or ".", model_form=True)  # in the model's own text form already

  def default_text(self) -> str:
    """The text a command looks at when none is given (a line of the model's own kind of data)."""
    return DEFAULT_TEXTS[self.kind]

  def text_ids(self, text: str | None, *, source: bool = False, model_form: bool = False) -> np.ndarray:
    """:meth:`encode` of ``text``; ``None``: the default text, cut to the context window."""
    if text is not None:
      return self.encode(text, source=source, model_form=model_form)
    tok = self._need_tokenizer()
    ids = self.encode(DEFAULT_TEXTS[self.kind][:self.cfg.max_len], source=source) if hasattr(tok, "chars") else None
    if ids is None:
      words = DEFAULT_TEXTS[self.kind].split(" ")
      while True:  # the longest prefix of whole words that fits
        try:
          return self.encode(" ".join(words), source=source)
        except SubjectError:
          if len(words) == 1:
            raise
          words = words[:-1]
    return ids

  def token_label(self, token_id: int) -> str:
    """A short visible label of one token id."""
    tok = self._need_tokenizer()
    if hasattr(tok, "chars"):
      return _show(tok.chars[int(token_id)])
    piece = tok.id_to_token(int(token_id))
    return _show(piece if piece is not None else f"<{int(token_id)}>")

  def labels(self, ids) -> list[str]:
    """Labels of every id of ``ids [T]``."""
    return [self.token_label(i) for i in np.asarray(ids).reshape(-1)]

  def vocab(self) -> list[str]:
    """The label of every token id ``0 .. V-1`` (word2vec: its words)."""
    if self.kind == "word2vec":
      return list(self.vectors.words)
    return [self.token_label(i) for i in range(self.cfg.vocab_size)]

  def check_layer(self, layer: int, num_layers: int | None = None, what: str = "layer") -> int:
    n = self.num_layers if num_layers is None else num_layers
    if not 0 <= layer < n:
      raise SubjectError(f"{what} {layer} does not exist: the model has {n} layers (0 .. {n - 1})")
    return layer

  def check_head(self, head: int) -> int:
    if not 0 <= head < self.num_heads:
      raise SubjectError(f"head {head} does not exist: each layer has {self.num_heads} heads (0 .. {self.num_heads - 1})")
    return head


def _hf_subject(path: str) -> Subject:
  from tfjax import hf
  from tfjax.models.bert import BERT
  from tfjax.models.gpt import GPT
  model, params = hf.load(path)
  kind = "gpt" if isinstance(model, GPT) else "bert" if isinstance(model, BERT) else None
  if kind is None:
    raise SubjectError(f"{path} holds a {type(model).__name__}; explain reads GPT-2 and BERT directories")
  try:
    tokenizer = hf.load_tokenizer(path)
  except hf.HFCheckpointError:
    tokenizer = None
  return Subject(kind, path, model, params, tokenizer)


def _gpt_workdir(path: str, config, step: int | None, best: bool) -> Subject:
  from tfjax.tasks.lm import load_for_inference
  model, params, tokenizer, _ = load_for_inference(path, step, best)
  return Subject("gpt", path, model, params, tokenizer, config)


def load_subject(path: str, *, step: int | None = None, best: bool = False) -> Subject:
  """The model (or word vectors) at ``path``: a tfjax workdir (GPT, BERT, translator or word2vec run), a Hugging Face
  GPT-2 / BERT directory, or a word2vec vectors file. ``step``: a checkpoint step (default: the latest); ``best``:
  the lowest-evaluation-loss parameters (runs with ``train.keep_best``). Raises :class:`SubjectError` (or the loaders'
  ``FileNotFoundError`` / ``CheckpointError``) with a message naming what is missing."""
  from tfjax import hf
  path = str(path)
  if not os.path.exists(path):
    raise SubjectError(f"{path} does not exist")
  if os.path.isfile(path):  # a vectors file
    from tfjax.tasks import word2vec_eval
    return Subject("word2vec", path, vectors=word2vec_eval.load_word2vec(path))
  if hf.is_hf_dir(path):
    return _hf_subject(path)
  from tfjax.train import restore
  config = restore.load_config(path)
  task = config.get("task")
  if task == "lm":
    return _gpt_workdir(path, config, step, best)
  if task == "mlm":
    from tfjax.tasks import mlm
    if best:
      raise SubjectError("BERT runs keep no best/ checkpoint; drop --best")
    model, params, tokenizer = mlm.load_for_inference(path, step)
    return Subject("bert", path, model, params, tokenizer, config)
  if task == "translate":
    from tfjax.tasks import translate
    model, params, tokenizer, config = translate.load_for_inference(path, step, best=best)
    return Subject("translator", path, model, params, tokenizer, config)
  if task == "word2vec":
    from tfjax.tasks import word2vec_eval
    vectors = os.path.join(path, "vectors.txt")
    if not os.path.isfile(vectors):
      raise SubjectError(f"word2vec workdir {path} has no vectors.txt (the run has not finished)")
    return Subject("word2vec", path, vectors=word2vec_eval.load_word2vec(vectors), config=config)
  raise SubjectError(f"{path} was trained with task={task!r}; explain reads lm, mlm, translate and word2vec runs")

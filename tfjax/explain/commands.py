"""The ``explain`` commands: one registry entry per NAME, and :func:`run_command` that loads the subject and runs one.

A command is a function in some module, named in :data:`COMMANDS` as ``"module:function"`` (imported only when run):

* commands that read a model (``kinds`` non-empty) are called ``fn(subject, out_dir, **options)`` with a
  :class:`tfjax.explain.subjects.Subject` of one of ``kinds``;
* self-contained commands (``kinds == ()``) are called ``fn(out_dir, **options)``;
* a command that reads a model and has a ``standalone`` function too runs that one, ``standalone(out_dir,
  **options)``, when no workdir is given (``superposition``: a trained model's directions, or the toy models).

``options`` are exactly the command-line options the user gave (``--text``, ``--layer``, ...): a command's own keyword
defaults apply to the rest, and an option the function does not take is an error naming the ones it does. Each
command writes its PNG / JSON / HTML files into ``out_dir`` and returns a dict; its ``"summary"`` (a string), when
present, is what the command line prints. Adding a command is one line here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from typing import Any

from tfjax.explain.subjects import SubjectError, load_subject

MODELS = ("gpt", "bert", "translator")


@dataclasses.dataclass(frozen=True)
class Command:
  """``target``: ``"module:function"``; ``kinds``: the subjects it reads (``()``: none); ``help``: one line;
  ``standalone``: ``"module:function"`` run instead when no workdir is given (None: a workdir is needed)."""
  target: str
  kinds: tuple[str, ...]
  help: str
  standalone: str | None = None


COMMANDS: dict[str, Command] = {
    "attention": Command("tfjax.explain.attention:run", MODELS,
                         "every layer x head's attention pattern on a text (and the translator's cross-attention), "
                         "a head summary table, and the offline attention explorer page"),
    "heads": Command("tfjax.explain.heads:run", MODELS,
                     "validation-loss increase when each head is ablated (layer x head heatmap)"),
    "qk": Command("tfjax.explain.qk:run", MODELS,
                  "one head's query/key story: which query tokens attend to which keys, and W_Q W_K^T on tokens"),
    "ov": Command("tfjax.explain.ov:run", ("gpt", "translator"),
                  "the value side: what each head adds when it attends to a token (its OV circuit through the "
                  "unembedding); which heads copy, by the weights, by their value vectors and in context"),
    "mlp": Command("tfjax.explain.mlp:run", MODELS,
                   "MLP neurons as questions: top-activating validation contexts and the tokens each promotes"),
    "logit_lens": Command("tfjax.explain.logit_lens_command:run", MODELS,
                          "each layer's top next-token guesses on a text, and its KL from the final distribution"),
    "temperature": Command("tfjax.explain.temperature:run", MODELS,
                           "next-token distribution at several temperatures (a translator: the first target token; "
                           "a BERT: its first [MASK]); entropy and distinct-n of samples (continuations, "
                           "translations, blanks filled) vs T"),
    "attribution": Command("tfjax.explain.attribution:run", ("gpt", "translator"),
                           "direct logit attribution: each head's and MLP's share of the next token's logit on a "
                           "text, at one position, and on average over validation text"),
    "induction": Command("tfjax.explain.induction:run", ("gpt",),
                         "does it copy? random tokens repeated: loss on the first and second copy, each head's "
                         "induction, previous- and duplicate-token scores, the second copy's loss with it zeroed, and which "
                         "earlier head each induction head reads through its queries or keys (path patching)"),
    "composition": Command("tfjax.explain.composition:run", ("gpt",),
                           "queries asking, keys answering with what earlier heads wrote: how far each head moves "
                           "when one earlier head or MLP is left out of its queries, keys or values (path "
                           "patching), beside the weights' composition scores"),
    "scaled_dot_product": Command("tfjax.explain.scaled_dot_product:run", MODELS,
                                  "why the scores q·k are divided by sqrt(Dh): each head's spread of raw q·k beside "
                                  "sqrt(Dh), its pattern's entropy and softmax Jacobian as trained and unscaled; "
                                  "without a workdir: random q, k and recall trained at several Dh and scales",
                                  standalone="tfjax.explain.scaled_dot_product:run_standalone"),
    "positions": Command("tfjax.explain.positions:run", MODELS,
                         "where each token's position is: the position vectors, a linear probe for the position "
                         "after every layer, each head's attention by distance"),
    "embeddings": Command("tfjax.explain.embeddings:run", ("word2vec", "gpt", "bert", "translator"),
                          "embedding geometry: nearest neighbours, analogies, 2-D projection, cosine matrix"),
    "superposition": Command("tfjax.explain.superposition_model:run", ("word2vec",) + MODELS,
                             "with a workdir: its embeddings' and MLP neurons' directions against random ones "
                             "(angles, dimensions per direction); without: near-orthogonality in high dimensions "
                             "and the toy model of superposition",
                             standalone="tfjax.explain.superposition:run_superposition"),
    "cbow_to_attention": Command("tfjax.explain.cbow_to_attention:run_cbow_to_attention", (),
                                 "trains the ladder CBOW average -> per-position weights -> one learned query -> "
                                 "self-attention; table and pictures (no workdir)"),
}


def resolve(command: Command, standalone: bool = False):
  """The function a command names (``standalone``: the one it runs without a workdir)."""
  module, _, name = (command.standalone if standalone else command.target).partition(":")
  return getattr(importlib.import_module(module), name)


def accepted_options(fn) -> list[str]:
  """The options ``fn`` takes after its positional subject/out_dir: its keyword-only parameters and those with a
  default (``config_overrides``, the ``--config.KEY=VALUE`` of a command that trains)."""
  params = inspect.signature(fn).parameters.values()
  return [p.name for p in params if p.kind == p.KEYWORD_ONLY
          or (p.kind == p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)]


def run_command(name: str, path: str | None, out_dir: str, *, step: int | None = None, best: bool = False,
                **options: Any) -> dict:
  """Runs ``explain NAME`` on the workdir / Hugging Face directory ``path`` (None for self-contained commands),
  writing into ``out_dir``; returns the command's result dict. ``step`` / ``best`` choose the checkpoint.
  Raises :class:`SubjectError` for an unknown command, a missing or wrong kind of workdir, or an option the command
  does not take."""
  if name not in COMMANDS:
    raise SubjectError(f"unknown explain command {name!r}; choose one of {sorted(COMMANDS)}")
  command = COMMANDS[name]
  use_standalone = path is None and command.standalone is not None
  fn = resolve(command, standalone=use_standalone)
  accepted = accepted_options(fn)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise SubjectError(f"`explain {name}` takes no {', '.join('--' + u for u in unknown)}; its options: "
                       f"{', '.join('--' + a for a in accepted) or 'none'}")
  os.makedirs(out_dir, exist_ok=True)
  if use_standalone or not command.kinds:
    if path is not None:
      raise SubjectError(f"`explain {name}` is self-contained and takes no workdir (got {path})")
    return fn(out_dir, **options)
  if path is None:
    raise SubjectError(f"`explain {name}` needs a workdir or Hugging Face directory "
                       f"(a {' / '.join(command.kinds)} model)")
  subject = load_subject(path, step=step, best=best)
  subject.require(command.kinds, name)
  return fn(subject, out_dir, **options)

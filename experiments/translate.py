"""Translate with a trained encoder-decoder (a workdir of a translation config, e.g. translate_multi30k_tiny, or the
averaged workdir that ./launch.sh average writes).

    ./launch.sh translate runs/translate_multi30k --text="A dog runs through the snow." [--text=...]
    ./launch.sh translate runs/translate_multi30k_tiny/averaged --bleu=test --beam_size=5
    ./launch.sh translate runs/translate_multi30k_tiny --file=captions.en --out=captions.de
    ./launch.sh translate path/to/opus-mt-en-de --text="A dog runs through the snow." [--beam_size=4]

WORKDIR may also be a Hugging Face Marian (``MarianMTModel``, e.g. Helsinki-NLP/opus-mt-*) or BART
(``BartForConditionalGeneration``) directory: it is imported with :func:`tfjax.hf.load` and translates with its own
tokenizer and special tokens (:func:`tfjax.hf.translate_texts`); ``--text`` and ``--file`` take its raw text
(``--bleu``, ``--step``, ``--best`` and the text-form flags need a tfjax workdir).

``--bleu=val|test`` translates the whole Multi30k split and prints both scores: BLEU on the lowercased
Moses-tokenised text (as papers on Multi30k score it) and sacreBLEU (detokenised, cased) with its signature; the
scores and the hypotheses (one line per sentence, in each form scored) are written to ``WORKDIR/bleu/``.
``--file`` translates a file line by line (batched; an empty line gives an empty line; a line longer than the context
window is cut, with a warning). Input is taken as raw text (``--input_form=raw``) and Moses-tokenised for a model
trained on the tokenised text (``data.text=tok``), whose output is then that form (``--detokenize``: running text).
``--beam_size=5`` searches with 5 hypotheses; ``--temperature`` > 0 samples instead of greedy decoding; ``--step``
picks a checkpoint (default: the latest), ``--best`` the one of the lowest validation loss.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("text", [], "A sentence in the source language (repeat the flag for several).")
flags.DEFINE_enum("bleu", None, ["val", "test"], "Translate a whole Multi30k split and print both BLEU scores.")
flags.DEFINE_string("file", None, "Translate this file, one sentence a line.")
flags.DEFINE_string("out", None, "With --file: write the translations here (default: stdout).")
flags.DEFINE_enum("input_form", "raw", ["raw", "tok"], "Form of --text/--file input: raw text, or lowercased "
                  "Moses-tokenised; converted to the model's form.")
flags.DEFINE_bool("detokenize", False, "A model of tokenised text (data.text=tok): print/write running text.")
flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sample from softmax(logits / temperature).",
                   lower_bound=0.0)
flags.DEFINE_integer("beam_size", 1, "> 1: beam search with this many hypotheses (ignores --temperature).",
                     lower_bound=1)
flags.DEFINE_float("length_penalty", None, "Beam search: the length penalty's exponent (0: raw log-probabilities; "
                   "default: the run's eval.length_penalty, 1.0 for a Hugging Face directory).")
flags.DEFINE_enum("length_norm", None, ["gnmt", "fairseq"], "Beam search: gnmt divides a hypothesis's log-probability "
                  "by ((5 + length) / 6) ** length_penalty, fairseq by length ** length_penalty (default: the run's "
                  "eval.length_norm; fairseq, as transformers, for a Hugging Face directory).")
flags.DEFINE_integer("batch_size", 128, "Sentences translated at a time (--file, --bleu).", lower_bound=1)
flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
flags.DEFINE_bool("best", False, "Load the parameters of the lowest evaluation loss (runs with train.keep_best).")
flags.DEFINE_string("data_dir", None, "Where Multi30k is (for --bleu; default: the run's, then $TFJAX_DATA_DIR).")


def translate_text_and_file(run) -> int:
  """--text (printed beside its source) and --file (to --out, else stdout) through ``run(lines) -> translations``."""
  from tfjax.tasks import translate as tr
  if FLAGS.text:
    for src, out in zip(FLAGS.text, run(FLAGS.text)):
      print(f"{src}\n  -> {out}")
  if FLAGS.file:
    try:
      with open(FLAGS.file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    except OSError as e:
      print(f"error: cannot read --file: {e}", file=sys.stderr)
      return 1
    hyps = run(lines)
    if FLAGS.out:
      tr.write_lines(FLAGS.out, hyps)
      print(f"{len(hyps)} lines of {FLAGS.file} translated into {FLAGS.out}", file=sys.stderr)
    else:
      sys.stdout.write("".join(h + "\n" for h in hyps))
  return 0


def run_length_norm(config) -> tuple[float, str]:
  """The run's beam-search length penalty and normalisation (its ``eval`` settings, else GNMT's 0.6)."""
  run_decode = config.get("eval", {})
  return run_decode.get("length_penalty", 0.6), run_decode.get("length_norm", "gnmt")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: translate.py WORKDIR (--text=SENTENCE ... | --bleu=val|test | --file=IN [--out=OUT])")
  if not (FLAGS.text or FLAGS.bleu or FLAGS.file):
    raise app.UsageError("give --text=SENTENCE (repeatable), --bleu=val|test or --file=IN")
  if FLAGS.out and not FLAGS.file:
    raise app.UsageError("--out goes with --file")
  from experiments import runtime
  runtime.quiet_logging()
  from tfjax.tasks import translate as tr
  from tfjax.train.checkpoint import CheckpointError
  workdir = argv[1]
  from tfjax import hf
  if hf.is_hf_dir(workdir):
    return translate_hf(workdir)
  try:
    model, params, tokenizer, config = tr.load_for_inference(workdir, FLAGS.step, best=FLAGS.best)
  except (FileNotFoundError, ValueError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  form = config.data.get("text", "raw")
  src_lang, tgt_lang = config.data.source, config.data.target
  run_penalty, run_norm = run_length_norm(config)
  penalty = run_penalty if FLAGS.length_penalty is None else FLAGS.length_penalty
  norm = run_norm if FLAGS.length_norm is None else FLAGS.length_norm
  decode = dict(temperature=FLAGS.temperature, beam_size=FLAGS.beam_size, length_penalty=penalty, length_norm=norm)

  def run(lines):
    """Translations of ``lines`` given in --input_form, in the model's form (or running text with --detokenize)."""
    if FLAGS.input_form != form:
      lines = tr.moses_tokenise(lines, src_lang) if form == "tok" else tr.moses_detokenise(lines, src_lang)
    hyps = tr.translate_texts(model, params, tokenizer, lines, batch_size=FLAGS.batch_size, **decode)
    return tr.moses_detokenise(hyps, tgt_lang) if FLAGS.detokenize and form == "tok" else hyps

  if translate_text_and_file(run):
    return 1
  if FLAGS.bleu:
    return bleu_report(model, params, tokenizer, config, workdir, form, decode)
  return 0


def bleu_report(model, params, tokenizer, config, workdir: str, form: str, decode: dict) -> int:
  """--bleu: translates the whole split, prints both scores and writes them and the hypotheses to WORKDIR/bleu/."""
  from tfjax.tasks import translate as tr
  src_lang, tgt_lang = config.data.source, config.data.target
  run_penalty, run_norm = run_length_norm(config)
  penalty, norm = decode["length_penalty"], decode["length_norm"]
  data_dir = FLAGS.data_dir or config.get("data_dir") or None
  try:
    sources = tr.load_multi30k(FLAGS.bleu, src_lang, data_dir, form)
    tr.load_multi30k(FLAGS.bleu, tgt_lang, data_dir, "tok")
    tr.load_multi30k(FLAGS.bleu, tgt_lang, data_dir, "raw")
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  hyps = tr.translate_texts(model, params, tokenizer, sources, batch_size=FLAGS.batch_size, **decode)
  scores, forms = tr.score_bleu(hyps, FLAGS.bleu, tgt_lang, data_dir, form)
  decoding = f"beam{FLAGS.beam_size}" if FLAGS.beam_size > 1 else (
      "greedy" if FLAGS.temperature == 0 else f"sample_t{FLAGS.temperature:g}")
  if FLAGS.beam_size > 1 and (penalty, norm) != (run_penalty, run_norm):
    decoding += f"_lp{penalty:g}" + ("" if norm == run_norm else f"_{norm}")  # side by side, none overwritten
  checkpoint = "best" if FLAGS.best else (f"step{FLAGS.step}" if FLAGS.step is not None else "latest")
  paths = tr.write_bleu_report(os.path.join(workdir, "bleu"), f"{FLAGS.bleu}.{checkpoint}.{decoding}", scores,
                               forms, tgt_lang)
  b = FLAGS.bleu
  print(f"{b} ({len(hyps)} sentences, {decoding}):")
  print(f"  tokenised BLEU (lowercased Moses-tokenised text, tokenize=none): {scores[f'{b}_bleu_tok']:.2f}  "
        f"[{scores[f'{b}_bleu_tok_detail']}]")
  print(f"  sacreBLEU (detokenised, cased): {scores[f'{b}_bleu']:.2f}  {scores[f'{b}_bleu_signature']}")
  if f"{b}_bleu_lc" in scores:
    print(f"  sacreBLEU (detokenised, case-insensitive): {scores[f'{b}_bleu_lc']:.2f}  "
          f"{scores[f'{b}_bleu_lc_signature']}")
  print(f"  scores: {paths['scores']}\n  hypotheses: {paths['tok']} (tokenised), {paths['detok']} (detokenised)")
  return 0


def translate_hf(path: str) -> int:
  """--text / --file with a Hugging Face Marian or BART directory."""
  from tfjax import hf
  tfjax_only = [name for name, given in (("--bleu", FLAGS.bleu), ("--step", FLAGS.step is not None),
                                         ("--best", FLAGS.best), ("--detokenize", FLAGS.detokenize),
                                         ("--input_form", FLAGS.input_form != "raw")) if given]
  if tfjax_only:
    verb = "needs" if len(tfjax_only) == 1 else "need"
    print(f"error: {', '.join(tfjax_only)} {verb} a tfjax translation workdir; {path} is a Hugging Face directory "
          "(give --text or --file)", file=sys.stderr)
    return 1
  try:
    model, params = hf.load(path)
    if not hf.seq2seq.is_seq2seq_dir(path):
      raise hf.HFCheckpointError(f"{path} holds a {type(model).__name__}, not an encoder-decoder (Marian or BART): "
                                 "translate needs one (./launch.sh sample generates with GPT-2)")
    tokenizer = hf.load_tokenizer(path)
    ids = hf.generation_ids(path)
  except (hf.HFCheckpointError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1

  def run(lines):
    return hf.translate_texts(model, params, tokenizer, lines, ids, batch_size=FLAGS.batch_size,
                              beam_size=FLAGS.beam_size,
                              length_penalty=1.0 if FLAGS.length_penalty is None else FLAGS.length_penalty,
                              length_norm=FLAGS.length_norm or "fairseq", temperature=FLAGS.temperature)

  return translate_text_and_file(run)


if __name__ == "__main__":
  app.run(main)

"""Query word vectors: nearest neighbours and analogies.

  python experiments/word2vec_query.py --workdir=DIR --neighbors=king    # or DIR (or a vectors file) positionally
  python experiments/word2vec_query.py --vectors=DIR/vectors.bin --analogy=king,man,woman   # king - man + woman

(or ``./launch.sh query --workdir=DIR --neighbors=king``). Prints the top-k words with their cosine similarity.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402

from tfjax.tasks import word2vec_eval as ev  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A word2vec workdir (reads DIR/vectors.txt).")
flags.DEFINE_string("vectors", None, "A vectors file in word2vec text or binary format (instead of --workdir).")
flags.DEFINE_multi_string("neighbors", [], "Words whose nearest neighbours to print (repeatable).")
flags.DEFINE_multi_string("analogy", [], "a,b,c: the words nearest to a - b + c (e.g. king,man,woman; repeatable).")
flags.DEFINE_integer("top_k", 10, "How many words to print.", lower_bound=1)
flags.DEFINE_alias("topk", "top_k")


def _print(title, rows):
  print(title)
  for word, sim in rows:
    print(f"  {word:<20s} {sim:+.4f}")


def main(argv):
  workdir, vectors = FLAGS.workdir, FLAGS.vectors
  if len(argv) == 2 and not workdir and not vectors:  # a positional workdir or vectors file
    workdir, vectors = (argv[1], None) if os.path.isdir(argv[1]) else (None, argv[1])
  elif len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(workdir) == bool(vectors):
    raise app.UsageError("give exactly one of --workdir=DIR, --vectors=FILE or a positional DIR/FILE")
  if not FLAGS.neighbors and not FLAGS.analogy:
    raise app.UsageError("give --neighbors=WORD and/or --analogy=A,B,C")
  if vectors and os.path.isdir(vectors):
    raise app.UsageError(f"--vectors={vectors} is a directory: give a workdir as --workdir=DIR (or positionally)")
  path = vectors or os.path.join(workdir, "vectors.txt")
  if not os.path.exists(path):
    print(f"error: {path} does not exist (train first: ./launch.sh train word2vec_skipgram --workdir=DIR)",
          file=sys.stderr)
    return 1
  try:
    wv = ev.load_word2vec(path)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  status = 0
  for word in FLAGS.neighbors:
    try:
      _print(f"nearest to {word!r}:", wv.neighbors(word.lower(), FLAGS.top_k))
    except KeyError as e:
      print(f"error: {e.args[0]}", file=sys.stderr)
      status = 1
  for query in FLAGS.analogy:
    words = [w.strip().lower() for w in query.split(",")]
    if len(words) != 3:
      print(f"error: --analogy takes three comma-separated words a,b,c (a - b + c), got {query!r}", file=sys.stderr)
      status = 1
      continue
    try:
      a, b, c = words
      _print(f"{a} - {b} + {c}:", wv.analogy(a, b, c, FLAGS.top_k))
    except KeyError as e:
      print(f"error: {e.args[0]}", file=sys.stderr)
      status = 1
  return status


if __name__ == "__main__":
  app.run(main)

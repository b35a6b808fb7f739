"""Tokenise a corpus once into token shards that training and evaluation read by memory map.

    ./launch.sh prepare ../shared/data/wikitext2/*.txt ../shared/data/tinyshakespeare/input.txt \\
        --tokenizer=bpe:8192 --out=data/shards/mix_bpe8k
    ./launch.sh prepare 'owt/*.jsonl.gz' --text_field=text --tokenizer=hf_gpt2_dir --out=data/shards/owt_gpt2 \\
        --val_fraction=0.0005
    ./launch.sh prepare --verify=data/shards/mix_bpe8k          # every shard's length and sha256
    ./launch.sh train gpt_shakespeare_tiny --config.data.dataset=shards:data/shards/mix_bpe8k

See :mod:`tfjax.data.prepare` (sources, tokenizer specs, the validation split, idempotence) and
:mod:`tfjax.data.shards` (the format).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("tokenizer", None, "char | bpe:VOCAB_SIZE (byte-level BPE trained on the training split) | a "
                    "directory with a Hugging Face tokenizer (tokenizer.json or vocab.json + merges.txt).")
flags.DEFINE_string("out", None, "The shards directory to write.")
flags.DEFINE_float("val_fraction", 0.005, "The last fraction of every source (by bytes, cut at a line or record "
                   "boundary) held out for validation.")
flags.DEFINE_integer("shard_tokens", 100_000_000, "Tokens per shard file (the last of each split may be shorter).")
flags.DEFINE_string("text_field", "text", "The field holding a document's text in .jsonl sources.")
flags.DEFINE_enum("decode_errors", "strict", ["strict", "replace"], "Bytes that are not UTF-8 in a text source: "
                  "strict (an error naming the file and offset) | replace (read as U+FFFD).")
flags.DEFINE_bool("force", False, "Prepare again even if --out already holds these inputs' shards.")
flags.DEFINE_string("verify", None, "Check the shards directory VERIFY (every shard's length and sha256) and exit.")


def main(argv):
  from tfjax.data import prepare as prepare_lib
  from tfjax.data import shards
  if FLAGS.verify:
    try:
      counts = shards.verify_dir(FLAGS.verify)
    except shards.ShardError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"{FLAGS.verify}: every shard matches meta.json (" +
          ", ".join(f"{s} {n:,} tokens" for s, n in counts.items()) + ")")
    return 0
  if len(argv) < 2 or not FLAGS.tokenizer or not FLAGS.out:
    raise app.UsageError("usage: prepare.py SOURCES... --tokenizer=char|bpe:V|HF_DIR --out=DIR "
                         "[--val_fraction=F] [--shard_tokens=N] [--text_field=text] [--force]")
  try:
    meta = prepare_lib.prepare(argv[1:], FLAGS.tokenizer, FLAGS.out, val_fraction=FLAGS.val_fraction,
                               shard_tokens=FLAGS.shard_tokens, text_field=FLAGS.text_field,
                               decode_errors=FLAGS.decode_errors, force=FLAGS.force)
  except (prepare_lib.PrepareError, shards.ShardError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for split, info in meta["splits"].items():
    print(f"{split}: {info['tokens']:,} tokens, {info['documents']:,} documents, {len(info['shards'])} shards")
  return 0


if __name__ == "__main__":
  app.run(main)

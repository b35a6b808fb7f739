"""Token shards: prepare round-trips to the text, validation never overlaps training, the memmap reader gathers the
same windows as an in-memory array, training from shards equals training from the same tokens in memory, bad shards
and short corpora are clear errors, and prepare's memory does not grow with the corpus."""

import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_lm_config
from tfjax.data import prepare as prep
from tfjax.data import shards
from tfjax.data.tokenizers import load_tokenizer
from tfjax.tasks.lm import LMTask

SHAKESPEARE = pathlib.Path(os.environ["TFJAX_DATA_DIR"]) / "tinyshakespeare" / "input.txt"
GPT2_FIXTURE = ROOT / "tests" / "fixtures" / "hf_gpt2"


def _corpus(d: pathlib.Path) -> dict[str, list[str]]:
  """A .txt, a .gz and a .jsonl source of numbered, unique lines; returns each source's documents."""
  d.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "eta", "theta", "naïve", "über"]

  def line(tag, i):
    lead = " " if i % 3 == 0 else ""  # WikiText-style lines that start with a space
    return f"{lead}{tag} {i}: " + " ".join(rng.choice(words, size=rng.integers(3, 12))) + "\n"

  a = "".join(line("txt", i) for i in range(400)) + "\n \n"
  b = "".join(line("gz", i) for i in range(300))
  (d / "a.txt").write_text(a, encoding="utf-8")
  with gzip.open(d / "b.txt.gz", "wt", encoding="utf-8") as f:
    f.write(b)
  records = ["".join(line(f"doc{j}", i) for i in range(rng.integers(1, 20))) for j in range(60)]
  with open(d / "c.jsonl", "w", encoding="utf-8") as f:
    for j, r in enumerate(records):
      f.write(json.dumps({"id": j, "text": r}) + "\n")
  return {"a.txt": [a], "b.txt.gz": [b], "c.jsonl": records}


def _docs(path, split):
  """The documents of a split, decoded (split at the end-of-text id, read with np.fromfile: not the reader)."""
  meta = shards.read_meta(path)
  ids = np.concatenate([np.fromfile(path / r["file"], dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
                        for r in meta["splits"][split]["shards"]] or [np.zeros(0, np.uint16)]).astype(np.int64)
  tok = load_tokenizer(path / "tokenizer.json", eos_id=meta["eot_id"])
  ends = np.flatnonzero(ids == meta["eot_id"])
  assert ids.size == 0 or ends[-1] == ids.size - 1  # every document ends with the separator
  starts = np.concatenate([[0], ends[:-1] + 1])
  return [tok.decode(ids[s:e]) for s, e in zip(starts, ends)], ids


@pytest.mark.parametrize("spec", ["char", "bpe:400", str(GPT2_FIXTURE)])
def test_prepare_round_trips_and_validation_is_the_disjoint_tail_of_each_source(tmp_path, spec):
  sources = _corpus(tmp_path / "src")
  out = tmp_path / "out"
  meta = prep.prepare([str(tmp_path / "src" / "*")], spec, out, val_fraction=0.2, shard_tokens=997,
                      piece_bytes=512, log=lambda m: None)
  assert meta["dtype"] == "uint16" and (out / "meta.json").is_file() and not (out / ".partial").exists()
  train, _ = _docs(out, "train")
  val, _ = _docs(out, "val")
  # sources in sorted order: a.txt (train part, val part), b.txt.gz (same), c.jsonl (records; the last ones in val)
  a, b = sources["a.txt"][0], sources["b.txt.gz"][0]
  assert train[0] + val[0] == a and train[1] + val[1] == b
  n_train_records = len(train) - 2
  assert train[2:] + val[2:] == sources["c.jsonl"]
  assert 0 < len(val) - 2 < len(sources["c.jsonl"]) - 1
  # the validation split is about the last 20% of each source, cut at a line boundary
  for whole, v in ((a, val[0]), (b, val[1])):
    assert v and whole.endswith(v) and abs(len(v.encode()) / len(whole.encode()) - 0.2) < 0.05
  # never overlapping: no line of the validation text is in the training text
  train_lines = {l for d in train for l in d.splitlines() if l.strip()}
  val_lines = {l for d in val for l in d.splitlines() if l.strip()}
  assert val_lines and not train_lines & val_lines
  assert meta["splits"]["train"]["documents"] == 2 + n_train_records
  assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == sum(
      len(t.encode()) for docs in sources.values() for t in docs)
  # shards of at most 997 tokens; counts and the reader agree
  for split in ("train", "val"):
    s = shards.TokenShards(out, split, verify=True)
    assert all(r["tokens"] <= 997 for r in meta["splits"][split]["shards"])
    assert len(s) == meta["splits"][split]["tokens"] == sum(r["tokens"] for r in meta["splits"][split]["shards"])


def test_piecewise_encoding_equals_encoding_the_whole_text(tmp_path):
  """Pieces cut where prepare cuts tokenise to the same ids as the whole document (GPT-2's byte-level BPE): lines
  that start with spaces (WikiText), end with spaces (the Lee corpus), blank lines, CRLF, and a 200 KB line."""
  data = ROOT.parent / "shared" / "data"
  one_line = " ".join(["lorem", "ipsum,", "dolor's", "sit", "amet.", "123", "über", "  x", "\u00a0y"] * 4000)
  text = (SHAKESPEARE.read_text()[:30000] + (data / "wikitext2/valid.txt").read_text()[:30000] +
          (data / "lee/lee_background.cor").read_text()[:30000] + "a  \r\nb\n\n\nc \t\n \n d\n  e\n" * 300 + one_line)
  (tmp_path / "t.txt").write_text(text, newline="")
  pieces = list(prep.read_pieces(prep.describe_source(str(tmp_path / "t.txt")), 0.0, piece_bytes=300))
  assert len(pieces) > 500 and max(len(p.text) for p in pieces) <= 600 and "".join(p.text for p in pieces) == text
  prep.prepare([str(tmp_path / "t.txt")], str(GPT2_FIXTURE), tmp_path / "out", val_fraction=0.0, piece_bytes=300,
               log=lambda m: None)
  _, ids = _docs(tmp_path / "out", "train")
  tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
  np.testing.assert_array_equal(ids, tok.encode(text) + [tok.eos_id])


def test_prepare_is_idempotent_and_protects_other_outputs(tmp_path):
  _corpus(tmp_path / "src")
  out = tmp_path / "out"
  args = ([str(tmp_path / "src" / "*")], "bpe:300")
  kw = dict(val_fraction=0.1, shard_tokens=500, log=lambda m: None)
  meta = prep.prepare(*args, out, **kw)
  mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  logs = []
  again = prep.prepare(*args, out, **{**kw, "log": logs.append})
  assert again == meta and "nothing to do" in logs[0]
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes  # untouched
  redo = prep.prepare(*args, out, **{**kw, "force": True})
  assert redo == meta  # the same bytes: every shard's sha256 (and the tokenizer file) as before
  with pytest.raises(prep.PrepareError, match="--force"):
    prep.prepare(*args, out, **{**kw, "val_fraction": 0.2})
  with pytest.raises(prep.PrepareError, match="matches no file"):
    prep.prepare([str(tmp_path / "nothing*.txt")], "char", tmp_path / "o2", log=lambda m: None)
  (tmp_path / "src" / "bad.jsonl").write_text('{"body": "x"}\n')
  with pytest.raises(prep.PrepareError, match="bad.jsonl:1: no field 'text'"):
    prep.prepare([str(tmp_path / "src" / "bad.jsonl")], "char", tmp_path / "o3", log=lambda m: None)
  (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
  with pytest.raises(prep.PrepareError, match=r"latin1.txt: not UTF-8 at byte 3.*--decode_errors=replace"):
    prep.prepare([str(tmp_path / "latin1.txt")], "char", tmp_path / "o4", log=lambda m: None)
  with pytest.raises(prep.PrepareError, match="is a file, not a directory"):
    prep.prepare(*args, tmp_path / "latin1.txt", **kw)
  assert (tmp_path / "latin1.txt").read_bytes() == "caf\xe9\n".encode("latin-1")



def test_prepare_with_the_tokenizer_of_earlier_shards_or_a_workdir(tmp_path):
  """--tokenizer=DIR takes the tokenizer.json of earlier shards or a tfjax workdir, character-level ones too."""
  from tfjax.data import shards
  _corpus(tmp_path / "src")
  src = [str(tmp_path / "src" / "*")]
  kw = dict(val_fraction=0.1, shard_tokens=500, log=lambda m: None)
  for spec in ("char", "bpe:300"):
    first = prep.prepare(src, spec, tmp_path / spec, **kw)
    again = prep.prepare(src, str(tmp_path / spec), tmp_path / f"{spec}_again", **kw)
    assert again["vocab_size"] == first["vocab_size"]
    for split in ("train", "val"):
      a, b = shards.TokenShards(tmp_path / spec, split), shards.TokenShards(tmp_path / f"{spec}_again", split)
      np.testing.assert_array_equal(a.read(0, len(a)), b.read(0, len(b)))
  (tmp_path / "empty").mkdir()
  with pytest.raises(prep.PrepareError, match="--tokenizer=.*empty: .*has no tokenizer"):
    prep.prepare(src, str(tmp_path / "empty"), tmp_path / "o", **kw)

def _char_shards(tmp_path, text, shard_tokens=1000, val_fraction=0.1):
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "corpus.txt").write_text(text)
  out = tmp_path / "shards"
  prep.prepare([str(tmp_path / "corpus.txt")], "char", out, val_fraction=val_fraction, shard_tokens=shard_tokens,
               log=lambda m: None)
  return out


def test_reader_windows_equal_slices_of_the_concatenated_shards(tmp_path):
  out = _char_shards(tmp_path, SHAKESPEARE.read_text()[:20000], shard_tokens=333)
  s = shards.TokenShards(out, "train")
  meta = s.meta
  flat = np.concatenate([np.fromfile(out / r["file"], "<u2") for r in meta["splits"]["train"]["shards"]])
  assert s.num_shards == -(-len(flat) // 333) > 10 and len(s) == len(flat)
  offsets = np.concatenate([np.random.default_rng(0).integers(0, len(s) - 65, 200), [0, 333 - 5, len(s) - 65]])
  np.testing.assert_array_equal(s.windows(offsets, 65), flat[offsets[:, None] + np.arange(65)])
  assert s.windows(offsets, 65).dtype == np.int32
  with pytest.raises(IndexError):
    s.read(len(s) - 3, 4)


def test_truncated_corrupt_or_missing_shards_are_errors_naming_the_file(tmp_path):
  out = _char_shards(tmp_path, SHAKESPEARE.read_text()[:20000], shard_tokens=5000)
  victim = out / "train_00001.bin"
  data = victim.read_bytes()
  victim.write_bytes(data[:-2])  # one token short
  with pytest.raises(shards.ShardError, match=r"train_00001\.bin has 9998 bytes .* truncated"):
    shards.TokenShards(out, "train")
  victim.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same length, one bit flipped
  shards.TokenShards(out, "train")  # the length check on open passes; the sha256 does not
  with pytest.raises(shards.ShardError, match=r"train_00001\.bin has sha256"):
    shards.TokenShards(out, "train", verify=True)
  res = subprocess.run([sys.executable, str(ROOT / "experiments" / "prepare.py"), f"--verify={out}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert res.returncode == 1 and "train_00001.bin" in res.stderr
  victim.unlink()
  with pytest.raises(shards.ShardError, match=r"train_00001\.bin is missing"):
    shards.TokenShards(out, "train")
  (out / "meta.json").unlink()
  with pytest.raises(shards.ShardError, match="meta.json does not exist"):
    shards.shards_dir(f"shards:{out}")


def test_a_corpus_shorter_than_one_window_is_a_clear_error(tmp_path):
  out = _char_shards(tmp_path, "To be.\n" * 4, val_fraction=0.5)  # 14 + 1 tokens in each split
  config = tiny_lm_config(**{"data.dataset": f"shards:{out}"})  # seq_len 16: a window is 17 tokens
  with pytest.raises(ValueError, match=r"training split of .*shards has 15 tokens, fewer than one window"):
    LMTask(config, None)


def test_shard_batches_are_a_function_of_seed_and_step_and_split_into_process_blocks(tmp_path):
  out = _char_shards(tmp_path, SHAKESPEARE.read_text()[:50000], shard_tokens=4096)
  task = LMTask(tiny_lm_config(**{"data.dataset": str(out)}), str(tmp_path / "wd"))
  assert isinstance(task.train_data, shards.TokenShards) and task.tokenizer.eos_id == task.train_data.eot_id
  a, b = task.train_batch(3), task.train_batch(3)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(a["inputs"], task.train_batch(4)["inputs"])
  np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
  blocks = [task.train_batch(3, shard=i, num_shards=4) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate([x["inputs"] for x in blocks]), a["inputs"])
  # the workdir keeps the shards' tokenizer; a relaunch on other shards is refused
  assert (tmp_path / "wd" / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
  other = _char_shards(tmp_path / "other", "abcdefgh\n" * 500)
  with pytest.raises(ValueError, match="differs from the tokenizer of the shards"):
    LMTask(tiny_lm_config(**{"data.dataset": str(other)}), str(tmp_path / "wd"))


def test_training_from_memmapped_shards_equals_training_from_the_same_tokens_in_memory(tmp_path):
  from tfjax.train.loop import train_and_evaluate
  from tfjax.train.restore import load_params
  out = _char_shards(tmp_path, SHAKESPEARE.read_text()[:100000], shard_tokens=7000)
  config = tiny_lm_config(**{"data.dataset": f"shards:{out}", "train.num_steps": 4, "train.eval_every": 2,
                             "train.checkpoint_every": 4, "train.log_every": 1})
  mapped = LMTask(config, str(tmp_path / "mapped"))
  in_memory = LMTask(config, str(tmp_path / "memory"))
  meta = shards.read_meta(out)
  for split, attr in (("train", "train_data"), ("val", "val_data")):  # the same tokens, read whole with np.fromfile
    tokens = np.concatenate([np.fromfile(out / r["file"], "<u2") for r in meta["splits"][split]["shards"]])
    setattr(in_memory, attr, tokens.astype(np.int32))
  assert isinstance(in_memory.train_data, np.ndarray) and isinstance(mapped.train_data, shards.TokenShards)
  train_and_evaluate(config, str(tmp_path / "mapped"), mapped)
  train_and_evaluate(config, str(tmp_path / "memory"), in_memory)
  metrics = [[json.loads(l) for l in open(tmp_path / w / "metrics.jsonl")] for w in ("mapped", "memory")]
  keep = ("step", "loss", "accuracy", "grad_norm", "lr", "eval_loss", "eval_accuracy")  # not the timings
  strip = lambda recs: [{k: v for k, v in r.items() if k in keep} for r in recs]  # noqa: E731
  assert strip(metrics[0]) == strip(metrics[1]) and any("eval_loss" in r for r in metrics[0])
  pa, sa = load_params(str(tmp_path / "mapped"))
  pb, sb = load_params(str(tmp_path / "memory"))
  assert sa == sb == 4
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


_MEMORY_PROBE = r"""
import os, sys, threading, time, numpy as np
from tfjax.data import prepare as prep, shards
d, mb = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
words = np.array("the of and to in is was for on that with as by at from his her an".split())
chunk = "\n".join(" ".join(rng.choice(words, 12)) for _ in range(20000)) + "\n"  # ~1 MB
with open(os.path.join(d, "big.txt"), "w") as f:
  for i in range(mb):
    f.write(f"{i}\n" + chunk)
anon = lambda: int(open("/proc/self/status").read().split("RssAnon:")[1].split()[0])  # kB; not the page cache
peak, done = [anon()], threading.Event()
def sample():
  while not done.is_set():
    peak[0] = max(peak[0], anon())
    time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
base = anon()
prep.prepare([os.path.join(d, "big.txt")], "char", os.path.join(d, "out"), val_fraction=0.01,
             shard_tokens=8_000_000, log=lambda m: None)
s = shards.TokenShards(os.path.join(d, "out"), "train")
for step in range(50):
  s.windows(np.random.default_rng(step).integers(0, len(s) - 257, 64), 257)
done.set()
print(len(s), base, max(peak[0], anon()))
"""


def test_prepare_and_reading_use_memory_independent_of_the_corpus_size(tmp_path):
  """The same prepare + 50 batches of 64 x 257 tokens on a ~16 MB and a ~96 MB corpus: the peak anonymous resident
  memory (the process's own, not the page cache that memory-mapped shards share with the kernel) stays under a
  bound (the batches in flight) far below the corpus's size."""
  peaks = {}
  for mb in (16, 96):
    d = tmp_path / str(mb)
    d.mkdir()
    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(d), str(mb)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    tokens, base, peak = map(int, res.stdout.split())
    peaks[mb] = (tokens, (peak - base) / 1024)
    shutil.rmtree(d)
  assert peaks[96][0] > 5 * peaks[16][0] > 5 * 10e6
  # measured: 25-40 MB at any size from 8 to 160 MB (the batches in flight); holding the 96 MB corpus would take
  # more than its text, 96 MB, and its ids as int32 (334 MB)
  assert peaks[16][1] < 64 and peaks[96][1] < 64, peaks  # MB


def test_a_vocabulary_over_65536_ids_is_stored_as_uint32(tmp_path):
  assert (shards.dtype_for_vocab(65536), shards.dtype_for_vocab(65537)) == ("uint16", "uint32")
  ids = np.random.default_rng(0).integers(0, 100_000, 5000)
  w = shards.ShardWriter(tmp_path, "train", "uint32", 1024)
  w.write(ids[:3000])
  w.write(ids[3000:])
  records = w.close()
  meta = {"format": shards.FORMAT, "version": shards.VERSION, "vocab_size": 100_000, "eot_id": 0, "dtype": "uint32",
          "tokenizer": {"file": "tokenizer.json"}, "splits": {"train": {"tokens": 5000, "shards": records}}}
  (tmp_path / "meta.json").write_text(json.dumps(meta))
  s = shards.TokenShards(tmp_path, "train", verify=True)
  assert (tmp_path / "train_00000.bin").stat().st_size == 4 * 1024
  np.testing.assert_array_equal(s.read(0, 5000), ids)
  with pytest.raises(ValueError, match="out of range for uint16"):
    shards.ShardWriter(tmp_path / "x", "train", "uint16", 10).write(np.asarray([70_000]))


def test_the_prepare_command_reports_progress_and_the_splits(tmp_path):
  _corpus(tmp_path / "src")
  res = subprocess.run([sys.executable, str(ROOT / "experiments" / "prepare.py"), str(tmp_path / "src" / "*.txt*"),
                        "--tokenizer=char", f"--out={tmp_path / 'out'}", "--val_fraction=0.25"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "tokens/s" in res.stderr and "2 sources" in res.stderr
  meta = shards.read_meta(tmp_path / "out")
  assert f"train: {meta['splits']['train']['tokens']:,} tokens, 2 documents" in res.stdout
  assert meta["prepare"]["val_fraction"] == 0.25 and meta["tokenizer"]["type"] == "char"


def test_gzipped_jsonl_with_another_text_field(tmp_path):
  docs = [f"record {i}\n" + "word " * (i % 7) + "\nend\n" for i in range(200)]
  with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
    for i, d in enumerate(docs):
      f.write(json.dumps({"body": d, "n": i}) + "\n")
      if i % 50 == 0:
        f.write("\n")  # blank lines are skipped
  meta = prep.prepare([str(tmp_path / "d.jsonl.gz")], "bpe:280", tmp_path / "out", val_fraction=0.1,
                      text_field="body", log=lambda m: None)
  train, _ = _docs(tmp_path / "out", "train")
  val, _ = _docs(tmp_path / "out", "val")
  assert train + val == docs and 10 <= len(val) <= 30
  assert meta["prepare"]["sources"][0]["compressed"] and meta["prepare"]["sources"][0]["kind"] == "jsonl"


@pytest.mark.slow
def test_two_processes_on_shards_give_the_losses_of_one(tmp_path):
  """jax.distributed with 2 processes, each assembling only its block of rows from the memory-mapped shards."""
  from test_multihost import _curves, _run
  out = _char_shards(tmp_path, SHAKESPEARE.read_text()[:100000], shard_tokens=7000)
  _run(1, 1, tmp_path / "one", **{"data.dataset": f"shards:{out}"})
  log = _run(2, 1, tmp_path / "two", **{"data.dataset": f"shards:{out}"})
  assert "2 process(es), 2 device(s)" in log
  (loss_1, eval_1), (loss_2, eval_2) = _curves(tmp_path / "one"), _curves(tmp_path / "two")
  assert sorted(loss_1) == sorted(loss_2) == [1, 2, 3, 4, 5, 6] and sorted(eval_1) == sorted(eval_2)
  np.testing.assert_allclose([loss_2[s] for s in range(1, 7)], [loss_1[s] for s in range(1, 7)], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose([eval_2[s] for s in eval_1], [eval_1[s] for s in eval_1], rtol=1e-5, atol=1e-5)


def test_evaluation_batches_come_in_the_training_micro_batches(tmp_path):
  """With grad_accum_steps=4 an evaluation reads the same windows as with 1, in 4 micro-batches of batch_size / 4
  rows (an evaluation then needs no more memory than a training micro-step); processes split each one."""
  out = _char_shards(tmp_path, SHAKESPEARE.read_text()[:50000], shard_tokens=4096)
  whole = list(LMTask(tiny_lm_config(**{"data.dataset": str(out), "train.eval_steps": 3}), None).eval_batches())
  config = tiny_lm_config(**{"data.dataset": str(out), "train.eval_steps": 3, "train.grad_accum_steps": 4})
  task = LMTask(config, None)
  micro = list(task.eval_batches())
  assert len(whole) == 3 and len(micro) == 12 and micro[0]["inputs"].shape == (2, 16)
  np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in micro]),
                                np.concatenate([b["inputs"] for b in whole]))
  halves = [list(task.eval_batches(shard=k, num_shards=2)) for k in range(2)]
  for j in range(12):
    np.testing.assert_array_equal(np.concatenate([halves[0][j]["targets"], halves[1][j]["targets"]]),
                                  micro[j]["targets"])

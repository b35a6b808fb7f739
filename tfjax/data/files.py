"""Finding data files: a flag, then ``$TFJAX_DATA_DIR``, then a user cache dir; download with checksum when missing.

Every data set tfjax reads is described by a :class:`DataFile` (relative path, public URL, sha256).
:func:`find_data_file` returns the local path of the file, looking in order at

1. ``data_dir`` (the ``--config.data_dir`` of an experiment), when given;
2. ``$TFJAX_DATA_DIR``;
3. the user cache dir (``$XDG_CACHE_HOME/tfjax`` or ``~/.cache/tfjax``).

When the file is in none of them it is downloaded into the first writable directory of that list and checked against
its sha256 (written atomically: a partial download is never taken for the file). Offline (or with
``TFJAX_OFFLINE=1``), the error says which directories were searched and where to put the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request


class DataFileError(FileNotFoundError):
  """A data file is missing and could not be downloaded, or its checksum does not match."""


@dataclasses.dataclass(frozen=True)
class DataFile:
  """A public data file: where it lives under a data dir, where to download it, and its sha256."""
  relpath: str
  url: str | None = None
  sha256: str | None = None


TINY_SHAKESPEARE = DataFile(
    "tinyshakespeare/input.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
WIKITEXT2_VALID = DataFile(
    "wikitext2/valid.txt",
    "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
    "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8")
WIKITEXT2_TEST = DataFile(
    "wikitext2/test.txt",
    "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/test.txt",
    "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0")
_GENSIM_TEST_DATA = "https://raw.githubusercontent.com/piskvorky/gensim/develop/gensim/test/test_data/"
LEE_BACKGROUND = DataFile(
    "lee/lee_background.cor", _GENSIM_TEST_DATA + "lee_background.cor",
    "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb")
LEE = DataFile(
    "lee/lee.cor", _GENSIM_TEST_DATA + "lee.cor",
    "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e")
QUESTIONS_WORDS = DataFile(
    "word2vec_eval/questions-words.txt", _GENSIM_TEST_DATA + "questions-words.txt",
    "8c29b3332afc46f3fb8be04cb5297bf96f39aa7131272dff57869b4485b22a36")
WORDSIM353 = DataFile(
    "word2vec_eval/wordsim353.tsv", _GENSIM_TEST_DATA + "wordsim353.tsv",
    "f92a022fc2537793a15bc3a8c162ebcd74990e033a228bb6388cb71e4c0b1e1d")
SIMLEX999 = DataFile(
    "word2vec_eval/simlex999.txt", _GENSIM_TEST_DATA + "simlex999.txt",
    "d5e0501971478a511430ee880bd0121e94ac701ba86d90544d83e6d2ba3db05d")
_MULTI30K = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K = {
    name: DataFile(f"multi30k/{name}.gz", _MULTI30K + f"{name}.gz", sha)
    for name, sha in {
        "train.en": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
        "train.de": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
        "train.fr": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
        "val.en": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        "val.de": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
        "val.fr": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
        "test_2016_flickr.en": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
        "test_2016_flickr.de": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
        "test_2016_flickr.fr": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    }.items()
}


# The same files lowercased, punctuation-normalised and Moses-tokenised by the dataset's scripts/task1-tokenize.sh (its
# data/task1/tok/, gzipped here): the text the multimodal-translation literature trains on and scores BLEU against.
MULTI30K_TOK = {
    name: DataFile("multi30k/tok/{}.lc.norm.tok.{}.gz".format(*name.rsplit(".", 1)), None, sha)
    for name, sha in {
        "train.en": "79d990dd71713faec0e3165cbd3b60acdf6fe11cab2e37a28f374c6bdbb297ec",
        "train.de": "7e3392f03c0fe978165d22fb5eaf0d0b9b1d9c413283b5193f02d4cb27e50797",
        "train.fr": "10438b7694a52af6164448c31198e9453b59a0d3b8a6715428722f0f8fbba2c0",
        "val.en": "2c7e5e9cf54ba0dff0cc4b84836d5a583f80ecaaab90b37a123d1376306215cd",
        "val.de": "006ad58fd6a2ad6502094160fe5273d93abf34a207967fdc69eafd7558b5ef39",
        "val.fr": "78b89a01ca96bb9940c525ad5eb73c0028d3e5bfd90008886a22961afb8e8994",
        "test_2016_flickr.en": "b95df925929cb222d0cf733f153bcbfba0f00180c85fd61dd5c4fb27f29ee394",
        "test_2016_flickr.de": "2628844bbb7783afa0ba8a9927f174aafeee715871aa8deed3af2c4d0b71a658",
        "test_2016_flickr.fr": "97b9b377d15dfc98e55e270dda3d6c91f8df02a5cf9e682457f6c59bd6be00db",
    }.items()
}


def sha256_of(path: os.PathLike | str) -> str:
  """The hex sha256 of a file, read in 4 MiB blocks (memory does not grow with the file)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def cache_dir() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "tfjax"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """The directories searched for data, in order."""
  dirs = []
  if data_dir:
    dirs.append(pathlib.Path(data_dir).expanduser())
  if os.environ.get("TFJAX_DATA_DIR"):
    dirs.append(pathlib.Path(os.environ["TFJAX_DATA_DIR"]).expanduser())
  dirs.append(cache_dir())
  return dirs


def _download(url: str, dest: pathlib.Path, sha256: str | None, timeout: float = 30.0) -> None:
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
      while chunk := resp.read(1 << 20):
        out.write(chunk)
    if sha256 is not None and (got := sha256_of(tmp)) != sha256:
      raise DataFileError(f"downloaded {url} but its sha256 is {got}, expected {sha256}; not using it.")
    os.replace(tmp, dest)  # atomic: the file appears complete or not at all
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def find_data_file(spec: DataFile | str, data_dir: str | os.PathLike | None = None, *,
                   download: bool = True, verify: bool = False) -> pathlib.Path:
  """Returns the local path of ``spec``, downloading it (checked by sha256) if it is nowhere local.

  Args:
    spec: a :class:`DataFile`, or a plain path relative to a data dir (then it cannot be downloaded), or an absolute
      path to an existing file.
    data_dir: the experiment's data dir, searched first.
    download: try the public URL when the file is missing.
    verify: also check the sha256 of a file found locally.
  Raises:
    DataFileError: with the searched directories and where to put the file.
  """
  if isinstance(spec, str):
    if os.path.isabs(spec):
      if os.path.isfile(spec):
        return pathlib.Path(spec)
      raise DataFileError(f"data file {spec} does not exist.")
    spec = DataFile(spec)
  dirs = search_dirs(data_dir)
  for d in dirs:
    path = d / spec.relpath
    if path.is_file():
      if verify and spec.sha256 and (got := sha256_of(path)) != spec.sha256:
        raise DataFileError(f"{path} has sha256 {got}, expected {spec.sha256}: the file is corrupt or a "
                            "different version; delete it to download it again.")
      return path
  errors = []
  if os.environ.get("TFJAX_OFFLINE") == "1":
    download = False
  if download and spec.url:
    for d in dirs:
      try:
        _download(spec.url, d / spec.relpath, spec.sha256)
        return d / spec.relpath
      except DataFileError:
        raise
      except (OSError, urllib.error.URLError) as e:  # offline, or directory not writable
        errors.append(f"{d}: {e}")
  searched = "\n  ".join(str(d / spec.relpath) for d in dirs)
  where = f"Download it from {spec.url} " if spec.url else "Put the file "
  msg = (f"data file '{spec.relpath}' not found. Searched:\n  {searched}\n{where}"
         f"and place it at <data_dir>/{spec.relpath}, where <data_dir> is --config.data_dir or $TFJAX_DATA_DIR "
         f"(or {cache_dir()}).")
  if spec.sha256:
    msg += f" Expected sha256: {spec.sha256}."
  if errors:
    msg += " Download failed: " + "; ".join(errors[:2])
  raise DataFileError(msg)


def clean_wikitext(text: str) -> str:
  """Undoes WikiText's tokenisation artefacts (``a @-@ b`` -> ``a-b``, ``1 @,@ 000`` -> ``1,000``, ``@.@``) and
  maps its unknown-word marker ``<unk>`` to BERT's ``[UNK]`` (a special token: never split, never masked)."""
  text = re.sub(r" @([-,.])@ ", r"\1", text)
  return text.replace("<unk>", "[UNK]")

"""What every experiment entry point does before and around training: devices, logging, task choice.

Kept out of the library on purpose: this is where environment variables are read.
"""

from __future__ import annotations

import logging
import os
import sys


# Opt-in (TFJAX_CPU_NO_YNN=1): XLA:CPU's own dot kernels instead of its YNNPACK library fusions. The 6/6/384 GPT step
# takes 15.2 s instead of 19.3 s on 2 cores, but runs are then not bit-reproducible (a killed-and-resumed run differed
# from an uninterrupted one in the last bit), so it is off by default. Only set when jaxlib knows the flag.
NO_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def _jaxlib_knows_flag(flag: str) -> bool:
  import glob
  import importlib.util
  import mmap
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or spec.origin is None:
    return False
  name = flag.lstrip("-").split("=")[0].encode()
  for path in glob.glob(os.path.join(os.path.dirname(spec.origin), "*.so")):
    try:
      with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m.find(name) >= 0:
          return True
    except (OSError, ValueError):
      continue
  return False


# With several CPU devices in one process, every data-parallel step ends in an all-reduce whose device threads meet in
# a rendezvous; XLA:CPU aborts the whole process when one thread waits 40 s for another. On a loaded machine (other
# jobs starving one thread) that killed BERT and translator runs mid-training, losing the checkpoint being written. A
# slow step is not a deadlock: wait up to 10 minutes instead.
COLLECTIVE_TIMEOUT_FLAGS = ("--xla_cpu_collective_call_terminate_timeout_seconds=600",
                            "--xla_cpu_collective_timeout_seconds=600")


def configure_devices() -> None:
  """On CPU, one XLA device per core (the batch is then split across cores: ~1.6x faster on 2 cores than one
  device), and ``NO_YNN_FLAG`` when ``TFJAX_CPU_NO_YNN=1``. Must run before JAX is imported. The device count is left
  alone when XLA_FLAGS already sets one, or when ``TFJAX_CPU_DEVICES`` says otherwise (``TFJAX_CPU_DEVICES=1`` keeps
  one device); a flag XLA_FLAGS already names is left alone too. With several CPU devices, the collectives' abort
  timeouts are raised (``COLLECTIVE_TIMEOUT_FLAGS``). Harmless on GPU/TPU hosts: these flags only affect the host
  (CPU) platform."""
  flags = os.environ.get("XLA_FLAGS", "")
  extra = []
  if "xla_force_host_platform_device_count" not in flags:
    count = os.environ.get("TFJAX_CPU_DEVICES") or str(os.cpu_count() or 1)
    if count != "1":
      extra.append(f"--xla_force_host_platform_device_count={count}")
  no_ynn = os.environ.get("TFJAX_CPU_NO_YNN") == "1"
  if no_ynn and NO_YNN_FLAG.split("=")[0] not in flags and _jaxlib_knows_flag(NO_YNN_FLAG):
    extra.append(NO_YNN_FLAG)
  if any(e.startswith("--xla_force_host_platform_device_count") for e in extra):
    for flag in COLLECTIVE_TIMEOUT_FLAGS:
      if flag.split("=")[0] not in flags and _jaxlib_knows_flag(flag):
        extra.append(flag)
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


# Compilations shorter than this are not written to the persistent cache. 0: all of them. Besides the big programs
# (the baby GPT's train step, init and sampler: ~3-10 s each on 2 cores), a run compiles ~20 single-op programs
# (~0.05-0.1 s each, e.g. the per-device slices of the first checkpoint save): cached, they load in milliseconds.
COMPILATION_CACHE_MIN_SECONDS = 0.0


def enable_compilation_cache() -> str | None:
  """JAX's persistent compilation cache for training runs: a rerun of the same config loads its compiled train step,
  init, eval step and sampler from disk instead of compiling them again (seconds each on a CPU).

  The folder is ``$TFJAX_COMPILATION_CACHE_DIR`` when set (empty or ``off``: no cache), else ``jax_cache`` in the
  user cache dir (``$XDG_CACHE_HOME/tfjax`` or ``~/.cache/tfjax``). JAX keys each entry by the program, the compile
  options, the XLA flags, the devices and the jax/jaxlib versions, so a stale entry is never used; the folder may be
  deleted at any time. Returns the folder, or None when off. Must run before the first compilation."""
  choice = os.environ.get("TFJAX_COMPILATION_CACHE_DIR")
  if choice is not None and choice.strip().lower() in ("", "off", "0", "none"):
    return None
  if choice:
    directory = os.path.abspath(os.path.expanduser(choice))
  else:
    from tfjax.data.files import cache_dir
    directory = str(cache_dir() / "jax_cache")
  import jax
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILATION_CACHE_MIN_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def append_json_lines(path: str, records) -> None:
  """Appends one JSON object per record to ``path`` (a benchmark's results file), creating its folder."""
  import json
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def setup_logging() -> None:
  log = logging.getLogger("tfjax")
  if not log.handlers:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO


def quiet_logging(tfjax_level: int = logging.WARNING) -> None:
  """For the commands that load a checkpoint and print results (sample, eval, translate, ...): absl's errors only
  (orbax logs every restore step at INFO and its read-only options at WARNING), and the library's messages from
  ``tfjax_level`` up (e.g. a source cut to the context window) as one line each on stderr."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)
  log = logging.getLogger("tfjax")
  if not log.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if tfjax_level < logging.WARNING else "warning: %(message)s"))
    log.addHandler(handler)
  log.setLevel(tfjax_level)
  log.propagate = False


def maybe_initialize_distributed() -> None:
  """Multi-process runs: ``jax.distributed.initialize`` from ``TFJAX_COORDINATOR`` / ``TFJAX_NUM_PROCESSES`` /
  ``TFJAX_PROCESS_ID`` (set by ``./launch.sh multihost``), or from the cluster environment (SLURM, Open MPI, TPU pods)
  when ``TFJAX_DISTRIBUTED=1``."""
  import jax
  if os.environ.get("TFJAX_COORDINATOR"):
    jax.distributed.initialize(coordinator_address=os.environ["TFJAX_COORDINATOR"],
                               num_processes=int(os.environ["TFJAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["TFJAX_PROCESS_ID"]))
  elif os.environ.get("TFJAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def make_task(config, workdir: str):
  """The Task object for ``config.task`` (the library's registry, :func:`tfjax.tasks.make_task`)."""
  from tfjax.tasks import make_task as make
  return make(config, workdir)


def run(config, workdir: str):
  """Trains and evaluates ``config`` in ``workdir``; returns the results dict."""
  from tfjax import config as config_lib
  log = logging.getLogger("tfjax")
  from tfjax.data.shards import ShardError
  from tfjax.hf.common import HFCheckpointError
  from tfjax.tasks.lm import InitFromError
  from tfjax.train.checkpoint import CheckpointError
  from tfjax.train.loop import check_workdir_task
  # bad input a user can act on (flags, files, checkpoints): one line that says what and where, no traceback
  user_errors = (config_lib.ConfigError, FileNotFoundError, CheckpointError, ShardError, InitFromError,
                 HFCheckpointError)
  try:
    check_workdir_task(config, os.path.abspath(workdir))  # before the task reads the workdir's tokenizer.json
    if config.task == "word2vec":
      from tfjax.tasks import word2vec
      return word2vec.train_and_evaluate(config, workdir)
    from tfjax.train.loop import train_and_evaluate
    return train_and_evaluate(config, workdir, make_task(config, workdir))
  except user_errors as e:
    log.error("error: %s", e)
    return None

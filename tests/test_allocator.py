"""launch.sh's fast_allocator: which malloc it preloads for each TFJAX_ALLOCATOR, and that the preload takes (the
function is cut out of launch.sh and run in bash, with this interpreter's environment as the venv)."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"),
                                reason="the cmeel-mimalloc wheel: Linux on x86_64 / aarch64")
CLEAN = ("LD_PRELOAD", "MALLOC_CONF", "MIMALLOC_PURGE_DELAY", "TFJAX_ALLOCATOR", "TFJAX_JEMALLOC")


def allocator_env(**env):
  """The environment variables fast_allocator exports, given ``env``."""
  script = ('source <(sed -n "/^fast_allocator() {/,/^}/p" launch.sh); fast_allocator; '
            'echo "LD_PRELOAD=${LD_PRELOAD:-}"; echo "MALLOC_CONF=${MALLOC_CONF:-}"; '
            'echo "MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-}"')
  base = {k: v for k, v in os.environ.items() if k not in CLEAN}
  proc = subprocess.run(["bash", "-c", f"VENV={sys.prefix}; {script}"], cwd=ROOT, env={**base, **env},
                        capture_output=True, text=True, check=True)
  out = dict(line.split("=", 1) for line in proc.stdout.splitlines())
  return out, proc.stderr


def wheel_mimalloc():
  libs = sorted(pathlib.Path(sys.prefix).glob("lib/python3*/site-packages/cmeel.prefix/lib/libmimalloc.so"))
  assert libs, "the cmeel-mimalloc wheel (a dependency in pyproject.toml) is not installed in this venv"
  return str(libs[0])


def test_mimalloc_from_the_wheel_is_preloaded_and_mapped():
  lib = wheel_mimalloc()
  out, _ = allocator_env(TFJAX_ALLOCATOR="mimalloc")
  assert out["LD_PRELOAD"] == lib and out["MIMALLOC_PURGE_DELAY"] == "-1" and out["MALLOC_CONF"] == ""
  env = {**{k: v for k, v in os.environ.items() if k not in CLEAN}, **out}
  maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"], env=env,
                        capture_output=True, text=True, check=True).stdout
  assert "libmimalloc.so" in maps
  # the user's own settings are kept
  out, _ = allocator_env(TFJAX_ALLOCATOR="mimalloc", MIMALLOC_PURGE_DELAY="10", LD_PRELOAD="/usr/lib/other.so")
  assert out["LD_PRELOAD"] == f"{lib}:/usr/lib/other.so" and out["MIMALLOC_PURGE_DELAY"] == "10"


def test_auto_prefers_the_systems_jemalloc_else_the_wheels_mimalloc():
  lib = wheel_mimalloc()
  out, err = allocator_env(TFJAX_JEMALLOC="/nonexistent/libjemalloc.so.2")  # as if the system had none
  assert out["LD_PRELOAD"] == lib and "not a file" in err
  out, _ = allocator_env()
  if "jemalloc" in out["LD_PRELOAD"]:
    assert os.path.isfile(out["LD_PRELOAD"]) and out["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
  else:
    assert out["LD_PRELOAD"] == lib


def test_system_keeps_glibc_and_an_unknown_choice_says_so():
  assert allocator_env(TFJAX_ALLOCATOR="system")[0]["LD_PRELOAD"] == ""
  out, err = allocator_env(TFJAX_ALLOCATOR="tcmalloc")
  assert out["LD_PRELOAD"] == "" and "not auto, jemalloc, mimalloc or system" in err

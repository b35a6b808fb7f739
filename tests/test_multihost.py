"""Multi-process training through jax.distributed on this machine (``experiments/multihost.py``, what
``./launch.sh multihost`` runs): 2 processes x 2 fake CPU devices give the losses of 1 process on 1 device, and their
checkpoint resumes in 1 process on 1 device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_lm_config
from test_kill import train_args

OVERRIDES = {"model.num_layers": 1, "train.num_steps": 6, "optimizer.decay_steps": 6, "train.log_every": 1,
             "train.eval_every": 3, "train.checkpoint_every": 3, "train.parallel": "auto",
             "optimizer.warmup_steps": 0, "train.async_checkpoint": True}


def _run(num_processes, devices_per_process, workdir, **extra):
  config = tiny_lm_config(**{**OVERRIDES, **extra})
  env = dict(os.environ, TFJAX_CPU_DEVICES=str(devices_per_process))
  env.pop("XLA_FLAGS", None)
  if num_processes == 1:
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py")]
  else:
    cmd = [sys.executable, str(ROOT / "experiments" / "multihost.py"), str(num_processes)]
  out = subprocess.run([*cmd, *train_args(config, workdir)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout + out.stderr


def _curves(workdir):
  recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return ({r["step"]: r["loss"] for r in recs if "loss" in r}, {r["step"]: r["eval_loss"] for r in recs
                                                                 if "eval_loss" in r})


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_on_one_device(tmp_path):
  ref, mh = tmp_path / "ref", tmp_path / "mh"
  _run(1, 1, ref)
  log = _run(2, 2, mh, **{"train.num_steps": 3})  # stops at the checkpoint of step 3
  assert "2 process(es), 4 device(s)" in log
  run_info = json.load(open(mh / "run_info.json"))
  assert run_info["process_count"] == 2 and run_info["device_count"] == 4
  log = _run(1, 1, mh)  # saved on 2 processes x 2 devices, restored on 1 process x 1 device
  assert "resumed from the checkpoint at step 3" in log
  (loss_r, eval_r), (loss_m, eval_m) = _curves(ref), _curves(mh)
  assert sorted(loss_m) == sorted(loss_r) == [1, 2, 3, 4, 5, 6]
  assert sorted(eval_m) == sorted(eval_r)
  np.testing.assert_allclose([loss_m[s] for s in range(1, 7)], [loss_r[s] for s in range(1, 7)], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose([eval_m[s] for s in sorted(eval_r)], [eval_r[s] for s in sorted(eval_r)], rtol=1e-5,
                             atol=1e-5)
  assert loss_r[6] < loss_r[1]


@pytest.mark.slow
def test_sigterm_stops_all_processes_at_the_same_step(tmp_path):
  """Each process gets its SIGTERM at a different moment (as from a scheduler); all save one checkpoint together."""
  import signal
  import time
  config = tiny_lm_config(**{**OVERRIDES, "train.num_steps": 5000, "train.checkpoint_every": 10000,
                             "train.eval_every": 0, "train.log_every": 5})
  env = dict(os.environ, TFJAX_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  launcher = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "multihost.py"), "2",
                               *train_args(config, tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  t0 = time.time()
  while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").stat().st_size:
    assert launcher.poll() is None and time.time() - t0 < 400
    time.sleep(0.2)
  children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
  assert len(children) == 2
  for pid in children:
    os.kill(int(pid), signal.SIGTERM)
    time.sleep(0.5)
  out, _ = launcher.communicate(timeout=300)
  assert launcher.returncode == 0, out[-3000:]
  saved = [int(l.split("at step ")[1].split()[0]) for l in out.splitlines() if "SIGTERM: saved" in l]
  saved += [int(l.split("at step ")[1].split()[0]) for l in open(tmp_path / "process_1.log") if "SIGTERM: saved" in l]
  assert len(saved) == 2 and saved[0] == saved[1] and saved[0] % 5 == 0, saved
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [saved[0]]


def test_launcher_refuses_zero_or_no_count_of_processes(capsys):
  from experiments import multihost
  for argv in (["0", "--config=c.py"], ["two", "--config=c.py"], ["2"]):
    assert multihost.main(argv) == 2, argv  # nothing started
    assert "usage: multihost.py N" in capsys.readouterr().err

"""SLURM job arrays: each array task, run here with SLURM_ARRAY_TASK_ID set as the scheduler would, runs exactly the
corresponding run of the local sweep of the same spec; a task stopped by SIGTERM saves, requeues itself and resumes;
--submit without sbatch is a clear error."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, tiny_lm_config
from test_kill import train_args
from test_sweep_optuna import FAKE_TRAIN
from tfjax.runs import slurm, sweep

CONFIG = "experiments/configs/gpt_shakespeare_tiny.py"
SPEC = ["--random=3", "--seed=3", "--range", "optimizer.lr=1e-3:5e-3", "--sweep", "model.num_layers=1,2",
        "--config.train.num_steps=3"]


def _cli(args, env=None, **kw):
  return subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), CONFIG, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env, **kw)


def _task(script, i, env=None, **kw):
  env = {**os.environ, **(env or {}), "SLURM_ARRAY_TASK_ID": str(i)}
  return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300, env=env, **kw)


def _log_commands(workdir, sweepdir):
  """The run's command lines (its train.log's ``$ ...`` lines), the sweep dir replaced by SWEEPDIR."""
  lines = (workdir / "train.log").read_text().splitlines()
  return [l.replace(str(sweepdir), "SWEEPDIR") for l in lines if l.startswith("$ ")]


def test_array_tasks_run_the_local_sweeps_runs(tmp_path):
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAIN)
  env = dict(os.environ, FAKE_STEP_S="0")
  local, array = tmp_path / "local", tmp_path / "array"
  out = _cli([*SPEC, f"--train_script={script}", f"--sweepdir={local}"], env=env)
  assert out.returncode == 0, out.stderr
  out = _cli([*SPEC, f"--train_script={script}", f"--sweepdir={array}", "--slurm",
              "--slurm_args=--gpus-per-task=1 --time 2:00:00 --partition=gpu"], env=env)
  assert out.returncode == 0, out.stderr
  path = array / slurm.SCRIPT
  assert f"sbatch {path}" in out.stdout
  text = path.read_text()
  for line in ("#SBATCH --array=0-2", "#SBATCH --requeue", "#SBATCH --gpus-per-task=1", "#SBATCH --time 2:00:00",
               "#SBATCH --partition=gpu"):
    assert line + "\n" in text

  runs = json.loads((local / "sweep.json").read_text())["runs"]
  assert [r["settings"] for r in json.loads((array / "sweep.json").read_text())["runs"]] == \
      [r["settings"] for r in runs] == sweep.random_search([sweep.parse_range("optimizer.lr=1e-3:5e-3")], 3, 3,
                                                           [sweep.parse_axis("model.num_layers=1,2")])
  for i, r in enumerate(runs):
    out = _task(path, i, env)
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = local / r["name"], array / r["name"]
    assert _log_commands(a, local) == _log_commands(b, array)  # the same command line: config, overrides, order
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())
  rundirs = lambda d: sorted(n for n in os.listdir(d) if (d / n / "train.log").exists())
  assert rundirs(array) == rundirs(local) == sorted(r["name"] for r in runs)

  # a finished task exits at once; an index outside the array, or none, is refused
  out = _task(path, 1, env)
  assert out.returncode == 0 and "finished already" in out.stdout
  assert len(_log_commands(array / runs[1]["name"], array)) == 1
  out = _task(path, 3, env)
  assert out.returncode == 2 and "this array has tasks 0-2" in out.stderr
  out = subprocess.run(["bash", str(path)], capture_output=True, text=True,
                       env={k: v for k, v in env.items() if k != "SLURM_ARRAY_TASK_ID"})
  assert out.returncode != 0 and "submit with sbatch" in out.stderr

  # the report aggregates the array's runs as for a local sweep
  rows = sweep.report(str(array))
  assert sorted(r["run"] for r in rows) == sorted(r["name"] for r in runs) and {r["status"] for r in rows} == {"done"}


def test_a_stopped_task_requeues_itself_and_resumes(tmp_path):
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAIN)
  bindir = tmp_path / "bin"
  bindir.mkdir()
  (bindir / "scontrol").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/scontrol.txt\n")
  (bindir / "scontrol").chmod(0o755)
  path = slurm.write_script(CONFIG, [{"optimizer.lr": 2e-3}], str(tmp_path / "array"),
                            ["--config.train.num_steps=40"], train_script=str(script))
  env = dict(os.environ, FAKE_STEP_S="0.1", SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="777",
             PATH=f"{bindir}:{os.environ['PATH']}")
  workdir = tmp_path / "array" / "lr=0.002"
  proc = subprocess.Popen(["bash", path], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  t0 = time.time()
  while not (workdir / "ckpt.json").exists() and time.time() - t0 < 60:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # what SLURM sends before the time limit (--signal=B:TERM@...) or on preemption
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out
  assert "requeueing" in out and (tmp_path / "scontrol.txt").read_text() == "requeue 777\n"
  assert not (workdir / "results.json").exists()
  stopped = json.loads((workdir / "ckpt.json").read_text())["step"]
  assert stopped < 40
  env["FAKE_STEP_S"] = "0"
  out = subprocess.run(["bash", path], env=env, capture_output=True, text=True, timeout=120)  # the requeued task
  assert out.returncode == 0, out.stdout + out.stderr
  assert f"resumed from the checkpoint at step {stopped}" in (workdir / "train.log").read_text()
  assert json.loads((workdir / "results.json").read_text())["step"] == 40
  assert (tmp_path / "scontrol.txt").read_text() == "requeue 777\n"  # finished: no second requeue


def test_submit_needs_sbatch(tmp_path, monkeypatch, capsys):
  from experiments import sweep as cli
  bindir = tmp_path / "bin"
  bindir.mkdir()
  argv = [CONFIG, "--sweep", "optimizer.lr=1e-3,2e-3", f"--sweepdir={tmp_path / 'a'}", "--slurm", "--submit"]
  monkeypatch.setenv("PATH", str(bindir))
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "'sbatch' is not on PATH" in err and "sweep.sbatch" in err
  (bindir / "sbatch").write_text(f"#!/bin/bash\necho \"$@\" > {tmp_path}/sbatch.txt\necho '4242;cluster'\n")
  (bindir / "sbatch").chmod(0o755)
  assert cli.main(argv) == 0 and "submitted: job 4242" in capsys.readouterr().out
  assert (tmp_path / "sbatch.txt").read_text().split() == ["--parsable", str(tmp_path / "a" / slurm.SCRIPT)]
  assert (tmp_path / "a" / "slurm" / "jobs.txt").read_text() == "4242\n"


def test_sbatch_directives():
  assert slurm.sbatch_directives("--gpus-per-task=1 --time 2:00:00 -p gpu") == [
      "#SBATCH --gpus-per-task=1", "#SBATCH --time 2:00:00", "#SBATCH -p gpu"]
  with pytest.raises(sweep.SweepError, match="must not set --array"):
    slurm.sbatch_directives("--array=0-9")
  with pytest.raises(sweep.SweepError, match="must be sbatch options"):
    slurm.sbatch_directives("gpu")


@pytest.mark.slow  # four real training launches (~2 min on 2 busy cores)
def test_array_tasks_equal_a_real_local_sweep(tmp_path):
  """Real runs: the array's task i trains exactly what the local sweep's run i trained (the same losses)."""
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 4, "train.eval_every": 2,
                             "train.checkpoint_every": 2, "train.log_every": 1})
  args = [a for a in train_args(config, "x") if not a.startswith(("--workdir", "--config=", "--config.optimizer.lr"))]
  env = dict(os.environ, TFJAX_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  grid = ["--sweep", "optimizer.lr=3e-3,1e-4", *args]
  assert _cli([*grid, f"--sweepdir={tmp_path / 'local'}"], env=env).returncode == 0
  out = _cli([*grid, f"--sweepdir={tmp_path / 'array'}", "--slurm"], env=env)
  assert out.returncode == 0, out.stderr
  for i, name in enumerate(["lr=0.003", "lr=0.0001"]):
    out = _task(tmp_path / "array" / slurm.SCRIPT, i, env)
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = tmp_path / "local" / name, tmp_path / "array" / name
    ma, mb = ([{k: v for k, v in json.loads(l).items() if "time" not in k and "per_s" not in k and k != "elapsed_s"}
               for l in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
    assert ma == mb and any("eval_loss" in m for m in ma)
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())

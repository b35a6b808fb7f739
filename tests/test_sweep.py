"""Sweeps: grid and random-search settings, run names, and a real 2-run sweep (2 at a time) with its summary, that
skips finished runs and resumes unfinished ones when relaunched."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_lm_config
from test_kill import train_args
from tfjax.runs import sweep
from tfjax.train.optimizer import make_optimizer


def test_grid_is_the_product_of_the_axes():
  axes = [sweep.parse_axis("model.num_layers=2,4"), sweep.parse_axis("optimizer.lr=1e-3,3e-4")]
  assert axes[1] == ("optimizer.lr", [1e-3, 3e-4])
  settings = sweep.grid(axes)
  assert settings == [{"model.num_layers": 2, "optimizer.lr": 1e-3}, {"model.num_layers": 2, "optimizer.lr": 3e-4},
                      {"model.num_layers": 4, "optimizer.lr": 1e-3}, {"model.num_layers": 4, "optimizer.lr": 3e-4}]
  assert [sweep.run_name(s) for s in settings][:2] == ["num_layers=2,lr=0.001", "num_layers=2,lr=0.0003"]
  assert sweep.run_name({"model.dropout_rate": 0.1, "data.dropout_rate": 0.2}) == \
      "model.dropout_rate=0.1,data.dropout_rate=0.2"  # clashing short names keep the full key
  assert sweep.parse_axis("model.positional=rope,learned")[1] == ["rope", "learned"]
  for bad in ("model.num_layers", "=1,2", "model.num_layers="):
    with pytest.raises(sweep.SweepError, match="KEY=V1,V2"):
      sweep.parse_axis(bad)
  with pytest.raises(sweep.SweepError, match="swept twice"):
    sweep.grid([("a", [1]), ("a", [2])])


def test_random_search_draws_within_the_ranges():
  ranges = [sweep.parse_range("optimizer.lr=1e-4:3e-3:log"), sweep.parse_range("model.num_layers=1:3:int")]
  draws = sweep.random_search(ranges, 50, seed=0)
  lrs = np.array([d["optimizer.lr"] for d in draws])
  assert len(draws) == 50 and np.all((lrs >= 1e-4 * 0.999) & (lrs <= 3e-3 * 1.001))
  assert np.sum(lrs < 5.5e-4) > 10 and np.sum(lrs > 5.5e-4) > 10  # log-uniform: the geometric middle splits
  assert {d["model.num_layers"] for d in draws} == {1, 2, 3}
  assert draws == sweep.random_search(ranges, 50, seed=0) != sweep.random_search(ranges, 50, seed=1)
  for bad in ("optimizer.lr=1e-3", "optimizer.lr=3e-3:1e-4", "optimizer.lr=0:1:log", "optimizer.lr=1:2:cubic"):
    with pytest.raises(sweep.SweepError):
      sweep.parse_range(bad)


def test_learning_rate_is_optimizer_state_not_code():
  """Runs that differ in the learning rate share one code path: it lives in opt_state (inject_hyperparams)."""
  params = {"w": np.ones((2, 2), np.float32)}
  for lr in (1e-3, 3e-4):
    o = tiny_lm_config(**{"optimizer.lr": lr, "optimizer.warmup_steps": 0, "optimizer.schedule": "constant"}).optimizer
    tx, _ = make_optimizer(o, 10)
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(np.ones_like, params), state, params)
    np.testing.assert_allclose(state[1].hyperparams["learning_rate"], lr, rtol=1e-6)


def _sweep(sweepdir, settings, extra, parallel=2):
  config = tiny_lm_config(**extra)
  swept = tuple(f"--config.{s.split('=')[0]}=" for s in settings if "=" in s)
  args = [a for a in train_args(config, "x") if not a.startswith(("--workdir", "--config=", *swept))]
  cmd = [sys.executable, str(ROOT / "experiments" / "sweep.py"), "experiments/configs/gpt_shakespeare_tiny.py",
         *settings, f"--parallel={parallel}", f"--sweepdir={sweepdir}", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three training launches (~45 s on 2 busy cores)
def test_sweep_runs_the_grid_reports_and_resumes(tmp_path):
  extra = {"model.num_layers": 1, "train.num_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 2,
           "train.log_every": 1}
  grid = ["--sweep", "optimizer.lr=3e-3,1e-4"]
  out = _sweep(tmp_path, grid, extra)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  names = ["lr=0.003", "lr=0.0001"]
  for n in names:
    res = json.load(open(tmp_path / n / "results.json"))
    assert res["step"] == 4
    cfg = json.load(open(tmp_path / n / "config.json"))
    assert cfg["optimizer"]["lr"] == float(n.split("=")[1]) and cfg["model"]["num_layers"] == 1
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / n))  # TensorBoard
  rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
  assert [r["run"] for r in rows] == names  # best (the larger lr on 4 steps) first
  for col in ("optimizer.lr", "final_eval_loss", "best_eval_loss", "steps", "tokens_per_s", "wall_time_s"):
    assert col in rows[0]
  assert float(rows[0]["best_eval_loss"]) < float(rows[1]["best_eval_loss"])
  md = (tmp_path / "summary.md").read_text()
  assert "best (lowest eval loss): **lr=0.003**" in md and md.count("\n| lr=") == 2
  assert (tmp_path / "curves.png").stat().st_size > 1000

  # relaunch: the finished run is skipped, the unfinished one resumes from its checkpoint
  os.remove(tmp_path / "lr=0.0001" / "results.json")
  out = _sweep(tmp_path, grid, extra)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "lr=0.003 finished already" in out.stdout
  assert (tmp_path / "lr=0.003" / "train.log").read_text().count("$ ") == 1
  log = (tmp_path / "lr=0.0001" / "train.log").read_text()
  assert log.count("$ ") == 2 and "resumed from the checkpoint at step 4" in log
  assert (tmp_path / "lr=0.0001" / "results.json").exists()

  # the report on demand
  os.remove(tmp_path / "summary.md")
  out = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and "lr=0.003" in out.stdout and (tmp_path / "summary.md").exists()


def test_gpu_groups_split_the_visible_gpus():
  assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5,6,7"}) == ["3", "5", "6", "7"]
  assert sweep.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
  assert sweep.gpu_groups(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
  assert sweep.gpu_groups(["0", "1", "2", "3", "4"], 2) == [["0", "1"], ["2", "3"]]  # one left idle
  assert sweep.gpu_groups(["0", "1", "2", "3"], 3, gpus_per_run=1) == [["0"], ["1"], ["2"]]
  assert sweep.gpu_groups(["0", "1"], 1) == [] and sweep.gpu_groups([], 4) == []
  with pytest.raises(sweep.SweepError, match="need 3 GPUs; 2 visible"):
    sweep.gpu_groups(["0", "1"], 3)
  with pytest.raises(sweep.SweepError, match="Lower --parallel or --gpus_per_run"):
    sweep.gpu_groups(["0", "1", "2", "3"], 2, gpus_per_run=3)


FAKE_TRAIN = '''
import json, os, sys, time
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
wd = args["workdir"]
t0 = time.time()
time.sleep(0.6)
with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
  f.write(json.dumps({"step": 1, "loss": 1.0, "eval_loss": 1.0, "tokens_per_s": 1.0}) + "\\n")
with open(os.path.join(wd, "results.json"), "w") as f:
  json.dump({"step": 1, "eval_loss": 1.0, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "cpu_devices": os.environ.get("TFJAX_CPU_DEVICES"), "start": t0, "end": time.time()}, f)
'''


@pytest.mark.parametrize("visible,expect_groups", [("0,1,2,3", {"0,1", "2,3"}), (None, None)])
def test_parallel_runs_get_disjoint_gpus(tmp_path, visible, expect_groups):
  """Runs in flight at the same time never share a GPU; without GPUs each parallel run gets one CPU device."""
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAIN)
  env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "TFJAX_CPU_DEVICES")}
  env["PATH"] = ""  # no nvidia-smi: only CUDA_VISIBLE_DEVICES names GPUs here
  if visible:
    env["CUDA_VISIBLE_DEVICES"] = visible
  settings = [{"optimizer.lr": lr} for lr in (1e-3, 2e-3, 3e-3, 4e-3, 5e-3)]
  rows = sweep.run_sweep("unused_config.py", settings, str(tmp_path / "sweep"), parallel=2,
                         train_script=str(script), env=env, poll_s=0.05)
  assert len(rows) == 5
  res = [json.load(open(tmp_path / "sweep" / sweep.run_name(s) / "results.json")) for s in settings]
  if expect_groups is None:
    assert all(r["gpus"] is None and r["cpu_devices"] == "1" for r in res)
    return
  assert {r["gpus"] for r in res} == expect_groups and all(r["cpu_devices"] is None for r in res)
  overlapping = [(a, b) for i, a in enumerate(res) for b in res[i + 1:]
                 if a["start"] < b["end"] and b["start"] < a["end"]]
  assert overlapping  # two at a time really ran side by side
  assert all(a["gpus"] != b["gpus"] for a, b in overlapping)


def test_report_of_a_directory_without_runs_is_an_error_and_writes_nothing(tmp_path):
  one_run, empty = tmp_path / "run", tmp_path / "empty"
  one_run.mkdir()
  empty.mkdir()
  (one_run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
  for d, said in ((one_run, "it is one run's workdir"), (empty, "holds no runs")):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(d)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and said in out.stderr, out.stderr
  assert not list(tmp_path.rglob("summary.*"))

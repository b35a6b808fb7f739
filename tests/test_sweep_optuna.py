"""Optuna sweeps: a real study on SQLite shared by two worker processes at once (trials distinct, a pruned trial stopped
early, a killed worker's trial failed and resumed from its checkpoint by the other worker, no finished result lost,
all of it in the report); a real tfjax run pruned through SIGTERM; the search space and pruner specs."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import optuna  # a dependency of tfjax (sweep --optuna): imported, never skipped
import pytest

from conftest import ROOT, tiny_lm_config
from test_kill import train_args
from tfjax.runs import optuna_sweep, sweep
from tfjax.train.metrics import read_metrics


CONFIG = "experiments/configs/gpt_shakespeare_tiny.py"

# A stand-in for experiments/train.py with the loop's contract: metrics.jsonl written step by step (eval_loss =
# 1000 lr + 1/step, so the value of every trial is known in advance), a checkpoint after every step, SIGTERM -> save
# and exit 0 without results.json, a relaunch resumes from the checkpoint, results.json at the end.
FAKE_TRAIN = r'''
import json, os, signal, sys, time
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
wd = args["workdir"]
lr = float(args["config.optimizer.lr"])
steps = int(args.get("config.train.num_steps", 8))
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
ck = os.path.join(wd, "ckpt.json")
start = json.load(open(ck))["step"] if os.path.exists(ck) else 0
while os.environ.get("FAKE_GATE") and not os.path.exists(os.environ["FAKE_GATE"]):  # the test opens the gate
  time.sleep(0.05)
if start:
  print(f"resumed from the checkpoint at step {start}", flush=True)
loss = lambda s: 1000 * lr + 1.0 / s
for s in range(start, steps):
  time.sleep(float(os.environ.get("FAKE_STEP_S", "0.3")))
  with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": s + 1, "loss": loss(s + 1)}) + "\n")
    f.write(json.dumps({"step": s + 1, "eval_loss": loss(s + 1)}) + "\n")
  json.dump({"step": s + 1}, open(ck + ".tmp", "w"))
  os.replace(ck + ".tmp", ck)
  if stop:
    print(f"SIGTERM: saved a checkpoint at step {s + 1}", flush=True)
    sys.exit(0)
json.dump({"step": steps, "eval_loss": loss(steps), "best_eval_loss": loss(steps)},
          open(os.path.join(wd, "results.json"), "w"))
'''


def test_search_space_and_pruners_from_the_sweep_spec():
  space = optuna_sweep.search_space([sweep.parse_axis("model.num_layers=2,4")],
                                    [sweep.parse_range("optimizer.lr=1e-4:3e-3:log"),
                                     sweep.parse_range("model.num_heads=1:8:int"),
                                     sweep.parse_range("model.dropout_rate=0:0.3")])
  d = optuna.distributions
  assert space == {"model.num_layers": d.CategoricalDistribution([2, 4]),
                   "optimizer.lr": d.FloatDistribution(1e-4, 3e-3, log=True),
                   "model.num_heads": d.IntDistribution(1, 8),
                   "model.dropout_rate": d.FloatDistribution(0.0, 0.3)}
  with pytest.raises(sweep.SweepError, match="swept twice"):
    optuna_sweep.search_space([sweep.parse_axis("optimizer.lr=1e-3,2e-3")], [sweep.parse_range("optimizer.lr=1:2")])
  with pytest.raises(sweep.SweepError, match="needs a search space"):
    optuna_sweep.search_space([], [])
  with pytest.raises(sweep.SweepError, match="integer bounds"):
    optuna_sweep.search_space([], [sweep.parse_range("model.num_heads=1.5:8:int")])
  assert isinstance(optuna_sweep.make_pruner("median"), optuna.pruners.MedianPruner)
  assert optuna_sweep.make_pruner("median:3:100")._n_warmup_steps == 100
  assert optuna_sweep.make_pruner("threshold:5")._upper == 5.0
  assert isinstance(optuna_sweep.make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
  assert isinstance(optuna_sweep.make_pruner("none"), optuna.pruners.NopPruner)
  for bad in ("medain", "threshold", "threshold:x", "median:a"):
    with pytest.raises(sweep.SweepError, match="pruner"):
      optuna_sweep.make_pruner(bad)


def test_metrics_tail_reads_complete_new_lines_and_rereads_a_replaced_file(tmp_path):
  tail = optuna_sweep._MetricsTail(str(tmp_path))
  assert tail.read() == []
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2, "eval_lo')  # the second line is still being written
  assert tail.read() == [{"step": 1}]
  with open(path, "a") as f:
    f.write('ss": 3.5}\n')
  assert tail.read() == [{"step": 2, "eval_loss": 3.5}] and tail.read() == []
  (tmp_path / "new").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')  # a resumed run rewrites the file
  os.replace(tmp_path / "new", path)
  assert [r["step"] for r in tail.read()] == [1, 2, 3]


def test_cli_refuses_inconsistent_flags(capsys):
  from experiments import sweep as cli
  for argv, msg in ((["--optuna", "--range", "optimizer.lr=1e-4:1e-3"], "needs --trials"),
                    (["--optuna", "--trials=2", "--random=3"], "drop --random"),
                    (["--trials=3", "--sweep", "optimizer.lr=1e-3"], "are for --optuna"),
                    (["--submit", "--sweep", "optimizer.lr=1e-3"], "--submit needs --slurm"),
                    (["--slurm", "--parallel=2", "--sweep", "optimizer.lr=1e-3"], "--slurm_args"),
                    (["--optuna", "--trials=2", "--range", "optimizer.lr=1e-4:1e-3", "--pruner=foo"], "--pruner"),
                    # a key the config lacks, or a value it cannot take: refused before any run starts
                    (["--sweep", "model.num_layerz=1,2"], "'model.num_layerz=1'"),
                    (["--sweep", "optimizer.lr=1e-3", "--config.train.nosuch=1"], "'train.nosuch=1'"),
                    (["--random=2", "--range", "model.num_layers=1:3"], "cannot be casted"),
                    (["--optuna", "--trials=2", "--range", "model.num_layerz=1:3:int"], "'model.num_layerz=1'")):
    with pytest.raises(SystemExit):
      cli.main([CONFIG, *argv])
    assert msg in capsys.readouterr().err


def _worker(sweepdir, script, trials, out, extra=(), gate=None):
  cmd = [sys.executable, str(ROOT / "experiments" / "sweep.py"), CONFIG, "--optuna", f"--trials={trials}",
         "--range", "optimizer.lr=1e-3:9e-3", "--pruner=threshold:5", f"--train_script={script}",
         f"--sweepdir={sweepdir}", "--poll=0.05", "--heartbeat=1", "--grace=3", "--config.train.num_steps=10",
         *extra]
  env = dict(os.environ, FAKE_STEP_S="0.2", FAKE_GATE=str(gate or script))
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait(predicate, timeout, what):
  t0 = time.time()
  while time.time() - t0 < timeout:
    got = predicate()
    if got:
      return got
    time.sleep(0.1)
  raise AssertionError(f"timed out waiting for {what}")


ASK_WORKER = r"""
import json, sys
import optuna
from tfjax.runs import optuna_sweep
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="s", storage=optuna_sweep.open_storage(sys.argv[1]))
print(json.dumps([study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).number for _ in range(20)]))
"""


def test_workers_asking_at_once_never_get_the_same_queued_trial(tmp_path):
  """Optuna marks a queued trial RUNNING after reading that it is WAITING; on SQLite, without the write lock taken at
  BEGIN (optuna_sweep._immediate_transactions), 3 workers asking for 60 queued trials got 3-11 of them twice."""
  url = optuna_sweep.default_storage(tmp_path)
  study = optuna.create_study(study_name="s", storage=optuna_sweep.open_storage(url))
  for i in range(60):
    study.enqueue_trial({"x": i / 100})
  procs = [subprocess.Popen([sys.executable, "-c", ASK_WORKER, url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
           for _ in range(3)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs)
  asked = sum((json.loads(o) for o in outs), [])
  assert sorted(asked) == list(range(60))
  assert all(t.state.name == "RUNNING" for t in study.get_trials())


def test_two_workers_share_a_study_prune_and_survive_a_killed_worker(tmp_path):
  script = tmp_path / "fake_train.py"
  script.write_text(FAKE_TRAIN)
  sweepdir = tmp_path / "study"
  storage = optuna_sweep.default_storage(sweepdir)
  os.makedirs(sweepdir)
  # the four settings the workers take first (enqueued: which trial is pruned does not depend on the sampler)
  lrs = [1e-3, 8e-3, 2e-3, 3e-3]
  study = optuna.create_study(study_name="study", storage=storage)
  for lr in lrs:
    study.enqueue_trial({"optimizer.lr": lr})
  host = socket.gethostname()

  def steps_done(t):
    path = sweepdir / f"trial_{t.number}" / "metrics.jsonl"
    return len(path.read_text().splitlines()) // 2 if path.exists() else 0

  def running():
    return [t for t in study.get_trials() if t.state.name == "RUNNING" and "worker" in t.user_attrs]

  gate = tmp_path / "go"
  logs = [open(tmp_path / f"{w}.log", "w") for w in "ab"]
  workers = [_worker(sweepdir, script, 4, f, gate=gate) for f in logs]
  try:
    # both workers hold a trial (their runs wait at the gate): then the runs go, side by side
    try:
      _wait(lambda: len({t.user_attrs["worker"] for t in running()}) == 2, 120, "both workers in a trial")
    except AssertionError as e:  # say what the workers did (seen when both took trial 0)
      for f in logs:
        f.flush()
      tails = "\n".join(f"--- {w}.log (exit {p.poll()}):\n" + (tmp_path / f"{w}.log").read_text()[-2000:]
                         for w, p in zip("ab", workers))
      raise AssertionError(f"{e}\n{tails}") from None
    gate.write_text("go")
    # the victim: the worker of the trial that would complete, two steps into it
    killed = _wait(lambda: next((t for t in running() if t.params["optimizer.lr"] != 8e-3 and steps_done(t) >= 2),
                                None), 60, "a trial two steps in")
    finished_before = {t.number: t.value for t in study.get_trials() if t.state.name == "COMPLETE"}
    dead_w = next(w for w in workers if killed.user_attrs["worker"] == f"{host}:{w.pid}")
    live_w = next(w for w in workers if w is not dead_w)
    dead_w.send_signal(signal.SIGKILL)
    dead_w.wait(timeout=30)
    assert live_w.wait(timeout=180) == 0, (tmp_path / f"{'ab'[workers.index(live_w)]}.log").read_text()[-3000:]
  finally:
    for w, f in zip(workers, logs):
      if w.poll() is None:
        w.kill()
      f.close()
  a = live_w

  trials = {t.number: t for t in study.get_trials()}
  states = sorted(t.state.name for t in trials.values())
  assert states == ["COMPLETE"] * 3 + ["FAIL", "PRUNED"], states
  ended = [t for t in trials.values() if t.state.name in ("COMPLETE", "PRUNED")]
  assert sorted(t.params["optimizer.lr"] for t in ended) == sorted(lrs)  # each setting ran to its end once

  # the killed worker's trial failed (not finished) and was resumed from its checkpoint by the other worker
  dead = trials[killed.number]
  assert dead.state.name == "FAIL" and not (sweepdir / f"trial_{killed.number}").exists()
  retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == killed.number)
  assert retry.state.name == "COMPLETE" and retry.params == killed.params
  assert retry.user_attrs["worker"] == f"{host}:{a.pid}"
  log = (sweepdir / f"trial_{retry.number}" / "train.log").read_text()
  assert "SIGTERM: saved a checkpoint" in log  # B's run got SIGTERM when B died
  assert int(log.split("resumed from the checkpoint at step ")[1].split()[0]) >= 2

  # no finished result lost; every value is the run's result (and the fake's closed form)
  for number, value in finished_before.items():
    assert trials[number].state.name == "COMPLETE" and trials[number].value == value
  for t in trials.values():
    if t.state.name == "COMPLETE":
      res = json.loads((sweepdir / f"trial_{t.number}" / "results.json").read_text())
      assert t.value == res["best_eval_loss"] == pytest.approx(1000 * t.params["optimizer.lr"] + 1 / 10)
  pruned = next(t for t in trials.values() if t.state.name == "PRUNED")
  assert pruned.params["optimizer.lr"] == 8e-3 and list(pruned.intermediate_values) == [1]
  res = json.loads((sweepdir / f"trial_{pruned.number}" / "results.json").read_text())
  assert res["pruned"] is True and res["pruned_at_step"] == 1 and res["step"] < 10  # stopped early

  # the budget is the study's: another worker finds it spent and runs nothing
  space = optuna_sweep.search_space([], [sweep.parse_range("optimizer.lr=1e-3:9e-3")])
  assert optuna_sweep.run_worker(CONFIG, space, str(sweepdir), 4, extra_args=["--config.train.num_steps=10"],
                                 pruner="threshold:5", train_script=str(script)) == \
      {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
  assert len(study.get_trials()) == 5

  rows = {r["run"]: r for r in optuna_sweep.report(str(sweepdir))}
  assert len(rows) == 5 and rows[f"trial_{pruned.number}"]["status"] == "pruned"
  assert f"resumed as trial_{retry.number}" in rows[f"trial_{killed.number}"]["note"]
  assert {n: r["state"] for n, r in rows.items()} == {f"trial_{n}": t.state.name for n, t in trials.items()}
  best = min((t for t in ended if t.state.name == "COMPLETE"), key=lambda t: t.value)
  assert f"best (lowest eval loss): **trial_{best.number}**" in (sweepdir / "summary.md").read_text()
  assert len(list(csv.DictReader(open(sweepdir / "summary.csv")))) == 5
  for png in ("curves.png", "history.png", "importance.png"):
    assert (sweepdir / png).stat().st_size > 5000


def test_a_real_run_is_pruned_through_sigterm(tmp_path):
  """The real training loop: pruned at its first evaluation, it saves a checkpoint on SIGTERM and stops early."""
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 200, "train.eval_every": 2,
                             "train.checkpoint_every": 200, "train.log_every": 1})
  args = [a for a in train_args(config, "x") if not a.startswith(("--workdir", "--config=", "--config.optimizer.lr"))]
  sweepdir = tmp_path / "study"
  env = dict(os.environ, TFJAX_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), CONFIG, "--optuna", "--trials=1",
                        "--range", "optimizer.lr=1e-3:3e-3:log", "--pruner=threshold:0", f"--sweepdir={sweepdir}",
                        "--poll=0.1", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  res = json.loads((sweepdir / "trial_0" / "results.json").read_text())
  assert res["pruned"] is True and res["pruned_at_step"] == 2
  log = (sweepdir / "trial_0" / "train.log").read_text()
  stopped = int(log.split("SIGTERM: saved a checkpoint at step ")[1].split()[0])
  assert 2 <= stopped < 200 and res["step"] == stopped
  assert os.path.isdir(sweepdir / "trial_0" / "checkpoints" / str(stopped))
  evals = [json.loads(l) for l in (sweepdir / "trial_0" / "metrics.jsonl").read_text().splitlines()]
  t = optuna.load_study(study_name="study", storage=optuna_sweep.default_storage(sweepdir)).trials[0]
  assert t.state.name == "PRUNED" and t.intermediate_values == {
      2: next(r["eval_loss"] for r in evals if r["step"] == 2 and "eval_loss" in r)}
  assert "| trial_0 | PRUNED |" in out.stdout
  from experiments import report as report_cli
  os.remove(sweepdir / "summary.md")
  assert report_cli.main([str(sweepdir)]) == 0 and "| trial_0 | PRUNED |" in (sweepdir / "summary.md").read_text()


@pytest.mark.slow  # real training runs in two workers (~2-3 min on 2 busy cores)
def test_two_workers_with_real_runs(tmp_path):
  """The same story with real tfjax runs: lr 1e-4 leaves the loss at ~4.15 after 4 steps (pruned above 4.1), 3e-3
  and 2e-3 bring it to ~4.02; one worker is killed mid-run and the other resumes that run from its checkpoint."""
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 40, "train.eval_every": 4,
                             "train.checkpoint_every": 4, "train.log_every": 1})
  args = [a for a in train_args(config, "x") if not a.startswith(("--workdir", "--config=", "--config.optimizer.lr"))]
  sweepdir = tmp_path / "study"
  os.makedirs(sweepdir)
  study = optuna.create_study(study_name="study", storage=optuna_sweep.default_storage(sweepdir))
  lrs = [3e-3, 1e-4, 2e-3]
  for lr in lrs:
    study.enqueue_trial({"optimizer.lr": lr})
  env = dict(os.environ, TFJAX_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, str(ROOT / "experiments" / "sweep.py"), CONFIG, "--optuna", "--trials=3", "--range",
         "optimizer.lr=1e-4:1e-2:log", "--pruner=threshold:4.1", f"--sweepdir={sweepdir}", "--poll=0.1",
         "--heartbeat=1", "--grace=3", *args]
  logs = [open(tmp_path / f"{w}.log", "w") for w in "ab"]
  workers = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT) for f in logs]
  host = socket.gethostname()

  def victim():
    running = [t for t in study.get_trials() if t.state.name == "RUNNING" and "worker" in t.user_attrs]
    for t in running:
      recs = read_metrics(str(sweepdir / f"trial_{t.number}"))
      if t.params["optimizer.lr"] != 1e-4 and any(r.get("step", 0) >= 8 and "loss" in r for r in recs):
        return t
    return None

  try:
    killed = _wait(victim, 400, "a real run 8 steps in")
    finished_before = {t.number: t.value for t in study.get_trials() if t.state.name == "COMPLETE"}
    dead_w = next(w for w in workers if killed.user_attrs["worker"] == f"{host}:{w.pid}")
    live_w = next(w for w in workers if w is not dead_w)
    dead_w.send_signal(signal.SIGKILL)
    assert live_w.wait(timeout=600) == 0
  finally:
    for w, f in zip(workers, logs):
      if w.poll() is None:
        w.kill()
      f.close()
  trials = {t.number: t for t in study.get_trials()}
  assert sorted(t.state.name for t in trials.values()) == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
  assert sorted(t.params["optimizer.lr"] for t in trials.values() if t.state.name != "FAIL") == sorted(lrs)
  for number, value in finished_before.items():
    assert trials[number].value == value
  retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == killed.number)
  log = (sweepdir / f"trial_{retry.number}" / "train.log").read_text()
  # (the killed worker's run got SIGTERM and saved a checkpoint at the step it had reached)
  assert int(log.split("resumed from the checkpoint at step ")[1].split()[0]) >= 8
  for t in trials.values():
    if t.state.name == "COMPLETE":
      res = json.loads((sweepdir / f"trial_{t.number}" / "results.json").read_text())
      assert t.value == res["best_eval_loss"] and res["step"] == 40
  pruned = next(t for t in trials.values() if t.state.name == "PRUNED")
  res = json.loads((sweepdir / f"trial_{pruned.number}" / "results.json").read_text())
  assert pruned.params["optimizer.lr"] == 1e-4 and res["pruned_at_step"] == 4 and res["step"] < 40
  rows = optuna_sweep.report(str(sweepdir))
  assert len(rows) == 4 and (sweepdir / "importance.png").exists()

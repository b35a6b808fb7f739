"""Early stopping (``train.patience``, fairseq's ``--patience``): the run stops once that many evaluations in a row
have not lowered ``train.patience_metric``, its last checkpoint is the step it stopped at, and a relaunch does not
train further."""

import json

import pytest

from conftest import tiny_lm_config
from tfjax.config import ConfigError
from tfjax.tasks.lm import LMTask
from tfjax.train import loop
from tfjax.train.checkpoint import complete_steps, make_manager
from tfjax.train.logger import evaluations_since_best
from tfjax.train.metrics import read_metrics


def test_evaluations_since_best_counts_as_fairseq():
  assert evaluations_since_best([]) == 0
  assert evaluations_since_best([3.0]) == 0
  assert evaluations_since_best([3.0, 2.0, 2.5]) == 1
  assert evaluations_since_best([3.0, 2.0, 2.0, 2.0]) == 2  # a tie is no improvement
  assert evaluations_since_best([3.0, 2.0, 2.5, 1.9]) == 0


def _scripted_evaluations(monkeypatch, losses):
  """Evaluations that report ``losses`` in turn (the first is the one before training), counting the calls."""
  calls = []

  def fake_evaluate(task, eval_fn, params, put_batch):
    calls.append(len(calls))
    return {"eval_loss": losses[len(calls) - 1], "eval_other": 0.0}

  monkeypatch.setattr(loop, "evaluate", fake_evaluate)
  return calls


def _train(config, workdir):
  return loop.train_and_evaluate(config, str(workdir), LMTask(config, str(workdir)))


def test_run_stops_after_patience_evaluations_and_a_relaunch_does_not_train(tmp_path, monkeypatch):
  # before training 9.0; then the evaluations at steps 2, 4, 6, 8, 10: best 4.0 at step 4, then 4.5, 4.0 (a tie),
  # 4.2: three in a row without improvement, so patience 3 stops at step 10 of 40
  losses = [9.0, 5.0, 4.0, 4.5, 4.0, 4.2] + [1.0] * 20
  calls = _scripted_evaluations(monkeypatch, losses)
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 40, "train.eval_every": 2,
                             "train.checkpoint_every": 3, "train.log_every": 1, "train.patience": 3})
  reported = []
  # the final report learns the step its parameters are from (e.g. the translator averages the checkpoints before it)
  monkeypatch.setattr(LMTask, "final_report", lambda self, params, step=None: reported.append(step) or {})
  res = _train(config, tmp_path)
  assert res["step"] == 10 and res["stopped_early"] is True and reported == [10]
  assert len(calls) == 6  # no evaluation after the stop (the final report reuses the last one)
  assert res["eval_loss"] == 4.2 and res["best_eval_loss"] == 4.0 and res["best_eval_step"] == 4
  assert complete_steps(make_manager(str(tmp_path), 10, async_save=False))[-1] == 10  # saved where it stopped
  assert max(r["step"] for r in read_metrics(str(tmp_path))) == 10

  res2 = _train(config, tmp_path)  # relaunched: resumes at step 10, already out of patience
  assert res2["step"] == 10 and res2["stopped_early"] is True
  # the relaunch recomputes the report but keeps the training's own figures
  assert res["tokens_per_s_median"] and res2["tokens_per_s_median"] == res["tokens_per_s_median"]
  assert res2["train_loss"] == res["train_loss"] and res2["wall_time_s"] == res["wall_time_s"]
  assert json.load(open(tmp_path / "results.json"))["run_seconds"] == res["run_seconds"]
  assert max(r["step"] for r in read_metrics(str(tmp_path))) == 10
  assert json.load(open(tmp_path / "results.json"))["step"] == 10

  # more patience on the same history: the relaunch trains on (to the next 3 evaluations without improvement)
  monkeypatch.setattr(loop, "evaluate", lambda *a: {"eval_loss": 4.1, "eval_other": 0.0})
  config.train.patience = 6
  res3 = _train(config, tmp_path)
  assert res3["step"] == 16 and res3["stopped_early"] is True


def test_run_without_patience_trains_to_num_steps(tmp_path, monkeypatch):
  _scripted_evaluations(monkeypatch, [9.0] + [5.0 + i for i in range(20)])  # only ever worse
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 8, "train.eval_every": 2})
  res = _train(config, tmp_path)
  assert res["step"] == 8 and "stopped_early" not in res
  # more patience than the run has evaluations: never due
  res = _train(tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 8, "train.eval_every": 2,
                                 "train.patience": 10}), tmp_path / "b")
  assert res["step"] == 8 and res["stopped_early"] is False


def test_patience_needs_evaluations_and_a_metric_they_report(tmp_path):
  with pytest.raises(ConfigError, match="train.patience"):
    _train(tiny_lm_config(**{"train.patience": 2, "train.eval_every": 0}), tmp_path / "a")
  with pytest.raises(ConfigError, match="train.patience.*must be >= 0"):
    _train(tiny_lm_config(**{"train.patience": -1}), tmp_path / "b")
  config = tiny_lm_config(**{"model.num_layers": 1, "train.num_steps": 4, "train.eval_every": 2,
                             "train.checkpoint_every": 2, "train.patience": 2, "train.patience_metric": "eval_bleu"})
  with pytest.raises(ConfigError, match="'eval_bleu'.*eval_loss"):
    _train(config, tmp_path / "c")

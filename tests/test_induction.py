"""``explain induction`` (tfjax.explain.induction): the repeated rows, the head scores against a naive loop and on
patterns built to be an induction, duplicate or previous-token head, the ablation column against
``explain.ablate_heads``, the command and its errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hf_bert_with_vocab
from test_explain import FIXTURES, tiny_gpt_subject
from tfjax.explain import commands
from tfjax.explain import induction as ind
from tfjax.explain.subjects import SubjectError


def test_repeated_tokens_are_two_equal_halves_without_the_excluded_ids():
  ids = ind.repeated_tokens(10, 7, 50, seed=3, exclude=[0, 1])
  assert ids.shape == (50, 14) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids[:, :7], ids[:, 7:])
  assert set(np.unique(ids)) == set(range(2, 10))
  np.testing.assert_array_equal(ids, ind.repeated_tokens(10, 7, 50, seed=3, exclude=[0, 1]))
  some = ind.repeated_tokens(10, 7, 50, seed=3, exclude=[0], allowed=[0, 4, 4, 6])
  assert set(np.unique(some)) == {4, 6}
  with pytest.raises(ValueError, match="at least 2 tokens"):
    ind.repeated_tokens(3, 4, 1, exclude=[0, 1])


def _naive(p, n):
  num_layers, b, h, t, _ = p.shape
  out = {k: np.zeros((num_layers, h)) for k in ("induction", "duplicate", "previous")}
  for l in range(num_layers):
    for k in range(h):
      out["induction"][l, k] = np.mean([p[l, r, k, q, q - n + 1] for r in range(b) for q in range(n, 2 * n)])
      out["duplicate"][l, k] = np.mean([p[l, r, k, q, q - n] for r in range(b) for q in range(n, 2 * n)])
      out["previous"][l, k] = np.mean([p[l, r, k, q, q - 1] for r in range(b) for q in range(1, 2 * n)])
  return out


def test_head_scores_against_a_naive_loop_and_on_built_heads():
  n = 5
  rng = np.random.default_rng(0)
  p = rng.random((2, 3, 2, 2 * n, 2 * n)).astype(np.float32)
  got = ind.head_scores(jnp.asarray(p), n)
  for k, want in _naive(p, n).items():
    np.testing.assert_allclose(got[k], want, rtol=1e-5)
  t = np.arange(n, 2 * n)
  assert float(got["uniform"]) == pytest.approx(np.mean(1.0 / (t + 1)))
  built = np.zeros((1, 1, 3, 2 * n, 2 * n), np.float32)
  q = np.arange(2 * n)
  built[0, 0, 0, q, np.where(q >= n, q - n + 1, q)] = 1.0  # an induction head (first copy: itself)
  built[0, 0, 1, q, np.where(q >= n, q - n, q)] = 1.0  # a duplicate-token head
  built[0, 0, 2, q, np.maximum(q - 1, 0)] = 1.0  # a previous-token head
  s = {k: np.asarray(v) for k, v in ind.head_scores(jnp.asarray(built), n).items()}
  np.testing.assert_allclose(s["induction"][0], [1, 0, 0])
  np.testing.assert_allclose(s["duplicate"][0], [0, 1, 0])
  np.testing.assert_allclose(s["previous"][0], [0, 0, 1])


def test_command_numbers_against_the_model_and_ablate_heads(tmp_path):
  from tfjax import explain
  import optax
  subject = tiny_gpt_subject()
  out = ind.run(subject, str(tmp_path), num_tokens=6, num_samples=4, seed=1)
  assert (tmp_path / "induction.json").exists() and (tmp_path / "induction_induction.png").exists()
  ids = jnp.asarray(ind.repeated_tokens(subject.cfg.vocab_size, 6, 4, seed=1))
  variables = {"params": subject.params}

  def second(logits):
    return float(optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])[:, 6:].mean())

  base = second(subject.model.apply(variables, ids))
  assert out["second_copy_loss"] == pytest.approx(base, rel=1e-5) and out["ablation_base"] == pytest.approx(base)
  ablated = explain.run_with_interventions(subject.model, variables, explain.ablate_heads(subject.model, [(1, 0)]), ids)
  assert out["ablation"][1, 0] == pytest.approx(second(ablated) - base, abs=1e-5)
  assert out["loss"].shape == (11,) and "in context" in out["summary"]
  from tfjax.explain import ov
  copying = ov.measure(subject.model, subject.params, "gpt", [{"inputs": np.asarray(ids)}])
  np.testing.assert_allclose(out["copying"], copying["copying_values"], rtol=1e-6)
  np.testing.assert_allclose(out["copying_context"], copying["context_top1"])


def test_command_on_a_hugging_face_gpt2_and_clear_errors(tmp_path):
  out = commands.run_command("induction", str(FIXTURES / "hf_gpt2"), str(tmp_path / "hf"), num_samples=2)
  assert out["induction"].ndim == 2 and out["num_tokens"] >= 2
  with pytest.raises(SubjectError, match="each random half must have 2 .. 8 tokens"):
    ind.run(tiny_gpt_subject(), str(tmp_path / "x"), num_tokens=9)
  with pytest.raises(SubjectError, match="works on a GPT"):
    commands.run_command("induction", hf_bert_with_vocab(tmp_path), str(tmp_path / "bert"))


def test_the_repeats_text_and_a_workdirs_development_over_its_checkpoints(tmp_path):
  """``data.dataset=repeats`` (generated, deterministic: every line a string written twice, of 6..24 letters); a
  GPT trained on it for 6 steps with a checkpoint every 2: ``over_checkpoints`` measures each checkpoint, and the
  last one's numbers are the command's own."""
  from conftest import tiny_lm_config
  from tfjax.data.synthetic import repeats
  from tfjax.explain.subjects import load_subject
  from tfjax.tasks.lm import LMTask, load_text
  from tfjax.train.loop import train_and_evaluate
  text = repeats(num_lines=200, seed=5)
  assert text == repeats(num_lines=200, seed=5) and load_text("repeats", None) == repeats()
  for line in text.splitlines():
    half = len(line) // 2
    assert line[:half] == line[half:] and 6 <= half <= 24 and line.isalpha() and line.islower()
  with pytest.raises(ValueError, match="min_len <= max_len"):
    repeats(min_len=5, max_len=3)
  config = tiny_lm_config(**{"data.dataset": "repeats", "train.num_steps": 6, "train.checkpoint_every": 2,
                             "train.eval_every": 6, "train.max_to_keep": 5})
  train_and_evaluate(config, str(tmp_path / "wd"), LMTask(config, str(tmp_path / "wd")))
  subject = load_subject(str(tmp_path / "wd"))
  out = ind.run(subject, str(tmp_path / "out"), num_tokens=4, num_samples=3, over_checkpoints=True)
  dev = out["development"]
  assert dev["steps"].tolist() == [2, 4, 6] and dev["induction"].shape == (3, 2)
  assert dev["second_copy_loss"][-1] == pytest.approx(out["second_copy_loss"], rel=1e-6)
  np.testing.assert_allclose(dev["copying"][-1], out["copying"].max(axis=1), rtol=1e-6)
  np.testing.assert_allclose(dev["induction"][-1], out["induction"].max(axis=1), rtol=1e-6)
  assert (tmp_path / "out" / "induction_steps.png").exists() and "over 3 checkpoints" in out["summary"]
  with pytest.raises(SubjectError, match="not a tfjax workdir"):
    ind.run(tiny_gpt_subject(), str(tmp_path / "x"), num_tokens=4, over_checkpoints=True)

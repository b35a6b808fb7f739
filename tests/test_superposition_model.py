"""Superposition in a trained model (tfjax.explain.superposition_model): the dimensionality through the [D, D] Gram
matrix against the toy model's [N, N] definition; known arrangements (an orthonormal basis, antipodal pairs, one
line); random directions against the law of random angles; the direction sets of every kind of model; and
``explain superposition`` with and without a workdir."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hf_bert_with_vocab
from test_explain import FIXTURES, tiny_gpt_subject, tiny_translator_subject
from tfjax.explain import commands
from tfjax.explain import superposition as sp
from tfjax.explain import superposition_model as spm
from tfjax.explain.subjects import Subject
from tfjax.tasks.word2vec_eval import WordVectors


def test_dimensionality_through_the_gram_matrix_equals_the_toy_models_definition():
  w = np.array(jax.random.normal(jax.random.key(0), (40, 6)))  # 40 directions in 6 dimensions
  w[3] = 0.0  # a direction the model does not use: dimensionality 0
  dims, _ = spm.dimensionality(jnp.asarray(w))
  np.testing.assert_allclose(dims, sp.dimensions_per_feature(jnp.asarray(w.T)), rtol=1e-5, atol=1e-7)


def test_known_arrangements():
  basis = np.eye(8, dtype=np.float32) * np.arange(1, 9, dtype=np.float32)[:, None]  # orthogonal, any lengths
  dims, effective = spm.dimensionality(jnp.asarray(basis))
  np.testing.assert_allclose(dims, 1.0, rtol=1e-6)
  pairs = np.concatenate([np.eye(4), -np.eye(4)]).astype(np.float32)  # antipodal pairs: half a dimension each
  np.testing.assert_allclose(spm.dimensionality(jnp.asarray(pairs))[0], 0.5, rtol=1e-6)
  np.testing.assert_allclose(spm.dimensionality(jnp.asarray(pairs))[1], 4.0, rtol=1e-6)  # they span 4 dims evenly
  line = np.outer(np.arange(1, 6), np.ones(7)).astype(np.float32)  # five directions on one line
  np.testing.assert_allclose(spm.dimensionality(jnp.asarray(line))[1], 1.0, rtol=1e-6)
  stats = spm.direction_statistics(basis, jax.random.key(0))
  assert stats["max_abs_cosine"] < 1e-6 and stats["mean_abs_deviation_deg"] == pytest.approx(0.0, abs=1e-4)
  assert stats["total_dims"] == pytest.approx(8.0, rel=1e-5)


def test_random_directions_look_random_and_a_shared_direction_is_seen_and_centred_away():
  """N random directions in D dims: angles follow the exact law (mean |angle - 90| as the reference's), the
  dimensionality is ~D/N; adding one shared direction to every row raises the mean cosine and collapses the
  effective dimensions, and the centred numbers undo it."""
  n, d = 3000, 64
  w = np.asarray(jax.random.normal(jax.random.key(1), (n, d)))
  stats = spm.direction_statistics(w, jax.random.key(2), max_vectors=1000)
  assert stats["sampled"] == 1000 and stats["per_dimension"] == pytest.approx(n / d)
  assert stats["mean_abs_deviation_deg"] == pytest.approx(stats["random_mean_abs_deviation_deg"], rel=0.03)
  assert abs(stats["mean_cosine"]) < 0.01 and stats["std_cosine"] == pytest.approx(d ** -0.5, rel=0.03)
  hist = stats["angle_histogram"] / stats["angle_histogram"].sum()
  centres = np.arange(spm.BINS) + 0.5
  law = sp.angle_density(centres, d) * (180.0 / spm.BINS)
  assert 0.5 * np.abs(hist - law).sum() < 0.03  # total variation from the exact law of random angles
  assert stats["mean_dims_per_direction"] == pytest.approx(d / (n + d), rel=0.05)  # D_i ~ 1 / (1 + (N-1)/D)
  assert stats["effective_dims"] == pytest.approx(stats["random_effective_dims"], rel=0.03)
  shifted = w + 3.0 * np.ones(d)  # one direction every row shares
  s2 = spm.direction_statistics(shifted, jax.random.key(2), max_vectors=1000)
  assert s2["mean_cosine"] > 0.5 and s2["effective_dims"] < 5
  assert s2["centred_effective_dims"] == pytest.approx(stats["effective_dims"], rel=0.03)
  assert abs(s2["centred_mean_cosine"]) < 0.01


def test_direction_sets_of_every_kind_of_model():
  gpt = tiny_gpt_subject()
  sets = spm.direction_sets(gpt)
  assert list(sets) == ["embed"] + [f"decoder/block_{l}/mlp/{k}" for l in range(2) for k in ("reads", "writes")]
  np.testing.assert_array_equal(sets["embed"], gpt.params["embed"]["embedding"])
  np.testing.assert_array_equal(sets["decoder/block_1/mlp/reads"],
                                np.asarray(gpt.params["decoder"]["block_1"]["mlp"]["fc_in"]["kernel"]).T)
  assert sets["decoder/block_0/mlp/writes"].shape == (64, 16)  # F = 4 D neurons writing into D = 16
  untied = spm.direction_sets(tiny_gpt_subject(tie_embeddings=False))
  assert untied["unembed"].shape == (9, 16)
  translator = spm.direction_sets(tiny_translator_subject())
  assert {"encoder/block_1/mlp/writes", "decoder/block_1/mlp/reads"} <= set(translator)
  vectors = WordVectors(["a", "b", "c"], np.eye(3, dtype=np.float32))
  assert list(spm.direction_sets(Subject("word2vec", "v", vectors=vectors))) == ["embed"]


def test_command_on_a_workdir_and_without_one(tmp_path):
  result = commands.run_command("superposition", str(FIXTURES / "hf_gpt2"), str(tmp_path / "gpt2"))
  assert (tmp_path / "gpt2" / "superposition_model.png").exists()
  assert (tmp_path / "gpt2" / "superposition_model.json").exists()
  assert "embed" in result["summary"] and "decoder/block_1/mlp/writes" in result["summary"]
  bert = commands.run_command("superposition", hf_bert_with_vocab(tmp_path), str(tmp_path / "bert"))
  assert "encoder/block_0/mlp/reads" in bert["sets"]
  vec = tmp_path / "vectors.txt"  # a word2vec vectors file: its vectors are its one set
  table = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
  vec.write_text("12 4\n" + "\n".join(f"w{i} " + " ".join(f"{x:.6f}" for x in row) for i, row in enumerate(table)))
  w2v = commands.run_command("superposition", str(vec), str(tmp_path / "w2v"))
  assert list(w2v["sets"]) == ["embed"] and w2v["sets"]["embed"]["num_vectors"] == 12
  np.testing.assert_allclose(w2v["sets"]["embed"]["dims_per_direction"],
                             spm.dimensionality(jnp.asarray(table))[0], rtol=1e-4)
  with pytest.raises(commands.SubjectError, match="takes no --quick"):  # the toy models' option, not the model's
    commands.run_command("superposition", str(FIXTURES / "hf_gpt2"), str(tmp_path / "x"), quick=True)
  # without a workdir: the toy models (their own test runs them whole: test_superposition.py)
  assert commands.resolve(commands.COMMANDS["superposition"], standalone=True) is sp.run_superposition
  with pytest.raises(commands.SubjectError, match="takes no --seed_x|its options: --steps, --seed, --quick"):
    commands.run_command("superposition", None, str(tmp_path / "toy"), seed_x=1)


def test_a_zero_direction_or_a_bad_shape_is_a_clear_error():
  with pytest.raises(ValueError, match="are zero"):
    spm.direction_statistics(np.zeros((4, 3)), jax.random.key(0))
  with pytest.raises(ValueError, match=r"must be \[N, D\]"):
    spm.direction_statistics(np.ones(5), jax.random.key(0))

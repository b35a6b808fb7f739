"""Superposition: near-orthogonality numbers against numpy, packing bounds, the toy model's readings against hand
computations, and its training against the known optima (identity when m = n, PCA-like when linear)."""

import json
import math
import os

import jax
import numpy as np
import pytest

from tfjax.explain import superposition as sp


def _np_pairwise_cosines(u):
  u = np.asarray(u, np.float64)
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  rows, cols = np.triu_indices(len(u), k=1)
  return (u @ u.T)[rows, cols]


# ---- 1. near-orthogonality ----------------------------------------------------------------------------------------


def test_near_orthogonality_matches_numpy():
  key = jax.random.key(3)
  dims, n = (3, 50), 60
  near = sp.near_orthogonality(key, dims, num_vectors=n, bins=36)
  assert near["angle_histogram"].shape == (2, 36)
  for k, d in enumerate(dims):
    u = np.asarray(sp.random_unit_vectors(jax.random.fold_in(key, d), n, d))
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
    cos = _np_pairwise_cosines(u)
    assert cos.size == n * (n - 1) // 2
    np.testing.assert_allclose(near["max_abs_cosine"][k], np.abs(cos).max(), rtol=1e-5)
    np.testing.assert_allclose(near["std_cosine"][k], cos.std(), rtol=1e-4)
    np.testing.assert_allclose(near["mean_cosine"][k], cos.mean(), atol=1e-6)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    np.testing.assert_allclose(near["mean_abs_deviation_deg"][k], np.abs(angles - 90).mean(), rtol=1e-4)
    hist, _ = np.histogram(angles, bins=36, range=(0, 180))
    assert near["angle_histogram"][k].sum() == cos.size
    assert np.abs(near["angle_histogram"][k] - hist).sum() <= 2  # float32 vs float64 angles on a bin edge
    assert near["jl_max_cosine"][k] == pytest.approx(min(1, math.sqrt(2 * math.log(n * (n - 1) / 0.5) / d)))


def test_cosine_statistics_of_random_directions():
  # E[cos] = 0 and Var[cos] = 1/d exactly; the largest |cos| shrinks with d and stays under the JL bound.
  near = sp.near_orthogonality(jax.random.key(0), (4, 64, 512), num_vectors=300)
  np.testing.assert_allclose(near["std_cosine"] * np.sqrt(near["dims"]), 1.0, atol=0.05)
  assert np.all(np.abs(near["mean_cosine"]) < 0.02)
  assert np.all(np.diff(near["max_abs_cosine"]) < 0)
  assert np.all(near["max_abs_cosine"] <= near["jl_max_cosine"])


def test_angle_density_and_cap_probability_exact_laws():
  centres = np.arange(0.05, 180, 0.1)
  for d in (2, 3, 7, 200):
    assert sp.angle_density(centres, d).sum() * 0.1 == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_allclose(sp.angle_density(centres, 3), np.sin(np.radians(centres)) / 2 * np.pi / 180)
  # d = 2: the angle is uniform; d = 3: the cosine is uniform on [-1, 1] (Archimedes).
  assert sp.cap_probability(0.3, 2) == pytest.approx(1 - 2 / math.pi * math.asin(0.3), rel=1e-5)
  assert sp.cap_probability(0.3, 3) == pytest.approx(0.7, rel=1e-5)
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 200_000, 10))
  t = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  p = sp.cap_probability(0.4, 10)
  assert abs(np.mean(np.abs(t) > 0.4) - p) < 4 * math.sqrt(p * (1 - p) / t.size)
  for d in (5, 50, 500):
    assert sp.cap_probability(0.2, d) <= 2 * math.exp(-d * 0.2**2 / 2)  # the bound the JL form rests on


def test_packing_bounds():
  # Welch is tight for the triangle in 2-D (|cos| = 1/2) and the 6 diagonals of the icosahedron in 3-D (1/sqrt 5).
  phi = (1 + math.sqrt(5)) / 2
  ico = np.array([[0, 1, phi], [0, 1, -phi], [1, phi, 0], [1, -phi, 0], [phi, 0, 1], [-phi, 0, 1]])
  assert np.abs(_np_pairwise_cosines(ico)).max() == pytest.approx(1 / math.sqrt(5))
  assert sp.welch_max_vectors(3, 1 / math.sqrt(5) + 1e-9) == 6
  assert sp.welch_max_vectors(2, 0.5 + 1e-9) == 3
  assert sp.welch_max_vectors(64, 0.2) == math.inf
  for d, eps in ((100, 0.2), (1000, 0.1), (10, 0.5)):
    n = sp.jl_num_vectors(d, eps, delta=0.5)
    assert n * (n - 1) * math.exp(-d * eps**2 / 2) <= 0.5 < (n + 1) * n * math.exp(-d * eps**2 / 2) or n == 1
  assert sp.tolerance_to_max_cosine(10) == pytest.approx(math.sin(math.radians(10)))
  copies = sp.block_copies(ico / np.linalg.norm(ico, axis=1, keepdims=True), 7)  # 2 copies in 7-D, one dim spare
  assert copies.shape == (12, 7)
  assert np.abs(_np_pairwise_cosines(copies)).max() == pytest.approx(1 / math.sqrt(5))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_packing_count_is_the_valid_prefix(seed):
  key, d, eps, block = jax.random.key(seed), 32, 0.5, 4
  count = sp.random_packing_count(key, d, eps, max_vectors=64, block=block)
  draws = np.concatenate([np.asarray(sp.random_unit_vectors(jax.random.fold_in(key, i), block, d))
                          for i in range(16)])
  c = np.abs(draws.astype(np.float64) @ draws.T.astype(np.float64))
  bad = np.triu(c > eps, k=1)  # (i, j), i < j: the pair is outside 90 deg +- 30 deg
  expected = int(np.argmax(bad.any(axis=0))) if bad.any() else 64
  assert count == expected
  assert count > block  # the prefix crosses a block boundary, so the buffer is used


def test_optimized_packing_is_feasible_and_beats_d():
  eps = sp.tolerance_to_max_cosine(20.0)
  vectors, n = sp.optimized_packing(jax.random.key(0), 4, eps, max_steps=300)
  assert vectors.shape == (n, 4)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  assert np.abs(_np_pairwise_cosines(vectors)).max() <= eps
  assert 4 < n <= sp.welch_max_vectors(4, eps)  # more than d directions, never more than Welch allows (6)


# ---- 2. the toy model ---------------------------------------------------------------------------------------------


def _regular_polygon(k):
  angles = 2 * np.pi * np.arange(k) / k
  return np.stack([np.cos(angles), np.sin(angles)])  # [2, k]: feature i's direction is column i


def test_dimensions_per_feature_hand_computed():
  tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float64).T / math.sqrt(3)  # [3, 4]
  cases = {  # W [m, n] -> D_i of every feature, by hand
      "antipodal": (np.array([[1.0, -1.0]]), [1 / 2, 1 / 2]),
      "triangle": (_regular_polygon(3), [2 / 3] * 3),
      "pentagon": (_regular_polygon(5), [2 / 5] * 5),
      "tetrahedron": (tetra, [3 / 4] * 4),
      # W_1 = (1, 0), W_2 = (1, 1): D_1 = 1 / (1 + 1); D_2 = 2 / (2 + (1/sqrt 2)^2)
      "skewed": (np.array([[1.0, 1.0], [0.0, 1.0]]), [1 / 2, 4 / 5]),
      # orthogonal features of different lengths and an unrepresented one
      "orthogonal": (np.array([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]]), [1.0, 1.0, 0.0]),
  }
  for name, (W, expected) in cases.items():
    np.testing.assert_allclose(sp.dimensions_per_feature(W), expected, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(sp.superposition_interference(cases["skewed"][0]), [1.0, 0.5], rtol=1e-5)
  np.testing.assert_allclose(sp.superposition_interference(_regular_polygon(5)), 1.5, rtol=1e-5)
  assert int(sp.features_represented(cases["orthogonal"][0])) == 1  # ||W_i|| > 0.5, strictly
  assert float(sp.model_dimensions_per_feature(_regular_polygon(5))) == pytest.approx(2 / 5)
  batch = np.stack([_regular_polygon(5), 2 * _regular_polygon(5)])  # leading batch dims, scale-free D_i
  np.testing.assert_allclose(sp.dimensions_per_feature(batch), 0.4, rtol=1e-5)
  np.testing.assert_allclose(sp.feature_norms(batch), [[1.0] * 5, [2.0] * 5], rtol=1e-5)


def test_sparse_features_distribution():
  x = np.asarray(sp.sparse_features(jax.random.key(0), 20_000, 5, 0.1))
  present = x > 0
  assert abs(present.mean() - 0.1) < 0.005
  assert 0 <= x.min() and x.max() < 1
  assert abs(x[present].mean() - 0.5) < 0.01


def test_dense_square_model_recovers_every_feature():
  # m = n, dense features: both models learn the identity W^T W = I (every feature its own dimension) and b = 0.
  n = 6
  result = sp.train_toy_models(jax.random.key(0), [0.0, 0.0], num_features=n, num_hidden=n, relu=[False, True],
                               steps=1500, batch_size=256, learning_rate=1e-2)
  report = sp.toy_model_report(result)
  for i in range(2):
    np.testing.assert_allclose(report["gram"][i], np.eye(n), atol=0.05)
    np.testing.assert_allclose(result["b"][i], 0.0, atol=0.05)
    assert report["features_represented"][i] == n
    np.testing.assert_allclose(report["dimensions_per_feature"][i], 1.0, atol=0.02)
  assert report["final_loss"].max() < 1e-3
  assert result["losses"].shape == (1500, 2)


def test_linear_model_is_pca_like():
  # The linear model's optimum is the projection on the top-m directions of importance-weighted variance: the m
  # most important features exactly (importance_i * Var(x_i), Var = p/3 - p^2/4 for probability p), never more.
  n, m, sparsities = 8, 3, [0.0, 0.5]
  result = sp.train_toy_models(jax.random.key(1), sparsities, num_features=n, num_hidden=m, relu=False,
                               steps=2000, batch_size=256, learning_rate=1e-2)
  report = sp.toy_model_report(result)
  importance = 0.7 ** np.arange(n)
  for i, s in enumerate(sparsities):
    p = 1 - s
    weighted_variance = importance * (p / 3 - p**2 / 4)
    top = np.argsort(-weighted_variance)[:m]
    projection = np.zeros((n, n))
    projection[top, top] = 1.0
    np.testing.assert_allclose(report["gram"][i], projection, atol=0.06)
    assert report["features_represented"][i] == m


def test_bad_inputs_are_named():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="sparsity"):
    sp.train_toy_models(key, [0.5, 1.0], steps=2)
  with pytest.raises(ValueError, match="one bool per sparsity"):
    sp.train_toy_models(key, [0.5, 0.9], relu=[True], steps=2)
  with pytest.raises(ValueError, match="steps"):
    sp.train_toy_models(key, [0.5], steps=0)
  with pytest.raises(ValueError, match="20 features"):
    sp.ToyModel(num_features=20, num_hidden=5).init(key, np.zeros((1, 7), np.float32))
  with pytest.raises(ValueError, match="tolerance"):
    sp.packing_numbers(key, (4,), tolerance_deg=95)
  with pytest.raises(ValueError, match="dims"):
    sp.near_orthogonality(key, (1, 8))
  with pytest.raises(ValueError, match="max_cosine"):
    sp.random_packing_count(key, 8, 1.5)
  with pytest.raises(ValueError, match="seed"):
    sp.run_superposition("/tmp/unused", seed="x")


# ---- 3. the whole command -----------------------------------------------------------------------------------------


def test_quick_run_writes_its_files(tmp_path):
  out = sp.run_superposition(str(tmp_path), quick=True, seed=1)
  names = ["superposition_angles.png", "superposition_packing.png", "superposition_toy_models.png",
           "superposition_dimensionality.png", "superposition.json"]
  for name in names:
    assert (tmp_path / name).stat().st_size > 1000, name
  assert sorted(os.path.basename(p) for p in out["files"].values()) == sorted(names)
  with open(tmp_path / "superposition.json") as f:
    saved = json.load(f)
  assert saved["sparsities"] == list(sp.PAPER_SPARSITIES)
  assert saved["optimizer"]["weight_decay"] == 0.01
  for name in ("linear", "ReLU"):
    W = np.asarray(saved["toy_models"][name]["W"])
    assert W.shape == (7, 5, 20)
    assert saved["toy_models"][name]["features_represented"] == list(
        (np.linalg.norm(W, axis=1) > 0.5).sum(axis=1))
  assert "ReLU feats" in out["summary"] and "JL bound" in out["summary"]


@pytest.mark.slow
def test_paper_setting_linear_m_features_relu_superposes():
  # The paper's run (10,000 steps): linear represents m = 5 features at every S; ReLU 5 when dense, > 2m when sparse.
  s = sp.PAPER_SPARSITIES
  result = sp.train_toy_models(jax.random.key(0), s * 2, relu=[False] * len(s) + [True] * len(s))
  represented = np.asarray(sp.features_represented(result["W"]))
  assert list(represented[: len(s)]) == [5] * len(s)
  assert represented[len(s)] == 5 and represented[-1] > 10

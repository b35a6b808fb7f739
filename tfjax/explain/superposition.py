"""Superposition: near-orthogonal directions in high dimensions, and the toy model of Elhage et al. (2022).

Two questions of the notes, answered with numbers:

1. *Near-orthogonality.* In ``d`` dimensions only ``d`` directions are exactly orthogonal, but far more are *nearly*
   so. :func:`near_orthogonality` measures the pairwise angles of ``N`` random unit vectors as ``d`` grows (their
   distribution concentrates at 90 degrees: the cosine has mean 0 and variance exactly ``1/d``) and compares the
   largest ``|cos|`` with the Johnson-Lindenstrauss bound :func:`jl_max_cosine`. :func:`random_packing_count` and
   :func:`optimized_packing` count how many directions fit with *every* pair within ``90 deg +- tolerance``: random
   draws (a lower bound) and a packing optimised by gradient descent (a larger lower bound), against the Welch upper
   bound :func:`welch_max_vectors`.
2. *The toy model of superposition* (Elhage et al. 2022, "Toy Models of Superposition"): ``n`` sparse features
   (each 0 with probability ``S``, else uniform in ``[0, 1)``) of importance ``decay**i`` squeezed through ``m < n``
   hidden dimensions, ``h = W x`` and ``x' = ReLU(W^T h + b)`` (or the linear ``x' = W^T h + b``).
   :func:`train_toy_models` trains one model per feature probability, all instances in one ``vmap``-ed, jitted
   ``lax.scan``; :func:`feature_norms`, :func:`superposition_interference`, :func:`dimensions_per_feature` and
   :func:`features_represented` read the trained ``W``.

:func:`run_superposition` does both, writes the pictures (:mod:`tfjax.explain.superposition_plots`) and a JSON of the
numbers, and is what ``./launch.sh explain superposition`` runs. Shapes: ``W`` is ``[m, n]`` as in the paper, so
feature ``i``'s direction in the hidden space is the column ``W[:, i]`` (written ``W_i``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# The paper's sparsities S (feature probability 1 - S = 1, .3, .1, .03, .01, .003, .001).
PAPER_SPARSITIES = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997, 0.999)
# Dimensions per feature at which the paper finds features "stick" (digon 1/2, triangle 2/3, pentagon 2/5, ...).
STICKY_FRACTIONS = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8)
# torch.optim.AdamW's default weight decay, which the paper's notebook uses (optax.adamw's default is 1e-4).
PAPER_WEIGHT_DECAY = 0.01


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_max_cosine(max_cosine: float) -> float:
  if not 0.0 < float(max_cosine) < 1.0:
    raise ValueError(f"max_cosine must be in (0, 1) (the |cos| of 90 deg +- tolerance), got {max_cosine!r}")
  return float(max_cosine)


def tolerance_to_max_cosine(tolerance_deg: float) -> float:
  """``|cos|`` allowed when every angle must lie in ``90 deg +- tolerance_deg``: ``sin(tolerance)``."""
  if not 0.0 < float(tolerance_deg) < 90.0:
    raise ValueError(f"the angle tolerance must be in (0, 90) degrees, got {tolerance_deg!r}")
  return math.sin(math.radians(tolerance_deg))


# ---------------------------------------------------------------------------------------------------------------
# 1. Near-orthogonality
# ---------------------------------------------------------------------------------------------------------------


def random_unit_vectors(key: jax.Array, num_vectors: int, dim: int) -> jax.Array:
  """``[num_vectors, dim]`` unit vectors drawn uniformly on the sphere (normalised standard normals)."""
  num_vectors = _check_positive_int("num_vectors", num_vectors)
  dim = _check_positive_int("dim", dim)
  v = jax.random.normal(key, (num_vectors, dim), jnp.float32)
  return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def cosine_matrix(vectors_NxD: jax.Array) -> jax.Array:
  """``[N, N]`` cosines of the angles between the rows of ``vectors_NxD`` (any non-zero lengths)."""
  u = vectors_NxD / jnp.linalg.norm(vectors_NxD, axis=-1, keepdims=True)
  return jnp.matmul(u, u.T, precision=jax.lax.Precision.HIGHEST)


def pairwise_cosines(vectors_NxD: jax.Array) -> jax.Array:
  """``[N (N - 1) / 2]`` cosines of every pair ``i < j`` of rows (row-major order of the upper triangle)."""
  n = vectors_NxD.shape[0]
  if n < 2:
    raise ValueError(f"pairwise cosines need at least 2 vectors, got {n}")
  rows, cols = np.triu_indices(n, k=1)
  return cosine_matrix(vectors_NxD)[rows, cols]


def max_abs_off_diagonal(cosines_NxN: jax.Array) -> jax.Array:
  """The largest ``|cos|`` between two different vectors of a cosine matrix ``[N, N]`` (the diagonal is ignored)."""
  off_diagonal = ~jnp.eye(cosines_NxN.shape[-1], dtype=bool)
  return jnp.max(jnp.where(off_diagonal, jnp.abs(cosines_NxN), 0.0), axis=(-2, -1))


def angle_density(angles_deg: np.ndarray, dim: int) -> np.ndarray:
  """Exact density (per degree) of the angle between two independent uniform unit vectors in ``dim >= 2``
  dimensions: ``p(theta) = sin(theta)^(d-2) / Z`` with ``Z = sqrt(pi) Gamma((d-1)/2) / Gamma(d/2)`` (per radian)."""
  dim = _check_positive_int("dim", dim, 2)
  theta = np.radians(np.asarray(angles_deg, np.float64))
  log_z = 0.5 * math.log(math.pi) + math.lgamma((dim - 1) / 2) - math.lgamma(dim / 2)
  with np.errstate(divide="ignore"):
    log_p = (dim - 2) * np.log(np.abs(np.sin(theta))) - log_z if dim > 2 else np.full_like(theta, -log_z)
  return np.exp(log_p) * (math.pi / 180.0)


def cap_probability(max_cosine: float, dim: int) -> float:
  """Exact ``P(|u . v| > max_cosine)`` for independent uniform unit vectors ``u, v`` in ``dim`` dimensions.

  ``u . v = t`` has density ``(1 - t^2)^((d-3)/2) / B(1/2, (d-1)/2)``, so the two-sided tail is the regularised
  incomplete beta function ``I_{1 - eps^2}((d - 1) / 2, 1 / 2)``."""
  max_cosine = _check_max_cosine(max_cosine)
  dim = _check_positive_int("dim", dim, 2)
  a = jnp.asarray((dim - 1) / 2, jnp.float32)
  return float(jax.scipy.special.betainc(a, jnp.float32(0.5), jnp.float32(1.0 - max_cosine**2)))


def jl_max_cosine(num_vectors: int, dim: int, delta: float = 0.5) -> float:
  """The Johnson-Lindenstrauss bound on the largest ``|cos|`` among ``num_vectors`` random unit vectors.

  Form used: the spherical-cap bound ``P(|u . v| >= eps) <= 2 exp(-d eps^2 / 2)`` for two uniform unit vectors
  (Ball 1997, Lemma 2.2), with a union bound over the ``N (N - 1) / 2`` pairs: with probability at least
  ``1 - delta`` every pair has ``|cos| <= eps = sqrt(2 ln(N (N - 1) / delta) / d)`` (capped at 1). Equivalently
  ``d = 2 ln(N^2 / delta) / eps^2`` dimensions hold ``N`` directions within ``eps`` of orthogonal: ``O(log N /
  eps^2)``, the JL lemma's dimension."""
  num_vectors = _check_positive_int("num_vectors", num_vectors, 2)
  dim = _check_positive_int("dim", dim)
  if not 0.0 < delta < 1.0:
    raise ValueError(f"delta must be in (0, 1), got {delta!r}")
  return min(1.0, math.sqrt(2.0 * math.log(num_vectors * (num_vectors - 1) / delta) / dim))


def jl_num_vectors(dim: int, max_cosine: float, delta: float = 0.5) -> int:
  """The JL bound read the other way: the largest ``N`` with ``N (N - 1) exp(-d eps^2 / 2) <= delta``, so that ``N``
  random unit vectors are all within ``|cos| <= eps`` of each other with probability ``>= 1 - delta`` (hence at
  least that many such directions exist). Grows as ``exp(d eps^2 / 4)``."""
  max_cosine = _check_max_cosine(max_cosine)
  dim = _check_positive_int("dim", dim)
  log_room = math.log(delta) + dim * max_cosine**2 / 2  # log of N (N - 1) allowed
  n = int(0.5 + math.sqrt(0.25 + math.exp(min(log_room, 700.0))))
  while n * (n - 1) > math.exp(min(log_room, 700.0)):
    n -= 1
  return max(n, 1)


def welch_max_vectors(dim: int, max_cosine: float) -> float:
  """The Welch upper bound on how many unit vectors in ``dim`` dimensions can have every ``|cos| <= max_cosine``.

  Welch (1974): ``N`` unit vectors with ``N > d`` have ``max |cos|^2 >= (N - d) / (d (N - 1))``; so when
  ``d eps^2 < 1``, ``N <= d (1 - eps^2) / (1 - d eps^2)``. Returns ``inf`` when ``d eps^2 >= 1`` (no bound)."""
  max_cosine = _check_max_cosine(max_cosine)
  dim = _check_positive_int("dim", dim)
  if dim * max_cosine**2 >= 1.0:
    return math.inf
  return float(math.floor(dim * (1 - max_cosine**2) / (1 - dim * max_cosine**2) + 1e-9))


@functools.partial(jax.jit, static_argnames=("num_vectors", "dim", "bins"))
def _angle_statistics(key, num_vectors: int, dim: int, bins: int):
  v = random_unit_vectors(key, num_vectors, dim)
  cos = pairwise_cosines(v)
  angles = jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
  hist, _ = jnp.histogram(angles, bins=bins, range=(0.0, 180.0))
  return {"max_abs_cosine": jnp.max(jnp.abs(cos)), "mean_cosine": jnp.mean(cos), "std_cosine": jnp.std(cos),
          "mean_abs_deviation_deg": jnp.mean(jnp.abs(angles - 90.0)), "angle_histogram": hist}


def near_orthogonality(key: jax.Array, dims: Sequence[int] = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), *,
                       num_vectors: int = 1000, bins: int = 180, delta: float = 0.5) -> dict:
  """Pairwise angles of ``num_vectors`` random unit vectors in each of ``dims`` dimensions.

  Returns numpy arrays over ``dims`` (length ``D``): ``max_abs_cosine``, ``mean_cosine``, ``std_cosine`` (expected
  ``1/sqrt(d)``), ``mean_abs_deviation_deg`` (mean ``|angle - 90|``), ``jl_max_cosine`` (:func:`jl_max_cosine` at
  ``delta``), ``angle_histogram [D, bins]`` (counts of the ``N (N - 1) / 2`` angles over ``bins`` equal bins of
  ``[0, 180]`` degrees) and ``bin_edges_deg [bins + 1]``. Vector set ``k`` is drawn with ``fold_in(key, d)``."""
  num_vectors = _check_positive_int("num_vectors", num_vectors, 2)
  bins = _check_positive_int("bins", bins)
  if not dims:
    raise ValueError("dims must name at least one dimension")
  dims = [_check_positive_int("each of dims", d, 2) for d in dims]
  stats = [jax.device_get(_angle_statistics(jax.random.fold_in(key, d), num_vectors, d, bins)) for d in dims]
  out = {name: np.stack([s[name] for s in stats]) for name in stats[0]}
  out.update(dims=np.asarray(dims), num_vectors=num_vectors, delta=delta,
             jl_max_cosine=np.asarray([jl_max_cosine(num_vectors, d, delta) for d in dims]),
             bin_edges_deg=np.linspace(0.0, 180.0, bins + 1))
  return out


@functools.partial(jax.jit, static_argnames=("max_cosine",))
def _accepted_prefix(buffer_CxD, count, block_BxD, max_cosine: float):
  """How many leading rows of ``block`` keep every pair (with the first ``count`` rows of the buffer and among
  themselves) within ``|cos| <= max_cosine``."""
  capacity, block = buffer_CxD.shape[0], block_BxD.shape[0]
  filled = jnp.arange(capacity) < count  # [C] which buffer rows hold vectors
  hi = jax.lax.Precision.HIGHEST  # full float32 cosines on every backend (TF32 would move pairs across the limit)
  with_buffer = jnp.abs(jnp.matmul(block_BxD, buffer_CxD.T, precision=hi)) > max_cosine  # [B, C]
  clash_buffer = jnp.any(with_buffer & filled[None, :], axis=1)
  earlier = jnp.arange(block)[None, :] < jnp.arange(block)[:, None]  # [B, B]: column j before row i
  clash_block = jnp.any((jnp.abs(jnp.matmul(block_BxD, block_BxD.T, precision=hi)) > max_cosine) & earlier, axis=1)
  clash = clash_buffer | clash_block
  return jnp.where(jnp.any(clash), jnp.argmax(clash), block)


def random_packing_count(key: jax.Array, dim: int, max_cosine: float, *, max_vectors: int = 2048,
                         block: int = 256) -> int:
  """Random draws: how many i.i.d. uniform unit vectors in ``dim`` dimensions are drawn before the first pair with
  ``|cos| > max_cosine`` (the length of the valid prefix of the sequence). Capped at ``max_vectors``."""
  dim = _check_positive_int("dim", dim)
  max_cosine = _check_max_cosine(max_cosine)
  max_vectors = _check_positive_int("max_vectors", max_vectors)
  block = min(_check_positive_int("block", block), max_vectors)
  buffer = jnp.zeros((max_vectors, dim), jnp.float32)
  count = 0
  for i in range(-(-max_vectors // block)):
    new = random_unit_vectors(jax.random.fold_in(key, i), block, dim)
    take = min(int(_accepted_prefix(buffer, count, new, max_cosine)), max_vectors - count)
    buffer = jax.lax.dynamic_update_slice(buffer, new[:take], (count, 0)) if take else buffer
    count += take
    if take < block or count >= max_vectors:
      break
  return count


def _packing_penalty(vectors_NxD, target: float):
  """Soft penalty ``sum_{i != j} relu(|cos_ij| - target)^2`` and the largest off-diagonal ``|cos|``."""
  cos = cosine_matrix(vectors_NxD)
  off_diagonal = ~jnp.eye(cos.shape[0], dtype=bool)
  excess = jnp.where(off_diagonal, jax.nn.relu(jnp.abs(cos) - target), 0.0)
  return jnp.sum(excess**2), jnp.max(jnp.where(off_diagonal, jnp.abs(cos), 0.0))


@functools.partial(jax.jit, static_argnames=("max_steps",))
def _optimize_packing(vectors_NxD, max_cosine, learning_rate, max_steps: int):
  """Adam on :func:`_packing_penalty` (target 2% inside ``max_cosine``) until every pair is within ``max_cosine``
  or ``max_steps``; returns the unit vectors, their largest ``|cos|`` and the steps taken."""
  tx = optax.adam(learning_rate)
  grad_fn = jax.value_and_grad(_packing_penalty, has_aux=True)

  def cond(carry):
    _, _, step, worst = carry
    return (step < max_steps) & (worst > max_cosine)

  def body(carry):
    v, opt_state, step, _ = carry
    (_, worst), g = grad_fn(v, 0.98 * max_cosine)
    updates, opt_state = tx.update(g, opt_state, v)
    # `worst` is the largest |cos| of `v` before this update: the loop stops on the first feasible iterate.
    return jnp.where(worst > max_cosine, optax.apply_updates(v, updates), v), opt_state, step + 1, worst

  _, worst0 = _packing_penalty(vectors_NxD, max_cosine)
  v, _, steps, _ = jax.lax.while_loop(cond, body, (vectors_NxD, tx.init(vectors_NxD), 0, worst0))
  u = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  return u, max_abs_off_diagonal(cosine_matrix(u)), steps


def block_copies(vectors_NxK: np.ndarray, dim: int) -> np.ndarray:
  """``[(dim // K) N, dim]``: ``dim // K`` copies of a packing of ``N`` vectors in ``K`` dimensions, each in its own
  block of coordinates (the rest zero). Vectors of different copies are orthogonal, so the largest ``|cos|`` is
  unchanged: ``d`` dimensions hold at least ``floor(d / K)`` times what ``K`` do."""
  vectors_NxK = np.asarray(vectors_NxK, np.float32)
  n, k = vectors_NxK.shape
  if not 1 <= k <= dim:
    raise ValueError(f"a packing in {k} dimensions cannot be copied into {dim}")
  out = np.zeros(((dim // k) * n, dim), np.float32)
  for c in range(dim // k):
    out[c * n:(c + 1) * n, c * k:(c + 1) * k] = vectors_NxK
  return out


def optimized_packing(key: jax.Array, dim: int, max_cosine: float, *, init: np.ndarray | None = None,
                      growth: float = 1.2, max_steps: int = 300, learning_rate: float = 0.01,
                      max_vectors: int = 4096) -> tuple[np.ndarray, int]:
  """An optimised packing: the most unit vectors in ``dim`` dimensions found with every pair within ``|cos| <=
  max_cosine``, by gradient descent (Adam) on the soft penalty ``sum_{i != j} relu(|cos_ij| - 0.98 eps)^2``.

  Starts from ``init`` (a packing ``[N, K]`` with ``K <= dim``, copied in by :func:`block_copies`) or from ``dim``
  random vectors; after each feasible packing adds ``growth`` times more random vectors and re-optimises from there
  (warm start) for at most ``max_steps`` steps; stops at the first size it cannot make feasible or at
  ``max_vectors``. Returns ``(vectors [N, dim], N)`` of the largest feasible packing (every off-diagonal ``|cos| <=
  max_cosine``, checked) -- a lower bound on the true packing number."""
  dim = _check_positive_int("dim", dim)
  max_cosine = _check_max_cosine(max_cosine)
  if not growth > 1.0:
    raise ValueError(f"growth must be > 1, got {growth!r}")
  max_vectors = _check_positive_int("max_vectors", max_vectors)
  if init is None:
    v = random_unit_vectors(jax.random.fold_in(key, 0), min(dim, max_vectors), dim)
  else:
    v = jnp.asarray(block_copies(init, dim)[:max_vectors])
  n = v.shape[0]
  best = np.zeros((0, dim), np.float32)
  for round_ in range(1, 10_000):
    u, worst, _ = _optimize_packing(v, jnp.float32(max_cosine), jnp.float32(learning_rate), max_steps)
    if n > 1 and float(worst) > max_cosine:
      break
    best = np.asarray(u)
    if n >= max_vectors:
      break
    extra = min(max(1, int(n * (growth - 1.0))), max_vectors - n)
    v = jnp.concatenate([u, random_unit_vectors(jax.random.fold_in(key, round_), extra, dim)])
    n += extra
  return best, best.shape[0]


def packing_numbers(key: jax.Array, dims: Sequence[int], tolerance_deg: float = 10.0, *,
                    random_dims: Sequence[int] | None = None, random_trials: int = 5, optimize: bool = True,
                    growth: float = 1.2, max_steps: int = 300, max_vectors: int = 4096) -> dict:
  """How many directions fit with every pair within ``90 deg +- tolerance_deg``, as the dimension grows.

  For each ``d`` in ``dims``: ``optimized`` (:func:`optimized_packing`, if ``optimize``), ``welch`` (upper bound,
  ``inf`` where none) and ``jl`` (:func:`jl_num_vectors` with ``delta = 1/2``); for each ``d`` in ``random_dims``
  (default ``dims``): ``random_median`` / ``random_counts [trials]`` (:func:`random_packing_count`) and
  ``random_jl``. Arrays over
  the dims; ``max_cosine = sin(tolerance)``."""
  eps = tolerance_to_max_cosine(tolerance_deg)
  dims = [_check_positive_int("each of dims", d, 2) for d in dims]
  random_dims = dims if random_dims is None else [_check_positive_int("each of random_dims", d, 2)
                                                  for d in random_dims]
  random_trials = _check_positive_int("random_trials", random_trials)
  out = {"tolerance_deg": float(tolerance_deg), "max_cosine": eps, "dims": np.asarray(dims),
         "welch": np.asarray([welch_max_vectors(d, eps) for d in dims]),
         "jl": np.asarray([jl_num_vectors(d, eps) for d in dims]),
         "random_dims": np.asarray(random_dims), "random_max_vectors": max_vectors,
         "random_jl": np.asarray([jl_num_vectors(d, eps) for d in random_dims])}
  counts = [[random_packing_count(jax.random.fold_in(jax.random.fold_in(key, d), t), d, eps, max_vectors=max_vectors)
             for t in range(random_trials)] for d in random_dims]
  out["random_counts"] = np.asarray(counts)
  out["random_median"] = np.median(out["random_counts"], axis=1)
  if optimize:
    previous, found = None, []
    for d in sorted(dims):  # each search starts from copies of the last packing (block_copies: still feasible)
      init = previous if previous is not None and previous.shape[1] <= d and len(previous) else None
      previous, n = optimized_packing(jax.random.fold_in(key, 10_000 + d), d, eps, init=init, growth=growth,
                                      max_steps=max_steps, max_vectors=max_vectors)
      found.append(n)
    out["optimized"] = np.asarray([found[sorted(dims).index(d)] for d in dims])
  return out


# ---------------------------------------------------------------------------------------------------------------
# 2. The toy model of superposition (Elhage et al. 2022)
# ---------------------------------------------------------------------------------------------------------------


class ToyModel(nn.Module):
  """The paper's toy model: ``x [B, n] -> h = W x [B, m] -> x' = ReLU(W^T h + b) [B, n]`` (``relu=False``: the
  linear model ``x' = W^T W x + b``). Parameters ``W [m, n]`` (Xavier/Glorot normal, ``std = sqrt(2 / (m + n))``,
  untruncated as torch's ``xavier_normal_``) and ``b [n]`` (zeros).

  ``use_relu`` (a boolean scalar array, optional) overrides ``relu`` at call time, so that linear and ReLU instances
  can share one ``vmap``-ed training."""
  num_features: int
  num_hidden: int
  relu: bool = True

  @nn.compact
  def __call__(self, x_BxN: jax.Array, use_relu: jax.Array | None = None) -> jax.Array:
    if x_BxN.shape[-1] != self.num_features:
      raise ValueError(f"ToyModel has {self.num_features} features; got input of shape {x_BxN.shape}")
    W = self.param("W", nn.initializers.variance_scaling(1.0, "fan_avg", "normal"),
                   (self.num_hidden, self.num_features))
    b = self.param("b", nn.initializers.zeros, (self.num_features,))
    h_BxM = x_BxN @ W.T
    out_BxN = h_BxM @ W + b
    if use_relu is None:
      return nn.relu(out_BxN) if self.relu else out_BxN
    return jnp.where(use_relu, nn.relu(out_BxN), out_BxN)


def sparse_features(key: jax.Array, batch_size: int, num_features: int, feature_probability) -> jax.Array:
  """``[batch_size, num_features]`` synthetic features: each independently present with probability
  ``feature_probability`` (= 1 - S; a scalar or ``[num_features]``) and then uniform in ``[0, 1)``, else 0."""
  present_key, value_key = jax.random.split(key)
  present_BxN = jax.random.bernoulli(present_key, feature_probability, (batch_size, num_features))
  values_BxN = jax.random.uniform(value_key, (batch_size, num_features))
  return jnp.where(present_BxN, values_BxN, 0.0)


def importance_weighted_loss(x_BxN: jax.Array, x_hat_BxN: jax.Array, importance_N: jax.Array) -> jax.Array:
  """The paper's loss: ``mean over batch and features of importance_i (x_i - x'_i)^2`` (a scalar)."""
  return jnp.mean(importance_N * (x_BxN - x_hat_BxN) ** 2)


def feature_importance(num_features: int, decay: float = 0.7) -> jax.Array:
  """``[num_features]`` importances ``decay**i`` (feature 0 the most important)."""
  num_features = _check_positive_int("num_features", num_features)
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"importance decay must be in (0, 1], got {decay!r}")
  return decay ** jnp.arange(num_features, dtype=jnp.float32)


def _check_sparsities(sparsities) -> np.ndarray:
  s = np.asarray(sparsities, np.float64)
  if s.ndim != 1 or s.size == 0:
    raise ValueError(f"sparsities must be a non-empty list of numbers, got {sparsities!r}")
  if np.any(~np.isfinite(s)) or np.any(s < 0.0) or np.any(s >= 1.0):
    raise ValueError(f"every sparsity S (probability that a feature is 0) must be in [0, 1), got {s.tolist()}")
  return s


@functools.partial(jax.jit, static_argnames=("model", "steps", "batch_size", "learning_rate", "weight_decay"))
def _train(key, feature_probability_I, use_relu_I, importance_N, *, model: ToyModel, steps: int, batch_size: int,
           learning_rate: float, weight_decay: float):
  num_instances = feature_probability_I.shape[0]
  init_key, data_key = jax.random.split(key)
  dummy = jnp.zeros((1, model.num_features), jnp.float32)
  params = jax.vmap(model.init, in_axes=(0, None))(jax.random.split(init_key, num_instances), dummy)
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def losses_I(p, x_IxBxN):
    x_hat = jax.vmap(model.apply)(p, x_IxBxN, use_relu_I)
    return jax.vmap(importance_weighted_loss, in_axes=(0, 0, None))(x_IxBxN, x_hat, importance_N)

  def total_loss(p, x):  # instances are independent: the gradient of the sum is each one's own gradient
    per_instance = losses_I(p, x)
    return jnp.sum(per_instance), per_instance

  grad_fn = jax.grad(total_loss, has_aux=True)

  def step(carry, t):
    p, opt_state = carry
    keys = jax.random.split(jax.random.fold_in(data_key, t), num_instances)
    x_IxBxN = jax.vmap(sparse_features, in_axes=(0, None, None, 0))(keys, batch_size, model.num_features,
                                                                       feature_probability_I)
    grads, per_instance = grad_fn(p, x_IxBxN)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), per_instance

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
  return params["params"], losses


def train_toy_models(key: jax.Array, sparsities: Sequence[float], *, num_features: int = 20, num_hidden: int = 5,
                     importance_decay: float = 0.7, relu: bool | Sequence[bool] = True, steps: int = 10_000,
                     batch_size: int = 1024, learning_rate: float = 1e-3,
                     weight_decay: float = PAPER_WEIGHT_DECAY) -> dict:
  """Trains one :class:`ToyModel` per entry of ``sparsities`` (``I`` instances; repeat an ``S`` for more seeds),
  all in one ``vmap``-ed, jitted ``lax.scan`` over ``steps`` steps of AdamW (``optax.adamw``; every instance gets
  its own initialisation and batches of ``batch_size`` fresh samples of :func:`sparse_features` at ``1 - S``).
  ``relu``: one bool for all instances, or one per instance (``False``: the linear model), so linear and ReLU
  models train together.

  ``weight_decay`` defaults to torch AdamW's 0.01 as in the paper's notebook (optax's own default is 1e-4); it
  decays ``W`` and ``b``. Returns numpy ``W [I, m, n]``, ``b [I, n]``, ``losses [steps, I]`` (the importance-weighted
  loss of each step's batch), ``sparsities [I]``, ``relu [I]`` and ``importance [n]``."""
  s = _check_sparsities(sparsities)
  use_relu = np.broadcast_to(np.asarray(relu), s.shape) if np.ndim(relu) == 0 else np.asarray(relu)
  if use_relu.shape != s.shape or use_relu.dtype != bool:
    raise ValueError(f"relu must be a bool or one bool per sparsity ({s.size}), got {relu!r}")
  num_features = _check_positive_int("num_features", num_features)
  num_hidden = _check_positive_int("num_hidden", num_hidden)
  steps = _check_positive_int("steps", steps)
  batch_size = _check_positive_int("batch_size", batch_size)
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
  if not weight_decay >= 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
  importance = feature_importance(num_features, importance_decay)
  model = ToyModel(num_features=num_features, num_hidden=num_hidden)
  params, losses = _train(key, jnp.asarray(1.0 - s, jnp.float32), jnp.asarray(use_relu), importance, model=model,
                          steps=steps,
                          batch_size=batch_size, learning_rate=float(learning_rate),
                          weight_decay=float(weight_decay))
  params, losses = jax.device_get((params, losses))
  return {"W": np.asarray(params["W"]), "b": np.asarray(params["b"]), "losses": np.asarray(losses),
          "sparsities": s, "importance": np.asarray(importance), "relu": use_relu.copy()}


def feature_norms(W_MxN: jax.Array) -> jax.Array:
  """``[..., n]`` the length ``||W_i||`` of each feature's direction (the columns of ``W [..., m, n]``)."""
  return jnp.linalg.norm(W_MxN, axis=-2)


def feature_overlaps(W_MxN: jax.Array) -> jax.Array:
  """``[..., n, n]``: entry ``(i, j)`` is ``W_hat_i . W_j`` (row ``i`` of ``W^T W`` over ``||W_i||``; a row of a
  zero feature is 0)."""
  gram_NxN = jnp.swapaxes(W_MxN, -1, -2) @ W_MxN
  norms = feature_norms(W_MxN)[..., :, None]
  return jnp.where(norms > 0, gram_NxN / jnp.where(norms > 0, norms, 1.0), 0.0)


def superposition_interference(W_MxN: jax.Array) -> jax.Array:
  """``[..., n]`` how much each feature shares its direction: ``sum_{j != i} (W_hat_i . W_j)^2`` (the paper's
  colour of the feature-norm bars; 0 for a feature with a dimension to itself)."""
  overlaps = feature_overlaps(W_MxN)
  off_diagonal = ~jnp.eye(overlaps.shape[-1], dtype=bool)
  return jnp.sum(jnp.where(off_diagonal, overlaps**2, 0.0), axis=-1)


def dimensions_per_feature(W_MxN: jax.Array) -> jax.Array:
  """``[..., n]`` the paper's feature dimensionality ``D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2`` (the sum over all
  ``j``, ``i`` included): 1 for a feature with its own dimension, 1/2 for an antipodal pair, 2/5 for a pentagon; 0
  for a feature that is not represented at all (``W_i = 0``)."""
  norms_sq = feature_norms(W_MxN) ** 2
  denominator = jnp.sum(feature_overlaps(W_MxN) ** 2, axis=-1)
  return jnp.where(denominator > 0, norms_sq / jnp.where(denominator > 0, denominator, 1.0), 0.0)


def features_represented(W_MxN: jax.Array, threshold: float = 0.5) -> jax.Array:
  """``[...]`` how many features the model represents: ``||W_i|| > threshold`` (the paper's 0.5)."""
  return jnp.sum(feature_norms(W_MxN) > threshold, axis=-1)


def model_dimensions_per_feature(W_MxN: jax.Array) -> jax.Array:
  """``[...]`` the paper's ``D* = m / ||W||_F^2``: hidden dimensions per (norm-weighted) feature learned."""
  return W_MxN.shape[-2] / jnp.sum(W_MxN**2, axis=(-2, -1))


def toy_model_report(result: dict, threshold: float = 0.5) -> dict:
  """The numbers of :func:`train_toy_models`' ``result`` per instance: ``features_represented [I]``,
  ``feature_norms [I, n]``, ``interference [I, n]``, ``dimensions_per_feature [I, n]``, ``model_dimensions_per_feature
  [I]``, ``gram [I, n, n]`` (``W^T W``), ``final_loss [I]`` (mean of the last 100 steps' losses)."""
  W = jnp.asarray(result["W"])
  tail = result["losses"][-min(100, len(result["losses"])):]
  return jax.device_get({
      "features_represented": features_represented(W, threshold), "feature_norms": feature_norms(W),
      "interference": superposition_interference(W), "dimensions_per_feature": dimensions_per_feature(W),
      "model_dimensions_per_feature": model_dimensions_per_feature(W),
      "gram": jnp.swapaxes(W, -1, -2) @ W, "final_loss": jnp.asarray(tail.mean(axis=0))})


# ---------------------------------------------------------------------------------------------------------------
# 3. Everything, for `./launch.sh explain superposition`
# ---------------------------------------------------------------------------------------------------------------


def _summary_table(sparsities, reports: dict, timings: dict, near: dict, pack: dict, train_kwargs: dict,
                   quick: bool) -> str:
  names = list(reports)
  lines = ["toy model of superposition: n = 20 features, m = 5 hidden, importance 0.7^i, "
           f"{train_kwargs['steps']} steps of batch {train_kwargs['batch_size']}"
           + (" (quick run: far from converged)" if quick else ""),
           "(features represented: ||W_i|| > 0.5; D* = m / ||W||_F^2)",
           f"{'S':>6} {'1-S':>6} " + " ".join(f"{name + ' feats':>12} {name + ' D*':>9}" for name in names)]
  for i, s in enumerate(sparsities):
    lines.append(f"{s:>6g} {1 - s:>6.3g} " + " ".join(
        f"{int(reports[n]['features_represented'][i]):>12d} {reports[n]['model_dimensions_per_feature'][i]:>9.3f}"
        for n in names))
  k = list(near["dims"]).index(max(near["dims"]))
  lines.append(f"near-orthogonality: {near['num_vectors']} random unit vectors in d = {near['dims'][k]}: largest "
               f"|cos| {near['max_abs_cosine'][k]:.3f} (JL bound {near['jl_max_cosine'][k]:.3f}), mean |angle - 90| "
               f"{near['mean_abs_deviation_deg'][k]:.2f} deg")
  if "optimized" in pack:
    lines.append(f"directions within 90 +- {pack['tolerance_deg']:g} deg: " + ", ".join(
        f"d={d}: {n}" for d, n in zip(pack["dims"], pack["optimized"])) + " (optimised packing)")
  lines.append("times: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
  return "\n".join(lines)


@contextlib.contextmanager
def _timed(name: str, timings: dict, cpu_times: dict):
  """Records the block's wall seconds in ``timings[name]`` and this process's CPU seconds in ``cpu_times[name]``."""
  t, cpu = time.perf_counter(), time.process_time()
  yield
  timings[name] = time.perf_counter() - t
  cpu_times[name] = time.process_time() - cpu


def _paper_toy_models(key, sparsities, train_kwargs) -> tuple[dict, dict]:
  """The linear and the ReLU toy model at every sparsity (one training of all instances): ``(results, reports)``,
  each keyed ``"linear"`` / ``"ReLU"``."""
  both = train_toy_models(key, sparsities * 2, relu=[False] * len(sparsities) + [True] * len(sparsities),
                          **train_kwargs)
  results, reports = {}, {}
  for name, part in (("linear", slice(0, len(sparsities))), ("ReLU", slice(len(sparsities), None))):
    results[name] = {"W": both["W"][part], "b": both["b"][part], "losses": both["losses"][:, part]}
    reports[name] = toy_model_report(results[name])
  return results, reports


def run_superposition(out_dir: str, *, steps: int = 10_000, seed: int = 0, quick: bool = False) -> dict:
  """Everything of ``explain superposition``: near-orthogonality and packing numbers, and the linear and ReLU toy
  models (n = 20, m = 5, importance 0.7^i, :data:`PAPER_SPARSITIES`, AdamW lr 1e-3, weight decay 0.01, batch 1024,
  ``steps`` steps). ``quick``: a small version for tests (fewer dims and vectors, at most 100 steps of batch 128).

  Writes into ``out_dir``: ``superposition_angles.png``, ``superposition_packing.png``,
  ``superposition_toy_models.png``, ``superposition_dimensionality.png`` and ``superposition.json`` (every number
  behind them). Returns the summary dict (``"summary"``: the table the command line prints; ``"files"``; per-model
  ``"toy_models"`` numbers; ``"near_orthogonality"``; ``"packing"``; ``"timings_s"``)."""
  from tfjax.explain import superposition_plots as plots
  from tfjax.explain.pictures import write_json

  if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
    raise ValueError(f"out_dir must be a directory path, got {out_dir!r}")
  steps = _check_positive_int("steps", steps)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ValueError(f"seed must be an integer, got {seed!r}")
  os.makedirs(out_dir, exist_ok=True)
  key = jax.random.key(int(seed))
  near_key, pack_key, toy_key = jax.random.split(key, 3)
  timings, cpu_times = {}, {}  # wall seconds, and CPU seconds of this process (all threads)

  with _timed("near_orthogonality", timings, cpu_times):
    if quick:
      near = near_orthogonality(near_key, (2, 16, 128), num_vectors=100)
    else:
      near = near_orthogonality(near_key, (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), num_vectors=1000)
  with _timed("packing", timings, cpu_times):
    if quick:
      pack = packing_numbers(pack_key, (4, 8), 10.0, random_dims=(2, 16), random_trials=2, growth=1.5,
                             max_steps=100, max_vectors=64)
    else:
      pack = packing_numbers(pack_key, (2, 4, 8, 16, 32, 64), 10.0,
                             random_dims=(2, 4, 8, 16, 32, 64, 128, 256, 512), random_trials=5, growth=1.25,
                             max_steps=300, max_vectors=2048)
  sparsities = PAPER_SPARSITIES
  train_kwargs = dict(steps=min(steps, 100), batch_size=128) if quick else dict(steps=steps, batch_size=1024)
  with _timed("toy_models", timings, cpu_times):  # linear and ReLU at every sparsity: 14 instances, one training
    results, reports = _paper_toy_models(toy_key, sparsities, train_kwargs)

  files = {
      "angles": plots.plot_angles(near, os.path.join(out_dir, "superposition_angles.png")),
      "packing": plots.plot_packing(pack, os.path.join(out_dir, "superposition_packing.png")),
      "toy_models": plots.plot_toy_models(reports, sparsities, os.path.join(out_dir, "superposition_toy_models.png")),
      "dimensionality": plots.plot_dimensionality(reports, sparsities,
                                                  os.path.join(out_dir, "superposition_dimensionality.png")),
  }
  summary = _summary_table(sparsities, reports, timings, near, pack, train_kwargs, quick)
  toy = {name: {"features_represented": rep["features_represented"],
                "model_dimensions_per_feature": rep["model_dimensions_per_feature"],
                "dimensions_per_feature": rep["dimensions_per_feature"], "feature_norms": rep["feature_norms"],
                "interference": rep["interference"], "final_loss": rep["final_loss"], "gram": rep["gram"],
                "W": results[name]["W"], "b": results[name]["b"]} for name, rep in reports.items()}
  out = {"summary": summary, "sparsities": list(sparsities), "num_features": 20, "num_hidden": 5,
         "importance_decay": 0.7, "optimizer": {"name": "optax.adamw", "learning_rate": 1e-3,
                                                 "weight_decay": PAPER_WEIGHT_DECAY},
         "steps": train_kwargs["steps"], "batch_size": train_kwargs["batch_size"], "seed": int(seed),
         "quick": bool(quick), "toy_models": toy, "near_orthogonality": near, "packing": pack,
         "timings_s": timings, "cpu_times_s": cpu_times, "files": files}
  files["json"] = write_json(os.path.join(out_dir, "superposition.json"), out)
  return out

"""k-nearest-neighbour KL estimator: convergence to the exact Gaussian KL, duplicates, errors.

Observed here (p = N(0, I), q = N(0.5, 1.5² I), k = 1, mean over seeds): the error shrinks from
~0.02 (n = 250) to ~0.005 (n = 16,000) in 1-D, from ~0.06 to ~0.005 in 2-D, and only slowly in
10-D (bias +0.48 at n = 250, +0.27 at n = 16,000, about n^-0.15): the estimator's bias grows
with the dimension, as its theory says.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import klax


def _exact_kl(d):  # KL(N(0, I) ‖ N(0.5·1, 1.5² I)), on paper.
  return 0.5 * d * (0.25 / 1.5**2 + np.log(1.5**2) + 1 / 1.5**2 - 1)


def _mean_error(d, n, seeds=3):
  errors = []
  for seed in range(seeds):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d))
    y = 0.5 + 1.5 * jax.random.normal(ky, (n, d))
    errors.append(float(klax.kl_divergence_knn(x, y)) - _exact_kl(d))
  return float(np.mean(errors))


@pytest.mark.parametrize(
  "d, small, large, tolerance", [(1, 200, 6000, 0.04), (2, 200, 6000, 0.06), (10, 200, 6000, 0.4)]
)
def test_converges_to_exact_kl_as_n_grows(d, small, large, tolerance):
  error_small, error_large = _mean_error(d, small), _mean_error(d, large)
  assert abs(error_large) < tolerance
  if d == 10:  # Bias dominates in 10-D and must shrink with n.
    assert abs(error_large) < abs(error_small)


def test_one_dimensional_input_shape_and_identical_samples():
  x = jax.random.normal(jax.random.key(0), (500,))
  np.testing.assert_allclose(klax.kl_divergence_knn(x, x), np.log(500 / 499), atol=1e-6)
  np.testing.assert_allclose(
    klax.kl_divergence_knn(x, x[:, None]), klax.kl_divergence_knn(x[:, None], x), rtol=1e-6
  )


def test_duplicate_points_give_finite_values_and_gradients():
  x = jnp.repeat(jax.random.normal(jax.random.key(1), (100, 2)), 3, axis=0)  # Every point thrice.
  y = jnp.concatenate([x[:50], jax.random.normal(jax.random.key(2), (200, 2))])
  value = klax.kl_divergence_knn(x, y, k=2)
  assert jnp.isfinite(value)
  chex.assert_tree_all_finite(jax.grad(klax.kl_divergence_knn, argnums=(0, 1))(x, y, 2))


def test_jit_vmap_grad():
  keys = jax.random.split(jax.random.key(3), 2)
  x = jax.random.normal(keys[0], (2, 300, 2))
  y = 1.0 + jax.random.normal(keys[1], (2, 300, 2))
  eager = klax.kl_divergence_knn(x[0], y[0], k=3)
  np.testing.assert_allclose(
    jax.jit(klax.kl_divergence_knn, static_argnums=2)(x[0], y[0], 3), eager, rtol=1e-5
  )
  np.testing.assert_allclose(
    jax.vmap(lambda a, b: klax.kl_divergence_knn(a, b, k=3))(x, y)[0], eager, rtol=1e-5
  )
  # Shifting y away from x increases the estimate: d/dshift > 0.
  grad = jax.grad(lambda s: klax.kl_divergence_knn(x[0], y[0] + s, k=3))(0.5)
  assert jnp.isfinite(grad) and grad > 0


def test_chunking_matches_a_direct_computation():
  x = jax.random.normal(jax.random.key(4), (64, 3))
  y = jax.random.normal(jax.random.key(5), (80, 3)) + 0.3
  dxx = np.linalg.norm(np.asarray(x)[:, None] - np.asarray(x)[None], axis=-1)
  dxy = np.linalg.norm(np.asarray(x)[:, None] - np.asarray(y)[None], axis=-1)
  dxx[dxx == 0] = np.inf
  rho, nu = np.sort(dxx, axis=1)[:, 1], np.sort(dxy, axis=1)[:, 1]  # k = 2.
  expected = 3 * np.mean(np.log(nu / rho)) + np.log(80 / 63)
  np.testing.assert_allclose(klax.kl_divergence_knn(x, y, k=2), expected, rtol=1e-5)


def test_bad_arguments():
  x = jnp.zeros((5, 2))
  with pytest.raises(ValueError, match="`k` must satisfy k < n"):
    klax.kl_divergence_knn(x, jnp.ones((10, 2)), k=5)
  with pytest.raises(ValueError, match="`k` must be positive"):
    klax.kl_divergence_knn(x, x, k=0)
  with pytest.raises(ValueError, match="same dimension"):
    klax.kl_divergence_knn(x, jnp.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"`x` must have shape \[n\] or \[n, d\]"):
    klax.kl_divergence_knn(jnp.zeros((2, 2, 2)), x)
  with pytest.raises(TypeError, match="`y` must have a floating-point dtype"):
    klax.kl_divergence_knn(x, jnp.zeros((5, 2), jnp.int32))


def test_nan_or_inf_in_either_sample_gives_nan():
  x = jax.random.normal(jax.random.key(6), (50, 2))
  y = jax.random.normal(jax.random.key(7), (40, 2))
  knn = jax.jit(klax.kl_divergence_knn, static_argnums=2)
  assert jnp.isfinite(knn(x, y, 1))
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    assert jnp.isnan(knn(x.at[3, 1].set(bad), y, 1)), bad
    assert jnp.isnan(knn(x, y.at[5, 0].set(bad), 1)), bad  # A NaN in y was dropped, m kept.


def test_fewer_than_k_neighbours_at_non_zero_distance_gives_nan():
  x = jnp.concatenate([jnp.zeros((5, 1)), jnp.ones((5, 1))])  # Each x_i: 5 others at distance 1.
  y = jax.random.normal(jax.random.key(8), (20, 1))
  assert jnp.isfinite(klax.kl_divergence_knn(x, y, k=5))
  assert jnp.isnan(klax.kl_divergence_knn(x, y, k=6))


def test_scale_invariant_from_1e_minus_30_to_1e30():
  """At 1e-19 squared distances underflowed and counted as duplicates (0.43 for 0.87)."""
  kx, ky = jax.random.split(jax.random.key(9))
  x = jax.random.normal(kx, (400, 3))
  y = 0.5 + 1.5 * jax.random.normal(ky, (400, 3))
  knn = jax.jit(klax.kl_divergence_knn, static_argnums=2)
  reference = float(knn(x, y, 2))
  for scale in (1e-30, 1e-19, 1e-10, 1e10, 1e19, 1e30):
    got = knn(x * scale, y * scale, 2)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5, err_msg=str(scale))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_samples_are_promoted(dtype):
  x = jax.random.normal(jax.random.key(10), (200, 2)).astype(dtype)
  y = (1.0 + jax.random.normal(jax.random.key(11), (200, 2))).astype(dtype)
  got = klax.kl_divergence_knn(x, y, k=3)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(
    got, klax.kl_divergence_knn(x.astype(jnp.float32), y.astype(jnp.float32), k=3), rtol=1e-6
  )


def test_zero_dimensional_points_are_rejected_by_name():
  with pytest.raises(ValueError, match=r"`x` must have at least one coordinate per point"):
    klax.kl_divergence_knn(jnp.zeros((5, 0)), jnp.zeros((5, 0)))
  with pytest.raises(ValueError, match=r"`y` must have at least one coordinate per point"):
    klax.kl_divergence_knn(jnp.zeros((5, 2)), jnp.zeros((5, 0)))


def test_brute_force_search_finds_the_tree_search_neighbours():
  """The GPU/TPU path (tiled brute force, run here on CPU) gives the host tree's k-th distances."""
  from klax import _neighbours

  rng = np.random.default_rng(12)
  x = rng.standard_normal((300, 3)).astype(np.float32)
  x[:40] = x[40:80]  # Duplicates, skipped by both.
  y = rng.standard_normal((2500, 3)).astype(np.float32)  # More points than one block of 2,048.
  for k in (1, 4):
    for points in (x, y):
      idx_tree, found_tree = _neighbours.tree_indices(jnp.asarray(x), jnp.asarray(points), k)
      idx_brute, found_brute = jax.jit(_neighbours.brute_indices, static_argnums=2)(
        jnp.asarray(x), jnp.asarray(points), k
      )
      assert bool(jnp.all(found_tree)) and bool(jnp.all(found_brute))
      dist = lambda i, p=points: np.linalg.norm(p[np.asarray(i)] - x, axis=1)  # noqa: E731
      np.testing.assert_allclose(dist(idx_brute), dist(idx_tree), rtol=1e-6)
  few = jnp.concatenate([jnp.zeros((5, 1)), jnp.ones((5, 1))])
  _, found = _neighbours.brute_indices(few, few, 6)
  assert not bool(jnp.any(found))


def _entropy_reference_stderr(x, k):
  """d · sd(log ρ_k) / √n from a float64 cKDTree: the estimator's standard error, roughly."""
  import scipy.spatial

  rho, _ = scipy.spatial.cKDTree(x).query(x, k=[k + 1])
  return x.shape[1] * np.std(np.log(rho[:, 0])) / np.sqrt(len(x))


@pytest.mark.parametrize(
  "name, d, exact",
  [
    ("normal", 1, 0.5 * np.log(2 * np.pi * np.e)),
    ("normal", 3, 1.5 * np.log(2 * np.pi * np.e)),
    ("uniform", 1, 0.0),
    ("uniform", 2, 0.0),
  ],
)
def test_entropy_knn_matches_closed_form_entropies_within_4_standard_errors(name, d, exact):
  key = jax.random.key(13)
  n, k = 4000, 3
  x = jax.random.normal(key, (n, d)) if name == "normal" else jax.random.uniform(key, (n, d))
  got = float(klax.entropy_knn(x, k=k))
  stderr = _entropy_reference_stderr(np.asarray(x, np.float64), k)
  assert abs(got - exact) < 4 * stderr, (got, exact, stderr)


def test_entropy_knn_jit_vmap_grad_scale_and_bad_values():
  x = jax.random.normal(jax.random.key(14), (2, 400, 2))
  eager = klax.entropy_knn(x[0], k=2)
  np.testing.assert_allclose(jax.vmap(lambda a: klax.entropy_knn(a, k=2))(x)[0], eager, rtol=1e-5)
  np.testing.assert_allclose(
    klax.entropy_knn(x[0] * 1e-20, k=2), eager - 2 * np.log(1e20), rtol=1e-5
  )
  grad = jax.grad(lambda s: klax.entropy_knn(s * x[0], k=2))(1.0)  # dH/ds = d / s.
  np.testing.assert_allclose(grad, 2.0, rtol=1e-4)
  assert jnp.isnan(klax.entropy_knn(x[0].at[0, 0].set(jnp.nan), k=2))
  with pytest.raises(ValueError, match="`k` must satisfy k < n"):
    klax.entropy_knn(x[0, :3], k=3)

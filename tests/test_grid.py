"""Grid quadrature: seed 001's numbers, scipy.stats.entropy on the same grid, trapezoid accuracy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.scipy.stats import norm

import klax

GRID = jnp.arange(-10, 10, 0.01)  # The grid of seed 001.


def log_p(x):  # P = N(−3, 1.2²) + N(3, 1.2²), unnormalised as in the seed.
  return jnp.logaddexp(norm.logpdf(x, -3.0, 1.2), norm.logpdf(x, 3.0, 1.2))


def log_q_forward(x):
  return norm.logpdf(x, 1.175e-4, 3.268)


def log_q_reverse(x):
  return norm.logpdf(x, -2.863, 1.36)


@pytest.mark.parametrize(
  "first, second, seed_value",
  [
    (log_p, log_q_forward, 0.31247),
    (log_p, log_q_reverse, 3.98727),
    (log_q_forward, log_p, 0.51217),
    (log_q_reverse, log_p, 0.66647),
  ],
)
def test_reproduces_the_four_values_printed_in_seed_001(first, second, seed_value):
  assert round(float(klax.kl_divergence_grid(first, second, GRID)), 5) == seed_value


def test_normalized_equals_scipy_entropy_on_the_same_grid():
  x = np.arange(-10, 10, 0.01)
  p = scipy.stats.norm.pdf(x, -3, 1.2) + scipy.stats.norm.pdf(x, 3, 1.2)
  q = scipy.stats.norm.pdf(x, 0.7, 2.1)
  got = klax.kl_divergence_grid(log_p, lambda t: norm.logpdf(t, 0.7, 2.1), GRID)
  np.testing.assert_allclose(got, scipy.stats.entropy(p, q), rtol=1e-5)
  # Values instead of callables give the same number.
  np.testing.assert_allclose(klax.kl_divergence_grid(jnp.log(p), jnp.log(q), GRID), got, rtol=1e-5)


def test_unnormalized_trapezoid_is_accurate_for_smooth_densities():
  x = jnp.linspace(-15.0, 15.0, 6001)
  got = klax.kl_divergence_grid(
    lambda t: norm.logpdf(t, 0.3, 1.1), lambda t: norm.logpdf(t, -0.4, 1.6), x, normalize=False
  )
  expected = np.log(1.6 / 1.1) + (1.1**2 + 0.7**2) / (2 * 1.6**2) - 0.5  # Closed form on paper.
  assert abs(float(got) - expected) < 1e-6


def test_points_in_two_dimensions_with_normalization():
  axis = np.linspace(-6, 6, 121)
  points = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
  p = scipy.stats.multivariate_normal([0, 0], np.eye(2)).pdf(points)
  q = scipy.stats.multivariate_normal([1, 0], [[2, 0.3], [0.3, 1]]).pdf(points)
  got = klax.kl_divergence_grid(jnp.log(p), jnp.log(q), jnp.asarray(points, jnp.float32))
  np.testing.assert_allclose(got, scipy.stats.entropy(p, q), rtol=1e-4)


def test_jit_vmap_grad():
  def kl(mu, sigma):
    return klax.kl_divergence_grid(log_p, lambda t: norm.logpdf(t, mu, sigma), GRID)

  eager = kl(0.5, 3.0)
  np.testing.assert_allclose(jax.jit(kl)(0.5, 3.0), eager, rtol=1e-5)
  np.testing.assert_allclose(
    jax.vmap(kl)(jnp.array([0.5, 1.0]), jnp.array([3.0, 2.0]))[0], eager, rtol=1e-5
  )
  jax.test_util.check_grads(kl, (0.5, 3.0), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  # The forward optimum on this grid is at μ ≈ 0 (symmetry): the μ-gradient vanishes there.
  assert abs(float(jax.grad(kl)(0.0, 3.268))) < 1e-4
  chex.assert_tree_all_finite(
    jax.grad(lambda s: klax.kl_divergence_grid(lambda t: norm.logpdf(t, 0.0, s), log_p, GRID))(1.0)
  )


def test_zero_density_points_give_no_nan():
  values_p = jnp.array([-jnp.inf, 0.0, 0.0, -jnp.inf])
  values_q = jnp.array([0.0, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(
    klax.kl_divergence_grid(values_p, values_q, jnp.arange(4.0)), np.log(2.0), rtol=1e-6
  )
  chex.assert_tree_all_finite(
    jax.grad(klax.kl_divergence_grid, argnums=(0, 1))(values_p, values_q, jnp.arange(4.0))
  )


def test_bad_arguments():
  with pytest.raises(ValueError, match="`log_q` must give one value per grid point"):
    klax.kl_divergence_grid(log_p, jnp.zeros(3), GRID)
  with pytest.raises(ValueError, match="`grid` must have shape"):
    klax.kl_divergence_grid(log_p, log_p, jnp.zeros((2, 2, 2)))
  with pytest.raises(ValueError, match="1-D grid"):
    klax.kl_divergence_grid(jnp.zeros(4), jnp.zeros(4), jnp.zeros((4, 2)), normalize=False)
  with pytest.raises(TypeError, match="`grid` must have a floating-point dtype"):
    klax.kl_divergence_grid(log_p, log_p, jnp.arange(10))

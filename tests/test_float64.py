"""Everything again with jax_enable_x64: float64 agreement with references to 1e-10."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from jax.scipy.stats import norm
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions
TOL = 1e-10


def f64(value):
  return jnp.asarray(value, jnp.float64)


@pytest.fixture(autouse=True, scope="module")
def enable_x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def test_discrete_functions():
  rng = np.random.default_rng(0)
  p, q = rng.dirichlet(np.ones(100), size=3), rng.dirichlet(np.ones(100), size=3)
  p[:, ::7] = 0.0
  p /= p.sum(-1, keepdims=True)
  out = klax.kl_divergence_probs(p, q)
  assert out.dtype == jnp.float64
  np.testing.assert_allclose(out, scipy.special.rel_entr(p, q).sum(-1), rtol=TOL)
  np.testing.assert_allclose(klax.entropy_probs(p), scipy.stats.entropy(p, axis=-1), rtol=TOL)
  np.testing.assert_allclose(
    klax.cross_entropy_probs(p, q), -(scipy.special.xlogy(p, q)).sum(-1), rtol=TOL
  )
  a, b = rng.normal(size=(3, 1000)) * 4, rng.normal(size=(3, 1000)) * 4
  sa, sb = scipy.special.softmax(a, -1), scipy.special.softmax(b, -1)
  np.testing.assert_allclose(
    klax.kl_divergence_logits(a, b), scipy.stats.entropy(sa, sb, axis=-1), rtol=TOL
  )
  np.testing.assert_allclose(klax.entropy_logits(a), scipy.stats.entropy(sa, axis=-1), rtol=TOL)
  np.testing.assert_allclose(klax.cross_entropy_logits(a, b), -(sa * np.log(sb)).sum(-1), rtol=TOL)


def test_grid_equals_scipy_on_the_seed_grid():
  x = np.arange(-10, 10, 0.01)
  p = scipy.stats.norm.pdf(x, -3, 1.2) + scipy.stats.norm.pdf(x, 3, 1.2)
  q = scipy.stats.norm.pdf(x, -2.863, 1.36)
  grid = jnp.arange(-10, 10, 0.01, dtype=jnp.float64)

  def log_p(t):
    return jnp.logaddexp(norm.logpdf(t, -3.0, 1.2), norm.logpdf(t, 3.0, 1.2))

  got = klax.kl_divergence_grid(lambda t: norm.logpdf(t, -2.863, 1.36), log_p, grid)
  np.testing.assert_allclose(got, scipy.stats.entropy(q, p), rtol=TOL)
  np.testing.assert_allclose(
    klax.kl_divergence_grid(log_p, lambda t: norm.logpdf(t, -2.863, 1.36), grid),
    scipy.stats.entropy(p, q),
    rtol=TOL,
  )


def _normal_kl(m0, s0, m1, s1):
  return np.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5


def test_closed_forms():
  np.testing.assert_allclose(
    klax.kl_divergence(distrax.Normal(f64(0.3), f64(1.2)), distrax.Normal(f64(-1.0), f64(2.0))),
    _normal_kl(0.3, 1.2, -1.0, 2.0),
    rtol=TOL,
  )
  np.testing.assert_allclose(
    klax.kl_divergence(tfd.Poisson(rate=f64(2.0)), tfd.Poisson(rate=f64(3.5))),
    2 * np.log(2 / 3.5) - 2 + 3.5,
    rtol=TOL,
  )
  np.testing.assert_allclose(
    klax.kl_divergence(tfd.Exponential(f64(0.7)), tfd.Exponential(f64(2.0))),
    np.log(0.7 / 2.0) + 2.0 / 0.7 - 1,
    rtol=TOL,
  )
  # Tiny differences: no cancellation to 0 or below (δ²/2 to leading order).
  np.testing.assert_allclose(
    klax.kl_divergence(tfd.Exponential(f64(1.0)), tfd.Exponential(f64(1.0 + 1e-6))),
    0.5e-12,
    rtol=1e-5,
  )
  ps = 0.2
  geometric = np.log(ps / 0.5) + (1 - ps) / ps * np.log((1 - ps) / 0.5)
  np.testing.assert_allclose(
    klax.kl_divergence(tfd.Geometric(probs=f64(ps)), tfd.Geometric(probs=f64(0.5))),
    geometric,
    rtol=TOL,
  )
  laplace_normal = (
    -1 - np.log(2 * 0.5) + 0.5 * np.log(2 * np.pi * 4.0) + (2 * 0.25 + 1.2**2) / (2 * 4.0)
  )
  np.testing.assert_allclose(
    klax.kl_divergence(distrax.Laplace(f64(1.0), f64(0.5)), distrax.Normal(f64(-0.2), f64(2.0))),
    laplace_normal,
    rtol=TOL,
  )


def test_multivariate_normal_cross_pair():
  rng = np.random.default_rng(1)
  u = rng.normal(size=(3, 1))
  cov_p = np.diag([1.0, 2.0, 0.5]) + u @ u.T
  tril = np.tril(rng.normal(size=(3, 3)))
  tril[np.diag_indices(3)] = np.abs(tril[np.diag_indices(3)]) + 0.5
  cov_q = tril @ tril.T
  mp, mq = rng.normal(size=3), rng.normal(size=3)
  inv = np.linalg.inv(cov_q)
  expected = 0.5 * (
    np.trace(inv @ cov_p)
    + (mq - mp) @ inv @ (mq - mp)
    - 3
    + np.linalg.slogdet(cov_q)[1]
    - np.linalg.slogdet(cov_p)[1]
  )
  p = tfd.MultivariateNormalDiagPlusLowRankCovariance(mp, jnp.array([1.0, 2.0, 0.5]), u)
  np.testing.assert_allclose(
    klax.kl_divergence(p, distrax.MultivariateNormalTri(mq, tril)), expected, rtol=TOL
  )


def test_monte_carlo_estimates_are_float64():
  est = klax.kl_divergence_mc(
    distrax.Normal(f64(0.0), f64(1.0)),
    distrax.Normal(f64(1.0), f64(1.0)),
    jax.random.key(0),
    1000,
    "k3",
  )
  assert est.value.dtype == est.stderr.dtype == jnp.float64
  np.testing.assert_allclose(klax.kl_from_log_ratio(jnp.array(1e-8), "k3"), 0.5e-16, rtol=1e-7)


def test_exponential_family_and_mixtures_and_knn():
  def normal_a(eta):
    return -(eta[0] ** 2) / (4 * eta[1]) - 0.5 * jnp.log(-2 * eta[1])

  eta = lambda m, s: jnp.array([m / s**2, -0.5 / s**2])  # noqa: E731
  np.testing.assert_allclose(
    klax.kl_divergence_exponential_family(normal_a, eta(0.3, 1.2), eta(-1.0, 2.0)),
    _normal_kl(0.3, 1.2, -1.0, 2.0),
    rtol=TOL,
  )
  p, q = distrax.Normal(f64(0.3), f64(1.2)), distrax.Normal(f64(-1.0), f64(2.0))
  np.testing.assert_allclose(
    klax.kl_divergence_mixture_variational_approx(p, q), _normal_kl(0.3, 1.2, -1.0, 2.0), rtol=TOL
  )
  np.testing.assert_allclose(
    klax.kl_divergence_mixture_upper_bound(p, q), _normal_kl(0.3, 1.2, -1.0, 2.0), rtol=TOL
  )
  x = np.random.default_rng(2).normal(size=(50, 2))
  y = np.random.default_rng(3).normal(size=(60, 2)) + 0.5
  dxx = np.linalg.norm(x[:, None] - x[None], axis=-1)
  dxx[dxx == 0] = np.inf
  rho = np.sort(dxx, 1)[:, 0]
  nu = np.sort(np.linalg.norm(x[:, None] - y[None], axis=-1), 1)[:, 0]
  expected = 2 * np.mean(np.log(nu / rho)) + np.log(60 / 49)
  np.testing.assert_allclose(klax.kl_divergence_knn(x, y), expected, rtol=TOL)


def test_seed_grid_objective_with_klax_fit_and_lbfgs():
  """Seed 001's own computation: the grid KL minimised by optax.lbfgs through klax.fit."""
  import optax

  grid = jnp.arange(-10, 10, 0.01, dtype=jnp.float64)

  def log_p(t):
    return jnp.logaddexp(norm.logpdf(t, -3.0, 1.2), norm.logpdf(t, 3.0, 1.2))

  def log_q(params):
    return lambda t: norm.logpdf(t, params[0], jnp.exp(params[1]))

  def forward(params, key):
    del key
    return klax.kl_divergence_grid(log_p, log_q(params), grid)

  def reverse(params, key):
    del key
    return klax.kl_divergence_grid(log_q(params), log_p, grid)

  init = jnp.array([-3.0, np.log(1.2)])
  result = klax.fit(forward, init, optax.lbfgs(), jax.random.key(0), 100)
  mu, sigma = float(result.params[0]), float(np.exp(result.params[1]))
  assert (
    abs(mu - 1.17e-4) < 1e-5
    and round(sigma, 5) == 3.26839
    and round(float(result.losses[-1]), 5) == 0.31247
  )
  result = klax.fit(reverse, init, optax.lbfgs(), jax.random.key(0), 100)
  mu, sigma = float(result.params[0]), float(np.exp(result.params[1]))
  assert (
    round(mu, 5) == -2.86331
    and round(sigma, 5) == 1.36376
    and round(float(result.losses[-1]), 5) == 0.66646
  )

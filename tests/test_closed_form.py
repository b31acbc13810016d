"""Closed-form KL, entropy and cross-entropy against scipy sums, quadrature and paper formulas."""

import math

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions


def _discrete_kl(pmf_p, pmf_q, support):
  p, q = pmf_p(support), pmf_q(support)
  keep = p > 0
  return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(q[keep]))))


def _continuous_kl(logpdf_p, logpdf_q, lo=-np.inf, hi=np.inf):
  def integrand(x):
    log_p = logpdf_p(x)
    density = np.exp(log_p)
    return 0.0 if density == 0.0 else density * (log_p - logpdf_q(x))

  return scipy.integrate.quad(integrand, lo, hi, limit=200, epsabs=1e-12)[0]


K = np.arange(0, 400)


@pytest.mark.parametrize(
  "p, q, expected",
  [
    (
      tfd.Poisson(rate=2.0),
      tfd.Poisson(rate=3.5),
      _discrete_kl(scipy.stats.poisson(2.0).pmf, scipy.stats.poisson(3.5).pmf, K),
    ),
    (
      tfd.Geometric(probs=0.2),
      tfd.Geometric(probs=0.55),
      # TFP counts failures (k >= 0); scipy counts trials (k >= 1): the shift leaves KL unchanged.
      _discrete_kl(scipy.stats.geom(0.2).pmf, scipy.stats.geom(0.55).pmf, K + 1),
    ),
    (
      tfd.Binomial(total_count=7.0, probs=0.3),
      tfd.Binomial(total_count=7.0, probs=0.6),
      _discrete_kl(scipy.stats.binom(7, 0.3).pmf, scipy.stats.binom(7, 0.6).pmf, np.arange(8)),
    ),
    (
      tfd.Exponential(rate=0.7),
      tfd.Exponential(rate=2.0),
      _continuous_kl(
        scipy.stats.expon(scale=1 / 0.7).logpdf, scipy.stats.expon(scale=0.5).logpdf, 0, np.inf
      ),
    ),
    (
      distrax.Normal(0.3, 1.4),
      distrax.Laplace(-0.5, 0.8),
      _continuous_kl(scipy.stats.norm(0.3, 1.4).logpdf, scipy.stats.laplace(-0.5, 0.8).logpdf),
    ),
    (
      tfd.Normal(0.3, 1.4),
      tfd.Laplace(-0.5, 0.8),
      _continuous_kl(scipy.stats.norm(0.3, 1.4).logpdf, scipy.stats.laplace(-0.5, 0.8).logpdf),
    ),
    (
      distrax.Laplace(1.0, 0.5),
      tfd.Normal(-0.2, 2.0),
      _continuous_kl(scipy.stats.laplace(1.0, 0.5).logpdf, scipy.stats.norm(-0.2, 2.0).logpdf),
    ),
    # Pairs registered by distrax/TFP themselves.
    (
      distrax.Normal(0.1, 0.9),
      distrax.Normal(1.0, 1.7),
      _continuous_kl(scipy.stats.norm(0.1, 0.9).logpdf, scipy.stats.norm(1.0, 1.7).logpdf),
    ),
    (
      distrax.Gamma(2.0, 3.0),
      distrax.Gamma(1.5, 1.0),
      _continuous_kl(
        scipy.stats.gamma(2.0, scale=1 / 3).logpdf, scipy.stats.gamma(1.5).logpdf, 0, np.inf
      ),
    ),
    (
      distrax.Beta(2.0, 3.0),
      distrax.Beta(1.2, 0.9),
      _continuous_kl(scipy.stats.beta(2, 3).logpdf, scipy.stats.beta(1.2, 0.9).logpdf, 0, 1),
    ),
    (
      distrax.Categorical(probs=jnp.array([0.2, 0.3, 0.5])),
      tfd.Categorical(probs=jnp.array([0.6, 0.3, 0.1])),
      float(scipy.stats.entropy([0.2, 0.3, 0.5], [0.6, 0.3, 0.1])),
    ),
  ],
  ids=lambda v: type(v).__name__ if not isinstance(v, float) else "",
)
def test_kl_against_independent_reference(p, q, expected):
  np.testing.assert_allclose(klax.kl_divergence(p, q), expected, rtol=2e-5, atol=1e-6)
  # Registered with TFP, so distrax and TFP users get the same value.
  np.testing.assert_allclose(tfd.kl_divergence(p, q), expected, rtol=2e-5, atol=1e-6)


def test_multinomial_is_n_times_categorical_and_matches_enumeration():
  probs_p, probs_q, n = np.array([0.2, 0.3, 0.5]), np.array([0.6, 0.3, 0.1]), 3
  support = [np.array([i, j, n - i - j]) for i in range(n + 1) for j in range(n + 1 - i)]
  pmf_p = np.array([scipy.stats.multinomial(n, probs_p).pmf(x) for x in support])
  pmf_q = np.array([scipy.stats.multinomial(n, probs_q).pmf(x) for x in support])
  expected = float(np.sum(pmf_p * np.log(pmf_p / pmf_q)))
  got = klax.kl_divergence(
    tfd.Multinomial(float(n), probs=jnp.asarray(probs_p)),
    tfd.Multinomial(float(n), probs=jnp.asarray(probs_q)),
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(expected, n * scipy.stats.entropy(probs_p, probs_q), rtol=1e-10)


def test_different_total_counts_raise_outside_jit_and_give_nan_inside():
  p, q = tfd.Binomial(5.0, probs=0.3), tfd.Binomial(6.0, probs=0.3)
  with pytest.raises(ValueError, match="same `total_count`"):
    klax.kl_divergence(p, q)
  kl = jax.jit(
    lambda n: klax.kl_divergence(tfd.Binomial(n, probs=0.3), tfd.Binomial(6.0, probs=0.3))
  )
  assert jnp.isnan(kl(5.0)) and kl(6.0) == 0.0


def _mvn_kl_numpy(m0, s0, m1, s1):
  d = len(m0)
  s1_inv = np.linalg.inv(s1)
  diff = m1 - m0
  return 0.5 * (
    np.trace(s1_inv @ s0)
    + diff @ s1_inv @ diff
    - d
    + np.linalg.slogdet(s1)[1]
    - np.linalg.slogdet(s0)[1]
  )


def _mvns(seed):
  rng = np.random.default_rng(seed)
  d = 3
  loc = rng.normal(size=d).astype(np.float32)
  diag = rng.uniform(0.5, 1.5, size=d).astype(np.float32)
  tril = np.tril(rng.normal(size=(d, d))).astype(np.float32)
  tril[np.diag_indices(d)] = np.abs(tril[np.diag_indices(d)]) + 0.5
  u = rng.normal(size=(d, 1)).astype(np.float32) * 0.5
  covs = {
    "distrax.Diag": (distrax.MultivariateNormalDiag(loc, diag), np.diag(diag**2)),
    "distrax.Tri": (distrax.MultivariateNormalTri(loc, tril), tril @ tril.T),
    "distrax.Full": (distrax.MultivariateNormalFullCovariance(loc, tril @ tril.T), tril @ tril.T),
    "distrax.DiagPlusLowRank": (
      distrax.MultivariateNormalDiagPlusLowRank(loc, diag, u),
      (np.diag(diag) + u @ u.T) @ (np.diag(diag) + u @ u.T).T,
    ),
    "tfd.Diag": (tfd.MultivariateNormalDiag(loc, diag), np.diag(diag**2)),
    "tfd.TriL": (tfd.MultivariateNormalTriL(loc, tril), tril @ tril.T),
    "tfd.Full": (tfd.MultivariateNormalFullCovariance(loc, tril @ tril.T), tril @ tril.T),
    "tfd.DiagPlusLowRankCovariance": (
      tfd.MultivariateNormalDiagPlusLowRankCovariance(loc, diag, u),
      np.diag(diag) + u @ u.T,
    ),
  }
  return {
    k: (dist, loc.astype(np.float64), cov.astype(np.float64)) for k, (dist, cov) in covs.items()
  }


def test_every_cross_pair_of_multivariate_normals():
  ps, qs = _mvns(0), _mvns(1)
  for name_p, (p, mp, sp) in ps.items():
    for name_q, (q, mq, sq) in qs.items():
      expected = _mvn_kl_numpy(mp, sp, mq, sq)
      np.testing.assert_allclose(
        klax.kl_divergence(p, q), expected, rtol=2e-4, err_msg=f"{name_p} || {name_q}"
      )


def test_unsupported_pair_names_both_types_and_the_estimator():
  with pytest.raises(
    klax.UnsupportedDistributionError, match=r"distrax\.Logistic.*distrax\.Normal.*kl_divergence_mc"
  ):
    klax.kl_divergence(distrax.Logistic(0.0, 1.0), distrax.Normal(0.0, 1.0))
  mixture = distrax.MixtureSameFamily(
    distrax.Categorical(logits=jnp.zeros(2)), distrax.Normal(jnp.zeros(2), 1.0)
  )
  with pytest.raises(klax.UnsupportedDistributionError, match="kl_divergence_mixture"):
    klax.kl_divergence(mixture, distrax.Normal(0.0, 1.0))
  with pytest.raises(klax.UnsupportedDistributionError, match="entropy_mc"):
    klax.entropy(tfd.Binomial(3.0, probs=0.5))
  with pytest.raises(klax.UnsupportedDistributionError, match="cross_entropy_mc"):
    klax.cross_entropy(tfd.Binomial(3.0, probs=0.5), tfd.Binomial(3.0, probs=0.2))


def test_bad_arguments():
  with pytest.raises(TypeError, match="`q` must be a distrax or TFP-on-JAX distribution"):
    klax.kl_divergence(distrax.Normal(0.0, 1.0), 3.0)
  with pytest.raises(ValueError, match="same event shape"):
    klax.kl_divergence(
      distrax.MultivariateNormalDiag(jnp.zeros(2)), distrax.MultivariateNormalDiag(jnp.zeros(3))
    )


def test_entropy_and_cross_entropy():
  np.testing.assert_allclose(
    klax.entropy(distrax.Normal(0.5, 2.0)), scipy.stats.norm(0.5, 2.0).entropy(), rtol=1e-6
  )
  np.testing.assert_allclose(
    klax.entropy(tfd.Geometric(probs=0.3)),
    -np.sum(scipy.stats.geom(0.3).pmf(K + 1) * scipy.stats.geom(0.3).logpmf(K + 1)),
    rtol=1e-5,
  )
  expected = scipy.integrate.quad(
    lambda x: -scipy.stats.norm(0.5, 2.0).pdf(x) * scipy.stats.laplace(0, 1).logpdf(x),
    -60,
    60,
    points=[0.0],
  )[0]
  np.testing.assert_allclose(
    klax.cross_entropy(distrax.Normal(0.5, 2.0), distrax.Laplace(0.0, 1.0)), expected, rtol=1e-5
  )


def test_broadcasts_over_batch_shapes():
  p = distrax.Normal(jnp.array([0.0, 1.0, 2.0]), 1.0)
  q = distrax.Laplace(jnp.array([[0.0], [1.0]]), jnp.array([[1.0], [2.0]]))
  got = klax.kl_divergence(p, q)
  assert got.shape == (2, 3)
  np.testing.assert_allclose(
    got[1, 2], klax.kl_divergence(distrax.Normal(2.0, 1.0), distrax.Laplace(1.0, 2.0)), rtol=1e-6
  )


_PARAMETRISED = {
  "poisson": lambda a, b: (tfd.Poisson(log_rate=a), tfd.Poisson(log_rate=b)),
  "geometric": lambda a, b: (tfd.Geometric(logits=a), tfd.Geometric(logits=b)),
  "binomial": lambda a, b: (tfd.Binomial(4.0, logits=a), tfd.Binomial(4.0, logits=b)),
  "exponential": lambda a, b: (tfd.Exponential(jnp.exp(a)), tfd.Exponential(jnp.exp(b))),
  "normal_laplace": lambda a, b: (distrax.Normal(a, jnp.exp(b)), distrax.Laplace(b, jnp.exp(a))),
  "laplace_normal": lambda a, b: (distrax.Laplace(a, jnp.exp(b)), distrax.Normal(b, jnp.exp(a))),
  "mvn_lowrank_tri": lambda a, b: (
    tfd.MultivariateNormalDiagPlusLowRankCovariance(
      jnp.stack([a, b]), jnp.exp(jnp.stack([b, a])), jnp.ones((2, 1))
    ),
    distrax.MultivariateNormalTri(jnp.zeros(2), jnp.array([[1.0, 0.0], [0.5, 1.0]]) * jnp.exp(a)),
  ),
}


@pytest.mark.parametrize("name", sorted(_PARAMETRISED))
def test_jit_vmap_grad(name):
  make = _PARAMETRISED[name]

  def kl(a, b):
    return klax.kl_divergence(*make(a, b))

  a, b = jnp.array([0.3, -0.2, 0.5]), jnp.array([-0.4, 0.1, 0.2])
  eager = jnp.stack([kl(a[i], b[i]) for i in range(3)])
  np.testing.assert_allclose(jax.vmap(kl)(a, b), eager, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.vmap(kl))(a, b), eager, rtol=1e-5)
  jax.test_util.check_grads(kl, (a[0], b[0]), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  chex.assert_tree_all_finite(jax.grad(kl, argnums=(0, 1))(a[0], b[0]))


def test_kl_near_zero_is_not_negative():
  for p, q in [
    (tfd.Poisson(rate=2.0), tfd.Poisson(rate=2.0 * (1 + 1e-6))),
    (tfd.Exponential(3.0), tfd.Exponential(3.0 * (1 + 1e-6))),
  ]:
    assert float(klax.kl_divergence(p, q)) >= 0.0
  assert math.isclose(
    float(klax.kl_divergence(tfd.Poisson(rate=2.0), tfd.Poisson(rate=2.0))), 0.0, abs_tol=0
  )


@pytest.mark.parametrize("d", [3, 12])  # Forward substitution in XLA below d = 8, LAPACK above.
def test_multivariate_normals_from_their_scales_match_numpy(d):
  rng = np.random.default_rng(d)
  means = rng.normal(size=(2, 4, d))
  trils = np.tril(rng.normal(size=(2, 4, d, d)) / np.sqrt(d), -1) + np.eye(d) * rng.uniform(
    0.5, 2.0, size=(2, 4, 1, d)
  )
  got = klax.kl_divergence(
    distrax.MultivariateNormalTri(
      jnp.asarray(means[0], jnp.float32), jnp.asarray(trils[0], jnp.float32)
    ),
    tfd.MultivariateNormalTriL(
      jnp.asarray(means[1], jnp.float32), jnp.asarray(trils[1], jnp.float32)
    ),
  )
  for i in range(4):  # On paper, in float64 numpy.
    cov_p, cov_q = trils[0, i] @ trils[0, i].T, trils[1, i] @ trils[1, i].T
    inv_q, diff = np.linalg.inv(cov_q), means[1, i] - means[0, i]
    expected = 0.5 * (
      np.trace(inv_q @ cov_p)
      + diff @ inv_q @ diff
      - d
      + np.linalg.slogdet(cov_q)[1]
      - np.linalg.slogdet(cov_p)[1]
    )
    np.testing.assert_allclose(got[i], expected, rtol=1e-4)

  def kl_of(loc, tril):  # jit, vmap and grad through the solve.
    p = distrax.MultivariateNormalTri(loc, tril)
    return klax.kl_divergence(p, distrax.MultivariateNormalTri(jnp.zeros(d), jnp.eye(d)))

  locs, tril = jnp.asarray(means[0], jnp.float32), jnp.asarray(trils[0], jnp.float32)
  batched = jax.jit(jax.vmap(kl_of))(locs, tril)
  np.testing.assert_allclose(batched, [kl_of(locs[i], tril[i]) for i in range(4)], rtol=1e-5)
  grads = jax.grad(lambda loc, t: kl_of(loc, t), argnums=(0, 1))(locs[0], tril[0])
  np.testing.assert_allclose(grads[0], locs[0], rtol=1e-4, atol=1e-5)  # ∂/∂m ½‖m‖² = m
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  same = klax.kl_divergence(
    distrax.MultivariateNormalDiag(jnp.zeros(d), jnp.full(d, 2.0)),
    distrax.MultivariateNormalDiag(jnp.zeros(d), jnp.full(d, 2.0)),
  )
  assert float(same) == 0.0


def test_results_have_the_broadcast_batch_shape_whatever_the_library_returns():
  # distrax's VonMises entropy depends on the concentration only: (4, 4) from a scalar one.
  von_mises = distrax.VonMises(jnp.zeros((4, 4)), 1.0)
  assert klax.entropy(von_mises).shape == (4, 4)
  np.testing.assert_allclose(klax.entropy(von_mises), float(von_mises.entropy()), rtol=1e-6)
  assert klax.cross_entropy(von_mises, distrax.VonMises(0.5, 2.0)).shape == (4, 4)
  p, q = tfd.Categorical(logits=jnp.zeros((4, 3))), tfd.Categorical(logits=jnp.arange(3.0))
  np.testing.assert_allclose(klax.kl_divergence(p, q), tfd.kl_divergence(p, q), rtol=1e-6)
  got = klax.kl_divergence(tfd.Bernoulli(logits=jnp.zeros(4)), tfd.Bernoulli(logits=1.0))
  np.testing.assert_allclose(
    got, np.full(4, scipy.stats.entropy([0.5, 0.5], [0.2689414, 0.7310586])), rtol=1e-5
  )
  with pytest.raises(ValueError, match=r"batch shapes of `p`.*\(2,\).*`q`.*\(3,\)"):
    klax.kl_divergence(distrax.Normal(jnp.zeros(2), 1.0), distrax.Normal(jnp.zeros(3), 1.0))


def test_categoricals_with_different_numbers_of_categories_raise_naming_both():
  p, q = tfd.Categorical(logits=jnp.zeros(3)), distrax.Categorical(logits=jnp.zeros(4))
  with pytest.raises(ValueError, match="same number of categories, got 3 in p and 4 in q"):
    klax.kl_divergence(p, q)

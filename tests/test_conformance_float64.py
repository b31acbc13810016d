"""Conformance with TFP's per-distribution KL and entropy tests, in float64 (their numpy inputs).

Each case names the TFP test it ports (tensorflow_probability/python/distributions/*_test.py):
its parameters, its reference (the numpy/scipy closed form or literal values written there) and
its tolerance (TFP's assertAllClose defaults rtol = atol = 1e-6 unless the test says otherwise;
"exact" where TFP asserts equality). Cases TFP runs in float32 run here in float64 at the same
tolerance (stricter; TFP itself builds Bernoulli, OneHotCategorical, ContinuousBernoulli and
Python-float parameters in float32, and those stay float32). Distrax types are checked too where distrax has the family. klax's
cross-entropy is checked as scipy's entropy plus the reference KL.
"""

import math

import distrax
import jax
import numpy as np
import pytest
import scipy.special as sp
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions
EXACT = "exact"


@pytest.fixture(autouse=True, scope="module")
def enable_x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def _lib(lib, name):
  return getattr(tfd if lib == "tfp" else distrax, name)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def bernoulli(lib):  # bernoulli_test: testBernoulliBernoulliKL, ...WhenProbOneIsOne/IsZero.
  bern = _lib(lib, "Bernoulli")
  a, b = np.full(6, 0.6), np.full(6, 0.4)
  yield bern(probs=a), bern(probs=b), a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b)), {}
  q = np.array([0.5, 1.0, 0.0])
  yield bern(probs=np.ones(3)), bern(probs=q), [np.log(2), 0, np.inf], {}
  yield bern(probs=np.zeros(3)), bern(probs=q), [np.log(2), np.inf, 0], {}


def beta(lib):  # beta_test: testBetaBetaKL (6 U + 1e-4 concentrations), KL(d1 ‖ d1) = 0.
  rng = np.random.default_rng(0)
  for shape in [(10,), (4, 5)]:
    a1, b1, a2, b2 = (6.0 * rng.random(shape) + 1e-4 for _ in range(4))
    d1, d2 = _lib(lib, "Beta")(a1, b1), _lib(lib, "Beta")(a2, b2)
    expected = sp.betaln(a2, b2) - sp.betaln(a1, b1) + (a1 - a2) * sp.digamma(a1)
    expected += (b1 - b2) * sp.digamma(b1) + (a2 - a1 + b2 - b1) * sp.digamma(a1 + b1)
    yield d1, d2, expected, {}
    yield d1, d1, np.zeros(shape), {}


def categorical(lib):  # categorical_test: testCategoricalCategoricalKL, ...KLExtreme.
  cat, rng = _lib(lib, "Categorical"), np.random.default_rng(1)
  for categories in [2, 4]:
    for batch in [1, 10]:
      a, b = rng.standard_normal((batch, categories)), rng.standard_normal((batch, categories))
      pa, pb = _softmax(a), _softmax(b)
      yield cat(logits=a), cat(logits=b), np.sum(pa * (np.log(pa) - np.log(pb)), -1), {}
      yield cat(logits=a), cat(logits=a), np.zeros(batch), {}
  extreme = np.log(0.5) - 0.5 * (np.log(0.2) + np.log(0.6))
  for kw in ("probs", "logits"):
    p, q = np.array([0.0, 0.5, 0.5]), np.array([0.2, 0.2, 0.6])
    if kw == "logits":
      with np.errstate(divide="ignore"):
        p, q = np.log(p), np.log(q)
    yield cat(**{kw: p}), cat(**{kw: p}), 0.0, EXACT
    yield cat(**{kw: p}), cat(**{kw: q}), extreme, {}
    yield cat(**{kw: q}), cat(**{kw: p}), np.inf, {}


def onehot(lib):  # onehot_categorical_test: testCategoricalCategoricalKL (rtol 1e-4).
  oh, rng = _lib(lib, "OneHotCategorical"), np.random.RandomState(0)
  for categories in [2, 10]:
    for batch in [1, 2]:
      a, b = rng.random_sample((batch, categories)), rng.random_sample((batch, categories))
      pa, pb = _softmax(a), _softmax(b)
      expected = np.sum(pa * (np.log(pa) - np.log(pb)), -1)
      yield oh(logits=a), oh(logits=b), expected, {"atol": 0.0, "rtol": 1e-4}
      yield oh(logits=a), oh(logits=a), np.zeros(batch), {}


def dirichlet(lib):  # dirichlet_test: testDirichletDirichletKL (rtol 1e-5), KL(d1 ‖ d1) = 0.
  c1 = np.array([[1.0, 2.0, 3.0, 1.5, 2.5, 3.5], [1.5, 2.5, 3.5, 4.5, 5.5, 6.5]])
  c2 = np.array([[0.5, 1.0, 1.5, 2.0, 2.5, 3.0]])
  d1, d2 = _lib(lib, "Dirichlet")(c1), _lib(lib, "Dirichlet")(c2)
  expected = sp.gammaln(c1.sum(-1)) - sp.gammaln(c2.sum(-1))
  expected -= np.sum(sp.gammaln(c1) - sp.gammaln(c2), -1)
  expected += np.sum((c1 - c2) * (sp.digamma(c1) - sp.digamma(c1.sum(-1, keepdims=True))), -1)
  yield d1, d2, expected, {"atol": 0.0, "rtol": 1e-5}
  yield d1, d1, np.zeros(2), {}


def exponential(lib):  # exponential_test: testExponentialExponentialKL (rtol 1e-12), KL = 0.
  a, b = np.arange(0.5, 1.6, 0.1)[:, None], np.arange(0.5, 1.6, 0.1)[None, :]
  expected = np.log(a) - np.log(b) + (b - a) / a
  yield tfd.Exponential(a), tfd.Exponential(b), expected, {"atol": 0.0, "rtol": 1e-12}
  yield tfd.Exponential(a), tfd.Exponential(a), np.zeros_like(a), EXACT


def gamma(lib):  # gamma_test: testGammaGammaKL (rtol 1e-6), rate and log_rate forms.
  c0, r0 = np.array([3.0]), np.array([1.0, 2.0, 3.0, 1.5, 2.5, 3.5])
  c1, r1 = np.array([0.4]), np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
  expected = (c0 - c1) * sp.digamma(c0) + sp.gammaln(c1) - sp.gammaln(c0)
  expected = expected + c1 * np.log(r0) - c1 * np.log(r1) + c0 * (r1 / r0 - 1.0)
  g = _lib(lib, "Gamma")
  pairs = [(g(c0, r0), g(c1, r1))]
  if lib == "tfp":
    pairs.append((g(c0, log_rate=np.log(r0)), g(c1, log_rate=np.log(r1))))
  for p, q in pairs:
    yield p, q, expected, {"atol": 0.0, "rtol": 1e-6}


def laplace(lib):  # laplace_test: testLaplaceLaplaceKL (atol = rtol = 1e-5), KL(a ‖ a) = 0.
  a_loc, a_scale, b_loc, b_scale = (np.full((6, 3), v) for v in (0.5, 0.1, 0.4, 0.2))
  distance, ratio = np.abs(a_loc - b_loc), a_scale / b_scale
  expected = -np.log(ratio) - 1 + distance / b_scale + ratio * np.exp(-distance / a_scale)
  a, b = _lib(lib, "Laplace")(a_loc, a_scale), _lib(lib, "Laplace")(b_loc, b_scale)
  yield a, b, expected, {"atol": 1e-5, "rtol": 1e-5}
  yield a, a, np.zeros((6, 3)), EXACT


def normal(lib):  # normal_test: testNormalNormalKL; lognormal_test: testLogNormalLogNormalKL.
  mu_a, mu_b = np.full(6, 3.0), np.full(6, -3.0)
  s_a, s_b = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 3.5]), np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
  expected = (mu_a - mu_b) ** 2 / (2 * s_b**2)
  expected += 0.5 * (s_a**2 / s_b**2 - 1 - 2 * np.log(s_a / s_b))
  yield _lib(lib, "Normal")(mu_a, s_a), _lib(lib, "Normal")(mu_b, s_b), expected, {}
  if lib == "tfp":
    yield tfd.LogNormal(mu_a, s_a), tfd.LogNormal(mu_b, s_b), expected, {}


def cauchy(lib):  # cauchy_test: testCauchyCauchyKLWithAnalytic (symmetric).
  mu_a, mu_b = np.full(6, 3.0), np.full(6, -3.0)
  g_a, g_b = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 3.5]), np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
  expected = np.log((g_a + g_b) ** 2 + (mu_a - mu_b) ** 2) - np.log(4.0 * g_a * g_b)
  yield tfd.Cauchy(mu_a, g_a), tfd.Cauchy(mu_b, g_b), expected, {}
  yield tfd.Cauchy(mu_b, g_b), tfd.Cauchy(mu_a, g_a), expected, {}


def uniform(lib):  # uniform_test: testUniformUniformKLFinite (atol 2e-15), ...KLInfinite.
  n = np.arange(1, 7)
  a, b = _lib(lib, "Uniform")(-1.0 * n, np.ones(6)), _lib(lib, "Uniform")(-2.0 * n, np.full(6, 2.0))
  yield a, b, np.log(2.0 + 2 * n) - np.log(1.0 + n), {"atol": 2e-15}
  yield a, a, np.zeros(6), EXACT
  a = _lib(lib, "Uniform")(np.array([-1.0, 0.0, -1.0]), np.array([1.0, 2.0, 2.0]))
  yield a, _lib(lib, "Uniform")(np.zeros(3), np.ones(3)), np.full(3, np.inf), EXACT


def von_mises(lib):  # von_mises_test: testVonMisesVonMisesKL (TFP's literal values).
  vm = _lib(lib, "VonMises")
  d1 = vm(np.array([[0.05, 0.1, 0.2]]), np.array([[0.0, 0.3, 0.4]]))
  d2 = vm(np.array([[0.7, 0.5, 0.3], [0.1, 0.3, 0.5]]), np.array([[0.8, 0.0, 0.5]]))
  expected = [[0.15402061, 0.02212654, 0.00282222], [0.15402061, 0.02212654, 0.00671171]]
  yield d1, d2, expected, {}
  yield d1, d1, np.zeros((1, 3)), {}


def gumbel(lib):  # gumbel_test: testGumbelGumbelKL (atol 1e-15, rtol 1e-12), KL = 0 (1e-15).
  a_loc, a_scale = (
    np.arange(-2.0, 3.0)[:, None, None, None],
    np.arange(0.5, 2.5, 0.5)[:, None, None],
  )
  b_loc, b_scale = 2 * np.arange(-2.0, 3.0)[:, None], np.arange(0.5, 2.5, 0.5)
  expected = np.log(b_scale) - np.log(a_scale) + np.euler_gamma * (a_scale / b_scale - 1.0)
  expected = expected + np.expm1((b_loc - a_loc) / b_scale + sp.gammaln(a_scale / b_scale + 1.0))
  expected = expected + (a_loc - b_loc) / b_scale
  a, b = _lib(lib, "Gumbel")(a_loc, a_scale), _lib(lib, "Gumbel")(b_loc, b_scale)
  yield a, b, expected, {"atol": 1e-15, "rtol": 1e-12}
  yield a, a, np.zeros((5, 4, 1, 1)), {"atol": 1e-15}


def half_normal(lib):  # half_normal_test: testHalfNormalHalfNormalKL (atol 2e-15), KL = 0.
  a, b = np.arange(0.5, 1.6, 0.1)[:, None], np.arange(0.5, 1.6, 0.1)[None, :]
  expected = np.log(b) - np.log(a) + (a**2 - b**2) / (2 * b**2)
  yield tfd.HalfNormal(a), tfd.HalfNormal(b), expected, {"atol": 2e-15}
  yield tfd.HalfNormal(a), tfd.HalfNormal(a), np.zeros_like(a), EXACT


def chi2(lib):  # chi2_test: testChi2Chi2KL (rtol 5e-13), KL = 0.
  a, b = np.arange(1.0, 10.0)[:, None], np.arange(1.0, 10.0)[None, :]
  expected = sp.gammaln(b / 2) - sp.gammaln(a / 2) + (a - b) / 2 * sp.digamma(a / 2)
  yield tfd.Chi2(a), tfd.Chi2(b), expected, {"atol": 0.0, "rtol": 5e-13}
  yield tfd.Chi2(a), tfd.Chi2(a), np.zeros_like(a), EXACT


def pareto(lib):  # pareto_test: testParetoParetoKLFinite (atol 2e-15), ...KLInfinite.
  a_scale, b_conc = np.arange(1.0, 5.0), np.arange(2.0, 10.0, 2)
  expected = b_conc * np.log(a_scale) - np.log(b_conc) + b_conc - 1.0
  a, b = tfd.Pareto(1.0, a_scale), tfd.Pareto(b_conc, 1.0)
  yield a, b, expected, {"atol": 2e-15}
  yield a, a, np.zeros(4), EXACT
  yield tfd.Pareto(1.0, 1.0), tfd.Pareto(1.0, 2.0), np.inf, EXACT


def weibull(lib):  # weibull_test: testWeibullWeibullKL, testWeibullGammaKLAgreeWeibullWeibull.
  k1, l1, k2, l2 = 3.0, 2.0, 6.0, 4.0
  expected = (
    np.log(k1 / l1**k1) - np.log(k2 / l2**k2) + (k1 - k2) * (np.log(l1) - np.euler_gamma / k1)
  )
  expected += (l1 / l2) ** k2 * math.exp(math.lgamma(k2 / k1 + 1.0)) - 1.0
  yield tfd.Weibull(k1, l1), tfd.Weibull(k2, l2), expected, {}
  # Weibull(1, 4) is Gamma(1, 1/4): its Weibull ‖ Weibull form, with k2 = 1, l2 = 4.
  k2, l2 = 1.0, 4.0
  expected = (
    np.log(k1 / l1**k1) - np.log(k2 / l2**k2) + (k1 - k2) * (np.log(l1) - np.euler_gamma / k1)
  )
  expected += (l1 / l2) ** k2 * math.exp(math.lgamma(k2 / k1 + 1.0)) - 1.0
  yield tfd.Weibull(k1, l1), tfd.Gamma(1.0, 0.25), expected, {"atol": 0.0, "rtol": 1e-6}


def continuous_bernoulli(lib):  # continuous_bernoulli_test: ...ContinuousBernoulliKL.
  a, b = np.full(6, 0.6), np.full(6, 0.4)

  def log_norm(p):
    return np.log(np.abs(2.0 * np.arctanh(1.0 - 2.0 * p))) - np.log(np.abs(1.0 - 2.0 * p))

  mean = a / (2.0 * a - 1.0) + 1.0 / (2.0 * np.arctanh(1.0 - 2.0 * a))
  expected = mean * (np.log(a) + np.log1p(-b) - np.log(b) - np.log1p(-a))
  expected += log_norm(a) - log_norm(b) + np.log1p(-a) - np.log1p(-b)
  cb = tfd.ContinuousBernoulli
  yield cb(probs=a), cb(probs=b), expected, {}


def _mvn_mu_sigma(rng, batch, event):
  mat = rng.randn(*batch, event, event)
  return rng.randn(*batch, event), mat @ np.swapaxes(mat, -1, -2)


def _kl_mvn(mu_a, s_a, mu_b, s_b):  # mvn_tril_test's `_compute_non_batch_kl`.
  inv = np.linalg.inv(s_b)
  d = mu_b - mu_a
  log_det = np.log(np.linalg.det(s_b) / np.linalg.det(s_a))
  return 0.5 * (np.trace(inv @ s_a) + d @ inv @ d - mu_a.shape[0] + log_det)


def mvn(lib):  # mvn_tril_test / mvn_full_covariance_test: testKLNonBatch, KLBatch(Broadcast).
  rng = np.random.RandomState(42)
  tril = _lib(lib, "MultivariateNormalTri" if lib == "distrax" else "MultivariateNormalTriL")
  full = distrax.MultivariateNormalFullCovariance
  for batch_b in ([], [2]):
    mu_a, s_a = _mvn_mu_sigma(rng, [2], 3)
    mu_b, s_b = _mvn_mu_sigma(rng, batch_b, 3)
    expected = [
      _kl_mvn(mu_a[i], s_a[i], *(mu_b[i], s_b[i]) if batch_b else (mu_b, s_b)) for i in range(2)
    ]
    yield tril(mu_a, np.linalg.cholesky(s_a)), tril(mu_b, np.linalg.cholesky(s_b)), expected, {}
    yield full(mu_a, s_a), full(mu_b, s_b), expected, {}
    yield tril(mu_a, np.linalg.cholesky(s_a)), full(mu_a, s_a), np.zeros(2), {}
  mu_a, s_a = _mvn_mu_sigma(rng, [], 2)
  mu_b, s_b = _mvn_mu_sigma(rng, [], 2)
  yield (
    tril(mu_a, np.linalg.cholesky(s_a)),
    tril(mu_b, np.linalg.cholesky(s_b)),
    _kl_mvn(mu_a, s_a, mu_b, s_b),
    {},
  )


CASES = [
  bernoulli,
  beta,
  categorical,
  onehot,
  dirichlet,
  laplace,
  normal,
  uniform,
  von_mises,
  gumbel,
  mvn,
]
TFP_ONLY = [exponential, gamma, cauchy, half_normal, chi2, pareto, weibull, continuous_bernoulli]


@pytest.mark.parametrize(
  ("case", "lib"),
  [(c, "tfp") for c in CASES + TFP_ONLY] + [(c, "distrax") for c in [*CASES, gamma]],
  ids=lambda x: getattr(x, "__name__", x),
)
def test_kl_matches_tfp_reference(case, lib):
  for i, (p, q, expected, tol) in enumerate(case(lib)):
    actual = np.asarray(klax.kl_divergence(p, q))
    expected = np.broadcast_to(np.asarray(expected, np.float64), actual.shape)
    if tol == EXACT:
      np.testing.assert_array_equal(actual, expected, err_msg=f"{case.__name__} {lib} #{i}")
    else:
      tol = {"rtol": 1e-6, "atol": 1e-6} | tol
      np.testing.assert_allclose(actual, expected, **tol, err_msg=f"{case.__name__} {lib} #{i}")

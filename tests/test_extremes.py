"""Numerical extremes: closed forms over forty orders of magnitude, far-apart means, logits of
±1e4, near-identical p and q, finite gradients at the edges, and low-precision inputs.

References are evaluated with mpmath at 40 significant digits from the (rounded) float32 inputs.
"""

import distrax
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions
mpmath.mp.dps = 40
SCALES = [10.0**e for e in range(-20, 21, 5)]


def _mp(*values):
  return [mpmath.mpf(float(v)) for v in values]


def normal_normal(m1, s1, m2, s2):
  m1, s1, m2, s2 = _mp(m1, s1, m2, s2)
  return mpmath.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - mpmath.mpf(1) / 2


def normal_laplace(m1, s1, m2, b):
  m1, s1, m2, b = _mp(m1, s1, m2, b)
  d = m1 - m2
  mean_abs = s1 * mpmath.sqrt(2 / mpmath.pi) * mpmath.exp(-(d**2) / (2 * s1**2))
  mean_abs += d * mpmath.erf(d / (s1 * mpmath.sqrt(2)))
  return -mpmath.log(2 * mpmath.pi * mpmath.e * s1**2) / 2 + mpmath.log(2 * b) + mean_abs / b


def laplace_normal(m1, b, m2, s2):
  m1, b, m2, s2 = _mp(m1, b, m2, s2)
  return (
    -1
    - mpmath.log(2 * b)
    + mpmath.log(2 * mpmath.pi * s2**2) / 2
    + (2 * b**2 + (m1 - m2) ** 2) / (2 * s2**2)
  )


def laplace_laplace(m1, b1, m2, b2):
  m1, b1, m2, b2 = _mp(m1, b1, m2, b2)
  d = abs(m1 - m2)
  return mpmath.log(b2 / b1) + (b1 * mpmath.exp(-d / b1) + d) / b2 - 1


def rate_kl(r1, r2, mean):  # Exponential (mean = 1) and Poisson (mean = λ_p): mean · (e^δ − 1 − δ).
  r1, r2 = _mp(r1, r2)
  delta = mpmath.log(r2 / r1)
  return mpmath.mpf(float(mean)) * (mpmath.expm1(delta) - delta)


def _f32(*values):
  return [np.float32(v) for v in values]


PAIRS = {  # name: (make p and q from a scale s, the mpmath reference, relative tolerance)
  # klax's own closed forms: evaluated in ratios, to a few float32 ulps.
  "Normal ‖ Laplace": (
    lambda s: (distrax.Normal(*_f32(0.2 * s, 0.5 * s)), distrax.Laplace(*_f32(-0.3 * s, s))),
    lambda p, q: normal_laplace(p.loc, p.scale, q.loc, q.scale),
    2e-6,
  ),
  "Laplace ‖ Normal": (
    lambda s: (distrax.Laplace(*_f32(0.2 * s, 0.5 * s)), distrax.Normal(*_f32(-0.3 * s, s))),
    lambda p, q: laplace_normal(p.loc, p.scale, q.loc, q.scale),
    2e-6,
  ),
  "Exponential ‖ Exponential": (
    lambda s: (tfd.Exponential(*_f32(1 / s)), tfd.Exponential(*_f32(3 / s))),
    lambda p, q: rate_kl(p.rate, q.rate, 1.0),
    2e-6,
  ),
  "Poisson ‖ Poisson": (
    lambda s: (tfd.Poisson(rate=np.float32(s)), tfd.Poisson(rate=np.float32(2.5 * s))),
    lambda p, q: rate_kl(p.rate, q.rate, p.rate),
    2e-6,
  ),
  # Pairs that distrax and TFP compute themselves: they subtract logs of the scales, which
  # costs up to ~5e-6 relative accuracy at 1e±20 in float32.
  "Normal ‖ Normal (distrax)": (
    lambda s: (distrax.Normal(*_f32(0.2 * s, 0.5 * s)), distrax.Normal(*_f32(-0.3 * s, s))),
    lambda p, q: normal_normal(p.loc, p.scale, q.loc, q.scale),
    1e-5,
  ),
  "Laplace ‖ Laplace (TFP)": (
    lambda s: (tfd.Laplace(*_f32(0.2 * s, 0.5 * s)), tfd.Laplace(*_f32(-0.3 * s, s))),
    lambda p, q: laplace_laplace(p.loc, p.scale, q.loc, q.scale),
    1e-5,
  ),
}


@pytest.mark.parametrize("scale", SCALES, ids=[f"1e{e}" for e in range(-20, 21, 5)])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_closed_forms_hold_across_forty_orders_of_magnitude(name, scale):
  make, reference, rtol = PAIRS[name]
  p, q = make(scale)
  got = klax.kl_divergence(p, q)
  assert got.dtype == jnp.float32 and np.isfinite(got)
  np.testing.assert_allclose(float(got), float(reference(p, q)), rtol=rtol)


def _tril(scale):
  return (scale * np.array([[1.0, 0.0], [0.5, 1.2]])).astype(np.float32)


def _mvn_reference(m1, l1, m2, l2):
  m1, m2 = mpmath.matrix([float(v) for v in m1]), mpmath.matrix([float(v) for v in m2])
  l1, l2 = mpmath.matrix(l1.astype(float).tolist()), mpmath.matrix(l2.astype(float).tolist())
  c1, c2 = l1 * l1.T, l2 * l2.T
  inv2, diff = mpmath.inverse(c2), m2 - m1
  trace = sum((inv2 * c1)[i, i] for i in range(2))
  mahalanobis = (diff.T * inv2 * diff)[0, 0]
  return (trace + mahalanobis - 2 + mpmath.log(mpmath.det(c2) / mpmath.det(c1))) / 2


@pytest.mark.parametrize("scale", [1e-15, 1e-5, 1.0, 1e5, 1e15])
def test_multivariate_normals_across_scales(scale):
  """distrax's Tri ‖ Tri, and klax's low-rank-update cross pair (which forms covariances, so
  float32 limits it to scales whose squares are representable: about 1e±19)."""
  m1, m2 = np.float32([0.1 * scale, 0.0]), np.float32([0.0, -0.2 * scale])
  l1, l2 = _tril(scale), _tril(2 * scale)
  l2[1, 0] = np.float32(-0.3 * scale)
  expected = float(_mvn_reference(m1, l1, m2, l2))
  tri = klax.kl_divergence(
    distrax.MultivariateNormalTri(m1, l1), distrax.MultivariateNormalTri(m2, l2)
  )
  np.testing.assert_allclose(float(tri), expected, rtol=2e-5)
  c1 = l1.astype(np.float64) @ l1.T.astype(np.float64)  # Σ_p = diag(c) + u uᵀ, exactly.
  u = np.float32(c1[:, :1] / np.sqrt(c1[0, 0]))
  diag = np.float32(np.diag(c1 - u.astype(np.float64) @ u.T.astype(np.float64)) + 0.0)
  low_rank = tfd.MultivariateNormalDiagPlusLowRankCovariance(m1, diag, u)
  got = klax.kl_divergence(low_rank, distrax.MultivariateNormalTri(m2, l2))
  exact_cov = np.diag(diag.astype(np.float64)) + u.astype(np.float64) @ u.T.astype(np.float64)
  l1_exact = np.linalg.cholesky(exact_cov / scale**2) * scale
  np.testing.assert_allclose(float(got), float(_mvn_reference(m1, l1_exact, m2, l2)), rtol=1e-4)


def test_far_apart_means():
  for distance in (1e3, 1e10, 1e18):
    p, q = distrax.Normal(0.0, 1.0), distrax.Normal(np.float32(distance), 1.0)
    np.testing.assert_allclose(
      float(klax.kl_divergence(p, q)), float(normal_normal(0, 1, distance, 1)), rtol=1e-6
    )
    got = klax.kl_divergence(distrax.Normal(0.0, 1.0), distrax.Laplace(np.float32(distance), 1.0))
    np.testing.assert_allclose(float(got), float(normal_laplace(0, 1, distance, 1)), rtol=1e-6)


def _log_softmax64(x):
  x = np.asarray(x, np.float64)
  shifted = x - x.max()
  return shifted - np.log(np.sum(np.exp(shifted)))


def test_logits_of_plus_minus_ten_thousand():
  rng = np.random.default_rng(0)
  p_logits = np.float32(rng.choice([-1e4, 0.0, 1e4], size=64) + rng.normal(size=64))
  q_logits = np.float32(rng.choice([-1e4, 0.0, 1e4], size=64) + rng.normal(size=64))
  log_p, log_q = _log_softmax64(p_logits), _log_softmax64(q_logits)
  probs = np.exp(log_p)
  expected_kl = np.sum(probs * (log_p - log_q))
  np.testing.assert_allclose(klax.kl_divergence_logits(p_logits, q_logits), expected_kl, rtol=1e-5)
  np.testing.assert_allclose(
    klax.entropy_logits(p_logits), -np.sum(probs * log_p), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    klax.cross_entropy_logits(p_logits, q_logits), -np.sum(probs * log_q), rtol=1e-5
  )
  for function in (klax.kl_divergence_logits, klax.cross_entropy_logits):
    grads = jax.grad(function, argnums=(0, 1))(p_logits, q_logits)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  assert bool(jnp.all(jnp.isfinite(jax.grad(klax.entropy_logits)(p_logits))))


NEAR = {  # name: a function of ε giving (p, q) that differ by about ε
  "Normal ‖ Normal": lambda e: (distrax.Normal(0.0, 1.0), distrax.Normal(e, 1.0 + e)),
  "Multinomial": lambda e: (
    tfd.Multinomial(4.0, logits=jnp.array([0.3, -1.0, 2.0])),
    tfd.Multinomial(4.0, logits=jnp.array([0.3, -1.0, 2.0]) + jnp.array([e, -e, 0.0])),
  ),
  "Exponential": lambda e: (tfd.Exponential(2.0), tfd.Exponential(2.0 * (1 + e))),
  "Poisson": lambda e: (tfd.Poisson(rate=3.0), tfd.Poisson(rate=3.0 * (1 + e))),
  "Geometric": lambda e: (tfd.Geometric(probs=0.3), tfd.Geometric(probs=0.3 * (1 + e))),
  "Binomial": lambda e: (tfd.Binomial(5.0, probs=0.3), tfd.Binomial(5.0, probs=0.3 * (1 + e))),
  "MVN Tri": lambda e: (
    distrax.MultivariateNormalTri(jnp.zeros(3), jnp.eye(3)),
    distrax.MultivariateNormalTri(jnp.full(3, e), jnp.eye(3) * (1 + e)),
  ),
}


@pytest.mark.parametrize("name", sorted(NEAR))
def test_near_identical_distributions_are_not_negative(name):
  for epsilon in (1e-2, 1e-4, 1e-6, 1e-8, 0.0):
    p, q = NEAR[name](np.float32(epsilon))
    value = float(klax.kl_divergence(p, q))
    assert value >= 0.0, (epsilon, value)
    assert value < 10 * max(epsilon, 1e-7) ** 2 + 1e-7, (epsilon, value)
  p, q = NEAR[name](np.float32(0.0))
  assert abs(float(klax.kl_divergence(p, q))) <= 1e-6


@pytest.mark.parametrize("vocabulary", [10, 1_000, 32_000])
def test_near_identical_logits_are_accurate(vocabulary):
  rng = np.random.default_rng(vocabulary)
  base = np.float32(3.0 * rng.normal(size=vocabulary))
  for epsilon in (1e-2, 1e-4, 1e-6):
    other = np.float32(base + epsilon * rng.normal(size=vocabulary))
    log_p, log_q = _log_softmax64(base), _log_softmax64(other)
    expected = float(np.sum(np.exp(log_p) * (log_p - log_q)))
    got = float(klax.kl_divergence_logits(base, other))
    assert got >= 0.0
    assert abs(got - expected) <= 1e-3 * expected + 1e-12, (epsilon, got, expected)


def test_gradients_are_finite_at_collapsing_and_huge_scales():
  """Derivatives through scales of 1e-20 stay finite (klax's ratios never form s²). Not tried:
  a q whose scale collapses under a fixed p, KL ~ 1/s, whose derivative in s is ~1/s² and
  overflows float32 for s < 1e-19 however it is computed."""

  def kls(log_scale):  # Every scale and rate built as exp(±log_scale).
    s, rate = jnp.exp(log_scale), jnp.exp(-log_scale)
    return jnp.stack(
      [
        klax.kl_divergence(distrax.Normal(0.0, s), distrax.Normal(0.0, 1.0)),
        klax.kl_divergence(distrax.Normal(0.1, s), distrax.Laplace(0.0, 1.0)),
        klax.kl_divergence(distrax.Laplace(0.1, s), distrax.Normal(0.0, 1.0)),
        klax.kl_divergence(tfd.Exponential(rate), tfd.Exponential(1.0)),
        klax.kl_divergence(tfd.Poisson(rate=s), tfd.Poisson(rate=1.0)),
        klax.kl_divergence(tfd.Poisson(log_rate=log_scale), tfd.Poisson(rate=1.0)),
      ]
    )

  for log_scale in (np.log(1e-20), np.log(1e-8), 0.0, np.log(1e8), np.log(1e15)):
    values, jacobian = kls(jnp.float32(log_scale)), jax.jacobian(kls)(jnp.float32(log_scale))
    assert bool(jnp.all(jnp.isfinite(values))), (log_scale, values)
    assert bool(jnp.all(jnp.isfinite(jacobian))), (log_scale, jacobian)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_closed_forms_compute_in_their_dtype(dtype):
  """Closed forms keep the distributions' dtype: correct to that dtype's precision."""
  p, q = distrax.Normal(dtype(0.5), dtype(1.0)), distrax.Normal(dtype(-0.25), dtype(2.0))
  got = klax.kl_divergence(p, q)
  assert got.dtype == dtype
  expected = float(normal_normal(p.loc, p.scale, q.loc, q.scale))
  assert abs(float(got) - expected) <= 8 * float(jnp.finfo(dtype).eps) * expected


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_arrays_are_promoted_to_float32(dtype):
  p_logits = jnp.asarray([2.0, -1.0, 0.5], dtype)
  q_logits = jnp.asarray([0.0, 1.0, -0.5], dtype)
  got = klax.kl_divergence_logits(p_logits, q_logits)
  assert got.dtype == jnp.float32
  log_p, log_q = _log_softmax64(p_logits), _log_softmax64(q_logits)
  np.testing.assert_allclose(got, np.sum(np.exp(log_p) * (log_p - log_q)), rtol=1e-6)


def beta_beta(a1, b1, a2, b2):
  a1, b1, a2, b2 = _mp(a1, b1, a2, b2)

  def log_beta(a, b):
    return mpmath.loggamma(a) + mpmath.loggamma(b) - mpmath.loggamma(a + b)

  return (
    log_beta(a2, b2)
    - log_beta(a1, b1)
    + (a1 - a2) * mpmath.digamma(a1)
    + (b1 - b2) * mpmath.digamma(b1)
    + (a2 - a1 + b2 - b1) * mpmath.digamma(a1 + b1)
  )


def gamma_gamma(shape1, rate1, shape2, rate2):  # Shape and rate.
  a1, r1, a2, r2 = _mp(shape1, rate1, shape2, rate2)
  return (
    (a1 - a2) * mpmath.digamma(a1)
    - mpmath.loggamma(a1)
    + mpmath.loggamma(a2)
    + a2 * mpmath.log(r1 / r2)
    + a1 * (r2 - r1) / r1
  )


def poisson_poisson(rate1, rate2):
  return rate_kl(rate1, rate2, rate1)


@pytest.mark.parametrize("base", [1e-3, 0.3, 1.0, 3.0, 50.0, 1e4, 1e8])
def test_beta_gamma_poisson_are_accurate_from_far_to_near_identical(base):
  # TFP's Beta and Gamma forms (differences of log Γ and ψ) came out negative and 100% off
  # below ε ≈ 1e-3; klax's remainders keep every digit float32 holds in (p, q).
  for epsilon in (0.9, 0.3, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6):
    a1, b1 = np.float32(base), np.float32(2 * base)
    a2, b2 = np.float32(base * (1 + epsilon)), np.float32(2 * base * (1 - epsilon))
    r1, r2 = np.float32(1.5), np.float32(1.5 * (1 - epsilon))
    cases = [
      (distrax.Beta(a1, b1), tfd.Beta(a2, b2), beta_beta(a1, b1, a2, b2)),
      (distrax.Gamma(a1, r1), tfd.Gamma(a2, r2), gamma_gamma(a1, r1, a2, r2)),
      (tfd.Poisson(rate=a1), tfd.Poisson(rate=a2), poisson_poisson(a1, a2)),
      (tfd.Exponential(a1), tfd.Exponential(a2), rate_kl(a1, a2, 1.0)),
    ]
    for p, q, expected in cases:
      got = float(jax.jit(klax.kl_divergence)(p, q))
      assert got > 0 and abs(got - float(expected)) <= 2e-5 * float(expected), (
        type(p).__name__,
        epsilon,
        got,
        float(expected),
      )
    assert float(klax.kl_divergence(distrax.Beta(a1, b1), distrax.Beta(a1, b1))) == 0.0


def test_beta_and_gamma_gradients_match_finite_differences():
  def beta_kl(theta):
    return klax.kl_divergence(distrax.Beta(theta[0], theta[1]), distrax.Beta(theta[2], theta[3]))

  def gamma_kl(theta):
    return klax.kl_divergence(distrax.Gamma(theta[0], theta[1]), distrax.Gamma(theta[2], theta[3]))

  for kl in (beta_kl, gamma_kl):
    for theta in ([0.5, 2.0, 0.7, 1.5], [3.0, 2.0, 3.001, 2.002], [40.0, 5.0, 30.0, 6.0]):
      theta = np.array(theta)
      grad = np.asarray(jax.grad(kl)(jnp.asarray(theta, jnp.float32)))
      for i in range(4):  # Central differences of the float64 mpmath reference.
        step = np.zeros(4)
        step[i] = 1e-6 * theta[i]
        reference = beta_beta if kl is beta_kl else gamma_gamma
        numeric = (reference(*(theta + step)) - reference(*(theta - step))) / (2 * step[i])
        np.testing.assert_allclose(grad[i], float(numeric), rtol=2e-3, atol=1e-5)
    # At p = q the gradient is zero (the KL's minimum).
    np.testing.assert_allclose(jax.grad(kl)(jnp.array([2.0, 3.0, 2.0, 3.0])), 0.0, atol=1e-6)

"""Differential tests of every pair klax registers or overrides, against independent references.

One row per pair (all its distrax/TFP type combinations in one jitted function): a hypothesis
strategy over wide parameters (shapes 1e-3 to 1e4 in every small/large mix, near-identical pairs,
scales 1e±30 where the family allows) and a reference that is not klax (mpmath at 40 digits from
the textbook form, exact sums for the discrete families). Checked: value, dtype, shape, finite
gradients where the value is finite; broadcasting batch shapes; NaN for invalid and NaN
parameters. `ROWS` is shared with the float64 module.

Tolerance in float32: 1e-5 relative, plus (absolute, 32 ε times): for the logits families ε (the
logits KL of klax._discrete rounds to ~ε² where p = q); for the Gamma-function families
Σ |δ| |ψ(x) − log x| (δ the change in a shape, x its value in p): float32's digamma is
rounded to a few ulps, and that rounding is multiplied by δ (the only part of klax's form that
is not cancellation-free; it is small when δ is, so near-identical pairs keep full relative
accuracy).
"""

import functools

import distrax
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions
mpmath.mp.dps = 40
BATCH = 6  # Values per hypothesis example (fixed shapes: one compilation per row).
EPS32 = float(np.finfo(np.float32).eps)
# The logits KL (klax._logits) is exact only to about ε² absolute where p = q in float32 (its
# terms are ε-rounded probabilities times ε-rounded log ratios): floor 32 ε · ε. Above a KL of
# 1e-2 it takes its plain form E_p[a − b] − LSE(a) + LSE(b), whose documented error is about
# 3e-7 (1 + max |a − b|) absolute: floor (1 + max |a − b|) / 10 there.
LOGITS_FLOOR = EPS32


def _logits_floor(kl, tp, tq) -> float:
  if kl < 1e-2:
    return LOGITS_FLOOR
  return (1 + float(np.max(np.abs(np.asarray(tp, np.float64) - np.asarray(tq, np.float64))))) / 10


LOGITS_RTOL = 1e-5


def _mp(x):
  return mpmath.mpf(float(x))


def _psi_floor(pairs):
  """Σ |δ| |ψ(x) − log x| over (x, y) pairs: the digamma rounding term of the tolerance."""
  return sum(
    abs(_mp(y) - _mp(x)) * abs(mpmath.digamma(_mp(x)) - mpmath.log(_mp(x))) for x, y in pairs
  )


# References (textbook forms, mpmath): each takes one element's parameters as numpy arrays.
def ref_gamma(tp, tq):
  (a1, r1), (a2, r2) = map(lambda t: [_mp(v) for v in t], (tp, tq))
  value = (a1 - a2) * mpmath.digamma(a1) - mpmath.loggamma(a1) + mpmath.loggamma(a2)
  return value + a2 * mpmath.log(r1 / r2) + a1 * (r2 - r1) / r1, _psi_floor([(tp[0], tq[0])])


def ref_dirichlet(tp, tq):
  a, b = [_mp(v) for v in tp], [_mp(v) for v in tq]
  sa, sb = sum(a), sum(b)
  value = mpmath.loggamma(sa) - mpmath.loggamma(sb)
  value += sum(mpmath.loggamma(y) - mpmath.loggamma(x) for x, y in zip(a, b, strict=True))
  value += sum(
    (x - y) * (mpmath.digamma(x) - mpmath.digamma(sa)) for x, y in zip(a, b, strict=True)
  )
  floor = _psi_floor(list(zip(tp, tq, strict=True))) + _psi_floor([(float(sa), float(sb))])
  return value, floor


def ref_poisson(tp, tq):
  lp, lq = _mp(tp[0]), _mp(tq[0])
  return lp * mpmath.log(lp / lq) + lq - lp, 0


def ref_exponential(tp, tq):
  lp, lq = _mp(tp[0]), _mp(tq[0])
  return mpmath.log(lp / lq) + lq / lp - 1, 0


def ref_geometric(tp, tq):  # Probabilities of success; counts of failures.
  p1, p2 = _mp(tp[0]), _mp(tq[0])
  return mpmath.log(p1 / p2) + (1 - p1) / p1 * mpmath.log((1 - p1) / (1 - p2)), 0


def _sigmoid(x):
  return 1 / (1 + mpmath.exp(-_mp(x)))


def ref_binomial(tp, tq):  # (n, logit): an exact sum over k = 0..n.
  n, p, q = int(tp[0]), _sigmoid(tp[1]), _sigmoid(tq[1])
  total = 0
  for k in range(n + 1):
    pk = mpmath.binomial(n, k) * p**k * (1 - p) ** (n - k)
    qk = mpmath.binomial(n, k) * q**k * (1 - q) ** (n - k)
    total += pk * mpmath.log(pk / qk)
  return total, 0


def _softmax(logits):
  values = [mpmath.exp(_mp(v)) for v in logits]
  return [v / sum(values) for v in values]


def ref_categorical(tp, tq):
  p, q = _softmax(tp), _softmax(tq)
  kl = sum(a * mpmath.log(a / b) for a, b in zip(p, q, strict=True))
  # distrax stores log_softmax(logits) rounded to the dtype: entry i moves by up to
  # ε (1 + max|t| + log K), which moves the KL by Σ_i |p_i − q_i| times that (its derivative in
  # q's logits is q − p; a shift common to all entries changes nothing). 32ε · floor covers it.
  spread = 1 + float(np.max(np.abs(np.concatenate([tp, tq])))) + np.log(len(tp))
  representation = float(sum(abs(a - b) for a, b in zip(p, q, strict=True))) * spread / 16
  return kl, _logits_floor(kl, tp, tq) + representation


def ref_multinomial(tp, tq):  # (n, logits...): n times the categorical KL.
  kl, floor = ref_categorical(tp[1:], tq[1:])
  return int(tp[0]) * kl, int(tp[0]) * floor


def ref_bernoulli(tp, tq):
  p, q = _sigmoid(tp[0]), _sigmoid(tq[0])
  return p * mpmath.log(p / q) + (1 - p) * mpmath.log((1 - p) / (1 - q)), 0


def ref_normal_laplace(tp, tq):
  (m1, s1), (m2, b) = map(lambda t: [_mp(v) for v in t], (tp, tq))
  d = m1 - m2
  mean_abs = s1 * mpmath.sqrt(2 / mpmath.pi) * mpmath.exp(-(d**2) / (2 * s1**2))
  mean_abs += d * mpmath.erf(d / (s1 * mpmath.sqrt(2)))
  return -mpmath.log(2 * mpmath.pi * mpmath.e * s1**2) / 2 + mpmath.log(2 * b) + mean_abs / b, 0


def ref_laplace_normal(tp, tq):
  (m1, b), (m2, s2) = map(lambda t: [_mp(v) for v in t], (tp, tq))
  value = -1 - mpmath.log(2 * b) + mpmath.log(2 * mpmath.pi * s2**2) / 2
  return value + (2 * b**2 + (m1 - m2) ** 2) / (2 * s2**2), 0


def _mvn_moments(t):  # (m0, m1, l00, l10, l11) -> mean, covariance (mpmath).
  mean = mpmath.matrix([_mp(t[0]), _mp(t[1])])
  chol = mpmath.matrix([[_mp(t[2]), 0], [_mp(t[3]), _mp(t[4])]])
  return mean, chol * chol.T


def ref_mvn(tp, tq):
  (m1, c1), (m2, c2) = _mvn_moments(tp), _mvn_moments(tq)
  inv2, diff = mpmath.inverse(c2), m2 - m1
  trace = sum((inv2 * c1)[i, i] for i in range(2))
  return (
    trace + (diff.T * inv2 * diff)[0, 0] - 2 + mpmath.log(mpmath.det(c2) / mpmath.det(c1))
  ) / 2, 0


# Strategies: arrays [BATCH, k] for p and q.
def _exponents(lo, hi, k):
  return st.lists(st.floats(lo, hi), min_size=BATCH * k, max_size=BATCH * k).map(
    lambda v: np.reshape(np.asarray(v), (BATCH, k))
  )


@st.composite
def positive_pair(draw, k, lo=-3.0, hi=4.0, scale=None):
  """10^U(lo, hi) parameters; some rows near-identical (q = p (1 + ε)), some sharing 10^±30."""
  p = 10.0 ** draw(_exponents(lo, hi, k))
  q = 10.0 ** draw(_exponents(lo, hi, k))
  near = np.asarray(draw(st.lists(st.booleans(), min_size=BATCH, max_size=BATCH)))
  eps = 10.0 ** draw(_exponents(-7.0, -1.0, k)) * np.sign(draw(_exponents(-1.0, 1.0, k)) + 1e-9)
  q = np.where(near[:, None], p * (1 + eps), q)
  if scale is not None:  # Columns `scale` (rates, scales) take a common factor 10^[-30, 30].
    factor = 10.0 ** draw(_exponents(-30.0, 30.0, 1))
    p[:, scale], q[:, scale] = p[:, scale] * factor[:, 0], q[:, scale] * factor[:, 0]
  return p.astype(np.float32), q.astype(np.float32)


@st.composite
def real_pair(draw, k, lo=-4.0, hi=4.0, first=None):
  p = np.asarray(draw(_exponents(lo, hi, k)))
  q = np.asarray(draw(_exponents(lo, hi, k)))
  near = np.asarray(draw(st.lists(st.booleans(), min_size=BATCH, max_size=BATCH)))
  eps = 10.0 ** draw(_exponents(-6.0, -1.0, k)) * np.sign(draw(_exponents(-1.0, 1.0, k)) + 1e-9)
  q = np.where(near[:, None], p + eps, q)
  if first is not None:  # A fixed first column (a number of trials).
    p[:, 0] = q[:, 0] = first
  return p.astype(np.float32), q.astype(np.float32)


@st.composite
def location_scale_pair(draw):
  """(loc, scale) pairs: one common scale 10^[-30, 30]; locations within 10^±3 of it."""
  factor = 10.0 ** draw(_exponents(-30.0, 30.0, 1))
  sp, sq = 10.0 ** draw(_exponents(-3.0, 3.0, 1)), 10.0 ** draw(_exponents(-3.0, 3.0, 1))
  mp, mq = draw(_exponents(-3.0, 3.0, 1)), draw(_exponents(-3.0, 3.0, 1))
  p = np.concatenate([mp * factor, sp * factor], axis=1)
  q = np.concatenate([mq * factor, sq * factor], axis=1)
  return p.astype(np.float32), q.astype(np.float32)


@st.composite
def mvn_pair(draw):
  """(m0, m1, l00, l10, l11): diagonals of either sign, |diag| in 10^[-2, 2]."""
  out = []
  for _ in range(2):
    means, lower = draw(_exponents(-2.0, 2.0, 2)), draw(_exponents(-2.0, 2.0, 1))
    diag = 10.0 ** draw(_exponents(-2.0, 2.0, 2)) * np.sign(draw(_exponents(-1.0, 1.0, 2)) + 1e-9)
    out.append(np.concatenate([means, diag[:, :1], lower, diag[:, 1:]], axis=1).astype(np.float32))
  return tuple(out)


# Builders: (theta [..., k]) -> distribution; each row's combinations share one reference.
def _mvn_tri(cls, t):
  zero = jnp.zeros_like(t[..., 2])
  tril = jnp.stack([jnp.stack([t[..., 2], zero], -1), jnp.stack([t[..., 3], t[..., 4]], -1)], -2)
  return cls(t[..., :2], tril)


def _mvn_diag(cls, t):  # Uses (m0, m1, l00, ·, l11): the strategy sets l10 = 0 for it.
  return cls(t[..., :2], jnp.stack([t[..., 2], t[..., 4]], -1))


def _low_rank(t):  # Σ = diag(c) + u uᵀ = L Lᵀ with c = (0⁺, l11²), u = L[:, 0].
  u = jnp.stack([t[..., 2], t[..., 3]], -1)[..., None]
  diag = jnp.stack([jnp.full_like(t[..., 2], 1e-30), t[..., 4] ** 2], -1)
  return tfd.MultivariateNormalDiagPlusLowRankCovariance(t[..., :2], diag, u)


def _both(distrax_cls, tfd_cls, make):
  """The two mixed combinations (distrax ‖ TFP, TFP ‖ distrax) of one family pair."""
  return [
    (functools.partial(make, distrax_cls[0]), functools.partial(make, tfd_cls[1])),
    (functools.partial(make, tfd_cls[0]), functools.partial(make, distrax_cls[1])),
  ]


def _params(cls, t, *names):
  return cls(*(t[..., i] for i in range(len(names))))


def _two(cls, t):
  return cls(t[..., 0], t[..., 1])


def _logits(cls, t):
  return cls(logits=t)


def _logit(cls, t):
  return cls(logits=t[..., 0])


def _zero_l10(pair):
  p, q = pair
  p, q = p.copy(), q.copy()
  p[:, 3] = q[:, 3] = 0.0
  return p, q


NAN = np.nan
ROWS = {  # name: (strategy, [(build p, build q)], reference, rtol, invalid (p, q) parameters)
  "Gamma": (
    positive_pair(2, scale=1),
    _both((distrax.Gamma,) * 2, (tfd.Gamma,) * 2, _two),
    ref_gamma,
    1e-5,
    [
      ([1, -1], [1, 2]),
      ([-1, 1], [1, 1]),
      ([1, 1], [1, 0]),
      ([NAN, 1], [1, 1]),
      ([1, np.inf], [1, 1]),
    ],
  ),
  "Beta": (
    positive_pair(2),
    _both((distrax.Beta,) * 2, (tfd.Beta,) * 2, _two),
    ref_dirichlet,
    1e-5,
    [([1, -1], [1, 2]), ([0, 1], [1, 1]), ([1, 1], [NAN, 1]), ([np.inf, 1], [1, 1])],
  ),
  "Dirichlet": (
    positive_pair(3),
    _both((distrax.Dirichlet,) * 2, (tfd.Dirichlet,) * 2, lambda cls, t: cls(t)),
    ref_dirichlet,
    1e-5,
    [([1, -1, 1], [1, 2, 1]), ([1, 1, 1], [1, 1, NAN]), ([1, 0, 1], [1, 1, 1])],
  ),
  "Poisson": (
    positive_pair(1, scale=0),
    [(lambda t: tfd.Poisson(rate=t[..., 0]),) * 2],
    ref_poisson,
    1e-5,
    [([-1], [-2]), ([1], [-2]), ([0], [1]), ([NAN], [1]), ([1], [np.inf])],
  ),
  "Exponential": (
    positive_pair(1, scale=0),
    [(lambda t: tfd.Exponential(t[..., 0]),) * 2],
    ref_exponential,
    1e-5,
    [([-1], [2]), ([1], [0]), ([1], [NAN]), ([np.inf], [1])],
  ),
  "Geometric": (
    positive_pair(1, -4.0, -1e-3),
    [(lambda t: tfd.Geometric(probs=t[..., 0]),) * 2],
    ref_geometric,
    1e-5,
    [([-0.1], [0.5]), ([0.5], [1.5]), ([0.0], [0.5]), ([NAN], [0.5])],
  ),
  "Binomial": (
    real_pair(2, -8.0, 8.0, first=7.0),
    [(lambda t: tfd.Binomial(t[..., 0], logits=t[..., 1]),) * 2],
    ref_binomial,
    1e-5,
    [([-3, 0.5], [-3, 0.2]), ([NAN, 0.5], [NAN, 0.2]), ([4, NAN], [4, 0.2])],
  ),
  "Multinomial": (
    real_pair(4, -8.0, 8.0, first=5.0),
    [(lambda t: tfd.Multinomial(t[..., 0], logits=t[..., 1:]),) * 2],
    ref_multinomial,
    LOGITS_RTOL,
    [([-3, 0, 1, 2], [-3, 1, 0, 2]), ([4, 0, NAN, 2], [4, 1, 0, 2])],
  ),
  "Categorical": (
    real_pair(3, -20.0, 20.0),
    _both((distrax.Categorical,) * 2, (tfd.Categorical,) * 2, _logits),
    ref_categorical,
    LOGITS_RTOL,
    [([0, NAN, 1], [0, 1, 2]), ([0, -np.inf, 1], [0, 1, NAN])],
  ),
  "Bernoulli": (
    real_pair(1, -20.0, 20.0),
    _both((distrax.Bernoulli,) * 2, (tfd.Bernoulli,) * 2, _logit),
    ref_bernoulli,
    1e-5,
    [([NAN], [0.5]), ([0.5], [NAN])],
  ),
  "Normal ‖ Laplace": (
    location_scale_pair(),
    _both((distrax.Normal, distrax.Laplace), (tfd.Normal, tfd.Laplace), _two),
    ref_normal_laplace,
    1e-5,
    [([0, -1], [0, 1]), ([0, 1], [0, 0]), ([NAN, 1], [0, 1]), ([0, 1], [np.inf, 1])],
  ),
  "Laplace ‖ Normal": (
    location_scale_pair(),
    _both((distrax.Laplace, distrax.Normal), (tfd.Laplace, tfd.Normal), _two),
    ref_laplace_normal,
    1e-5,
    [([0, -1], [0, 1]), ([0, 1], [0, -2]), ([0, 1], [NAN, 1]), ([0, np.inf], [0, 1])],
  ),
  "MVN Tri ‖ TriL": (
    mvn_pair(),
    _both((distrax.MultivariateNormalTri,) * 2, (tfd.MultivariateNormalTriL,) * 2, _mvn_tri),
    ref_mvn,
    2e-5,
    [([0, 0, 0, 0, 1], [0, 0, 1, 0, 1]), ([NAN, 0, 1, 0, 1], [0, 0, 1, 0, 1])],
  ),
  "MVN Diag ‖ Diag": (
    mvn_pair().map(_zero_l10),
    _both((distrax.MultivariateNormalDiag,) * 2, (tfd.MultivariateNormalDiag,) * 2, _mvn_diag),
    ref_mvn,
    2e-5,
    [([0, 0, 0, 0, 1], [0, 0, 1, 0, 1]), ([0, 0, 1, 0, 1], [0, NAN, 1, 0, 1])],
  ),
  "low-rank MVN ‖ MVN": (  # Forms and factorises covariances: float32 loses digits to it.
    mvn_pair(),
    [
      (_low_rank, functools.partial(_mvn_tri, distrax.MultivariateNormalTri)),
      (functools.partial(_mvn_tri, tfd.MultivariateNormalTriL), _low_rank),
    ],
    ref_mvn,
    None,  # Condition-dependent: checked to 1e-2 relative where |diag| ratios stay below 10.
    [([NAN, 0, 1, 0, 1], [0, 0, 1, 0, 1])],
  ),
}


@functools.cache
def compiled(name, full=True):
  """jit((θ_p, θ_q) -> KL for each combination; with `full`, also their gradients and the KL of
  broadcast batch shapes ((2, 1) against (3,), and (BATCH,) against ())."""
  combos = ROWS[name][1]

  def values(tp, tq):
    return jnp.stack([klax.kl_divergence(build_p(tp), build_q(tq)) for build_p, build_q in combos])

  def total(tp, tq):  # The first combination's (one gradient graph per row, for compile time).
    v = klax.kl_divergence(combos[0][0](tp), combos[0][1](tq))
    return jnp.sum(jnp.where(jnp.isfinite(v) & (jnp.abs(v) < 1e30), v, 0.0))

  def evaluate(tp, tq):
    if not full:
      return values(tp, tq), None, None, None
    build_p, build_q = combos[0]
    broadcast = klax.kl_divergence(build_p(tp[:2, None, :]), build_q(tq[:3]))  # (2, 1) vs (3,)
    scalar_q = klax.kl_divergence(build_p(tp), build_q(tq[0]))  # (BATCH,) vs ()
    return values(tp, tq), jax.grad(total, argnums=(0, 1))(tp, tq), broadcast, scalar_q

  return jax.jit(evaluate)


def _close(got, reference, floor, rtol, dtype):
  reference = float(reference)
  if reference > float(np.finfo(dtype).max):  # Overflows: inf, or NaN (never a finite number).
    return not np.isfinite(got)
  tolerance = rtol * abs(reference) + 32 * float(np.finfo(dtype).eps) * float(floor)
  return abs(float(got) - reference) <= tolerance + 1e-37


def check_row(name, tp, tq, dtype=np.float32, rtol=None, full=True):
  """Every assertion of the suite for one batch of parameters (shared with the float64 module)."""
  _, _, reference, row_rtol, _ = ROWS[name]
  rtol = rtol or row_rtol
  tp, tq = tp.astype(dtype), tq.astype(dtype)
  values, grads, broadcast, scalar_q = jax.device_get(compiled(name, full)(tp, tq))
  assert values.dtype == dtype and values.shape[1:] == (BATCH,), values.shape
  checks = [(values[k, i], tp[i], tq[i]) for k in range(len(values)) for i in range(BATCH)]
  if full:
    assert broadcast.shape == (2, 3) and scalar_q.shape == (BATCH,)
    finite = np.isfinite(values[0]) & (np.abs(values[0]) < 1e30)
    for side in grads:
      assert np.all(np.isfinite(side[finite])), (name, side)
    checks += [(broadcast[i, j], tp[i], tq[j]) for i in range(2) for j in range(3)]
    checks += [(scalar_q[i], tp[i], tq[0]) for i in range(BATCH)]
  if rtol is None:
    return
  for got, theta_p, theta_q in checks:
    expected, floor = reference(theta_p, theta_q)
    assert _close(got, expected, floor, rtol, dtype), (name, theta_p, theta_q, got, expected)


@pytest.mark.parametrize("name", list(ROWS))
def test_matches_independent_reference(name):
  @settings(max_examples=8)
  @given(ROWS[name][0])
  def check(pair):
    check_row(name, *pair)

  check()


def _cycled(rows):
  return np.asarray([rows[i % len(rows)] for i in range(BATCH)], np.float32)


@pytest.mark.parametrize("name", list(ROWS))
def test_invalid_and_nan_parameters_give_nan(name):
  invalid = ROWS[name][4]
  tp, tq = _cycled([p for p, _ in invalid]), _cycled([q for _, q in invalid])
  values = jax.device_get(compiled(name, True)(tp, tq))[0]
  assert np.all(np.isnan(values)), (name, values)

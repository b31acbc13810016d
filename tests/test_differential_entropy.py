"""Differential tests of `klax.entropy`, `klax.cross_entropy` and
`klax.kl_divergence_exponential_family` against independent references.

References are not klax: textbook entropies and cross-entropies −E_p[log q] in mpmath at 40
digits (each written directly, not as H(p) + KL(p ‖ q)), and the textbook KL of
`test_differential_closed_form` for the Bregman form. Strategies: shapes 1e-3 to 1e4 in every
mix, logits to ±20 (±inf for Categorical), scales 10^±30 for location-scale families. Checked:
value, dtype, shape (a (2, 3) batch; broadcast p and q), finite gradients where the value is
finite (entropy and the Bregman form), NaN for NaN and
invalid parameters, float16/bfloat16 to their precision. Each row is one jitted function.

Tolerance in float32: 1e-5 relative plus 32 ε · floor absolute, floor 1 (entropies are sums of
terms of size ~1 that cancel to the answer: log Γ, ψ, log of a scale) or, for the Bregman form,
|A(η_p)| + |A(η_q)| + |⟨∇A(η_p), η_q − η_p⟩| (it subtracts those terms, whatever the family).
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
from test_differential_closed_form import ref_gamma
from test_differential_closed_form import ref_poisson

import klax

tfd = tfp.distributions
mpmath.mp.dps = 40
BATCH = 6
NAN = np.nan
M = mpmath.mpf


def _m(t):
  return [M(float(v)) for v in t]


# Entropy references: one element's parameters -> H (mpmath).
def h_gamma(t):
  a, b = _m(t)
  return a - mpmath.log(b) + mpmath.loggamma(a) + (1 - a) * mpmath.digamma(a)


def h_dirichlet(t):
  a = _m(t)
  s = sum(a)
  value = sum(mpmath.loggamma(x) for x in a) - mpmath.loggamma(s)
  return value + (s - len(a)) * mpmath.digamma(s) - sum((x - 1) * mpmath.digamma(x) for x in a)


def _log_softmax(t):
  t = _m(t)
  top = max(t)
  lse = top + mpmath.log(sum(mpmath.exp(x - top) for x in t))
  return [x - lse for x in t]


def h_categorical(t):
  return -sum(mpmath.exp(x) * x for x in _log_softmax(t) if x != -mpmath.inf)


def h_bernoulli(t):
  return h_categorical([0.0, -float(t[0])])


def h_normal(t):
  return mpmath.log(2 * mpmath.pi * mpmath.e * _m(t)[1] ** 2) / 2


def h_laplace(t):
  return 1 + mpmath.log(2 * _m(t)[1])


def h_exponential(t):
  return 1 - mpmath.log(_m(t)[0])


# Cross-entropy references −E_p[log q], written from E_p of q's sufficient statistics.
def x_gamma(tp, tq):
  (a1, b1), (a2, b2) = _m(tp), _m(tq)
  mean_log = mpmath.digamma(a1) - mpmath.log(b1)
  return -(a2 * mpmath.log(b2) - mpmath.loggamma(a2) + (a2 - 1) * mean_log - b2 * a1 / b1)


def x_dirichlet(tp, tq):
  a, b = _m(tp), _m(tq)
  s = sum(a)
  log_b = sum(mpmath.loggamma(y) for y in b) - mpmath.loggamma(sum(b))
  mean_logs = [mpmath.digamma(x) - mpmath.digamma(s) for x in a]
  return log_b - sum((y - 1) * m for y, m in zip(b, mean_logs, strict=True))


def x_categorical(tp, tq):
  lp, lq = _log_softmax(tp), _log_softmax(tq)
  return -sum(mpmath.exp(x) * y for x, y in zip(lp, lq, strict=True) if x != -mpmath.inf)


def x_bernoulli(tp, tq):
  return x_categorical([0.0, -float(tp[0])], [0.0, -float(tq[0])])


def x_normal_laplace(tp, tq):
  (m1, s1), (m2, b) = _m(tp), _m(tq)
  d = m1 - m2
  mean_abs = s1 * mpmath.sqrt(2 / mpmath.pi) * mpmath.exp(-(d**2) / (2 * s1**2))
  mean_abs += d * mpmath.erf(d / (s1 * mpmath.sqrt(2)))
  return mpmath.log(2 * b) + mean_abs / b


# Strategies: float32 arrays [BATCH, k].
def _uniform(lo, hi, k):
  return st.lists(st.floats(lo, hi), min_size=BATCH * k, max_size=BATCH * k).map(
    lambda v: np.reshape(np.asarray(v), (BATCH, k))
  )


def positive(k, scale=None):
  """10^U(−3, 4) parameters; column `scale` (a rate or scale) times a common 10^U(−30, 30)."""

  def build(exponents, factor):
    theta = 10.0**exponents
    if scale is not None:
      theta[:, scale] *= 10.0 ** factor[:, 0]
    return theta.astype(np.float32)

  return st.builds(build, _uniform(-3.0, 4.0, k), _uniform(-30.0, 30.0, 1))


def location_scale():
  """(loc, scale): scale 10^U(−30, 30), loc within 10^±3 scales of 0."""
  return positive(2, scale=1).map(lambda t: np.stack([t[:, 0] * t[:, 1] * 1e-3, t[:, 1]], 1))


def logits(k, lo=-20.0, hi=20.0):
  return _uniform(lo, hi, k).map(lambda t: t.astype(np.float32))


def categorical_logits():
  """Logits in ±20 with some −inf (never a whole row)."""

  def build(t, dropped):
    t = t.copy()
    t[np.asarray(dropped)[:, None] == np.arange(3)] = -np.inf
    return t

  drops = st.lists(st.integers(-1, 2), min_size=BATCH, max_size=BATCH)
  return st.builds(build, logits(3), drops)


def _both(make, *classes):
  return [functools.partial(make, cls) for cls in classes]


def _two(cls, t):
  return cls(t[..., 0], t[..., 1])


ENTROPY = {  # name: (strategy, builders, reference, invalid parameters)
  "Gamma": (
    positive(2, scale=1),
    _both(_two, distrax.Gamma, tfd.Gamma),
    h_gamma,
    [[-1, 1], [1, 0], [NAN, 1], [1, np.inf]],
  ),
  "Beta": (
    positive(2),
    _both(_two, distrax.Beta, tfd.Beta),
    h_dirichlet,
    [[0, 1], [1, -1], [NAN, 1], [np.inf, 1]],
  ),
  "Dirichlet": (
    positive(3),
    _both(lambda cls, t: cls(t), distrax.Dirichlet, tfd.Dirichlet),
    h_dirichlet,
    [[1, -1, 1], [1, NAN, 1], [1, 1, np.inf]],
  ),
  "Bernoulli": (
    logits(1),
    _both(lambda cls, t: cls(logits=t[..., 0]), distrax.Bernoulli, tfd.Bernoulli),
    h_bernoulli,
    [[NAN]],
  ),
  "Categorical": (
    categorical_logits(),
    _both(lambda cls, t: cls(logits=t), distrax.Categorical, tfd.Categorical),
    h_categorical,
    [[0, NAN, 1], [0, np.inf, 1]],
  ),
  "Normal": (
    location_scale(),
    _both(_two, distrax.Normal, tfd.Normal),
    h_normal,
    [[0, NAN]],
  ),
  "Laplace": (
    location_scale(),
    _both(_two, distrax.Laplace, tfd.Laplace),
    h_laplace,
    [[0, NAN]],
  ),
  "Exponential": (
    positive(1, scale=0),
    [lambda t: tfd.Exponential(t[..., 0])],
    h_exponential,
    [[NAN]],
  ),
}


def _mixed(distrax_pair, tfd_pair):
  """The two mixed combinations (distrax ‖ TFP, TFP ‖ distrax) of one family pair."""
  return [(distrax_pair[0], tfd_pair[1]), (tfd_pair[0], distrax_pair[1])]


# p and q are drawn independently, so scales stay within 10^±3 (p and q at 10^±30 apart have
# gradients beyond float32's range on paper).
CROSS = {  # name: (strategy of one side, (p, q) classes, reference, builder)
  "Gamma": (positive(2), _mixed((distrax.Gamma,) * 2, (tfd.Gamma,) * 2), x_gamma, _two),
  "Beta": (positive(2), _mixed((distrax.Beta,) * 2, (tfd.Beta,) * 2), x_dirichlet, _two),
  "Dirichlet": (
    positive(3),
    _mixed((distrax.Dirichlet,) * 2, (tfd.Dirichlet,) * 2),
    x_dirichlet,
    lambda cls, t: cls(t),
  ),
  "Bernoulli": (
    logits(1),
    _mixed((distrax.Bernoulli,) * 2, (tfd.Bernoulli,) * 2),
    x_bernoulli,
    lambda cls, t: cls(logits=t[..., 0]),
  ),
  "Categorical": (
    logits(3),
    _mixed((distrax.Categorical,) * 2, (tfd.Categorical,) * 2),
    x_categorical,
    lambda cls, t: cls(logits=t),
  ),
  "Normal ‖ Laplace": (
    positive(2, scale=None).map(lambda t: np.stack([np.log10(t[:, 0]), t[:, 1]], 1)),
    _mixed((distrax.Normal, distrax.Laplace), (tfd.Normal, tfd.Laplace)),
    x_normal_laplace,
    _two,
  ),
}


def _finite(v):
  return jnp.where(jnp.isfinite(v), v, 0.0)


@functools.cache
def compiled_entropy(name):
  builders = ENTROPY[name][1]

  def evaluate(t):
    values = jnp.stack([klax.entropy(build(t)) for build in builders])
    grad = jax.grad(lambda t: jnp.sum(_finite(klax.entropy(builders[0](t)))))(t)
    batch = klax.entropy(builders[0](jnp.reshape(t, (2, 3, -1))))
    return values, grad, batch

  return jax.jit(evaluate)


def _close(got, expected, rtol, dtype, floor=1.0):
  expected = float(expected)
  tolerance = rtol * abs(expected) + 32 * float(jnp.finfo(dtype).eps) * floor
  return abs(float(got) - expected) <= tolerance + 1e-37


def check_entropy(name, theta, dtype=np.float32, rtol=1e-5):
  """Every assertion on one batch of parameters (shared with the float64 module)."""
  theta = theta.astype(dtype)
  values, grad, batch = jax.device_get(compiled_entropy(name)(theta))
  assert values.dtype == dtype and values.shape[1:] == (BATCH,)
  assert batch.shape == (2, 3)
  np.testing.assert_allclose(batch.reshape(-1), values[0], rtol=4 * float(np.finfo(dtype).eps))
  finite = np.isfinite(values[0])
  assert np.all(np.isfinite(grad[finite])), (name, theta, grad)
  for k in range(len(values)):
    for i in range(BATCH):
      expected = ENTROPY[name][2](theta[i])
      assert _close(values[k, i], expected, rtol, dtype), (name, theta[i], values[k, i], expected)


@pytest.mark.parametrize("name", list(ENTROPY))
def test_entropy_matches_mpmath(name):
  @settings(max_examples=8)
  @given(ENTROPY[name][0])
  def check(theta):
    check_entropy(name, theta)

  check()


@pytest.mark.parametrize("name", list(ENTROPY))
def test_entropy_of_invalid_and_nan_parameters_is_nan(name):
  invalid = ENTROPY[name][3]
  theta = np.asarray([invalid[i % len(invalid)] for i in range(BATCH)], np.float32)
  values = jax.device_get(compiled_entropy(name)(theta))[0]
  assert np.all(np.isnan(values)), (name, values)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_entropy_keeps_the_dtype_and_its_precision(dtype):
  theta = {  # Parameters representable in both dtypes.
    "Gamma": [[2.5, 1.5], [0.125, 4.0], [512.0, 2.0]],
    "Beta": [[2.5, 1.5], [0.125, 4.0], [512.0, 64.0]],
    "Dirichlet": [[2.5, 1.5, 0.5], [0.125, 4.0, 1.0], [512.0, 64.0, 8.0]],
    "Bernoulli": [[2.5], [-8.0], [0.0]],
    "Categorical": [[2.5, 1.5, 0.0], [-8.0, 0.0, 4.0], [0.0, 0.0, 0.0]],
    "Normal": [[0.0, 1.5], [1.0, 0.125], [-3.0, 64.0]],
    "Laplace": [[0.0, 1.5], [1.0, 0.125], [-3.0, 64.0]],  # TFP's own: computed in float32.
    "Exponential": [[1.5], [0.125], [64.0]],
  }
  for name, rows in theta.items():
    reference = ENTROPY[name][2]
    for build in ENTROPY[name][1]:
      got = klax.entropy(build(jnp.asarray(rows, dtype)))
      assert got.dtype == dtype, (name, got.dtype)
      for value, row in zip(np.asarray(got, np.float64), rows, strict=True):
        assert _close(value, reference(row), 4 * float(jnp.finfo(dtype).eps), dtype, 0.25), (
          name,
          row,
          value,
        )


@functools.cache
def compiled_cross(name):
  _, pairs, _, make = CROSS[name]

  def evaluate(tp, tq):  # Gradients: H(p)'s rows above, KL's in test_differential_closed_form.
    values = jnp.stack([klax.cross_entropy(make(a, tp), make(b, tq)) for a, b in pairs])
    a, b = pairs[0]
    broadcast = klax.cross_entropy(make(a, tp[:2, None]), make(b, tq[:3]))
    return values, broadcast

  return jax.jit(evaluate)


@pytest.mark.parametrize("name", list(CROSS))
def test_cross_entropy_matches_mpmath(name):
  strategy, _, reference, _ = CROSS[name]

  @settings(max_examples=5)
  @given(strategy, strategy)
  def check(tp, tq):
    values, broadcast = jax.device_get(compiled_cross(name)(tp, tq))
    assert values.dtype == np.float32 and broadcast.shape == (2, 3)
    checks = [(v, tp[i], tq[i]) for row in values for i, v in enumerate(row)]
    checks += [(broadcast[i, j], tp[i], tq[j]) for i in range(2) for j in range(3)]
    for got, theta_p, theta_q in checks:
      expected = reference(theta_p, theta_q)
      # 1 + |H(p)|: the cross-entropy adds KL to H(p) (both computed to their own tolerance).
      floor = 1 + abs(float(ENTROPY[name.split(" ")[0]][2](theta_p)))
      assert _close(got, expected, 1e-5, np.float32, floor), (theta_p, theta_q, got, expected)

  check()


# kl_divergence_exponential_family: log-normalisers of three families, against textbook KLs.
def _poisson_a(eta):  # Poisson(λ = e^η).
  return jnp.exp(eta[0])


def _gamma_a(eta):  # Gamma(α, β): η = (α − 1, −β), A = log Γ(α) − α log β.
  return jax.lax.lgamma(eta[0] + 1) - (eta[0] + 1) * jnp.log(-eta[1])


def _normal_a(eta):  # Normal(μ, σ): η = (μ/σ², −1/(2σ²)), A = −η₁²/(4η₂) − ½ log(−2η₂).
  return -(eta[0] ** 2) / (4 * eta[1]) - 0.5 * jnp.log(-2 * eta[1])


def _normal_kl(tp, tq):
  (m1, s1), (m2, s2) = _m(tp), _m(tq)
  return mpmath.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - M(1) / 2


BREGMAN = {  # name: (log-normaliser, θ -> η (numpy), strategy of θ, textbook KL of θs)
  "Poisson": (_poisson_a, np.log, positive(1), lambda tp, tq: ref_poisson(tp, tq)[0]),
  "Gamma": (
    _gamma_a,
    lambda t: np.stack([t[:, 0] - 1, -t[:, 1]], 1),
    positive(2),
    lambda tp, tq: ref_gamma(tp, tq)[0],
  ),
  "Normal": (
    _normal_a,
    lambda t: np.stack([t[:, 0] / t[:, 1] ** 2, -0.5 / t[:, 1] ** 2], 1),
    st.builds(
      lambda m, s: np.concatenate([m, 10.0**s], 1), _uniform(-3.0, 3.0, 1), _uniform(-1.0, 1.0, 1)
    ),
    _normal_kl,
  ),
}


@functools.cache
def compiled_bregman(name):
  a = BREGMAN[name][0]
  kl = functools.partial(klax.kl_divergence_exponential_family, a)
  return jax.jit(lambda ep, eq: (jax.vmap(kl)(ep, eq), jax.vmap(jax.grad(kl, (0, 1)))(ep, eq)))


def _bregman_floor(a, ep, eq):
  """|A(η_p)| + |A(η_q)| + |⟨∇A(η_p), η_q − η_p⟩| (the terms the form subtracts; a magnitude)."""
  step = np.sum(np.asarray(jax.grad(a)(ep), np.float64) * (eq.astype(np.float64) - ep))
  return float(abs(a(ep)) + abs(a(eq)) + abs(step))


@pytest.mark.parametrize("name", list(BREGMAN))
def test_exponential_family_kl_matches_textbook_kl(name):
  a, eta, strategy, reference = BREGMAN[name]

  @settings(max_examples=6)
  @given(strategy, strategy)
  def check(tp, tq):
    tp, tq = tp.astype(np.float64), tq.astype(np.float64)
    ep, eq = eta(tp).astype(np.float32), eta(tq).astype(np.float32)
    values, (gp, gq) = jax.device_get(compiled_bregman(name)(ep, eq))
    assert values.dtype == np.float32 and values.shape == (BATCH,)
    finite = np.isfinite(values)
    assert np.all(np.isfinite(gp[finite])) and np.all(np.isfinite(gq[finite]))
    for i in range(BATCH):  # The reference at the float32 natural parameters' θ.
      expected = reference(*_theta(name, ep[i], eq[i]))
      floor = _bregman_floor(a, ep[i], eq[i])
      assert _close(values[i], expected, 1e-5, np.float32, floor), (tp[i], tq[i], values[i])

  check()


def _theta(name, ep, eq):
  """θ of float32 η (in float64), so that the reference sees the parameters klax saw."""
  ep, eq = ep.astype(np.float64), eq.astype(np.float64)
  if name == "Poisson":
    return np.exp(ep), np.exp(eq)
  if name == "Gamma":
    return np.asarray([ep[0] + 1, -ep[1]]), np.asarray([eq[0] + 1, -eq[1]])
  sp, sq = np.sqrt(-0.5 / ep[1]), np.sqrt(-0.5 / eq[1])
  return np.asarray([ep[0] * sp**2, sp]), np.asarray([eq[0] * sq**2, sq])


def test_exponential_family_kl_propagates_nan_and_checks_shapes():
  nan = klax.kl_divergence_exponential_family(
    _gamma_a, jnp.asarray([1.0, -1.0]), jnp.asarray([NAN, -1.0])
  )
  assert np.isnan(nan)
  with pytest.raises(ValueError, match="same shapes"):
    klax.kl_divergence_exponential_family(_gamma_a, jnp.zeros(2), jnp.zeros(1))

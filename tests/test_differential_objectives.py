"""Objectives and mixture bounds against independent references, in float64.

References, in numpy and scipy only: trapezoid quadrature for the expected loss and central
differences of that quadrature for its gradient; the closed-form KL between normals (checked
against TFP); scipy for log densities and for the KL between 1-D Gaussian mixtures
(`scipy.integrate.quad`). A Monte Carlo mean over fixed keys must be within Z_SE standard errors
of the reference, the standard errors computed from the draws. Every Monte Carlo estimate here
comes from one compiled program (the `monte_carlo` fixture), and every bound from one more.
"""

import functools
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.scipy.stats import norm
from tensorflow_probability.substrates import jax as tfp

import klax
from klax import families

Z_SE = 4.5  # Standard errors allowed between a Monte Carlo mean and its reference.
NUM_KEYS = 8_000
LOG_Z = np.log(2.0)  # The targets below are 2 × a density.


@pytest.fixture(autouse=True, scope="module")
def enable_x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def log_target(x):
  """2 × [0.3 N(−1.5, 0.8²) + 0.7 N(1.5, 0.8²)]."""
  mix = jnp.logaddexp(
    jnp.log(0.3) + norm.logpdf(x, -1.5, 0.8), jnp.log(0.7) + norm.logpdf(x, 1.5, 0.8)
  )
  return LOG_Z + mix


def _normal_target(x):
  return LOG_Z + norm.logpdf(x, 0.7, 1.3)


# ---------------------------------------------------------------- numpy references


def _np_logpdf(x, mean, scale):
  """log N(x; mean, scale²) in numpy (scipy.stats' per-call overhead dominates quadrature)."""
  return -0.5 * ((x - mean) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _np_log_target(x):
  return LOG_Z + np.logaddexp(
    np.log(0.3) + _np_logpdf(x, -1.5, 0.8), np.log(0.7) + _np_logpdf(x, 1.5, 0.8)
  )


def _nodes(n=401, width=9.0):
  """Standard-normal coordinates and trapezoid weights × φ(z): Σ W f(z) ≈ E_{N(0,1)}[f]."""
  z = np.linspace(-width, width, n)
  w = np.full(n, z[1] - z[0])
  w[[0, -1]] /= 2
  return z, w * scipy.stats.norm.pdf(z)


Z, W = _nodes()


def _mixture_objective(params, epsilon):
  """Exact E[loss] for a 2-component mixture q with one draw per component (or the −ELBO).

  ε = None: −Σ_k w_k E_{q_k}[t]; else −E (1/ε) log Σ_k w_k e^{ε t(x_k)}, x_k ~ q_k independent.
  """
  log_w = params["logits"] - scipy.special.logsumexp(params["logits"])
  scale = np.exp(params["log_scale"])
  x = params["loc"][:, None] + scale[:, None] * Z  # [2, n]
  log_q = scipy.special.logsumexp(log_w + _np_logpdf(x[..., None], params["loc"], scale), -1)
  t = _np_log_target(x) - log_q
  if epsilon is None:
    return -np.sum(np.exp(log_w) * np.sum(W * t, -1))
  inner = np.logaddexp(log_w[0] + epsilon * t[0][:, None], log_w[1] + epsilon * t[1][None, :])
  return -np.sum(W[:, None] * W[None, :] * inner) / epsilon


def _normal_minus_elbo(params):
  """KL(q ‖ p) − log Z in closed form, p = N(0.7, 1.3²) (checked against TFP below)."""
  loc, scale = params["loc"], np.exp(params["log_scale"])
  return np.log(1.3 / scale) + (scale**2 + (loc - 0.7) ** 2) / (2 * 1.3**2) - 0.5 - LOG_Z


def _normal_iwae(params):
  """−E log ½ (w(x_1) + w(x_2)), x_1, x_2 ~ q independent, by 2-D quadrature."""
  loc, scale = params["loc"], np.exp(params["log_scale"])
  x = loc + scale * Z
  t = LOG_Z + _np_logpdf(x, 0.7, 1.3) - _np_logpdf(x, loc, scale)
  inner = np.logaddexp(t[:, None], t[None, :]) - np.log(2.0)
  return -np.sum(W[:, None] * W[None, :] * inner)


def _value_and_grad(f, params, h=1e-5):
  """f(params) and its gradient by central differences (error O(h²) + rounding / h ≈ 1e-9)."""
  grad = {}
  for name, value in params.items():
    value, g = np.asarray(value, np.float64), np.zeros(np.shape(value))
    for i in np.ndindex(value.shape):
      step = np.zeros_like(value)
      step[i] = h
      g[i] = (f({**params, name: value + step}) - f({**params, name: value - step})) / (2 * h)
    grad[name] = g
  return f(params), grad


@functools.cache
def _mixture_reference(epsilon):
  return _value_and_grad(functools.partial(_mixture_objective, epsilon=epsilon), MIXTURE_PARAMS)


MIXTURE_PARAMS = {  # numpy float64: jax arrays made at import would be float32.
  "logits": np.array([0.3, -0.2]),
  "loc": np.array([-1.0, 1.2]),
  "log_scale": np.array([0.1, -0.3]),
}
MIXTURE = families.mixture_of_normals(2)
NORMAL_PARAMS = {"loc": np.float64(-0.4), "log_scale": np.float64(0.3)}


def test_references_against_scipy_and_tfp():
  """The references themselves: quadrature, closed form and central differences."""
  p = MIXTURE_PARAMS
  weights, scales = scipy.special.softmax(p["logits"]), np.exp(p["log_scale"])

  def integrand(x):
    log_q = scipy.special.logsumexp(np.log(weights) + _np_logpdf(x, p["loc"], scales))
    return np.exp(log_q) * (log_q - _np_log_target(x))

  expected = scipy.integrate.quad(integrand, -20, 20, epsabs=1e-12, limit=200)[0]
  np.testing.assert_allclose(_mixture_objective(p, None), expected, atol=1e-9)
  # The ε → 0 limit of the importance-weighted form is the −ELBO.
  np.testing.assert_allclose(_mixture_objective(p, 1e-7), expected, atol=1e-6)
  q = tfp.distributions.Normal(NORMAL_PARAMS["loc"], np.exp(NORMAL_PARAMS["log_scale"]))
  kl = tfp.distributions.kl_divergence(q, tfp.distributions.Normal(np.float64(0.7), 1.3))
  np.testing.assert_allclose(_normal_minus_elbo(NORMAL_PARAMS), float(kl) - LOG_Z, rtol=1e-12)
  _, grad = _value_and_grad(_normal_minus_elbo, NORMAL_PARAMS)
  scale = np.exp(NORMAL_PARAMS["log_scale"])
  np.testing.assert_allclose(grad["loc"], (NORMAL_PARAMS["loc"] - 0.7) / 1.3**2, rtol=1e-8)
  np.testing.assert_allclose(grad["log_scale"], scale**2 / 1.3**2 - 1.0, rtol=1e-8)
  # q = p: every importance weight is Z, so the bound is exact.
  exact = {"loc": np.float64(0.7), "log_scale": np.log(1.3)}
  np.testing.assert_allclose(_normal_iwae(exact), -LOG_Z, rtol=1e-12)
  assert (
    -LOG_Z < _normal_iwae(NORMAL_PARAMS) < _normal_minus_elbo(NORMAL_PARAMS)
  )  # L_1 < L_2 < log Z


# ---------------------------------------------------------------- Monte Carlo, one compilation

# name: (loss, ε of the reference: None is the −ELBO).
MIXTURE_LOSSES = {
  "reverse, reparam": (klax.reverse_kl_loss(MIXTURE, log_target, 2), None),
  "reverse, stl": (klax.reverse_kl_loss(MIXTURE, log_target, 2, "stl"), None),
  "reverse, score": (klax.reverse_kl_loss(MIXTURE, log_target, 4, "score"), None),
  "iwae": (klax.iwae_loss(MIXTURE, log_target, 1), 1.0),
  "renyi 0.5": (klax.renyi_loss(MIXTURE, log_target, 1, 0.5), 0.5),
  # The reference is the limit α → 1 (the −ELBO): they differ by O(1 − α).
  "renyi 1 - 1e-9": (klax.renyi_loss(MIXTURE, log_target, 1, 1 - 1e-9), None),
}
NORMAL = families.normal()
NORMAL_LOSSES = {
  "reverse, reparam": (klax.reverse_kl_loss(NORMAL, _normal_target, 3), _normal_minus_elbo),
  "reverse, stl": (klax.reverse_kl_loss(NORMAL, _normal_target, 3, "stl"), _normal_minus_elbo),
  "reverse, score": (klax.reverse_kl_loss(NORMAL, _normal_target, 3, "score"), _normal_minus_elbo),
  "iwae": (klax.iwae_loss(NORMAL, _normal_target, 2), _normal_iwae),
  "renyi 0": (klax.renyi_loss(NORMAL, _normal_target, 2, 0.0), _normal_iwae),
  "renyi 1": (klax.renyi_loss(NORMAL, _normal_target, 3, 1.0), _normal_minus_elbo),
}


@jax.jit
def _monte_carlo(mixture_params, normal_params):
  def per_key(losses, params):
    return lambda key: {name: jax.value_and_grad(loss)(params, key) for name, (loss, _) in losses}

  mixture_keys = jax.random.split(jax.random.key(0), NUM_KEYS)
  normal_keys = jax.random.split(jax.random.key(1), NUM_KEYS)

  def mixture_elbo(params, key):
    estimate = klax.elbo(MIXTURE.dist(params), log_target, key, 64)
    return estimate.value, estimate.stderr

  q = distrax.Normal(normal_params["loc"], jnp.exp(normal_params["log_scale"]))
  return {
    "mixture": jax.vmap(per_key(MIXTURE_LOSSES.items(), mixture_params))(mixture_keys),
    "normal": jax.vmap(per_key(NORMAL_LOSSES.items(), normal_params))(normal_keys),
    "elbo normal": klax.elbo(q, _normal_target, jax.random.key(2), 20_000),
    "elbo 64": jax.vmap(jax.value_and_grad(mixture_elbo, has_aux=True), in_axes=(None, 0))(
      mixture_params, jax.random.split(jax.random.key(4), 1000)
    ),
  }


@pytest.fixture(scope="module")
def monte_carlo(enable_x64):
  return _monte_carlo(MIXTURE_PARAMS, NORMAL_PARAMS)


def _check_against(draws, exact_value, exact_grad):
  values, grads = draws
  assert values.dtype == jnp.float64 and values.shape == (NUM_KEYS,)
  se = float(values.std()) / np.sqrt(NUM_KEYS)
  assert abs(float(values.mean()) - float(exact_value)) < Z_SE * se + 1e-9
  for name, g in grads.items():
    mean, se = np.asarray(g.mean(0)), np.asarray(g.std(0)) / np.sqrt(NUM_KEYS)
    assert np.all(np.isfinite(mean))
    np.testing.assert_array_less(np.abs(mean - exact_grad[name]), Z_SE * se + 1e-9, err_msg=name)


@pytest.mark.parametrize("name", MIXTURE_LOSSES)
def test_mixture_family_objectives_are_unbiased(monte_carlo, name):
  """Value and gradient of every objective for a mixture q, against quadrature (stratified)."""
  _check_against(monte_carlo["mixture"][name], *_mixture_reference(MIXTURE_LOSSES[name][1]))


@pytest.mark.parametrize("name", NORMAL_LOSSES)
def test_normal_family_objectives_are_unbiased(monte_carlo, name):
  reference = NORMAL_LOSSES[name][1]
  _check_against(monte_carlo["normal"][name], *_value_and_grad(reference, NORMAL_PARAMS))


def test_elbo_against_tfp_and_quadrature(monte_carlo):
  est = monte_carlo["elbo normal"]
  assert abs(float(est.value) + _normal_minus_elbo(NORMAL_PARAMS)) < Z_SE * float(est.stderr)
  # The stratified estimate for a mixture over 1,000 keys (64 draws per component): unbiased in
  # value and gradient, and its standard error matches the spread over the keys.
  ((values, stderr), grads), (exact, exact_grad) = monte_carlo["elbo 64"], _mixture_reference(None)
  values, stderr = np.asarray(values), np.asarray(stderr)
  assert values.dtype == np.float64 and stderr.shape == (1000,)
  assert abs(values.mean() + exact) < Z_SE * values.std() / np.sqrt(len(values))
  np.testing.assert_allclose(values.std(), stderr.mean(), rtol=0.1)
  assert abs(values[0] + exact) < Z_SE * stderr[0]
  for name, g in grads.items():
    g = np.asarray(g)
    se = g.std(0) / np.sqrt(len(g))
    np.testing.assert_array_less(np.abs(g.mean(0) + exact_grad[name]), Z_SE * se, err_msg=name)


def test_forward_kl_loss_against_scipy():
  rng = np.random.default_rng(0)
  data = rng.normal(1.0, 2.0, size=(200, 3))
  params = {"loc": np.array([0.5, 1.0, -0.2]), "log_scale": np.array([0.1, 0.7, -0.3])}
  mixture_data = rng.normal(size=50)
  loss = klax.forward_kl_loss(families.diag_normal(3), jnp.asarray(data))
  mixture_loss = klax.forward_kl_loss(MIXTURE, jnp.asarray(mixture_data))
  value, g, mixture_value = jax.jit(
    lambda p, mp: (*jax.value_and_grad(loss)(p, None), mixture_loss(mp, None))
  )(params, MIXTURE_PARAMS)
  scale = np.exp(params["log_scale"])
  expected = -scipy.stats.norm.logpdf(data, params["loc"], scale).sum(-1).mean()
  assert value.dtype == jnp.float64
  np.testing.assert_allclose(float(value), expected, rtol=1e-12)
  residual = (data - params["loc"]) / scale
  np.testing.assert_allclose(g["loc"], -(residual / scale).mean(0), rtol=1e-10)
  np.testing.assert_allclose(g["log_scale"], 1.0 - (residual**2).mean(0), rtol=1e-10)
  p = MIXTURE_PARAMS
  per_component = scipy.stats.norm.logpdf(mixture_data[:, None], p["loc"], np.exp(p["log_scale"]))
  reference = -scipy.special.logsumexp(per_component, b=scipy.special.softmax(p["logits"]), axis=1)
  np.testing.assert_allclose(float(mixture_value), reference.mean(), rtol=1e-12)


# ---------------------------------------------------------------- Gaussian-mixture KL bounds


def _log_density(weights, means, scales):
  """x ↦ log Σ_k w_k N(x; m_k, s_k²) over the live components, in Python floats (fast in quad)."""
  live = [
    (math.log(w) - math.log(s) - 0.5 * math.log(2 * math.pi), m, s)
    for w, m, s in zip(weights, means, scales, strict=True)
    if w > 0
  ]

  def log_density(x):
    terms = [c - 0.5 * ((x - m) / s) ** 2 for c, m, s in live]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))

  return log_density


def _scipy_kl(p, q, epsabs=1.5e-8):
  """KL(p ‖ q) = Σ_a π_a E_{f_a}[log p − log q] by adaptive quadrature per component of p."""
  log_p, log_q = _log_density(*p), _log_density(*q)
  total = 0.0
  for weight, mean, scale in zip(*p, strict=True):
    if weight == 0:
      continue
    breaks = [(m - mean) / scale for m in q[1] if abs(m - mean) / scale < 12]

    def integrand(z, mean=float(mean), scale=float(scale)):
      x = mean + scale * z
      return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (log_p(x) - log_q(x))

    value = scipy.integrate.quad(
      integrand, -12, 12, points=breaks or None, limit=200, epsabs=epsabs, epsrel=1e-10
    )
    total += weight * value[0]
  return total


def _distrax(weights, means, scales):
  logits = jnp.log(jnp.asarray(weights))
  components = distrax.Normal(jnp.asarray(means), jnp.asarray(scales))
  return distrax.MixtureSameFamily(distrax.Categorical(logits=logits), components)


def _mixture_strategy(k):
  weight = st.one_of(st.just(0.0), st.floats(0.05, 1.0))
  scale = st.floats(-3.0, 3.0).map(lambda e: 10.0**e)
  mean = st.floats(-5.0, 5.0)
  return st.tuples(
    st.lists(weight, min_size=k, max_size=k).filter(lambda w: sum(w) > 0),
    st.lists(mean, min_size=k, max_size=k),
    st.lists(scale, min_size=k, max_size=k),
  ).map(lambda t: tuple(np.asarray(a, np.float64) for a in t))


def _normalised(m):
  return (m[0] / m[0].sum(), m[1], m[2])


def _padded(m, k):
  """The same mixture with k components: zero-weight copies of its last one appended."""
  extra = k - len(m[0])
  return (np.append(m[0], np.zeros(extra)), *(np.append(a, np.full(extra, a[-1])) for a in m[1:]))


BOUNDS = (
  klax.kl_divergence_mixture_upper_bound,
  klax.kl_divergence_mixture_lower_bound,
  klax.kl_divergence_mixture_variational_approx,
  klax.kl_divergence_mixture_product_approx,
  klax.kl_divergence_mixture_matched_bound_approx,
)


@jax.jit
def _all_bounds(p, q):
  """Every bound and approximation, and the gradient of their sum in p's means (p: 3, q: 2
  components)."""

  def values(p_means):
    dp, dq = _distrax(p[0], p_means, p[2]), _distrax(*q)
    return jnp.stack([fn(dp, dq) for fn in BOUNDS])

  # ∇ of the sum: finite exactly when every bound's gradient is (a NaN or ±∞ in one propagates).
  return values(p[1]), jax.grad(lambda means: jnp.sum(values(means)))(p[1])


@settings(max_examples=20, deadline=None)
@given(_mixture_strategy(3), _mixture_strategy(2), st.floats(-50.0, 50.0))
def test_mixture_bounds_bracket_quadrature(p, q, moved):
  p, q = _normalised(p), _normalised(q)
  truth = _scipy_kl(p, q)
  tol = 1e-7 * (1.0 + abs(truth))
  values, grads = _all_bounds(p, q)
  assert values.dtype == jnp.float64
  upper, lower = float(values[0]), float(values[1])
  assert lower <= truth + tol
  assert upper >= truth - tol
  assert np.all(np.isfinite(np.asarray(grads)))
  # A component of weight 0 contributes nothing: moving it (in p and q) changes nothing.
  p_moved = (p[0], np.where(p[0] > 0, p[1], p[1] + moved), np.where(p[0] > 0, p[2], 7.0))
  q_moved = (q[0], np.where(q[0] > 0, q[1], q[1] - moved), np.where(q[0] > 0, q[2], 0.01))
  np.testing.assert_allclose(_all_bounds(p_moved, q_moved)[0], values, rtol=1e-12, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(_mixture_strategy(2), st.floats(-7.0, -2.0))
def test_near_identical_mixtures(p, log_delta):
  """Padded with zero-weight components to the compiled shapes (they change nothing, above)."""
  p = _normalised(p)
  values, _ = _all_bounds(_padded(p, 3), p)  # KL(p ‖ p) = 0.
  assert float(values[1]) <= 1e-12 and float(values[0]) >= -1e-12
  assert abs(float(values[2])) <= 1e-12
  # One live component against itself moved by δ of its scale: KL = δ²/2 exactly.
  delta, live = 10.0**log_delta, int(np.argmax(p[0]))
  single = (np.ones(1), p[1][live : live + 1], p[2][live : live + 1])
  moved = (single[0], single[1] + delta * single[2], single[2])
  values, _ = _all_bounds(_padded(single, 3), _padded(moved, 2))
  np.testing.assert_allclose(np.asarray(values)[[0, 2, 4]], delta**2 / 2, rtol=1e-6)
  assert float(values[1]) <= delta**2 / 2 * (1 + 1e-6)

"""Objectives and mixture bounds against independent references, in float64.

References: trapezoid quadrature written here (jax.numpy, differentiated by autodiff: the exact
gradient of the quadrature) for the expected loss and its gradient; TFP's closed-form KL between
normals; scipy for log densities and for the KL between 1-D Gaussian mixtures (`scipy.integrate.
quad`). A Monte Carlo mean over fixed keys must be within Z_SE standard errors of the reference.
"""

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


def _np_logpdf(x, mean, scale):
  """log N(x; mean, scale²) in numpy (scipy.stats' per-call overhead dominates quadrature)."""
  return -0.5 * ((x - mean) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi)


def _nodes(n=1601, width=10.0):
  """Standard-normal coordinates and trapezoid weights × φ(z): Σ W f(z) ≈ E_{N(0,1)}[f]."""
  z = np.linspace(-width, width, n)
  w = np.full(n, z[1] - z[0])
  w[[0, -1]] /= 2
  return jnp.asarray(z), jnp.asarray(w * scipy.stats.norm.pdf(z))


def _log_q(params, x):
  log_w = jax.nn.log_softmax(params["logits"])
  scale = jnp.exp(params["log_scale"])
  return jax.scipy.special.logsumexp(log_w + norm.logpdf(x[..., None], params["loc"], scale), -1)


def _mixture_objective(params, epsilon):
  """Exact E[loss] for a 2-component mixture q with one draw per component (or the −ELBO).

  ε = None: −Σ_k w_k E_{q_k}[t]; else −E (1/ε) log Σ_k w_k e^{ε t(x_k)}, x_k ~ q_k independent.
  """
  z, w = _nodes(801, 9.0)
  weights = jax.nn.softmax(params["logits"])
  x = params["loc"][:, None] + jnp.exp(params["log_scale"])[:, None] * z  # [2, n]
  t = log_target(x) - _log_q(params, x)
  if epsilon is None:
    return -jnp.sum(weights * jnp.sum(w * t, -1))
  inner = jnp.logaddexp(
    jnp.log(weights[0]) + epsilon * t[0][:, None], jnp.log(weights[1]) + epsilon * t[1][None, :]
  )
  return -jnp.sum(w[:, None] * w[None, :] * inner) / epsilon


MIXTURE_PARAMS = {  # numpy float64: jax arrays made at import would be float32.
  "logits": np.array([0.3, -0.2]),
  "loc": np.array([-1.0, 1.2]),
  "log_scale": np.array([0.1, -0.3]),
}
MIXTURE = families.mixture_of_normals(2)


def _check_against(loss, params, exact_value, exact_grad, key=0):
  keys = jax.random.split(jax.random.key(key), NUM_KEYS)
  values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))(params, keys)
  assert values.dtype == jnp.float64
  se = float(values.std()) / np.sqrt(NUM_KEYS)
  assert abs(float(values.mean()) - float(exact_value)) < Z_SE * se + 1e-9
  for name, g in grads.items():
    mean, se = np.asarray(g.mean(0)), np.asarray(g.std(0)) / np.sqrt(NUM_KEYS)
    assert np.all(np.isfinite(mean))
    np.testing.assert_array_less(np.abs(mean - np.asarray(exact_grad[name])), Z_SE * se + 1e-9)


def test_quadrature_reference_matches_scipy():
  """The reference itself: −ELBO of the mixture against scipy.integrate.quad."""
  p = {k: np.asarray(v) for k, v in MIXTURE_PARAMS.items()}
  weights = scipy.special.softmax(p["logits"])

  def integrand(x):
    log_q = scipy.special.logsumexp(
      np.log(weights) + _np_logpdf(x, p["loc"], np.exp(p["log_scale"]))
    )
    log_p = np.log(2.0) + np.logaddexp(
      np.log(0.3) + _np_logpdf(x, -1.5, 0.8), np.log(0.7) + _np_logpdf(x, 1.5, 0.8)
    )
    return np.exp(log_q) * (log_q - log_p)

  expected = scipy.integrate.quad(integrand, -20, 20, epsabs=1e-12, limit=200)[0]
  np.testing.assert_allclose(float(_mixture_objective(MIXTURE_PARAMS, None)), expected, atol=1e-7)


@pytest.mark.parametrize(
  "name, loss, epsilon",
  [
    ("reverse, reparam", klax.reverse_kl_loss(MIXTURE, log_target, 2), None),
    ("reverse, stl", klax.reverse_kl_loss(MIXTURE, log_target, 2, "stl"), None),
    ("reverse, score", klax.reverse_kl_loss(MIXTURE, log_target, 4, "score"), None),
    ("iwae", klax.iwae_loss(MIXTURE, log_target, 1), 1.0),
    ("renyi 0.5", klax.renyi_loss(MIXTURE, log_target, 1, 0.5), 0.5),
    # The reference is the limit α → 1 (the −ELBO): they differ by O(1 − α).
    ("renyi 1 - 1e-9", klax.renyi_loss(MIXTURE, log_target, 1, 1 - 1e-9), None),
  ],
)
def test_mixture_family_objectives_are_unbiased(name, loss, epsilon):
  """Value and gradient of every objective for a mixture q, against quadrature (stratified)."""
  exact = jax.value_and_grad(_mixture_objective)(MIXTURE_PARAMS, epsilon)
  _check_against(loss, MIXTURE_PARAMS, *exact)


def _normal_target(x):
  return LOG_Z + norm.logpdf(x, 0.7, 1.3)


def _normal_minus_elbo(params):
  """KL(q ‖ p) − log Z from TFP's closed form."""
  q = tfp.distributions.Normal(params["loc"], jnp.exp(params["log_scale"]))
  return tfp.distributions.kl_divergence(q, tfp.distributions.Normal(0.7, 1.3)) - LOG_Z


def _normal_iwae(params):
  """−E log ½ (w(x_1) + w(x_2)), x_1, x_2 ~ q independent, by 2-D quadrature."""
  z, w = _nodes(801, 9.0)
  x = params["loc"] + jnp.exp(params["log_scale"]) * z
  t = _normal_target(x) - norm.logpdf(x, params["loc"], jnp.exp(params["log_scale"]))
  inner = jnp.logaddexp(t[:, None], t[None, :]) - jnp.log(2.0)
  return -jnp.sum(w[:, None] * w[None, :] * inner)


NORMAL_PARAMS = {"loc": np.float64(-0.4), "log_scale": np.float64(0.3)}


@pytest.mark.parametrize(
  "loss, reference",
  [
    (klax.reverse_kl_loss(families.normal(), _normal_target, 3), _normal_minus_elbo),
    (klax.reverse_kl_loss(families.normal(), _normal_target, 3, "stl"), _normal_minus_elbo),
    (klax.reverse_kl_loss(families.normal(), _normal_target, 3, "score"), _normal_minus_elbo),
    (klax.iwae_loss(families.normal(), _normal_target, 2), _normal_iwae),
    (klax.renyi_loss(families.normal(), _normal_target, 2, 0.0), _normal_iwae),
    (klax.renyi_loss(families.normal(), _normal_target, 3, 1.0), _normal_minus_elbo),
  ],
)
def test_normal_family_objectives_are_unbiased(loss, reference):
  _check_against(loss, NORMAL_PARAMS, *jax.value_and_grad(reference)(NORMAL_PARAMS), key=1)


def test_elbo_against_tfp_and_quadrature():
  params = NORMAL_PARAMS
  q = distrax.Normal(params["loc"], jnp.exp(params["log_scale"]))
  est = jax.jit(lambda k: klax.elbo(q, _normal_target, k, 20_000))(jax.random.key(2))
  assert abs(float(est.value) + float(_normal_minus_elbo(params))) < Z_SE * float(est.stderr)
  mixture = MIXTURE.dist(MIXTURE_PARAMS)
  est = jax.jit(lambda k: klax.elbo(mixture, log_target, k, 20_000))(jax.random.key(3))
  exact = -float(_mixture_objective(MIXTURE_PARAMS, None))
  assert abs(float(est.value) - exact) < Z_SE * float(est.stderr)
  # The standard error of the stratified estimate matches the spread over independent keys.
  estimates = jax.jit(jax.vmap(lambda k: klax.elbo(mixture, log_target, k, 64)))(
    jax.random.split(jax.random.key(4), 1000)
  )
  values, stderr = estimates.value, estimates.stderr[0]
  np.testing.assert_allclose(float(values.std()), float(stderr), rtol=0.3)
  grad = jax.jit(
    jax.grad(lambda p: klax.elbo(MIXTURE.dist(p), log_target, jax.random.key(6), 4096).value)
  )
  g, exact_g = grad(MIXTURE_PARAMS), jax.grad(_mixture_objective)(MIXTURE_PARAMS, None)
  for name in g:
    np.testing.assert_allclose(g[name], -exact_g[name], atol=0.05)


def test_forward_kl_loss_against_scipy():
  rng = np.random.default_rng(0)
  data = rng.normal(1.0, 2.0, size=(200, 3))
  params = {"loc": jnp.array([0.5, 1.0, -0.2]), "log_scale": jnp.array([0.1, 0.7, -0.3])}
  loss = klax.forward_kl_loss(families.diag_normal(3), jnp.asarray(data))
  scale = np.exp(np.asarray(params["log_scale"]))
  expected = -scipy.stats.norm.logpdf(data, np.asarray(params["loc"]), scale).sum(-1).mean()
  np.testing.assert_allclose(float(loss(params, None)), expected, rtol=1e-12)
  g = jax.grad(loss)(params, None)
  residual = (data - np.asarray(params["loc"])) / scale
  np.testing.assert_allclose(g["loc"], -(residual / scale).mean(0), rtol=1e-10)
  np.testing.assert_allclose(g["log_scale"], 1.0 - (residual**2).mean(0), rtol=1e-10)
  mixture_data = jnp.asarray(rng.normal(size=50))
  value = klax.forward_kl_loss(MIXTURE, mixture_data)(MIXTURE_PARAMS, None)
  p = {k: np.asarray(v) for k, v in MIXTURE_PARAMS.items()}
  per_component = scipy.stats.norm.logpdf(
    np.asarray(mixture_data)[:, None], p["loc"], np.exp(p["log_scale"])
  )
  reference = -scipy.special.logsumexp(per_component, b=scipy.special.softmax(p["logits"]), axis=1)
  np.testing.assert_allclose(float(value), reference.mean(), rtol=1e-12)


# ---------------------------------------------------------------- Gaussian-mixture KL bounds


def _scipy_log_density(weights, means, scales, x):
  live = weights > 0
  return scipy.special.logsumexp(np.log(weights[live]) + _np_logpdf(x, means[live], scales[live]))


def _scipy_kl(p, q, epsabs=1.5e-8):
  """KL(p ‖ q) = Σ_a π_a E_{f_a}[log p − log q] by adaptive quadrature per component of p."""
  total = 0.0
  for weight, mean, scale in zip(*p, strict=True):
    if weight == 0:
      continue
    breaks = [(m - mean) / scale for m in q[1] if abs(m - mean) / scale < 12]

    def integrand(z, mean=mean, scale=scale):
      x = mean + scale * z
      return np.exp(_np_logpdf(z, 0.0, 1.0)) * (
        _scipy_log_density(*p, x) - _scipy_log_density(*q, x)
      )

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


BOUNDS = (
  klax.kl_divergence_mixture_upper_bound,
  klax.kl_divergence_mixture_lower_bound,
  klax.kl_divergence_mixture_variational_approx,
  klax.kl_divergence_mixture_product_approx,
  klax.kl_divergence_mixture_matched_bound_approx,
)


@jax.jit
def _all_bounds(p, q):
  """Every bound and approximation, and their gradients in p's means (one compilation)."""

  def values(p_means):
    dp, dq = _distrax(p[0], p_means, p[2]), _distrax(*q)
    return jnp.stack([fn(dp, dq) for fn in BOUNDS])

  return values(p[1]), jax.jacrev(values)(p[1])


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
  p = _normalised(p)
  values, _ = _all_bounds(p, p)  # KL(p ‖ p) = 0.
  assert float(values[1]) <= 1e-12 and float(values[0]) >= -1e-12
  assert abs(float(values[2])) <= 1e-12
  # One live component against itself moved by δ of its scale: KL = δ²/2 exactly.
  delta, live = 10.0**log_delta, int(np.argmax(p[0]))
  single = (np.ones(1), p[1][live : live + 1], p[2][live : live + 1])
  moved = (single[0], single[1] + delta * single[2], single[2])
  values, _ = _all_bounds(single, moved)
  np.testing.assert_allclose(np.asarray(values)[[0, 2, 4]], delta**2 / 2, rtol=1e-6)
  assert float(values[1]) <= delta**2 / 2 * (1 + 1e-6)

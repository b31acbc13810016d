"""Objectives: the ELBO identity on a conjugate model, gradient estimators, IWAE and Rényi."""

import distrax
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import klax
from klax import _variational
from klax import families

# Normal–Normal model: z ~ N(0, 1), x_i | z ~ N(z, 1), i = 1..5.
X = np.array([0.8, 1.9, 1.1, 0.4, 1.5])
POSTERIOR_VAR = 1.0 / (1.0 + len(X))
POSTERIOR_MEAN = POSTERIOR_VAR * X.sum()
# Marginal likelihood, on paper: X ~ N(0, I + 11ᵀ).
LOG_EVIDENCE = scipy.stats.multivariate_normal(np.zeros(len(X)), np.eye(len(X)) + 1.0).logpdf(X)


def log_joint(z):
  return jax.scipy.stats.norm.logpdf(z) + jnp.sum(
    jax.scipy.stats.norm.logpdf(jnp.asarray(X), z, 1.0)
  )


def _posterior():
  return distrax.Normal(POSTERIOR_MEAN, float(np.sqrt(POSTERIOR_VAR)))


@pytest.mark.parametrize(
  "loc, scale", [(0.0, 1.0), (1.0, 0.2), (2.5, 0.6), (POSTERIOR_MEAN, np.sqrt(POSTERIOR_VAR))]
)
def test_elbo_plus_kl_is_the_log_evidence(loc, scale):
  q = distrax.Normal(float(loc), float(scale))
  estimate = klax.elbo(q, log_joint, jax.random.key(0), 200_000)
  kl = float(klax.kl_divergence(q, _posterior()))
  assert abs(float(estimate.value) + kl - LOG_EVIDENCE) < 4 * float(estimate.stderr) + 1e-4
  assert float(estimate.value) <= LOG_EVIDENCE + 4 * float(estimate.stderr) + 1e-4


def test_reverse_kl_fit_recovers_the_exact_posterior():
  loss = klax.reverse_kl_loss(families.normal(), log_joint, 32)
  schedule = optax.cosine_decay_schedule(0.05, 3000)
  result = klax.fit(
    loss,
    {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)},
    optax.adam(schedule),
    jax.random.key(1),
    3000,
  )
  assert abs(float(result.params["loc"]) - POSTERIOR_MEAN) < 0.01
  assert abs(float(jnp.exp(result.params["log_scale"])) - np.sqrt(POSTERIOR_VAR)) < 0.01


def _gradient_samples(gradient, params, num_keys=2000, num_samples=8):
  loss = klax.reverse_kl_loss(families.normal(), log_joint, num_samples, gradient=gradient)
  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(
    params, jax.random.split(jax.random.key(2), num_keys)
  )
  return np.stack([np.asarray(grads["loc"]), np.asarray(grads["log_scale"])], -1)


def _exact_gradient(params):
  """∇ of the closed-form KL(q ‖ posterior) (on paper), which equals ∇(−ELBO)."""

  def kl(p):
    s, m = jnp.exp(p["log_scale"]), p["loc"]
    return (
      jnp.log(np.sqrt(POSTERIOR_VAR) / s)
      + (s**2 + (m - POSTERIOR_MEAN) ** 2) / (2 * POSTERIOR_VAR)
      - 0.5
    )

  g = jax.grad(kl)(params)
  return np.array([float(g["loc"]), float(g["log_scale"])])


@pytest.mark.parametrize("gradient", ["reparam", "stl", "score"])
def test_gradient_estimators_are_unbiased(gradient):
  params = {"loc": jnp.array(0.3), "log_scale": jnp.array(-0.4)}
  samples = _gradient_samples(gradient, params)
  stderr = samples.std(0) / np.sqrt(len(samples))
  assert np.all(np.abs(samples.mean(0) - _exact_gradient(params)) < 4 * stderr + 1e-6)


def test_score_function_variance_exceeds_reparameterisation():
  params = {"loc": jnp.array(0.3), "log_scale": jnp.array(-0.4)}
  assert np.all(
    _gradient_samples("score", params).var(0) > _gradient_samples("reparam", params).var(0)
  )


def test_stl_has_zero_variance_at_the_exact_posterior_and_reparam_does_not():
  params = {
    "loc": jnp.array(POSTERIOR_MEAN, jnp.float32),
    "log_scale": jnp.array(0.5 * np.log(POSTERIOR_VAR), jnp.float32),
  }
  stl, reparam = _gradient_samples("stl", params, 200), _gradient_samples("reparam", params, 200)
  assert np.all(stl.std(0) < 1e-5)
  assert np.all(reparam.std(0) > 1e-2)


def test_loss_values_agree_across_gradient_estimators():
  params = {"loc": jnp.array(0.3), "log_scale": jnp.array(-0.4)}
  values = [
    float(
      klax.reverse_kl_loss(families.normal(), log_joint, 64, gradient=g)(params, jax.random.key(5))
    )
    for g in ("reparam", "stl", "score")
  ]
  np.testing.assert_allclose(values, values[0], rtol=1e-6)


def test_iwae_and_renyi_bounds_order():
  family = families.normal()
  params = {"loc": jnp.array(0.5), "log_scale": jnp.array(0.0)}  # A poor q: the bounds differ.
  keys = jax.random.split(jax.random.key(6), 400)

  def mean_loss(loss):
    return float(jnp.mean(jax.vmap(loss, in_axes=(None, 0))(params, keys)))

  elbo_loss = mean_loss(klax.reverse_kl_loss(family, log_joint, 64))
  iwae = mean_loss(klax.iwae_loss(family, log_joint, 64))
  renyi_zero = mean_loss(klax.renyi_loss(family, log_joint, 64, alpha=0.0))
  renyi_one = mean_loss(klax.renyi_loss(family, log_joint, 64, alpha=1.0))
  renyi_half = mean_loss(klax.renyi_loss(family, log_joint, 64, alpha=0.5))
  # −ELBO ≥ −L_α(α=0.5) ≥ −IWAE ≥ −log Z; α = 1 is the ELBO and α = 0 the IWAE bound.
  assert elbo_loss > renyi_half > iwae > -LOG_EVIDENCE - 0.01
  np.testing.assert_allclose(renyi_one, elbo_loss, rtol=1e-6)
  np.testing.assert_allclose(renyi_zero, iwae, rtol=1e-6)
  assert abs(iwae + LOG_EVIDENCE) < 0.05  # With 64 samples IWAE is close to log Z.


def test_forward_kl_loss_is_the_mean_negative_log_likelihood():
  data = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, size=500), jnp.float32)
  params = {"loc": jnp.array(0.7), "log_scale": jnp.log(1.5)}
  full = klax.forward_kl_loss(families.normal(), data)
  np.testing.assert_allclose(
    full(params, jax.random.key(0)),
    -scipy.stats.norm(0.7, 1.5).logpdf(np.asarray(data)).mean(),
    rtol=1e-5,
  )
  minibatch = klax.forward_kl_loss(families.normal(), data, batch_size=50)
  values = jax.vmap(minibatch, in_axes=(None, 0))(params, jax.random.split(jax.random.key(1), 2000))
  assert abs(float(values.mean()) - float(full(params, None))) < 4 * float(values.std()) / np.sqrt(
    2000
  )


def test_jit_vmap_grad_of_every_objective():
  family = families.normal()
  params = {"loc": jnp.array(0.3), "log_scale": jnp.array(-0.4)}
  losses = [
    klax.forward_kl_loss(family, jnp.asarray(X, jnp.float32)),
    klax.reverse_kl_loss(family, log_joint, 16),
    klax.reverse_kl_loss(family, log_joint, 16, gradient="stl"),
    klax.reverse_kl_loss(family, log_joint, 16, gradient="score"),
    klax.iwae_loss(family, log_joint, 16),
    klax.renyi_loss(family, log_joint, 16, alpha=0.5),
  ]
  for loss in losses:
    eager = loss(params, jax.random.key(0))
    np.testing.assert_allclose(jax.jit(loss)(params, jax.random.key(0)), eager, rtol=1e-5)
    batch = jax.tree.map(lambda x: jnp.stack([x, x]), params)
    np.testing.assert_allclose(
      jax.vmap(loss, in_axes=(0, None))(batch, jax.random.key(0))[1], eager, rtol=1e-5
    )
    grads = jax.grad(loss)(params, jax.random.key(0))
    assert all(np.isfinite(float(g)) for g in jax.tree.leaves(grads))
  est = jax.jit(lambda k: klax.elbo(_posterior(), log_joint, k, 100))(jax.random.key(0))
  assert np.isfinite(float(est.value))


def test_bad_arguments():
  family = families.normal()
  with pytest.raises(ValueError, match="`gradient` must be one of"):
    klax.reverse_kl_loss(family, log_joint, 8, gradient="pathwise")
  with pytest.raises(ValueError, match="`num_samples` must be >= 2"):
    klax.reverse_kl_loss(family, log_joint, 1, gradient="score")
  with pytest.raises(ValueError, match="`num_samples` must be positive"):
    klax.iwae_loss(family, log_joint, 0)
  with pytest.raises(TypeError, match="`log_density` must be a callable"):
    klax.renyi_loss(family, 3.0, 8, alpha=0.5)
  with pytest.raises(TypeError, match="`family` must be a klax Family"):
    klax.forward_kl_loss(object(), jnp.zeros(3))
  with pytest.raises(TypeError, match="`data` must have a floating-point dtype"):
    klax.forward_kl_loss(family, jnp.arange(3))


# ------------------------------------------------- Rényi near α = 1, shapes, arguments, mixtures


def _mp_renyi(t, pi, epsilon):
  """(1/ε) log Σ π e^{ε t} at 40 digits (Σ π t at ε = 0)."""
  with mpmath.workdps(40):
    t, pi = [mpmath.mpf(float(v)) for v in t], [mpmath.mpf(float(v)) for v in pi]
    pi = [p / sum(pi) for p in pi]  # Exactly normalised: at ε = 1e-12, log Σ π / ε would not be.
    if epsilon == 0:
      return float(sum(p * v for p, v in zip(pi, t, strict=True)))
    eps = mpmath.mpf(epsilon)
    return float(mpmath.log(sum(p * mpmath.exp(eps * v) for p, v in zip(pi, t, strict=True))) / eps)


EPSILONS = (0.0, 1e-12, -1e-12, 1e-8, 1e-7, 1e-6, -1e-6, 0.5, 1.0, 2.0, -1.0, 30.0)


@jax.jit
def _renyi_every_order(t, log_pi):
  """The bound and its gradient in t at every ε of EPSILONS (one compilation)."""
  value_and_grad = jax.value_and_grad(_variational.renyi_bound)
  values, grads = zip(*(value_and_grad(t, log_pi, epsilon) for epsilon in EPSILONS), strict=True)
  return jnp.stack(values), jnp.stack(grads)


@settings(max_examples=20, deadline=None)
@given(
  st.lists(st.floats(-60.0, 60.0), min_size=6, max_size=6),
  st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1.0)), min_size=6, max_size=6).filter(
    lambda w: sum(w) > 0
  ),
)
def test_renyi_bound_is_stable_for_every_order(t, weights):
  t = np.asarray(t, np.float32)
  pi = np.asarray(weights) / np.sum(weights)
  with np.errstate(divide="ignore"):
    log_pi = jnp.asarray(np.log(pi), jnp.float32)
  values, grads = _renyi_every_order(jnp.asarray(t), log_pi)
  assert values.dtype == jnp.float32 and values.shape == (len(EPSILONS),)
  assert np.all(np.isfinite(np.asarray(grads)))
  for epsilon, got in zip(EPSILONS, np.asarray(values), strict=True):
    expected = _mp_renyi(t, pi, epsilon)
    np.testing.assert_allclose(
      got, expected, atol=2e-6 * (1 + np.max(np.abs(t))), err_msg=f"epsilon={epsilon}"
    )


ALPHAS = (1.0, 1 - 1e-12, 1 - 1e-8, 1 - 1e-7, 1 - 1e-6, 0.5, 0.0)


def test_renyi_loss_is_continuous_at_alpha_one():
  family = families.normal()
  params = {"loc": jnp.array(0.5), "log_scale": jnp.array(0.4)}
  losses = [klax.renyi_loss(family, log_joint, 64, alpha) for alpha in ALPHAS]

  @jax.jit
  def every_order(params, key):
    q = family.dist(params)
    x = q.sample(seed=key, sample_shape=(64,))
    log_w = jax.vmap(log_joint)(x) - q.log_prob(x)
    return jnp.stack([loss(params, key) for loss in losses]), log_w

  values, log_w = every_order(params, jax.random.key(3))
  log_w = np.asarray(log_w, np.float64)
  for alpha, got in zip(ALPHAS, np.asarray(values), strict=True):
    expected = -_mp_renyi(log_w, np.full(64, 1 / 64), 1.0 - alpha)
    np.testing.assert_allclose(got, expected, rtol=2e-6, err_msg=f"alpha={alpha}")


def test_renyi_loss_refuses_orders_outside_zero_one():
  family = families.normal()
  for alpha in (-1.0, -1e-9, 1 + 1e-12, 2.0):
    with pytest.raises(ValueError, match="`alpha` must be in \\[0, 1\\]"):
      klax.renyi_loss(family, log_joint, 8, alpha)
  for alpha in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match="`alpha` must be finite"):
      klax.renyi_loss(family, log_joint, 8, alpha)
  for alpha in ("0.5", True, jnp.array([0.5, 0.5])):
    with pytest.raises(TypeError, match="`alpha` must be a Python float"):
      klax.renyi_loss(family, log_joint, 8, alpha)


def test_a_log_density_that_is_not_scalar_raises_while_tracing():
  family = families.normal()
  params = {"loc": jnp.array(0.3), "log_scale": jnp.array(-0.4)}
  bad = lambda x: jnp.atleast_1d(log_joint(x))  # noqa: E731  Shape (1,): would broadcast [S, S].
  for loss in (
    klax.reverse_kl_loss(family, bad, 8),
    klax.reverse_kl_loss(family, bad, 8, gradient="score"),
    klax.iwae_loss(family, bad, 8),
    klax.renyi_loss(family, bad, 8, 0.5),
  ):
    with pytest.raises(ValueError, match="`log_density` must return a scalar"):
      jax.eval_shape(loss, params, jax.random.key(0))


def test_forward_kl_loss_checks_its_data():
  family = families.diag_normal(2)
  params = {"loc": jnp.array([0.3, -0.2]), "log_scale": jnp.array([0.1, 0.0])}
  with pytest.raises(ValueError, match="`data` must have shape \\[n, \\*event_shape\\]"):
    jax.eval_shape(klax.forward_kl_loss(family, jnp.zeros((3, 1))), params, jax.random.key(0))
  with pytest.raises(ValueError, match="`data` must hold at least one sample"):
    klax.forward_kl_loss(family, jnp.zeros((0, 2)))
  loss = klax.forward_kl_loss(family, jnp.array([[0.0, jnp.nan], [1.0, 2.0]]))
  assert np.isnan(float(jax.jit(loss)(params, None)))


def test_non_reparameterised_families_are_refused_for_pathwise_gradients():
  logits = {"logits": jnp.zeros(3)}
  family = klax.Family(lambda key: logits, lambda p: distrax.Categorical(logits=p["logits"]))
  target = lambda x: jnp.log(jnp.array([0.2, 0.3, 0.5]))[x]  # noqa: E731
  for loss in (
    klax.reverse_kl_loss(family, target, 8),
    klax.reverse_kl_loss(family, target, 8, gradient="stl"),
    klax.iwae_loss(family, target, 8),
    klax.renyi_loss(family, target, 8, 0.5),
  ):
    with pytest.raises(ValueError, match="not reparameterised"):
      jax.eval_shape(loss, logits, jax.random.key(0))
  score = klax.reverse_kl_loss(family, target, 8, gradient="score")
  grad = jax.jit(jax.grad(score))(logits, jax.random.key(0))["logits"]
  assert np.all(np.isfinite(np.asarray(grad)))


def _two_mode_target(x):
  return jnp.logaddexp(
    jnp.log(0.2) + jax.scipy.stats.norm.logpdf(x, -2.0, 0.5),
    jnp.log(0.8) + jax.scipy.stats.norm.logpdf(x, 2.0, 0.5),
  )


def test_mixture_fit_recovers_the_weights():
  """0.2/0.8 target: the stratified pathwise gradient finds the weights (was 0.381/0.619).

  Both estimators in one fit (one compilation) of the sum of their losses over a pair of
  parameters: each loss depends on its own half only and Adam acts elementwise, so each half
  follows exactly its own fit.
  """
  family = families.mixture_of_normals(2)
  start = {"logits": jnp.zeros(2), "loc": jnp.array([-1.5, 1.5]), "log_scale": jnp.zeros(2)}
  losses = {g: klax.reverse_kl_loss(family, _two_mode_target, 16, g) for g in ("reparam", "stl")}

  def loss(params, key):
    return sum(losses[g](params[g], key) for g in losses)

  schedule = optax.cosine_decay_schedule(0.05, 800)
  result = klax.fit(loss, {g: start for g in losses}, optax.adam(schedule), jax.random.key(0), 800)
  assert np.all(np.isfinite(np.asarray(result.losses)))
  for g, params in result.params.items():
    np.testing.assert_allclose(jax.nn.softmax(params["logits"]), [0.2, 0.8], atol=0.01, err_msg=g)
    np.testing.assert_allclose(params["loc"], [-2.0, 2.0], atol=0.05, err_msg=g)


def test_zero_weight_mixture_components_contribute_nothing():
  family = families.mixture_of_normals(2)
  params = {
    "logits": jnp.array([-jnp.inf, 0.0]),
    "loc": jnp.array([50.0, 2.0]),
    "log_scale": jnp.zeros(2),
  }
  single = {"loc": jnp.array(2.0), "log_scale": jnp.array(0.0)}
  makes = {
    "iwae": lambda f: klax.iwae_loss(f, _two_mode_target, 16),
    "reverse": lambda f: klax.reverse_kl_loss(f, _two_mode_target, 16),
  }

  @jax.jit
  def both(keys):
    """Per make: the mixture's losses and gradients and the single normal's losses, per key."""
    return {
      name: jax.vmap(
        lambda k, m=make: (
          jax.value_and_grad(m(family))(params, k),
          m(families.normal())(single, k),
        )
      )(keys)
      for name, make in makes.items()
    }

  for name, ((values, grads), reference) in both(jax.random.split(jax.random.key(1), 100)).items():
    se = float(jnp.hypot(values.std(), reference.std())) / 10.0
    assert abs(float(values.mean()) - float(reference.mean())) < 4 * se, name
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads)), name

"""Objectives: the ELBO identity on a conjugate model, gradient estimators, IWAE and Rényi."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

import klax
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
    klax.renyi_loss(family, log_joint, 16, alpha=-1.0),
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

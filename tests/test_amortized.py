"""Amortised ELBO and IWAE against a linear-Gaussian model with a closed-form posterior and evidence.

z ~ N(0, I₂), x | z ~ N(A z, s² I₃). The exact posterior is N(M x, Σ) with Σ = (I + AᵀA/s²)⁻¹ and
M = Σ Aᵀ / s², and x ~ N(0, A Aᵀ + s² I) (scipy gives log p(x)). For an encoder
q(z | x) = N(B x, diag(τ²)), ELBO(x) = log p(x) − KL(q(z | x) ‖ p(z | x)), the Gaussian KL written
here in numpy.
"""

import dataclasses

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import klax

KEY = jax.random.key(0)

A = np.array([[1.0, 0.5], [-0.3, 0.8], [0.2, -1.1]])
NOISE = 0.7
SIGMA = np.linalg.inv(np.eye(2) + A.T @ A / NOISE**2)
M = SIGMA @ A.T / NOISE**2
DATA = np.random.default_rng(0).multivariate_normal(np.zeros(3), A @ A.T + NOISE**2 * np.eye(3), 6)
LOG_EVIDENCE = stats.multivariate_normal(np.zeros(3), A @ A.T + NOISE**2 * np.eye(3)).logpdf(DATA)

ENCODER = klax.ConditionalFamily(
  init=lambda key: {"B": jnp.zeros((2, 3)), "log_tau": jnp.zeros(2)},
  dist=lambda p, x: distrax.MultivariateNormalDiag(p["B"] @ x, jnp.exp(p["log_tau"])),
)
PRIOR = distrax.MultivariateNormalDiag(jnp.zeros(2), jnp.ones(2))


def log_likelihood(params, x, z):
  return jnp.sum(jax.scipy.stats.norm.logpdf(x, params["A"] @ z, NOISE))


def _params(b, log_tau):
  return {"A": jnp.asarray(A, jnp.float32), "B": jnp.asarray(b, jnp.float32), "log_tau": log_tau}


def _exact_negative_elbo(b, tau):
  """−(1/n) Σ_i [log p(x_i) − KL(N(B x_i, diag τ²) ‖ N(M x_i, Σ))], in float64."""
  inverse = np.linalg.inv(SIGMA)
  kls = []
  for x in DATA:
    diff = (M - b) @ x
    kls.append(
      0.5
      * (
        np.trace(inverse @ np.diag(tau**2))
        + diff @ inverse @ diff
        - 2
        + np.linalg.slogdet(SIGMA)[1]
        - np.sum(np.log(tau**2))
      )
    )
  return -np.mean(LOG_EVIDENCE - np.array(kls))


def _mean_and_stderr(loss, params, num_keys=400):
  keys = jax.random.split(jax.random.key(3), num_keys)
  values = np.asarray(jax.jit(jax.vmap(loss, in_axes=(None, 0)))(params, keys), np.float64)
  return values.mean(), values.std(ddof=1) / np.sqrt(num_keys)


@pytest.mark.parametrize("kl", ["analytic", "sampled"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_elbo_is_unbiased_for_the_closed_form_elbo(kl, batch_size):
  b, tau = 0.6 * M + 0.1, np.array([0.4, 0.9])
  loss = klax.amortized_elbo_loss(
    ENCODER, log_likelihood, PRIOR, DATA, 3, batch_size=batch_size, kl=kl
  )
  mean, stderr = _mean_and_stderr(loss, _params(b, jnp.log(jnp.asarray(tau, jnp.float32))))
  assert abs(mean - _exact_negative_elbo(b, tau)) < 4 * stderr + 1e-4


def test_iwae_bound_tightens_to_the_log_evidence():
  b, tau = 0.6 * M, np.array([0.8, 0.8])
  params = _params(b, jnp.log(jnp.asarray(tau, jnp.float32)))
  bounds = []
  for k in (1, 8, 2048):
    loss = klax.amortized_iwae_loss(ENCODER, log_likelihood, PRIOR, DATA, k)
    bounds.append(_mean_and_stderr(loss, params, 40 if k == 2048 else 400))
  (l1, s1), (l8, _), (lk, sk) = bounds
  np.testing.assert_allclose(l1, _exact_negative_elbo(b, tau), atol=4 * s1 + 1e-4)
  assert l1 > l8 > lk  # −L_1 ≥ −L_8 ≥ −L_K ≥ −log p
  np.testing.assert_allclose(lk, -LOG_EVIDENCE.mean(), atol=4 * sk + 2e-3)


def test_fitting_the_encoder_recovers_the_exact_posterior_mean_map():
  loss = klax.amortized_elbo_loss(ENCODER, log_likelihood, PRIOR, DATA, 8)
  start = _params(np.zeros((2, 3)), jnp.zeros(2))
  freeze_decoder = optax.multi_transform(
    {"train": optax.adam(0.05), "fixed": optax.set_to_zero()},
    {"A": "fixed", "B": "train", "log_tau": "train"},
  )
  result = klax.fit(loss, start, freeze_decoder, jax.random.key(0), 1500)
  # The ELBO's optimum over B is M (the posterior mean map), over τ² is 1 / diag(Σ⁻¹).
  np.testing.assert_allclose(result.params["B"], M, atol=0.05)
  np.testing.assert_allclose(
    jnp.exp(2 * result.params["log_tau"]), 1 / np.diag(np.linalg.inv(SIGMA)), rtol=0.1
  )


def test_losses_are_pytrees_traced_under_jit_with_gradients():
  traces = []

  @jax.jit
  def value_and_grad(loss, params, key):
    traces.append(None)
    return jax.value_and_grad(loss)(params, key)

  params = _params(0.5 * M, jnp.zeros(2))
  for shift in (0.0, 1.0):
    loss = klax.amortized_elbo_loss(ENCODER, log_likelihood, PRIOR, DATA + shift, 4)
    value, grads = value_and_grad(loss, params, jax.random.key(0))
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert len(traces) == 1
  half = dataclasses.replace(loss, data=loss.data[::2])  # Another shape: traced again.
  value_and_grad(half, params, jax.random.key(0))
  assert len(traces) == 2


def test_bad_arguments_raise_naming_them():
  with pytest.raises(TypeError, match="encoder"):
    klax.amortized_elbo_loss(klax.families.normal(), log_likelihood, PRIOR, DATA, 4)
  with pytest.raises(TypeError, match="log_likelihood"):
    klax.amortized_iwae_loss(ENCODER, None, PRIOR, DATA, 4)
  with pytest.raises(ValueError, match="data"):
    klax.amortized_elbo_loss(ENCODER, log_likelihood, PRIOR, np.zeros((0, 3)), 4)
  with pytest.raises(ValueError, match="kl"):
    klax.amortized_elbo_loss(ENCODER, log_likelihood, PRIOR, DATA, 4, kl="closed")
  student = distrax.Independent(distrax.Laplace(jnp.zeros(2), jnp.ones(2)), 1)
  loss = klax.amortized_elbo_loss(ENCODER, log_likelihood, student, DATA, 4, kl="analytic")
  with pytest.raises(klax.UnsupportedDistributionError):
    loss(_params(M, jnp.zeros(2)), KEY)
  auto = klax.amortized_elbo_loss(ENCODER, log_likelihood, student, DATA, 4)
  assert np.isfinite(auto(_params(M, jnp.zeros(2)), KEY))  # "auto" falls back to sampling.


def test_prior_with_batch_shape_and_non_scalar_log_likelihood_raise_naming_them():
  # A prior of batch shape (3,) broadcast the closed-form KL to [3] and averaged it silently.
  encoder = klax.ConditionalFamily(
    init=lambda key: {}, dist=lambda p, x: distrax.MultivariateNormalDiag(jnp.zeros(2))
  )

  def log_lik(p, x, z):
    return -0.5 * jnp.sum((x - z) ** 2)

  data = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match="`prior` must have batch shape"):
    klax.amortized_elbo_loss(
      encoder, log_lik, distrax.MultivariateNormalDiag(jnp.zeros((3, 2))), data, 2
    )
  prior = distrax.MultivariateNormalDiag(jnp.zeros(2))

  def per_pixel(p, x, z):
    return -0.5 * (x - z) ** 2  # forgot to sum over x's entries

  for make in (klax.amortized_elbo_loss, klax.amortized_iwae_loss):
    loss = make(encoder, per_pixel, prior, data, 2)
    with pytest.raises(ValueError, match="`log_likelihood"):
      jax.jit(loss)({}, jax.random.key(0))

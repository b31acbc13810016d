"""Bregman-divergence KL of exponential families against closed forms."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from jax.scipy.special import gammaln

import klax


def normal_a(eta):  # η = (μ/σ², −1/(2σ²)).
  return -(eta[0] ** 2) / (4 * eta[1]) - 0.5 * jnp.log(-2 * eta[1])


def normal_eta(mu, sigma):
  return jnp.array([mu / sigma**2, -0.5 / sigma**2])


def test_normal_matches_closed_form():
  got = klax.kl_divergence_exponential_family(normal_a, normal_eta(0.3, 1.2), normal_eta(-1.0, 2.0))
  expected = np.log(2.0 / 1.2) + (1.2**2 + 1.3**2) / (2 * 2.0**2) - 0.5
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_poisson_bernoulli_gamma_categorical_match_references():
  poisson = klax.kl_divergence_exponential_family(jnp.exp, jnp.log(2.0), jnp.log(3.5))
  support = np.arange(300)
  p, q = scipy.stats.poisson(2.0).pmf(support), scipy.stats.poisson(3.5).pmf(support)
  np.testing.assert_allclose(poisson, scipy.special.rel_entr(p, q).sum(), rtol=1e-5)

  bernoulli = klax.kl_divergence_exponential_family(
    jax.nn.softplus, jnp.array(0.4), jnp.array(-1.2)
  )
  pp, qq = jax.nn.sigmoid(0.4), jax.nn.sigmoid(-1.2)
  np.testing.assert_allclose(bernoulli, scipy.stats.entropy([pp, 1 - pp], [qq, 1 - qq]), rtol=1e-5)

  # Gamma(α, β) with η = (α − 1, −β): A = log Γ(α) − α log β. A pytree of natural parameters.
  def gamma_a(eta):
    return gammaln(eta["shape_m1"] + 1) - (eta["shape_m1"] + 1) * jnp.log(-eta["neg_rate"])

  eta_p, eta_q = {"shape_m1": 1.0, "neg_rate": -3.0}, {"shape_m1": 0.5, "neg_rate": -1.0}
  got = klax.kl_divergence_exponential_family(gamma_a, eta_p, eta_q)
  np.testing.assert_allclose(
    got, klax.kl_divergence(distrax.Gamma(2.0, 3.0), distrax.Gamma(1.5, 1.0)), rtol=1e-5
  )

  logits_p, logits_q = jnp.array([0.1, 0.5, -1.0]), jnp.array([1.0, 0.0, 0.3])
  categorical = klax.kl_divergence_exponential_family(jax.nn.logsumexp, logits_p, logits_q)
  np.testing.assert_allclose(
    categorical, scipy.stats.entropy(jax.nn.softmax(logits_p), jax.nn.softmax(logits_q)), rtol=1e-5
  )


def test_jit_vmap_grad():
  def kl(mu):
    return klax.kl_divergence_exponential_family(
      normal_a, normal_eta(mu, 1.0), normal_eta(0.0, 1.0)
    )

  np.testing.assert_allclose(jax.jit(kl)(0.7), 0.5 * 0.7**2, rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(kl)(jnp.array([0.0, 1.0, 2.0])), [0.0, 0.5, 2.0], atol=1e-5)
  np.testing.assert_allclose(jax.grad(kl)(0.7), 0.7, rtol=1e-4)


def test_bad_arguments():
  with pytest.raises(TypeError, match="`log_normalizer` must be a callable"):
    klax.kl_divergence_exponential_family(3.0, 1.0, 1.0)
  with pytest.raises(ValueError, match="same pytree structure"):
    klax.kl_divergence_exponential_family(jnp.exp, {"a": 1.0}, [1.0])
  with pytest.raises(ValueError, match="must return a scalar"):
    klax.kl_divergence_exponential_family(jnp.exp, jnp.ones(2), jnp.ones(2))


def test_natural_parameters_of_different_shapes_raise_naming_them():
  with pytest.raises(
    ValueError, match=r"`natural_params_p` and `natural_params_q`.*\(2,\) and \(1,\)"
  ):
    klax.kl_divergence_exponential_family(jax.nn.logsumexp, jnp.zeros(2), jnp.ones(1))
  with pytest.raises(ValueError, match=r"at \['a'\]"):
    klax.kl_divergence_exponential_family(
      lambda eta: jnp.sum(eta["a"]), {"a": jnp.zeros(2)}, {"a": jnp.ones(1)}
    )

"""jit, vmap and grad for the public functions whose own modules test them least directly."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

import klax

KEY = jax.random.key(0)


def test_entropy_and_cross_entropy_under_jit_vmap_grad():
  def h(scale):
    return klax.entropy(distrax.Normal(0.0, scale))

  def ce(loc):
    return klax.cross_entropy(distrax.Normal(loc, 1.0), distrax.Laplace(0.0, 2.0))

  scales = jnp.array([0.5, 1.0, 2.0])
  np.testing.assert_allclose(
    jax.jit(jax.vmap(h))(scales), scipy.stats.norm(0, np.asarray(scales)).entropy(), rtol=1e-6
  )
  np.testing.assert_allclose(jax.grad(h)(2.0), 0.5, rtol=1e-6)  # d/dσ (½ log 2πe + log σ) = 1/σ.
  np.testing.assert_allclose(jax.vmap(ce)(jnp.array([0.0, 1.0]))[1], jax.jit(ce)(1.0), rtol=1e-6)
  jax.test_util.check_grads(ce, (0.7,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_monte_carlo_entropies_under_vmap():
  def h(scale, key):
    return klax.entropy_mc(distrax.Normal(0.0, scale), key, 2_000).value

  def ce(loc, key):
    return klax.cross_entropy_mc(
      distrax.Normal(loc, 1.0), distrax.Normal(0.0, 1.0), key, 2_000
    ).value

  keys = jax.random.split(KEY, 3)
  np.testing.assert_allclose(jax.vmap(h)(jnp.ones(3), keys)[2], h(1.0, keys[2]), rtol=1e-5)
  np.testing.assert_allclose(
    jax.jit(jax.vmap(ce))(jnp.zeros(3), keys)[1], ce(0.0, keys[1]), rtol=1e-5
  )
  # ∂/∂μ H(N(μ,1), N(0,1)) = μ, pathwise; average over keys.
  grads = jax.vmap(jax.grad(ce), in_axes=(None, 0))(0.5, jax.random.split(KEY, 64))
  assert abs(float(grads.mean()) - 0.5) < 4 * float(grads.std()) / 8


def test_kl_from_log_ratio_under_jit_vmap_grad():
  log_ratio = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
  for estimator in ("k1", "k2", "k3"):
    eager = klax.kl_from_log_ratio(log_ratio, estimator)
    np.testing.assert_allclose(
      jax.jit(klax.kl_from_log_ratio, static_argnums=1)(log_ratio, estimator), eager
    )
    np.testing.assert_allclose(
      jax.vmap(lambda r, e=estimator: klax.kl_from_log_ratio(r, e))(log_ratio), eager
    )
  # d k3 / dℓ = 1 − e^{−ℓ}.
  np.testing.assert_allclose(
    jax.grad(lambda r: klax.kl_from_log_ratio(r, "k3"))(0.7), 1 - np.exp(-0.7), rtol=1e-6
  )

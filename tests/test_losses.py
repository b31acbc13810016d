"""Losses as pytrees (data traced, configuration static) and the public estimator kernels."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import klax

NORMAL = klax.families.normal()
PARAMS = {"loc": jnp.array(0.3), "log_scale": jnp.array(-0.2)}
KEY = jax.random.key(0)


def _shifted_normal(mu, x):
  return -0.5 * (x - mu) ** 2


def _losses_of(mu, data):
  """One loss of each kind, whose data (samples, or the target's parameter `mu`) are arrays."""
  target = jax.tree_util.Partial(_shifted_normal, mu)
  return [
    klax.forward_kl_loss(NORMAL, data),
    klax.forward_kl_loss(NORMAL, data, batch_size=4),
    klax.reverse_kl_loss(NORMAL, target, 8),
    klax.reverse_kl_loss(NORMAL, target, 8, gradient="score"),
    klax.reverse_kl_loss(NORMAL, target, 8, gradient="stl"),
    klax.iwae_loss(NORMAL, target, 8),
    klax.renyi_loss(NORMAL, target, 8, 0.5),
  ]


@pytest.mark.parametrize("index", range(7))
def test_new_data_of_the_same_shape_is_traced_not_recompiled(index):
  traces = []

  @jax.jit
  def value_and_grad(loss, params, key):
    traces.append(None)
    return jax.value_and_grad(loss)(params, key)

  first = _losses_of(jnp.array(1.0), jnp.linspace(-1.0, 1.0, 16))[index]
  second = _losses_of(jnp.array(-2.0), jnp.linspace(0.0, 3.0, 16))[index]
  assert jax.tree.leaves(first), "the loss's data must be pytree leaves"
  v1, _ = value_and_grad(first, PARAMS, KEY)
  v2, _ = value_and_grad(second, PARAMS, KEY)
  assert len(traces) == 1
  assert np.isfinite(v1) and np.isfinite(v2) and v1 != v2


def test_forward_loss_of_replaced_data_is_the_negative_log_likelihood_of_that_data():
  loss = klax.forward_kl_loss(NORMAL, jnp.zeros(5))
  batch = np.random.default_rng(0).normal(1.0, 2.0, size=7).astype(np.float32)
  value = dataclasses.replace(loss, data=jnp.asarray(batch))(PARAMS, KEY)
  expected = -np.mean(stats.norm.logpdf(batch, 0.3, np.exp(-0.2)))
  np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_a_plain_function_target_is_static_and_the_loss_still_passes_through_jit():
  loss = klax.reverse_kl_loss(NORMAL, lambda x: -0.5 * x**2, 8)
  assert jax.tree.leaves(loss) == []
  value = jax.jit(lambda loss, params, key: loss(params, key))(loss, PARAMS, KEY)
  np.testing.assert_allclose(value, loss(PARAMS, KEY), rtol=1e-6)
  rebuilt = jax.tree.unflatten(jax.tree.structure(loss), [])
  assert rebuilt.log_density is loss.log_density and rebuilt.num_samples == 8


def test_family_constructors_return_one_object_for_equal_arguments():
  assert klax.families.normal() is klax.families.normal()
  assert klax.families.diag_normal(3) is klax.families.diag_normal(3)
  assert klax.families.mixture_of_normals(2, loc_scale=1.0) is not klax.families.mixture_of_normals(
    2, loc_scale=2.0
  )
  unhashable = klax.families.normal(loc_scale=jnp.array(2.0))  # Built, not cached.
  assert unhashable.dist(PARAMS).mean() == pytest.approx(0.3)


def test_variational_draws_weights_sum_to_one_and_log_weights_are_log_z_when_q_is_p():
  # q = N(0.3, e^{-0.4}) exactly proportional to p̃: every log weight is log Z.
  sigma = float(np.exp(-0.2))
  log_z = float(np.log(sigma * np.sqrt(2 * np.pi)))
  target = jax.tree_util.Partial(lambda mu, x: -0.5 * ((x - mu) / sigma) ** 2, 0.3)
  draws = klax.variational_draws(NORMAL, target, PARAMS, KEY, 16)
  np.testing.assert_allclose(draws.log_w, log_z, atol=2e-6)
  np.testing.assert_allclose(jax.scipy.special.logsumexp(draws.log_pi), 0.0, atol=1e-6)
  mixture = klax.families.mixture_of_normals(3)
  mixture_params = mixture.init(KEY) | {"logits": jnp.array([0.0, 1.0, -jnp.inf])}
  draws = klax.variational_draws(mixture, lambda x: -0.5 * x**2, mixture_params, KEY, 4)
  weights = np.exp(np.asarray(draws.log_pi)).reshape(4, 3).sum(axis=0)
  np.testing.assert_allclose(weights, [1 / (1 + np.e), np.e / (1 + np.e), 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="gradient"):
    klax.variational_draws(NORMAL, target, PARAMS, KEY, 4, gradient="pathwise")


def test_score_function_surrogate_is_zero_with_an_unbiased_gradient():
  # ∇_μ E_{N(μ, 1)}[x²] = 2μ; the estimate over 2,000 keys is within 4 standard errors.
  mu, num_keys = 0.7, 2000

  def surrogate(m, key):
    x = jax.lax.stop_gradient(m + jax.random.normal(key, (8,)))
    log_q = jax.scipy.stats.norm.logpdf(x, m, 1.0)
    return klax.score_function_surrogate(x**2, log_q)

  keys = jax.random.split(jax.random.key(1), num_keys)
  values, grads = jax.jit(jax.vmap(jax.value_and_grad(surrogate), in_axes=(None, 0)))(mu, keys)
  assert float(jnp.max(jnp.abs(values))) == 0.0
  grads = np.asarray(grads, np.float64)
  stderr = grads.std(ddof=1) / np.sqrt(num_keys)
  assert abs(grads.mean() - 2 * mu) < 4 * stderr
  with pytest.raises(ValueError, match="S >= 2"):
    klax.score_function_surrogate(jnp.zeros(1), jnp.zeros(1))
  with pytest.raises(ValueError, match="same shape"):
    klax.score_function_surrogate(jnp.zeros(3), jnp.zeros(4))


def test_an_objective_written_from_the_kernels_is_the_score_function_reverse_kl():
  target = jax.tree_util.Partial(_shifted_normal, jnp.array(1.5))

  def my_loss(params, key):
    draws = klax.variational_draws(NORMAL, target, params, key, 8, gradient="score")
    value = jax.lax.stop_gradient(-jnp.mean(draws.log_w))
    return value + klax.score_function_surrogate(-draws.log_w, draws.log_q)

  ours = jax.value_and_grad(my_loss)(PARAMS, KEY)
  klaxs = jax.value_and_grad(klax.reverse_kl_loss(NORMAL, target, 8, gradient="score"))(PARAMS, KEY)
  chex.assert_trees_all_close(ours, klaxs, rtol=1e-6)


def test_score_gradient_of_the_negative_elbo_is_the_leave_one_out_estimate_alone():
  """With f = log q − log p̃ at fixed draws, the gradient is (1/S) Σ (f_s − b_s) ∇ log q(x_s),
  computed here in numpy for a normal q (∇_loc log q = (x − loc) / σ²): no extra score term."""
  loc, sigma = 0.3, float(np.exp(-0.2))
  loss = klax.reverse_kl_loss(NORMAL, lambda x: -0.5 * (x - 1.5) ** 2, 8, gradient="score")
  x = np.asarray(
    jax.lax.stop_gradient(NORMAL.dist(PARAMS).sample(seed=KEY, sample_shape=(8,))), np.float64
  )
  f = stats.norm.logpdf(x, loc, sigma) + 0.5 * (x - 1.5) ** 2
  baseline = (f.sum() - f) / 7
  expected = np.mean((f - baseline) * (x - loc) / sigma**2)
  np.testing.assert_allclose(jax.grad(loss)(PARAMS, KEY)["loc"], expected, rtol=1e-4)


def test_cached_families_bind_defaults_and_keep_argument_checks():
  f = klax.families
  assert f.diag_normal(2) is f.diag_normal(d=2) is f.diag_normal(2, loc_scale=1.0)
  assert f.normal() is f.normal(loc_scale=1.0)
  assert f.conditional_diag_normal(3, 2) is f.conditional_diag_normal(3, d=2, hidden_sizes=(64,))
  f.diag_normal(2)
  for bad in (2.0, True):  # equal to 2 / 1 as cache keys, but not positive Python ints
    with pytest.raises(TypeError, match="`d`"):
      f.diag_normal(bad)

"""Every family round-trips init → dist → log_prob / sample under jit and vmap."""

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from tensorflow_probability.substrates import jax as tfp

import klax
from klax import families

FAMILIES = {
  "normal": families.normal(),
  "diag_normal": families.diag_normal(3),
  "full_rank_normal": families.full_rank_normal(3),
  "mixture_1d": families.mixture_of_normals(3),
  "mixture_2d": families.mixture_of_normals(2, 2),
  "flow_1d": families.flow(1, num_layers=2),
  "flow_3d": families.flow(3, num_layers=2),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_round_trip_under_jit_and_vmap(name):
  family = FAMILIES[name]
  params = family.init(jax.random.key(0))

  @jax.jit
  def sample_and_score(p, key):
    q = family.dist(p)
    x, log_q = q.sample_and_log_prob(seed=key, sample_shape=(16,))
    return x, log_q, q.log_prob(x)

  x, log_q, rescored = sample_and_score(params, jax.random.key(1))
  np.testing.assert_allclose(log_q, rescored, atol=1e-4)
  assert np.all(np.isfinite(np.asarray(log_q)))
  batch = families.init_batch(family, jax.random.key(2), 4)
  batched = jax.vmap(lambda p: family.dist(p).log_prob(x))(batch)
  assert batched.shape == (4, 16)
  # A pathwise gradient exists wherever the sampler is reparameterised (not for mixtures).
  if not name.startswith("mixture"):
    grads = jax.grad(lambda p: jnp.mean(sample_and_score(p, jax.random.key(3))[1]))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_full_rank_normal_has_a_positive_diagonal_cholesky_factor():
  family = families.full_rank_normal(3)
  params = {
    "loc": jnp.zeros(3),
    "scale_raw": jnp.array([[-5.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 3.0, 4.0]]),
  }
  q = family.dist(params)
  tril = np.asarray(q.scale_tri)
  assert np.all(np.diag(tril) > 0) and np.allclose(tril, np.tril(tril))
  softplus = np.log1p(np.exp([-5.0, 0.0, 4.0]))
  expected = np.array([[softplus[0], 0, 0], [1.0, softplus[1], 0], [2.0, 3.0, softplus[2]]])
  x = np.array([0.3, -0.2, 1.0], np.float32)
  np.testing.assert_allclose(
    q.log_prob(x),
    scipy.stats.multivariate_normal(np.zeros(3), expected @ expected.T).logpdf(x),
    rtol=1e-5,
  )


def test_normal_family_matches_scipy():
  q = families.normal().dist({"loc": jnp.array(0.5), "log_scale": jnp.log(2.0)})
  assert isinstance(q, distrax.Normal)
  np.testing.assert_allclose(q.log_prob(1.3), scipy.stats.norm(0.5, 2.0).logpdf(1.3), rtol=1e-6)


def test_flow_is_a_density():
  family = families.flow(1, num_layers=2)
  params = family.init(jax.random.key(0))
  params["layers"][0]["spline"] = jax.random.normal(
    jax.random.key(1), params["layers"][0]["spline"].shape
  )
  x = jnp.linspace(-12, 12, 4001)[:, None]
  density = jnp.exp(family.dist(params).log_prob(x))
  np.testing.assert_allclose(jnp.trapezoid(density, x[:, 0]), 1.0, atol=1e-3)


def test_bad_arguments():
  with pytest.raises(ValueError, match="`d` must be positive"):
    families.diag_normal(0)
  with pytest.raises(TypeError, match="`batch_size` must be a positive Python int"):
    families.init_batch(families.normal(), jax.random.key(0), 2.5)
  assert isinstance(families.normal(), klax.Family)


def test_direct_log_prob_equals_the_distributions():
  key = jax.random.key(3)
  for family, shape in ((families.normal(), (7,)), (families.diag_normal(3), (7, 3))):
    params = family.init(key)
    x = 2.0 * jax.random.normal(jax.random.fold_in(key, 1), shape)
    np.testing.assert_allclose(
      family.log_prob(params, x), family.dist(params).log_prob(x), rtol=1e-6, atol=1e-6
    )
    grads = jax.grad(lambda p, f=family, x=x: jnp.sum(f.log_prob(p, x)))(params)
    expected = jax.grad(lambda p, f=family, x=x: jnp.sum(f.dist(p).log_prob(x)))(params)
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-5)


def test_reparameterisation_is_detected():
  from klax import _variational

  found = {}

  def detect(key):  # Traced only (eval_shape): the distributions' types are all that matter.
    for name, family in FAMILIES.items():
      q = family.dist(family.init(key))
      found[name] = (_variational.reparameterised(q), _variational.stratifiable(q))
    return jnp.zeros(())

  jax.eval_shape(detect, jax.random.key(0))
  assert set(found) == set(FAMILIES)
  for name, (reparameterised, stratifiable) in found.items():
    assert reparameterised == (not name.startswith("mixture")), name
    assert stratifiable == name.startswith("mixture"), name
  tfd = tfp.distributions
  assert not _variational.reparameterised(distrax.Categorical(logits=jnp.zeros(3)))
  assert not _variational.reparameterised(distrax.Independent(distrax.Bernoulli(jnp.zeros(2)), 1))
  assert not _variational.reparameterised(tfd.Poisson(1.0))
  assert _variational.reparameterised(tfd.Normal(0.0, 1.0))

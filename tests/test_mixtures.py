"""Gaussian-mixture KL: bounds hold against high-accuracy Monte Carlo; approximation errors."""

import itertools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

import klax

APPROXIMATIONS = {
  "variational": klax.kl_divergence_mixture_variational_approx,
  "product": klax.kl_divergence_mixture_product_approx,
  "matched": klax.kl_divergence_mixture_matched_bound_approx,
}


def _mixture(params):
  logits, means, scales = params
  if scales.ndim == 1:
    components = distrax.Normal(means[:, 0], scales)
  else:
    components = distrax.MultivariateNormalTri(means, scales)
  return distrax.MixtureSameFamily(distrax.Categorical(logits=logits), components)


def _random_params(rng, k, d):
  logits = jnp.asarray(rng.normal(size=k), jnp.float32)
  means = jnp.asarray(rng.normal(scale=2.0, size=(k, d)), jnp.float32)
  if d == 1:
    return logits, means, jnp.asarray(rng.uniform(0.4, 1.5, size=k), jnp.float32)
  tril = np.tril(rng.normal(scale=0.4, size=(k, d, d)))
  tril[:, np.arange(d), np.arange(d)] = rng.uniform(0.4, 1.5, size=(k, d))
  return logits, means, jnp.asarray(tril, jnp.float32)


def _random_mixture(rng, k, d):
  return _mixture(_random_params(rng, k, d))


def _numpy_log_density(params, x):
  logits, means, scales = (np.asarray(a, np.float64) for a in params)
  log_weights = logits - scipy.special.logsumexp(logits)
  covariances = (
    scales[:, None, None] ** 2 if scales.ndim == 1 else scales @ scales.transpose(0, 2, 1)
  )
  per_component = [
    scipy.stats.multivariate_normal(m, c).logpdf(x).reshape(len(x))
    for m, c in zip(means, covariances, strict=True)
  ]
  return scipy.special.logsumexp(log_weights[:, None] + np.stack(per_component), axis=0)


def _monte_carlo_reference(p_params, q_params, seed, n=200_000):
  """KL(p ‖ q) by plain Monte Carlo in float64 with numpy and scipy (independent of klax)."""
  rng = np.random.default_rng(seed)
  logits, means, scales = (np.asarray(a, np.float64) for a in p_params)
  weights = np.exp(logits - scipy.special.logsumexp(logits))
  component = rng.choice(len(weights), size=n, p=weights)
  noise = rng.normal(size=(n, means.shape[1]))
  if scales.ndim == 1:
    x = means[component] + scales[component, None] * noise
  else:
    x = means[component] + np.einsum("nij,nj->ni", scales[component], noise)
  log_ratio = _numpy_log_density(p_params, x) - _numpy_log_density(q_params, x)
  return log_ratio.mean(), log_ratio.std() / np.sqrt(n)


def test_bounds_hold_and_report_approximation_errors():
  rng = np.random.default_rng(0)
  errors = {name: [] for name in APPROXIMATIONS}
  for trial in range(16):
    d, kp, kq = [1, 2][trial % 2], 1 + trial % 3, 1 + (trial // 3) % 3
    p_params, q_params = _random_params(rng, kp, d), _random_params(rng, kq, d)
    p, q = _mixture(p_params), _mixture(q_params)
    truth, stderr = _monte_carlo_reference(p_params, q_params, trial)
    lower = float(klax.kl_divergence_mixture_lower_bound(p, q))
    upper = float(klax.kl_divergence_mixture_upper_bound(p, q))
    assert lower <= truth + 4 * stderr, (trial, lower, truth)
    assert upper >= truth - 4 * stderr, (trial, upper, truth)
    for name, fn in APPROXIMATIONS.items():
      errors[name].append(float(fn(p, q)) - truth)
  report = {name: (np.mean(np.abs(e)), np.max(np.abs(e))) for name, e in errors.items()}
  print("\nmixture KL approximation |error| (mean, max) over 16 random pairs:", report)
  # The variational approximation is the most accurate of the three (Hershey & Olsen's finding).
  assert report["variational"][0] <= min(report["product"][0], report["matched"][0]) + 1e-3


def test_upper_bound_tightens_with_iterations():
  rng = np.random.default_rng(1)
  p, q = _random_mixture(rng, 3, 2), _random_mixture(rng, 3, 2)
  values = [
    float(klax.kl_divergence_mixture_upper_bound(p, q, num_iterations=n)) for n in (0, 1, 5, 50)
  ]
  assert all(b <= a + 1e-5 for a, b in itertools.pairwise(values))


def test_single_gaussians_give_the_closed_form():
  p, q = distrax.Normal(0.3, 1.2), distrax.Normal(-1.0, 0.7)
  exact = float(klax.kl_divergence(p, q))
  for fn in (
    klax.kl_divergence_mixture_variational_approx,
    klax.kl_divergence_mixture_matched_bound_approx,
    klax.kl_divergence_mixture_upper_bound,
  ):
    np.testing.assert_allclose(fn(p, q), exact, rtol=1e-5)
  # The product approximation is not exact even here; the lower bound is below the truth.
  assert float(klax.kl_divergence_mixture_lower_bound(p, q)) <= exact


def test_identical_mixtures():
  p = _random_mixture(np.random.default_rng(2), 3, 2)
  np.testing.assert_allclose(klax.kl_divergence_mixture_variational_approx(p, p), 0.0, atol=1e-5)
  assert float(klax.kl_divergence_mixture_lower_bound(p, p)) <= 1e-5
  assert float(klax.kl_divergence_mixture_upper_bound(p, p)) >= -1e-5


def test_seed_mixture_against_forward_optimum():
  p_params = (jnp.zeros(2), jnp.array([[-3.0], [3.0]]), jnp.array([1.2, 1.2]))
  q_params = (jnp.zeros(1), jnp.zeros((1, 1)), jnp.array([float(np.sqrt(1.2**2 + 9))]))
  p, q = _mixture(p_params), distrax.Normal(0.0, float(np.sqrt(1.2**2 + 9)))
  truth, stderr = _monte_carlo_reference(p_params, q_params, 7)
  assert float(klax.kl_divergence_mixture_lower_bound(p, q)) <= truth + 4 * stderr
  assert float(klax.kl_divergence_mixture_upper_bound(p, q)) >= truth - 4 * stderr


@pytest.mark.parametrize(
  "fn",
  [
    *APPROXIMATIONS.values(),
    klax.kl_divergence_mixture_upper_bound,
    klax.kl_divergence_mixture_lower_bound,
  ],
)
def test_jit_vmap_grad(fn):
  def value(shift):
    p = distrax.MixtureSameFamily(
      distrax.Categorical(logits=jnp.array([0.2, -0.1])),
      distrax.Normal(jnp.array([-1.0, 1.5]) + shift, jnp.array([0.8, 1.1])),
    )
    q = distrax.MixtureSameFamily(
      distrax.Categorical(logits=jnp.array([0.0, 0.3, 0.1])),
      distrax.Normal(jnp.array([-2.0, 0.0, 2.0]), 1.0),
    )
    return fn(p, q)

  eager = value(0.4)
  np.testing.assert_allclose(jax.jit(value)(0.4), eager, rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(value)(jnp.array([0.0, 0.4]))[1], eager, rtol=1e-5)
  jax.test_util.check_grads(value, (0.4,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_batched_mixtures_broadcast():
  components = distrax.Normal(jnp.array([[-1.0, 1.0], [0.0, 2.0]]), 1.0)  # Batch of 2 mixtures.
  p = distrax.MixtureSameFamily(distrax.Categorical(logits=jnp.zeros((2, 2))), components)
  got = klax.kl_divergence_mixture_variational_approx(p, distrax.Normal(0.0, 2.0))
  assert got.shape == (2,)
  single = distrax.MixtureSameFamily(
    distrax.Categorical(logits=jnp.zeros(2)), distrax.Normal(jnp.array([0.0, 2.0]), 1.0)
  )
  np.testing.assert_allclose(
    got[1],
    klax.kl_divergence_mixture_variational_approx(single, distrax.Normal(0.0, 2.0)),
    rtol=1e-5,
  )


def test_bad_arguments():
  with pytest.raises(TypeError, match="`q` must be a Gaussian mixture"):
    klax.kl_divergence_mixture_lower_bound(distrax.Normal(0.0, 1.0), distrax.Laplace(0.0, 1.0))
  with pytest.raises(ValueError, match="same dimension"):
    klax.kl_divergence_mixture_upper_bound(
      distrax.Normal(0.0, 1.0), distrax.MultivariateNormalDiag(jnp.zeros(2))
    )


ALL = [
  *APPROXIMATIONS.values(),
  klax.kl_divergence_mixture_upper_bound,
  klax.kl_divergence_mixture_lower_bound,
]


def _seed_pair(logits, scales=(1.2, 1.2, 0.7), shift=0.0):
  p = distrax.MixtureSameFamily(
    distrax.Categorical(logits=logits),
    distrax.Normal(jnp.array([-3.0, 3.0, 0.5]) + shift, jnp.asarray(scales)),
  )
  return p, distrax.Normal(0.0, 3.2311)


@jax.jit
def _every_function(logits, shift, scales, q_scale):
  """Every function of ALL at the seed pair, with its gradients in (logits, shift), and for
  N(0, 1) ‖ N(1, q_scale²): one compilation for all the checks below."""

  def value(fn):  # One gradient per function: a NaN in one cannot leak into another's.
    return jax.value_and_grad(lambda lg, sh: fn(*_seed_pair(lg, scales, sh)), (0, 1))(logits, shift)

  values, grads = zip(*(value(fn) for fn in ALL), strict=True)
  normals = jnp.stack([fn(distrax.Normal(0.0, 1.0), distrax.Normal(1.0, q_scale)) for fn in ALL])
  return jnp.stack(values), grads, normals


@jax.jit
def _without_the_component():
  p = distrax.MixtureSameFamily(
    distrax.Categorical(logits=jnp.zeros(2)), distrax.Normal(jnp.array([-3.0, 3.0]), 1.2)
  )
  return jnp.stack([fn(p, distrax.Normal(0.0, 3.2311)) for fn in ALL])


@pytest.fixture(scope="module")
def seed_pair():
  dead, scales = jnp.array([0.0, 0.0, -jnp.inf]), jnp.array([1.2, 1.2, 0.7])
  return {
    "dead": _every_function(dead, 0.0, scales, 1.0)[0],
    "dead gradients": _every_function(dead, 0.3, scales, 1.0)[1],
    "without": _without_the_component(),
    **{
      f"scale {s}": _every_function(jnp.zeros(3), 0.0, scales.at[0].set(s), s) for s in (-1.2, 0.0)
    },
  }


@pytest.mark.parametrize("i", range(len(ALL)), ids=[fn.__name__ for fn in ALL])
def test_a_zero_weight_component_contributes_nothing(seed_pair, i):
  """Value and gradients as without the component (the upper bound was NaN, exact 0.9905)."""
  np.testing.assert_allclose(seed_pair["dead"][i], seed_pair["without"][i], rtol=1e-6)
  if ALL[i] is klax.kl_divergence_mixture_upper_bound:
    np.testing.assert_allclose(seed_pair["without"][i], 0.9905, atol=5e-5)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in seed_pair["dead gradients"][i])


@pytest.mark.parametrize("i", range(len(ALL)), ids=[fn.__name__ for fn in ALL])
def test_a_non_positive_normal_scale_gives_nan(seed_pair, i):
  """As distrax's log_prob does: scale ≤ 0 is not a Normal (was a finite number from scale²)."""
  for scale in (-1.2, 0.0):
    mixture, _, normals = seed_pair[f"scale {scale}"]
    assert np.isnan(float(mixture[i])) and np.isnan(float(normals[i]))

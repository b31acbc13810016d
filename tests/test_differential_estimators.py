"""Differential tests of the Monte Carlo, diagnostic and kNN estimators against independent
references, over wide hypothesis-drawn domains.

References: scipy's cKDTree k-NN distances in float64 (kl_divergence_knn), numpy float64 with a
Taylor series near 0 (kl_from_log_ratio), ArviZ's PSIS k̂ (pareto_shape), TFP's closed-form KL,
entropy and cross-entropy (the Monte Carlo estimates, within 5 standard errors with fixed keys,
whenever k̂ < 0.5 says the standard error means something), exact log Z of a conjugate model
(reverse_kl_diagnostics), numpy variances of the same draws (gradient_variance), and clusters
built with a known answer (basin_report). Shapes are fixed so that each function compiles once.
"""

import warnings

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions
N_X, N_Y = 24, 20
_KNN = jax.jit(klax.kl_divergence_knn, static_argnums=2)
_TINY = np.finfo(np.float32).tiny  # XLA on CPU flushes subnormals to zero: keep the data normal.


def _kth_distinct(tree_points, queries, k):
  """k-th smallest non-zero float64 distance from each query (NaN if fewer than k)."""
  dist, _ = scipy.spatial.cKDTree(tree_points).query(queries, k=len(tree_points))
  dist = dist.reshape(len(queries), -1)
  out = np.full(len(queries), np.nan)
  for i, row in enumerate(dist):
    positive = row[row > 0]
    if len(positive) >= k:
      out[i] = positive[k - 1]
  return out


def _knn_reference(x, y, k):
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    return np.nan
  x, y = x.astype(np.float64), y.astype(np.float64)
  rho, nu = _kth_distinct(x, x, k), _kth_distinct(y, x, k)
  d = x.shape[1]
  return d * np.mean(np.log(nu) - np.log(rho)) + np.log(len(y) / (len(x) - 1))


@st.composite
def _knn_case(draw):
  d, k = draw(st.integers(1, 4)), draw(st.integers(1, 5))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  x = rng.standard_normal((N_X, d))
  y = draw(st.floats(-2.0, 2.0)) + draw(st.floats(0.3, 3.0)) * rng.standard_normal((N_Y, d))
  if draw(st.booleans()):  # Duplicates within x and between x and y.
    x[: N_X // 3] = x[N_X // 3 : 2 * (N_X // 3)]
    y[:3] = x[:3]
  if draw(st.booleans()):  # A lattice: many ties at equal distances.
    x, y = np.round(x * 2) / 2, np.round(y * 2) / 2
  scale = 10.0 ** draw(st.floats(-30.0, 30.0))
  x, y = (x * scale).astype(np.float32), (y * scale).astype(np.float32)
  x[np.abs(x) < _TINY], y[np.abs(y) < _TINY] = 0.0, 0.0
  bad = draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf]))
  if bad is not None:
    target = x if draw(st.booleans()) else y
    target[draw(st.integers(0, len(target) - 1)), draw(st.integers(0, d - 1))] = bad
  return x, y, k


@given(_knn_case())
def test_knn_matches_a_float64_kdtree_reference(case):
  x, y, k = case
  expected = _knn_reference(x, y, k)
  got = _KNN(jnp.asarray(x), jnp.asarray(y), k)
  assert got.dtype == jnp.float32 and got.shape == ()
  if np.isnan(expected):
    assert np.isnan(got), (expected, got)
  else:
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-5 * x.shape[1])


def test_knn_gradients_are_finite_under_vmap():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, N_X, 2)) * 1e-25, jnp.float32)
  y = jnp.asarray(rng.standard_normal((3, N_Y, 2)) * 1e-25 + 1e-25, jnp.float32)
  grad = jax.grad(lambda a, b: klax.kl_divergence_knn(a, b, 2), argnums=(0, 1))
  grads = jax.jit(jax.vmap(grad))(x, y)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def _k3_reference(log_ratio):
  """e^{−ℓ} − 1 + ℓ in float64: the Taylor series where |ℓ| < 1e-3, else expm1(−ℓ) + ℓ."""
  with np.errstate(all="ignore"):
    series = log_ratio**2 * (0.5 - log_ratio / 6 + log_ratio**2 / 24 - log_ratio**3 / 120)
    direct = np.expm1(-log_ratio) + log_ratio
  out = np.where(np.abs(log_ratio) < 1e-3, series, direct)
  return np.where(log_ratio == -np.inf, np.inf, out)


_LOG_RATIO_FNS = {
  e: jax.jit(lambda lr, e=e: klax.kl_from_log_ratio(lr, e)) for e in klax._checks.ESTIMATORS
}
_LOG_RATIO_GRADS = {
  e: jax.jit(jax.vmap(jax.grad(lambda lr, e=e: klax.kl_from_log_ratio(lr, e))))
  for e in klax._checks.ESTIMATORS
}


@given(
  st.lists(
    st.floats(allow_nan=True, allow_infinity=True, width=32)
    | st.floats(-(2.0**-10), 2.0**-10, width=32),
    min_size=16,
    max_size=16,
  ),
  st.sampled_from(klax._checks.ESTIMATORS),
  st.sampled_from([jnp.float32, jnp.float16, jnp.bfloat16]),
)
def test_kl_from_log_ratio_matches_float64(values, estimator, dtype):
  log_ratio = jnp.asarray(np.asarray(values, np.float32)).astype(dtype)
  exact = np.asarray(log_ratio.astype(jnp.float32), np.float64)
  exact[np.abs(exact) < _TINY] = 0.0
  with np.errstate(all="ignore"):  # (Overflow to inf in float32 is the expected answer.)
    expected = {"k1": exact, "k2": 0.5 * exact**2, "k3": _k3_reference(exact)}[estimator]
  got = _LOG_RATIO_FNS[estimator](log_ratio)
  assert got.dtype == jnp.float32 and got.shape == (16,)
  # Results below float32's smallest normal number are flushed to zero on CPU: atol covers them.
  with np.errstate(over="ignore"):
    expected = expected.astype(np.float32)
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2 * _TINY)
  finite = np.isfinite(np.asarray(got))
  grads = np.asarray(_LOG_RATIO_GRADS[estimator](log_ratio.astype(jnp.float32)))
  with np.errstate(all="ignore"):
    derivative = {"k1": np.ones_like(exact), "k2": exact, "k3": -np.expm1(-exact)}[estimator]
    representable = finite & np.isfinite(derivative.astype(np.float32))
  np.testing.assert_allclose(
    grads[representable], derivative[representable], rtol=2e-6, atol=2 * _TINY
  )


_PARETO = {size: jax.jit(klax.pareto_shape) for size in (100, 1000)}


@settings(max_examples=25)
@given(
  st.sampled_from([100, 1000]),
  st.sampled_from(["normal", "pareto"]),
  st.floats(0.05, 4.0),
  st.floats(-100.0, 100.0),
  st.integers(0, 2**32 - 1),
)
def test_pareto_shape_matches_arviz(size, family, spread, shift, seed):
  arviz = pytest.importorskip("arviz")
  rng = np.random.default_rng(seed)
  if family == "normal":
    log_weights = spread * rng.standard_normal(size)
  else:  # log of Pareto weights with tail index 1/spread: k = spread.
    log_weights = spread * rng.standard_exponential(size)
  log_weights = (log_weights + shift).astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _, expected = arviz.psislw(log_weights.astype(np.float64))
  got = _PARETO[size](jnp.asarray(log_weights))
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), expected, atol=5e-4)


def test_pareto_shape_under_jit_vmap_and_grad():
  log_weights = jnp.asarray(np.random.default_rng(5).standard_normal((3, 100)), jnp.float32)
  single = _PARETO[100]
  np.testing.assert_allclose(
    jax.jit(jax.vmap(klax.pareto_shape))(log_weights), [single(w) for w in log_weights], rtol=1e-5
  )
  grads = jax.jit(jax.vmap(jax.grad(klax.pareto_shape)))(log_weights)
  assert bool(jnp.all(jnp.isfinite(grads)))


@jax.jit
def _mc_estimates(theta, key):
  p = distrax.Normal(theta[0], jnp.exp(theta[1]))
  q = distrax.Normal(theta[2], jnp.exp(theta[3]))
  keys = jax.random.split(key, 4)
  return (
    klax.kl_divergence_mc(p, q, keys[0], 4_000, "k1"),
    klax.kl_divergence_mc(p, q, keys[1], 4_000, "k3"),
    klax.entropy_mc(p, keys[2], 4_000),
    klax.cross_entropy_mc(p, q, keys[3], 4_000),
  )


@given(
  st.lists(st.floats(-100.0, 100.0), min_size=2, max_size=2),
  st.lists(st.floats(-2.0 * np.log(10), 2.0 * np.log(10)), min_size=2, max_size=2),
  st.integers(0, 2**31 - 1),
)
def test_monte_carlo_estimates_cover_tfp_closed_forms(locs, log_scales, seed):
  theta = jnp.asarray([locs[0], log_scales[0], locs[1], log_scales[1]], jnp.float32)
  p = tfd.Normal(np.float64(locs[0]), np.exp(np.float64(log_scales[0])))
  q = tfd.Normal(np.float64(locs[1]), np.exp(np.float64(log_scales[1])))
  kl = float(tfd.kl_divergence(p, q))
  exact = (kl, kl, float(p.entropy()), float(p.entropy()) + kl)
  for est, truth in zip(_mc_estimates(theta, jax.random.key(seed)), exact, strict=True):
    assert est.value.dtype == est.stderr.dtype == est.pareto_k.dtype == jnp.float32
    if float(est.pareto_k) < 0.5:  # Then the standard error must be right.
      error = abs(float(est.value) - truth)
      assert error <= 5 * float(est.stderr) + 1e-5 * (1 + abs(truth)), (est, truth)


# Conjugate model: z ~ N(0, 1), x_i | z ~ N(z, 1), i = 1..3; posterior N(Σx/4, 1/4).
_X = np.array([0.8, 1.9, 1.1])
_LOG_Z = float(-0.5 * (3 * np.log(2 * np.pi) + np.log(4) + _X @ _X - _X.sum() ** 2 / 4))


def _log_joint(z):
  return jax.scipy.stats.norm.logpdf(z) + jnp.sum(jax.scipy.stats.norm.logpdf(jnp.asarray(_X), z))


@jax.jit
def _diagnose(theta, key):
  return klax.reverse_kl_diagnostics(
    distrax.Normal(theta[0], jnp.exp(theta[1])), _log_joint, key, 2_000
  )


@settings(max_examples=25)
@given(st.floats(-1.0, 2.5), st.floats(-2.0, 1.0), st.integers(0, 2**31 - 1))
def test_reverse_kl_diagnostics_against_the_exact_evidence(loc, log_scale, seed):
  d = _diagnose(jnp.asarray([loc, log_scale], jnp.float32), jax.random.key(seed))
  kl = float(tfd.kl_divergence(tfd.Normal(loc, np.exp(log_scale)), tfd.Normal(_X.sum() / 4, 0.5)))
  if float(d.elbo.pareto_k) < 0.5:
    assert abs(float(d.elbo.value) - (_LOG_Z - kl)) <= 5 * float(d.elbo.stderr) + 1e-4
  assert float(d.log_evidence.pareto_k) == float(d.pareto_k)
  if float(d.pareto_k) < 0.5:
    assert abs(float(d.log_evidence.value) - _LOG_Z) <= 5 * float(d.log_evidence.stderr) + 1e-4
  assert 1.0 - 1e-3 <= float(d.ess) <= 2_000 * (1 + 1e-5)


def _linear_loss(params, key):  # ∇ = a ε + θ with ε ~ N(0, I): total variance a² Σ var(ε).
  return jnp.sum(params["a"] * params["theta"] * jax.random.normal(key, (3,))) + 0.5 * jnp.sum(
    params["theta"] ** 2
  )


_GRADIENT_VARIANCE = jax.jit(
  lambda params, key: klax.gradient_variance(_linear_loss, params, key, 64)
)


@given(st.floats(-10.0, 10.0), st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3))
def test_gradient_variance_matches_numpy_on_the_same_draws(log10_a, theta):
  a = np.float32(10.0**log10_a)
  params = {"a": jnp.asarray(a), "theta": jnp.asarray(theta, jnp.float32)}
  key = jax.random.key(3)
  eps = np.asarray(jax.vmap(lambda k: jax.random.normal(k, (3,)))(jax.random.split(key, 64)))
  grads_theta = np.float64(a) * eps.astype(np.float64) + np.asarray(theta, np.float32)
  grads_a = eps.astype(np.float64) @ np.asarray(theta, np.float32).astype(np.float64)
  expected = np.sum(np.var(grads_theta, axis=0, ddof=1)) + np.var(grads_a, ddof=1)
  got = _GRADIENT_VARIANCE(params, key)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_gradient_variance_of_low_precision_gradients_is_float32():
  def loss(theta, key):
    return jnp.sum(theta * jax.random.normal(key, (4,)).astype(jnp.bfloat16) * 1e-3)

  key = jax.random.key(4)
  got = klax.gradient_variance(loss, jnp.ones(4, jnp.bfloat16), key, 200)
  draws = jax.vmap(lambda k: jax.random.normal(k, (4,)).astype(jnp.bfloat16) * 1e-3)(
    jax.random.split(key, 200)
  )
  assert got.dtype == jnp.float32
  expected = np.sum(np.var(np.asarray(draws, np.float64), axis=0, ddof=1))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


@given(
  st.lists(st.tuples(st.integers(1, 6), st.floats(0.0, 10.0)), min_size=1, max_size=4),
  st.integers(0, 2**32 - 1),
)
def test_basin_report_recovers_clusters_built_with_a_known_answer(clusters, seed):
  """Centres 10 apart, members within 0.01, tolerance 0.5: every fit in its own cluster's basin,
  basins ordered by their (deterministic) depth, parameters the members' means."""
  rng = np.random.default_rng(seed)
  locs, losses, labels = [], [], []
  for c, (count, depth) in enumerate(clusters):
    locs += list(10.0 * c + 0.01 * rng.uniform(-1, 1, count))
    losses += list(depth + 1e-3 * c + 1e-4 * rng.uniform(0, 1, count))
    labels += [c] * count
  order = rng.permutation(len(locs))
  locs, losses, labels = (np.asarray(v)[order] for v in (locs, losses, labels))
  result = klax.FitResult(
    {"loc": jnp.asarray(locs, jnp.float32)},
    jnp.asarray(losses, jnp.float32)[:, None],
    jnp.full(len(locs), -1, jnp.int32),
  )
  basins = klax.basin_report(result, tolerance=0.5)
  assert len(basins) == len(clusters)
  means = [np.mean(losses[labels == c]) for c in range(len(clusters))]
  for basin, c in zip(basins, np.argsort(means), strict=True):
    assert sorted(basin.members.tolist()) == np.flatnonzero(labels == c).tolist()
    np.testing.assert_allclose(
      basin.params["loc"], np.mean(locs[labels == c]), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(basin.loss_mean, means[c], rtol=1e-6)

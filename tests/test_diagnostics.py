"""basin_report: grouping multi-start fits by the optimum they reached."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import klax


def _result(locs, losses, diverged_at=None):
  locs = jnp.asarray(locs, jnp.float32)
  n = len(locs)
  diverged = (
    jnp.full(n, -1, jnp.int32) if diverged_at is None else jnp.asarray(diverged_at, jnp.int32)
  )
  return klax.FitResult(
    {"loc": locs, "log_scale": jnp.zeros(n)}, jnp.asarray(losses, jnp.float32)[:, None], diverged
  )


def test_groups_ranks_and_summarises():
  result = _result(
    [-3.0, 3.01, -2.98, 0.0, 2.99, 0.02, 5.0, 9.0],
    [0.7, 0.66, 0.68, 0.48, 0.67, 0.49, np.nan, 0.1],
    diverged_at=[
      -1,
      -1,
      -1,
      -1,
      -1,
      -1,
      -1,
      4,
    ],  # The last one diverged; the NaN loss is dropped too.
  )
  basins = klax.basin_report(result, tolerance=0.1)
  assert [b.count for b in basins] == [2, 2, 2]
  np.testing.assert_allclose(
    [float(b.params["loc"]) for b in basins], [0.01, 3.0, -2.99], atol=1e-6
  )
  np.testing.assert_allclose(basins[0].loss_mean, 0.485, rtol=1e-6)
  np.testing.assert_allclose(basins[0].loss_std, 0.005, rtol=1e-4)
  assert sorted(basins[1].members.tolist()) == [1, 4]
  by_value = klax.basin_report(result, tolerance=0.1, value_fn=lambda p: -abs(float(p["loc"])))
  assert [b.value for b in by_value] == pytest.approx([-3.0, -2.99, -0.01], abs=1e-5)


def test_features_and_tolerance():
  result = _result([0.0, 0.15, 0.3], [1.0, 1.0, 1.0])
  assert len(klax.basin_report(result, tolerance=0.1)) == 3
  assert len(klax.basin_report(result, tolerance=0.35)) == 1
  coarse = klax.basin_report(result, tolerance=0.1, features=lambda p: jnp.round(p["loc"]))
  assert len(coarse) == 1
  with pytest.raises(ValueError, match="`tolerance` must be positive"):
    klax.basin_report(result, tolerance=0.0)


def test_forward_kl_has_a_single_optimum():
  data = jnp.asarray(
    np.random.default_rng(0).choice([-3.0, 3.0], 2000)
    + 1.2 * np.random.default_rng(1).normal(size=2000),
    jnp.float32,
  )
  loss = klax.forward_kl_loss(klax.families.normal(), data)
  starts = {"loc": jnp.linspace(-5.0, 5.0, 8), "log_scale": jnp.linspace(-1.0, 1.5, 8)}
  result = klax.fit_batch(loss, starts, optax.lbfgs(), jax.random.key(0), 60)
  basins = klax.basin_report(result, tolerance=1e-3)
  assert len(basins) == 1 and basins[0].count == 8
  np.testing.assert_allclose(float(basins[0].params["loc"]), float(data.mean()), atol=1e-4)


def test_pareto_shape_matches_arviz():
  arviz = pytest.importorskip(
    "arviz", reason="ArviZ is the independent PSIS reference (test extra)"
  )
  rng = np.random.default_rng(0)
  for size in (100, 1000, 4000):
    for scale in (0.3, 1.0, 2.0, 3.0):
      log_weights = rng.normal(size=size) * scale
      _, expected = arviz.psislw(log_weights.copy())
      np.testing.assert_allclose(
        klax.pareto_shape(jnp.asarray(log_weights, jnp.float32)), expected, atol=2e-4
      )
  with pytest.raises(ValueError, match="S >= 25"):
    klax.pareto_shape(jnp.zeros(10))


# Conjugate model: z ~ N(0, 1), x_i | z ~ N(z, 1); posterior N(Σx/(n+1), 1/(n+1)).
_X = np.array([0.8, 1.9, 1.1, 0.4, 1.5])
_LOG_Z = float(
  -0.5
  * (len(_X) * np.log(2 * np.pi) + np.log(len(_X) + 1) + _X @ _X - _X.sum() ** 2 / (len(_X) + 1))
)


def _log_joint(z):
  return jax.scipy.stats.norm.logpdf(z) + jnp.sum(
    jax.scipy.stats.norm.logpdf(jnp.asarray(_X), z, 1.0)
  )


def test_diagnostics_at_the_exact_posterior():
  import distrax

  posterior = distrax.Normal(float(_X.sum() / 6), float(1 / np.sqrt(6)))
  diagnostics = jax.jit(klax.reverse_kl_diagnostics, static_argnums=(1, 3))(
    posterior, _log_joint, jax.random.key(0), 2000
  )
  assert float(diagnostics.pareto_k) < 0.5
  assert abs(float(diagnostics.log_evidence.value) - _LOG_Z) < 1e-4
  assert abs(float(diagnostics.elbo.value) - _LOG_Z) < 1e-4  # KL(q ‖ p) = 0.
  assert float(diagnostics.ess) > 0.999 * 2000


def test_diagnostics_for_a_good_and_a_too_narrow_q():
  import distrax

  good = klax.reverse_kl_diagnostics(distrax.Normal(1.0, 0.45), _log_joint, jax.random.key(1), 4000)
  assert float(good.pareto_k) < 0.5
  assert abs(float(good.log_evidence.value) - _LOG_Z) < 4 * float(good.log_evidence.stderr) + 1e-3
  assert float(good.elbo.value) < _LOG_Z

  def student_t(x):  # Heavy tails (2 degrees of freedom), unnormalised.
    return -1.5 * jnp.log1p(x**2 / 2.0)

  narrow = klax.reverse_kl_diagnostics(distrax.Normal(0.0, 0.3), student_t, jax.random.key(2), 4000)
  assert float(narrow.pareto_k) > 0.7
  assert float(narrow.ess) < 0.5 * 4000


def test_gradient_variance_against_a_closed_form():
  # loss(θ, k) = θ · ε with ε ~ N(0, 1): ∇ = ε, so the total variance is 1 per parameter entry.
  def loss(params, key):
    return jnp.sum(params * jax.random.normal(key, params.shape))

  variance = jax.jit(klax.gradient_variance, static_argnums=(0, 3))(
    loss, jnp.ones(3), jax.random.key(0), 20_000
  )
  assert abs(float(variance) - 3.0) < 4 * 3.0 * np.sqrt(2 / 20_000)
  with pytest.raises(ValueError, match="at least 2"):
    klax.gradient_variance(loss, jnp.ones(3), jax.random.key(0), 1)

"""basin_report: grouping multi-start fits by the optimum they reached."""

import re

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
  pareto = jax.jit(klax.pareto_shape)
  for size in (100, 1000, 4000):
    for scale in (0.3, 1.0, 2.0, 3.0):
      log_weights = rng.normal(size=size) * scale
      _, expected = arviz.psislw(log_weights.copy())
      np.testing.assert_allclose(pareto(jnp.asarray(log_weights, jnp.float32)), expected, atol=2e-4)
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


# Reverse KL of a normal q to 0.7 N(−3, 1) + 0.3 N(3, 1): one basin per mode, KL ≈ −log 0.7 at −3
# and ≈ −log 0.3 at +3 (the loss is KL(q ‖ p) itself: the target is normalised).
def _log_mixture(x):
  return jnp.logaddexp(
    jnp.log(0.7) + jax.scipy.stats.norm.logpdf(x, -3.0),
    jnp.log(0.3) + jax.scipy.stats.norm.logpdf(x, 3.0),
  )


def _exact_reverse_kl(loc):  # By quadrature on a fine grid, in float64 numpy.
  import scipy.stats

  x = np.linspace(loc - 12, loc + 12, 200_001)
  log_q = scipy.stats.norm.logpdf(x, loc)
  log_p = np.logaddexp(
    np.log(0.7) + scipy.stats.norm.logpdf(x, -3.0), np.log(0.3) + scipy.stats.norm.logpdf(x, 3.0)
  )
  return float(np.sum(np.exp(log_q) * (log_q - log_p)) * (x[1] - x[0]))


def test_a_lucky_noisy_singleton_does_not_outrank_a_better_basin():
  loss = klax.reverse_kl_loss(klax.families.normal(), _log_mixture, 8)  # Noisy: 8 draws.
  # Five fits in the better basin (−3), one in the worse (+3) whose last stochastic loss was lucky.
  result = _result([-3.01, -2.99, -3.0, -3.02, -2.98, 3.0], [0.4, 0.31, 0.38, 0.36, 0.35, 0.05])
  by_last_loss = klax.basin_report(result, tolerance=0.2)
  assert by_last_loss[0].count == 1  # The defect: ranked by one noisy draw.
  basins = klax.basin_report(result, tolerance=0.2, loss=loss, key=jax.random.key(0))
  assert [b.count for b in basins] == [5, 1]
  for basin, loc in zip(basins, (-3.0, 3.0), strict=True):
    est = basin.evaluation
    assert float(est.stderr) < 0.05
    assert abs(float(est.value) - _exact_reverse_kl(float(basin.params["loc"]))) < 4 * float(
      est.stderr
    ), (loc, est)
    assert abs(float(basin.params["loc"]) - loc) < 0.05
  assert float(basins[0].evaluation.value) + 4 * float(basins[0].evaluation.stderr) < float(
    basins[1].evaluation.value
  )


@pytest.mark.parametrize(
  "kwargs, error, message",
  [
    ({"tolerance": float("nan")}, ValueError, "`tolerance` must be positive and finite"),
    ({"tolerance": float("inf")}, ValueError, "`tolerance` must be positive and finite"),
    ({"tolerance": -1.0}, ValueError, "`tolerance` must be positive"),
    ({"tolerance": "0.1"}, TypeError, "`tolerance` must be a positive float"),
    ({"tolerance": True}, TypeError, "`tolerance` must be a positive float"),
    ({"features": 3}, TypeError, "`features` must be a function"),
    ({"value_fn": "exact"}, TypeError, "`value_fn` must be a function"),
    ({"final_losses": jnp.zeros(2)}, ValueError, "`final_losses` must have shape [3]"),
    ({"final_losses": jnp.zeros(3, jnp.int32)}, TypeError, "`final_losses` must have a floating"),
    ({"loss": lambda p, k: 0.0}, ValueError, "`loss` and `key` go together"),
    ({"key": jax.random.key(0)}, ValueError, "`loss` and `key` go together"),
    ({"loss": lambda p, k: 0.0, "key": 0}, TypeError, "`key` must be a `jax.random` key"),
    ({"num_evaluations": 1}, ValueError, "`num_evaluations` must be at least 2"),
    ({"num_evaluations": 2.5}, TypeError, "`num_evaluations` must be a positive Python int"),
  ],
)
def test_basin_report_rejects_bad_arguments_by_name(kwargs, error, message):
  kwargs = {"tolerance": 0.1, **kwargs}
  with pytest.raises(error, match=re.escape(message)):
    klax.basin_report(_result([0.0, 1.0, 2.0], [1.0, 1.0, 1.0]), **kwargs)
  with pytest.raises(TypeError, match="`result` must be the FitResult"):
    klax.basin_report({"params": 1}, tolerance=0.1)


def test_diagnostics_functions_reject_bad_arguments_by_name():
  import distrax

  q = distrax.Normal(0.0, 1.0)
  with pytest.raises(ValueError, match="`num_samples` must be at least 25"):
    klax.reverse_kl_diagnostics(q, _log_joint, jax.random.key(0), 10)
  with pytest.raises(TypeError, match="`log_density` must be a function"):
    klax.reverse_kl_diagnostics(q, None, jax.random.key(0), 100)
  with pytest.raises(TypeError, match=re.escape("`key` must be a `jax.random` key")):
    klax.reverse_kl_diagnostics(q, _log_joint, 0, 100)
  with pytest.raises(TypeError, match="`log_weights` must have a floating-point dtype"):
    klax.pareto_shape(jnp.arange(30))
  with pytest.raises(TypeError, match="`loss` must be a function"):
    klax.gradient_variance("loss", jnp.ones(2), jax.random.key(0), 4)
  with pytest.raises(TypeError, match=re.escape("`key` must be a `jax.random` key")):
    klax.gradient_variance(lambda p, k: jnp.sum(p), jnp.ones(2), 1.0, 4)


def test_pareto_shape_nan_inf_and_low_precision():
  pareto = jax.jit(klax.pareto_shape)
  log_weights = jnp.asarray(np.random.default_rng(3).normal(size=400) * 2.0, jnp.float32)
  assert np.isnan(pareto(log_weights.at[7].set(jnp.nan)))
  assert np.isnan(pareto(log_weights.at[7].set(jnp.inf)))
  assert np.isnan(pareto(jnp.full(400, -jnp.inf)))
  # −inf entries are zero weights, outside the tail: k̂ is ArviZ's for the other 395 weights.
  arviz = pytest.importorskip("arviz")
  zeros = log_weights.at[:5].set(-jnp.inf)
  _, expected = arviz.psislw(np.asarray(log_weights[5:], np.float64))
  np.testing.assert_allclose(pareto(zeros), expected, atol=5e-4)
  for dtype in (jnp.bfloat16, jnp.float16):  # bfloat16 gave −inf (its eps made the tail "flat").
    low = log_weights.astype(dtype)
    got = pareto(low)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, pareto(low.astype(jnp.float32)), rtol=1e-6)
    assert abs(float(got) - float(pareto(log_weights))) < 0.1


def test_basin_report_takes_arrays_of_final_params_and_losses():
  rng = np.random.default_rng(3)
  centres = np.array([-3.0, 0.0, 3.0])
  labels = rng.integers(0, 3, 3000)
  params = {"loc": centres[labels] + 0.01 * rng.standard_normal(3000), "s": np.ones(3000)}
  losses = np.abs(centres[labels]) + 0.001 * rng.standard_normal(3000)
  losses[7] = np.nan  # Left out, as a diverged fit.
  basins = klax.basin_report(params, final_losses=losses, tolerance=0.2)
  assert [round(float(b.params["loc"])) for b in basins] == [0, -3, 3] or [
    round(float(b.params["loc"])) for b in basins
  ] == [0, 3, -3]
  expected = {c: set(np.flatnonzero(labels == i)) - {7} for i, c in enumerate(centres)}
  for basin in basins:
    assert set(basin.members.tolist()) == expected[round(float(basin.params["loc"]))]
    np.testing.assert_allclose(basin.params["loc"], params["loc"][basin.members].mean(), rtol=1e-12)
  result = klax.FitResult(
    jax.tree.map(jnp.asarray, params), jnp.asarray(losses)[:, None], jnp.full(3000, -1, jnp.int32)
  )
  from_result = klax.basin_report(result, tolerance=0.2)
  assert [b.count for b in from_result] == [b.count for b in basins]
  with pytest.raises(ValueError, match="pass `final_losses`"):
    klax.basin_report(params, tolerance=0.2)

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

"""fit and fit_batch on seed 001's problem, against references computed with scipy."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import norm
from scipy import integrate
from scipy import optimize
from scipy import stats

import klax
from klax import families


def log_p(x):  # P = ½ N(−3, 1.2²) + ½ N(3, 1.2²), normalised.
  return jnp.logaddexp(norm.logpdf(x, -3.0, 1.2), norm.logpdf(x, 3.0, 1.2)) - jnp.log(2.0)


def _reverse_kl_scipy(theta):
  mu, sigma = theta

  def integrand(x):
    log_q = stats.norm.logpdf(x, mu, sigma)
    log_target = np.logaddexp(stats.norm.logpdf(x, -3, 1.2), stats.norm.logpdf(x, 3, 1.2)) - np.log(
      2
    )
    return np.exp(log_q) * (log_q - log_target)

  return integrate.quad(integrand, mu - 12 * sigma, mu + 12 * sigma, limit=200)[0]


def _reverse_kl_basins():
  """Every local minimum of KL(N(μ, σ²) ‖ P), found independently with scipy (quadrature +
  Nelder–Mead from a grid of starts, deduplicated)."""
  minima = []
  for mu0 in (-3.0, 0.0, 3.0):
    for sigma0 in (1.0, 3.0):
      res = optimize.minimize(
        _reverse_kl_scipy,
        [mu0, sigma0],
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-10},
      )
      if not any(np.allclose(res.x, m[:2], atol=1e-2) for m in minima):
        minima.append((*res.x, res.fun))
  return sorted(minima)


REVERSE = klax.reverse_kl_loss(families.normal(), log_p, 64)


def test_forward_fit_is_the_mle_and_moment_matches():
  data = np.random.default_rng(0).choice([-3.0, 3.0], size=20_000) + 1.2 * np.random.default_rng(
    1
  ).normal(size=20_000)
  loss = klax.forward_kl_loss(families.normal(), jnp.asarray(data, jnp.float32))
  result = klax.fit(
    loss, {"loc": jnp.array(-3.0), "log_scale": jnp.log(1.2)}, optax.lbfgs(), jax.random.key(0), 50
  )
  loc, scale = float(result.params["loc"]), float(jnp.exp(result.params["log_scale"]))
  # The Gaussian MLE in closed form (numpy) ...
  np.testing.assert_allclose([loc, scale], [data.mean(), data.std()], atol=2e-4)
  # ... approaches the exact forward-KL minimiser, μ = 0, σ = √(1.2² + 3²), within MC precision.
  assert abs(loc) < 4 * 3.2311 / np.sqrt(len(data))
  assert abs(scale - np.sqrt(1.2**2 + 9)) < 4 * np.sqrt(np.var(data**2) / len(data)) / (2 * 3.2311)


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_reverse_fit_lands_on_the_seed_solution_and_its_mirror(sign):
  schedule = optax.cosine_decay_schedule(0.03, 3000)
  init = {"loc": jnp.array(3.0 * sign), "log_scale": jnp.log(1.2)}
  result = klax.fit(
    klax.reverse_kl_loss(families.normal(), log_p, 256),
    init,
    optax.adam(schedule),
    jax.random.key(1),
    3000,
  )
  assert abs(float(result.params["loc"]) - sign * 2.8633) < 0.01
  assert abs(float(jnp.exp(result.params["log_scale"])) - 1.3637) < 0.01
  assert (
    abs(
      _reverse_kl_scipy([float(result.params["loc"]), float(jnp.exp(result.params["log_scale"]))])
      - 0.66646
    )
    < 1e-3
  )


def test_fit_batch_finds_every_basin_of_the_reverse_kl():
  basins = _reverse_kl_basins()
  assert len(basins) >= 2
  starts = {
    "loc": jnp.linspace(-6.0, 6.0, 64),
    "log_scale": jnp.tile(jnp.log(jnp.array([0.5, 1.0, 2.0, 4.0])), 16),
  }
  result = klax.fit_batch(
    REVERSE,
    starts,
    optax.adam(optax.cosine_decay_schedule(0.05, 3000)),
    jax.random.key(2),
    3000,
    trace_every=100,
  )
  fitted = np.c_[np.asarray(result.params["loc"]), np.exp(np.asarray(result.params["log_scale"]))]
  distances = np.linalg.norm(fitted[:, None, :] - np.array(basins)[None, :, :2], axis=-1)
  assert np.all(distances.min(axis=1) < 0.1), "every fit ends in a basin found by scipy"
  found = {int(i) for i in distances.argmin(axis=1)}
  assert found == set(range(len(basins))), f"basins {basins}, reached {sorted(found)}"
  assert not bool(jnp.any(result.diverged))


def test_member_of_fit_batch_equals_fit_and_chunks_change_nothing():
  starts = {"loc": jnp.array([-2.0, 0.5, 1.0, 4.0, -5.0]), "log_scale": jnp.zeros(5)}
  optimizer = optax.adam(0.05)
  whole = klax.fit_batch(REVERSE, starts, optimizer, jax.random.key(3), 40)
  chunked = klax.fit_batch(REVERSE, starts, optimizer, jax.random.key(3), 40, chunk_size=2)
  # Different chunk sizes compile to different vector widths: equal to float32 rounding.
  chex.assert_trees_all_close(whole, chunked, rtol=1e-6, atol=1e-6)
  keys = jax.random.split(jax.random.key(3), 5)
  single = klax.fit(REVERSE, jax.tree.map(lambda x: x[3], starts), optimizer, keys[3], 40)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[3], whole), single, rtol=1e-6, atol=1e-6)
  again = klax.fit_batch(REVERSE, starts, optimizer, jax.random.key(3), 40)
  chex.assert_trees_all_close(whole, again, atol=0, rtol=0)  # Same key, bit-identical.
  assert whole.losses.shape == (5, 40)


def test_no_recompilation_for_the_same_loss_optimizer_and_sizes():
  traced = chex.assert_max_traces(lambda params, key: (params["loc"] - 1.0) ** 2, n=1)
  optimizer = optax.sgd(0.1)
  starts = {"loc": jnp.zeros(8)}
  klax.fit_batch(traced, starts, optimizer, jax.random.key(0), 10, chunk_size=4)
  klax.fit_batch(traced, {"loc": jnp.ones(8)}, optimizer, jax.random.key(1), 10, chunk_size=4)
  klax.fit_batch(
    traced, {"loc": jnp.ones(7)}, optimizer, jax.random.key(1), 10, chunk_size=4
  )  # Padded.
  # A plain GradientTransformation (no extra-args support) is wrapped once, not per call.
  plain_traced = chex.assert_max_traces(lambda params, key: (params["loc"] - 1.0) ** 2, n=1)
  plain = optax.scale(-0.1)
  klax.fit_batch(plain_traced, starts, plain, jax.random.key(0), 10, chunk_size=4)
  klax.fit_batch(plain_traced, starts, plain, jax.random.key(2), 10, chunk_size=4)


def test_lbfgs_converges_on_a_deterministic_loss():
  def rosenbrock(params, key):
    del key
    x, y = params[0], params[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2

  result = klax.fit(rosenbrock, jnp.array([-1.2, 1.0]), optax.lbfgs(), jax.random.key(0), 100)
  np.testing.assert_allclose(result.params, [1.0, 1.0], atol=1e-3)
  batch = klax.fit_batch(
    rosenbrock, jnp.array([[-1.2, 1.0], [2.0, 3.0]]), optax.lbfgs(), jax.random.key(0), 100
  )
  np.testing.assert_allclose(batch.params, np.ones((2, 2)), atol=1e-3)


def test_non_finite_losses_freeze_only_that_member_and_warn():
  def loss(params, key):
    del key
    x = params["x"]
    return jnp.where((x > 2.0) & (x < 4.5), jnp.nan, (x - 5.0) ** 2)  # Non-finite on (2, 4.5).

  starts = {"x": jnp.array([0.0, 6.0, 4.0])}
  with pytest.warns(RuntimeWarning, match="2 fit"):
    result = klax.fit_batch(loss, starts, optax.sgd(0.1), jax.random.key(0), 50)
  # sgd from 0: 0 → 1 → 1.8 → 2.44 (loss NaN at step 3): it keeps 1.8, the last finite one.
  assert int(result.diverged_at[0]) == 3 and abs(float(result.params["x"][0]) - 1.8) < 1e-6
  assert int(result.diverged_at[2]) == 0 and float(result.params["x"][2]) == 4.0  # Kept its start.
  assert int(result.diverged_at[1]) == -1 and abs(float(result.params["x"][1]) - 5.0) < 1e-3
  assert bool(result.diverged[0]) and not bool(result.diverged[1])
  assert np.isnan(np.asarray(result.losses[0, -1]))


def test_fit_runs_under_jit_and_vmap():
  optimizer = optax.adam(0.05)

  @jax.jit
  def run(loc):
    return klax.fit(
      REVERSE, {"loc": loc, "log_scale": jnp.array(0.0)}, optimizer, jax.random.key(0), 20
    ).params["loc"]

  eager = klax.fit(
    REVERSE, {"loc": jnp.array(1.0), "log_scale": jnp.array(0.0)}, optimizer, jax.random.key(0), 20
  )
  np.testing.assert_allclose(run(jnp.array(1.0)), eager.params["loc"], rtol=1e-5)
  np.testing.assert_allclose(
    jax.vmap(run)(jnp.array([1.0, 2.0]))[0], eager.params["loc"], rtol=1e-5
  )


def test_progress_bar_and_trace_every(capsys):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = klax.fit_batch(
      REVERSE,
      {"loc": jnp.zeros(3), "log_scale": jnp.zeros(3)},
      optax.adam(0.01),
      jax.random.key(0),
      200,
      trace_every=10,
      progress=True,
      chunk_size=2,
    )
  assert result.losses.shape == (3, 20)
  assert "fit_batch" in capsys.readouterr().err


def test_bad_arguments():
  with pytest.raises(ValueError, match="`trace_every`=3 must divide `num_steps`=10"):
    klax.fit(
      REVERSE, {"loc": 0.0, "log_scale": 0.0}, optax.adam(0.1), jax.random.key(0), 10, trace_every=3
    )
  with pytest.raises(ValueError, match="same leading"):
    klax.fit_batch(
      REVERSE,
      {"loc": jnp.zeros(3), "log_scale": jnp.zeros(4)},
      optax.adam(0.1),
      jax.random.key(0),
      10,
    )
  with pytest.raises(TypeError, match="`optimizer` must be an optax"):
    klax.fit(REVERSE, {"loc": 0.0, "log_scale": 0.0}, "adam", jax.random.key(0), 10)
  with pytest.raises(ValueError, match="`num_steps` must be positive"):
    klax.fit(REVERSE, {"loc": 0.0, "log_scale": 0.0}, optax.adam(0.1), jax.random.key(0), 0)


_SHARDED_SCRIPT = """
import json, sys, jax, jax.numpy as jnp, optax, klax
from jax.scipy.stats import norm
def log_p(x):
  return jnp.logaddexp(norm.logpdf(x, -3.0, 1.2), norm.logpdf(x, 3.0, 1.2))
loss = klax.reverse_kl_loss(klax.families.normal(), log_p, 16)
starts = {"loc": jnp.linspace(-4.0, 4.0, 10), "log_scale": jnp.zeros(10)}
result = klax.fit_batch(loss, starts, optax.adam(0.05), jax.random.key(7), 30, chunk_size=int(sys.argv[1]))
again = klax.fit_batch(loss, starts, optax.adam(0.05), jax.random.key(7), 30, chunk_size=int(sys.argv[1]))
print(json.dumps({"devices": len(jax.devices()), "loc": result.params["loc"].tolist(), "losses": result.losses[:, -1].tolist(),
                  "repeat_identical": bool(all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b, equal_nan=True)), result, again))))}))
"""


@pytest.mark.parametrize("chunk_size", [10, 3])
def test_four_cpu_devices_give_the_same_results_as_one(chunk_size, run_on_cpu_devices):
  outputs = [run_on_cpu_devices(_SHARDED_SCRIPT, count, str(chunk_size)) for count in (1, 4)]
  assert [o["devices"] for o in outputs] == [1, 4]
  assert all(o["repeat_identical"] for o in outputs)  # Same key, same bits, sharded or not.
  np.testing.assert_allclose(outputs[0]["loc"], outputs[1]["loc"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outputs[0]["losses"], outputs[1]["losses"], rtol=1e-5, atol=1e-6)


def _noisy_quadratic(scale):
  """loss(θ, k) = ½‖θ‖² + s θ·ε, ε ~ N(0, I): ∇ = θ + s ε, so tr Cov[∇] = d s² (on paper)."""

  def loss(params, key):
    noise = jax.random.normal(key, params.shape)
    return 0.5 * jnp.sum(params**2) + scale * jnp.sum(params * noise)

  return loss


def test_gradient_variance_trace_matches_the_variance_on_paper():
  loss, draws = _noisy_quadratic(0.5), 2_000
  result = klax.fit(
    loss,
    jnp.ones(3),
    optax.sgd(0.1),
    jax.random.key(0),
    40,
    trace_every=4,
    gradient_variance_draws=draws,
  )
  assert result.gradient_variances.shape == result.losses.shape == (10,)
  # The sample variance of d = 3 coordinates from D draws: relative s.e. √(2 / (d (D − 1))).
  expected, stderr = 3 * 0.25, 3 * 0.25 * np.sqrt(2 / (3 * (draws - 1)))
  np.testing.assert_array_less(np.abs(result.gradient_variances - expected), 4 * stderr)
  assert (
    klax.fit(loss, jnp.ones(3), optax.sgd(0.1), jax.random.key(0), 40).gradient_variances is None
  )


def test_gradient_variance_trace_vanishes_for_sticking_the_landing_at_the_posterior():
  posterior = jnp.array(1.5), jnp.log(0.5)  # Target N(1.5, 0.5²): q = N(1.5, 0.5²) is exact.
  log_target = lambda x: norm.logpdf(x, 1.5, 0.5)  # noqa: E731
  start = {"loc": posterior[0], "log_scale": posterior[1]}
  for gradient, vanishes in (("stl", True), ("reparam", False)):
    loss = klax.reverse_kl_loss(families.normal(), log_target, 8, gradient)
    result = klax.fit(loss, start, optax.sgd(0.0), jax.random.key(1), 4, gradient_variance_draws=64)
    assert (float(result.gradient_variances.max()) < 1e-8) == vanishes, gradient


def test_gradient_variance_trace_in_fit_batch_and_under_jit():
  loss = _noisy_quadratic(1.0)
  starts = jnp.ones((3, 2))
  batch = klax.fit_batch(
    loss, starts, optax.sgd(0.1), jax.random.key(2), 8, trace_every=2, gradient_variance_draws=16
  )
  assert batch.gradient_variances.shape == batch.losses.shape == (3, 4)
  member = klax.fit(
    loss,
    starts[1],
    optax.sgd(0.1),
    jax.random.split(jax.random.key(2), 3)[1],
    8,
    trace_every=2,
    gradient_variance_draws=16,
  )
  np.testing.assert_allclose(batch.gradient_variances[1], member.gradient_variances, rtol=1e-5)
  jitted = jax.jit(
    lambda p, k: klax.fit(loss, p, optax.sgd(0.1), k, 8, trace_every=2, gradient_variance_draws=16)
  )(starts[1], jax.random.split(jax.random.key(2), 3)[1])
  np.testing.assert_allclose(jitted.gradient_variances, member.gradient_variances, rtol=1e-5)


@pytest.mark.parametrize(
  ("draws", "error"), [(1, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_gradient_variance_draws_is_checked(draws, error):
  with pytest.raises(error, match="gradient_variance_draws"):
    klax.fit(
      _noisy_quadratic(1.0),
      jnp.ones(2),
      optax.sgd(0.1),
      jax.random.key(0),
      2,
      gradient_variance_draws=draws,
    )


def test_common_random_numbers_member_equals_fit_with_the_shared_key():
  starts = {"loc": jnp.array([-2.0, 0.5, 4.0]), "log_scale": jnp.zeros(3)}
  optimizer = optax.adam(0.05)
  shared = klax.fit_batch(
    REVERSE, starts, optimizer, jax.random.key(5), 30, common_random_numbers=True
  )
  single = klax.fit(REVERSE, jax.tree.map(lambda x: x[2], starts), optimizer, jax.random.key(5), 30)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[2], shared), single, rtol=1e-5, atol=1e-6)
  chunked = klax.fit_batch(
    REVERSE, starts, optimizer, jax.random.key(5), 30, chunk_size=2, common_random_numbers=True
  )
  chex.assert_trees_all_close(shared, chunked, rtol=1e-5, atol=1e-6)
  with pytest.raises(TypeError, match="`common_random_numbers` must be a bool"):
    klax.fit_batch(REVERSE, starts, optimizer, jax.random.key(5), 30, common_random_numbers=1)


def test_common_random_numbers_find_the_same_optima():
  """Shared draws change which run lands where, not where the optima are (scipy's basins)."""
  key_loc, key_fit = jax.random.split(jax.random.key(6))
  starts = {
    "loc": jax.random.uniform(key_loc, (96,), minval=-6.0, maxval=6.0),
    "log_scale": jnp.zeros(96),
  }
  optimizer = optax.adam(optax.cosine_decay_schedule(0.05, 1500))
  result = klax.fit_batch(
    REVERSE, starts, optimizer, key_fit, 1500, trace_every=1500, common_random_numbers=True
  )

  def distribution_space(params):
    return jnp.stack([params["loc"], jnp.exp(params["log_scale"])])

  found = klax.basin_report(result, tolerance=0.3, features=distribution_space)
  found = sorted((float(b.params["loc"]), float(jnp.exp(b.params["log_scale"]))) for b in found)
  expected = [(mu, sigma) for mu, sigma, _ in _reverse_kl_basins()]
  assert len(found) == len(expected) == 3
  np.testing.assert_allclose(found, expected, atol=0.08)


def test_same_key_gives_bit_identical_results():
  """fit, fit_batch (whole and chunked, independent and common noise): run twice, same bits."""
  starts = {"loc": jnp.array([-2.0, 0.5, 1.0, 4.0, -5.0]), "log_scale": jnp.zeros(5)}
  optimizer = optax.adam(0.05)
  runs = [
    lambda: klax.fit(REVERSE, {"loc": 0.3, "log_scale": 0.0}, optimizer, jax.random.key(8), 25),
    lambda: klax.fit_batch(REVERSE, starts, optimizer, jax.random.key(8), 25),
    lambda: klax.fit_batch(REVERSE, starts, optimizer, jax.random.key(8), 25, chunk_size=2),
    lambda: klax.fit_batch(
      REVERSE, starts, optimizer, jax.random.key(8), 25, common_random_numbers=True
    ),
  ]
  for run in runs:
    chex.assert_trees_all_equal(run(), run())

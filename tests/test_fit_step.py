"""The public step (fit_init / fit_step), pytree losses and parameters, composed features, progress.

References: a Python loop of `fit_step` written from its contract (key fold_in(key, t) at step
t) against `fit`; sgd's iterates on a quadratic in closed form; the gradient variance on paper.
"""

import sys
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import klax


def noisy(params, key):
  """½‖θ − 1‖² + ½ θ·ε, ε ~ N(0, I): ∇ = θ − 1 + ε/2, tr Cov[∇] = d/4 on paper."""
  theta = params["theta"]
  return 0.5 * jnp.sum((theta - 1.0) ** 2) + 0.5 * jnp.sum(theta * jax.random.normal(key, (3,)))


def barrier(params, key):
  """Finite until θ passes 2: sgd from 0 towards 5 diverges part-way."""
  del key
  x = params["theta"][0]
  return (x - 5.0) ** 2 - 0.01 * jnp.log(2.0 - x)


SGD = optax.sgd(0.1)


@pytest.mark.parametrize(
  ("loss", "optimizer"),
  [(noisy, optax.adam(0.1)), (barrier, SGD), (barrier, optax.lbfgs())],
)
def test_a_user_loop_of_fit_step_is_fit_bit_for_bit(loss, optimizer):
  start, key, steps = {"theta": jnp.zeros(3)}, jax.random.key(3), 12

  @jax.jit
  def user_loop(start):  # What a user writes: fit_init, then fit_step with fold_in(key, t).
    def body(state, t):
      state, info = klax.fit_step(loss, optimizer, state, jax.random.fold_in(key, t))
      return state, info.loss

    state, losses = jax.lax.scan(body, klax.fit_init(start, optimizer), jnp.arange(steps))
    return state, losses

  state, losses = user_loop(start)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # "1 fit(s) stopped at a non-finite loss"
    result = klax.fit(loss, start, optimizer, key, steps)
  chex.assert_trees_all_equal(state.fitted_params, result.params)
  chex.assert_trees_all_equal(losses, result.losses)
  assert int(state.diverged_at) == int(result.diverged_at) and int(state.step) == steps
  # sgd walks into the barrier's NaN region; L-BFGS's line search backs off from it.
  assert (int(result.diverged_at) >= 0) == (loss is barrier and optimizer is SGD)
  # An eager Python loop: each step its own compiled program, which XLA may fuse (and round)
  # differently from the loop body: equal to float32 rounding.
  state, python_losses = klax.fit_init(start, optimizer), []
  for t in range(steps):
    state, info = klax.fit_step(loss, optimizer, state, jax.random.fold_in(key, t))
    python_losses.append(info.loss)
  chex.assert_trees_all_close(state.fitted_params, result.params, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(jnp.stack(python_losses), result.losses, rtol=1e-6, atol=1e-7)
  assert int(state.diverged_at) == int(result.diverged_at)


def test_fit_step_under_jit_vmap_and_grad():
  optimizer = optax.sgd(0.25)
  quadratic = lambda p, key: jnp.sum((p - 3.0) ** 2)  # noqa: E731

  def run(start):  # sgd on ‖θ − 3‖²: θₜ − 3 = 0.5ᵗ (θ₀ − 3).
    state = klax.fit_init(start, optimizer)
    for t in range(4):
      state, _ = klax.fit_step(quadratic, optimizer, state, jax.random.key(t))
    return state.fitted_params

  starts = jnp.array([[0.0, 1.0], [2.0, 5.0]])
  expected = 3 + 0.5**4 * (starts - 3)
  np.testing.assert_allclose(jax.jit(jax.vmap(run))(starts), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda s: jnp.sum(run(s)))(starts[0]), [0.0625] * 2)


def test_a_pytree_loss_with_new_data_does_not_recompile():
  def mean_square(params, key, data):
    del key
    return jnp.mean((params["loc"] - data) ** 2)

  traced = chex.assert_max_traces(mean_square, n=2)  # One fit and one fit_batch program.
  optimizer = optax.sgd(0.5)
  fits = []
  for seed in range(3):
    data = jax.random.normal(jax.random.key(seed), (1000,)) + seed
    loss = jax.tree_util.Partial(traced, data=data)  # A new object each time, same shapes.
    fits.append(klax.fit(loss, {"loc": jnp.array(0.0)}, optimizer, jax.random.key(0), 20))
    batch = klax.fit_batch(loss, {"loc": jnp.zeros(2)}, optimizer, jax.random.key(0), 20)
    # sgd at rate ½ on the mean square: the mean of the data after one step, exactly.
    np.testing.assert_allclose(fits[-1].params["loc"], np.mean(np.asarray(data)), rtol=1e-5)
    np.testing.assert_allclose(batch.params["loc"], [np.mean(np.asarray(data))] * 2, rtol=1e-5)
  assert len({float(f.params["loc"]) for f in fits}) == 3  # The data are arguments, not constants.


def test_non_array_leaves_pass_through_and_are_not_differentiated():
  params = {"w": jnp.array([0.1, -0.2]), "act": jnp.tanh, "name": "layer", "n": jnp.array(3)}

  def loss(p, key):
    del key
    assert p["act"] is jnp.tanh and p["name"] == "layer"  # Static at trace time.
    return jnp.sum((p["act"](p["w"]) - 0.5) ** 2) * p["n"]

  optimizer = optax.adam(0.05)
  result = klax.fit(loss, params, optimizer, jax.random.key(0), 50)
  assert result.params["act"] is jnp.tanh and result.params["name"] == "layer"
  assert int(result.params["n"]) == 3 and result.params["n"].dtype == params["n"].dtype
  plain = klax.fit(
    lambda w, key: jnp.sum((jnp.tanh(w) - 0.5) ** 2) * 3,
    params["w"],
    optimizer,
    jax.random.key(0),
    50,
  )
  np.testing.assert_allclose(result.params["w"], plain.params, rtol=1e-6)
  members = {
    **params,
    "w": jnp.stack([params["w"]] * 2),
    "n": jnp.array([3, 3]),
  }  # Arrays: batched.
  batch = klax.fit_batch(loss, members, optimizer, jax.random.key(0), 50)
  assert batch.params["act"] is jnp.tanh and batch.params["n"].tolist() == [3, 3]
  np.testing.assert_allclose(batch.params["w"], jnp.stack([plain.params] * 2), rtol=1e-6)
  state, info = klax.fit_step(loss, optimizer, klax.fit_init(params, optimizer), jax.random.key(0))
  assert state.params["name"] == "layer" and info.grads["act"] is None


def test_a_rule_composes_with_gradient_variances_and_groups_with_no_rule():
  start, key = {"theta": jnp.zeros(3)}, jax.random.key(1)
  plain = klax.fit(
    noisy, start, optax.sgd(0.1), key, 40, trace_every=4, gradient_variance_draws=400
  )
  # tolerance 0: never met on a noisy loss, so the while loop runs the same 40 steps.
  ruled = klax.fit(
    noisy, start, optax.sgd(0.1), key, 40, trace_every=4, gradient_variance_draws=400, tolerance=0.0
  )
  assert int(ruled.converged_at) == -1
  chex.assert_trees_all_close(ruled, plain, rtol=1e-5, atol=1e-6)
  expected = 0.75  # d/4 with d = 3; sample variance over 400 draws: relative s.e. √(2 / (3·399)).
  np.testing.assert_array_less(np.abs(ruled.gradient_variances - expected), 4 * expected * 0.0409)
  starts = {"theta": jnp.linspace(-1.0, 1.0, 15).reshape(5, 3)}
  whole = klax.fit_batch(noisy, starts, optax.adam(0.1), key, 20)
  grouped = klax.fit_batch(noisy, starts, optax.adam(0.1), key, 20, group_size=2)  # Padded.
  chex.assert_trees_all_close(grouped, whole, rtol=1e-6, atol=1e-6)


def test_progress_moves_inside_jit_and_without_tqdm(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "tqdm", None)  # A core install: no tqdm.
  monkeypatch.setitem(sys.modules, "tqdm.auto", None)
  quadratic = lambda p, key: jnp.sum((p - 3.0) ** 2)  # noqa: E731
  run = jax.jit(
    lambda p: klax.fit(quadratic, p, optax.sgd(0.1), jax.random.key(0), 200, progress=True).params
  )
  for start in (jnp.zeros(2), jnp.ones(2)):  # The compiled program's display opens again.
    run(start).block_until_ready()
    jax.effects_barrier()
    err = capsys.readouterr().err
    assert "fit: 200/200 steps" in err and "fit: 2/200 steps" in err, err
  klax.fit(
    quadratic,
    jnp.zeros(2),
    optax.lbfgs(),
    jax.random.key(0),
    100,
    gradient_tolerance=1e-4,
    progress=True,
  )
  err = capsys.readouterr().err
  assert "fit: 1/100" in err and "fit: 100/100 steps" in err, err  # A rule's fit reports each step.

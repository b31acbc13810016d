"""klax.fit on an equinox model (a pytree with non-array leaves: activations, sizes), against
equinox's own filtered training loop written from its documentation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import klax

eqx = pytest.importorskip("equinox")


def test_fit_trains_an_equinox_mlp_as_equinox_s_own_loop_does():
  model = eqx.nn.MLP(1, 1, width_size=8, depth=1, activation=jnp.tanh, key=jax.random.key(0))
  x = jnp.linspace(-2.0, 2.0, 64)[:, None]
  y = jnp.sin(x)

  def loss(m, key):
    del key
    return jnp.mean((jax.vmap(m)(x) - y) ** 2)

  optimizer, steps = optax.adam(1e-2), 100
  result = klax.fit(loss, model, optimizer, jax.random.key(0), steps)

  @eqx.filter_jit
  def step(m, opt_state):  # equinox's training step: gradients over the inexact arrays only.
    grads = eqx.filter_grad(loss)(m, None)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(m, eqx.is_inexact_array))
    return eqx.apply_updates(m, updates), opt_state

  expected, opt_state = model, optimizer.init(eqx.filter(model, eqx.is_inexact_array))
  for _ in range(steps):
    expected, opt_state = step(expected, opt_state)
  assert result.params.activation is jnp.tanh and result.params.width_size == 8
  arrays = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))  # noqa: E731
  for got, want in zip(arrays(result.params), arrays(expected), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert float(result.losses[-1]) < 0.5 * float(result.losses[0])  # It trained.

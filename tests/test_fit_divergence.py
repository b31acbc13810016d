"""What a diverged fit returns, against a plain loop that follows FitResult's definition.

The class: a loss that becomes NaN part-way while its gradient stays finite, with every
recording interval. The reference is a float32 numpy loop written from the documented rule
alone: the loss is checked on recording steps, gradients and updates on every step, and a fit
that fails returns the parameters of its last checked, successful step.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import klax

NUM_STEPS, MEMBERS, LEARNING_RATE = 40, 16, np.float32(0.1)


def loss(params, key):
  # A barrier whose logarithm is NaN past `wall`; the pull towards 3 drives p through it.
  p, wall = params["p"], jax.lax.stop_gradient(params["wall"])
  return (p - 3.0) ** 2 - 0.01 * jnp.log(wall - p)


def _reference(p, wall, trace_every):
  fallback = p
  with np.errstate(invalid="ignore", divide="ignore"):
    for t in range(NUM_STEPS):
      value = (p - 3) ** 2 - np.float32(0.01) * np.log(wall - p)
      grad = 2 * (p - 3) + np.float32(0.01) / (wall - p)
      new_p = p - LEARNING_RATE * grad
      records = (t + 1) % trace_every == 0
      ok = np.isfinite(grad) and np.isfinite(new_p) and (np.isfinite(value) or not records)
      if not ok:
        return fallback, t
      if records:
        fallback = p  # Its loss was just checked: finite.
      p = new_p
  return p, -1


@pytest.mark.parametrize("trace_every", [1, 4, 10])
@given(walls=hnp.arrays(np.float32, MEMBERS, elements=st.floats(0.25, 3.5, width=32)))
@settings(max_examples=5)
def test_a_diverged_fit_returns_its_last_checked_parameters(trace_every, walls):
  starts = {"p": jnp.zeros(MEMBERS), "wall": jnp.asarray(walls)}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # "n fit(s) stopped at a non-finite loss"
    result = klax.fit_batch(
      loss, starts, optax.sgd(LEARNING_RATE), jax.random.key(0), NUM_STEPS, trace_every=trace_every
    )
  for i, wall in enumerate(walls):
    expected, diverged_at = _reference(np.float32(0.0), wall, trace_every)
    assert int(result.diverged_at[i]) == diverged_at, (wall, trace_every)
    np.testing.assert_allclose(result.params["p"][i], expected, rtol=1e-5, atol=1e-6)
  # The promise itself: what a fit returns has a finite loss (it started at one).
  assert np.all(np.isfinite(jax.vmap(loss, (0, None))(result.params, None)))

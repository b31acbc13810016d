"""Taylor remainders against mpmath at 40 digits, across the series/direct switch."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from klax import _series

mpmath.mp.dps = 40
U = [-0.9, -0.3, -0.2499, -0.01, -1e-5, 1e-7, 1e-3, 0.2499, 0.25, 0.7, 5.0, 1e6]


def _reference(name, u):
  u = mpmath.mpf(float(np.float32(u)))
  if name == "exp":  # e^{−t} − 1 + t
    return mpmath.exp(-u) - 1 + u
  if name == "log1p":
    return u - mpmath.log1p(u)
  return (1 + u) * mpmath.log1p(u) - u


FUNCTIONS = {
  "exp": lambda u: _series.exp_remainder(u, jnp.expm1(-u)),
  "log1p": _series.log1p_remainder,
  "xlog1p": _series.xlog1p_remainder,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_alternating_remainders_match_mpmath_with_finite_gradients(name):
  for u in U:
    if name == "exp" and u > 50:
      continue  # e^{−t} − 1 + t is t − 1 to float32 there; nothing to test.
    expected = float(_reference(name, u))
    got = float(FUNCTIONS[name](jnp.float32(u)))
    assert got >= 0 and abs(got - expected) <= 1e-6 * expected, (u, got, expected)
    assert np.isfinite(float(jax.grad(FUNCTIONS[name])(jnp.float32(u))))


def test_lgamma_remainder_matches_mpmath_across_its_branches():
  for x in [1e-3, 0.5, 1.0, 5.0, 99.0, 100.0, 1e3, 1e6, 1e10]:
    for r in [-0.9, -0.3, -1e-4, 1e-6, 1e-3, 0.1, 3.0, 100.0]:
      x32, d32 = np.float32(x), np.float32(x * r)
      big_x, big_d = mpmath.mpf(float(x32)), mpmath.mpf(float(d32))
      expected = float(
        mpmath.loggamma(big_x + big_d) - mpmath.loggamma(big_x) - big_d * mpmath.digamma(big_x)
      )
      got = float(_series.lgamma_remainder(jnp.float32(x32), jnp.float32(d32)))
      assert got >= 0 and abs(got - expected) <= 2e-5 * expected, (x, r, got, expected)
      grads = jax.grad(_series.lgamma_remainder, argnums=(0, 1))(jnp.float32(x32), jnp.float32(d32))
      assert all(np.isfinite(float(g)) for g in grads), (x, r, grads)

"""klax's cross-family KL pairs and entropies in float64, against the same float64 references.

Every pair family of `test_pairs.CASES` in one jitted call (the float64 parameters keep their
dtype through the rules), at rtol 1e-9 against scipy's adaptive quadrature (2e-8 for the continuous Bernoulli, whose
moments are TFP's); Poisson entropies on
both sides of the series switch against exact sums.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st
import test_pairs
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions


@pytest.fixture(autouse=True, scope="module")
def enable_x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def test_every_pair_family_in_float64():
  names = sorted(test_pairs.CASES)

  def all_pairs(args):
    out = []
    for name, (args_p, args_q) in zip(names, args, strict=True):
      _, _, build_p, build_q, *_ = test_pairs.CASES[name]
      out.append(klax.kl_divergence(build_p(*args_p), build_q(*args_q)))
    return out

  args = [[[jnp.float64(a) for a in test_pairs.CASES[n][i]] for i in (0, 1)] for n in names]
  got = jax.jit(all_pairs)(args)
  for name, value in zip(names, got, strict=True):
    args_p, args_q, _, _, scipy_p, scipy_q, _ = test_pairs.CASES[name]
    assert value.dtype == jnp.float64, name
    expected = test_pairs._kl_quad(
      scipy_p(*args_p), scipy_q(*args_q), *test_pairs._support(name, args_p)
    )
    # The continuous Bernoulli's moments are TFP's, whose series near λ = ½ hold 1e-8.
    rtol = 2e-8 if "cb" in name else 1e-9
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=1e-10, err_msg=name)


def test_poisson_entropy_float64():
  rate = np.array([1e-3, 0.7, 25.0, 399.0, 401.0, 5e3])
  got = jax.jit(lambda r: klax.entropy(tfd.Poisson(r)))(jnp.float64(rate))
  expected = []
  for lam in rate:
    k = np.arange(max(0, int(lam - 20 * np.sqrt(lam) - 30)), int(lam + 20 * np.sqrt(lam) + 30))
    log_p = st.poisson(lam).logpmf(k)
    expected.append(-np.sum(np.exp(log_p) * log_p))
  np.testing.assert_allclose(got, expected, rtol=1e-10)

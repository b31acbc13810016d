"""Property tests (hypothesis) for every closed-form pair: agreement with Monte Carlo within its
standard error, non-negativity, and zero exactly when p = q."""

import functools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions
KEY = jax.random.key(20261122)
NUM_SAMPLES = 20_000

location = st.floats(-3.0, 3.0)
log_scale = st.floats(-1.5, 1.5)
logit = st.floats(-3.0, 3.0)


def _mvn_tri(loc, scale):  # a 2-D lower-triangular scale from three numbers
  tril = jnp.array([[jnp.exp(scale[0]), 0.0], [scale[1], jnp.exp(scale[2])]])
  return distrax.MultivariateNormalTri(jnp.asarray(loc), tril)


PAIRS = {  # name: (hypothesis strategy for one side's parameters, builder params -> distribution)
  "Normal ‖ Normal": ((location, log_scale), lambda t: distrax.Normal(t[0], jnp.exp(t[1]))),
  "Laplace ‖ Laplace": ((location, log_scale), lambda t: tfd.Laplace(t[0], jnp.exp(t[1]))),
  "Exponential": ((log_scale,), lambda t: tfd.Exponential(jnp.exp(t[0]))),
  "Gamma": ((log_scale, log_scale), lambda t: distrax.Gamma(jnp.exp(t[0]) + 0.5, jnp.exp(t[1]))),
  # Concentrations ≥ 1: with β < 1, float32 sampling returns x = 1.0 itself, where another Beta's
  # density is 0 and the Monte Carlo log ratio is +inf (the closed form is right; MC is not).
  "Beta": (
    (log_scale, log_scale),
    lambda t: distrax.Beta(jnp.exp(t[0]) + 1.0, jnp.exp(t[1]) + 1.0),
  ),
  "Poisson": ((log_scale,), lambda t: tfd.Poisson(rate=jnp.exp(t[0]))),
  "Geometric": ((logit,), lambda t: tfd.Geometric(logits=t[0])),
  "Binomial": ((logit,), lambda t: tfd.Binomial(6.0, logits=t[0])),
  "Categorical": ((logit, logit, logit), lambda t: distrax.Categorical(logits=jnp.stack(t))),
  "Multinomial": ((logit, logit, logit), lambda t: tfd.Multinomial(4.0, logits=jnp.stack(t))),
  "MVN Tri ‖ Tri": (
    (location, location, log_scale, st.floats(-1.0, 1.0), log_scale),
    lambda t: _mvn_tri(t[:2], t[2:]),
  ),
}
MIXED = {  # pairs of different families: (strategy p, builder p, strategy q, builder q)
  "Normal ‖ Laplace": (
    (location, log_scale),
    lambda t: distrax.Normal(t[0], jnp.exp(t[1])),
    (location, log_scale),
    lambda t: distrax.Laplace(t[0], jnp.exp(t[1])),
  ),
  "Laplace ‖ Normal": (
    (location, log_scale),
    lambda t: distrax.Laplace(t[0], jnp.exp(t[1])),
    (location, log_scale),
    lambda t: distrax.Normal(t[0], jnp.exp(t[1])),
  ),
  "low-rank MVN ‖ MVN Tri": (
    (location, location, log_scale, log_scale, st.floats(-1.0, 1.0), st.floats(-1.0, 1.0)),
    lambda t: tfd.MultivariateNormalDiagPlusLowRankCovariance(
      jnp.stack(t[:2]), jnp.exp(jnp.stack(t[2:4])), jnp.stack(t[4:6])[:, None]
    ),
    (location, location, log_scale, st.floats(-1.0, 1.0), log_scale),
    lambda t: _mvn_tri(t[:2], t[2:]),
  ),
}
CASES = {name: (s, b, s, b) for name, (s, b) in PAIRS.items()} | MIXED


@functools.cache
def _compiled(name):
  """(closed form, Monte Carlo value, standard error) of KL(p ‖ q), compiled once per pair."""
  _, build_p, _, build_q = CASES[name]

  @jax.jit
  def evaluate(theta_p, theta_q, key):
    p, q = build_p(theta_p), build_q(theta_q)
    estimate = klax.kl_divergence_mc(p, q, key, NUM_SAMPLES)
    return klax.kl_divergence(p, q), estimate.value, estimate.stderr

  return evaluate


def _parameters(strategies):
  return st.tuples(*strategies).map(lambda t: jnp.asarray(t, jnp.float32))


@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_form_agrees_with_monte_carlo_and_is_non_negative(name):
  strategy_p, _, strategy_q, _ = CASES[name]

  @given(_parameters(strategy_p), _parameters(strategy_q), st.integers(0, 2**31 - 1))
  def check(theta_p, theta_q, seed):
    closed, mc, stderr = _compiled(name)(theta_p, theta_q, jax.random.fold_in(KEY, seed))
    closed, mc, stderr = float(closed), float(mc), float(stderr)
    assert np.isfinite(closed) and closed >= -1e-6  # Never negative beyond rounding.
    # 5 standard errors, plus float32 rounding of 20,000 terms' mean.
    assert abs(closed - mc) <= 5 * stderr + 1e-4 * (1 + abs(closed)), (closed, mc, stderr)

  check()


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_zero_exactly_when_equal(name):
  strategy, _ = PAIRS[name]

  @given(_parameters(strategy), _parameters(strategy))
  def check(theta, other):
    closed, _, _ = _compiled(name)(theta, theta, KEY)
    assert abs(float(closed)) <= 1e-6
    if float(jnp.max(jnp.abs(theta - other))) > 0.1:  # Clearly different parameters.
      different, _, _ = _compiled(name)(theta, other, KEY)
      assert float(different) > 0.0

  check()

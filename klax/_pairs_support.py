"""KL divergences that are +inf because p's support is not inside q's.

KL(p ‖ q) = +inf when p puts mass where q has none: a distribution on the real line against one
on (0, ∞), [0, 1], [s, ∞) or a bounded interval; one on (0, ∞) against [0, 1], [s, ∞) or an
interval (or the continuous Bernoulli's [0, 1]); Beta and the continuous Bernoulli against Pareto; Pareto against Beta or Uniform; Poisson against Bernoulli or
Binomial. The value is +inf (NaN where a parameter of p or q is invalid) with p's and q's
broadcast batch shape and dtype; its gradient is zero. Beta(α, β) ‖ Uniform(a, c) is finite,
log(c − a) − H(Beta), where [0, 1] ⊂ [a, c], and +inf elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from klax import _pair_params as params
from klax import _pairs_continuous

_LINE = params.NORMAL + params.GUMBEL + params.LAPLACE
# (p's types, q's types) whose KL is +inf for every valid parameter.
INFINITE = (
  (
    _LINE,
    params.BETA + params.GAMMA + params.PARETO + params.UNIFORM + params.CONTINUOUS_BERNOULLI,
  ),
  (params.GAMMA, params.BETA + params.PARETO + params.UNIFORM + params.CONTINUOUS_BERNOULLI),
  (params.CONTINUOUS_BERNOULLI, params.PARETO),
  (params.BETA, params.PARETO),
  (params.PARETO, params.BETA + params.UNIFORM),
  (params.POISSON, params.BERNOULLI + params.BINOMIAL),
)


def kl_infinite(p, q, name=None) -> jax.Array:
  """+inf, NaN where p's or q's parameters are invalid, shape broadcast(p's, q's batch shapes)."""
  del name
  *theta_p, valid_p = params.read(p)
  *theta_q, valid_q = params.read(q)
  dtype = jnp.result_type(*theta_p, *theta_q)
  valid = valid_p & valid_q
  shape = jnp.broadcast_shapes(tuple(p.batch_shape), tuple(q.batch_shape), jnp.shape(valid))
  valid = jnp.broadcast_to(valid, shape)
  return jnp.where(valid, jnp.asarray(jnp.inf, dtype), jnp.asarray(jnp.nan, dtype))


def kl_beta_uniform(p, q, name=None) -> jax.Array:
  del name
  a, b, ok_p = params.beta(p)
  low, high, ok_q = params.uniform(q)
  a, b, low, high = jnp.broadcast_arrays(a, b, low, high)
  infinite = (low > 0) | (high < 1)
  value = jnp.log(high - low) - _pairs_continuous.beta_entropy(a, b)
  return _pairs_continuous.finish(ok_p & ok_q, infinite, value)

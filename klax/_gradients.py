"""How noisy Monte Carlo quantities are: stochastic-gradient spread and the tails of sample terms.

The spread of stochastic gradients says how noisy an optimiser step is; the generalized-Pareto
tail shape k̂ of per-sample terms says whether a standard error means anything.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from klax import _checks
from klax._typing import Loss
from klax._typing import Params
from klax._typing import PRNGKey


def gradient_variance(loss: Loss, params: Params, key: PRNGKey, num_draws: int) -> jax.Array:
  """Total variance of a stochastic gradient: tr Cov_k[∇_θ loss(θ, k)] over independent keys.

  Evaluates ∇_θ loss(params, k_j) for `num_draws` independent keys k_j (vmapped) and returns the
  sum over all parameter entries of the sample variance — the quantity that sets how noisy an
  optimiser step is, for comparing gradient estimators (`reverse_kl_loss(..., gradient=...)`)
  or sample sizes, at fixed parameters or along a fit. Jit-able. float16/bfloat16 gradients are
  promoted to float32 before the variance; a non-finite gradient gives a non-finite result.

  Args:
    loss: `loss(params, key) -> scalar`.
    params: the parameters (a pytree).
    key: a `jax.random` key, split into `num_draws` keys.
    num_draws: independent gradient draws (at least 2).

  Returns:
    A scalar (float32 for float16/bfloat16 parameters).

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> loss = lambda params, key: jnp.sum(params * jax.random.normal(key, params.shape))
    >>> round(float(klax.gradient_variance(loss, jnp.ones(2), jax.random.key(0), 50_000)), 1)
    2.0
  """
  if not callable(loss):
    raise TypeError(f"`loss` must be a function `loss(params, key)`, got {type(loss).__name__}.")
  num_draws = _checks.positive_int(num_draws, "num_draws")
  if num_draws < 2:
    raise ValueError(f"`num_draws` must be at least 2 to estimate a variance, got {num_draws}.")
  keys = jax.random.split(_checks.prng_key(key, "key"), num_draws)
  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, keys)
  variances = [
    jnp.sum(jnp.var(_checks.promote_low_precision(g).reshape(num_draws, -1), axis=0, ddof=1))
    for g in jax.tree.leaves(grads)
  ]
  return functools.reduce(jnp.add, variances) if variances else jnp.zeros(())


def generalized_pareto_shape(exceedances: jax.Array) -> jax.Array:
  """Shape k̂ of a generalized Pareto fit to sorted positive exceedances (Zhang & Stephens 2009).

  The profile-likelihood-weighted estimate over a grid of m = 30 + ⌊√n⌋ candidate values of
  θ = −k/σ, followed by the weakly informative prior of Vehtari et al. (k̂ shrunk toward 0.5 by
  the weight of 10 pseudo-observations).
  """
  n = exceedances.shape[0]
  m = 30 + int(np.sqrt(n))
  quartile = exceedances[int(n / 4 + 0.5) - 1]
  quartile = jnp.where(quartile > 0, quartile, jnp.finfo(exceedances.dtype).eps * exceedances[-1])
  grid = 1.0 - jnp.sqrt(m / (jnp.arange(1, m + 1) - 0.5))
  theta = grid / (3.0 * quartile) + 1.0 / exceedances[-1]
  shapes = jnp.mean(jnp.log1p(-theta[:, None] * exceedances), axis=1)
  profile = n * (jnp.log(-theta / shapes) - shapes - 1.0)
  weights = 1.0 / jnp.sum(jnp.exp(profile[None, :] - profile[:, None]), axis=1)
  weights = jnp.where(weights >= 10 * jnp.finfo(weights.dtype).eps, weights, 0.0)
  theta_hat = jnp.sum(theta * weights) / jnp.sum(weights)
  k = jnp.mean(jnp.log1p(-theta_hat * exceedances))
  return (n * k + 10 * 0.5) / (n + 10)


def tail_length(size: int) -> int:
  """M = ⌈min(S/5, 3√S)⌉, the number of largest draws a Pareto tail is fitted to."""
  return int(np.ceil(min(0.2 * size, 3.0 * np.sqrt(size))))


@jax.jit  # One XLA program per shape: eager callers do not dispatch its many operations one by one.
def right_tail_shape(values: jax.Array) -> jax.Array:
  """k̂ of the right tail of finite values [S] (any order); −inf when that tail is flat.

  The M = `tail_length(S)` largest values are fitted above the next largest. Ties (discrete
  terms) are first spread evenly between their value and the next smaller distinct value — the
  continuous extension of a lattice distribution, which keeps its tail — so that a tie is not
  read as a zero exceedance (an infinitely heavy tail) nor a lattice of levels as a light one.
  Only the M + 1 largest values are sorted (`top_k`), not all S.
  """
  size, tail = values.shape[0], tail_length(values.shape[0])
  # Ascending. (The barrier stops XLA on CPU from fusing top_k into the comparisons below, which
  # made it 30x slower.)
  top = jax.lax.optimization_barrier(jax.lax.top_k(values, tail + 1)[0])[::-1]
  lowest = top[0]  # Only its group of ties can extend below the window.
  in_lowest = top == lowest
  local_start = jnp.searchsorted(top, top, side="left")
  local_count = jnp.searchsorted(top, top, side="right") - local_start
  start = jnp.where(in_lowest, jnp.sum(values < lowest), size - tail - 1 + local_start)
  count = jnp.where(in_lowest, jnp.sum(values == lowest), local_count)
  below_lowest = jnp.max(jnp.where(values < lowest, values, -jnp.inf))
  previous = jnp.where(in_lowest, below_lowest, top[jnp.maximum(local_start - 1, 0)])
  previous = jnp.where(jnp.isfinite(previous), previous, top)
  rank = jnp.arange(size - tail - 1, size) - start + 1
  top = previous + (top - previous) * (rank / count)
  cutoff, largest = top[0], top[-1]
  spread = largest - cutoff
  scale = jnp.maximum(jnp.abs(largest), jnp.abs(cutoff))
  flat = ~(spread > 1e3 * jnp.finfo(values.dtype).eps * scale)
  exceedances = (top[1:] - cutoff) / jnp.where(flat, 1.0, spread)
  safe = jnp.where(flat, jnp.linspace(1.0, 2.0, tail), exceedances)
  return jnp.where(flat, -jnp.inf, generalized_pareto_shape(safe))


@jax.jit
def terms_pareto_shape(terms: jax.Array, log_weights: jax.Array | None = None) -> jax.Array:
  """k̂ of the heavier tail of Monte Carlo terms [S, *batch], per batch element.

  max(k̂ of the right tail, k̂ of the left tail) — and of the right tail of the weights
  exp(`log_weights`) when the terms contain such weights (k3's r = q/p: its heavy right tail can
  be hidden among larger terms from the other side, e.g. −log r). NaN for S < 25 or any
  non-finite term.
  """
  size = terms.shape[0]
  if size < 25:
    return jnp.full(terms.shape[1:], jnp.nan, terms.dtype)
  columns = terms.reshape(size, -1).T
  shapes = jax.vmap(lambda t: jnp.maximum(right_tail_shape(t), right_tail_shape(-t)))(columns)
  if log_weights is not None:
    logs = jnp.broadcast_to(log_weights, terms.shape).reshape(size, -1).T
    weights = jnp.exp(logs - jnp.max(logs, axis=1, keepdims=True))
    shapes = jnp.maximum(shapes, jax.vmap(right_tail_shape)(weights))
  shapes = jnp.where(jnp.all(jnp.isfinite(columns), axis=1), shapes, jnp.nan)
  return shapes.reshape(terms.shape[1:])

"""Closed-form entropies that TFP does not implement: Pareto and Poisson.

- Pareto(α, s): H = log(s/α) + 1/α + 1.
- Poisson(λ): H = −Σ_k p_k log p_k = log Z − Σ_k p_k r_k, r_k = log(p_k / p_k₀) = Σ_{j=k₀+1..k}
  (log λ − log j), Z = Σ_k e^(r_k), summed exactly over the window k ∈ [k₀, k₀ + 448),
  k₀ = max(0, ⌊λ − 10√λ⌋ − 4), which holds all but e^(−50) of the mass for λ ≤ 400 (from
  differences of logs only, so no log Γ rounds and nothing cancels); above, the series
  ½ log(2πeλ) − 1/(12λ) − 1/(24λ²) − 19/(360λ³), whose first omitted term is O(λ⁻⁴) < 1e-11.

Invalid parameters give NaN. `entropy_rule(p)` is the rule for `p`'s class, or None.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from klax import _pair_params as params

_WINDOW = 448
_ASYMPTOTIC = 400.0


def pareto_entropy(d) -> jax.Array:
  a, s, valid = params.pareto(d)
  a, s = jnp.broadcast_arrays(a, s)
  return jnp.where(valid, jnp.log(s) - jnp.log(a) + 1 / a + 1, jnp.nan)


def poisson_entropy(d) -> jax.Array:
  rate, log_rate, valid = params.poisson_log_rate(d)
  small = rate <= _ASYMPTOTIC
  lam = jnp.where(small, rate, 1.0)
  log_lam = jnp.where(small, log_rate, 0.0)
  start = jnp.maximum(0.0, jnp.floor(lam - 10 * jnp.sqrt(lam)) - 4)
  # r_k = log(p_k / p_start) = Σ_{j=start+1..k} (log λ − log j): differences only, no log Γ.
  j = start[..., None] + jnp.arange(1, _WINDOW, dtype=lam.dtype)
  steps = log_lam[..., None] - jnp.log(j)
  r = jnp.concatenate([jnp.zeros_like(steps[..., :1]), jnp.cumsum(steps, axis=-1)], axis=-1)
  r = r - jnp.max(r, axis=-1, keepdims=True)
  weights = jnp.exp(r)
  total = jnp.sum(weights, axis=-1)
  exact = jnp.log(total) - jnp.sum(weights * r, axis=-1) / total  # log Z − E[r].
  big = jnp.where(small, _ASYMPTOTIC, rate)
  inverse = 1 / big
  series = 0.5 * (math.log(2 * math.pi * math.e) + jnp.log(big))
  series -= inverse * (1 / 12 + inverse * (1 / 24 + inverse * 19 / 360))
  return jnp.where(valid, jnp.where(small, exact, series), jnp.nan)


def entropy_rule(p):
  """Klax's entropy for `p`'s family where TFP has none, else None."""
  if isinstance(p, params.PARETO):
    return pareto_entropy
  if isinstance(p, params.POISSON):
    return poisson_entropy
  return None

"""KL divergences of Bernoulli and Geometric distributions from their logits, cancellation-free.

Both are sums of remainders B(u) = u − log1p(u) ≥ 0 (`_bernoulli_remainders`), so they keep
their relative accuracy when p ≈ q, and at probabilities near 0 or 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

from klax._series import log1p_remainder

tfd = tfp.distributions


def _bernoulli_remainders(logits_a, logits_b) -> tuple[jax.Array, jax.Array]:
  """(B(r), B(s)) for finite logits: KL(Bern(p₁) ‖ Bern(p₂)) = p₁ B(r) + (1 − p₁) B(s).

  B(u) = u − log1p(u) ≥ 0, r = p₂/p₁ − 1 = (1 − p₂) expm1(δ), s = (1 − p₂)/(1 − p₁) − 1 =
  p₂ expm1(−δ), δ = ℓ₂ − ℓ₁ (the linear terms cancel exactly: p₁ r + (1 − p₁) s = 0), so
  nothing cancels when p ≈ q. 1 + r and 1 + s come from log-sigmoids, accurate as r → −1.
  """
  delta = logits_b - logits_a
  near = jnp.abs(delta) < 1.0
  small, far = jnp.where(near, delta, 0.0), jnp.where(near, 0.0, delta)
  q_success, q_failure = jax.nn.sigmoid(logits_b), jax.nn.sigmoid(-logits_b)
  r = jnp.where(
    near, q_failure * jnp.expm1(small), jnp.exp(far - jax.nn.softplus(logits_b)) - q_failure
  )
  s = jnp.where(
    near, q_success * jnp.expm1(-small), jnp.exp(-far - jax.nn.softplus(-logits_b)) - q_success
  )
  log_sigmoid = jax.nn.log_sigmoid
  one_plus_r = jnp.exp(log_sigmoid(logits_b) - log_sigmoid(logits_a))
  one_plus_s = jnp.exp(log_sigmoid(-logits_b) - log_sigmoid(-logits_a))
  return log1p_remainder(r, one_plus_r), log1p_remainder(s, one_plus_s)


def given_probs(d) -> jax.Array | None:
  """The probabilities `d` was built with (TFP's `probs`, distrax's `_probs`), else None."""
  probs = getattr(d, "_probs", None) if hasattr(d, "_logits") else getattr(d, "probs", None)
  return None if probs is None else jnp.asarray(probs)


def _remainders(logits_a, logits_b, probs_a, probs_b) -> tuple[jax.Array, jax.Array]:
  """`_bernoulli_remainders`, from the probabilities themselves where both were given.

  Then r = (p₂ − p₁)/p₁ and s = (p₁ − p₂)/(1 − p₁) use the exact difference p₂ − p₁: a logit
  computed from p is rounded, and that rounding is of the order of δ when p ≈ q.
  """
  if probs_a is None or probs_b is None:
    return _bernoulli_remainders(logits_a, logits_b)
  probs_a, probs_b = jnp.broadcast_arrays(probs_a, probs_b)
  inside = (probs_a > 0) & (probs_a < 1) & (probs_b > 0) & (probs_b < 1)
  p1, p2 = jnp.where(inside, probs_a, 0.5), jnp.where(inside, probs_b, 0.5)
  difference = p2 - p1
  b_r = log1p_remainder(difference / p1, p2 / p1)
  b_s = log1p_remainder(-difference / (1 - p1), (1 - p2) / (1 - p1))
  return b_r, b_s


def kl_geometric_geometric(a, b, name=None):
  """KL = B(r) + e^{−ℓ₁} B(s) (`_bernoulli_remainders`: the Bernoulli KL over p₁)."""
  del name
  logits_a, logits_b = jnp.broadcast_arrays(a.logits_parameter(), b.logits_parameter())
  valid = (logits_a > -jnp.inf) & (logits_b > -jnp.inf)  # p = 0, and NaN (p outside [0, 1]).
  certain_a, certain_b = logits_a == jnp.inf, logits_b == jnp.inf  # p = 1.
  finite = ~(certain_a | certain_b)
  safe_a, safe_b = jnp.where(finite, logits_a, 0.0), jnp.where(finite, logits_b, 0.0)
  b_r, b_s = _remainders(safe_a, safe_b, given_probs(a), given_probs(b))
  value = b_r + jnp.exp(-safe_a) * b_s
  # p₁ = 1: KL = −log p₂ (0 if p₂ = 1); p₂ = 1 > p₁: +inf.
  edge = jnp.where(certain_a, jax.nn.softplus(-jnp.where(certain_b, 0.0, logits_b)), jnp.inf)
  edge = jnp.where(certain_a & certain_b, 0.0, edge)
  return jnp.where(valid, jnp.where(finite, value, edge), jnp.nan)


def bernoulli_kl(logits_a, logits_b, probs_a=None, probs_b=None) -> jax.Array:
  """KL(Bernoulli(logits_a) ‖ Bernoulli(logits_b)), accurate when p ≈ q; batch shapes broadcast.

  Finite logits: p₁ B(r) + (1 − p₁) B(s) (`_bernoulli_remainders`); infinite ones
  (probabilities 0 or 1) take TFP's form; NaN gives NaN. `probs_a`, `probs_b`: the
  probabilities, where the distributions were built with them (see `_remainders`).
  """
  logits_a, logits_b = jnp.broadcast_arrays(logits_a, logits_b)
  finite = jnp.isfinite(logits_a) & jnp.isfinite(logits_b)
  safe_a, safe_b = jnp.where(finite, logits_a, 0.0), jnp.where(finite, logits_b, 0.0)
  b_r, b_s = _remainders(safe_a, safe_b, probs_a, probs_b)
  accurate = jax.nn.sigmoid(safe_a) * b_r + jax.nn.sigmoid(-safe_a) * b_s
  edge = tfd.kl_divergence(tfd.Bernoulli(logits=logits_a), tfd.Bernoulli(logits=logits_b))
  nan = jnp.isnan(logits_a) | jnp.isnan(logits_b)
  return jnp.where(nan, jnp.nan, jnp.where(finite, accurate, edge))

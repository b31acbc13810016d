"""Closed-form KL divergences between the continuous Bernoulli and other scalar families.

The continuous Bernoulli CB(λ) on [0, 1] has density C(λ) λ^x (1 − λ)^(1−x), so
log q(x) = log q(0) + x logit λ, and TFP's `log_prob(0)` gives log C(λ) + log(1 − λ) without the
cancellation of C near λ = ½. With its mean m, variance v and entropy H (TFP's):

- CB(λ) ‖ Normal(μ, σ) = −H + log(σ√2π) + ½ (v/σ² + ((m − μ)/σ)²);
- CB(λ) ‖ Exponential(r) = −H − log r + r m;
- CB(λ) ‖ Uniform(a, c) = log(c − a) − H where [0, 1] ⊂ [a, c], else +inf;
- Beta(α, β) ‖ CB(λ) = −H(Beta) − log q(0) − α/(α + β) · logit λ;
- Uniform(a, c) ‖ CB(λ) = −log(c − a) − log q(0) − (a + c)/2 · logit λ where [a, c] ⊂ [0, 1],
  else +inf.

Invalid parameters give NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from klax import _pair_params as params
from klax._pairs_continuous import beta_entropy
from klax._pairs_continuous import finish

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _moments(d):
  """(logit λ, mean, variance, entropy, log q(0), valid) of a continuous Bernoulli."""
  logits, valid = params.continuous_bernoulli(d)
  safe = type(d)(logits=logits)
  return logits, safe.mean(), safe.variance(), safe.entropy(), safe.log_prob(0.0), valid


def kl_cb_normal(p, q, name=None) -> jax.Array:
  del name
  _, mean, var, entropy, _, ok_p = _moments(p)
  loc, scale, ok_q = params.location_scale(q)
  mean, var, entropy, loc, scale = jnp.broadcast_arrays(mean, var, entropy, loc, scale)
  z = (mean - loc) / scale
  cross = jnp.log(scale) + _HALF_LOG_2PI + 0.5 * (var / scale**2 + z * z)
  return finish(ok_p & ok_q, False, cross - entropy)


def kl_cb_exponential(p, q, name=None) -> jax.Array:
  del name
  _, mean, _, entropy, _, ok_p = _moments(p)
  concentration, rate, ok_q = params.gamma(q)
  mean, entropy, rate = jnp.broadcast_arrays(mean, entropy, rate)
  return finish(ok_p & ok_q & (concentration == 1), False, rate * mean - jnp.log(rate) - entropy)


def kl_cb_uniform(p, q, name=None) -> jax.Array:
  del name
  _, _, _, entropy, _, ok_p = _moments(p)
  low, high, ok_q = params.uniform(q)
  entropy, low, high = jnp.broadcast_arrays(entropy, low, high)
  return finish(ok_p & ok_q, (low > 0) | (high < 1), jnp.log(high - low) - entropy)


def kl_beta_cb(p, q, name=None) -> jax.Array:
  del name
  a, b, ok_p = params.beta(p)
  logits, _, _, _, log_q0, ok_q = _moments(q)
  a, b, logits, log_q0 = jnp.broadcast_arrays(a, b, logits, log_q0)
  return finish(ok_p & ok_q, False, -beta_entropy(a, b) - log_q0 - a / (a + b) * logits)


def kl_uniform_cb(p, q, name=None) -> jax.Array:
  del name
  low, high, ok_p = params.uniform(p)
  logits, _, _, _, log_q0, ok_q = _moments(q)
  low, high, logits, log_q0 = jnp.broadcast_arrays(low, high, logits, log_q0)
  value = -jnp.log(high - low) - log_q0 - 0.5 * (low + high) * logits
  return finish(ok_p & ok_q, (low < 0) | (high > 1), value)

"""Closed-form entropies that klax computes more accurately than distrax and TFP.

`OVERRIDES` maps a distribution type to klax's form, and `klax.entropy` consults it first:

- Gamma(α, β), Beta(α, β) and Dirichlet(α): the textbook forms (log Γ minus multiples of ψ)
  cancel to about ε · α for large shapes (TFP's Gamma(1e4, 100) gives 1.41406 for 1.41891).
  With Stirling's correction g(z) = log Γ(z) − (z − ½) log z + z − ½ log 2π and
  ψ(z) = log z − 1/(2z) + g′(z), the parts linear in z cancel on paper, which leaves
  E(z) = g(z) − (z − 1) g′(z) − 1/(2z), small for large z:
    H(Gamma(α, β)) = ½ log(2πe) + log(√α / β) + E(α),
    H(Dirichlet(α)) = (K − 1) ½ log(2πe) + ½ Σ log(α_i / α₀) − (K − 1) ½ log α₀ + Σ E(α_i) − E(α₀)
      + (K − 1) (1/(2α₀) − g′(α₀)),   α₀ = Σ α_i (Beta: K = 2).
  g and g′ come from Stirling's series for z ≥ 4 (float32) or 10 (float64), from log Γ and ψ
  below (where nothing large cancels).
- Bernoulli and Categorical: the entropy of their logits (`klax.entropy_logits`): 0 for a
  point mass, exact where p is near 0 or 1, NaN for a NaN logit.

Invalid parameters (a shape, rate or concentration that is not positive and finite, or NaN)
give NaN.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

from klax import _bernoulli_kl
from klax import _discrete
from klax._lgamma_kl import positive
from klax._series import _HALF_LOG_2PI
from klax._series import _direct_g
from klax._series import _large
from klax._series import _stirling_g
from klax._series import ratio

tfd = tfp.distributions
_HALF_LOG_2PI_E = _HALF_LOG_2PI + 0.5


def _small_terms(z) -> tuple[jax.Array, jax.Array]:
  """(E(z), g′(z)): E(z) = g(z) − (z − 1) g′(z) − 1/(2z), for z > 0."""
  big = z >= _large(z)
  z_big, z_small = jnp.where(big, z, 10.0), jnp.where(big, 1.0, z)
  g_big, dg_big = _stirling_g(z_big)
  g_small, psi_minus_log = _direct_g(z_small)
  dg_small = psi_minus_log + 0.5 / z_small
  g, dg = jnp.where(big, g_big, g_small), jnp.where(big, dg_big, dg_small)
  return g - (z - 1) * dg - 0.5 / z, dg


@jax.jit
def gamma_entropy(shape, rate) -> jax.Array:
  """H(Gamma(α, β)) = ½ log(2πe) + log(√α / β) + E(α) (module docstring); NaN if invalid."""
  shape, rate = jnp.broadcast_arrays(shape, rate)
  valid = positive(shape, rate)
  shape, rate = jnp.where(valid, shape, 1.0), jnp.where(valid, rate, 1.0)
  root = jnp.sqrt(shape)
  quotient = ratio(root, rate)
  normal = (quotient > jnp.finfo(quotient.dtype).tiny) & (quotient < jnp.inf)
  log_ratio = jnp.where(
    normal, jnp.log(jnp.where(normal, quotient, 1.0)), jnp.log(root) - jnp.log(rate)
  )
  value = _HALF_LOG_2PI_E + log_ratio + _small_terms(shape)[0]
  return jnp.where(valid, value, jnp.nan)


@jax.jit
def dirichlet_entropy(concentration) -> jax.Array:
  """H(Dirichlet(α)) over the last axis (module docstring); NaN if any α_i is invalid."""
  alpha = jnp.asarray(concentration)
  valid = jnp.all(positive(alpha), axis=-1)
  alpha = jnp.where(valid[..., None], alpha, 1.0)
  k = alpha.shape[-1]
  total = jnp.sum(alpha, axis=-1)
  # One call for the components and the total (appended last): one graph, not two.
  e, dg = _small_terms(jnp.concatenate([alpha, total[..., None]], -1))
  logs = 0.5 * jnp.sum(jnp.log(alpha / total[..., None]), axis=-1) - 0.5 * (k - 1) * jnp.log(total)
  value = (k - 1) * _HALF_LOG_2PI_E + logs + jnp.sum(e[..., :-1], axis=-1) - e[..., -1]
  value = value + (k - 1) * (0.5 / total - dg[..., -1])
  return jnp.where(valid, value, jnp.nan)


def _gamma(d) -> jax.Array:
  rate = d.rate if getattr(d, "rate", None) is not None else jnp.exp(d.log_rate)
  return gamma_entropy(jnp.asarray(d.concentration), jnp.asarray(rate))


def _beta(d) -> jax.Array:
  if isinstance(d, distrax.Beta):
    pair = jnp.asarray(d.alpha), jnp.asarray(d.beta)
  else:
    pair = jnp.asarray(d.concentration1), jnp.asarray(d.concentration0)
  return dirichlet_entropy(jnp.stack(jnp.broadcast_arrays(*pair), axis=-1))


def _dirichlet(d) -> jax.Array:
  return dirichlet_entropy(d.concentration)


def _categorical(d) -> jax.Array:
  logits = d.logits_parameter() if hasattr(d, "logits_parameter") else d.logits
  return _discrete.entropy_logits(logits).astype(logits.dtype)  # The distribution's dtype.


def _bernoulli(d) -> jax.Array:
  logits = d.logits_parameter() if hasattr(d, "logits_parameter") else d.logits
  probs = _bernoulli_kl.given_probs(d)
  if probs is not None:  # log p and log(1 − p) from the probabilities: exact near 0 and 1.
    probs = jnp.asarray(probs)
    both = jnp.stack([jnp.log(probs), jnp.log1p(-probs)], -1)
    both = jnp.where(((probs >= 0) & (probs <= 1))[..., None], both, jnp.nan)
  else:
    both = jnp.stack([jnp.zeros_like(logits), -logits], -1)  # p ∝ (1, e^−ℓ) ∝ (e^ℓ, 1).
  return _discrete.entropy_logits(both).astype(both.dtype)  # The distribution's dtype.


OVERRIDES = {
  distrax.Gamma: _gamma,
  tfd.Gamma: _gamma,
  distrax.Beta: _beta,
  tfd.Beta: _beta,
  distrax.Dirichlet: _dirichlet,
  tfd.Dirichlet: _dirichlet,
  distrax.Categorical: _categorical,
  tfd.Categorical: _categorical,
  distrax.Bernoulli: _bernoulli,
  tfd.Bernoulli: _bernoulli,
}


def override(p):
  """The klax entropy for the type of `p`, which takes precedence over the library's, or None."""
  return OVERRIDES.get(type(p))

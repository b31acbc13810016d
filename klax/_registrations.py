"""Closed-form KL divergences that neither distrax nor TFP registers, registered with TFP.

Importing klax registers them with `tfp.distributions.RegisterKL`, so `tfd.kl_divergence`,
`distrax`'s `Distribution.kl_divergence` and `klax.kl_divergence` all see them:

- Poisson ‖ Poisson: λ_p (e^δ − 1 − δ), δ = log λ_q − log λ_p.
- Exponential ‖ Exponential: e^δ − 1 − δ, δ = log λ_q − log λ_p.
- Geometric ‖ Geometric (failures before the first success): log(p₁/p₂) + (1−p₁)/p₁ · log((1−p₁)/(1−p₂)).
- Binomial ‖ Binomial, Multinomial ‖ Multinomial with the same number of trials n:
  n · KL(Bernoulli) and n · KL(Categorical). Different n: `ValueError` outside `jit`, NaN inside.
- Normal(μ, σ) ‖ Laplace(m, b) = −½ log(2πeσ²) + log(2b) + E|X − m| / b, where
  E|X − m| = σ √(2/π) exp(−δ²/2σ²) + δ erf(δ / σ√2), δ = μ − m.
- Laplace(m, b) ‖ Normal(μ, σ) = −1 − log(2b) + ½ log(2πσ²) + (2b² + (m − μ)²) / 2σ².
  (Both are evaluated in the ratios σ/b and δ/σ, so that scales from 1e-20 to 1e20 neither
  overflow when squared nor cancel in a difference of logs.)
- Every cross pair among multivariate normals that TFP leaves out (its low-rank-update
  covariance family against the others, in both directions), from means and covariances.
"""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

from klax import _checks
from klax import _gaussian

tfd = tfp.distributions


def _register(type_a, type_b, kl_fn) -> None:
  try:
    tfd.RegisterKL(type_a, type_b)(kl_fn)
  except ValueError:  # Already registered (by TFP itself in a newer release, or a reload).
    pass


def _expm1_minus(delta: jax.Array) -> jax.Array:
  """e^δ − 1 − δ ≥ 0, accurate for small δ."""
  return jnp.expm1(delta) - delta


def _kl_poisson_poisson(a, b, name=None):
  del name
  log_rate_a = a.log_rate_parameter()
  return jnp.exp(log_rate_a) * _expm1_minus(b.log_rate_parameter() - log_rate_a)


def _kl_exponential_exponential(a, b, name=None):
  del name
  return _expm1_minus(jnp.log(b.rate / a.rate))  # The log of a ratio: no cancellation.


def _kl_geometric_geometric(a, b, name=None):
  del name
  logits_a, logits_b = a.logits_parameter(), b.logits_parameter()
  # log p = −softplus(−logits), log(1 − p) = −softplus(logits), (1 − p)/p = exp(−logits).
  log_p_ratio = jax.nn.softplus(-logits_b) - jax.nn.softplus(-logits_a)
  finite = logits_a < jnp.inf
  safe_logits_a = jnp.where(finite, logits_a, 0.0)
  failures = jnp.exp(-safe_logits_a) * (jax.nn.softplus(logits_b) - jax.nn.softplus(safe_logits_a))
  return log_p_ratio + jnp.where(finite, failures, 0.0)


def _same_total_count(a, b) -> jax.Array:
  same = a.total_count == b.total_count
  if _checks.is_concrete(same) and not bool(jnp.all(same)):
    raise ValueError(
      f"KL between {type(a).__name__} distributions needs the same `total_count` in p and q, "
      f"got {a.total_count} and {b.total_count}; it has no closed form otherwise."
    )
  return same


def _kl_binomial_binomial(a, b, name=None):
  del name
  same = _same_total_count(a, b)
  per_trial = tfd.kl_divergence(
    tfd.Bernoulli(logits=a.logits_parameter()), tfd.Bernoulli(logits=b.logits_parameter())
  )
  return jnp.where(same, a.total_count * per_trial, jnp.nan)


def _kl_multinomial_multinomial(a, b, name=None):
  del name
  same = _same_total_count(a, b)
  per_trial = tfd.kl_divergence(
    tfd.Categorical(logits=a.logits_parameter()), tfd.Categorical(logits=b.logits_parameter())
  )
  return jnp.where(same, a.total_count * per_trial, jnp.nan)


def _kl_normal_laplace(a, b, name=None):
  del name
  # In ratios r = σ / b and z = δ / σ, so that no scale is squared or cancelled in a log
  # difference (accurate for scales from 1e-20 to 1e20 in float32).
  ratio = a.scale / b.scale
  z = (a.loc - b.loc) / a.scale
  mean_abs_over_scale = ratio * (
    math.sqrt(2 / math.pi) * jnp.exp(-0.5 * z**2) + z * jax.scipy.special.erf(z / math.sqrt(2))
  )
  return -0.5 * math.log(2 * math.pi * math.e) + jnp.log(2 / ratio) + mean_abs_over_scale


def _kl_laplace_normal(a, b, name=None):
  del name
  ratio = a.scale / b.scale  # b / σ
  z = (a.loc - b.loc) / b.scale
  second_moment_over_variance = 2 * ratio**2 + z**2
  return -1.0 + 0.5 * math.log(math.pi / 2) - jnp.log(ratio) + 0.5 * second_moment_over_variance


def _kl_mvn_mvn(a, b, name=None):
  del name
  return _gaussian.kl(
    a.mean(),
    _gaussian.cholesky(a.covariance()),
    b.mean(),
    _gaussian.cholesky(b.covariance()),
  )


_register(tfd.Poisson, tfd.Poisson, _kl_poisson_poisson)
_register(tfd.Exponential, tfd.Exponential, _kl_exponential_exponential)
_register(tfd.Geometric, tfd.Geometric, _kl_geometric_geometric)
_register(tfd.Binomial, tfd.Binomial, _kl_binomial_binomial)
_register(tfd.Multinomial, tfd.Multinomial, _kl_multinomial_multinomial)
for _normal in (distrax.Normal, tfd.Normal):
  for _laplace in (distrax.Laplace, tfd.Laplace):
    _register(_normal, _laplace, _kl_normal_laplace)
    _register(_laplace, _normal, _kl_laplace_normal)

# The base class of tfd.MultivariateNormalDiagPlusLowRankCovariance, which TFP does not export.
_LOW_RANK_MVN = tfd.MultivariateNormalDiagPlusLowRankCovariance.__mro__[1]
for _mvn in (
  _LOW_RANK_MVN,
  tfd.MultivariateNormalLinearOperator,
  distrax.MultivariateNormalFromBijector,
):
  _register(_LOW_RANK_MVN, _mvn, _kl_mvn_mvn)
  _register(_mvn, _LOW_RANK_MVN, _kl_mvn_mvn)

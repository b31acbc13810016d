"""Parameters of the scalar families that klax's cross-family KL pairs read, with validity masks.

Each reader returns the family's parameters as arrays (invalid entries replaced by 1 or a valid
placeholder, so that no branch computes on NaN) and `valid`: True where every parameter is in
its domain. The KL rules return NaN where `valid` is False. Chi2(k) and Exponential(λ) are read
as the Gamma(k/2, 1/2) and Gamma(1, λ) they are.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

tfd = tfp.distributions

NORMAL = (distrax.Normal, tfd.Normal)
GUMBEL = (distrax.Gumbel, tfd.Gumbel)
LAPLACE = (distrax.Laplace, tfd.Laplace)
GAMMA = (distrax.Gamma, tfd.Gamma, tfd.Chi2)  # tfd.Exponential is a tfd.Gamma.
EXPONENTIAL = (tfd.Exponential,)
BETA = (distrax.Beta, tfd.Beta)
UNIFORM = (distrax.Uniform, tfd.Uniform)
PARETO = (tfd.Pareto,)
BERNOULLI = (distrax.Bernoulli, tfd.Bernoulli)
POISSON = (tfd.Poisson,)
BINOMIAL = (tfd.Binomial,)
CONTINUOUS_BERNOULLI = (tfd.ContinuousBernoulli,)


def positive(x) -> jax.Array:
  return (x > 0) & (x < jnp.inf)


def _float(*arrays) -> list[jax.Array]:
  dtype = jnp.result_type(*[jnp.asarray(a) for a in arrays], float)
  return [jnp.asarray(a, dtype) for a in arrays]


def _masked(valid, arrays, fill=1.0) -> tuple[jax.Array, ...]:
  return tuple(jnp.where(valid, a, fill) for a in arrays)


def location_scale(d) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(loc, scale, valid) of a Normal, Gumbel or Laplace: finite loc, positive finite scale."""
  loc, scale = _float(d.loc, d.scale)
  valid = jnp.isfinite(loc) & positive(scale)
  return (*_masked(valid, (loc, scale)), valid)


def gamma(d) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(concentration α, rate β, valid) of a Gamma, Chi2 (k/2, 1/2) or Exponential (1, λ)."""
  if isinstance(d, tfd.Chi2):
    (df,) = _float(d.df)
    concentration, rate = 0.5 * df, jnp.full_like(df, 0.5)
  elif isinstance(d, tfd.Exponential):
    (rate,) = _float(d.rate if d.rate is not None else jnp.exp(d.log_rate))
    concentration = jnp.ones_like(rate)
  else:
    rate = getattr(d, "rate", None)
    rate = jnp.exp(d.log_rate) if rate is None else rate
    concentration, rate = _float(d.concentration, rate)
  valid = positive(concentration) & positive(rate)
  return (*_masked(valid, (concentration, rate)), valid)


def beta(d) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(α, β, valid) of a Beta (density ∝ x^(α−1) (1 − x)^(β−1)), both positive and finite."""
  if isinstance(d, distrax.Beta):
    a, b = _float(d.alpha, d.beta)
  else:
    a, b = _float(d.concentration1, d.concentration0)
  valid = positive(a) & positive(b)
  return (*_masked(valid, (a, b)), valid)


def uniform(d) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(low, high, valid) of a Uniform: finite, low < high (placeholders 0 and 1)."""
  low, high = _float(d.low, d.high)
  valid = jnp.isfinite(low) & jnp.isfinite(high) & (low < high)
  return jnp.where(valid, low, 0.0), jnp.where(valid, high, 1.0), valid


def pareto(d) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(concentration α, scale s, valid) of a Pareto (support [s, ∞)), both positive, finite."""
  a, s = _float(d.concentration, d.scale)
  valid = positive(a) & positive(s)
  return (*_masked(valid, (a, s)), valid)


def bernoulli_probs(d) -> tuple[jax.Array, jax.Array]:
  """(probability of 1, valid) of a Bernoulli: in [0, 1] (placeholder ½)."""
  (probs,) = _float(d.probs if isinstance(d, distrax.Bernoulli) else d.probs_parameter())
  valid = (probs >= 0) & (probs <= 1)
  return jnp.where(valid, probs, 0.5), valid


def poisson_log_rate(d) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(rate λ, log λ, valid) of a Poisson: λ positive and finite."""
  if d.rate is not None:
    (rate,) = _float(d.rate)
    valid = positive(rate)
    rate = jnp.where(valid, rate, 1.0)
    return rate, jnp.log(rate), valid
  (log_rate,) = _float(d.log_rate)
  valid = jnp.isfinite(log_rate)
  log_rate = jnp.where(valid, log_rate, 0.0)
  return jnp.exp(log_rate), log_rate, valid


def binomial(d) -> tuple[jax.Array, jax.Array]:
  """(total count n, valid) of a Binomial: n ≥ 0 finite, probabilities in [0, 1]."""
  count, probs = _float(d.total_count, d.probs_parameter())
  valid = (count >= 0) & (count < jnp.inf) & (probs >= 0) & (probs <= 1)
  return jnp.where(valid, count, 1.0), valid


def continuous_bernoulli(d) -> tuple[jax.Array, jax.Array]:
  """(logit λ, valid) of a ContinuousBernoulli(λ): λ in (0, 1), i.e. a finite logit."""
  (logits,) = _float(d.logits_parameter())
  valid = jnp.isfinite(logits)
  return jnp.where(valid, logits, 0.0), valid


def read(d) -> tuple[jax.Array, ...]:
  """The reader's output (parameters..., valid) for any family read here."""
  for types, reader in (
    (NORMAL + GUMBEL + LAPLACE, location_scale),
    (GAMMA, gamma),
    (BETA, beta),
    (UNIFORM, uniform),
    (PARETO, pareto),
    (BERNOULLI, bernoulli_probs),
    (POISSON, poisson_log_rate),
    (BINOMIAL, binomial),
    (CONTINUOUS_BERNOULLI, continuous_bernoulli),
  ):
    if isinstance(d, types):
      return reader(d)
  raise TypeError(f"no parameter reader for {type(d).__name__}")

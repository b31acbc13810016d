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

`OVERRIDES` holds pairs that distrax/TFP do register but that klax computes more accurately, and
`klax.kl_divergence` consults it first: Categorical and Bernoulli pairs (the cancellation-free
logits form of `klax.kl_divergence_logits`), Tri/Diag multivariate normals (from their scales,
without forming or factorising a covariance), and Beta and Gamma pairs (from remainders
log Γ(x + δ) − log Γ(x) − δψ(x), each ≥ 0 and accurate for small δ, instead of differences of
log Γ and ψ that cancel when p ≈ q).
"""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

from klax import _bernoulli_kl
from klax import _checks
from klax import _discrete
from klax import _gaussian
from klax import _lgamma_kl
from klax._series import exp_remainder
from klax._series import ratio as _ratio

tfd = tfp.distributions


def _register(type_a, type_b, kl_fn) -> None:
  try:
    tfd.RegisterKL(type_a, type_b)(kl_fn)
  except ValueError:  # Already registered (by TFP itself in a newer release, or a reload).
    pass


@jax.custom_jvp
def _log_ratio(x: jax.Array, y: jax.Array) -> jax.Array:
  """log(x / y) for x, y > 0, as log1p((x − y) / y) when x ≈ y (x − y is then exact).

  Where x/y over- or underflows (scales 1e±30 apart in float32), log x − log y. Its derivative
  is dx/x − dy/y (XLA's fused form of the quotient rule is inf at 1e-19).
  """
  close = jnp.abs(x - y) < 0.5 * y
  x_near, y_near = jnp.where(close, x, 1.0), jnp.where(close, y, 1.0)
  x_far, y_far = jnp.where(close, 1.0, x), jnp.where(close, 1.0, y)
  quotient = x_far / y_far
  normal = (quotient > jnp.finfo(quotient.dtype).tiny) & (quotient < jnp.inf)
  far = jnp.where(
    normal, jnp.log(jnp.where(normal, quotient, 1.0)), jnp.log(x_far) - jnp.log(y_far)
  )
  return jnp.where(close, jnp.log1p((x_near - y_near) / y_near), far)


@_log_ratio.defjvp
def _log_ratio_jvp(primals, tangents):
  (x, y), (dx, dy) = primals, tangents
  return _log_ratio(x, y), dx / x - dy / y


def _expm1_minus(delta: jax.Array) -> jax.Array:
  """e^δ − 1 − δ ≥ 0, accurate for small δ (its Taylor series for |δ| < 1/4)."""
  return exp_remainder(-delta, jnp.expm1(delta))


def _nan_unless(valid, value) -> jax.Array:
  return jnp.where(valid, value, jnp.nan)


def _kl_poisson_poisson(a, b, name=None):
  del name
  if a.rate is not None and b.rate is not None:
    rate_a, rate_b = jnp.broadcast_arrays(a.rate, b.rate)
    valid = _lgamma_kl.positive(rate_a, rate_b)
    rate_a, rate_b = jnp.where(valid, rate_a, 1.0), jnp.where(valid, rate_b, 1.0)
    rho = _log_ratio(rate_b, rate_a)
    huge = jnp.abs(rho) > 20.0  # λ_q − λ_p − λ_p ρ, as e^ρ would overflow while λ_p e^ρ does not.
    near = rate_a * _expm1_minus(jnp.where(huge, 0.0, rho))
    return _nan_unless(valid, jnp.where(huge, rate_b - rate_a - rate_a * rho, near))
  log_rate_a, log_rate_b = jnp.broadcast_arrays(a.log_rate_parameter(), b.log_rate_parameter())
  valid = jnp.isfinite(log_rate_a) & jnp.isfinite(log_rate_b)
  log_rate_a, log_rate_b = jnp.where(valid, log_rate_a, 0.0), jnp.where(valid, log_rate_b, 0.0)
  return _nan_unless(valid, jnp.exp(log_rate_a) * _expm1_minus(log_rate_b - log_rate_a))


def _kl_exponential_exponential(a, b, name=None):
  del name
  rate_a, rate_b = jnp.broadcast_arrays(a.rate, b.rate)
  valid = _lgamma_kl.positive(rate_a, rate_b)
  rate_a, rate_b = jnp.where(valid, rate_a, 1.0), jnp.where(valid, rate_b, 1.0)
  return _nan_unless(valid, _expm1_minus(_log_ratio(rate_b, rate_a)))


def _same_total_count(a, b) -> jax.Array:
  same = a.total_count == b.total_count
  if _checks.is_concrete(same) and not bool(jnp.all(same)):
    raise ValueError(
      f"KL between {type(a).__name__} distributions needs the same `total_count` in p and q, "
      f"got {a.total_count} and {b.total_count}; it has no closed form otherwise."
    )
  return same


def _counts(a, b) -> tuple[jax.Array, jax.Array]:
  """(n, same): the number of trials, and where p's and q's agree (n ≥ 0 finite, else NaN)."""
  same = _same_total_count(a, b)
  count = jnp.asarray(a.total_count)
  return jnp.where((count >= 0) & (count < jnp.inf), count, jnp.nan), same


def _kl_binomial_binomial(a, b, name=None):
  del name
  count, same = _counts(a, b)
  per_trial = _bernoulli_kl.bernoulli_kl(
    a.logits_parameter(), b.logits_parameter(), a.probs, b.probs
  )
  return _nan_unless(same, count * per_trial)


def _kl_multinomial_multinomial(a, b, name=None):
  del name
  count, same = _counts(a, b)
  per_trial = _kl_from_logits(a.logits_parameter(), b.logits_parameter(), a, b)
  return _nan_unless(same, count * per_trial)


def _location_scale(a, b) -> tuple[jax.Array, ...]:
  """(valid, loc_a, scale_a, loc_b, scale_b), broadcast; valid: finite locs, positive scales."""
  arrays = jnp.broadcast_arrays(a.loc, a.scale, b.loc, b.scale)
  valid = (
    jnp.isfinite(arrays[0]) & jnp.isfinite(arrays[2]) & _lgamma_kl.positive(arrays[1], arrays[3])
  )
  return (valid, *(jnp.where(valid, x, 1.0) for x in arrays))


def _kl_normal_laplace(a, b, name=None):
  del name
  valid, loc_a, scale_a, loc_b, scale_b = _location_scale(a, b)
  # In ratios r = σ / b and z = δ / σ, so that no scale is squared or cancelled in a log
  # difference (accurate for scales from 1e-20 to 1e20 in float32).
  ratio = _ratio(scale_a, scale_b)
  delta = loc_a - loc_b
  z = _ratio(delta, scale_a)
  # e^{−z²/2} is 0 in float32 beyond |z| = 14; cutting it there keeps its derivative finite.
  tail = jnp.abs(z) > 14.0
  gaussian = jnp.where(tail, 0.0, jnp.exp(-0.5 * jnp.where(tail, 0.0, z) ** 2))
  mean_abs_over_scale = ratio * math.sqrt(2 / math.pi) * gaussian
  mean_abs_over_scale += _ratio(delta, scale_b) * jax.scipy.special.erf(z / math.sqrt(2))
  value = -0.5 * math.log(2 * math.pi * math.e) + math.log(2) - _log_ratio(scale_a, scale_b)
  return _nan_unless(valid, value + mean_abs_over_scale)


def _kl_laplace_normal(a, b, name=None):
  del name
  valid, loc_a, scale_a, loc_b, scale_b = _location_scale(a, b)
  ratio = _ratio(scale_a, scale_b)  # b / σ
  z = _ratio(loc_a - loc_b, scale_b)
  second_moment_over_variance = 2 * ratio**2 + z**2
  value = -1.0 + 0.5 * math.log(math.pi / 2) - _log_ratio(scale_a, scale_b)
  value = value + 0.5 * second_moment_over_variance
  return _nan_unless(valid, value)


def _logits(d) -> jax.Array:
  return d.logits_parameter() if hasattr(d, "logits_parameter") else d.logits


def _kl_from_logits(logits_a, logits_b, a, b) -> jax.Array:
  """`kl_from_logits` over the last axis, batch shapes broadcast; the same number of outcomes."""
  if logits_a.shape[-1] != logits_b.shape[-1]:
    raise ValueError(
      f"KL between {type(a).__name__} p and {type(b).__name__} q needs the same number of "
      f"categories, got {logits_a.shape[-1]} in p and {logits_b.shape[-1]} in q."
    )
  return _discrete.kl_from_logits(*jnp.broadcast_arrays(logits_a, logits_b))


def _kl_categorical_categorical(a, b, name=None):
  del name
  return _kl_from_logits(_logits(a), _logits(b), a, b)


def _kl_bernoulli_bernoulli(a, b, name=None):
  del name
  probs = _bernoulli_kl.given_probs(a), _bernoulli_kl.given_probs(b)
  return _bernoulli_kl.bernoulli_kl(_logits(a), _logits(b), *probs)


_register(tfd.Poisson, tfd.Poisson, _kl_poisson_poisson)
_register(tfd.Exponential, tfd.Exponential, _kl_exponential_exponential)
_register(tfd.Geometric, tfd.Geometric, _bernoulli_kl.kl_geometric_geometric)
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
  _register(_LOW_RANK_MVN, _mvn, _gaussian.kl_mvn_mvn)
  _register(_mvn, _LOW_RANK_MVN, _gaussian.kl_mvn_mvn)


# Pairs that distrax or TFP already register, computed instead by klax's form, which stays
# accurate (and non-negative) when p ≈ q: `klax.kl_divergence` looks here first.
OVERRIDES = {}


def _override(types, rule) -> None:
  """Makes `rule` klax's form for every ordered pair of `types`."""
  for type_a in types:
    for type_b in types:
      OVERRIDES[type_a, type_b] = rule


_override((distrax.Categorical, tfd.Categorical), _kl_categorical_categorical)
_override((distrax.Bernoulli, tfd.Bernoulli), _kl_bernoulli_bernoulli)
_override(
  (
    distrax.MultivariateNormalTri,
    distrax.MultivariateNormalDiag,
    tfd.MultivariateNormalTriL,
    tfd.MultivariateNormalDiag,
  ),
  _gaussian.kl_scaled_mvn,
)
_override((distrax.Beta, tfd.Beta), _lgamma_kl.kl_beta_beta)
_override((distrax.Dirichlet, tfd.Dirichlet), _lgamma_kl.kl_dirichlet_dirichlet)
_override((distrax.Gamma, tfd.Gamma), _lgamma_kl.kl_gamma_gamma)


def override(p, q):
  """The klax form for the pair (p, q) that takes precedence over the registry's, or None."""
  rule = OVERRIDES.get((type(p), type(q)))
  if rule is _gaussian.kl_scaled_mvn and not (
    getattr(p, "is_lower", True) and getattr(q, "is_lower", True)
  ):
    return None  # An upper-triangular scale: the registry's (covariance) form.
  return rule

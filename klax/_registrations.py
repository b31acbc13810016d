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

from klax import _checks
from klax import _discrete
from klax import _gaussian
from klax._series import exp_remainder
from klax._series import lgamma_remainder

tfd = tfp.distributions


def _register(type_a, type_b, kl_fn) -> None:
  try:
    tfd.RegisterKL(type_a, type_b)(kl_fn)
  except ValueError:  # Already registered (by TFP itself in a newer release, or a reload).
    pass


@jax.custom_jvp
def _ratio(x: jax.Array, y: jax.Array) -> jax.Array:
  """The quotient x / y, with a derivative that never forms y².

  The derivative (dx − (x/y) dy) / y stays finite where jax's rule for division, which forms y²,
  overflows or underflows float32 (|y| beyond about 1e±19).
  """
  return x / y


@_ratio.defjvp
def _ratio_jvp(primals, tangents):
  x, y = primals
  dx, dy = tangents
  ratio = x / y
  return ratio, (dx - ratio * dy) / y


def _log_ratio(x: jax.Array, y: jax.Array) -> jax.Array:
  """log(x / y) for x, y > 0, as log1p((x − y) / y) when x ≈ y (x − y is then exact)."""
  close = jnp.abs(x - y) < 0.5 * y
  relative_change = jnp.where(close, _ratio(x - y, y), 0.0)  # Finite gradients either way.
  return jnp.where(close, jnp.log1p(relative_change), jnp.log(_ratio(x, y)))


def _expm1_minus(delta: jax.Array) -> jax.Array:
  """e^δ − 1 − δ ≥ 0, accurate for small δ (its Taylor series for |δ| < 1/4)."""
  return exp_remainder(-delta, jnp.expm1(delta))


def _kl_beta_beta(a, b, name=None):
  """KL = R(α₁, α₂ − α₁) + R(β₁, β₂ − β₁) − R(α₁ + β₁, α₂ + β₂ − α₁ − β₁), R = `lgamma_remainder`.

  The textbook form log B(α₂, β₂) − log B(α₁, β₁) + (α₁ − α₂)ψ(α₁) + … is a sum of O(1) terms
  that cancel to O(δ²) when the two are close (float32 gives −1e-6 where the KL is 1e-12).
  """
  del name
  alpha_a, beta_a, alpha_b, beta_b = _beta_concentrations(a) + _beta_concentrations(b)
  delta_alpha, delta_beta = alpha_b - alpha_a, beta_b - beta_a  # Exact when close (Sterbenz).
  return (
    lgamma_remainder(alpha_a, delta_alpha)
    + lgamma_remainder(beta_a, delta_beta)
    - lgamma_remainder(alpha_a + beta_a, delta_alpha + delta_beta)
  )


def _beta_concentrations(d) -> tuple[jax.Array, jax.Array]:
  if isinstance(d, distrax.Beta):
    return jnp.asarray(d.alpha), jnp.asarray(d.beta)
  return jnp.asarray(d.concentration1), jnp.asarray(d.concentration0)


def _kl_gamma_gamma(a, b, name=None):
  """KL = R(α₁, α₂ − α₁) + α₁ (e^ρ − 1 − ρ) − (α₂ − α₁) ρ, ρ = log(rate₂ / rate₁).

  (Shape α, rate; R = `lgamma_remainder`.) The same quantity as TFP's form, without its
  cancellation between O(1) terms when the two are close.
  """
  del name
  (shape_a, rate_a), (shape_b, rate_b) = _gamma_parameters(a), _gamma_parameters(b)
  rho = _log_ratio(rate_b, rate_a)
  delta = shape_b - shape_a
  return lgamma_remainder(shape_a, delta) + shape_a * _expm1_minus(rho) - delta * rho


def _gamma_parameters(d) -> tuple[jax.Array, jax.Array]:
  rate = d.rate if getattr(d, "rate", None) is not None else jnp.exp(d.log_rate)
  return jnp.asarray(d.concentration), jnp.asarray(rate)


def _kl_poisson_poisson(a, b, name=None):
  del name
  if a.rate is not None and b.rate is not None:
    return a.rate * _expm1_minus(_log_ratio(b.rate, a.rate))
  log_rate_a = a.log_rate_parameter()
  return jnp.exp(log_rate_a) * _expm1_minus(b.log_rate_parameter() - log_rate_a)


def _kl_exponential_exponential(a, b, name=None):
  del name
  return _expm1_minus(_log_ratio(b.rate, a.rate))


def _kl_geometric_geometric(a, b, name=None):
  del name
  logits_a, logits_b = a.logits_parameter(), b.logits_parameter()
  # log p = −softplus(−logits), log(1 − p) = −softplus(logits), (1 − p)/p = exp(−logits).
  log_p_ratio = jax.nn.softplus(-logits_b) - jax.nn.softplus(-logits_a)
  finite = logits_a < jnp.inf
  safe_logits_a = jnp.where(finite, logits_a, 0.0)
  failures = jnp.exp(-safe_logits_a) * (jax.nn.softplus(logits_b) - jax.nn.softplus(safe_logits_a))
  plain = log_p_ratio + jnp.where(finite, failures, 0.0)
  # Near p = q the two terms cancel to first order in δ = logits_b − logits_a; in the form
  # log1p((1 − p) expm1(−δ)) + e^{−a} log1p(p expm1(δ)) they cancel only to ulps of δ.
  delta = logits_b - safe_logits_a
  near = finite & (jnp.abs(delta) < 1.0)
  delta = jnp.where(near, delta, 0.0)
  p = jax.nn.sigmoid(safe_logits_a)
  accurate = jnp.log1p((1 - p) * jnp.expm1(-delta))
  accurate += jnp.exp(-safe_logits_a) * jnp.log1p(p * jnp.expm1(delta))
  return jnp.where(near, accurate, plain)


def _same_total_count(a, b) -> jax.Array:
  same = a.total_count == b.total_count
  if _checks.is_concrete(same) and not bool(jnp.all(same)):
    raise ValueError(
      f"KL between {type(a).__name__} distributions needs the same `total_count` in p and q, "
      f"got {a.total_count} and {b.total_count}; it has no closed form otherwise."
    )
  return same


def _bernoulli_kl(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
  """KL(Bernoulli(logits_a) ‖ Bernoulli(logits_b)), accurate when p ≈ q.

  A Bernoulli with logits ℓ is the categorical with logits (0, ℓ), so finite logits take
  `kl_from_logits`; infinite ones (probabilities 0 or 1) take TFP's form.
  """
  finite = jnp.isfinite(logits_a) & jnp.isfinite(logits_b)

  def two_class(logits):
    return jnp.stack([jnp.zeros_like(logits), jnp.where(finite, logits, 0.0)], axis=-1)

  accurate = _discrete.kl_from_logits(two_class(logits_a), two_class(logits_b))
  edge = tfd.kl_divergence(tfd.Bernoulli(logits=logits_a), tfd.Bernoulli(logits=logits_b))
  return jnp.where(finite, accurate, edge)


def _kl_binomial_binomial(a, b, name=None):
  del name
  same = _same_total_count(a, b)
  per_trial = _bernoulli_kl(a.logits_parameter(), b.logits_parameter())
  return jnp.where(same, a.total_count * per_trial, jnp.nan)


def _kl_multinomial_multinomial(a, b, name=None):
  del name
  same = _same_total_count(a, b)
  per_trial = _discrete.kl_from_logits(a.logits_parameter(), b.logits_parameter())
  return jnp.where(same, a.total_count * per_trial, jnp.nan)


def _kl_normal_laplace(a, b, name=None):
  del name
  # In ratios r = σ / b and z = δ / σ, so that no scale is squared or cancelled in a log
  # difference (accurate for scales from 1e-20 to 1e20 in float32).
  ratio = _ratio(a.scale, b.scale)
  delta = a.loc - b.loc
  z = _ratio(delta, a.scale)
  # e^{−z²/2} is 0 in float32 beyond |z| = 14; cutting it there keeps its derivative finite.
  tail = jnp.abs(z) > 14.0
  gaussian = jnp.where(tail, 0.0, jnp.exp(-0.5 * jnp.where(tail, 0.0, z) ** 2))
  mean_abs_over_scale = ratio * math.sqrt(2 / math.pi) * gaussian
  mean_abs_over_scale += _ratio(delta, b.scale) * jax.scipy.special.erf(z / math.sqrt(2))
  return -0.5 * math.log(2 * math.pi * math.e) + math.log(2) - jnp.log(ratio) + mean_abs_over_scale


def _kl_laplace_normal(a, b, name=None):
  del name
  ratio = _ratio(a.scale, b.scale)  # b / σ
  z = _ratio(a.loc - b.loc, b.scale)
  second_moment_over_variance = 2 * ratio**2 + z**2
  return -1.0 + 0.5 * math.log(math.pi / 2) - jnp.log(ratio) + 0.5 * second_moment_over_variance


def _logits(d) -> jax.Array:
  return d.logits_parameter() if hasattr(d, "logits_parameter") else d.logits


def _kl_categorical_categorical(a, b, name=None):
  del name
  return _discrete.kl_from_logits(_logits(a), _logits(b))


def _kl_bernoulli_bernoulli(a, b, name=None):
  del name
  return _bernoulli_kl(_logits(a), _logits(b))


def _lower_scale(d) -> jax.Array:
  """The lower-triangular scale L (Σ = L Lᵀ) of a (lower) Tri or Diag multivariate normal."""
  if isinstance(d, distrax.MultivariateNormalTri):
    return d.scale_tri
  if isinstance(d, distrax.MultivariateNormalDiag):
    return d.scale_diag[..., None] * jnp.eye(d.event_shape[-1], dtype=d.scale_diag.dtype)
  return d.scale.to_dense()  # TFP's MultivariateNormalTriL and MultivariateNormalDiag.


def _kl_scaled_mvn(a, b, name=None):
  """KL between multivariate normals from their lower-triangular scales.

  No covariance is formed (scales of 1e±20 stay representable in float32) and none is factorised
  again; KL(p ‖ p) is exactly 0.
  """
  del name
  lapack = a.event_shape[-1] >= 8  # One LAPACK solve beats forward substitution from d ≈ 8.
  return _gaussian.kl(a.mean(), _lower_scale(a), b.mean(), _lower_scale(b), lapack=lapack)


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
  _kl_scaled_mvn,
)
_override((distrax.Beta, tfd.Beta), _kl_beta_beta)
_override((distrax.Gamma, tfd.Gamma), _kl_gamma_gamma)


def override(p, q):
  """The klax form for the pair (p, q) that takes precedence over the registry's, or None."""
  rule = OVERRIDES.get((type(p), type(q)))
  if rule is _kl_scaled_mvn and not (getattr(p, "is_lower", True) and getattr(q, "is_lower", True)):
    return None  # An upper-triangular scale: the registry's (covariance) form.
  return rule

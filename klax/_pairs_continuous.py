"""Closed-form KL divergences between different scalar families (PyTorch's cross pairs).

With p's entropy H(p) and q's log-density, KL(p ‖ q) = −H(p) − E_p[log q(X)], where E_p needs
only moments of p that have closed forms: E X, Var X, E log X, E e^(−X/b). Differences of
locations are divided by q's scale before they are squared, and scales enter as ratios, so
scales from 1e-20 to 1e20 neither overflow nor cancel. With γ Euler's constant, ψ the digamma:

- Gamma(α, β) (and Chi2, Exponential) ‖ Normal(μ, σ): −H + log(σ√2π) + ½ (α/(βσ)² + z²),
  z = (α/β − μ)/σ; ‖ Gumbel(m, b): −H + log b + (α/β − m)/b + exp(m/b − α log1p(1/(βb))).
- Beta(α, β) ‖ Normal: −H + log(σ√2π) + ½ (Var/σ² + z²); ‖ Gamma(c, r) (Chi2, Exponential):
  −H − c log r + log Γ(c) − (c − 1)(ψ(α) − ψ(α + β)) + r α/(α + β).
- Gumbel(m, b) ‖ Normal(μ, σ): −(log b + γ + 1) + log(σ√2π) + ½ ((πb/σ)²/6 + z²),
  z = (m + γb − μ)/σ. Normal(μ, σ) ‖ Gumbel(m, b): −½ log 2πe + log(b/σ) + (μ − m)/b +
  exp(½(σ/b)² − (μ − m)/b).
- Uniform(a, c) (width w) ‖ Normal: log(σ√2π/w) + ½ ((w/σ)²/12 + z²); ‖ Gumbel(m, b):
  log(b/w) + ((a + c)/2 − m)/b + (b/w) e^((m − a)/b) (1 − e^(−w/b)); ‖ Gamma, Beta, Pareto from
  E log X = log c − A(−t)/t, t = w/c, A(u) = (1 + u) log1p(u) − u (+inf where a < 0, where
  [a, c] ⊄ [0, 1], where a < Pareto's scale).
- Pareto(α, s) ‖ Gamma (Chi2, Exponential): −H − c log r + log Γ(c) − (c − 1)(log s + 1/α)
  + r α s/(α − 1) (+inf where α ≤ 1); ‖ Normal: from Var X = α s²/((α − 1)²(α − 2)) (+inf where
  α ≤ 2).
- InverseGamma(α₁, β₁) ‖ InverseGamma(α₂, β₂) = KL(Gamma(α₁, β₁) ‖ Gamma(α₂, β₂)) (X ↦ 1/X),
  by klax's cancellation-free Gamma form.
- Bernoulli(p) ‖ Poisson(λ) = p log p + (1 − p) log(1 − p) + λ − p log λ.

Invalid parameters give NaN; the +inf above is exact, with zero gradients.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import special

from klax import _lgamma_kl
from klax import _pair_params as params
from klax._series import xlog1p_remainder

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_EULER = 0.5772156649015329


def finish(valid, infinite, value) -> jax.Array:
  """NaN where not `valid`, +inf where `infinite`, else `value`."""
  return jnp.where(valid, jnp.where(infinite, jnp.inf, value), jnp.nan)


def _gamma_entropy(a, rate):
  return a - jnp.log(rate) + special.gammaln(a) + (1 - a) * special.digamma(a)


def beta_entropy(a, b):
  total = a + b
  return (
    special.betaln(a, b)
    - (a - 1) * special.digamma(a)
    - (b - 1) * special.digamma(b)
    + (total - 2) * special.digamma(total)
  )


def _pareto_entropy(a, s):
  return jnp.log(s) - jnp.log(a) + 1 / a + 1


def _normal_cross(mean, var_over_scale2, loc, scale):
  """−E_p[log Normal(loc, scale)] from p's mean and Var/σ²."""
  z = (mean - loc) / scale
  return jnp.log(scale) + _HALF_LOG_2PI + 0.5 * (var_over_scale2 + z * z)


@jax.custom_jvp
def _xlogx(x):
  """The product x log x for x ≥ 0 (0 at 0), with derivative log x + 1 (−inf at 0, not NaN)."""
  return special.xlogy(x, x)


@_xlogx.defjvp
def _xlogx_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return _xlogx(x), (jnp.log(x) + 1) * dx


def _mean_log_uniform(low, high):
  """E log X for X ~ Uniform(low, high), 0 ≤ low < high, without cancellation as low → high."""
  t = (high - low) / high
  near = t < 0.5
  t_near = jnp.where(near, t, 0.5)
  series = jnp.log(high) - xlog1p_remainder(-t_near, 1 - t_near) / t_near
  low_far = jnp.where(near, 0.0, low)
  high_far = jnp.where(near, 1.0, high)
  direct = (_xlogx(high_far) - _xlogx(low_far)) / (high_far - low_far) - 1
  return jnp.where(near, series, direct)


def kl_gamma_normal(p, q, name=None):
  del name
  a, rate, ok_p = params.gamma(p)
  loc, scale, ok_q = params.location_scale(q)
  a, rate, loc, scale = jnp.broadcast_arrays(a, rate, loc, scale)
  cross = _normal_cross(a / rate, a / (rate * scale) ** 2, loc, scale)
  return finish(ok_p & ok_q, False, cross - _gamma_entropy(a, rate))


def kl_gamma_gumbel(p, q, name=None):
  del name
  a, rate, ok_p = params.gamma(p)
  loc, scale, ok_q = params.location_scale(q)
  a, rate, loc, scale = jnp.broadcast_arrays(a, rate, loc, scale)
  mean_exp = jnp.exp(loc / scale - a * jnp.log1p(1 / (rate * scale)))  # E e^(−(X − m)/b).
  cross = jnp.log(scale) + (a / rate - loc) / scale + mean_exp
  return finish(ok_p & ok_q, False, cross - _gamma_entropy(a, rate))


def kl_beta_normal(p, q, name=None):
  del name
  a, b, ok_p = params.beta(p)
  loc, scale, ok_q = params.location_scale(q)
  a, b, loc, scale = jnp.broadcast_arrays(a, b, loc, scale)
  total = a + b
  mean = a / total
  var = mean * (b / total) / (total + 1)
  return finish(
    ok_p & ok_q, False, _normal_cross(mean, var / scale**2, loc, scale) - beta_entropy(a, b)
  )


def _gamma_cross(c, r, mean, mean_log):
  """−E_p[log Gamma(c, r)] from p's E X and E log X."""
  return -c * jnp.log(r) + special.gammaln(c) - (c - 1) * mean_log + r * mean


def kl_beta_gamma(p, q, name=None):
  del name
  a, b, ok_p = params.beta(p)
  c, r, ok_q = params.gamma(q)
  a, b, c, r = jnp.broadcast_arrays(a, b, c, r)
  mean_log = special.digamma(a) - special.digamma(a + b)
  cross = _gamma_cross(c, r, a / (a + b), mean_log)
  return finish(ok_p & ok_q, False, cross - beta_entropy(a, b))


def kl_gumbel_normal(p, q, name=None):
  del name
  m, b, ok_p = params.location_scale(p)
  loc, scale, ok_q = params.location_scale(q)
  m, b, loc, scale = jnp.broadcast_arrays(m, b, loc, scale)
  ratio = b / scale
  cross = _normal_cross(m + _EULER * b, (math.pi * ratio) ** 2 / 6, loc, scale)
  return finish(ok_p & ok_q, False, cross - jnp.log(b) - _EULER - 1)


def kl_normal_gumbel(p, q, name=None):
  del name
  mu, sigma, ok_p = params.location_scale(p)
  m, b, ok_q = params.location_scale(q)
  mu, sigma, m, b = jnp.broadcast_arrays(mu, sigma, m, b)
  shift = (mu - m) / b
  value = -0.5 * math.log(2 * math.pi * math.e) + jnp.log(b / sigma) + shift
  return finish(ok_p & ok_q, False, value + jnp.exp(0.5 * (sigma / b) ** 2 - shift))


def kl_uniform_normal(p, q, name=None):
  del name
  low, high, ok_p = params.uniform(p)
  loc, scale, ok_q = params.location_scale(q)
  low, high, loc, scale = jnp.broadcast_arrays(low, high, loc, scale)
  width = high - low
  cross = _normal_cross(low + 0.5 * width, (width / scale) ** 2 / 12, loc, scale)
  return finish(ok_p & ok_q, False, cross - jnp.log(width))


def kl_uniform_gumbel(p, q, name=None):
  del name
  low, high, ok_p = params.uniform(p)
  m, b, ok_q = params.location_scale(q)
  low, high, m, b = jnp.broadcast_arrays(low, high, m, b)
  width = high - low
  log_ratio = jnp.log(b) - jnp.log(width)
  mean_exp = jnp.exp(log_ratio + (m - low) / b + jnp.log(-jnp.expm1(-width / b)))
  value = log_ratio + (low + 0.5 * width - m) / b + mean_exp
  return finish(ok_p & ok_q, False, value)


def _uniform_positive(p, q, read_q, inside):
  """(low, high, q's parameters..., valid, infinite) for a Uniform p and a positive q."""
  low, high, ok_p = params.uniform(p)
  *theta, ok_q = read_q(q)
  low, high, *theta = jnp.broadcast_arrays(low, high, *theta)
  infinite = ~inside(low, high, *theta)
  low = jnp.where(infinite, 0.5, low)
  high = jnp.where(infinite, 1.0, high)
  theta = [jnp.where(infinite, 1.0, t) for t in theta]
  return low, high, *theta, ok_p & ok_q, infinite


def kl_uniform_gamma(p, q, name=None):
  del name
  low, high, c, r, valid, infinite = _uniform_positive(
    p, q, params.gamma, lambda low, high, c, r: low >= 0
  )
  cross = _gamma_cross(c, r, 0.5 * (low + high), _mean_log_uniform(low, high))
  return finish(valid, infinite, cross - jnp.log(high - low))


def kl_uniform_beta(p, q, name=None):
  del name
  low, high, a, b, valid, infinite = _uniform_positive(
    p, q, params.beta, lambda low, high, a, b: (low >= 0) & (high <= 1)
  )
  mean_log = _mean_log_uniform(low, high)
  mean_log1m = _mean_log_uniform(1 - high, 1 - low)
  cross = special.betaln(a, b) - (a - 1) * mean_log - (b - 1) * mean_log1m
  return finish(valid, infinite, cross - jnp.log(high - low))


def kl_uniform_pareto(p, q, name=None):
  del name
  low, high, a, s, valid, infinite = _uniform_positive(
    p, q, params.pareto, lambda low, high, a, s: low >= s
  )
  mean_log = _mean_log_uniform(low, high)
  cross = -jnp.log(a) + a * (mean_log - jnp.log(s)) + mean_log
  return finish(valid, infinite, cross - jnp.log(high - low))


def _pareto_moments(p, q, read_q, order):
  a, s, ok_p = params.pareto(p)
  *theta, ok_q = read_q(q)
  a, s, *theta = jnp.broadcast_arrays(a, s, *theta)
  infinite = a <= order
  a = jnp.where(infinite, order + 1.0, a)
  return a, s, *theta, ok_p & ok_q, infinite


def kl_pareto_gamma(p, q, name=None):
  del name
  a, s, c, r, valid, infinite = _pareto_moments(p, q, params.gamma, 1)
  cross = _gamma_cross(c, r, a * s / (a - 1), jnp.log(s) + 1 / a)
  return finish(valid, infinite, cross - _pareto_entropy(a, s))


def kl_pareto_normal(p, q, name=None):
  del name
  a, s, loc, scale, valid, infinite = _pareto_moments(p, q, params.location_scale, 2)
  ratio = s / scale
  var_over_scale2 = a * ratio**2 / ((a - 1) ** 2 * (a - 2))
  cross = _normal_cross(a * s / (a - 1), var_over_scale2, loc, scale)
  return finish(valid, infinite, cross - _pareto_entropy(a, s))


def kl_inverse_gamma(p, q, name=None):
  del name
  return _lgamma_kl.gamma_kl(p.concentration, p.scale, q.concentration, q.scale)


def kl_bernoulli_poisson(p, q, name=None):
  del name
  probs, ok_p = params.bernoulli_probs(p)
  rate, log_rate, ok_q = params.poisson_log_rate(q)
  probs, rate, log_rate = jnp.broadcast_arrays(probs, rate, log_rate)
  negative_entropy = special.xlogy(probs, probs) + special.xlog1py(1 - probs, -probs)
  return finish(ok_p & ok_q, False, negative_entropy + rate - probs * log_rate)


def kl_gamma_gamma(p, q, name=None):
  """Gamma, Chi2 or Exponential p ‖ q, read as Gammas, by klax's cancellation-free Gamma form."""
  del name
  a, rate, ok_p = params.gamma(p)
  c, r, ok_q = params.gamma(q)
  return finish(ok_p & ok_q, False, _lgamma_kl.gamma_kl(a, rate, c, r))

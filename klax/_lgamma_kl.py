"""KL divergences of the Gamma, Beta and Dirichlet families as sums of non-negative remainders.

With A(u) = (1 + u) log1p(u) − u and S = `klax._series.lgamma_excess` (log Γ(y) − log Γ(x) −
(y − x) ψ(x) − x A(y/x − 1) ≥ 0), the textbook forms (differences of log Γ and ψ, which cancel
both when p ≈ q and when a large shape meets a small one) become:

- Gamma(α₁, β₁) ‖ Gamma(α₂, β₂) = λ A(α₂/λ − 1) + S(α₁, α₂), λ = α₁ β₂ / β₁;
- Dirichlet(a) ‖ Dirichlet(b), s = Σ a, t = Σ b: (t/s) Σ_i a_i A(e_i) + Σ_i S(a_i, b_i) − S(s, t),
  e_i = (b_i s)/(a_i t) − 1 = ((b_i − a_i) s − a_i (t − s)) / (a_i t): t times the KL between
  the categorical means b/t and a/s, plus the S terms (Beta is the case of two components).

Differences of parameters are taken directly (exact when close) and ratios from the parameters,
so each term keeps its digits from near-identical pairs to shapes 1e-3 against 1e4. Invalid
parameters (a shape, rate or concentration that is not positive and finite, or NaN) give NaN.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp

from klax._series import lgamma_excess
from klax._series import ratio
from klax._series import xlog1p_remainder


def positive(*arrays) -> jax.Array:
  """True where every array is positive and finite (False for NaN)."""
  valid = True
  for array in arrays:
    valid = valid & (array > 0) & (array < jnp.inf)
  return valid


def _near_ratio_minus_one(delta_a, a, delta_b, b):
  """(a + δa) b / (a (b + δb)) − 1 = (u − w)/(1 + w), u = δa/a, w = δb/b, for small u and w."""
  w = ratio(delta_b, b)  # Derivatives without b², which underflows for rates of 1e-19.
  return (delta_a / a - w) / (1 + w)


def gamma_kl(shape_p, rate_p, shape_q, rate_q) -> jax.Array:
  """KL(Gamma(α₁, β₁) ‖ Gamma(α₂, β₂)) = λ A(α₂/λ − 1) + S(α₁, α₂), λ = α₁ β₂/β₁ (shape, rate).

  NaN unless every parameter is positive and finite.
  """
  shape_p, rate_p, shape_q, rate_q = jnp.broadcast_arrays(shape_p, rate_p, shape_q, rate_q)
  valid = positive(shape_p, rate_p, shape_q, rate_q)
  one = jnp.ones_like(shape_p)
  shape_p, rate_p = jnp.where(valid, shape_p, one), jnp.where(valid, rate_p, one)
  shape_q, rate_q = jnp.where(valid, shape_q, one), jnp.where(valid, rate_q, one)
  delta, delta_rate = shape_q - shape_p, rate_q - rate_p  # Exact when close (Sterbenz).
  near = (jnp.abs(delta) < 0.5 * shape_p) & (jnp.abs(delta_rate) < 0.5 * rate_p)
  v_near = _near_ratio_minus_one(
    jnp.where(near, delta, 0.0), shape_p, jnp.where(near, delta_rate, 0.0), rate_p
  )
  rates = ratio(rate_q, rate_p)
  finite = (rates > jnp.finfo(rates.dtype).tiny) & (rates < jnp.inf)  # Not for rates 1e±30 apart.
  log_ratio = jnp.where(
    finite, jnp.log(jnp.where(finite, rates, 1.0)), jnp.log(rate_q) - jnp.log(rate_p)
  )
  lam = jnp.where(finite, shape_p * rates, jnp.exp(jnp.log(shape_p) + log_ratio))
  log_t = jnp.log(shape_q / shape_p) - log_ratio  # t = α₂/λ.
  first_near = lam * xlog1p_remainder(v_near, 1 + v_near)
  huge = log_t > 20.0  # λ A(t − 1) = α₂ (log t − 1) + λ, as t would overflow.
  moderate = jnp.maximum(jnp.where(huge | near, 0.0, log_t), -60.0)  # A(e^−60 − 1) = 1.
  first_far = jnp.where(
    huge,
    shape_q * (log_t - 1) + lam,
    lam * xlog1p_remainder(jnp.expm1(moderate), jnp.exp(moderate)),
  )
  value = jnp.where(near, first_near, first_far) + lgamma_excess(shape_p, delta, shape_q)
  return jnp.where(valid, value, jnp.nan)


def dirichlet_kl(concentration_p, concentration_q) -> jax.Array:
  """KL(Dirichlet(a) ‖ Dirichlet(b)) over the last axis (see the module docstring).

  Batch axes broadcast. NaN unless every concentration is positive and finite.
  """
  a, b = jnp.broadcast_arrays(concentration_p, concentration_q)
  valid = jnp.all(positive(a, b), axis=-1)
  a = jnp.where(valid[..., None], a, 1.0)
  b = jnp.where(valid[..., None], b, 1.0)
  delta = b - a
  total_p, total_q = jnp.sum(a, axis=-1), jnp.sum(b, axis=-1)
  delta_total = jnp.sum(delta, axis=-1)  # Exact sums of exact differences when close.
  one_plus_e = (b / a) * (total_p / total_q)[..., None]
  # From the exact differences where they are small (the products then cancel little).
  near = (jnp.abs(delta) < 0.5 * a) & (jnp.abs(delta_total) < 0.5 * total_p)[..., None]
  e_near = jnp.where(near, delta, 0.0) * total_p[..., None] - a * delta_total[..., None]
  e = jnp.where(near, e_near / (a * total_q[..., None]), one_plus_e - 1)
  means = (total_q / total_p) * jnp.sum(a * xlog1p_remainder(e, one_plus_e), axis=-1)
  # One call for the components and the totals (appended last): one graph, not two.
  excess = lgamma_excess(
    *(
      jnp.concatenate([x, y[..., None]], -1)
      for x, y in ((a, total_p), (delta, delta_total), (b, total_q))
    )
  )
  excess = jnp.sum(excess[..., :-1], axis=-1) - excess[..., -1]
  return jnp.where(valid, means + excess, jnp.nan)


def kl_beta_beta(a, b, name=None):
  """`klax.dirichlet_kl` of the concentrations (α, β): Beta is its 2-D case."""
  del name
  return dirichlet_kl(_beta_concentrations(a), _beta_concentrations(b))


def _beta_concentrations(d) -> jax.Array:
  if isinstance(d, distrax.Beta):
    pair = jnp.asarray(d.alpha), jnp.asarray(d.beta)
  else:
    pair = jnp.asarray(d.concentration1), jnp.asarray(d.concentration0)
  return jnp.stack(jnp.broadcast_arrays(*pair), axis=-1)


def kl_dirichlet_dirichlet(a, b, name=None):
  """`dirichlet_kl` of the concentrations of two Dirichlet distributions (distrax or TFP)."""
  del name
  return dirichlet_kl(jnp.asarray(a.concentration), jnp.asarray(b.concentration))


def kl_gamma_gamma(a, b, name=None):
  """`gamma_kl` of two Gamma distributions (distrax or TFP; TFP's may carry `log_rate`)."""
  del name
  return gamma_kl(*_gamma_parameters(a), *_gamma_parameters(b))


def _gamma_parameters(d) -> tuple[jax.Array, jax.Array]:
  rate = d.rate if getattr(d, "rate", None) is not None else jnp.exp(d.log_rate)
  return jnp.asarray(d.concentration), jnp.asarray(rate)

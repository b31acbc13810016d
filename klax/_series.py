"""Remainders of Taylor series, f(x + u) minus its terms of order 0 and 1, without cancellation.

They are what is left of a divergence when p ≈ q (KL = O(δ²) out of O(1) terms), so klax's
closed forms and the logits KL are built on them. The alternating ones (e^{−t} − 1 + t,
u − log1p(u), (1 + u) log1p(u) − u) sum Σ_{k≥2} c_k (−u)^k by Horner's rule where |u| < 1/4 and
take the plain formula elsewhere; `lgamma_remainder` combines polygamma and Stirling series. A
series branch only sees the u it is taken for, so gradients stay finite in the other branch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_NEAR = 0.25  # |u| below which the series is summed.


def _alternating_remainder(u, coefficient, last: int, direct) -> jax.Array:
  """u² Σ_{k=2..last} coefficient(k) (−u)^(k−2) where |u| < 1/4, else `direct(u)`."""
  near = jnp.abs(u) < _NEAR
  small = jnp.where(near, u, 0.0)
  series = jnp.zeros_like(small)
  for k in range(last, 1, -1):  # Horner in −u.
    series = coefficient(k) - small * series
  return jnp.where(near, small * small * series, direct(jnp.where(near, 1.0, u)))


def exp_remainder(t, expm1_minus_t) -> jax.Array:
  """e^{−t} − 1 + t = Σ_{k≥2} (−t)^k / k! ≥ 0, given expm1(−t).

  The series to t⁷ (truncation below 1e-8 relative), else t + expm1(−t) (relative error below
  1e-6 there).
  """
  return _alternating_remainder(
    t, lambda k: 1.0 / math.factorial(k), 7, lambda _: t + expm1_minus_t
  )


def log1p_remainder(u) -> jax.Array:
  """The remainder u − log1p(u) = Σ_{k≥2} (−u)^k / k ≥ 0 (u > −1; series to k = 14)."""
  return _alternating_remainder(u, lambda k: 1.0 / k, 14, lambda u: u - jnp.log1p(u))


def xlog1p_remainder(u) -> jax.Array:
  """The remainder (1 + u) log1p(u) − u = Σ_{k≥2} (−u)^k / (k (k − 1)) ≥ 0 (u > −1)."""
  return _alternating_remainder(
    u, lambda k: 1.0 / (k * (k - 1)), 14, lambda u: (1 + u) * jnp.log1p(u) - u
  )


_STIRLING_FROM = 100.0  # x from which `lgamma_remainder` takes Stirling's series.


def lgamma_remainder(x: jax.Array, delta: jax.Array) -> jax.Array:
  """The remainder log Γ(x + δ) − log Γ(x) − δ ψ(x) ≥ 0 (x > 0, x + δ > 0), exact for small δ.

  For x < 1 it first steps to x + 1 (log Γ(x) = log Γ(x + 1) − log x, ψ(x) = ψ(x + 1) − 1/x),
  which adds u − log1p(u), u = δ/x. Then, by the size of x and δ:
  - x ≥ 100: Stirling's series, x A(u) + B(u) / 2 + u² / (12 x (1 + u)) with u = δ/x,
    A(u) = (1 + u) log1p(u) − u, B(u) = u − log1p(u) (truncation below 1e-9 relative);
  - |δ| ≤ x/8: the Taylor series Σ_{k=2..11} ψ^(k−1)(x) δ^k / k! (truncation below 1e-8);
  - else the difference itself (no cancellation to speak of: the remainder is then ≳ x/128).
  """
  shift = x < 1.0
  extra = log1p_remainder(jnp.where(shift, delta / jnp.where(shift, x, 1.0), 0.0))  # 0 if not.
  x = jnp.where(shift, x + 1.0, x)
  large = x >= _STIRLING_FROM
  u = delta / x
  stirling = x * xlog1p_remainder(u) + log1p_remainder(u) / 2 + u * u / (12 * x * (1 + u))
  near = (jnp.abs(delta) <= x / 8) & ~large
  small = jnp.where(near, delta, 0.0)
  moderate = jnp.where(large, 1.0, x)  # The Taylor series and the difference: x < 100 only.
  series, power = jnp.zeros_like(x), small
  for k in range(2, 12):
    power = power * small / k  # δ^k / k!
    series = series + jax.scipy.special.polygamma(k - 1, moderate) * power
  far = jnp.where(near | large, 1.0, delta)
  direct = (
    jax.lax.lgamma(moderate + far) - jax.lax.lgamma(moderate) - far * jax.lax.digamma(moderate)
  )
  return extra + jnp.where(large, stirling, jnp.where(near, series, direct))

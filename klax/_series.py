"""Remainders of Taylor series, f(x + u) minus its terms of order 0 and 1, without cancellation.

They are what is left of a divergence when p ≈ q (KL = O(δ²) out of O(1) terms), so klax's
closed forms and the logits KL are built on them. The alternating ones (e^{−t} − 1 + t,
u − log1p(u), (1 + u) log1p(u) − u) sum Σ_{k≥2} c_k (−u)^k by Horner's rule where |u| < 1/4 and
take the plain formula elsewhere, with as many terms as the dtype needs (truncation below its
epsilon). `lgamma_remainder` splits log Γ into Stirling's leading terms and the Stirling
correction g. A series branch only sees the u it is taken for, so gradients stay finite in the
other branch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_NEAR = 0.25  # |u| below which the series is summed.


def _is_double(x) -> bool:
  return jnp.finfo(jnp.result_type(x)).bits > 32


def _alternating_remainder(u, coefficient, terms: tuple[int, int], direct) -> jax.Array:
  """u² Σ_{k=2..last} coefficient(k) (−u)^(k−2) where |u| < 1/4, else `direct(u)`.

  `terms` is (last for float32 and below, last for float64): (1/4)^(last − 1) c_last / c_2
  below the dtype's epsilon.
  """
  u = jnp.asarray(u)
  last = terms[1] if _is_double(u) else terms[0]
  near = jnp.abs(u) < _NEAR
  small = jnp.where(near, u, 0.0)
  series = jnp.zeros_like(small)
  for k in range(last, 1, -1):  # Horner in −u.
    series = coefficient(k) - small * series
  return jnp.where(near, small * small * series, direct(near))


def exp_remainder(t, expm1_minus_t) -> jax.Array:
  """e^{−t} − 1 + t = Σ_{k≥2} (−t)^k / k! ≥ 0, given expm1(−t).

  The series to t⁸ in float32, t¹³ in float64 (truncation below 1e-9 and 1e-17 relative), else
  t + expm1(−t) (a few ulps there).
  """
  return _alternating_remainder(
    t, lambda k: 1.0 / math.factorial(k), (8, 13), lambda _: t + expm1_minus_t
  )


def _log_one_plus(u, one_plus_u, near):
  """(1 + u, log(1 + u)) where not `near`, from `one_plus_u` when given (accurate as u → −1)."""
  if one_plus_u is None:
    safe = jnp.where(near, 1.0, u)
    return 1 + safe, jnp.log1p(safe)
  safe = jnp.where(near, 1.0, one_plus_u)
  return safe, jnp.log(safe)


def log1p_remainder(u, one_plus_u=None) -> jax.Array:
  """B(u) = u − log1p(u) = Σ_{k≥2} (−u)^k / k ≥ 0 (u > −1; to k = 14, 28 in float64).

  `one_plus_u`, if given, is 1 + u computed without rounding u (a ratio y/x, say): it is used
  where |u| ≥ 1/4, so that B stays accurate as u → −1.
  """

  def direct(near):
    return jnp.where(near, 1.0, u) - _log_one_plus(u, one_plus_u, near)[1]

  return _alternating_remainder(u, lambda k: 1.0 / k, (14, 28), direct)


def xlog1p_remainder(u, one_plus_u=None) -> jax.Array:
  """A(u) = (1 + u) log1p(u) − u = Σ_{k≥2} (−u)^k / (k (k − 1)) ≥ 0 (u > −1; to k = 14, 26).

  `one_plus_u` as for `log1p_remainder`.
  """

  def direct(near):
    t, log_t = _log_one_plus(u, one_plus_u, near)
    if one_plus_u is None:
      return t * log_t - jnp.where(near, 1.0, u)
    return t * log_t - t + 1  # From t alone: the function of y/x, whatever the rounding of δ.

  return _alternating_remainder(u, lambda k: 1.0 / (k * (k - 1)), (14, 26), direct)


# g(z) = log Γ(z) − (z − ½) log z + z − ½ log 2π ~ Σ_n c_n z^−n (Stirling's series, odd n).
_STIRLING = ((1, 1 / 12), (3, -1 / 360), (5, 1 / 1260), (7, -1 / 1680), (9, 1 / 1188))
_STIRLING += ((11, -691 / 360360),)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _large(x) -> int:
  """The z from which Stirling's series gives g to the dtype's precision (error ~ 7e-3/z¹³)."""
  return 10 if _is_double(x) else 4


def _power_bregman(n: int, x, u, y) -> jax.Array:
  """y^−n − x^−n + n δ x^−(n+1) ≥ 0 (y = x + δ = x (1 + u)), the Bregman remainder of z^−n.

  By x^−n times its positive polynomial in u, N(u) / (1 + u)^n, where |u| ≤ 1/2; directly
  elsewhere (where nothing cancels, and x^−n may underflow while (1 + u)^−n overflows).
  """
  near = jnp.abs(u) <= 0.5
  small = jnp.where(near, u, 0.0)
  if n == 1:
    polynomial = jnp.ones_like(small)
  else:
    polynomial = jnp.zeros_like(small)  # N(u) / u² = Σ_{k=2..n+1} C(n, k−1)(k−1)(n+1)/k u^(k−2).
    for k in range(n + 1, 1, -1):
      polynomial = math.comb(n, k - 1) * (k - 1) * (n + 1) / k + small * polynomial
  series = x**-n * small * small * polynomial / (1 + small) ** n
  x_far, y_far = jnp.where(near, 1.0, x), jnp.where(near, 1.0, y)
  direct = y_far**-n - x_far**-n + n * jnp.where(near, 0.0, u) * x_far**-n
  return jnp.where(near, series, direct)


def _stirling_excess(x, delta, y) -> jax.Array:
  """S(x, y) = B(u)/2 + g(y) − g(x) − δ g′(x) for x, y ≥ `_large`, g from Stirling's series."""
  u = delta / x
  bregman = sum(c * _power_bregman(n, x, u, y) for n, c in _stirling_terms(x))
  return log1p_remainder(u, y / x) / 2 + bregman


def _stirling_terms(x):
  """Stirling's series to z^−7 in float32 (error below 2e-7 of g from z = 4), z^−11 in float64."""
  return _STIRLING if _is_double(x) else _STIRLING[:4]


def _stirling_g(z) -> tuple[jax.Array, jax.Array]:
  """(g(z), g′(z)) from Stirling's series (z ≥ `_large`)."""
  terms = _stirling_terms(z)
  return sum(c * z**-n for n, c in terms), sum(-n * c * z ** -(n + 1) for n, c in terms)


def _direct_g(z) -> tuple[jax.Array, jax.Array]:
  """(g(z), ψ(z) − log z) = (log Γ(z) − (z − ½) log z + z − ½ log 2π, g′(z) − 1/(2z))."""
  log_z = jnp.log(z)
  return jax.lax.lgamma(z) - (z - 0.5) * log_z + z - _HALF_LOG_2PI, jax.lax.digamma(z) - log_z


def _straddle_excess(x, delta, y, x_big) -> jax.Array:
  """S(x, y) when one of x, y is below `_large` and the other at least 4 times it.

  g and g′ from Stirling's series at the large argument, from log Γ and ψ at the small one.
  Where x is the small one, δ is large, and S = −½ log(y/x) + g(y) − g(x) − δ (ψ(x) − log x)
  (B(u)/2 = (u − log(y/x))/2 and δ g′(x) = δ (ψ(x) − log x) + u/2 share the term u/2).
  """
  big, small = jnp.where(x_big, x, y), jnp.where(x_big, y, x)
  g_big, dg_big = _stirling_g(big)
  g_small, psi_minus_log = _direct_g(small)
  y_big = g_big - g_small - delta * psi_minus_log - 0.5 * jnp.log(y / x)
  x_big_value = log1p_remainder(delta / x, y / x) / 2 + g_small - g_big - delta * dg_big
  return jnp.where(x_big, x_big_value, y_big)


def _shift_terms(x, delta, y) -> jax.Array:
  """Σ_{k<N} B(δ / (x + k)), N = L: what shifting x and y up by N takes out of R.

  log Γ(z) = log Γ(z + N) − Σ_{k<N} log(z + k) and ψ(x) = ψ(x + N) − Σ_{k<N} 1/(x + k) give
  R(x, y) = R(x + N, y + N) + Σ_{k<N} B(δ / (x + k)): every term non-negative.
  """
  total = 0.0
  for k in range(_large(x)):
    total = total + log1p_remainder(delta / (x + k), (y + k) / (x + k))
  return total


def lgamma_excess(x: jax.Array, delta: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """S = log Γ(y) − log Γ(x) − δ ψ(x) − x A(u) = B(u)/2 + G ≥ 0, y = x + δ, u = δ/x.

  A(u) = (1 + u) log1p(u) − u, B(u) = u − log1p(u), and G = g(y) − g(x) − δ g′(x) ≥ 0 is the
  Bregman remainder of the (convex) Stirling correction g(z) = log Γ(z) − (z − ½) log z + z −
  ½ log 2π. `y`, if given, is x + δ unrounded (δ is then used only where it is small). By the
  sizes of x and y (L = `_large`: 4 in float32, 10 in float64):
  - both ≥ L: G from Stirling's series, term by term non-negative (`_stirling_excess`);
  - one < L, the other ≥ 4L: `_straddle_excess`;
  - else: x and y shifted up by L (`_shift_terms`), then the first case, less x A(u)
    (x < 4L: little to cancel).
  Returns NaN for x ≤ 0 or y ≤ 0.
  """
  y = x + delta if y is None else y
  large = _large(x)
  valid = (x > 0) & (y > 0)
  both = (x >= large) & (y >= large)
  x_big = (x >= 4 * large) & (y < large)
  straddle = x_big | ((y >= 4 * large) & (x < large))
  shifted = valid & ~(both | straddle)

  def pick(where, fill):  # The arguments for one branch: its own where taken, `fill` elsewhere.
    return jnp.where(where, x, fill), jnp.where(where, delta, 0.0), jnp.where(where, y, fill)

  ends = _straddle_excess(*pick(straddle, 2.0 * large)[:2], jnp.where(straddle, y, 1.0), x_big)
  # Both ≥ L: S(x, y) from Stirling's series. Else (shifted): R(x, y) − x A(u) = Σ B_k +
  # R(x + N, y + N) − x A(u), with R(x + N, y + N) = (x + N) A(u′) + S(x + N, y + N).
  x_s, delta_s, y_s = pick(shifted, 1.0)
  up = jnp.where(shifted, float(large), 0.0)
  x_up, delta_up, y_up = pick(both | shifted, large)
  x_up, y_up = x_up + up, y_up + up
  stirling = _stirling_excess(x_up, delta_up, y_up)
  shift = _shift_terms(x_s, delta_s, y_s) - x_s * xlog1p_remainder(delta_s / x_s, y_s / x_s)
  shift = shift + jnp.where(shifted, x_up * xlog1p_remainder(delta_up / x_up, y_up / x_up), 0.0)
  value = jnp.where(straddle, ends, stirling + jnp.where(shifted, shift, 0.0))
  return jnp.where(valid, value, jnp.nan)


def lgamma_remainder(x: jax.Array, delta: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """R = log Γ(x + δ) − log Γ(x) − δ ψ(x) = x A(δ/x) + S ≥ 0 (x > 0, x + δ > 0; else NaN).

  A(u) = (1 + u) log1p(u) − u (`xlog1p_remainder`) and S = `lgamma_excess` are both
  non-negative, so nothing cancels, whatever the sizes of x and x + δ. `y` as in `lgamma_excess`.
  """
  y = x + delta if y is None else y
  return x * xlog1p_remainder(delta / x, y / x) + lgamma_excess(x, delta, y)


@jax.custom_jvp
def ratio(x: jax.Array, y: jax.Array) -> jax.Array:
  """The quotient x / y, with a derivative that never forms y².

  The derivative (dx − (x/y) dy) / y stays finite where jax's rule for division, which forms y²,
  overflows or underflows float32 (|y| beyond about 1e±19).
  """
  return x / y


@ratio.defjvp
def _ratio_jvp(primals, tangents):
  x, y = primals
  dx, dy = tangents
  quotient = x / y
  return quotient, (dx - quotient * dy) / y

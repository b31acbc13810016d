"""KL divergence estimated from samples alone, by k-nearest-neighbour distances."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from klax import _checks

_ELEMENTS_PER_CHUNK = 1 << 22  # Distances held in memory at once: about 16 MB in float32.


def _as_points(x, name: str) -> jax.Array:
  x = _checks.promote_low_precision(_checks.float_array(x, name))
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2:
    raise ValueError(f"`{name}` must have shape [n] or [n, d], got {x.shape}.")
  if x.shape[1] == 0:
    raise ValueError(
      f"`{name}` must have at least one coordinate per point (d >= 1), got {x.shape}."
    )
  return x


def _power_of_two_scale(x: jax.Array, y: jax.Array) -> jax.Array:
  """2^s, exact, that brings M = max |x, y| into [1, 2) when M < 1 or into [2^63, 2^64) when M ≥ 2^64.

  So differences of tiny points are not flushed to zero nor those of huge points overflow.
  """
  largest = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.abs(x)), jnp.max(jnp.abs(y))))
  _, exponent = jnp.frexp(jnp.where(jnp.isfinite(largest) & (largest > 0), largest, 1.0))
  shift = jnp.where(exponent < 1, 1 - exponent, jnp.minimum(64 - exponent, 0))
  return jnp.ldexp(jnp.ones((), x.dtype), shift)


def _kth_distinct_distance(queries: jax.Array, points: jax.Array, k: int) -> jax.Array:
  """Distance from each query to its k-th nearest point at a non-zero distance (inf if none).

  Euclidean norms are taken as a · ‖v / a‖ with a = max_j |v_j|, so they neither underflow nor
  overflow where the squared distance would (1e-20 and 1e20 apart in float32).
  """

  def one_query(query: jax.Array) -> jax.Array:
    diff = points - query
    a = jax.lax.stop_gradient(jnp.max(jnp.abs(diff), axis=-1, keepdims=True))
    distinct = a > 0
    a = jnp.where(distinct, a, 1.0)
    squares = jnp.sum(jnp.square(diff / a), axis=-1, keepdims=True)
    dist = (a * jnp.sqrt(jnp.where(distinct, squares, 1.0)))[:, 0]
    dist = jnp.where(distinct[:, 0], dist, jnp.inf)
    neg_smallest, _ = jax.lax.top_k(-dist, k)
    return -neg_smallest[k - 1]

  batch = max(1, _ELEMENTS_PER_CHUNK // (points.shape[0] * points.shape[1]))
  return jax.lax.map(one_query, queries, batch_size=min(batch, queries.shape[0]))


def kl_divergence_knn(x, y, k: int = 1) -> jax.Array:
  """Estimate of KL(p ‖ q) from samples x ~ p and y ~ q alone (k nearest neighbours).

  The estimator of Wang, Kulkarni & Verdú (2009) (in 1-D, Pérez-Cruz 2008):

      D̂ = (d / n) Σ_i log(ν_k(i) / ρ_k(i)) + log(m / (n − 1)),

  where ρ_k(i) is the distance from x_i to its k-th nearest neighbour among the other x's,
  ν_k(i) the distance from x_i to its k-th nearest neighbour among the y's, n and m the sample
  sizes and d the dimension. It is consistent as n, m → ∞ for fixed k; its bias shrinks with n
  and grows with d.

  Duplicates: points at distance exactly zero from x_i (x_i itself, repeated samples) are skipped,
  so ρ_k and ν_k are distances to the k-th nearest *distinct* point. The estimate is invariant
  to a common scale of x and y: data of any magnitude the dtype holds (1e-30 … 1e30 in float32)
  give the same answer (they are rescaled by a power of two, and norms are formed without
  squaring). Distances are computed by brute force in chunks of query points (memory
  O(chunk · (n + m) · d), not O(n · m)). float16/bfloat16 samples are promoted to float32.

  Bad values give NaN (also under `jit`): any NaN or ±inf in x or y, or an x_i with fewer than
  k points at a non-zero distance among the x's or among the y's (the estimate is then
  undefined).

  Args:
    x: samples of p, shape [n] (1-D) or [n, d] with d >= 1.
    y: samples of q, shape [m] or [m, d].
    k: the neighbour order, 1 <= k < n and k <= m.

  Returns:
    A scalar estimate (it can be slightly negative when p ≈ q).

  Examples:
    >>> import jax, klax
    >>> kx, ky = jax.random.split(jax.random.key(0))
    >>> x = jax.random.normal(kx, (2000,))
    >>> y = 1.0 + jax.random.normal(ky, (2000,))
    >>> abs(float(klax.kl_divergence_knn(x, y, k=5)) - 0.5) < 0.15
    True
  """
  x, y = _as_points(x, "x"), _as_points(y, "y")
  k = _checks.positive_int(k, "k")
  n, d = x.shape
  m = y.shape[0]
  if y.shape[1] != d:
    raise ValueError(f"`x` and `y` must have the same dimension, got {d} and {y.shape[1]}.")
  if k >= n or k > m:
    raise ValueError(f"`k` must satisfy k < n = {n} (len(x)) and k <= m = {m} (len(y)), got {k}.")
  scale = _power_of_two_scale(x, y)
  xs, ys = x * scale, y * scale
  rho = _kth_distinct_distance(xs, xs, k)
  nu = _kth_distinct_distance(xs, ys, k)
  valid = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
  valid = valid & jnp.all(jnp.isfinite(rho)) & jnp.all(jnp.isfinite(nu))
  estimate = d * jnp.mean(jnp.log(nu) - jnp.log(rho)) + math.log(m / (n - 1))
  return jnp.where(valid, estimate, jnp.nan)

"""Gaussian families: univariate, mean-field, full-rank normals and mixtures of normals."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp

from klax import _checks
from klax._family import Family
from klax._family import cached


@cached
def normal(*, loc_scale: float = 1.0, log_scale_range: float = 1.0) -> Family:
  """Univariate normal N(loc, exp(log_scale)²); params `{"loc", "log_scale"}` (scalars).

  q_θ(x) = N(x; loc, σ²) with σ = exp(log_scale).

  `init` draws loc ~ N(0, loc_scale²) and log_scale ~ U(−log_scale_range, log_scale_range).

  Args:
    loc_scale: standard deviation of the initial loc.
    log_scale_range: half-width of the initial log_scale's uniform range.

  Returns:
    A `Family(init, dist)`: `init(key)` draws starting parameters, `dist(params)` builds the
    distrax distribution.

  Examples:
    >>> import jax, klax
    >>> family = klax.families.normal()
    >>> q = family.dist({"loc": 1.0, "log_scale": 0.0})
    >>> float(q.mean()), float(q.stddev())
    (1.0, 1.0)
  """

  def init(key):
    key_loc, key_scale = jax.random.split(key)
    return {
      "loc": loc_scale * jax.random.normal(key_loc),
      "log_scale": jax.random.uniform(key_scale, minval=-log_scale_range, maxval=log_scale_range),
    }

  def dist(params):
    return distrax.Normal(params["loc"], jnp.exp(params["log_scale"]))

  def log_prob(params, x):
    return jax.scipy.stats.norm.logpdf(x, params["loc"], jnp.exp(params["log_scale"]))

  return Family(init, dist, log_prob)


@cached
def diag_normal(d: int, *, loc_scale: float = 1.0) -> Family:
  """Mean-field normal in d dimensions; params `{"loc": [d], "log_scale": [d]}`.

  q_θ(x) = Π_i N(x_i; loc_i, σ_i²) with σ_i = exp(log_scale_i).

  Args:
    d: the dimension.
    loc_scale: standard deviation of the initial loc.

  Returns:
    A `Family(init, dist)`: `init(key)` draws starting parameters, `dist(params)` builds the
    distrax distribution.

  Examples:
    >>> import jax, klax
    >>> family = klax.families.diag_normal(3)
    >>> family.dist(family.init(jax.random.key(0))).event_shape
    (3,)
  """
  d = _checks.positive_int(d, "d")

  def init(key):
    key_loc, key_scale = jax.random.split(key)
    return {
      "loc": loc_scale * jax.random.normal(key_loc, (d,)),
      "log_scale": 0.1 * jax.random.normal(key_scale, (d,)),
    }

  def dist(params):
    return distrax.MultivariateNormalDiag(params["loc"], jnp.exp(params["log_scale"]))

  def log_prob(params, x):
    scale = jnp.exp(params["log_scale"])
    return jnp.sum(jax.scipy.stats.norm.logpdf(x, params["loc"], scale), axis=-1)

  return Family(init, dist, log_prob)


def _positive_diagonal_tril(raw: jax.Array) -> jax.Array:
  """Lower-triangular matrix from `raw`: strict lower part as is, diagonal through softplus."""
  diagonal = jax.nn.softplus(jnp.diagonal(raw, axis1=-2, axis2=-1))
  return jnp.tril(raw, -1) + diagonal[..., None] * jnp.eye(raw.shape[-1], dtype=raw.dtype)


@cached
def full_rank_normal(d: int, *, loc_scale: float = 1.0) -> Family:
  """Full-covariance normal N(loc, L Lᵀ) with L lower triangular, positive diagonal.

  Params `{"loc": [d], "scale_raw": [d, d]}`: L = tril(scale_raw, −1) + diag(softplus(diag)).
  `init` starts near the identity scale (softplus⁻¹(1) on the diagonal, small off-diagonal noise).

  Args:
    d: the dimension.
    loc_scale: standard deviation of the initial loc.

  Returns:
    A `Family(init, dist)`: `init(key)` draws starting parameters, `dist(params)` builds the
    distrax distribution.

  Examples:
    >>> import jax, klax
    >>> family = klax.families.full_rank_normal(2)
    >>> q = family.dist(family.init(jax.random.key(0)))
    >>> q.sample(seed=jax.random.key(1), sample_shape=(5,)).shape
    (5, 2)
  """
  d = _checks.positive_int(d, "d")
  unit = float(jnp.log(jnp.expm1(1.0)))  # softplus⁻¹(1)

  def init(key):
    key_loc, key_scale = jax.random.split(key)
    noise = 0.1 * jax.random.normal(key_scale, (d, d))
    return {
      "loc": loc_scale * jax.random.normal(key_loc, (d,)),
      "scale_raw": jnp.tril(noise, -1) + unit * jnp.eye(d),
    }

  def dist(params):
    return distrax.MultivariateNormalTri(
      params["loc"], _positive_diagonal_tril(params["scale_raw"])
    )

  return Family(init, dist)


@cached
def mixture_of_normals(k: int, d: int | None = None, *, loc_scale: float = 2.0) -> Family:
  """Mixture of k normals: univariate when `d` is None, else with diagonal covariances in d-D.

  q(x) = Σ_k w_k N(x; μ_k, diag σ_k²) with w = softmax(logits), σ_k = exp(log_scale_k).
  Params `{"logits": [k], "loc": [k] or [k, d], "log_scale": [k] or [k, d]}`. Sampling a
  mixture is not reparameterisable in the weights, so klax's reverse-KL, IWAE and Rényi losses
  sample it per component (S draws from each, weighted by w_k / S): unbiased pathwise gradients
  in the weights and the components, for K·S evaluations of the target.

  Args:
    k: the number of components.
    d: the dimension, or None for a univariate mixture.
    loc_scale: standard deviation of the initial component locations.

  Returns:
    A `Family(init, dist)`: `init(key)` draws starting parameters, `dist(params)` builds the
    distrax distribution.

  Examples:
    >>> import jax, klax
    >>> family = klax.families.mixture_of_normals(3)
    >>> q = family.dist(family.init(jax.random.key(0)))
    >>> q.log_prob(0.5).shape
    ()
  """
  k = _checks.positive_int(k, "k")
  shape = (k,) if d is None else (k, _checks.positive_int(d, "d"))

  def init(key):
    key_loc, key_scale = jax.random.split(key)
    return {
      "logits": jnp.zeros((k,)),
      "loc": loc_scale * jax.random.normal(key_loc, shape),
      "log_scale": 0.1 * jax.random.normal(key_scale, shape),
    }

  def dist(params):
    scale = jnp.exp(params["log_scale"])
    if d is None:
      components = distrax.Normal(params["loc"], scale)
    else:
      components = distrax.MultivariateNormalDiag(params["loc"], scale)
    return distrax.MixtureSameFamily(distrax.Categorical(logits=params["logits"]), components)

  return Family(init, dist)

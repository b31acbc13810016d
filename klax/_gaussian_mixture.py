"""Gaussian mixtures as arrays, and the array-level formulas of klax's mixture KL bounds.

A mixture Σ_a π_a N(μ_a, Σ_a) is held as log π [..., K], μ [..., K, d], Σ and its Cholesky factor
[..., K, d, d]. Components of weight 0 contribute nothing to any formula (no 0 · log 0 or
0 · ∞ NaN, in values or gradients). A `Normal` component with scale ≤ 0 is not a distribution
(distrax's log_prob gives NaN there): its variance is NaN, so every formula returns NaN.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from tensorflow_probability.substrates import jax as tfp

from klax import _gaussian

tfd = tfp.distributions

_MIXTURES = (distrax.MixtureSameFamily, tfd.MixtureSameFamily)
_NORMALS = (distrax.Normal, tfd.Normal)
_MULTIVARIATE_NORMALS = (
  distrax.MultivariateNormalFromBijector,
  tfd.MultivariateNormalLinearOperator,
  tfd.MultivariateNormalDiagPlusLowRankCovariance.__mro__[1],
)


class GaussianMixture(NamedTuple):
  log_weights: jax.Array  # [..., K]
  means: jax.Array  # [..., K, d]
  covariances: jax.Array  # [..., K, d, d]
  chols: jax.Array  # [..., K, d, d]


def _gaussian_params(dist, name: str) -> tuple[jax.Array, jax.Array]:
  """Means [..., d] and covariances [..., d, d] of a Normal or multivariate normal."""
  if isinstance(dist, _NORMALS):
    shape = tuple(dist.batch_shape)
    mean = jnp.broadcast_to(dist.mean(), shape)
    scale = jnp.broadcast_to(dist.stddev(), shape)
    variance = jnp.where(scale > 0, jnp.square(scale), jnp.nan)  # scale ≤ 0: not a Normal.
    return mean[..., None], variance[..., None, None]
  if isinstance(dist, _MULTIVARIATE_NORMALS):
    return dist.mean(), dist.covariance()
  raise TypeError(
    f"`{name}` must be a Gaussian mixture (MixtureSameFamily of Normal or multivariate normal "
    f"components) or a single Gaussian, got components of type {type(dist).__name__}. "
    "Use `klax.kl_divergence_mc` for other mixtures."
  )


def _as_mixture(dist, name: str) -> GaussianMixture:
  if isinstance(dist, _MIXTURES):
    mixing = dist.mixture_distribution
    logits = mixing.logits_parameter() if hasattr(mixing, "logits_parameter") else mixing.logits
    log_weights = jax.nn.log_softmax(logits, axis=-1)
    means, covariances = _gaussian_params(dist.components_distribution, name)
  else:
    means, covariances = _gaussian_params(dist, name)
    means, covariances = means[..., None, :], covariances[..., None, :, :]
    log_weights = jnp.zeros(means.shape[:-1], means.dtype)
  return GaussianMixture(log_weights, means, covariances, _gaussian.cholesky(covariances))


def mixtures(p, q) -> tuple[GaussianMixture, GaussianMixture]:
  """The pair (p, q) as `GaussianMixture`s of one dimension, or raises naming the bad one."""
  f, g = _as_mixture(p, "p"), _as_mixture(q, "q")
  if f.means.shape[-1] != g.means.shape[-1]:
    raise ValueError(
      f"`p` and `q` must have the same dimension, got {f.means.shape[-1]} and {g.means.shape[-1]}."
    )
  return f, g


def _pairwise_kl(f: GaussianMixture, g: GaussianMixture) -> jax.Array:
  """D(f_a ‖ g_b), shape [..., A, B]."""
  return _gaussian.kl(
    f.means[..., :, None, :],
    f.chols[..., :, None, :, :],
    g.means[..., None, :, :],
    g.chols[..., None, :, :, :],
  )


def _pairwise_log_overlap(f: GaussianMixture, g: GaussianMixture) -> jax.Array:
  """Log ∫ f_a g_b, shape [..., A, B]."""
  return _gaussian.log_overlap(
    f.means[..., :, None, :],
    f.covariances[..., :, None, :, :],
    g.means[..., None, :, :],
    g.covariances[..., None, :, :, :],
  )


def _weighted(log_weights: jax.Array, per_component: jax.Array, axis=-1) -> jax.Array:
  """Σ π · per_component over `axis`; a weight of 0 contributes 0 whatever its term (±∞)."""
  live = log_weights > -jnp.inf
  return jnp.sum(jnp.exp(log_weights) * jnp.where(live, per_component, 0.0), axis=axis)


def _log_mix(log_weights: jax.Array, log_terms: jax.Array) -> jax.Array:
  """Log Σ_b w_b exp(log_terms[..., a, b]), shape [..., A]."""
  return logsumexp(log_weights[..., None, :] + log_terms, axis=-1)


def _log_normalise(log_x: jax.Array, axis: int) -> jax.Array:
  """log_x − logsumexp(log_x, axis); a slice that is all −∞ stays −∞ (not NaN), in gradients too."""
  dead = jnp.all(log_x == -jnp.inf, axis=axis, keepdims=True)
  safe = jnp.where(dead, 0.0, log_x)
  return jnp.where(dead, -jnp.inf, safe - logsumexp(safe, axis=axis, keepdims=True))


@jax.jit
def variational_approx(f: GaussianMixture, g: GaussianMixture) -> jax.Array:
  self_term = _log_mix(f.log_weights, -_pairwise_kl(f, f))
  cross_term = _log_mix(g.log_weights, -_pairwise_kl(f, g))
  return _weighted(f.log_weights, self_term - cross_term)


@jax.jit
def product_approx(f: GaussianMixture, g: GaussianMixture) -> jax.Array:
  self_term = _log_mix(f.log_weights, _pairwise_log_overlap(f, f))
  cross_term = _log_mix(g.log_weights, _pairwise_log_overlap(f, g))
  return _weighted(f.log_weights, self_term - cross_term)


@jax.jit
def matched_bound_approx(f: GaussianMixture, g: GaussianMixture) -> jax.Array:
  matched = jnp.min(_pairwise_kl(f, g) - g.log_weights[..., None, :], axis=-1)
  return _weighted(f.log_weights, matched + f.log_weights)


@jax.jit
def lower_bound(f: GaussianMixture, g: GaussianMixture) -> jax.Array:
  self_term = _log_mix(f.log_weights, -_pairwise_kl(f, f)) - _gaussian.entropy(f.chols)
  cross_term = _log_mix(g.log_weights, _pairwise_log_overlap(f, g))
  return _weighted(f.log_weights, self_term - cross_term)


@functools.partial(jax.jit, static_argnames="num_iterations")
def upper_bound(f: GaussianMixture, g: GaussianMixture, num_iterations: int) -> jax.Array:
  kl_ab = _pairwise_kl(f, g)
  log_pi, log_omega = f.log_weights[..., :, None], g.log_weights[..., None, :]

  def update(_, state):
    _, log_psi = state
    log_phi = log_pi + _log_normalise(log_psi - kl_ab, axis=-1)
    log_psi = log_omega + _log_normalise(log_phi, axis=-2)
    return log_phi, log_psi

  independent = log_pi + log_omega
  log_phi, log_psi = jax.lax.fori_loop(0, num_iterations, update, (independent, independent))
  live = log_phi > -jnp.inf  # φ_ab > 0 implies ψ_ab > 0: the updates keep ψ ∝ φ.
  log_ratio = jnp.where(live, log_phi - log_psi, 0.0)
  return _weighted(log_phi, log_ratio + kl_ab, axis=(-2, -1))

"""Approximations and bounds for the KL divergence between Gaussian mixtures.

KL between Gaussian mixtures has no closed form. With p = Σ_a π_a f_a and q = Σ_b ω_b g_b
(Gaussian components f_a, g_b), Hershey & Olsen (2007) give three approximations and a
variational upper bound, and Durrieu, Thiran & Kelly (2012) a lower bound. Notation: D(f‖g) is the
Gaussian closed-form KL, H(f) the Gaussian entropy, t_ab = ∫ f_a g_b = N(μ_a; μ_b, Σ_a + Σ_b)
and z_aa' = ∫ f_a f_a'. Names say which is which:

- `kl_divergence_mixture_variational_approx` (approximation, neither bound),
- `kl_divergence_mixture_product_approx` (approximation, neither bound),
- `kl_divergence_mixture_matched_bound_approx` (Goldberger's matched-bound approximation; a true
  bound only when the matching is one-to-one, so treat it as an approximation),
- `kl_divergence_mixture_upper_bound` (a true upper bound),
- `kl_divergence_mixture_lower_bound` (a true lower bound; may be negative, when 0 is better).

p and q may be `MixtureSameFamily` distributions (distrax or TFP) whose components are `Normal`s
or multivariate normals, or single Gaussians (treated as one-component mixtures). Batch shapes
broadcast. For the exact value use `klax.kl_divergence_mc`.
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


class _GaussianMixture(NamedTuple):
  log_weights: jax.Array  # [..., K]
  means: jax.Array  # [..., K, d]
  covariances: jax.Array  # [..., K, d, d]
  chols: jax.Array  # [..., K, d, d]


def _gaussian_params(dist, name: str) -> tuple[jax.Array, jax.Array]:
  """Means [..., d] and covariances [..., d, d] of a Normal or multivariate normal."""
  if isinstance(dist, _NORMALS):
    shape = tuple(dist.batch_shape)
    mean = jnp.broadcast_to(dist.mean(), shape)
    return mean[..., None], jnp.broadcast_to(dist.variance(), shape)[..., None, None]
  if isinstance(dist, _MULTIVARIATE_NORMALS):
    return dist.mean(), dist.covariance()
  raise TypeError(
    f"`{name}` must be a Gaussian mixture (MixtureSameFamily of Normal or multivariate normal "
    f"components) or a single Gaussian, got components of type {type(dist).__name__}. "
    "Use `klax.kl_divergence_mc` for other mixtures."
  )


def _as_mixture(dist, name: str) -> _GaussianMixture:
  if isinstance(dist, _MIXTURES):
    mixing = dist.mixture_distribution
    logits = mixing.logits_parameter() if hasattr(mixing, "logits_parameter") else mixing.logits
    log_weights = jax.nn.log_softmax(logits, axis=-1)
    means, covariances = _gaussian_params(dist.components_distribution, name)
  else:
    means, covariances = _gaussian_params(dist, name)
    means, covariances = means[..., None, :], covariances[..., None, :, :]
    log_weights = jnp.zeros(means.shape[:-1], means.dtype)
  return _GaussianMixture(log_weights, means, covariances, _gaussian.cholesky(covariances))


def _mixtures(p, q) -> tuple[_GaussianMixture, _GaussianMixture]:
  f, g = _as_mixture(p, "p"), _as_mixture(q, "q")
  if f.means.shape[-1] != g.means.shape[-1]:
    raise ValueError(
      f"`p` and `q` must have the same dimension, got {f.means.shape[-1]} and {g.means.shape[-1]}."
    )
  return f, g


def _pairwise_kl(f: _GaussianMixture, g: _GaussianMixture) -> jax.Array:
  """D(f_a ‖ g_b), shape [..., A, B]."""
  return _gaussian.kl(
    f.means[..., :, None, :],
    f.chols[..., :, None, :, :],
    g.means[..., None, :, :],
    g.chols[..., None, :, :, :],
  )


def _pairwise_log_overlap(f: _GaussianMixture, g: _GaussianMixture) -> jax.Array:
  """Log ∫ f_a g_b, shape [..., A, B]."""
  return _gaussian.log_overlap(
    f.means[..., :, None, :],
    f.covariances[..., :, None, :, :],
    g.means[..., None, :, :],
    g.covariances[..., None, :, :, :],
  )


def _weighted(f: _GaussianMixture, per_component: jax.Array) -> jax.Array:
  """Σ_a π_a · per_component[..., a]."""
  return jnp.sum(jnp.exp(f.log_weights) * per_component, axis=-1)


def _log_mix(log_weights: jax.Array, log_terms: jax.Array) -> jax.Array:
  """Log Σ_b w_b exp(log_terms[..., a, b]), shape [..., A]."""
  return logsumexp(log_weights[..., None, :] + log_terms, axis=-1)


@jax.jit
def _variational_approx(f: _GaussianMixture, g: _GaussianMixture) -> jax.Array:
  self_term = _log_mix(f.log_weights, -_pairwise_kl(f, f))
  cross_term = _log_mix(g.log_weights, -_pairwise_kl(f, g))
  return _weighted(f, self_term - cross_term)


@jax.jit
def _product_approx(f: _GaussianMixture, g: _GaussianMixture) -> jax.Array:
  self_term = _log_mix(f.log_weights, _pairwise_log_overlap(f, f))
  cross_term = _log_mix(g.log_weights, _pairwise_log_overlap(f, g))
  return _weighted(f, self_term - cross_term)


@jax.jit
def _matched_bound_approx(f: _GaussianMixture, g: _GaussianMixture) -> jax.Array:
  matched = jnp.min(_pairwise_kl(f, g) - g.log_weights[..., None, :], axis=-1)
  return _weighted(f, matched + f.log_weights)


@jax.jit
def _lower_bound(f: _GaussianMixture, g: _GaussianMixture) -> jax.Array:
  self_term = _log_mix(f.log_weights, -_pairwise_kl(f, f)) - _gaussian.entropy(f.chols)
  cross_term = _log_mix(g.log_weights, _pairwise_log_overlap(f, g))
  return _weighted(f, self_term - cross_term)


@functools.partial(jax.jit, static_argnames="num_iterations")
def _upper_bound(f: _GaussianMixture, g: _GaussianMixture, num_iterations: int) -> jax.Array:
  kl_ab = _pairwise_kl(f, g)
  log_pi, log_omega = f.log_weights[..., :, None], g.log_weights[..., None, :]

  def update(_, state):
    _, log_psi = state
    log_phi = log_pi + log_psi - kl_ab
    log_phi = log_phi - logsumexp(log_phi, axis=-1, keepdims=True) + log_pi
    log_psi = log_omega + log_phi - logsumexp(log_phi, axis=-2, keepdims=True)
    return log_phi, log_psi

  independent = log_pi + log_omega
  log_phi, log_psi = jax.lax.fori_loop(0, num_iterations, update, (independent, independent))
  terms = jnp.exp(log_phi) * (log_phi - log_psi + kl_ab)
  return jnp.sum(terms, axis=(-2, -1))


def kl_divergence_mixture_variational_approx(p, q) -> jax.Array:
  """Variational approximation of KL(p ‖ q) for Gaussian mixtures (Hershey & Olsen 2007).

  D_var = Σ_a π_a log[ Σ_a' π_a' e^{−D(f_a‖f_a')} / Σ_b ω_b e^{−D(f_a‖g_b)} ].

  An approximation, not a bound; exact when both are single Gaussians.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The approximation, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_variational_approx(p, q)):.3f}")
    0.297
  """
  return _variational_approx(*_mixtures(p, q))


def kl_divergence_mixture_product_approx(p, q) -> jax.Array:
  """Product-of-Gaussians approximation of KL(p ‖ q) (Hershey & Olsen 2007).

  D_prod = Σ_a π_a log[ Σ_a' π_a' z_aa' / Σ_b ω_b t_ab ],  z_aa' = ∫ f_a f_a', t_ab = ∫ f_a g_b.

  An approximation, not a bound (it replaces E_f[log ·] by log E_f[·] in both terms).

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The approximation, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_product_approx(p, q)):.3f}")
    0.396
  """
  return _product_approx(*_mixtures(p, q))


def kl_divergence_mixture_matched_bound_approx(p, q) -> jax.Array:
  """Goldberger's matched-bound approximation of KL(p ‖ q) (Hershey & Olsen 2007, §5).

  D_match = Σ_a π_a [ D(f_a ‖ g_{m(a)}) + log(π_a / ω_{m(a)}) ],
  m(a) = argmin_b D(f_a ‖ g_b) − log ω_b.

  An approximation: it is an upper bound only when the matching m is one-to-one.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The approximation, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_matched_bound_approx(p, q)):.3f}")
    0.297
  """
  return _matched_bound_approx(*_mixtures(p, q))


def kl_divergence_mixture_lower_bound(p, q) -> jax.Array:
  """A lower bound on KL(p ‖ q) for Gaussian mixtures (Durrieu, Thiran & Kelly 2012).

  KL ≥ Σ_a π_a [ log Σ_a' π_a' e^{−D(f_a‖f_a')} − H(f_a) − log Σ_b ω_b t_ab ].

  Derivation: E_f[log g] ≤ Σ_a π_a log Σ_b ω_b t_ab (Jensen, log concave) and
  E_{f_a}[log f] ≥ log Σ_a' π_a' exp(E_{f_a}[log f_a']) (Jensen, log-sum-exp convex), with
  E_{f_a}[log f_a'] = −H(f_a) − D(f_a ‖ f_a'). The bound can be negative; KL ≥ 0 regardless.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The lower bound, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_lower_bound(p, q)):.3f}")
    0.241
  """
  return _lower_bound(*_mixtures(p, q))


def kl_divergence_mixture_upper_bound(p, q, *, num_iterations: int = 50) -> jax.Array:
  """Variational upper bound on KL(p ‖ q) for Gaussian mixtures (Hershey & Olsen 2007, §7).

  For any φ_ab, ψ_ab ≥ 0 with Σ_b φ_ab = π_a and Σ_a ψ_ab = ω_b (the chain rule for KL):

      KL(p ‖ q) ≤ D_φψ = Σ_ab φ_ab [ log(φ_ab / ψ_ab) + D(f_a ‖ g_b) ].

  The bound is tightened by `num_iterations` rounds of the alternating closed-form updates
  φ_ab = π_a ψ_ab e^{−D_ab} / Σ_b' ψ_ab' e^{−D_ab'} and ψ_ab = ω_b φ_ab / Σ_a' φ_a'b, starting
  from φ = ψ = π ωᵀ; every iterate is a valid bound and none is looser than the previous one.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.
    num_iterations: rounds of the alternating updates (each gives a bound no looser than the
      one before).

  Returns:
    The upper bound, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_upper_bound(p, q)):.3f}")
    0.991
  """
  if not isinstance(num_iterations, int) or num_iterations < 0:
    raise ValueError(f"`num_iterations` must be a non-negative int, got {num_iterations!r}.")
  return _upper_bound(*_mixtures(p, q), num_iterations=num_iterations)

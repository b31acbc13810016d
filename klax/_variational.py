"""Weighted draws from q_θ for the variational objectives, and the weighted bounds built on them.

Every reverse-KL objective is an average over draws x_i with weights π_i (Σ_i π_i = 1) of the log
weights t_i = log p̃(x_i) − log q_θ(x_i):

- a reparameterisable q: x_i = T_θ(ε_i), i = 1 … S, π_i = 1/S;
- a mixture q = Σ_k w_k q_k with reparameterisable components (stratified sampling): S draws from
  each component, x_ks = T_θ,k(ε_ks), π_ks = w_k / S. Then Σ_ks π_ks f(x_ks) is unbiased for
  Σ_k w_k E_{q_k}[f] = E_q[f], and its gradient is unbiased in the weights (through π) and in the
  components (pathwise), which sampling the mixture itself (a discrete component index) is not.
  log Σ_ks π_ks e^{t_ks} is the stratified importance-weighted bound of Morningstar, Vikram, Ham,
  Gallagher & Dillon (2021): its expectation is at most log Z, since the inner sum is unbiased
  for Z.

A distribution that is neither (discrete, quantised, a two-component `MixtureOfTwo`, a TFP
distribution that is not fully reparameterised) is refused for pathwise gradients with a
`ValueError` raised while tracing: its samples carry no gradient, so a pathwise gradient would be
silently biased.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from tensorflow_probability.substrates import jax as tfp

from klax._monte_carlo import sample_and_log_prob

tfd = tfp.distributions

_MIXTURES = (distrax.MixtureSameFamily, tfd.MixtureSameFamily)
_NOT_REPARAMETERISED = (
  distrax.Bernoulli,
  distrax.Categorical,
  distrax.CategoricalUniform,
  distrax.EpsilonGreedy,
  distrax.Greedy,
  distrax.MixtureOfTwo,
  distrax.Multinomial,
  distrax.OneHotCategorical,
  distrax.Quantized,
  distrax.Softmax,
)


def event_shape(family, params) -> tuple[int, ...]:
  """Event shape of family.dist(params), found while tracing (nothing is computed)."""
  found = []

  def build(p):
    found.append(tuple(family.dist(p).event_shape))
    return jnp.zeros(())

  jax.eval_shape(build, params)
  return found[0]


def check_alpha(alpha) -> float:
  """α as a Python float in [0, 1], or raises naming `alpha`."""
  if isinstance(alpha, (bool, jax.core.Tracer)) or not isinstance(alpha, numbers.Real):
    raise TypeError(f"`alpha` must be a Python float, got {type(alpha).__name__}.")
  alpha = float(alpha)
  if not math.isfinite(alpha):
    raise ValueError(f"`alpha` must be finite, got {alpha}.")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(
      f"`alpha` must be in [0, 1], got {alpha}. Outside it the S-sample estimate of L_α is "
      "biased to the wrong side of its bound (below the upper bound L_α ≥ log Z for α < 0, above "
      "the lower bound for α > 1), so minimising it does not minimise D_α(q ‖ p): the "
      "optimiser exploits the bias (at α = −1 it narrows q onto one mode)."
    )
  return alpha


GRADIENTS = ("reparam", "score", "stl")


class WeightedDraws(NamedTuple):
  """Weighted draws x_i from q_θ, as what every reverse-KL objective averages.

  Attributes:
    log_w: the log weights t_i = log p̃(x_i) − log q_θ(x_i), shape [N].
    log_q: log q_θ(x_i), shape [N].
    log_pi: the draws' log weights log π_i, shape [N], with logsumexp(log_pi) = 0 (−inf for a
      mixture component of weight 0).
  """

  log_w: jax.Array
  log_q: jax.Array
  log_pi: jax.Array


def reparameterised(dist) -> bool:
  """True when samples of `dist` carry pathwise gradients in every parameter."""
  if isinstance(dist, (distrax.Transformed, distrax.Independent)):
    return reparameterised(dist.distribution)
  if isinstance(dist, _NOT_REPARAMETERISED + _MIXTURES):
    return False
  kind = getattr(dist, "reparameterization_type", None)  # TFP distributions.
  return kind is None or kind == tfd.FULLY_REPARAMETERIZED


def stratifiable(dist) -> bool:
  return isinstance(dist, _MIXTURES) and reparameterised(dist.components_distribution)


def _mixing_log_weights(mixture) -> jax.Array:
  mixing = mixture.mixture_distribution
  logits = mixing.logits_parameter() if hasattr(mixing, "logits_parameter") else mixing.logits
  return jax.nn.log_softmax(logits, axis=-1)


def _refuse_unless_pathwise(q) -> None:
  if not (stratifiable(q) or reparameterised(q)):
    raise ValueError(
      f"`family.dist(params)` is a {type(q).__name__}, whose samples are not reparameterised: "
      "a pathwise gradient would be biased. Use `reverse_kl_loss(..., gradient='score')`, or "
      "a family with a reparameterisable sampler (mixtures of reparameterisable components "
      "are sampled per component)."
    )


def _stratified_draws(q, key, num_samples):
  """S draws from each of the K components, flattened to [S·K, *event], and log π [S·K]."""
  if tuple(q.batch_shape):
    raise ValueError(f"`family.dist(params)` must have batch shape (), got {tuple(q.batch_shape)}.")
  x = q.components_distribution.sample(seed=key, sample_shape=(num_samples,))  # [S, K, *event]
  x = x.reshape((num_samples * x.shape[1], *x.shape[2:]))
  log_pi = jnp.tile(_mixing_log_weights(q), num_samples) - math.log(num_samples)
  return x, log_pi


def draw(dist, target, params, key, num_samples: int, gradient: str = "reparam") -> WeightedDraws:
  """Weighted draws from q_θ = dist(θ) (a family's `dist`) with the gradient path of `gradient`.

  "reparam": pathwise through x and log q_θ(x); "stl": pathwise through x (and the mixture
  weights π) with log q evaluated at stopped parameters; "score": no gradient through x, π = 1/S.
  Shapes are checked while tracing: log p̃ of one point must be a scalar and log q_θ of N draws
  must have shape [N].
  """
  q = dist(params)
  uniform = jnp.full((num_samples,), -math.log(num_samples))
  if gradient == "score":
    x = jax.lax.stop_gradient(q.sample(seed=key, sample_shape=(num_samples,)))
    log_q, log_pi = q.log_prob(x), uniform
  else:
    _refuse_unless_pathwise(q)
    if gradient == "reparam" and not stratifiable(q):
      (x, log_q), log_pi = sample_and_log_prob(q, key, num_samples), uniform
    else:
      if stratifiable(q):
        x, log_pi = _stratified_draws(q, key, num_samples)
      else:
        x, log_pi = q.sample(seed=key, sample_shape=(num_samples,)), uniform
      scored = q if gradient == "reparam" else dist(jax.lax.stop_gradient(params))
      log_q = scored.log_prob(x)
  if gradient != "score" and not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"`family.dist(params)` samples {x.dtype}: no pathwise gradient exists.")
  n = x.shape[0]
  if log_q.shape != (n,):
    raise ValueError(
      f"`family.dist(params).log_prob` of {n} draws must have shape ({n},), got {log_q.shape}: "
      "the family's distribution must have batch shape ()."
    )
  log_p = target(x)
  if log_p.shape != (n,):
    raise ValueError(
      f"`log_density` must return a scalar for one point of shape {tuple(x.shape[1:])}, got "
      f"shape {tuple(log_p.shape[1:])}."
    )
  return WeightedDraws(log_p - log_q, log_q, log_pi.astype(log_q.dtype))


def weighted_mean(t: jax.Array, log_pi: jax.Array) -> jax.Array:
  """Σ_i π_i t_i; draws of weight 0 contribute nothing (not 0 · ∞), in value and gradient."""
  live = log_pi > -jnp.inf
  return jnp.sum(jnp.exp(log_pi) * jnp.where(live, t, 0.0))


def weighted_log_mean_exp(t: jax.Array, log_pi: jax.Array) -> jax.Array:
  """Log Σ_i π_i e^{t_i}: the (stratified) importance-weighted bound's estimate."""
  return logsumexp(log_pi + jnp.where(log_pi > -jnp.inf, t, 0.0))


def renyi_bound(t: jax.Array, log_pi: jax.Array, epsilon: float) -> jax.Array:
  """(1/ε) log Σ_i π_i e^{ε t_i} (ε = 1 − α), and Σ_i π_i t_i at ε = 0, continuous in ε.

  Where ε·(max t − min t) ≤ 1 it is computed about the weighted mean c = Σ π t, as
  c + log1p(Σ_i π_i expm1(ε (t_i − c))) / ε: no cancellation however small ε is (the direct
  form loses all digits once |ε| is below the rounding error over the spread), and the limit
  ε → 0 is c. Elsewhere about the largest ε t_i, so nothing overflows; dividing by |ε| there
  costs at most the rounding error times the spread. NaN in t gives NaN.
  """
  if epsilon == 0.0:
    return weighted_mean(t, log_pi)
  live = log_pi > -jnp.inf
  v = epsilon * jnp.where(live, t, 0.0)
  top = jnp.max(jnp.where(live, v, -jnp.inf))
  spread = top - jnp.min(jnp.where(live, v, jnp.inf))
  small = spread <= 1.0  # False for NaN, ±inf.
  centre = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  far = (centre + logsumexp(log_pi + v - centre)) / epsilon
  t_near = jnp.where(small & live, t, 0.0)
  c = jnp.sum(jnp.exp(log_pi) * t_near)
  u = jnp.where(small & live, t_near - c, 0.0)
  near = c + jnp.log1p(jnp.sum(jnp.exp(log_pi) * jnp.expm1(epsilon * u))) / epsilon
  return jnp.where(small, near, far)

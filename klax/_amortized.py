"""Amortised variational inference: an encoder q_φ(z | x) shared by every observation x.

A latent-variable model p_θ(x, z) = p(z) p_θ(x | z) over observations x_1 … x_n, and one
conditional family q_φ(z | x) for all of them (a variational autoencoder's encoder, with p_θ its
decoder). The losses average a per-observation bound over the data (or a minibatch of it):

- `amortized_elbo_loss`: −(1/B) Σ_b ELBO(x_b), ELBO(x) = E_q[log p_θ(x | z)] − KL(q_φ(z | x) ‖ p(z)),
  with the KL in closed form where klax has one for the pair (`kl="analytic"`, the default
  `"auto"` picks it when it exists), else E_q[log p_θ(x | z) + log p(z) − log q_φ(z | x)];
- `amortized_iwae_loss`: −(1/B) Σ_b log (1/K) Σ_k p_θ(x_b, z_k) / q_φ(z_k | x_b), z_k ~ q_φ(· | x_b).

`params` holds both φ and θ: the encoder reads what it needs from it, and so does
`log_likelihood(params, x, z)`. Both losses are pytrees like klax's other losses (the data are
leaves), so `klax.fit` on a new data set of the same shape does not recompile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from klax import _checks
from klax import _variational
from klax._closed_form import UnsupportedDistributionError
from klax._closed_form import kl_divergence
from klax._family import Family
from klax._losses import _loss_pytree

KL_TERMS = ("auto", "analytic", "sampled")


class ConditionalFamily(NamedTuple):
  """A conditional family q_φ(z | x): `init(key) -> params`, `dist(params, x) -> distribution`.

  `dist(params, x)` for one context x (an observation) returns a distrax or TFP distribution over
  z with batch shape ().
  """

  init: Callable[[jax.Array], Any]
  dist: Callable[[Any, jax.Array], Any]


def _observations(data, batch_size, key):
  if batch_size is None:
    return data, jax.random.split(key, data.shape[0])
  key_batch, key_draws = jax.random.split(key)
  data = data[jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])]
  return data, jax.random.split(key_draws, batch_size)


def _draws(loss, params, x, key, log_prior: bool) -> _variational.WeightedDraws:
  """Draws z from q_φ(· | x), log weights log p_θ(x | z) [+ log p(z)] − log q_φ(z | x)."""

  def target(z):
    value = jnp.asarray(loss.log_likelihood(params, x, z))
    if value.shape != ():
      raise ValueError(
        "`log_likelihood(params, x, z)` must return a scalar for one observation and one latent, "
        f"got shape {value.shape}."
      )
    return value + loss.prior.log_prob(z) if log_prior else value

  return _variational.draw(
    lambda p: loss.encoder.dist(p, x), jax.vmap(target), params, key, loss.num_samples
  )


def _analytic(loss, params, x) -> bool:
  if loss.kl == "sampled":
    return False
  try:
    jax.eval_shape(lambda p: kl_divergence(loss.encoder.dist(p, x), loss.prior), params)
  except UnsupportedDistributionError:
    if loss.kl == "analytic":
      raise
    return False
  return True


@_loss_pytree(
  data_fields=("data", "log_likelihood", "prior"),
  meta_fields=("encoder", "num_samples", "batch_size", "kl"),
)
@dataclasses.dataclass(frozen=True, eq=False)
class AmortizedELBOLoss:
  """−(1/B) Σ_b ELBO(x_b) for an encoder q_φ(z | x), a likelihood p_θ(x | z) and a prior p(z)."""

  encoder: ConditionalFamily
  log_likelihood: Callable
  prior: Any
  data: jax.Array
  num_samples: int
  batch_size: int | None = None
  kl: str = "auto"

  def __call__(self, params: Any, key: jax.Array) -> jax.Array:
    """The negative mean ELBO over the data (or a minibatch drawn with `key`)."""
    data, keys = _observations(self.data, self.batch_size, key)
    analytic = _analytic(self, params, data[0])

    def elbo(x, key):
      draws = _draws(self, params, x, key, log_prior=not analytic)
      if not analytic:
        return _variational.weighted_mean(draws.log_w, draws.log_pi)
      log_likelihood = draws.log_w + draws.log_q  # The target was log p_θ(x | z) alone.
      kl = kl_divergence(self.encoder.dist(params, x), self.prior)
      return _variational.weighted_mean(log_likelihood, draws.log_pi) - kl

    return -jnp.mean(jax.vmap(elbo)(data, keys))


@_loss_pytree(
  data_fields=("data", "log_likelihood", "prior"),
  meta_fields=("encoder", "num_samples", "batch_size"),
)
@dataclasses.dataclass(frozen=True, eq=False)
class AmortizedIWAELoss:
  """−(1/B) Σ_b log (1/K) Σ_k p_θ(x_b, z_k) / q_φ(z_k | x_b): the negative mean IWAE bound."""

  encoder: ConditionalFamily
  log_likelihood: Callable
  prior: Any
  data: jax.Array
  num_samples: int
  batch_size: int | None = None

  def __call__(self, params: Any, key: jax.Array) -> jax.Array:
    """The negative mean importance-weighted bound over the data (or a minibatch)."""
    data, keys = _observations(self.data, self.batch_size, key)

    def bound(x, key):
      draws = _draws(self, params, x, key, log_prior=True)
      return _variational.weighted_log_mean_exp(draws.log_w, draws.log_pi)

    return -jnp.mean(jax.vmap(bound)(data, keys))


def _checked(
  encoder, log_likelihood, prior, data, num_samples, batch_size
) -> tuple[jax.Array, int, int | None]:
  if isinstance(encoder, Family):
    raise TypeError(
      "`encoder` must be a klax ConditionalFamily(init, dist) with dist(params, x), got a Family "
      "(dist(params)): an amortised posterior depends on the observation."
    )
  if not (hasattr(encoder, "init") and hasattr(encoder, "dist") and callable(encoder.dist)):
    raise TypeError(
      f"`encoder` must be a klax ConditionalFamily(init, dist), got {type(encoder).__name__}."
    )
  if not callable(log_likelihood):
    raise TypeError(
      "`log_likelihood` must be a callable log p(x | z) of (params, x, z), got "
      f"{type(log_likelihood).__name__}."
    )
  _checks.distribution(prior, "prior")
  if tuple(prior.batch_shape):
    raise ValueError(
      f"`prior` must have batch shape (), got {tuple(prior.batch_shape)}: p(z) is one "
      "distribution over z, shared by every observation."
    )
  array = _checks.float_array(data, "data")
  if array.ndim == 0 or array.shape[0] == 0:
    raise ValueError(f"`data` must hold at least one observation, got shape {array.shape}.")
  num_samples = _checks.positive_int(num_samples, "num_samples")
  if batch_size is not None:
    batch_size = _checks.positive_int(batch_size, "batch_size")
  return array, num_samples, batch_size


def amortized_elbo_loss(
  encoder: ConditionalFamily,
  log_likelihood: Callable[[Any, jax.Array, jax.Array], jax.Array],
  prior: Any,
  data: ArrayLike,
  num_samples: int,
  *,
  batch_size: int | None = None,
  kl: Literal["auto", "analytic", "sampled"] = "auto",
) -> AmortizedELBOLoss:
  """Negative mean ELBO of a latent-variable model with an amortised (encoder) posterior.

  loss(params) = −(1/B) Σ_b [ (1/S) Σ_s log p_θ(x_b | z_bs) − KL(q_φ(z | x_b) ‖ p(z)) ],
  z_bs ~ q_φ(· | x_b) reparameterised, over all n observations (B = n) or a minibatch of
  `batch_size` drawn with replacement with the loss's key. With `kl="sampled"` (or `"auto"` for a
  pair with no closed form) the KL term is estimated from the same draws:
  (1/S) Σ_s [log q_φ(z_bs | x_b) − log p(z_bs)]. Both are unbiased for −(1/n) Σ_i ELBO(x_i);
  the analytic term has the smaller variance.

  Args:
    encoder: a `ConditionalFamily`; `encoder.dist(params, x)` is q_φ(z | x) for one x, sampled
      with pathwise gradients (or a mixture of components that are).
    log_likelihood: log p_θ(x | z) for one observation and one latent, `(params, x, z) -> scalar`.
    prior: p(z), a distrax or TFP distribution (its arrays are data of the loss).
    data: the observations, shape [n, *observation_shape].
    num_samples: S, latent draws per observation.
    batch_size: observations per evaluation, or None for all of them.
    kl: "analytic" (closed form; raises `UnsupportedDistributionError` while tracing if the
      pair has none), "sampled", or "auto" (closed form where it exists).

  Returns:
    An `AmortizedELBOLoss`, called as `loss(params, key) -> scalar`.

  Examples:
    >>> import distrax, jax, jax.numpy as jnp, klax
    >>> # z ~ N(0, 1), x | z ~ N(z, 1): the posterior is N(x / 2, 1 / 2), log p(x) = log N(x; 0, 2).
    >>> encoder = klax.ConditionalFamily(
    ...   init=lambda key: {"a": jnp.array(0.5), "log_s": jnp.log(jnp.sqrt(0.5))},
    ...   dist=lambda p, x: distrax.MultivariateNormalDiag(p["a"] * x, jnp.exp(p["log_s"])[None]))
    >>> log_lik = lambda p, x, z: jax.scipy.stats.norm.logpdf(x[0], z[0], 1.0)
    >>> prior = distrax.MultivariateNormalDiag(jnp.zeros(1), jnp.ones(1))
    >>> data = jnp.array([[0.0], [2.0]])
    >>> loss = klax.amortized_elbo_loss(encoder, log_lik, prior, data, 4, kl="sampled")
    >>> exact = -jnp.mean(jax.scipy.stats.norm.logpdf(data[:, 0], 0.0, jnp.sqrt(2.0)))
    >>> abs(float(loss(encoder.init(None), jax.random.key(0)) - exact)) < 1e-5  # q is exact
    True
  """
  data, num_samples, batch_size = _checked(
    encoder, log_likelihood, prior, data, num_samples, batch_size
  )
  if kl not in KL_TERMS:
    raise ValueError(f"`kl` must be one of {KL_TERMS}, got {kl!r}.")
  return AmortizedELBOLoss(encoder, log_likelihood, prior, data, num_samples, batch_size, kl)


def amortized_iwae_loss(
  encoder: ConditionalFamily,
  log_likelihood: Callable[[Any, jax.Array, jax.Array], jax.Array],
  prior: Any,
  data: ArrayLike,
  num_samples: int,
  *,
  batch_size: int | None = None,
) -> AmortizedIWAELoss:
  """Negative mean importance-weighted bound with an amortised proposal q_φ(z | x).

  loss(params) = −(1/B) Σ_b log (1/K) Σ_k exp(log p_θ(x_b | z_bk) + log p(z_bk) − log q_φ(z_bk | x_b)),
  z_bk ~ q_φ(· | x_b) reparameterised (K = `num_samples`; stratified over a mixture's components),
  whose expectation is −(1/B) Σ_b L_K(x_b), with ELBO = L_1 ≤ L_K ≤ log p_θ(x) (Burda, Grosse &
  Salakhutdinov 2016). With large K, −loss estimates the mean log-likelihood (1/n) Σ log p_θ(x_i)
  from below, the usual held-out score of a VAE.

  Args:
    encoder: a `ConditionalFamily`, as for `amortized_elbo_loss`.
    log_likelihood: log p_θ(x | z), `(params, x, z) -> scalar`.
    prior: p(z), a distrax or TFP distribution.
    data: the observations, shape [n, *observation_shape].
    num_samples: K, importance samples per observation.
    batch_size: observations per evaluation, or None for all of them.

  Returns:
    An `AmortizedIWAELoss`, called as `loss(params, key) -> scalar`.

  Examples:
    >>> import distrax, jax, jax.numpy as jnp, klax
    >>> encoder = klax.ConditionalFamily(  # q(z | x) = N(0, 1), the prior: a poor proposal
    ...   init=lambda key: {}, dist=lambda p, x: distrax.MultivariateNormalDiag(jnp.zeros(1)))
    >>> log_lik = lambda p, x, z: jax.scipy.stats.norm.logpdf(x[0], z[0], 1.0)
    >>> prior = distrax.MultivariateNormalDiag(jnp.zeros(1))
    >>> data = jnp.array([[1.0]])
    >>> loss = klax.amortized_iwae_loss(encoder, log_lik, prior, data, num_samples=10_000)
    >>> exact = float(jax.scipy.stats.norm.logpdf(1.0, 0.0, jnp.sqrt(2.0)))
    >>> abs(-float(loss({}, jax.random.key(1))) - exact) < 0.01  # L_K → log p(x) as K grows
    True
  """
  data, num_samples, batch_size = _checked(
    encoder, log_likelihood, prior, data, num_samples, batch_size
  )
  return AmortizedIWAELoss(encoder, log_likelihood, prior, data, num_samples, batch_size)

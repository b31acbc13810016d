"""Objectives for fitting a family q_θ to a target p: builders returning `loss(params, key)`.

Each builder closes over its static configuration (the family, the data or the target, sizes,
the gradient estimator) and returns a pure `loss(params, key) -> scalar` to be minimised, so
that jitted fits never retrace on configuration. A target is `log_density(x)` for one point,
unnormalised if need be (log p̃ = log p + log Z); klax vmaps it over samples.

- Forward KL: KL(p ‖ q_θ) = −H(p) − E_p[log q_θ], so minimising the mean negative
  log-likelihood over samples of p is maximum likelihood (seed 000).
- Reverse KL: KL(q_θ ‖ p) = log Z − ELBO(θ), ELBO = E_q[log p̃(x) − log q_θ(x)], so minimising
  −ELBO needs p only up to its normalising constant (seeds 000 and 002).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from klax import _checks
from klax._monte_carlo import Estimate
from klax._monte_carlo import mean_and_stderr
from klax._monte_carlo import sample_and_log_prob
from klax.families import Family

GRADIENTS = ("reparam", "score", "stl")


def _family(family) -> Family:
  if not (hasattr(family, "init") and hasattr(family, "dist") and callable(family.dist)):
    raise TypeError(f"`family` must be a klax Family(init, dist), got {type(family).__name__}.")
  return family


def _distribution_log_prob(family) -> Callable:
  return lambda params, x: family.dist(params).log_prob(x)


def _target(log_density) -> Callable:
  if not callable(log_density):
    raise TypeError(
      f"`log_density` must be a callable log p̃(x) for one point, got {type(log_density).__name__}."
    )
  return jax.vmap(log_density)


def forward_kl_loss(family: Family, data, batch_size: int | None = None) -> Callable:
  """Forward-KL loss: the mean negative log-likelihood of samples of p under q_θ.

  loss(θ) = −(1/n) Σ_i log q_θ(x_i),  x_i ~ p,

  an unbiased estimate of H(p) + KL(p ‖ q_θ): its minimiser is the maximum-likelihood estimate,
  which tends to argmin_θ KL(p ‖ q_θ) as n grows. With `batch_size`, each call averages over a
  minibatch drawn (with replacement) with `key`; otherwise over all the data and `key` is unused.

  Args:
    family: the model family.
    data: samples of p, shape [n, *event_shape].
    batch_size: minibatch size, or None for full batch.

  Returns:
    `loss(params, key) -> scalar`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> data = 2.0 + 0.5 * jax.random.normal(jax.random.key(0), (1000,))
    >>> loss = klax.forward_kl_loss(klax.families.normal(), data)
    >>> start = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    >>> mle = klax.fit(loss, start, optax.lbfgs(), jax.random.key(1), 30).params
    >>> abs(float(mle["loc"]) - float(data.mean())) < 1e-4  # The MLE is the sample mean.
    True
  """
  family = _family(family)
  data = _checks.float_array(data, "data")
  if data.ndim == 0:
    raise ValueError("`data` must have a leading sample axis, got a scalar.")
  n = data.shape[0]
  if batch_size is not None:
    batch_size = _checks.positive_int(batch_size, "batch_size")

  log_prob = (
    family.log_prob if getattr(family, "log_prob", None) else _distribution_log_prob(family)
  )

  def loss(params, key):
    x = data
    if batch_size is not None:
      x = data[jax.random.randint(key, (batch_size,), 0, n)]
    return -jnp.mean(log_prob(params, x))

  return loss


def _log_weights(family, target, params, key, num_samples, gradient="reparam"):
  """Log w = log p̃(x) − log q_θ(x) for x ~ q_θ, with the gradient path chosen by `gradient`."""
  q = family.dist(params)
  if gradient == "reparam":
    x, log_q = sample_and_log_prob(q, key, num_samples)
  elif gradient == "stl":  # Sticking the landing: drop the score term ∇_θ log q_θ(x) at fixed x.
    x = q.sample(seed=key, sample_shape=(num_samples,))
    log_q = family.dist(jax.lax.stop_gradient(params)).log_prob(x)
  else:  # "score": no gradient through the samples.
    x = jax.lax.stop_gradient(q.sample(seed=key, sample_shape=(num_samples,)))
    log_q = q.log_prob(x)
  return target(x) - log_q, log_q


def reverse_kl_loss(
  family: Family, log_density: Callable, num_samples: int, gradient: str = "reparam"
) -> Callable:
  """Reverse-KL loss: the negative ELBO, estimated with `num_samples` draws from q_θ.

  loss(θ) = −(1/S) Σ_s [log p̃(x_s) − log q_θ(x_s)],  x_s ~ q_θ,
  an unbiased estimate of KL(q_θ ‖ p) − log Z. Its value is the same for every `gradient`;
  the gradient estimator differs:

  - "reparam": pathwise, x = T_θ(ε) (needs a reparameterisable sampler).
  - "stl": sticking the landing (Roeder, Wu & Duvenaud 2017): pathwise without the score term,
    whose expectation is zero; the estimator has zero variance when q_θ equals the posterior.
  - "score": score function (REINFORCE), (1/S) Σ_s (f_s − b_s) ∇ log q_θ(x_s) with
    f = log q_θ − log p̃ and the leave-one-out baseline b_s = mean_{t≠s} f_t (unbiased, since b_s
    does not depend on x_s). Works for non-reparameterisable q (e.g. mixtures); needs S >= 2.

  Args:
    family: the variational family.
    log_density: log p̃(x) for one point; may be unnormalised.
    num_samples: S, draws per loss evaluation.
    gradient: "reparam", "stl" or "score".

  Returns:
    `loss(params, key) -> scalar`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # N(1, 0.5²), unnormalised.
    >>> loss = klax.reverse_kl_loss(klax.families.normal(), log_p, num_samples=32)
    >>> start = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    >>> q = klax.fit(loss, start, optax.adam(0.05), jax.random.key(0), 500).params
    >>> abs(float(q["loc"]) - 1.0) < 0.05 and abs(float(jnp.exp(q["log_scale"])) - 0.5) < 0.05
    True
  """
  family, target = _family(family), _target(log_density)
  num_samples = _checks.positive_int(num_samples, "num_samples")
  if gradient not in GRADIENTS:
    raise ValueError(f"`gradient` must be one of {GRADIENTS}, got {gradient!r}.")
  if gradient == "score" and num_samples < 2:
    raise ValueError(
      "`gradient='score'` uses a leave-one-out baseline: `num_samples` must be >= 2."
    )

  def loss(params, key):
    log_w, log_q = _log_weights(family, target, params, key, num_samples, gradient)
    value = -jnp.mean(log_w)
    if gradient != "score":
      return value
    f = jax.lax.stop_gradient(-log_w)
    baseline = (jnp.sum(f) - f) / (num_samples - 1)
    surrogate = jnp.mean((f - baseline) * log_q)
    return jax.lax.stop_gradient(value) + surrogate - jax.lax.stop_gradient(surrogate)

  return loss


def elbo(q, log_density: Callable, key: jax.Array, num_samples: int) -> Estimate:
  """Monte Carlo ELBO of a distribution q for an unnormalised target, with its standard error.

  ELBO = E_{x ~ q}[log p̃(x) − log q(x)] = log Z − KL(q ‖ p) ≤ log Z.

  Args:
    q: a distrax distribution.
    log_density: log p̃(x) for one point.
    key: a `jax.random` key.
    num_samples: draws from q.

  Returns:
    `Estimate(value, stderr)`.

  Examples:
    >>> import distrax, jax, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # Z = 0.5 √(2π)
    >>> estimate = klax.elbo(distrax.Normal(1.0, 0.5), log_p, jax.random.key(0), 100)
    >>> round(float(estimate.value), 4)  # q = p exactly: ELBO = log Z
    0.2258
  """
  _checks.distribution(q, "q")
  target = _target(log_density)
  num_samples = _checks.positive_int(num_samples, "num_samples")
  x, log_q = sample_and_log_prob(q, key, num_samples)
  return mean_and_stderr(target(x) - log_q)


def iwae_loss(family: Family, log_density: Callable, num_samples: int) -> Callable:
  """Negative importance-weighted bound (Burda, Grosse & Salakhutdinov 2016).

  loss(θ) = −log (1/K) Σ_k p̃(x_k) / q_θ(x_k),  x_k ~ q_θ (reparameterised),

  whose expectation is −L_K with ELBO = L_1 ≤ L_K ≤ L_∞ = log Z.

  Args:
    family: a `klax.families.Family`; q_θ = family.dist(θ) must sample with reparameterised
      gradients.
    log_density: log p̃(x) for one point x, the target up to its normalising constant Z.
    num_samples: the number of draws per evaluation (K or S above).

  Returns:
    `loss(params, key) -> scalar`, to pass to `klax.fit` or `klax.fit_batch`.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # log Z = log(0.5 √(2π)) = 0.2258
    >>> loss = klax.iwae_loss(klax.families.normal(), log_p, 16)
    >>> exact = {"loc": jnp.array(1.0), "log_scale": jnp.log(0.5)}
    >>> round(float(loss(exact, jax.random.key(0))), 4)
    -0.2258
  """
  family, target = _family(family), _target(log_density)
  num_samples = _checks.positive_int(num_samples, "num_samples")

  def loss(params, key):
    log_w, _ = _log_weights(family, target, params, key, num_samples)
    return -(logsumexp(log_w) - jnp.log(num_samples))

  return loss


def renyi_loss(family: Family, log_density: Callable, num_samples: int, alpha: float) -> Callable:
  """Variational Rényi objective (Li & Turner 2016), as a loss to minimise.

  L_α = 1/(1 − α) · log (1/S) Σ_s (p̃(x_s) / q_θ(x_s))^{1−α},  x_s ~ q_θ (reparameterised),

  and L_α = log Z − D_α(q_θ ‖ p). For α ≥ 0, L_α is a lower bound on log Z (α → 1: the ELBO,
  i.e. reverse KL, mode seeking; α = 0: the importance-weighted bound, → log Z as S grows) and
  the loss is −L_α. For α < 0, D_α ≤ 0 and L_α ≥ log Z is an upper bound, so the loss is +L_α
  (minimising |D_α|); smaller α moves q further toward mass covering. α = 1 is computed as the
  ELBO exactly. With finite S the estimate of L_α is biased low (a log of a mean).

  Args:
    family: a `klax.families.Family`; q_θ = family.dist(θ) must sample with reparameterised
      gradients.
    log_density: log p̃(x) for one point x, the target up to its normalising constant Z.
    num_samples: the number of draws per evaluation (K or S above).
    alpha: the Rényi order α (a Python float; 1 is the ELBO, 0 the importance-weighted bound).

  Returns:
    `loss(params, key) -> scalar`, to pass to `klax.fit` or `klax.fit_batch`.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2
    >>> params = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    >>> losses = [klax.renyi_loss(klax.families.normal(), log_p, 64, a)(params, jax.random.key(0))
    ...           for a in (1.0, 0.5, 0.0)]
    >>> bool(losses[0] > losses[1] > losses[2])  # −ELBO ≥ −L_0.5 ≥ −L_0 (same draws)
    True
  """
  family, target = _family(family), _target(log_density)
  num_samples = _checks.positive_int(num_samples, "num_samples")
  alpha = float(alpha)

  def loss(params, key):
    log_w, _ = _log_weights(family, target, params, key, num_samples)
    if alpha == 1.0:
      return -jnp.mean(log_w)
    bound = (logsumexp((1.0 - alpha) * log_w) - jnp.log(num_samples)) / (1.0 - alpha)
    return bound if alpha < 0 else -bound

  return loss

"""Monte Carlo estimates of KL divergence, entropy and cross-entropy, with standard errors.

With x_1 … x_n ~ p and the log ratio ℓ = log p(x) − log q(x) (so r = q(x)/p(x) = e^{−ℓ}), the
three estimators of KL(p ‖ q) popularised by Schulman (2020) are, per sample:

- k1 = ℓ = −log r. Unbiased; can be negative; its variance grows with the KL.
- k2 = ½ ℓ². Biased: E_p[k2] is an f-divergence that agrees with KL(p ‖ q) to second order in
  the log ratio, so the bias is small when p ≈ q and large when they are far apart. Never negative;
  low variance.
- k3 = (r − 1) − log r = expm1(−ℓ) + ℓ. Unbiased (E_p[r] = 1), never negative, lower variance
  than k1 when p ≈ q.

Gradients of the *values* are another matter. In RLHF code the samples come from the policy
p = π_θ, and the loss is differentiated through log p(x) with x held fixed. Then, in expectation
over x ~ p:
- ∇_θ k1 = ∇ log p has mean 0: k1 as a loss gives no KL gradient at all;
- ∇_θ k2 = ℓ ∇ log p has mean ∇_θ KL(p_θ ‖ q): k2's gradient is the right one, though its value
  is biased;
- ∇_θ k3 = (1 − r) ∇ log p has mean ∇_θ KL(q ‖ p_θ): the gradient of the *other* direction.
When instead the parameters belong to q (x ~ p fixed, p not depending on them), k1 and k3 both give
∇ KL(p ‖ q) in expectation. The tests check each of these statements exactly on categoricals.

k3 is computed as `expm1(−ℓ) + ℓ`, which is exact to rounding for small ℓ and never clamped.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from klax import _checks


class Estimate(NamedTuple):
  """A Monte Carlo estimate: `value` is the sample mean and `stderr` its standard error."""

  value: jax.Array
  stderr: jax.Array


def kl_from_log_ratio(log_ratio, estimator: str = "k1") -> jax.Array:
  """Per-sample KL estimator values from log ratios ℓ = log p(x) − log q(x), x ~ p.

  k1 = ℓ;  k2 = ½ ℓ²;  k3 = (e^{−ℓ} − 1) + ℓ. Their mean over x ~ p estimates KL(p ‖ q) (k1 and
  k3 without bias). The result is unreduced, like optax's losses: average it yourself (per token
  in RLHF, typically).

  Args:
    log_ratio: array of log p(x) − log q(x) for samples x ~ p.
    estimator: "k1", "k2" or "k3".

  Returns:
    An array with the shape of `log_ratio`.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> klax.kl_from_log_ratio(jnp.array([0.0, 1.0]), "k2").tolist()
    [0.0, 0.5]
  """
  estimator = _checks.estimator_name(estimator)
  log_ratio = _checks.float_array(log_ratio, "log_ratio")
  if estimator == "k1":
    return log_ratio
  if estimator == "k2":
    return 0.5 * jnp.square(log_ratio)
  return jnp.expm1(-log_ratio) + log_ratio


def mean_and_stderr(values: jax.Array) -> Estimate:
  """Sample mean over axis 0 and its standard error, std (ddof=1) / √n."""
  n = values.shape[0]
  stderr = (
    jnp.std(values, axis=0, ddof=1) / jnp.sqrt(n) if n > 1 else jnp.full_like(values[0], jnp.inf)
  )
  return Estimate(jnp.mean(values, axis=0), stderr)


def sample_and_log_prob(dist, key: jax.Array, num_samples: int):
  """`num_samples` draws from a distrax or TFP distribution, and their log densities."""
  if hasattr(dist, "sample_and_log_prob"):  # distrax: one pass (e.g. through a flow).
    return dist.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
  x = dist.sample(sample_shape=(num_samples,), seed=key)
  return x, dist.log_prob(x)


def _samples(p, key: jax.Array, num_samples: int):
  num_samples = _checks.positive_int(num_samples, "num_samples")
  return sample_and_log_prob(p, key, num_samples)


def kl_divergence_mc(p, q, key: jax.Array, num_samples: int, estimator: str = "k1") -> Estimate:
  """Monte Carlo estimate of KL(p ‖ q) = E_{x ~ p}[log p(x) − log q(x)].

  Draws `num_samples` points from `p` with `key`, forms the log ratios and averages the chosen
  estimator (see `kl_from_log_ratio`). Works for any pair whose `log_prob` exists, e.g. mixtures.
  Sampling is reparameterised when `p`'s sampler is, so `jax.grad` of the value is the pathwise
  gradient.

  Args:
    p: distribution to sample from.
    q: distribution with the same event shape.
    key: a `jax.random` key.
    num_samples: number of draws (a positive Python int).
    estimator: "k1" (default), "k2" or "k3".

  Returns:
    `Estimate(value, stderr)`, each with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax, klax
    >>> est = klax.kl_divergence_mc(distrax.Normal(0.0, 1.0), distrax.Normal(1.0, 1.0),
    ...                             jax.random.key(0), 10_000)
    >>> abs(float(est.value) - 0.5) < 4 * float(est.stderr)
    True
  """
  _checks.distribution(p, "p")
  _checks.distribution(q, "q")
  _checks.same_event_shape(p, q)
  estimator = _checks.estimator_name(estimator)
  x, log_p = _samples(p, key, num_samples)
  return mean_and_stderr(kl_from_log_ratio(log_p - q.log_prob(x), estimator))


def entropy_mc(p, key: jax.Array, num_samples: int) -> Estimate:
  """Monte Carlo estimate of H(p) = −E_{x ~ p}[log p(x)], with its standard error.

  Args:
    p: a distribution with `sample` and `log_prob` (distrax or TFP).
    key: a `jax.random` key.
    num_samples: the number of draws S from `p` (a positive int).

  Returns:
    `Estimate(value, stderr)`: the sample mean and its standard error (sample sd / √S), with
    the batch shape of the distributions.

  Examples:
    >>> import distrax, jax, klax
    >>> est = klax.entropy_mc(distrax.Normal(0.0, 1.0), jax.random.key(0), 10_000)
    >>> abs(float(est.value) - 1.4189385) < 4 * float(est.stderr)
    True
  """
  _checks.distribution(p, "p")
  _, log_p = _samples(p, key, num_samples)
  return mean_and_stderr(-log_p)


def cross_entropy_mc(p, q, key: jax.Array, num_samples: int) -> Estimate:
  """Monte Carlo estimate of H(p, q) = −E_{x ~ p}[log q(x)], with its standard error.

  Args:
    p: a distribution with `sample` and `log_prob` (expectations are under `p`).
    q: a distribution with `log_prob` and the same event shape.
    key: a `jax.random` key.
    num_samples: the number of draws S from `p` (a positive int).

  Returns:
    `Estimate(value, stderr)`: the sample mean and its standard error (sample sd / √S), with
    the batch shape of the distributions.

  Examples:
    >>> import distrax, jax, klax
    >>> est = klax.cross_entropy_mc(distrax.Normal(0.0, 1.0), distrax.Normal(1.0, 1.0),
    ...                             jax.random.key(0), 10_000)
    >>> abs(float(est.value) - 1.9189385) < 4 * float(est.stderr)
    True
  """
  _checks.distribution(p, "p")
  _checks.distribution(q, "q")
  _checks.same_event_shape(p, q)
  x, _ = _samples(p, key, num_samples)
  return mean_and_stderr(-q.log_prob(x))

"""Objectives for fitting a family q_θ to a target p: builders returning `loss(params, key)`.

Each builder checks its configuration (the family, the data or the target, sizes, the gradient
estimator) and returns a loss, `loss(params, key) -> scalar` to be minimised: a pytree whose
arrays (the data, and those of a target that is a pytree) are leaves that `klax.fit` traces, and
whose configuration is static (see `klax/_losses.py`), so a fit of new data of the same shape does
not recompile. A target is `log_density(x)` for one point, unnormalised if need be
(log p̃ = log p + log Z); klax vmaps it over samples.

- Forward KL: KL(p ‖ q_θ) = −H(p) − E_p[log q_θ], so minimising the mean negative
  log-likelihood over samples of p is maximum likelihood.
- Reverse KL: KL(q_θ ‖ p) = log Z − ELBO(θ), ELBO = E_q[log p̃(x) − log q_θ(x)], so minimising
  −ELBO needs p only up to its normalising constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from klax import _checks
from klax import _variational
from klax._losses import ForwardKLLoss
from klax._losses import IWAELoss
from klax._losses import RenyiLoss
from klax._losses import ReverseKLLoss
from klax._monte_carlo import Estimate
from klax._monte_carlo import mean_and_stderr
from klax._monte_carlo import sample_and_log_prob
from klax.families import Family

GRADIENTS = _variational.GRADIENTS


def _family(family) -> Family:
  if not (hasattr(family, "init") and hasattr(family, "dist") and callable(family.dist)):
    raise TypeError(f"`family` must be a klax Family(init, dist), got {type(family).__name__}.")
  return family


def _target(log_density) -> Callable:
  if not callable(log_density):
    raise TypeError(
      f"`log_density` must be a callable log p̃(x) for one point, got {type(log_density).__name__}."
    )
  return log_density


def forward_kl_loss(
  family: Family, data: ArrayLike, batch_size: int | None = None
) -> ForwardKLLoss:
  """Forward-KL loss: the mean negative log-likelihood of samples of p under q_θ.

  loss(θ) = −(1/n) Σ_i log q_θ(x_i),  x_i ~ p,

  an unbiased estimate of H(p) + KL(p ‖ q_θ): its minimiser is the maximum-likelihood estimate,
  which tends to argmin_θ KL(p ‖ q_θ) as n grows. With `batch_size`, each call averages over a
  minibatch drawn (with replacement) with `key`; otherwise over all the data and `key` is unused.

  `data` with no sample, or whose trailing shape is not the family's event shape, raises
  `ValueError` (the latter while tracing); NaN in `data` gives a NaN loss.

  Args:
    family: the model family.
    data: samples of p, shape [n, *event_shape] with n ≥ 1.
    batch_size: minibatch size, or None for full batch.

  Returns:
    A `ForwardKLLoss`, called as `loss(params, key) -> scalar`; `data` is a pytree leaf, so
    `dataclasses.replace(loss, data=batch)` (or a new loss) on data of the same shape reuses the
    compiled fit.

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
  if n == 0:
    raise ValueError(f"`data` must hold at least one sample, got shape {data.shape}.")
  if batch_size is not None:
    batch_size = _checks.positive_int(batch_size, "batch_size")

  return ForwardKLLoss(family, data, batch_size)


def reverse_kl_loss(
  family: Family,
  log_density: Callable,
  num_samples: int,
  gradient: Literal["reparam", "score", "stl"] = "reparam",
) -> ReverseKLLoss:
  """Reverse-KL loss: the negative ELBO, estimated with `num_samples` draws from q_θ.

  loss(θ) = −Σ_i π_i [log p̃(x_i) − log q_θ(x_i)],
  an unbiased estimate of KL(q_θ ‖ p) − log Z, with x_i ~ q_θ and π_i = 1/S, or for a mixture
  q_θ = Σ_k w_k q_k and a pathwise gradient S draws x_ks ~ q_k from each component, π_ks = w_k/S
  (stratified: K·S evaluations of log p̃). The gradient estimator:

  - "reparam": pathwise, x = T_θ(ε), and through π for mixtures: unbiased in every parameter.
  - "stl": sticking the landing (Roeder, Wu & Duvenaud 2017): pathwise without the score term,
    whose expectation is zero; the estimator has zero variance when q_θ equals the posterior.
  - "score": score function (REINFORCE), (1/S) Σ_s (f_s − b_s) ∇ log q_θ(x_s) with x_s ~ q_θ,
    f = log q_θ − log p̃ and the leave-one-out baseline b_s = mean_{t≠s} f_t (unbiased, since b_s
    does not depend on x_s). Works for any q, discrete ones included; needs S >= 2.

  "reparam" and "stl" raise `ValueError` while tracing for a q whose samples carry no pathwise
  gradient (discrete, quantised, `MixtureOfTwo`, TFP not fully reparameterised), and every
  objective raises there if log p̃ of one point is not a scalar or log q_θ of the draws is not [N].

  Args:
    family: the variational family.
    log_density: log p̃(x) for one point; may be unnormalised.
    num_samples: S, draws per loss evaluation.
    gradient: "reparam", "stl" or "score".

  Returns:
    A `ReverseKLLoss`, called as `loss(params, key) -> scalar`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # N(1, 0.5²), unnormalised.
    >>> loss = klax.reverse_kl_loss(klax.families.normal(), log_p, num_samples=32)
    >>> start = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    >>> q = klax.fit(loss, start, optax.adam(0.05), jax.random.key(0), 500).params
    >>> abs(float(q["loc"]) - 1.0) < 0.05 and abs(float(jnp.exp(q["log_scale"])) - 0.5) < 0.05
    True
  """
  family, log_density = _family(family), _target(log_density)
  num_samples = _checks.positive_int(num_samples, "num_samples")
  if gradient not in GRADIENTS:
    raise ValueError(f"`gradient` must be one of {GRADIENTS}, got {gradient!r}.")
  if gradient == "score" and num_samples < 2:
    raise ValueError(
      "`gradient='score'` uses a leave-one-out baseline: `num_samples` must be >= 2."
    )

  return ReverseKLLoss(family, log_density, num_samples, gradient)


def elbo(q, log_density: Callable, key: jax.Array, num_samples: int) -> Estimate:
  """Monte Carlo ELBO of a distribution q for an unnormalised target, with its standard error.

  ELBO = E_{x ~ q}[log p̃(x) − log q(x)] = log Z − KL(q ‖ p) ≤ log Z,

  estimated as the mean over S draws of q; for a mixture q = Σ_k w_k q_k of reparameterisable
  components as Σ_k w_k mean_s t_ks over S draws from each component (stderr
  √(Σ_k w_k² var_k / S)), so that its gradient is pathwise in the weights too.

  Args:
    q: a distrax distribution.
    log_density: log p̃(x) for one point.
    key: a `jax.random` key.
    num_samples: draws from q (per component for a mixture).

  Returns:
    `Estimate(value, stderr)`; stderr is inf for one draw.

  Examples:
    >>> import distrax, jax, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # Z = 0.5 √(2π)
    >>> estimate = klax.elbo(distrax.Normal(1.0, 0.5), log_p, jax.random.key(0), 100)
    >>> round(float(estimate.value), 4)  # q = p exactly: ELBO = log Z
    0.2258
  """
  _checks.distribution(q, "q")
  target = jax.vmap(_target(log_density))
  num_samples = _checks.positive_int(num_samples, "num_samples")
  if not _variational.stratifiable(q):
    x, log_q = sample_and_log_prob(q, key, num_samples)
    return mean_and_stderr(target(x) - log_q)
  draws = _variational.draw(lambda _: q, target, None, key, num_samples)
  weights = jnp.exp(draws.log_pi[: draws.log_pi.size // num_samples]) * num_samples
  per_draw = draws.log_w.reshape(num_samples, -1)  # [S, K]
  per_draw = jnp.where(weights > 0, per_draw, 0.0)
  value = _variational.weighted_mean(draws.log_w, draws.log_pi)
  if num_samples == 1:
    return Estimate(value, jnp.full_like(value, jnp.inf))
  variance = jnp.var(per_draw, axis=0, ddof=1)
  return Estimate(value, jnp.sqrt(jnp.sum(weights**2 * variance) / num_samples))


def iwae_loss(family: Family, log_density: Callable, num_samples: int) -> IWAELoss:
  """Negative importance-weighted bound (Burda, Grosse & Salakhutdinov 2016).

  loss(θ) = −log Σ_i π_i p̃(x_i) / q_θ(x_i),  x_i ~ q_θ (reparameterised), π_i = 1/K,

  whose expectation is −L_K with ELBO = L_1 ≤ L_K ≤ L_∞ = log Z. For a mixture
  q_θ = Σ_k w_k q_k, K draws x_ks from each component with π_ks = w_k/K: the stratified bound of
  Morningstar et al. (2021), still ≤ log Z in expectation, with unbiased pathwise gradients of it
  in the weights and the components. Bad families and targets raise as for `reverse_kl_loss`.

  Args:
    family: a `klax.families.Family`; q_θ = family.dist(θ) must sample with reparameterised
      gradients, or be a mixture of components that do.
    log_density: log p̃(x) for one point x, the target up to its normalising constant Z.
    num_samples: the number of draws per evaluation (per component for a mixture).

  Returns:
    An `IWAELoss`, called as `loss(params, key) -> scalar`.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # log Z = log(0.5 √(2π)) = 0.2258
    >>> loss = klax.iwae_loss(klax.families.normal(), log_p, 16)
    >>> exact = {"loc": jnp.array(1.0), "log_scale": jnp.log(0.5)}
    >>> round(float(loss(exact, jax.random.key(0))), 4)
    -0.2258
  """
  family, log_density = _family(family), _target(log_density)
  num_samples = _checks.positive_int(num_samples, "num_samples")
  return IWAELoss(family, log_density, num_samples)


def renyi_loss(family: Family, log_density: Callable, num_samples: int, alpha: float) -> RenyiLoss:
  """Variational Rényi objective (Li & Turner 2016), as a loss to minimise.

  loss(θ) = −L̂_α,  L̂_α = 1/(1 − α) · log Σ_i π_i (p̃(x_i) / q_θ(x_i))^{1−α},  0 ≤ α ≤ 1,

  with the draws x_i and weights π_i of `iwae_loss` (stratified for mixtures). L_α = log Z −
  D_α(q_θ ‖ p) ≤ log Z, from the importance-weighted bound (α = 0) to the ELBO, i.e. reverse
  KL (α = 1, the limit, to which L̂_α is continuous: it is computed about the mean log weight
  without cancellation near α = 1). E[L̂_α] ≤ L_α (Jensen), so L̂_α is a valid finite-S lower
  bound that tightens as S grows. α outside [0, 1] raises `ValueError`: there E[L̂_α] falls on
  the wrong side of the bound (below the upper bound L_α ≥ log Z for α < 0), and minimising it
  does not minimise D_α. Bad families and targets raise as for `reverse_kl_loss`.

  Args:
    family: a `klax.families.Family`; q_θ = family.dist(θ) must sample with reparameterised
      gradients, or be a mixture of components that do.
    log_density: log p̃(x) for one point x, the target up to its normalising constant Z.
    num_samples: the number of draws per evaluation (per component for a mixture).
    alpha: the Rényi order α, a finite Python float in [0, 1] (1 is the ELBO, 0 the
      importance-weighted bound).

  Returns:
    A `RenyiLoss`, called as `loss(params, key) -> scalar`.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2
    >>> params = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    >>> losses = [klax.renyi_loss(klax.families.normal(), log_p, 64, a)(params, jax.random.key(0))
    ...           for a in (1.0, 0.5, 0.0)]
    >>> bool(losses[0] > losses[1] > losses[2])  # −ELBO ≥ −L_0.5 ≥ −L_0 (same draws)
    True
  """
  family, log_density = _family(family), _target(log_density)
  num_samples = _checks.positive_int(num_samples, "num_samples")
  alpha = _variational.check_alpha(alpha)
  return RenyiLoss(family, log_density, num_samples, alpha)

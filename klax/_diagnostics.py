"""Diagnostics for fits: which optima a multi-start `fit_batch` reached, and how often."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klax import _checks
from klax._fit import FitResult
from klax._monte_carlo import Estimate
from klax._monte_carlo import mean_and_stderr
from klax._monte_carlo import sample_and_log_prob


class Basin(NamedTuple):
  """One distinct optimum reached by a multi-start fit.

  Attributes:
    params: the mean parameters of its members (a pytree like one member's parameters).
    count: how many fits ended in it.
    members: their indices in the batch.
    loss_mean: mean final loss of the members.
    loss_std: standard deviation of the members' final losses.
    value: `value_fn(params)` when one was given (e.g. an exact KL by quadrature), else None.
  """

  params: Any
  count: int
  members: np.ndarray
  loss_mean: float
  loss_std: float
  value: float | None


def _member_features(params_batch, features) -> np.ndarray:
  if features is not None:
    return np.asarray(jax.vmap(features)(params_batch), np.float64).reshape(_size(params_batch), -1)
  leaves = [
    np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in jax.tree.leaves(params_batch)
  ]
  return np.concatenate(leaves, axis=1)


def _size(params_batch) -> int:
  return int(jax.tree.leaves(params_batch)[0].shape[0])


def basin_report(
  result: FitResult,
  *,
  tolerance: float = 0.1,
  features: Callable[[Any], Any] | None = None,
  final_losses=None,
  value_fn: Callable[[Any], Any] | None = None,
) -> list[Basin]:
  """Groups the members of a `fit_batch` result by the optimum they reached.

  Member i joins basin b when max_j |φ(θ_i)_j − c_b,j| ≤ tolerance, c_b = mean of φ over b's
  members (φ = `features`).

  Members are taken in order of increasing final loss; each joins the first basin whose
  centroid (the mean feature vector of its members so far) lies within `tolerance` of it in the
  max-norm, and otherwise starts a new basin. Features default to all parameters
  flattened; pass `features(params) -> array` to compare in another space (e.g. (μ, σ) of the
  distribution instead of raw (μ, log σ), or sorted mixture components to undo label switching).
  Diverged fits are left out.

  Args:
    result: the `FitResult` of `klax.fit_batch`.
    tolerance: distance (max-norm, in feature units) within which two fits share a basin.
    features: optional map from one member's params to a feature vector.
    final_losses: optional [B] array of final losses to rank and summarise by (default: the
      last recorded loss; pass an average over the last steps for noisy Monte Carlo losses).
    value_fn: optional function of a basin's mean params giving a reference value (e.g. the
      exact KL by quadrature or closed form), stored in `Basin.value`.

  Returns:
    The basins, best (lowest mean final loss, or lowest `value` when `value_fn` is given) first.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> log_p = lambda x: jnp.logaddexp(-0.5 * (x + 3) ** 2, -0.5 * (x - 3) ** 2)
    >>> loss = klax.reverse_kl_loss(klax.families.normal(), log_p, 32)
    >>> starts = {"loc": jnp.array([-5.0, -4.0, -3.5, -2.0, 2.0, 3.5, 4.0, 5.0]), "log_scale": jnp.zeros(8)}
    >>> result = klax.fit_batch(loss, starts, optax.adam(0.05), jax.random.key(0), 300)
    >>> sorted((round(float(b.params["loc"])), b.count) for b in klax.basin_report(result, tolerance=0.3))
    [(-3, 4), (3, 4)]
  """
  if tolerance <= 0:
    raise ValueError(f"`tolerance` must be positive, got {tolerance}.")
  losses = np.asarray(result.losses[:, -1] if final_losses is None else final_losses, np.float64)
  keep = np.flatnonzero((np.asarray(result.diverged_at) < 0) & np.isfinite(losses))
  vectors = _member_features(result.params, features)
  groups: list[list[int]] = []
  for index in keep[np.argsort(losses[keep], kind="stable")]:
    for group in groups:
      centroid = vectors[group].mean(axis=0)
      if np.max(np.abs(vectors[index] - centroid)) <= tolerance:
        group.append(int(index))
        break
    else:
      groups.append([int(index)])
  basins = []
  for group in groups:
    members = np.array(group)
    params = jax.tree.map(lambda x, m=members: np.asarray(x)[m].mean(axis=0), result.params)
    value = None if value_fn is None else float(value_fn(params))
    basins.append(
      Basin(
        params,
        len(members),
        members,
        float(losses[members].mean()),
        float(losses[members].std()),
        value,
      )
    )
  key = (lambda b: b.value) if value_fn is not None else (lambda b: b.loss_mean)
  return sorted(basins, key=key)


def _generalized_pareto_shape(exceedances: jax.Array) -> jax.Array:
  """Shape k̂ of a generalized Pareto fit to sorted positive exceedances (Zhang & Stephens 2009).

  The profile-likelihood-weighted estimate over a grid of m = 30 + ⌊√n⌋ candidate values of
  θ = −k/σ, followed by the weakly informative prior of Vehtari et al. (k̂ shrunk toward 0.5 by
  the weight of 10 pseudo-observations).
  """
  n = exceedances.shape[0]
  m = 30 + int(np.sqrt(n))
  quartile = exceedances[int(n / 4 + 0.5) - 1]
  quartile = jnp.where(quartile > 0, quartile, jnp.finfo(exceedances.dtype).eps * exceedances[-1])
  grid = 1.0 - jnp.sqrt(m / (jnp.arange(1, m + 1) - 0.5))
  theta = grid / (3.0 * quartile) + 1.0 / exceedances[-1]
  shapes = jnp.mean(jnp.log1p(-theta[:, None] * exceedances), axis=1)
  profile = n * (jnp.log(-theta / shapes) - shapes - 1.0)
  weights = 1.0 / jnp.sum(jnp.exp(profile[None, :] - profile[:, None]), axis=1)
  weights = jnp.where(weights >= 10 * jnp.finfo(weights.dtype).eps, weights, 0.0)
  theta_hat = jnp.sum(theta * weights) / jnp.sum(weights)
  k = jnp.mean(jnp.log1p(-theta_hat * exceedances))
  return (n * k + 10 * 0.5) / (n + 10)


def pareto_shape(log_weights) -> jax.Array:
  """The Pareto-smoothed importance sampling diagnostic k̂ of importance weights.

  Fits a generalized Pareto distribution to the M = ⌈min(S/5, 3√S)⌉ largest of the S weights
  w = exp(log_weights), above the next largest (Vehtari, Simpson, Gelman, Yao & Gabry 2024; Yao,
  Vehtari, Simpson & Gelman 2018). Reading: k̂ < 0.5 the importance weights (and the variational
  approximation that proposed them) are reliable; 0.5–0.7 usable; > 0.7 unreliable — the weights
  have too heavy a tail for their mean to be estimated. Jit-able; S must be at least 25. When
  the largest weights are equal to within 1000 ulps (q ∝ p̃ up to rounding) there is no tail
  and k̂ = −inf.

  Args:
    log_weights: [S] log importance weights (any additive constant).

  Returns:
    k̂, a scalar.

  Examples:
    >>> import jax, klax
    >>> light = 0.3 * jax.random.normal(jax.random.key(0), (1000,))
    >>> heavy = 3.0 * jax.random.normal(jax.random.key(0), (1000,))
    >>> bool(klax.pareto_shape(light) < 0.5 < 0.7 < klax.pareto_shape(heavy))
    True
  """
  log_weights = jnp.asarray(log_weights)
  if log_weights.ndim != 1 or log_weights.shape[0] < 25:
    raise ValueError(f"`log_weights` must have shape [S] with S >= 25, got {log_weights.shape}.")
  size = log_weights.shape[0]
  tail = int(np.ceil(min(0.2 * size, 3.0 * np.sqrt(size))))
  ordered = jnp.sort(log_weights)
  cutoff, largest = ordered[-tail - 1], ordered[-1]
  exceedances = jnp.exp(ordered[-tail:] - largest) - jnp.exp(cutoff - largest)
  # Equal weights (q ∝ p̃, up to rounding: the largest weights within 1000 ulps of each other)
  # have no tail at all: k̂ = −inf.
  degenerate = exceedances[-1] <= 1e3 * jnp.finfo(exceedances.dtype).eps
  safe = jnp.where(degenerate, jnp.linspace(1.0, 2.0, tail), exceedances)
  return jnp.where(degenerate, -jnp.inf, _generalized_pareto_shape(safe))


class ReverseKLDiagnostics(NamedTuple):
  """How well a fitted q matches an unnormalised target p̃ = Z · p (see `reverse_kl_diagnostics`).

  Attributes:
    elbo: E_q[log p̃ − log q] with its standard error (= log Z − KL(q ‖ p)).
    pareto_k: the PSIS shape k̂ of the weights p̃/q (< 0.5 good, 0.5–0.7 usable, > 0.7 bad).
    log_evidence: the importance-sampling estimate log (1/S) Σ p̃(x)/q(x) of log Z, with its
      delta-method standard error (trustworthy only when k̂ is small).
    ess: the importance-sampling effective sample size (Σ w)² / Σ w², between 1 and S.
  """

  elbo: Any
  pareto_k: jax.Array
  log_evidence: Any
  ess: jax.Array


def reverse_kl_diagnostics(
  q, log_density, key: jax.Array, num_samples: int
) -> ReverseKLDiagnostics:
  """Diagnostics of a reverse-KL (variational) fit q to an unnormalised target.

  Draws x_1 … x_S ~ q, forms log w_s = log p̃(x_s) − log q(x_s) and returns the ELBO, the PSIS
  k̂ of the weights, the importance-sampling estimate of log Z and the effective sample size.
  At the exact posterior the weights are constant: k̂ is small, log Z is exact and ESS = S.
  Jit-able.

  Args:
    q: a distrax distribution (the fitted approximation).
    log_density: log p̃(x) for one point (unnormalised is fine).
    key: a `jax.random` key.
    num_samples: S, at least 25.

  Returns:
    `ReverseKLDiagnostics(elbo, pareto_k, log_evidence, ess)`.

  Examples:
    >>> import distrax, jax, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # log Z = 0.2258
    >>> d = klax.reverse_kl_diagnostics(distrax.Normal(1.0, 0.6), log_p, jax.random.key(0), 4000)
    >>> bool(d.pareto_k < 0.5), abs(float(d.log_evidence.value) - 0.2258) < 0.01
    (True, True)
  """
  _checks.distribution(q, "q")
  num_samples = _checks.positive_int(num_samples, "num_samples")
  x, log_q = sample_and_log_prob(q, key, num_samples)
  log_w = jax.vmap(log_density)(x) - log_q
  scaled = jnp.exp(log_w - jnp.max(log_w))
  mean_weight = jnp.mean(scaled)
  log_evidence = jnp.log(mean_weight) + jnp.max(log_w)
  stderr = jnp.std(scaled, ddof=1) / (jnp.sqrt(num_samples) * mean_weight)
  ess = jnp.sum(scaled) ** 2 / jnp.sum(scaled**2)
  return ReverseKLDiagnostics(
    mean_and_stderr(log_w), pareto_shape(log_w), Estimate(log_evidence, stderr), ess
  )

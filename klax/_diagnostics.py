"""Diagnostics of importance weights and of reverse-KL fits: the Pareto k̂ and the ELBO's checks."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from klax import _checks
from klax._gradients import right_tail_shape
from klax._monte_carlo import Estimate
from klax._monte_carlo import mean_and_stderr
from klax._monte_carlo import sample_and_log_prob


def pareto_shape(log_weights) -> jax.Array:
  """The Pareto-smoothed importance sampling diagnostic k̂ of importance weights.

  Fits a generalized Pareto distribution to the M = ⌈min(S/5, 3√S)⌉ largest of the S weights
  w = exp(log_weights), above the next largest (Vehtari, Simpson, Gelman, Yao & Gabry 2024; Yao,
  Vehtari, Simpson & Gelman 2018). Reading: k̂ < 0.5 the importance weights (and the variational
  approximation that proposed them) are reliable; 0.5–0.7 usable; > 0.7 unreliable — the weights
  have too heavy a tail for their mean to be estimated. Jit-able; S must be at least 25. When
  the largest weights are equal to within 1000 ulps (q ∝ p̃ up to rounding) there is no tail
  and k̂ = −inf. NaN or +inf among the log weights, or all of them −inf, give NaN (−inf entries
  alone are zero weights). float16/bfloat16 input is promoted to float32 first.

  Args:
    log_weights: [S] log importance weights (any additive constant).

  Returns:
    k̂, a scalar (float32 for float16/bfloat16 input).

  Examples:
    >>> import jax, klax
    >>> light = 0.3 * jax.random.normal(jax.random.key(0), (1000,))
    >>> heavy = 3.0 * jax.random.normal(jax.random.key(0), (1000,))
    >>> bool(klax.pareto_shape(light) < 0.5 < 0.7 < klax.pareto_shape(heavy))
    True
  """
  log_weights = _checks.promote_low_precision(_checks.float_array(log_weights, "log_weights"))
  if log_weights.ndim != 1 or log_weights.shape[0] < 25:
    raise ValueError(f"`log_weights` must have shape [S] with S >= 25, got {log_weights.shape}.")
  largest = jnp.max(log_weights)
  # Weights relative to the largest; equal weights (q ∝ p̃ up to rounding: the largest within
  # 1000 ulps of each other) have no tail at all, k̂ = −inf.
  shape = right_tail_shape(jnp.exp(log_weights - largest))
  undefined = jnp.isnan(largest) | (largest == jnp.inf) | (largest == -jnp.inf)
  return jnp.where(undefined, jnp.nan, shape)


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
    `ReverseKLDiagnostics(elbo, pareto_k, log_evidence, ess)`; `log_evidence.pareto_k` is the
    same k̂ (the importance-sampling estimate's variance is that of the weights). float16/bfloat16
    log densities are promoted to float32. Bad arguments raise at trace time.

  Examples:
    >>> import distrax, jax, klax
    >>> log_p = lambda x: -0.5 * ((x - 1.0) / 0.5) ** 2  # log Z = 0.2258
    >>> d = klax.reverse_kl_diagnostics(distrax.Normal(1.0, 0.6), log_p, jax.random.key(0), 4000)
    >>> bool(d.pareto_k < 0.5), abs(float(d.log_evidence.value) - 0.2258) < 0.01
    (True, True)
  """
  _checks.distribution(q, "q")
  if not callable(log_density):
    raise TypeError(f"`log_density` must be a function, got {type(log_density).__name__}.")
  if _checks.positive_int(num_samples, "num_samples") < 25:
    raise ValueError(f"`num_samples` must be at least 25 for k̂, got {num_samples}.")
  _checks.prng_key(key, "key")
  x, log_q = sample_and_log_prob(q, key, num_samples)
  log_w = _checks.promote_low_precision(jax.vmap(log_density)(x)) - (
    _checks.promote_low_precision(log_q)
  )
  scaled = jnp.exp(log_w - jnp.max(log_w))
  mean_weight = jnp.mean(scaled)
  log_evidence = jnp.log(mean_weight) + jnp.max(log_w)
  stderr = jnp.std(scaled, ddof=1) / (jnp.sqrt(num_samples) * mean_weight)
  ess = jnp.sum(scaled) ** 2 / jnp.sum(scaled**2)
  pareto_k = pareto_shape(log_w)
  return ReverseKLDiagnostics(
    mean_and_stderr(log_w, warn_as=None), pareto_k, Estimate(log_evidence, stderr, pareto_k), ess
  )
